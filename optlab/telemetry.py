"""Telemetry: a background thread that samples the run's GPU (NVML) or, without one, the process.

Several samples a second so even a ten-second run gets a curve; each NVML field is read on its
own so one unsupported field does not drop the others; only the GPU the run uses is recorded;
rows are written to the store in batches from the sampling thread, never from the training loop.
When NVML is missing the sampler says so and records the worker's CPU and memory instead.
It never fails a run: every error is caught, reported as an event, and sampling goes on.
"""
from __future__ import annotations

import os
import threading
import time
from typing import Callable

# NVML field -> (reader(pynvml, handle) -> value). Units are in the names.
NVML_FIELDS: dict[str, Callable] = {
    "gpu_util_pct": lambda nv, h: nv.nvmlDeviceGetUtilizationRates(h).gpu,
    "mem_util_pct": lambda nv, h: nv.nvmlDeviceGetUtilizationRates(h).memory,
    "mem_used_mb": lambda nv, h: nv.nvmlDeviceGetMemoryInfo(h).used / 2**20,
    "power_w": lambda nv, h: nv.nvmlDeviceGetPowerUsage(h) / 1000,
    "temperature_c": lambda nv, h: nv.nvmlDeviceGetTemperature(h, nv.NVML_TEMPERATURE_GPU),
    "sm_clock_mhz": lambda nv, h: nv.nvmlDeviceGetClockInfo(h, nv.NVML_CLOCK_SM),
    "mem_clock_mhz": lambda nv, h: nv.nvmlDeviceGetClockInfo(h, nv.NVML_CLOCK_MEM),
    "energy_mj": lambda nv, h: nv.nvmlDeviceGetTotalEnergyConsumption(h),
    # why the clocks are where they are (a bit mask; see CLOCK_EVENT_REASONS)
    "clock_event_reasons": lambda nv, h: getattr(nv, "nvmlDeviceGetCurrentClocksEventReasons",
                                                 getattr(nv, "nvmlDeviceGetCurrentClocksThrottleReasons", None))(h),
}

# NVML's clock event ("throttle") reason bits. Idle and application-clock settings are normal;
# the others mean the GPU was held below its clocks while a run was measured.
CLOCK_EVENT_REASONS = {0x1: "idle", 0x2: "application clocks setting", 0x4: "software power cap",
                       0x8: "hardware slowdown", 0x10: "sync boost", 0x20: "software thermal slowdown",
                       0x40: "hardware thermal slowdown", 0x80: "hardware power brake", 0x100: "display clock setting"}
BENIGN_REASONS = 0x1 | 0x2 | 0x10 | 0x100


def clock_reasons(mask: int) -> list[str]:
    """The names of the bits set in an NVML clock-event-reason mask."""
    return [name for bit, name in CLOCK_EVENT_REASONS.items() if mask & bit]


def clock_stability(rows: list[dict], phase: str = "train") -> dict | None:
    """What the GPU's clocks did during `phase`: SM clock range, and every slowdown reason seen.
    `disturbed` is True when a non-benign reason (power cap, thermal, power brake) appeared or the
    SM clock moved by more than 10 %: a measurement worth repeating."""
    rows = [r for r in rows if r.get("phase") == phase]
    clocks = [r["sm_clock_mhz"] for r in rows if isinstance(r.get("sm_clock_mhz"), (int, float))]
    masks = [r["clock_event_reasons"] for r in rows if isinstance(r.get("clock_event_reasons"), int)]
    if not clocks and not masks:
        return None
    seen = 0
    for m in masks:
        seen |= m
    slowdowns = clock_reasons(seen & ~BENIGN_REASONS)
    moved = bool(clocks) and (max(clocks) - min(clocks)) > 0.1 * max(clocks)
    return {"sm_clock_mhz_min": min(clocks) if clocks else None, "sm_clock_mhz_max": max(clocks) if clocks else None,
            "samples": len(rows), "slowdown_reasons": slowdowns, "clock_moved": moved,
            "disturbed": bool(slowdowns) or moved}


def read_fields(readers: dict[str, Callable[[], float]], unsupported: dict[str, str],
                errors: tuple[type[BaseException], ...]) -> dict:
    """Call every reader on its own. A reader that raises one of `errors` is left out of this row
    and remembered in `unsupported` (name -> reason) so it is not retried every sample."""
    row = {}
    for name, read in readers.items():
        if name in unsupported:
            continue
        try:
            row[name] = read()
        except errors as e:
            unsupported[name] = str(e) or type(e).__name__
    return row


class ProcessSampler:
    """CPU % and resident memory of this process and its children (DataLoader workers)."""

    def __init__(self):
        import psutil
        self.psutil = psutil
        self.me = psutil.Process(os.getpid())
        self.known: dict[int, object] = {}
        self.me.cpu_percent(None)   # the first call only starts the interval

    def __call__(self) -> dict:
        procs = [self.me]
        try:
            procs += self.me.children(recursive=True)
        except self.psutil.Error:
            pass
        cpu, rss = 0.0, 0
        for p in procs:
            p = self.known.setdefault(p.pid, p)
            try:
                cpu += p.cpu_percent(None)
                rss += p.memory_info().rss
            except self.psutil.Error:
                self.known.pop(p.pid, None)
        return {"cpu_pct": cpu, "rss_mb": rss / 2**20, "processes": len(procs)}


def _nvml_missing() -> str | None:
    """Why NVML cannot be used here, or None when it can."""
    try:
        import pynvml
        pynvml.nvmlInit()
    except ImportError:
        return "nvidia-ml-py is not installed"
    except Exception as e:  # pynvml.NVMLError_LibraryNotFound on machines without a driver
        return str(e) or type(e).__name__
    return None


def nvml_handle(device_index: int = 0):
    """(pynvml module, handle of the GPU this process uses as cuda:device_index).

    NVML numbers GPUs physically and ignores CUDA_VISIBLE_DEVICES, so the GPU is found by the
    UUID (or PCI bus id) torch reports for the device. Raises pynvml.NVMLError or ImportError."""
    import pynvml
    pynvml.nvmlInit()
    try:
        import torch
        props = torch.cuda.get_device_properties(device_index)
        uuid = str(props.uuid)
        try:
            return pynvml, pynvml.nvmlDeviceGetHandleByUUID(uuid if uuid.startswith(("GPU-", "MIG-")) else "GPU-" + uuid)
        except pynvml.NVMLError:
            bus = f"{props.pci_domain_id:08X}:{props.pci_bus_id:02X}:{props.pci_device_id:02X}.0"
            return pynvml, pynvml.nvmlDeviceGetHandleByPciBusId(bus)
    except (ImportError, AttributeError, RuntimeError, AssertionError):
        # torch cannot describe the device: read the physical index off CUDA_VISIBLE_DEVICES
        visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")
        entry = visible[device_index].strip() if device_index < len(visible) else ""
        return pynvml, pynvml.nvmlDeviceGetHandleByIndex(int(entry) if entry.isdigit() else device_index)


class TelemetrySampler:
    """Samples every `interval_s` on a daemon thread and writes rows to the store's "telemetry"
    series every `flush_s`. `phase` is stamped on each row (the worker sets it from progress)."""

    def __init__(self, store, run_id: int, device=None, interval_s: float = 0.2, flush_s: float = 1.0):
        self.store, self.run_id = store, run_id
        self.interval_s, self.flush_s = interval_s, flush_s
        self.phase = "setup"
        self.source = "none"
        self.unsupported: dict[str, str] = {}
        self.rows: list[dict] = []          # every row taken, kept for the run's energy figure
        self._pending: list[dict] = []
        self._readers: dict[str, Callable[[], float]] = {}
        self._errors: tuple[type[BaseException], ...] = (Exception,)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._setup(device)

    def _setup(self, device) -> None:
        try:
            self._process = ProcessSampler()
        except ImportError:
            self._process = None
        kind = getattr(device, "type", None) or str(device or "cpu").split(":")[0]
        if kind == "cuda":
            try:
                nv, handle = nvml_handle(getattr(device, "index", None) or 0)
                self._readers = {name: (lambda f=f: f(nv, handle)) for name, f in NVML_FIELDS.items()}
                self._errors = (nv.NVMLError,)
                self.source = "nvml"
                self._event(f"telemetry: NVML on {nv.nvmlDeviceGetName(handle)}, sampled every {self.interval_s} s")
                return
            except Exception as e:  # NVMLError, ImportError, a device torch cannot describe
                reason = str(e) or type(e).__name__
        else:
            reason = _nvml_missing()
        self.source = "process" if self._process else "none"
        what = "recording process CPU and memory" if self._process else "psutil is missing too: no telemetry"
        if reason is None:   # NVML works, but this run is on the CPU
            self._event(f"telemetry: the run uses the CPU; {what}")
        else:
            self._event(f"NVML unavailable: {reason}; {what}", level="warning")

    def _event(self, message: str, level: str = "info") -> None:
        try:
            self.store.add_event(self.run_id, message, level=level)
        except Exception:
            pass

    # -- sampling -----------------------------------------------------------------------------
    def sample(self) -> dict:
        """One row: the NVML fields that answered (nvml), and this process's CPU and memory."""
        before = set(self.unsupported)
        row = {"t": time.time(), "source": self.source, "phase": self.phase}
        row.update(read_fields(self._readers, self.unsupported, self._errors))
        if self._process is not None:
            try:
                row.update(self._process())
            except Exception:
                pass
        for name in set(self.unsupported) - before:
            self._event(f"telemetry: {name} not available on this GPU ({self.unsupported[name]})", level="warning")
        return row

    def start(self) -> "TelemetrySampler":
        if self.source != "none" and self._thread is None:
            self._thread = threading.Thread(target=self._loop, name=f"telemetry-{self.run_id}", daemon=True)
            self._thread.start()
        return self

    def _loop(self) -> None:
        last_flush = time.monotonic()
        while not self._stop.is_set():
            try:
                row = self.sample()
                self.rows.append(row)
                self._pending.append(row)
                if time.monotonic() - last_flush >= self.flush_s:
                    self.flush()
                    last_flush = time.monotonic()
            except Exception as e:  # telemetry must never end the run
                self._event(f"telemetry sample failed: {type(e).__name__}: {e}", level="warning")
            self._stop.wait(self.interval_s)

    def flush(self) -> None:
        rows, self._pending = self._pending, []
        if rows:
            try:
                self.store.add_metrics(self.run_id, "telemetry", rows)
            except Exception:
                self._pending = rows + self._pending   # the store was busy: try again next flush

    def stop(self) -> None:
        """Take a last sample, stop the thread and write what is left."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self.source != "none":
            try:
                row = self.sample()
                self.rows.append(row)
                self._pending.append(row)
            except Exception:
                pass
        self.flush()


def training_energy(rows: list[dict], train_seconds: float | None, images: int | None) -> dict | None:
    """Energy of the training phase from the NVML total-energy counter.

    The counter's increase over the samples stamped phase "train" (evaluation and set-up left
    out) gives the mean training power; times the run's measured training seconds that is the
    energy, divided by the images trained on it is J per image. None without energy samples."""
    joules, seconds = 0.0, 0.0
    window: list[dict] = []
    for row in rows + [{"phase": None}]:
        if row.get("phase") == "train" and "energy_mj" in row:
            window.append(row)
            continue
        if len(window) >= 2:
            joules += (window[-1]["energy_mj"] - window[0]["energy_mj"]) / 1000
            seconds += window[-1]["t"] - window[0]["t"]
        window = []
    if seconds <= 0 or not train_seconds:
        return None
    power = joules / seconds
    energy = power * train_seconds
    return {"energy_j": energy, "avg_train_power_w": power,
            "joules_per_image": energy / images if images else None,
            "energy_source": "NVML total-energy counter over the training phase"}


def telemetry_figures(rows: list[dict], summary: dict, source: str) -> dict:
    """What the samples add to a finished run's summary: energy per image, the clocks during
    training, and the mean GPU utilisation and power while it trained."""
    images = (summary.get("train_images") or 0) * (summary.get("epochs") or 0)
    out = {"telemetry_source": source, **(training_energy(rows, summary.get("train_seconds"), images) or {})}
    clocks = clock_stability(rows)
    if clocks:
        out["gpu_clocks"] = clocks
    train = [r for r in rows if r.get("phase") == "train"]
    for name in ("gpu_util_pct", "power_w"):
        values = [r[name] for r in train if isinstance(r.get(name), (int, float))]
        if values:
            out[f"train_{name}_mean"] = sum(values) / len(values)
    return out
