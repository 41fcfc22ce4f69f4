"""run_steps: the compression phase of a run. The parent model is measured as the baseline, each
step makes one or more variants from a copy of it, and every variant is evaluated on the test
split and benchmarked on the device it targets, then stored as a "variant" metric.

Variants are timed together with their baseline, in interleaved rounds on the same device
(baseline, v1, v2, ..., repeated), and every speed-up carries the 95 % interval of the ratio and
a verdict (optlab.stats): timing the baseline once and each variant after it let the machine's
drift decide which variant looked fast."""
from __future__ import annotations

import copy
import pickle
import re
import time
import traceback
from contextlib import nullcontext

import torch
from torch import nn

from optlab import device as devices
from optlab.compress.base import METHODS, CompressionRefused, Param, Variant, count_weights, method, number, of_layers
from optlab.compress.checkpoint import save_weights
from optlab.compress.context import Context
from optlab.hostload import HostWatch, plan_threads
from optlab.inference import static_figures, time_models, uses_events
from optlab.models import MODELS
from optlab.stats import ratio_interval, verdict
from optlab.train import evaluate

FIELDS = ("name", "method", "spec", "test_accuracy", "latency_ms_p50", "latency_ms_p90", "throughput_images_per_s",
          "throughput_batch", "size_mb", "params", "nonzero_params", "macs", "peak_memory_mb", "device",
          "device_label", "layers_converted", "notes", "latency_ms_p10", "latency_ms_ci95", "throughput_ci95",
          "speedup_vs_baseline", "speedup_ci95", "speedup_verdict", "throughput_speedup_vs_baseline",
          "throughput_speedup_ci95", "throughput_speedup_verdict")
GPU_MIN_REPEATS = 50   # batch-1 latency on a GPU is cheap to sample: never fewer


def _batch_sizes_ok(v) -> bool:
    return (isinstance(v, list) and 1 <= len(v) <= 8
            and all(isinstance(n, int) and not isinstance(n, bool) and 1 <= n <= 65536 for n in v))


@method("benchmark", settings_only=True,
        summary="measurement settings for every variant of the run (the baseline included); makes no variant",
        params={"repeats": Param(50, "a whole number 1..10000 of timed batch-1 calls (at least 50 are used on a GPU)",
                                 number(1, 10000, integer=True)),
                "warmup": Param(10, "a whole number 0..1000 of untimed calls first", number(0, 1000, integer=True)),
                "throughput_batch": Param(256, "a batch size 1..65536", number(1, 65536, integer=True)),
                "throughput_repeats": Param(20, "a whole number 1..10000 of timed calls at each larger batch",
                                            number(1, 10000, integer=True)),
                "rounds": Param(5, "a whole number 1..1000 of interleaved rounds the timed calls are spread over",
                                number(1, 1000, integer=True)),
                "batch_sizes": Param([1, 16, 256], "a list of 1..8 batch sizes, e.g. [1, 16, 256]", _batch_sizes_ok)})
def _benchmark_settings(model, spec, ctx):
    raise CompressionRefused("benchmark holds measurement settings; it makes no variant")


def bench_settings(steps: list[dict], device: torch.device) -> dict:
    """benchmark() keyword arguments from the run's `benchmark` steps (the last one wins)."""
    settings = METHODS.get("benchmark").resolve({})
    for step in steps:
        if step.get("method") == "benchmark":
            settings.update(step)
    settings.pop("method")
    if device.type == "cuda":
        settings["repeats"] = max(GPU_MIN_REPEATS, settings["repeats"])
    return settings


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:60]


def _empty(name: str, spec: dict, device: torch.device, label: str) -> dict:
    record = {k: None for k in FIELDS}
    record.update(name=name, method=spec.get("method"), spec=spec, device=device.type, device_label=label, notes=[])
    return record


class Recorder:
    """Measures variants and keeps their records; one per run_steps call."""

    def __init__(self, store, run_id: int, ctx: Context):
        self.store, self.run_id, self.ctx = store, run_id, ctx
        self.records: list[dict] = []
        root = store.artifacts_dir(run_id) / "variants"
        self.folder = root / f"set-{len(list(root.glob('set-*'))) + 1 if root.exists() else 1}"
        self.folder.mkdir(parents=True, exist_ok=True)
        self.saved = 0
        ctx.artifacts = self.folder

    def add(self, record: dict) -> None:
        self.store.add_metric(self.run_id, "variant", record)
        self.records.append(record)
        if record.get("error"):
            self.store.add_event(self.run_id, f"variant {record['name']}: {record['error']}", level="warning")
        else:
            acc = record["test_accuracy"]
            speed = (f", {record['speedup_vs_baseline']:.2f}x the baseline's batch-1 speed ({record['speedup_verdict']})"
                     if record.get("speedup_vs_baseline") else "")
            self.store.add_event(self.run_id, f"variant {record['name']} on {record['device_label']}: "
                                 f"accuracy {'n/a' if acc is None else f'{100 * acc:.2f} %'}, "
                                 f"batch-1 p50 {record['latency_ms_p50']:.3f} ms{speed}, {record['size_mb']:.2f} MB")

    def refusal(self, spec: dict, reason: str, *, failed: bool = False) -> dict:
        record = _empty(f"{spec.get('method')} ({'failed' if failed else 'refused'})", spec, self.ctx.device,
                        self.ctx.device_info.label)
        record.update(error=reason, refused=not failed)
        return record

    def measure(self, v: Variant, spec: dict) -> dict:
        """The variant's record (accuracy, size, counts, memory, MACs), without its timing: that
        is taken for all variants of a device together (`time_together`). Not stored yet."""
        ctx = self.ctx
        if isinstance(v.model, nn.Module):
            v.model.eval()
        accuracy = None
        if ctx.ds.accuracy_applies:
            batches = ((x.to(v.input_dtype), y) for x, y in ctx.test_batches(v.device))
            accuracy = evaluate(v.model, batches, nullcontext)
        figures = static_figures(v.model, self.example(v), v.device, throughput_batch=ctx.bench["throughput_batch"],
                                 memory=v.measure_memory, macs_model=v.macs_model)
        notes = list(v.notes)
        size_mb, artifact = None, v.artifact
        if artifact is None:
            try:
                self.saved += 1
                artifact = save_weights(v.model, self.folder / f"{self.saved:02d}-{_slug(v.name)}.pt")
            except (RuntimeError, TypeError, NotImplementedError, AttributeError, pickle.PicklingError) as e:
                # tensor subclasses (2:4 sparse, compiled engines) that do not serialise
                notes.append(f"size on disk not measured: its state dict could not be saved ({type(e).__name__})")
        if artifact is not None:
            size_mb = (v.size_bytes if v.size_bytes is not None else artifact.stat().st_size) / 2**20
        if figures["macs"] is None:
            notes.append("MACs not counted: torch's FLOP counter does not see this runtime's kernels")
        params, nonzero = v.counts or count_weights(v.model)
        label = devices.describe(v.device).label
        if v.runtime != "PyTorch":
            label += f" via {v.runtime}"
        record = _empty(v.name, spec, v.device, label)
        record.update(figures)
        record.update(test_accuracy=accuracy, size_mb=size_mb, params=params, nonzero_params=nonzero,
                      layers_converted=v.layers_converted, notes=notes, runtime=v.runtime,
                      artifact=str(artifact) if artifact else None, extra=v.extra, error=None,
                      measured_at=time.time())
        return record

    def example(self, v: Variant) -> torch.Tensor:
        return self.ctx.example(v.device).to(v.input_dtype)

    def time_together(self, measured: list[tuple[Variant, dict]]) -> None:
        """Time every measured variant of one device in interleaved rounds and add the timing to
        its record. The baseline comes first in each round."""
        settings = {k: v for k, v in self.ctx.bench.items()}
        timings = time_models([v.model for v, _ in measured], [self.example(v) for v, _ in measured],
                              use_events=[uses_events(v.timer, v.device) for v, _ in measured], **settings)
        for (_, record), timing in zip(measured, timings):
            record.update(timing)


def _context(store, run_id, ds, cfg, device, summary) -> Context:
    spec = MODELS.get(cfg.model)
    batch_size = summary.get("batch_size") if isinstance(summary.get("batch_size"), int) else 128
    return Context(ds=ds, cfg=cfg, device=device, device_info=devices.describe(device), batch_size=batch_size,
                   optimizer=summary.get("optimizer") or cfg.optimizer or spec.optimizer,
                   lr=summary.get("lr") or cfg.lr or spec.lr,
                   weight_decay=summary.get("weight_decay", cfg.weight_decay if cfg.weight_decay is not None
                                            else spec.weight_decay),
                   artifacts=store.artifacts_dir(run_id), bench=bench_settings(cfg.compress, device),
                   log=lambda message: store.add_event(run_id, message))


def run_steps(store, run_id: int, model: nn.Module, ds, cfg, device: torch.device, summary: dict) -> list[dict]:
    """Measure the parent as "baseline" on every device a variant targets, then apply each of
    `cfg.compress`'s steps to a copy of the parent and measure what it made. A step refused here
    (device, library) or failing is recorded with its reason and the others go on.

    Every variant is made and measured first; then the variants of each device are timed
    together with that device's baseline in interleaved rounds, and compared with it."""
    ctx = _context(store, run_id, ds, cfg, device, summary)
    recorder = Recorder(store, run_id, ctx)
    parent = model.eval()
    entries: list[dict] = []            # in the order they are stored: {"record", "variant", "step"}
    baselines: dict[str, dict] = {}

    def baseline(on: torch.device) -> dict:
        if on.type not in baselines:
            copy_ = parent if on.type == device.type else copy.deepcopy(parent).to(on).float()
            name = "baseline" if on.type == device.type else f"baseline ({on.type.upper()})"
            v = Variant(name=name, model=copy_, device=on, layers_converted=of_layers(0, parent),
                        notes=["the trained model, unmodified"])
            baselines[on.type] = {"record": recorder.measure(v, {"method": "baseline", "parent_run": run_id}),
                                  "variant": v, "step": None}
            entries.append(baselines[on.type])
        return baselines[on.type]

    baseline(device)
    for number, step in enumerate(cfg.compress):
        m = METHODS.get(step.get("method"))
        if m.settings_only:
            continue
        spec = m.resolve(step)
        errors = m.validate(step, ctx.device_info)
        if errors:
            entries.append({"record": recorder.refusal(spec, "; ".join(errors)), "variant": None, "step": number})
            continue
        try:
            made = m.apply(copy.deepcopy(parent), spec, ctx)
            measured = []
            for v in made if isinstance(made, list) else [made]:
                base = baseline(v.device)
                measured.append({"record": recorder.measure(v, spec), "variant": v, "step": number, "base": base})
            entries.extend(measured)
        except CompressionRefused as e:
            entries.append({"record": recorder.refusal(spec, str(e)), "variant": None, "step": number})
        except Exception as e:   # one broken method must not lose the trained run or the other variants
            store.add_event(run_id, traceback.format_exc(), level="error")
            entries.append({"record": recorder.refusal(spec, f"{type(e).__name__}: {e}", failed=True),
                            "variant": None, "step": number})

    _time_by_device(store, run_id, recorder, entries)
    for entry in entries:
        if entry.get("base") and not entry["record"].get("error"):
            _compare(entry["record"], entry["base"]["record"])
    for number in {e["step"] for e in entries if e["step"] is not None}:
        _compare_named([e["record"] for e in entries if e["step"] == number and not e["record"].get("error")])
    for entry in entries:
        recorder.add(entry["record"])
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return recorder.records


def _time_by_device(store, run_id: int, recorder: Recorder, entries: list[dict]) -> None:
    """Interleaved timing of each device's variants with its baseline (first in every round)."""
    groups: dict[str, list[dict]] = {}
    for entry in entries:
        if entry["variant"] is not None:
            groups.setdefault(entry["variant"].device.type, []).append(entry)
    for kind, group in groups.items():
        settings = recorder.ctx.bench
        store.add_event(run_id, f"timing {len(group)} model(s) on {kind.upper()} together: {settings['rounds']} "
                                "interleaved rounds (baseline first in each)")
        watch = HostWatch(plan_threads(torch.get_num_threads(), "gpu", 0, "torch threads"),
                          during="while its variants were timed").start()
        try:
            recorder.time_together([(e["variant"], e["record"]) for e in group])
        except Exception as e:   # a variant that evaluated but cannot be timed: say so on every record of the device
            store.add_event(run_id, traceback.format_exc(), level="error")
            for entry in group:
                entry["record"].update(error=f"timing failed: {type(e).__name__}: {e}", refused=False)
            continue
        host = watch.finish()    # other people's processes slow the CPU side of every timed call
        if host["disturbed"]:
            store.add_event(run_id, f"variant timing on {kind.upper()} disturbed: {host['reason']}", level="warning")
        for entry in group:
            entry["record"]["host"] = host
            if host["disturbed"]:
                entry["record"]["notes"].append(f"timing disturbed: {host['reason']}")


VERDICT_WORDS = {"better": "faster", "worse": "slower", "within noise": "within noise", "no interval": "no interval"}


def speedup(base_ms: float, base_ci, ms: float, ci) -> dict:
    """Baseline time / variant time (>1: the variant is faster) with its 95 % interval and verdict."""
    ratio, lo, hi = ratio_interval(base_ms, base_ci, ms, ci)
    return {"speedup": ratio, "ci95": [lo, hi] if lo is not None else None,
            "verdict": VERDICT_WORDS[verdict(ratio, lo, hi)]}


def _speed_text(s: dict, batch: int) -> str:
    interval = f" (95 % {s['ci95'][0]:.2f}x-{s['ci95'][1]:.2f}x)" if s["ci95"] else ""
    return f"{s['speedup']:.2f}x{interval} at batch {batch}: {s['verdict']}"


def _compare(record: dict, base: dict) -> dict:
    """Speed (at every batch size of the sweep) and accuracy relative to the baseline timed with it
    on the same device, each speed-up with its interval and verdict; notes state them."""
    base_rows = {row["batch"]: row for row in base.get("batch_sweep") or []}
    rows = []
    for row in record.get("batch_sweep") or []:
        b = base_rows.get(row["batch"])
        if b and b.get("latency_ms_p50") and row.get("latency_ms_p50"):
            s = speedup(b["latency_ms_p50"], b.get("latency_ms_ci95"), row["latency_ms_p50"], row.get("latency_ms_ci95"))
            rows.append({"batch": row["batch"], **s})
    record["speedup_by_batch"] = rows
    by_batch = {r["batch"]: r for r in rows}
    for prefix, batch in (("", 1), ("throughput_", record.get("throughput_batch"))):
        if batch in by_batch:
            s = by_batch[batch]
            record.update({f"{prefix}speedup_vs_baseline": s["speedup"], f"{prefix}speedup_ci95": s["ci95"],
                           f"{prefix}speedup_verdict": s["verdict"]})
    if rows:
        rounds = record.get("rounds")
        record["notes"].append(f"speed vs {base['name']}, timed together in {rounds} interleaved rounds on the same "
                               f"device (>1 is faster): " + "; ".join(_speed_text(r, r["batch"]) for r in rows))
        noise = [r for r in rows if r["verdict"] == "within noise"]
        if noise:
            record["notes"].append("within noise at batch " + ", ".join(str(r["batch"]) for r in noise)
                                   + f": not distinguishable from {base['name']} at this spread")
    if record.get("test_accuracy") is not None and base.get("test_accuracy") is not None:
        record["accuracy_change_vs_baseline"] = record["test_accuracy"] - base["test_accuracy"]
    record["baseline"] = base["name"]
    return record


def _compare_named(records: list[dict]) -> None:
    """Variants that name a control (a distilled student and the one trained without the teacher)."""
    by_name = {r["name"]: r for r in records}
    for r in records:
        other = by_name.get((r.get("extra") or {}).get("compare_to"))
        if other and r.get("test_accuracy") is not None and other.get("test_accuracy") is not None:
            gain = r["test_accuracy"] - other["test_accuracy"]
            r["accuracy_gain_vs_control"] = gain
            r["notes"].append(f"{100 * gain:+.2f} points of accuracy over {other['name']!r}")
