"""The shape of every record a bundle carries, and the checker that holds a record to it.

A bundle comes from someone else's machine, so nothing in it is trusted: each record is checked
against its schema here before anything reaches the store, and a record that does not fit is
refused with the path of the first bad value ("runs/3/run.json: summary.profile.top[2].ms:
expected a number, got a string"). The schemas cover every key the pages, the charts and the
report read; objects may carry other keys (a newer OptLab's figures), except the run config,
which must be one this OptLab can load.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

from optlab.config import RunConfig
from optlab.store import FINISHED


class SchemaError(ValueError):
    """A record that does not fit its schema; the message names the path and what was expected."""


# -- the schema language: a node is a type, a tuple of nodes (any of), or one of the classes below --
@dataclass(frozen=True)
class Obj:
    fields: dict
    required: tuple = ()
    closed: bool = False          # True: keys outside `fields` are refused

    def describe(self) -> str:
        return "an object"


@dataclass(frozen=True)
class ListOf:
    item: object
    max_items: int = 1_000_000
    length: int | None = None     # exactly this many items (an interval is a pair)

    def describe(self) -> str:
        return f"a list of {_describe(self.item)}" + (f" ({self.length} items)" if self.length else "")


@dataclass(frozen=True)
class DictOf:
    value: object

    def describe(self) -> str:
        return f"an object of {_describe(self.value)}"


@dataclass(frozen=True)
class OneOf:
    values: tuple

    def describe(self) -> str:
        return "one of " + ", ".join(repr(v) for v in self.values)


class Number:
    """int or float, never bool (JSON true is not a figure)."""
    describe = staticmethod(lambda: "a number")


class Integer:
    describe = staticmethod(lambda: "a whole number")


NUM, INT, STR, BOOL, NONE = Number, Integer, str, bool, type(None)
ANY_JSON = (NUM, STR, BOOL, NONE, ListOf((NUM, STR, BOOL, NONE)), DictOf((NUM, STR, BOOL, NONE)))


def opt(node):
    return (node, NONE)


_NAMES = {str: "a string", bool: "true or false", type(None): "null", dict: "an object", list: "a list"}


def _describe(node) -> str:
    if isinstance(node, tuple):
        return " or ".join(_describe(n) for n in node)
    if node in _NAMES:
        return _NAMES[node]
    return node.describe()


def _what(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true/false"
    return {str: "a string", int: "a whole number", float: "a number", dict: "an object", list: "a list"}.get(
        type(value), type(value).__name__)


def _fits(value, node) -> bool:
    try:
        check(value, node)
        return True
    except SchemaError:
        return False


def check(value, node, where: str = "") -> None:
    """Raise SchemaError unless `value` (parsed JSON) fits `node`."""
    def fail(expected: str):
        raise SchemaError(f"{where or 'the record'}: expected {expected}, got {_what(value)}")

    if isinstance(node, tuple):
        if not any(_fits(value, n) for n in node):
            # a single non-null alternative gives the more useful message (the path inside it)
            real = [n for n in node if n is not NONE]
            if len(real) == 1 and value is not None:
                check(value, real[0], where)
            fail(_describe(node))
        return
    if node is Number:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            fail("a number")
    elif node is Integer:
        if isinstance(value, bool) or not isinstance(value, int):
            fail("a whole number")
    elif node in (str, bool, type(None)):
        if type(value) is not node:
            fail(_describe(node))
    elif isinstance(node, OneOf):
        if not any(type(value) is type(v) and value == v for v in node.values):
            fail(node.describe())
    elif isinstance(node, ListOf):
        if not isinstance(value, list):
            fail(node.describe())
        if len(value) > node.max_items or (node.length is not None and len(value) != node.length):
            fail(node.describe() + f" of at most {node.max_items}" if node.length is None else node.describe())
        for i, item in enumerate(value):
            check(item, node.item, f"{where}[{i}]")
    elif isinstance(node, DictOf):
        if not isinstance(value, dict):
            fail(node.describe())
        for key, item in value.items():
            check(item, node.value, f"{where}.{key}" if where else key)
    elif isinstance(node, Obj):
        if not isinstance(value, dict):
            fail("an object")
        missing = [k for k in node.required if k not in value]
        if missing:
            raise SchemaError(f"{where or 'the record'}: missing required key(s) {', '.join(missing)}")
        if node.closed:
            unknown = sorted(set(value) - set(node.fields))
            if unknown:
                raise SchemaError(f"{where or 'the record'}: unknown key(s) {', '.join(unknown)}; "
                                  f"allowed: {', '.join(sorted(node.fields))}")
        for key, sub in node.fields.items():
            if key in value:
                check(value[key], sub, f"{where}.{key}" if where else key)
    else:
        raise TypeError(f"not a schema node: {node!r}")


# -- the records ------------------------------------------------------------------------------------
# RunConfig's fields, typed as the dataclass holds them; closed, because the pages load it back
# with RunConfig.from_dict, which refuses settings it does not know.
_CONFIG_TYPES = {
    "model": STR, "dataset": STR, "precision": STR, "batch_size": (INT, OneOf(("auto",))), "max_batch_size": INT,
    "epochs": INT, "lr": opt(NUM), "optimizer": opt(STR), "weight_decay": opt(NUM), "warmup_fraction": NUM,
    "label_smoothing": NUM, "channels_last": BOOL, "compile": BOOL, "pipeline": STR, "num_workers": INT,
    "augment": BOOL, "image_size": opt(INT), "limit_train": opt(INT), "limit_test": opt(INT),
    "target_accuracy": NUM, "seed": INT, "device": STR, "data_path": opt(STR), "profile": BOOL, "repeats": INT, "gpus": INT,
    "compress": ListOf(Obj({"method": STR}, required=("method",)), max_items=100),
}
assert set(_CONFIG_TYPES) == {f.name for f in fields(RunConfig)}, "bundle_schema: RunConfig gained a field"
CONFIG = Obj(_CONFIG_TYPES, required=("model", "dataset", "precision", "batch_size"), closed=True)

DEVICE = Obj({"kind": OneOf(("cuda", "cpu")), "name": STR, "label": STR, "index": opt(INT),
              "capability": opt(ListOf(INT, length=2)), "total_memory_mb": opt(NUM), "supports_bf16": BOOL,
              "supports_fp16": BOOL, "has_tensor_cores": BOOL}, required=("kind", "name"))

THROUGHPUT = Obj({"value": opt(NUM), "ci95": opt(ListOf(opt(NUM), length=2)), "p10": opt(NUM), "p90": opt(NUM),
                  "mean_rate": opt(NUM), "steps": INT, "seconds": NUM, "cv_steps": opt(NUM),
                  "quality": OneOf(("solid", "thin")), "why": opt(STR), "unit": STR}, required=("value",))

PROFILE = Obj({
    "device": OneOf(("cuda", "cpu")), "device_name": opt(STR), "gpu_kernels_recorded": BOOL, "reason": opt(STR),
    "steps": INT, "step_ms": ListOf(NUM), "window_ms": NUM, "source": opt(STR),
    "categories": ListOf(Obj({"category": STR, "ms": NUM, "share": NUM}, required=("category", "ms", "share"))),
    "top_kind": STR,
    "top": ListOf(Obj({"name": STR, "category": STR, "ms": NUM, "calls": INT, "mean_us": NUM, "share": opt(NUM),
                       "tensor_core": BOOL}, required=("name", "category", "ms", "calls", "mean_us"))),
    "utilisation": Obj({"basis": OneOf(("gpu", "cpu")), "label": STR, "busy_ms": NUM, "idle_ms": NUM,
                        "busy_share": opt(NUM), "idle_share": opt(NUM)}, required=("basis",)),
    "host": Obj({"basis": OneOf(("gpu", "cpu")), "step_ms": opt(NUM), "host_ms": opt(NUM), "host_wait_ms": opt(NUM),
                 "device_ms": opt(NUM), "device_label": STR}, required=("basis",)),
    "tensor_cores": Obj({"share": opt(NUM), "heuristic": opt(STR), "reason": opt(STR), "tensor_core_ms": NUM,
                         "kernel_ms": NUM}),
    "kernel_us_median": opt(NUM), "kernels_per_step": opt(NUM),
    "memory": opt(Obj({"phases": ListOf(Obj({"phase": STR, "peak_above_start_mb": NUM, "allocated_mb_per_step": NUM,
                                             "freed_mb_per_step": NUM},
                                            required=("phase", "peak_above_start_mb", "allocated_mb_per_step"))),
                       "label": STR, "device": STR, "basis": STR, "records": INT})),
    "memory_reason": opt(STR), "definitions": DictOf(STR), "trace_file": opt(STR),
}, required=("device", "steps", "categories", "top", "utilisation", "host"))

VARIANT = Obj({
    "name": STR, "method": opt(STR), "spec": opt(Obj({})), "test_accuracy": opt(NUM), "latency_ms_p50": opt(NUM),
    "latency_ms_p90": opt(NUM), "throughput_images_per_s": opt(NUM), "throughput_batch": opt(INT),
    "size_mb": opt(NUM), "params": opt(INT), "nonzero_params": opt(INT), "macs": opt(NUM), "peak_memory_mb": opt(NUM),
    "device": opt(STR), "device_label": STR, "layers_converted": opt(STR), "notes": opt(ListOf(STR)),
    "error": opt(STR), "artifact": opt(STR), "runtime": opt(STR),
}, required=("name", "device_label"))

SUMMARY = Obj({
    "device": OneOf(("cuda", "cpu")), "device_name": STR, "device_label": STR,
    "batch_size": (INT, STR), "image_size": opt(INT), "train_images": INT, "test_images": INT, "epochs": INT,
    "steps": INT, "warmup_steps": INT, "steady_steps": INT,
    "train_images_per_s": opt(NUM), "throughput": opt(THROUGHPUT), "train_images_per_s_mean": opt(NUM),
    "step_ms_p50": opt(NUM), "step_ms_p90": opt(NUM), "input_wait_share": opt(NUM), "input_wait_ms_p50": opt(NUM),
    "forward_backward_ms_p50": opt(NUM), "optimizer_ms_p50": opt(NUM),
    "peak_memory_mb": opt(NUM), "peak_reserved_mb": opt(NUM), "memory_kind": opt(STR),
    "accuracy_applies": BOOL, "test_accuracy": opt(NUM), "best_test_accuracy": opt(NUM),
    "accuracy_per_epoch": opt(ListOf(NUM)), "train_seconds": opt(NUM), "target_accuracy": opt(NUM),
    "time_to_target_s": opt(NUM), "versions": opt(DictOf((STR, NUM, NONE))), "params": opt(INT),
    "nonzero_params": opt(INT), "weights_mb": opt(NUM), "weights_path": opt(STR), "trace_dir": opt(STR),
    "profile": opt(PROFILE), "profile_inference": opt(PROFILE), "variants": opt(ListOf(VARIANT)),
})

ORIGIN = Obj({"host": STR, "store": STR, "run_id": INT, "created_at": NUM, "exported_at": NUM,
              "imported_at": NUM, "bundle": STR}, required=("host", "store", "run_id", "created_at"))

RUN = Obj({
    "id": INT, "status": OneOf(FINISHED), "created_at": NUM, "started_at": opt(NUM), "finished_at": opt(NUM),
    "user": STR, "sweep_id": opt(STR), "parent_id": opt(INT), "label": opt(STR), "config": CONFIG,
    "device": opt(DEVICE), "summary": opt(SUMMARY), "error": opt(STR), "log_tail": opt(STR), "origin": opt(ORIGIN),
}, required=("id", "status", "created_at", "user", "config"), closed=True)

# Metric rows by kind (the store's metrics table: one JSON object per row).
METRIC_DATA = {
    "epoch": Obj({"epoch": INT, "train_loss": NUM, "test_accuracy": opt(NUM), "train_seconds": NUM,
                  "cumulative_train_seconds": NUM, "images_per_s": opt(NUM)},
                 required=("epoch", "cumulative_train_seconds")),
    "progress": Obj({"step": opt(INT), "epoch": opt(INT), "loss": opt(NUM), "images_per_s": opt(NUM)}),
    "telemetry": Obj({"t": NUM, "source": STR, "phase": opt(STR)}, required=("t",)),
    "step_times": Obj({"step_ms": ListOf(NUM), "images": ListOf(INT), "input_wait_ms": ListOf(NUM)},
                      required=("step_ms", "images")),
    "variant": VARIANT,
    "advice": Obj({"rule": STR, "title": STR, "change": Obj({}), "expected": STR, "expected_factor": opt(NUM),
                   "metric": opt(STR), "prediction_source": STR, "reference": BOOL, "parent_id": opt(INT),
                   "parent_value": opt(NUM), "parent_device_label": opt(STR)},
                  required=("rule", "title", "change", "expected", "prediction_source")),
}
METRIC = Obj({"kind": OneOf(tuple(METRIC_DATA)), "t": NUM, "step": opt(INT), "data": Obj({})},
             required=("kind", "t", "data"), closed=True)
EVENT = Obj({"t": NUM, "level": OneOf(("info", "warning", "error")), "message": STR},
            required=("t", "level", "message"), closed=True)

MANIFEST = Obj({"format": OneOf(("optlab-bundle",)), "version": OneOf((1,)), "created_at": NUM,
                "origin": Obj({"host": STR, "store": STR}, required=("host", "store")),
                "runs": ListOf(INT, max_items=1000), "traces": BOOL, "weights": BOOL},
               required=("format", "version", "created_at", "origin", "runs"), closed=True)


def check_metric(row, where: str) -> None:
    """A metric row: the envelope, then its data against its kind's schema."""
    check(row, METRIC, where)
    check(row["data"], METRIC_DATA[row["kind"]], f"{where}.data")
