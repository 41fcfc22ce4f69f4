"""Command line: `python -m optlab run|list|show ...`.

Subcommands register themselves in COMMANDS (name -> (add_arguments, handler)), so other modules
add theirs without touching an if-chain here.

Only the commands that train or measure import torch (seconds): `list`, `show`, `status`,
`submit` and `cancel` read and write the store in a fraction of a second. A mistake a person can
make (a bad value or file, a run that does not exist, a store that cannot be opened) ends the
command with one line on stderr and exit code 2, never a traceback.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Callable

from optlab.config import (DATASET_NAMES, MODEL_NAMES, PIPELINES, PRECISIONS, PRESETS, ConfigError, RunConfig,
                           parse_batch_size, preset, unsafe_char)
from optlab.registry import Registry

COMMANDS: Registry[tuple[Callable, Callable]] = Registry("command")

JSON_FIELDS = ("id", "status", "device", "device_name", "train_images_per_s", "step_ms_p50", "step_ms_p90",
               "input_wait_share", "peak_memory_mb", "memory_kind", "test_accuracy", "train_seconds",
               "time_to_target_s", "batch_size")


def command(name: str):
    def add(pair):
        COMMANDS.add(name, pair)
        return pair
    return add


def get_store(*, readonly: bool = False):
    """The store of OPTLAB_HOME; `readonly` for commands that only read (they work on a
    read-only store)."""
    from optlab.store import Store
    return Store(readonly=readonly)


class RunNotFound(LookupError):
    """A run id that is not in the store; `main` prints it and exits with 2."""


def get_run(run_id: int, *, readonly: bool = False):
    """(store, run) for a run that exists, else RunNotFound naming the store."""
    store = get_store(readonly=readonly)
    run = store.get(run_id)
    if run is None:
        raise RunNotFound(f"no run #{run_id} in {store.home}")
    return store, run


# -- run flags (shared by run, submit, and re-runs) ---------------------------------------------
def add_run_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", choices=list(PRESETS), help="start from a named config")
    p.add_argument("--config", help="start from a RunConfig JSON file")
    p.add_argument("--model", help=f"one of: {', '.join(MODEL_NAMES)}")
    p.add_argument("--dataset", help=f"one of: {', '.join(DATASET_NAMES)}")
    p.add_argument("--precision", help=f"one of: {', '.join(PRECISIONS)}")
    p.add_argument("--batch-size", type=parse_batch_size, help="images per step, or 'auto'")
    p.add_argument("--max-batch-size", type=int, help="cap for --batch-size auto")
    p.add_argument("--epochs", type=int)
    p.add_argument("--lr", type=float, help="learning rate at batch 256")
    p.add_argument("--optimizer", help="sgd or adamw")
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--label-smoothing", type=float)
    p.add_argument("--limit-train", type=int, help="use the first N training images")
    p.add_argument("--limit-test", type=int, help="use the first N test images")
    p.add_argument("--device", help="auto, cuda or cpu")
    p.add_argument("--pipeline", help=f"one of: {', '.join(PIPELINES)}")
    p.add_argument("--workers", dest="num_workers", type=int, help="DataLoader workers (cpu pipeline)")
    p.add_argument("--image-size", type=int, help="resize images to S x S pixels")
    p.add_argument("--target-accuracy", type=float, help="for time to accuracy, e.g. 0.9")
    p.add_argument("--seed", type=int)
    p.add_argument("--data-path", help="folder for the imagefolder data set")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--augment", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--profile", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--repeats", type=int, help="run the same config N times (1..20) and report the spread")
    p.add_argument("--gpus", type=int, help="data-parallel ranks through torchrun (DDP): one per GPU; on a "
                                            "CPU-only machine, that many processes sharing its cores (Gloo)")
    from optlab.compress.cli import add_compress_flags
    add_compress_flags(p)   # --prune/--quantize/--distill/--export: parsed into args.compress_steps


_CONFIG_FLAGS = ("model", "dataset", "precision", "batch_size", "max_batch_size", "epochs", "lr", "optimizer",
                 "weight_decay", "label_smoothing", "limit_train", "limit_test", "device", "pipeline",
                 "num_workers", "image_size", "target_accuracy", "seed", "data_path", "channels_last",
                 "compile", "augment", "profile", "repeats", "gpus")


def config_from_args(args: argparse.Namespace) -> RunConfig:
    """The config the flags describe: --config FILE or --preset, then each flag given. Not yet
    validated; a file that cannot be read or is not a config raises ConfigError."""
    if args.config:
        cfg = read_config_file(args.config)
    else:
        cfg = preset(args.preset) if args.preset else RunConfig()
    changes = {k: getattr(args, k) for k in _CONFIG_FLAGS if getattr(args, k, None) is not None}
    extra = getattr(args, "compress_steps", None)
    if extra:
        changes["compress"] = cfg.compress + extra
    return cfg.replace(**changes)


def read_config_file(path: str) -> RunConfig:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else type(e).__name__
        raise ConfigError(f"cannot read the config file {path}: {reason}") from None
    try:
        return RunConfig.from_json(text)
    except ConfigError as e:
        raise ConfigError(f"the config file {path}: {e}") from None


# -- output --------------------------------------------------------------------------------------
def _fmt(value, unit="", digits=1) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:,.{digits}f}{unit}"
    return f"{value}{unit}"


def throughput_text(s: dict) -> str:
    """'1,234 img/s (median of 40 steady steps of 48; 95 % within-run interval 1,200 to 1,260; per step
    p10 1,100, p90 1,300)', marked THIN when the run measured too few steps or too little time to be
    relied on. Runs from before per-step times were kept say they have no interval."""
    value = _fmt(s.get("train_images_per_s"), " img/s", 0)
    t = s.get("throughput")
    if s.get("train_images_per_s") is None:
        return value
    if not t:
        from optlab.repeats import OLD_RUN
        return value + f"  (steady state: {s.get('steady_steps')} of {s.get('steps')} steps; no interval: {OLD_RUN})"
    text = f"{value}  (median of {t['steps']} steady steps of {s.get('steps')}"
    if t.get("ci95"):
        text += f"; 95 % within-run interval {t['ci95'][0]:,.0f} to {t['ci95'][1]:,.0f}"
    if t.get("p10") is not None:
        text += f"; per step p10 {t['p10']:,.0f}, p90 {t['p90']:,.0f}"
    text += ")"
    if t.get("quality") == "thin":
        text += f"  THIN: {t.get('why')}"
    return text


def group_rows(group: list) -> list[tuple[str, str]]:
    """A repeat group's central values and spread, for `show` of one of its runs."""
    from optlab.repeats import FIGURES, unit_figures
    unit = unit_figures(group)
    rows = [("repeats", f"{unit['done']} of {unit['planned']} done in group {unit['group']} "
                        f"(runs {', '.join(f'#{i}' for i in unit['ids'])})")]
    for key, f in unit["figures"].items():
        if f["n"] < 2:
            continue
        spec = FIGURES[key]
        scale, unit_text = (100, "%") if spec.unit == "fraction" else (1, spec.unit)
        central = "MLPerf mean (fastest and slowest left out)" if f["mlperf"] else "mean"
        lo, hi = f["ci95"]
        rows.append((f"  {spec.label}", f"{central} {scale * f['value']:,.4g} {unit_text}, 95 % interval between "
                                        f"repeats {scale * lo:,.4g} to {scale * hi:,.4g}, cv {100 * (f['cv'] or 0):.1f} %, "
                                        f"n={f['n']}"))
    if unit["thin"]:
        rows.append(("  thin repeats", ", ".join(f"#{i}" for i, _ in unit["thin"])))
    return rows


def summary_rows(run, group: list | None = None, store=None) -> list[tuple[str, str]]:
    """The rows `show` prints; `group` (the run's repeat group, when it has one) adds the group's
    central values and spread; `store` lets a data-parallel run find its one-device reference."""
    s = run.summary or {}
    mem = "GPU allocator" if s.get("memory_kind") == "cuda_allocator" else "host RSS"
    rows = [("run", f"#{run.id} ({run.status})"), ("device", s.get("device_label") or (run.device or {}).get("label", "?")),
            ("config", f"{run.config['model']} on {run.config['dataset']}, {run.config['precision']}, "
                       f"batch {s.get('batch_size', run.config['batch_size'])}, pipeline {run.config['pipeline']}"
                       + (", channels_last" if run.config["channels_last"] else "")
                       + (", compiled" if run.config["compile"] else ""))]
    if run.label:
        rows.insert(1, ("label", safe(run.label)))
    if run.error:
        rows.append(("error", run.error))
    if s.get("steps") is not None:
        acc = s.get("test_accuracy")
        rows += [
            ("train throughput", throughput_text(s)),
            ("step time", f"p50 {_fmt(s.get('step_ms_p50'), ' ms', 2)}, p90 {_fmt(s.get('step_ms_p90'), ' ms', 2)}"),
            ("input wait", _fmt(100 * s["input_wait_share"] if s.get("input_wait_share") is not None else None, " % of step time")),
            ("peak memory", f"{_fmt(s.get('peak_memory_mb'), ' MB', 0)} ({mem})"),
            ("test accuracy", "n/a (random labels)" if not s.get("accuracy_applies", True) else _fmt(100 * acc if acc is not None else None, " %", 2)),
            ("train time", _fmt(s.get("train_seconds"), " s", 2) + " (evaluation excluded)"),
            (f"time to {100 * s.get('target_accuracy', 0):.0f} %", _fmt(s.get("time_to_target_s"), " s", 2)
             if s.get("time_to_target_s") is not None else "not reached"),
        ]
    if (run.config.get("gpus") or 1) > 1:
        from optlab.ddp import distributed_rows
        rows += distributed_rows(run, store)
    if group and len(group) > 1:
        rows += group_rows(group)
    return rows


def safe(text, *, multiline: bool = False) -> str:
    """Text from the store as it may reach a terminal: control characters (escape sequences,
    carriage returns, new lines unless `multiline`) shown as escapes, never acted on."""
    text = str(text)
    return "".join(ch if not unsafe_char(ch) or (multiline and ch == "\n") else
                   ascii(ch)[1:-1] for ch in text)


def print_table(rows) -> None:
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        lines = safe(v, multiline=True).split("\n")
        print(f"{k:<{width}}  {lines[0]}")
        for line in lines[1:]:
            print(f"{'':<{width}}  {line}")


def json_view(run, group: list | None = None) -> dict:
    """One run as JSON; `group` (its repeat group) adds "repeat_group" with the group's figures."""
    s = run.summary or {}
    out = {"id": run.id, "status": run.status, "error": run.error, "user": run.user, "config": run.config,
           "repeat_index": run.repeat_index}
    for k in JSON_FIELDS:
        if k not in out:
            out[k] = s.get(k)
    out["device"] = s.get("device") or (run.device or {}).get("kind")
    out["summary"] = s
    from optlab.advisor import advise
    out["advice"] = [a.to_dict() for a in advise(s, run.config, run.device)]
    if group and len(group) > 1:
        from optlab.repeats import group_summary
        out["repeat_group"] = group_summary(group)
    return out


class ProgressBar:
    """One line on stderr, redrawn at most a few times a second."""

    def __init__(self, stream=sys.stderr):
        self.stream, self.tty = stream, stream.isatty()
        self.last_phase = None

    def __call__(self, state: dict) -> None:
        phase = state.get("phase")
        if "steps_total" in state and state.get("steps_total"):
            done = state["step"] / state["steps_total"]
            bar = "#" * int(24 * done) + "." * (24 - int(24 * done))
            extra = (f" acc {100 * state['test_accuracy']:.1f}%" if "test_accuracy" in state else
                     f" {state.get('images_per_s', 0):,.0f} img/s ETA {state.get('eta_s', 0):.0f}s" if phase == "train" else "")
            line = (f"[{bar}] epoch {state['epoch']}/{state['epochs']} step {state['step']}/{state['steps_total']}"
                    f" loss {state.get('loss', float('nan')):.3f}{extra} ({phase})")
        else:
            line = f"{phase}..."
        if self.tty:
            self.stream.write("\r" + line[:110].ljust(110))
        elif phase != self.last_phase or state.get("epoch_done"):
            self.stream.write(line + "\n")
        self.last_phase = phase
        self.stream.flush()

    def done(self) -> None:
        if self.tty:
            self.stream.write("\n")


# -- commands ---------------------------------------------------------------------------------------
def _add_run(p):
    add_run_arguments(p)
    p.add_argument("--user", default="", help="who submitted it")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")


def _run(args) -> int:
    import os
    import signal

    from optlab import device as devices
    from optlab.repeats import new_group_id
    cfg = config_from_args(args)
    cfg.validate()   # names, types and ranges first: no need to load torch for a typo
    # Validate against this machine: "auto" describes the GPU when there is one, else the CPU.
    cfg.validate(devices.describe("cpu" if cfg.device == "cpu" else "auto"))
    store = get_store()
    # Each run lives in this process like a worker: it heartbeats and obeys a cancel, and if this
    # process dies the scheduler (or a cancel) ends the run instead of leaving it running. Repeats
    # run back to back (there is nothing to interleave with), each entering the store as it starts.
    from optlab.worker import Worker
    group = new_group_id() if cfg.repeats > 1 else None
    runs = []
    for index in range(1, cfg.repeats + 1):
        run_id = store.submit(cfg, user=args.user, status="running", worker_pid=os.getpid(), repeat_group=group,
                              repeat_index=index if group else None)
        if group:
            print(f"repeat {index} of {cfg.repeats}: run #{run_id}", file=sys.stderr)
        bar = ProgressBar()
        worker = Worker(store, run_id, foreground=True, on_progress=bar)
        previous = signal.signal(signal.SIGTERM, worker.on_sigterm)
        try:
            worker.run()
        finally:
            signal.signal(signal.SIGTERM, previous)
        bar.done()
        runs.append(store.get(run_id))
    if group:
        return _print_group(runs, args.json)
    run = runs[0]
    if args.json:
        print(json.dumps(json_view(run)))
    else:
        print_table(summary_rows(run, store=store))
    return 0 if run.status == "done" else 1


def _print_group(runs: list, as_json: bool) -> int:
    """`run --repeats N`: one JSON object (or one table) carrying every repeat, the central value and
    the spread of each figure."""
    from optlab.repeats import group_summary
    summary = group_summary(runs)
    ok = all(r.status == "done" for r in runs)
    if as_json:
        first = runs[0].summary or {}
        print(json.dumps({
            "repeat_group": summary["repeat_group"], "status": "done" if ok else "incomplete",
            "device": first.get("device") or (runs[0].device or {}).get("kind"), "device_name": first.get("device_name"),
            "ids": summary["ids"], "done": summary["done"], "throughput_quality": summary["throughput_quality"],
            "figures": summary["figures"], "repeats": [json_view(r) for r in runs]}))
    else:
        print_table(summary_rows(runs[-1], group=runs))
    return 0 if ok else 1


command("run")((_add_run, _run))


def _add_list(p):
    p.add_argument("--status", help="only runs with this status")
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--json", action="store_true")


def _list(args) -> int:
    runs = get_store(readonly=True).list(status=args.status, limit=args.limit)
    if args.json:
        print(json.dumps([json_view(r) for r in runs]))
        return 0
    print(f"{'id':>5}  {'status':<11} {'when':<16} {'user':<10} {'model':<18} {'prec':<5} {'bs':>5} "
          f"{'img/s':>9} {'':<4} {'acc %':>6}  device")
    for r in runs:
        s = r.summary or {}
        acc = s.get("test_accuracy")
        print(f"{r.id:>5}  {r.status:<11} {time.strftime('%Y-%m-%d %H:%M', time.localtime(r.created_at)):<16} "
              f"{safe(r.user or '-')[:10]:<10} {safe(r.config['model'])[:18]:<18} {safe(r.config['precision']):<5} "
              f"{str(s.get('batch_size', r.config['batch_size'])):>5} {_fmt(s.get('train_images_per_s'), '', 0):>9} "
              f"{'thin' if (s.get('throughput') or {}).get('quality') == 'thin' else '':<4} "
              f"{_fmt(100 * acc if acc is not None else None, '', 1):>6}  "
              f"{safe(s.get('device_label', (r.device or {}).get('label', '')))}")
    return 0


command("list")((_add_list, _list))


def _add_show(p):
    p.add_argument("id", type=int)
    p.add_argument("--json", action="store_true")


def _show(args) -> int:
    from optlab.repeats import members
    store, run = get_run(args.id, readonly=True)
    group = members(store, run)
    if args.json:
        print(json.dumps(json_view(run, group=group)))
    else:
        print_table(summary_rows(run, group=group, store=store))
    return 0


command("show")((_add_show, _show))


def _add_init(p):
    pass


def _init(args) -> int:
    from optlab.store import Store, optlab_home
    home = optlab_home()
    existed = (home / "optlab.db").exists()
    store = Store(create=True)
    if existed:
        print(f"the store {store.path} exists; nothing to do")
    else:
        print(f"created the store {store.path}")
    return 0


command("init")((_add_init, _init))


def build_parser() -> argparse.ArgumentParser:
    _load_command_modules()
    parser = argparse.ArgumentParser(prog="python -m optlab", description="OptLab: measure what makes image classifiers fast")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (add_arguments, handler) in COMMANDS.items():
        p = sub.add_parser(name)
        add_arguments(p)
        p.set_defaults(handler=handler)
    return parser


def _load_command_modules() -> None:
    """Modules that add subcommands (queue, compress, trace, ...) register on import."""
    import importlib
    for module in ("optlab.jobs_cli", "optlab.profiling_cli", "optlab.compress.cli", "optlab.report_cli",
                   "optlab.ladder_cli", "optlab.autotune_cli"):
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name != module:
                raise


# Errors a person can cause, by module: a command can raise one only once its module is loaded,
# so they are looked up then (importing optlab.data to name DataError would load torch).
USER_ERRORS = {"optlab.config": "ConfigError", "optlab.store": "StoreError", "optlab.data": "DataError",
               "optlab.compress.checkpoint": "CheckpointError", "optlab.compress.base": "CompressionRefused",
               "optlab.tensorboard": "TensorBoardError"}


def _user_errors() -> tuple[type[BaseException], ...]:
    found = [RunNotFound]
    for module, name in USER_ERRORS.items():
        loaded = sys.modules.get(module)
        if loaded is not None and hasattr(loaded, name):
            found.append(getattr(loaded, name))
    return tuple(found)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except Exception as e:
        if not isinstance(e, _user_errors()):
            raise   # a bug: its traceback is what a report needs
        print(f"error: {safe(e.args[0] if e.args else e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
