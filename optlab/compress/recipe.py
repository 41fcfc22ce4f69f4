"""run_steps: the compression phase of a run. The parent model is measured as the baseline, each
step makes one or more variants from a copy of it, and every variant is evaluated on the test
split and benchmarked on the device it targets, then stored as a "variant" metric."""
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
from optlab.inference import benchmark
from optlab.models import MODELS
from optlab.train import evaluate

FIELDS = ("name", "method", "spec", "test_accuracy", "latency_ms_p50", "latency_ms_p90", "throughput_images_per_s",
          "throughput_batch", "size_mb", "params", "nonzero_params", "macs", "peak_memory_mb", "device",
          "device_label", "layers_converted", "notes")
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
                "throughput_repeats": Param(10, "a whole number 1..10000", number(1, 10000, integer=True)),
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
            self.store.add_event(self.run_id, f"variant {record['name']} on {record['device_label']}: "
                                 f"accuracy {'n/a' if acc is None else f'{100 * acc:.2f} %'}, "
                                 f"batch-1 p50 {record['latency_ms_p50']:.3f} ms, {record['size_mb']:.2f} MB")

    def refused(self, spec: dict, reason: str, *, failed: bool = False) -> None:
        record = _empty(f"{spec.get('method')} ({'failed' if failed else 'refused'})", spec, self.ctx.device,
                        self.ctx.device_info.label)
        record.update(error=reason, refused=not failed)
        self.add(record)

    def measure(self, v: Variant, spec: dict) -> dict:
        """The variant's record (accuracy, benchmark, size, counts); not stored yet."""
        ctx = self.ctx
        if isinstance(v.model, nn.Module):
            v.model.eval()
        accuracy = None
        if ctx.ds.accuracy_applies:
            batches = ((x.to(v.input_dtype), y) for x, y in ctx.test_batches(v.device))
            accuracy = evaluate(v.model, batches, nullcontext)
        example = ctx.example(v.device).to(v.input_dtype)
        bench = benchmark(v.model, example, v.device, timer=v.timer, memory=v.measure_memory,
                          macs_model=v.macs_model, **ctx.bench)
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
            size_mb = artifact.stat().st_size / 2**20
        if bench["macs"] is None:
            notes.append("MACs not counted: torch's FLOP counter does not see this runtime's kernels")
        params, nonzero = v.counts or count_weights(v.model)
        label = devices.describe(v.device).label
        if v.runtime != "PyTorch":
            label += f" via {v.runtime}"
        record = _empty(v.name, spec, v.device, label)
        record.update({k: bench[k] for k in ("latency_ms_p50", "latency_ms_p90", "throughput_images_per_s",
                                             "throughput_batch", "macs", "peak_memory_mb")})
        record.update(test_accuracy=accuracy, size_mb=size_mb, params=params, nonzero_params=nonzero,
                      layers_converted=v.layers_converted, notes=notes, runtime=v.runtime,
                      artifact=str(artifact) if artifact else None, extra=v.extra, error=None,
                      measured_at=time.time(),
                      **{k: bench[k] for k in ("batch_sweep", "memory_kind", "latency_repeats",
                                               "throughput_repeats", "timer", "warmup", "threads")})
        return record


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
    (device, library) or failing is recorded with its reason and the others go on."""
    ctx = _context(store, run_id, ds, cfg, device, summary)
    recorder = Recorder(store, run_id, ctx)
    parent = model.eval()
    baselines: dict[str, dict] = {}

    def baseline(on: torch.device) -> dict:
        if on.type not in baselines:
            copy_ = parent if on.type == device.type else copy.deepcopy(parent).to(on).float()
            name = "baseline" if on.type == device.type else f"baseline ({on.type.upper()})"
            spec = {"method": "baseline", "parent_run": run_id}
            baselines[on.type] = recorder.measure(Variant(
                name=name, model=copy_, device=on, layers_converted=of_layers(0, parent),
                notes=["the trained model, unmodified"]), spec)
            recorder.add(baselines[on.type])
        return baselines[on.type]

    baseline(device)
    for step in cfg.compress:
        m = METHODS.get(step.get("method"))
        if m.settings_only:
            continue
        spec = m.resolve(step)
        errors = m.validate(step, ctx.device_info)
        if errors:
            recorder.refused(spec, "; ".join(errors))
            continue
        try:
            made = m.apply(copy.deepcopy(parent), spec, ctx)
            records = []
            for v in made if isinstance(made, list) else [made]:
                base = baseline(v.device)
                records.append(_compare(recorder.measure(v, spec), base))
            _compare_named(records)
            for record in records:
                recorder.add(record)
        except CompressionRefused as e:
            recorder.refused(spec, str(e))
        except Exception as e:   # one broken method must not lose the trained run or the other variants
            store.add_event(run_id, traceback.format_exc(), level="error")
            recorder.refused(spec, f"{type(e).__name__}: {e}", failed=True)
        finally:
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return recorder.records


def _compare(record: dict, base: dict) -> dict:
    """Latency (at every batch size of the sweep) and accuracy relative to the baseline measured
    on the same device, with a note that states the measured ratios."""
    if record.get("latency_ms_p50") and base.get("latency_ms_p50"):
        record["speedup_vs_baseline"] = base["latency_ms_p50"] / record["latency_ms_p50"]
        base_sweep = {row["batch"]: row["latency_ms_p50"] for row in base.get("batch_sweep") or []}
        record["speedup_by_batch"] = [{"batch": row["batch"], "speedup": base_sweep[row["batch"]] / row["latency_ms_p50"]}
                                      for row in record.get("batch_sweep") or []
                                      if base_sweep.get(row["batch"]) and row["latency_ms_p50"]]
        ratios = ", ".join(f"{r['speedup']:.2f}x at batch {r['batch']}" for r in record["speedup_by_batch"])
        record["notes"].append(f"measured speed vs {base['name']} (same device, >1 is faster): {ratios}")
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
