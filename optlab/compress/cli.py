"""`python -m optlab compress ID --prune unstructured:0.5 --quantize int8-static ...`, and the same
flags on `python -m optlab run`.

Each flag word maps to a compression step (plain data, as stored with the run) through the
tables below, so adding a method's flag is adding one entry.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

from optlab.cli import command, get_run, print_table

# word (or word:value) -> the step it means; `value` is the text after the colon, or None.
PRUNE = {
    "unstructured": lambda value: {"method": "prune_unstructured", "sparsity": _fraction(value, 0.5)},
    "structured": lambda value: {"method": "prune_structured", "ratio": _fraction(value, 0.3)},
    "2:4": lambda value: {"method": "prune_2to4"},
}
QUANTIZE = {
    "int8-static": lambda value: {"method": "int8_static"},
    "dynamic": lambda value: {"method": "int8_dynamic"},
    "bf16": lambda value: {"method": "half_precision", "dtype": "bf16"},
    "fp16": lambda value: {"method": "half_precision", "dtype": "fp16"},
    "torchao-int8-weight": lambda value: {"method": "torchao_int8_weight_only"},
    "torchao-int8-dynamic": lambda value: {"method": "torchao_int8_dynamic"},
    "torchao-float8": lambda value: {"method": "torchao_float8"},
    "openvino-int8": lambda value: {"method": "openvino_int8"},
}
DISTILL = {
    "speednet": lambda value: {"method": "distill", "student": "speednet", "width": _fraction(value, 0.5, upper=1.0)},
    "mobilenet_v3_small": lambda value: {"method": "distill", "student": "mobilenet_v3_small",
                                         "width": _fraction(value, 1.0, upper=1.0)},
}
EXPORT = {
    "onnx": lambda value: {"method": "export_onnx"},
    "tensorrt": lambda value: {"method": "export_tensorrt"},
    "openvino": lambda value: {"method": "export_openvino"},
}
FLAGS = {  # flag -> (table, help)
    "--prune": (PRUNE, "unstructured:SPARSITY, structured:RATIO or 2:4 (GPU 8.0+ only)"),
    "--quantize": (QUANTIZE, "int8-static, dynamic, bf16, fp16 (GPU), torchao-int8-weight, torchao-int8-dynamic, "
                             "torchao-float8 (torchao methods need torchao and a GPU), openvino-int8 (NNCF, for "
                             "OpenVINO's CPU plugin; needs openvino and nncf)"),
    "--distill": (DISTILL, "student speednet[:WIDTH] or mobilenet_v3_small[:WIDTH]"),
    "--export": (EXPORT, "onnx (ONNX Runtime), tensorrt (needs torch_tensorrt and a GPU) or openvino "
                         "(OpenVINO's CPU plugin; needs openvino)"),
}
# setting flag -> (step key, the methods it applies to)
SETTINGS = {
    "--finetune-epochs": ("finetune_epochs", ("prune_unstructured", "prune_structured")),
    "--finetune-steps": ("finetune_steps", ("prune_unstructured", "prune_structured")),
    "--distill-steps": ("steps", ("distill",)),
}
BENCH = {  # flag -> benchmark setting
    "--bench-repeats": "repeats",
    "--bench-warmup": "warmup",
    "--throughput-batch": "throughput_batch",
    "--bench-rounds": "rounds",
}


def _fraction(text: str | None, default: float, upper: float = 1.0) -> float:
    if text is None or text == "":
        return default
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number; give a fraction such as 0.5") from None
    if not 0 < value <= upper:
        raise argparse.ArgumentTypeError(f"{value} is not a fraction in (0, {upper:g})")
    return value


class Steps(list):
    """The compression steps being parsed, with settings that apply to steps given before or after."""

    def __init__(self):
        super().__init__()
        self.settings: dict[str, tuple[object, tuple[str, ...]]] = {}
        self.bench: dict = {}

    def add_step(self, step: dict) -> None:
        for key, (value, methods) in self.settings.items():
            if step["method"] in methods:
                step[key] = value
        self.append(step)

    def set(self, key: str, value, methods: tuple[str, ...]) -> None:
        self.settings[key] = (value, methods)
        for step in self:
            if step["method"] in methods:
                step[key] = value

    def set_bench(self, key: str, value) -> None:
        self.bench[key] = value
        benchmark = next((s for s in self if s["method"] == "benchmark"), None)
        if benchmark is None:
            self.insert(0, {"method": "benchmark"})
            benchmark = self[0]
        benchmark[key] = value


def _steps(namespace) -> Steps:
    if not isinstance(getattr(namespace, "compress_steps", None), Steps):
        namespace.compress_steps = Steps()
    return namespace.compress_steps


class StepAction(argparse.Action):
    def __call__(self, parser, namespace, text, option_string=None):
        table = FLAGS[option_string][0]
        word, _, value = text.partition(":") if text != "2:4" else (text, "", "")
        if word not in table:
            parser.error(f"{option_string} {text!r}: choose one of: {', '.join(table)}")
        try:
            step = table[word](value or None)
        except argparse.ArgumentTypeError as e:
            parser.error(f"{option_string} {text!r}: {e}")
        _steps(namespace).add_step(step)


class SettingAction(argparse.Action):
    def __call__(self, parser, namespace, value, option_string=None):
        key, methods = SETTINGS[option_string]
        _steps(namespace).set(key, value, methods)


class BenchAction(argparse.Action):
    def __call__(self, parser, namespace, value, option_string=None):
        _steps(namespace).set_bench(BENCH[option_string] if option_string in BENCH else "batch_sizes", value)


def _batch_sizes(text: str) -> list[int]:
    try:
        return [int(n) for n in text.split(",") if n.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give batch sizes as 1,16,256") from None


def add_compress_flags(p: argparse.ArgumentParser) -> None:
    """The compression flags; parsing them leaves the steps in `args.compress_steps`."""
    g = p.add_argument_group("compression (variants measured after training)")
    for flag, (_, help_text) in FLAGS.items():
        g.add_argument(flag, action=StepAction, dest="compress_steps", metavar="WHAT", help=help_text)
    g.add_argument("--finetune-epochs", action=SettingAction, dest="compress_steps", type=int, metavar="N",
                   help="fine-tune epochs after pruning (0: none; default 1)")
    g.add_argument("--finetune-steps", action=SettingAction, dest="compress_steps", type=int, metavar="N",
                   help="fine-tune steps after pruning (overrides epochs)")
    g.add_argument("--distill-steps", action=SettingAction, dest="compress_steps", type=int, metavar="N",
                   help="training steps for each student (default: the run's epochs)")
    g.add_argument("--bench-repeats", action=BenchAction, dest="compress_steps", type=int, metavar="N",
                   help="timed batch-1 calls per variant (default 50; at least 50 on a GPU)")
    g.add_argument("--bench-warmup", action=BenchAction, dest="compress_steps", type=int, metavar="N")
    g.add_argument("--bench-rounds", action=BenchAction, dest="compress_steps", type=int, metavar="N",
                   help="interleaved rounds the timed calls of the baseline and every variant are spread over "
                        "(default 5)")
    g.add_argument("--throughput-batch", action=BenchAction, dest="compress_steps", type=int, metavar="N",
                   help="batch size for the throughput figure (default 256)")
    g.add_argument("--batch-sizes", action=BenchAction, dest="compress_steps", type=_batch_sizes, metavar="LIST",
                   help="batch sizes of the latency sweep, e.g. 1,16,256")


# -- output -------------------------------------------------------------------------------------------
def _num(value, fmt: str) -> str:
    return "n/a" if value is None else format(value, fmt)


def print_variants(variants: list[dict], stream=sys.stdout) -> None:
    header = f"{'variant':<44} {'acc %':>6} {'p50 ms':>8} {'p90 ms':>8} {'img/s':>9} {'MB':>6} {'params':>9} " \
             f"{'non-zero':>9} {'MMACs':>7}  device / layers"
    print(header, file=stream)
    for v in variants:
        if v.get("error"):
            print(f"{v['name'][:44]:<44} {v['error']}", file=stream)
            continue
        acc = v.get("test_accuracy")
        print(f"{v['name'][:44]:<44} {_num(None if acc is None else 100 * acc, '6.2f'):>6} "
              f"{_num(v['latency_ms_p50'], '8.3f'):>8} {_num(v['latency_ms_p90'], '8.3f'):>8} "
              f"{_num(v['throughput_images_per_s'], '9,.0f'):>9} {_num(v['size_mb'], '6.2f'):>6} "
              f"{_num(v['params'], ','):>9} {_num(v['nonzero_params'], ','):>9} "
              f"{_num(None if v['macs'] is None else v['macs'] / 1e6, '7.1f'):>7}  "
              f"{v['device_label']}; {v.get('layers_converted') or ''}", file=stream)
        for note in v.get("notes") or []:
            print(f"{'':<6}- {note}", file=stream)


# -- the command -----------------------------------------------------------------------------------------
def _steps_json(text: str) -> list[dict]:
    try:
        steps = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"not JSON ({e.msg})") from None
    if not isinstance(steps, list) or not all(isinstance(s, dict) and "method" in s for s in steps):
        raise argparse.ArgumentTypeError('give a JSON list of steps such as [{"method": "prune_unstructured"}]')
    return steps


def _add_compress(p: argparse.ArgumentParser) -> None:
    p.add_argument("id", type=int, help="a finished run")
    p.add_argument("--device", default="auto", help="auto, cuda or cpu: where the run's model is loaded")
    add_compress_flags(p)
    p.add_argument("--steps", type=_steps_json, metavar="JSON",
                   help="the steps as stored with a run (what the pages send), added after the flags' steps")
    p.add_argument("--json", action="store_true", help="print one JSON object with a `variants` list")


def _compress(args) -> int:
    from optlab import device as devices
    from optlab.compress import run_steps, validate_steps
    from optlab.compress.checkpoint import CheckpointError, load_run_model
    from optlab.data import load_dataset

    store, run = get_run(args.id)
    if run.status != "done":
        print(f"error: run #{run.id} is {run.status}; compress needs a finished (done) run", file=sys.stderr)
        return 2
    steps = list(getattr(args, "compress_steps", None) or []) + list(args.steps or [])
    if not any(s["method"] != "benchmark" for s in steps):
        print("error: name at least one of --prune, --quantize, --distill, --export", file=sys.stderr)
        return 2
    if args.device not in ("auto", "cpu", "cuda") or (args.device == "cuda" and not devices.cuda_available()):
        print(f"error: device {args.device!r} is not available here; use auto or cpu", file=sys.stderr)
        return 2
    device = devices.resolve(args.device)
    errors = validate_steps(steps, devices.describe(device))
    if errors:
        print("error: " + "; ".join(errors), file=sys.stderr)
        return 2
    cfg = run.run_config.replace(compress=steps)
    ds = load_dataset(cfg)
    try:
        model = load_run_model(run, ds, device)
    except CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    store.add_event(run.id, f"compress: {json.dumps(steps)}")
    began = time.time()
    summary = dict(run.summary or {})
    variants = run_steps(store, run.id, model, ds, cfg, device, summary)
    neighbours = _trained_meanwhile(store, run.id, began)
    if neighbours:   # honest figures: say when the machine was shared while they were measured
        for v in variants:
            v.setdefault("notes", []).append(f"measured while run {neighbours} trained on this server: the "
                                             "latency and throughput shared the machine with it")
    summary["variants"] = list(summary.get("variants") or []) + variants
    store.update(run.id, summary=summary)
    store.add_event(run.id, f"compress finished: {len(variants)} variants measured on {devices.describe(device).label}")
    if args.json:
        print(json.dumps({"id": run.id, "device_label": devices.describe(device).label, "variants": variants}))
    else:
        print_table([("run", f"#{run.id} {run.config['model']}"), ("device", devices.describe(device).label)])
        print_variants(variants)
    return 0


def _trained_meanwhile(store, run_id: int, since: float) -> str:
    """'#4, #5': other runs that were training at some moment since `since`."""
    now = time.time()
    ids = [r.id for r in store.list(status=("running", "done", "failed", "cancelled", "interrupted"))
           if r.id != run_id and r.started_at and r.started_at < now and (r.finished_at or now) > since]
    return ", ".join(f"#{i}" for i in sorted(ids))


command("compress")((_add_compress, _compress))
