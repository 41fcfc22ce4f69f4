"""The ablation ladder: a baseline, then one knob added per rung, each rung measured with repeats.

The fastest-training projects explain their speed as a ladder (fp32 -> bf16 -> + channels_last ->
...), each trick on top of the last, with the time to the target accuracy after each. Here the ladder
is built for any run: `plan` turns a starting config and a list of rungs into one config per rung
(pure; the form, the CLI and the tests plan the same way), `submit` queues them as one sweep whose id
starts with `ladder-` (a sweep, so Runs, Compare and reports show it like any other), and `rows`
reads the ladder back with the cumulative and the per-rung speed-up, each with its 95 % interval and
noise verdict (optlab.repeats): a rung that did nothing measurable on this device says so.

What the ladder measures is training, so its rungs drop the starting run's compression steps and
profile window (a profile window slows the steps it records; compression is measured per variant).

No torch here: `default_rungs` reads the CPU's flags from /proc/cpuinfo.
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass

from optlab.config import ConfigError, RunConfig
from optlab.naming import knob_word
from optlab.registry import Registry

PREFIX = "ladder-"
MAX_RUNGS = 10
# The settings a ladder starts from, whatever the starting run had: every rung adds one of them back.
PLAIN = dict(precision="fp32", channels_last=False, pipeline="cpu", compile=False)
PLAIN_BATCH = 128     # a starting run with an automatic batch size climbs from this one


@dataclass(frozen=True)
class Rung:
    key: str
    changes: dict        # RunConfig fields this rung sets, on top of the rungs before it
    why: str             # what it should do, in a sentence
    gpu_only: bool = False

    def label(self, device: str | None) -> str:
        return "+ " + " ".join(knob_word(k, v, device) for k, v in self.changes.items())


RUNGS: Registry[Rung] = Registry("rung")
for rung in (
    Rung("tf32", {"precision": "tf32"}, "fp32 matrix products on the Tensor Cores with a 10-bit mantissa", gpu_only=True),
    Rung("bf16", {"precision": "bf16"}, "autocast to bfloat16: half the bytes, Tensor Core (or AMX) maths"),
    Rung("fp16", {"precision": "fp16"}, "autocast to float16 with loss scaling, for GPUs without bf16", gpu_only=True),
    Rung("channels_last", {"channels_last": True}, "NHWC memory format, the layout fast convolutions want"),
    Rung("data_on_device", {"pipeline": "gpu"}, "the data set held on the device as one tensor: no loader"),
    Rung("compile", {"compile": True}, "torch.compile fuses operators (compile time is left out of throughput)"),
    Rung("auto_batch", {"batch_size": "auto"}, "the largest batch that fits, with headroom"),
):
    RUNGS.add(rung.key, rung)


def cpu_has_native_bf16(cpuinfo: str | None = None) -> bool:
    """Whether this CPU computes bf16 in hardware (AVX-512 BF16 or AMX). Without it bf16 is
    emulated, and a bf16 rung is a long lesson in slowness (17x slower on a 2-core EPYC)."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo") as f:
                cpuinfo = f.read()
        except OSError:
            return False
    flags = next((line.split(":", 1)[1].split() for line in cpuinfo.splitlines() if line.startswith("flags")), [])
    return bool({"avx512_bf16", "amx_bf16"} & set(flags))


def default_rungs(info) -> list[str]:
    """The order that makes sense on `info` (optlab.device.DeviceInfo): on a GPU the precision
    first (the largest step on Tensor Cores), then layout, data, compile and batch; on the CPU the
    data first (the loader is the usual bottleneck there), bf16 only where the CPU has it natively."""
    if info.is_gpu:
        precision = ["tf32", "bf16"] if info.supports_bf16 else ["tf32", "fp16"]
        if info.capability and info.capability < (8, 0):
            precision = ["fp16"]
        return precision + ["channels_last", "data_on_device", "compile", "auto_batch"]
    rungs = ["data_on_device", "channels_last"]
    if cpu_has_native_bf16():
        rungs.append("bf16")
    return rungs + ["compile", "auto_batch"]


def parse_rung(text: str) -> Rung:
    """A rung by name ('bf16', 'channels_last', ...) or any sweepable setting as knob=value
    ('num_workers=4', 'batch_size=512'); ConfigError says what is allowed."""
    from optlab import sweeps
    text = str(text).strip()
    if "=" not in text:
        if text in RUNGS:
            return RUNGS.get(text)
        raise ConfigError(f"unknown rung {text!r}; choose one of: {', '.join(RUNGS.names())}, "
                          "or any setting as knob=value (e.g. num_workers=4)")
    knob, _, value = text.partition("=")
    knob = knob.strip().replace("-", "_")
    parsed = sweeps.parse_value(knob, value)
    return Rung(f"{knob}={parsed}", {knob: parsed}, f"{knob} set to {parsed}")


@dataclass(frozen=True)
class Step:
    index: int           # 0 = the baseline
    key: str
    label: str           # "0 · fp32 baseline", "2 · + channels-last"
    config: RunConfig


def baseline(start: RunConfig) -> RunConfig:
    """The starting config with every ladder knob at its plain value, no profile, no compression."""
    batch = PLAIN_BATCH if start.batch_size == "auto" else start.batch_size
    return start.replace(**PLAIN, batch_size=batch, profile=False, compress=[])


def plan(start: RunConfig, rungs: list[str] | list[Rung], device: str | None = None) -> list[Step]:
    """One config per rung: the baseline, then each rung's changes on top of the one before.

    `device` ('cpu' or 'cuda') names the rungs for where they run (the 'gpu' pipeline is data in
    memory on the CPU). Raises ConfigError for an unknown rung, more than MAX_RUNGS, a rung that
    repeats another, or one that changes nothing. Configs are not validated here (see `submit`)."""
    parsed = [r if isinstance(r, Rung) else parse_rung(r) for r in rungs]
    if not parsed:
        raise ConfigError("a ladder needs at least one rung above its baseline")
    if len(parsed) > MAX_RUNGS:
        raise ConfigError(f"a ladder has at most {MAX_RUNGS} rungs, not {len(parsed)}")
    seen = [r.key for r in parsed]
    twice = sorted({k for k in seen if seen.count(k) > 1})
    if twice:
        raise ConfigError(f"rung {', '.join(twice)} is in the ladder twice")
    config = baseline(start)
    base_word = knob_word("precision", config.precision, device)
    steps = [Step(0, "baseline", f"0 · {base_word} baseline", config)]
    for index, rung in enumerate(parsed, start=1):
        nxt = config.replace(**rung.changes)
        if nxt == config:
            raise ConfigError(f"rung {rung.key} changes nothing: the rungs before it already set "
                              + ", ".join(f"{k}={v}" for k, v in rung.changes.items()))
        steps.append(Step(index, rung.key, f"{index} · {rung.label(device)}", nxt))
        config = nxt
    return steps


def new_ladder_id() -> str:
    return PREFIX + uuid.uuid4().hex[:8]


def is_ladder(sweep_id: str | None) -> bool:
    return bool(sweep_id) and sweep_id.startswith(PREFIX)


def submit(store, steps: list[Step], *, user: str = "", device_for=None) -> tuple[str, list[int]]:
    """Validate every rung against the device (`device_for(config) -> DeviceInfo`) and the room's
    limits, then queue them all as one sweep; with repeats the rungs are interleaved (A B C A B C),
    so a slow minute on a shared machine lands on every rung. All or nothing."""
    from optlab import sweeps
    runs = [sweeps.SweepRun({"rung": s.key}, s.label, s.config) for s in steps]
    return sweeps.submit_sweep(store, runs, user=user, device_for=device_for, sweep_id=new_ladder_id())


# -- reading a ladder back ------------------------------------------------------------------------------
def rows(runs: list) -> list[dict]:
    """One row per rung (its repeats pooled), in ladder order, with the figures the page and the
    CLI show. Each row is views.figure_rows' row plus:
    `cumulative`: repeats.verdict of this rung against the baseline (ratio, ci95, verdict, text);
    `step`: against the rung below (None for the baseline);
    `measurable`: False when the step is within noise or has no interval: the rung did nothing
    that this spread can tell apart from nothing."""
    from optlab import repeats, views
    by_id = {r.id: r for r in runs}
    out = []
    for row in views.figure_rows(sorted(runs, key=lambda r: r.id)):
        rung_label = by_id[row["id"]].label or row["label"]
        row = dict(row, index=_rung_index(rung_label), rung=rung_label.split(" · ", 1)[-1],
                   label=rung_label + (f" ({row['repeats']} repeats)" if row["repeats"] > 1 else ""))
        out.append(row)
    out.sort(key=lambda r: r["index"])
    for i, row in enumerate(out):
        row["cumulative"] = repeats.verdict(row["unit"], out[0]["unit"], against="the baseline") if i else None
        row["step"] = repeats.verdict(row["unit"], out[i - 1]["unit"], against="the rung below") if i else None
        row["measurable"] = bool(i) and row["step"]["verdict"] in ("better", "worse")
    return out


def _rung_index(label: str | None) -> int:
    head = (label or "").split(" · ", 1)[0].strip()
    return int(head) if head.isdigit() else 10**6


def lesson(rows_: list[dict]) -> list[str]:
    """What the ladder says, one sentence per rung above the baseline."""
    out = []
    for row in rows_[1:]:
        step, cumulative = row["step"], row["cumulative"]
        if step is None or step["ratio"] is None:
            out.append(f"{row['rung']}: no throughput to compare (the run did not finish)")
            continue
        call = {"better": "faster, beyond noise", "worse": "slower, beyond noise",
                "within noise": "nothing measurable on this device at this spread",
                "no interval": "cannot tell (no interval: more repeats give one)"}[step["verdict"]]
        interval = f" (95 % interval {step['ci95'][0]:.2f}x to {step['ci95'][1]:.2f}x)" if step["ci95"] and \
            step["ci95"][1] != float("inf") else ""
        so_far = f"{cumulative['ratio']:.2f}x the baseline so far" if cumulative["ratio"] else "the baseline has no figure"
        out.append(f"{row['rung']}: {step['ratio']:.2f}x the rung below{interval}, {call}; {so_far}")
    return out


def table(rows_: list[dict]) -> list[dict]:
    """The ladder as table rows (page, CLI): per rung its throughput, the cumulative and the per-rung
    speed-up with intervals and verdicts, time to the target accuracy, peak memory and accuracy."""
    def ratio(v):
        return round(v["ratio"], 3) if v and v["ratio"] else None

    def interval(v):
        if not v or not v["ci95"]:
            return "none"
        lo, hi = v["ci95"]
        return "unbounded" if hi == float("inf") else f"{lo:.2f}x–{hi:.2f}x"

    out = []
    for r in rows_:
        step = r["step"]
        out.append({
            "rung": r["label"], "runs": ", ".join(f"#{i}" for i in r["ids"]),
            "images/s": r.get("train_images_per_s"),
            "x baseline": 1.0 if r["index"] == 0 and r.get("train_images_per_s") else ratio(r["cumulative"]),
            "x baseline 95 %": interval(r["cumulative"]) if r["index"] else "",
            "x rung below": ratio(step), "x rung below 95 %": interval(step) if r["index"] else "",
            "this rung": "baseline" if r["index"] == 0 else
                         {"better": "faster", "worse": "slower", "within noise": "nothing measurable",
                          "no interval": "cannot tell", "no figure": "no figure"}[step["verdict"]],
            "time to target s": r.get("time_to_target_s"), "peak MB": r.get("peak_memory_mb"),
            "accuracy %": None if r.get("test_accuracy") is None else round(100 * r["test_accuracy"], 1),
            "thin": bool(r.get("thin")),
        })
    return out
