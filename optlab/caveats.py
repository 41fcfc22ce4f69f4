"""What a run's figures must be read with: one sentence per reason to doubt a measurement.

Pages (Runs, Compare) and reports show these next to the figures they concern; a run stored
before a figure was recorded simply has no warning about it.
"""
from __future__ import annotations


def measurement_warnings(summary: dict | None) -> list[str]:
    """Warnings for a finished run's summary: other processes took the CPU while it trained, the
    GPU's clocks moved or were held down, or its throughput rests on too few steady steps."""
    s = summary or {}
    out = []
    host = s.get("host") or {}
    if host.get("disturbed"):
        out.append(f"CPU disturbed: {host.get('reason')}")
    clocks = s.get("gpu_clocks") or {}
    if clocks.get("disturbed"):
        low, high = clocks.get("sm_clock_mhz_min"), clocks.get("sm_clock_mhz_max")
        parts = []
        if clocks.get("slowdown_reasons"):
            parts.append("held down by " + ", ".join(clocks["slowdown_reasons"]))
        if clocks.get("clock_moved") and low is not None and high is not None:
            parts.append(f"SM clock moved between {low:,.0f} and {high:,.0f} MHz")
        out.append("GPU clocks changed while it trained (" + "; ".join(parts or ["see the telemetry"])
                   + "): its speed may not repeat")
    throughput = s.get("throughput") or {}
    if throughput.get("quality") == "thin":
        out.append(f"thin measurement: {throughput.get('why') or 'too few steady steps'}; "
                   "its throughput interval is wide or missing")
    return out
