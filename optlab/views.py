"""What the pages show, as plain data: the knob descriptions of the form, runs as table rows,
short labels that name only what differs, the figures a chart needs, and a GPU snapshot.

No Streamlit here: the pages call these and draw, and the report reuses them.
"""
from __future__ import annotations

import csv
import io
import json
import re
import time
from dataclasses import dataclass, fields

from optlab import naming
from optlab.config import ConfigError, RunConfig, parse_batch_size
from optlab.store import Run


# -- the form's knobs --------------------------------------------------------------------------
@dataclass(frozen=True)
class Knob:
    label: str
    help: str       # one line: what it does and what to expect
    group: str


GROUPS = ("What to train", "Speed", "Training recipe", "Measurement", "Compression")

KNOBS: dict[str, Knob] = {
    "model": Knob("Model", "The network to train. speednet is small and fast; resnet50 and vit_tiny show "
                           "what Tensor Cores do for big matrix work.", "What to train"),
    "dataset": Knob("Data set", "The images to learn from. Fashion-MNIST is installed locally; others download "
                                "where the internet is reachable; synthetic measures speed only.", "What to train"),
    "data_path": Knob("Image folder", "Only for the imagefolder data set: a folder with one sub-folder per class.",
                      "What to train"),
    "image_size": Knob("Image size (px)", "Resize images to S×S. Empty keeps the native size; 224 shows the cost "
                                          "of ImageNet-sized inputs (about 64× the work of 28 px).", "What to train"),
    "limit_train": Knob("Training images", "Use only the first N training images for a quick run. Empty uses "
                                           "them all.", "What to train"),
    "limit_test": Knob("Test images", "Use only the first N test images for the accuracy check. Empty uses all.",
                       "What to train"),
    "epochs": Knob("Epochs", "Passes over the training images. More epochs: higher accuracy, longer run.",
                   "What to train"),
    "precision": Knob("Precision", "Number format of the maths. bf16/fp16 use Tensor Cores: often 2-3× faster "
                                   "and less memory, usually the same accuracy. tf32 speeds up fp32 on Ampere+.",
                      "Speed"),
    "batch_size": Knob("Batch size", "Images per step, or 'auto' for the largest that fits (with headroom). "
                                     "Bigger batches keep the GPU busier but use more memory.", "Speed"),
    "max_batch_size": Knob("Largest automatic batch", "Upper limit for batch size 'auto'.", "Speed"),
    "channels_last": Knob("Channels-last memory", "Store images as NHWC. With bf16/fp16 on a GPU convolutions "
                                                  "usually get faster; on the CPU it may not.", "Speed"),
    "compile": Knob("torch.compile", "Compile the model into fused kernels. Faster steps after a compile pause "
                                     "of tens of seconds (the pause is left out of throughput).", "Speed"),
    "pipeline": Knob("Input pipeline", "cpu: a DataLoader prepares batches on the CPU. gpu: the data set lives "
                                       "on the GPU and is augmented there, so the GPU never waits for input.",
                     "Speed"),
    "num_workers": Knob("Loader workers", "CPU processes preparing batches (cpu pipeline only). Too few and the "
                                          "GPU waits for data.", "Speed"),
    "optimizer": Knob("Optimizer", "sgd or adamw. Empty uses the model's usual choice.", "Training recipe"),
    "lr": Knob("Learning rate (at batch 256)", "Step size, scaled with the batch size. Empty uses the model's "
                                               "default; too high diverges, too low learns slowly.",
               "Training recipe"),
    "weight_decay": Knob("Weight decay", "Pulls weights toward zero to generalise better. Empty uses the model's "
                                         "default.", "Training recipe"),
    "warmup_fraction": Knob("Warm-up share", "Share of steps where the learning rate ramps up from zero; "
                                             "keeps large batches stable.", "Training recipe"),
    "label_smoothing": Knob("Label smoothing", "Soften the targets a little (0.1 is usual); often a small "
                                               "accuracy gain for free.", "Training recipe"),
    "augment": Knob("Augmentation", "Random crops and flips of each image: better accuracy, slightly more work "
                                    "per batch.", "Training recipe"),
    "seed": Knob("Random seed", "Same seed, same data order and initial weights: runs differ only by the knobs.",
                 "Training recipe"),
    "target_accuracy": Knob("Target accuracy", "For 'time to accuracy': the training time until the test "
                                               "accuracy first reaches this fraction (0.9 = 90 %).", "Measurement"),
    "device": Knob("Device", "auto uses the GPU when there is one, else the CPU. Every figure says which.",
                   "Measurement"),
    "profile": Knob("Profile a few steps", "Record a short torch.profiler window after warm-up for the Profile "
                                           "page; those steps are left out of the timings.", "Measurement"),
    "compress": Knob("Compress after training", "Make smaller or faster variants of the trained model "
                                                "(pruning, quantization, ...) and measure each one.",
                     "Compression"),
}


DEFAULT_CHOICE = "default"   # what the form shows for a setting left to the model's default

# Settings that may be left empty, typed as text in the form: (type, what empty means)
OPTIONAL_NUMBERS = {"image_size": (int, "native"), "limit_train": (int, "all"), "limit_test": (int, "all"),
                    "lr": (float, DEFAULT_CHOICE), "weight_decay": (float, DEFAULT_CHOICE)}
EMPTY_MEANS = {name: f"empty = {meaning}" for name, (_, meaning) in OPTIONAL_NUMBERS.items()}
EMPTY_MEANS["batch_size"] = "a number, or auto"


def form_values(cfg: RunConfig) -> dict:
    """A RunConfig as the values the Lab form's widgets hold (text where the widget is text)."""
    d = cfg.to_dict()
    d["batch_size"] = str(d["batch_size"])
    d["optimizer"] = d["optimizer"] or DEFAULT_CHOICE
    d["data_path"] = d["data_path"] or ""
    for name in OPTIONAL_NUMBERS:
        d[name] = "" if d[name] is None else f"{d[name]:g}" if isinstance(d[name], float) else str(d[name])
    steps = d.pop("compress")
    simple = all(set(step) == {"method"} for step in steps)
    d["compress_methods"] = [step["method"] for step in steps] if simple else []
    d["compress_json"] = "" if simple else json.dumps(steps)
    return d


def config_from_form(values: dict) -> RunConfig:
    """The Lab form's values as a RunConfig, not yet validated.

    Raises ConfigError for text that cannot be read (a batch size that is not a number or
    'auto', compression settings that are not a JSON list of objects).
    """
    d = {k: v for k, v in values.items() if k not in ("compress_methods", "compress_json")}
    d["batch_size"] = parse_batch_size(str(d.get("batch_size", "")))
    d["optimizer"] = None if d.get("optimizer") in (None, "", DEFAULT_CHOICE) else d["optimizer"]
    # the folder belongs to the imagefolder data set only: the form hides it for the others
    d["data_path"] = (d.get("data_path") or "").strip() or None if d.get("dataset") == "imagefolder" else None
    for name, (kind, meaning) in OPTIONAL_NUMBERS.items():
        text = str(d.get(name) or "").strip()
        try:
            d[name] = kind(text) if text else None
        except ValueError:
            raise ConfigError(f"{KNOBS[name].label} must be a {'whole ' if kind is int else ''}number, "
                              f"or empty for {meaning}; not {text!r}") from None
    text = (values.get("compress_json") or "").strip()
    if text:
        try:
            steps = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"compression settings are not valid JSON ({e.msg}); write a list such as "
                              '[{"method": "prune_unstructured", "sparsity": 0.5}]') from None
        if not isinstance(steps, list) or not all(isinstance(s, dict) for s in steps):
            raise ConfigError("compression settings must be a JSON list of objects, each with a \"method\"")
    else:
        steps = [{"method": m} for m in values.get("compress_methods") or []]
    d["compress"] = steps
    return RunConfig.from_dict(d)


def estimate_lines(est, device_word: str) -> tuple[str, str]:
    """(headline, where it comes from) for the Lab's estimate of one run (optlab.estimate.Estimate)."""
    steps = (f"{count(est.steps, 'step')} in all" if est.steps is not None
             else "steps: set when the automatic batch size is chosen")
    if est.seconds is None:
        head = ("Estimating the duration on this " + device_word + "…" if est.source == "timing"
                else "No estimate of the duration on this " + device_word)
        return f"{head} · {steps}", est.basis
    return f"About {duration(est.seconds)} on this {device_word} · {steps}", est.basis


def smaller_words(cfg) -> str:
    """'4,096 images, 1 epoch, bs=64': the size of a run, for a button that queues it."""
    return ", ".join(naming.knob_word(k, getattr(cfg, k)) for k in ("limit_train", "epochs", "batch_size"))


def target_device(requested: str, server_info):
    """The DeviceInfo a run asking for `requested` gets on a server whose 'auto' device is
    `server_info`, for validating the config against the machine before it is queued."""
    if requested == "cpu" and server_info.is_gpu:
        from optlab.device import describe
        return describe("cpu")
    return server_info


# -- runs as rows ------------------------------------------------------------------------------
ACTIVE = ("queued", "running")
# Streamlit Material icon names (rendered by the page font, not by the viewer's emoji font)
STATUS_ICONS = {"queued": ":material/hourglass_top:", "running": ":material/play_circle:",
                "done": ":material/check_circle:", "failed": ":material/error:",
                "cancelled": ":material/stop_circle:", "interrupted": ":material/warning:"}


def when(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(ts)) if ts else ""


def device_label(run: Run) -> str | None:
    return (run.summary or {}).get("device_label") or (run.device or {}).get("label")


def run_name(run: Run) -> str:
    """What one run trains: 'speednet fp32 bs=64' (see `run_names` to tell neighbours apart)."""
    return naming.base_name(run.config)


def run_names(runs: list[Run]) -> dict[int, str]:
    """Each run's name, saying what differs from the runs next to it in `runs`:
    'speednet fp32 bs=128 · 0 workers' beside 'speednet fp32 bs=128 · 2 workers'."""
    names = naming.neighbour_names([r.config for r in runs],
                                   [naming.config_device(r.config, r.summary) for r in runs])
    return {r.id: name for r, name in zip(runs, names)}


def run_choice(run: Run, name: str) -> str:
    """A run as one line of a picker: '#12 · speednet fp32 bs=128 · 0 workers · ada'."""
    return f"#{run.id} · {name}" + (f" · {run.user}" if run.user else "")


def count(n: int, one: str, many: str | None = None) -> str:
    """'1 run', '7 runs'."""
    return f"{n:,} {one if n == 1 else many or one + 's'}"


def duration(seconds: float | None) -> str:
    """A time span as people say it: '45 s', '12 min', '1 h 05 min'."""
    if seconds is None:
        return ""
    seconds = max(0.0, float(seconds))
    if seconds < 90:
        return f"{seconds:.0f} s"
    minutes = round(seconds / 60)
    return f"{minutes} min" if minutes < 60 else f"{minutes // 60} h {minutes % 60:02d} min"


# Characters Markdown (and Streamlit's :directives[...] and $math$) act on anywhere in a line, and
# the openings of block elements at the start of a text (a heading, a list, a quote).
_INLINE = re.compile(r"([\\`*_{}\[\]<>!|~$])|(:)(?=\S)")
_BLOCK_START = re.compile(r"^(\s*\d*)([#>+.)-])")


def md_text(text) -> str:
    """Text a person typed (a name, a label, a path, a link's parameter, an error quoting them),
    made safe to put inside Markdown: what Markdown or Streamlit would act on is escaped, so
    `![x](http://...)` stays those characters instead of loading an image in every viewer's browser,
    and ':red[...]' or ':material/...:' stay text. One line: newlines become spaces."""
    flat = " ".join(str(text).splitlines())
    escaped = _INLINE.sub(lambda m: "\\" + (m.group(1) or m.group(2)), flat)
    return _BLOCK_START.sub(lambda m: m.group(1) + "\\" + m.group(2), escaped)


def headline(run: Run) -> list[tuple[str, str, str]]:
    """The four figures a finished run is judged by: (name, value with unit, what it means)."""
    s = run.summary or {}

    def fmt(value, pattern):
        return "n/a" if value is None else pattern.format(value)
    memory = "GPU allocator peak" if s.get("memory_kind") == "cuda_allocator" else "peak resident memory of the process"
    accuracy = (fmt(_pct(s.get("test_accuracy")), "{:.2f} %") if s.get("accuracy_applies", True)
                else "n/a (random labels)")
    return [
        ("Training speed", fmt(s.get("train_images_per_s"), "{:,.0f} img/s"),
         "steady-state steps only: warm-up and profiled steps left out"),
        ("Test accuracy", accuracy, "top-1 on the held-out test images after training"),
        ("Peak memory", fmt(s.get("peak_memory_mb"), "{:,.0f} MB"), memory),
        ("Training time", fmt(s.get("train_seconds"), "{:,.1f} s"),
         "wall time of the training epochs, evaluation excluded"),
    ]


MISSING = "—"    # what a table shows for a figure that was not measured (never "None")


def run_rows(runs: list[Run]) -> list[dict]:
    """One row per run for the history table: who, what (named for what differs from the runs
    next to it), the key figures, and when. Missing figures are None (an empty cell), never text."""
    names = run_names(runs)
    rows = []
    for run in runs:
        s = run.summary or {}
        took = (run.finished_at or time.time()) - run.started_at if run.started_at else None
        rows.append({   # what tells runs apart first; the device before the figures it qualifies
            "id": run.id, "status": run.status, "user": run.user or "", "name": names[run.id],
            "device": device_label(run) or "", "images/s": s.get("train_images_per_s"),
            "accuracy %": _pct(s.get("test_accuracy")), "peak MB": s.get("peak_memory_mb"),
            "wall min": None if took is None else took / 60, "dataset": run.config.get("dataset"),
            "submitted": when(run.created_at), "sweep": run.sweep_id or "", "label": run.label or "",
        })
    return rows


def _pct(value):
    return None if value is None else 100 * value


def varying_knobs(runs: list[Run]) -> list[str]:
    """RunConfig fields whose value is not the same in every run, in RunConfig order."""
    if len(runs) < 2:
        return []
    names = [f.name for f in fields(RunConfig)]
    return [n for n in names if len({json.dumps(r.config.get(n), sort_keys=True) for r in runs}) > 1]


def short_labels(runs: list[Run], limit: int = 2) -> dict[int, str]:
    """'#12 bf16 bs=256': the id plus the knobs that differ across these runs (see
    naming.labels_for: when more than `limit` differ, only each run's changes from the default)."""
    words = naming.labels_for([r.config for r in runs], [naming.config_device(r.config, r.summary) for r in runs],
                              limit)
    return {run.id: " ".join([f"#{run.id}", *w]) for run, w in zip(runs, words)}


FIGURE_KEYS = ("train_images_per_s", "test_accuracy", "peak_memory_mb", "memory_kind", "train_seconds",
               "time_to_target_s", "step_ms_p50", "step_ms_p90", "input_wait_share", "batch_size",
               "params", "weights_mb", "device_label")


def figure_rows(runs: list[Run]) -> list[dict]:
    """The rows the comparison charts take: summary figures, a short label and the knobs."""
    labels = short_labels(runs)
    rows = []
    for run in runs:
        s = run.summary or {}
        row = {"id": run.id, "label": labels[run.id], "status": run.status, "sweep_id": run.sweep_id}
        row.update({k: s.get(k) for k in FIGURE_KEYS})
        row["device_label"] = device_label(run)
        row.update({f"knob:{k}": v for k, v in run.config.items() if k != "compress"})
        rows.append(row)
    return rows


# How the comparison table shows its numbers (printf style, as st.column_config takes them).
TABLE_FORMATS = {"train images/s": "%.0f", "step ms p50": "%.1f", "accuracy %": "%.2f", "peak memory MB": "%.0f",
                 "train s": "%.1f", "time to target s": "%.1f", "size MB": "%.2f", "latency ms p50": "%.2f",
                 "latency ms p90": "%.2f", "inference images/s": "%.0f"}
MEMORY_KINDS = {"cuda_allocator": "GPU allocator peak", "host_rss": "process peak RSS (host)"}


def table_rows(runs: list[Run]) -> list[dict]:
    """The comparison table: one row per run, then one indented child row per compressed variant."""
    labels = short_labels(runs)
    out = []
    for run in runs:
        s = run.summary or {}
        out.append({
            "run": labels[run.id], "variant": "trained model", "device": device_label(run) or "",
            "train images/s": s.get("train_images_per_s"), "step ms p50": s.get("step_ms_p50"),
            "accuracy %": _pct(s.get("test_accuracy")), "peak memory MB": s.get("peak_memory_mb"),
            "memory kind": MEMORY_KINDS.get(s.get("memory_kind"), s.get("memory_kind")),
            "train s": s.get("train_seconds"),
            "time to target s": s.get("time_to_target_s"), "params": s.get("params"),
            "nonzero params": s.get("nonzero_params"), "size MB": s.get("weights_mb"),
            "latency ms p50": None, "latency ms p90": None, "inference images/s": None,
        })
        for v in s.get("variants") or []:
            out.append({
                "run": labels[run.id], "variant": "  ↳ " + str(v.get("name", "variant")),
                "device": v.get("device_label") or device_label(run) or "",
                "train images/s": None, "step ms p50": None, "accuracy %": _pct(v.get("test_accuracy")),
                "peak memory MB": None, "memory kind": None, "train s": None, "time to target s": None,
                "params": v.get("params"), "nonzero params": v.get("nonzero_params"), "size MB": v.get("size_mb"),
                "latency ms p50": v.get("latency_ms_p50"), "latency ms p90": v.get("latency_ms_p90"),
                "inference images/s": v.get("throughput_images_per_s"),
            })
    return out


def to_csv(rows: list[dict]) -> str:
    if not rows:
        return ""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def unmeasured(runs: list[Run]) -> list[str]:
    """One line per finished run a comparison chart must leave out, saying which figure it lacks
    and why ('#1 has no training throughput: all 8 steps were warm-up (2) or profiled (6)')."""
    lines = []
    for run in runs:
        s = run.summary or {}
        why = []
        if s.get("train_images_per_s") is None:
            if s.get("steps") is not None and not s.get("steady_steps"):
                reason = (f"all {s['steps']} steps were warm-up ({s.get('warmup_steps', 0)}) or profiled "
                          f"({s.get('profiled_steps_excluded', 0)}): give it more steps")
            else:
                reason = (s.get("throughput") or {}).get("why") or "not measured"
            why.append(f"no training throughput ({reason})")
        if s.get("test_accuracy") is None:
            why.append("no accuracy (" + ("random labels" if s.get("accuracy_applies") is False else "not measured") + ")")
        if why:
            lines.append(f"#{run.id} has " + " and ".join(why))
    return lines


def devices(runs: list[Run]) -> list[str]:
    return sorted({device_label(r) for r in runs if device_label(r)})


def sweeps(runs: list[Run]) -> dict[str, list[Run]]:
    """sweep id -> its runs, newest sweep first (runs arrive newest first from store.list)."""
    out: dict[str, list[Run]] = {}
    for run in runs:
        if run.sweep_id:
            out.setdefault(run.sweep_id, []).append(run)
    return out


def epoch_curves(store, run_ids: list[int]) -> dict[int, list[dict]]:
    """The "epoch" metrics of several runs in one query (not one query per run)."""
    if not run_ids:
        return {}
    marks = ",".join("?" * len(run_ids))
    with store.connect() as db:
        rows = db.execute(f"SELECT run_id, data FROM metrics WHERE kind = 'epoch' AND run_id IN ({marks}) "
                          "ORDER BY rowid", [int(i) for i in run_ids]).fetchall()
    out: dict[int, list[dict]] = {int(i): [] for i in run_ids}
    for row in rows:
        out[row["run_id"]].append(json.loads(row["data"]))
    return out


# -- progress ----------------------------------------------------------------------------------
def progress_of(run: Run) -> tuple[float, str]:
    """(fraction done 0..1, one line saying what the run is doing)."""
    if run.status == "queued":
        return 0.0, "waiting for a free slot"
    p = run.progress or {}
    if run.finished:
        return 1.0, run.status
    total, step = p.get("steps_total"), p.get("step")
    fraction = min(1.0, step / total) if total and step is not None else 0.0
    parts = [p.get("phase") or "starting"]
    if p.get("epoch") and p.get("epochs"):
        parts.append(f"epoch {p['epoch']}/{p['epochs']}")
    if total:
        parts.append(f"step {step}/{total}")
    if isinstance(p.get("loss"), (int, float)):
        parts.append(f"loss {p['loss']:.3f}")
    if isinstance(p.get("images_per_s"), (int, float)):
        parts.append(f"{p['images_per_s']:,.0f} images/s")
    if isinstance(p.get("eta_s"), (int, float)):
        parts.append(f"about {duration(p['eta_s'])} left")
    return fraction, " · ".join(parts)


_ENDED = {"queued": "is waiting in the queue", "running": "is still training", "failed": "failed",
          "cancelled": "was cancelled", "interrupted": "was interrupted", "done": "is done"}


def how_it_ended(run: Run) -> str:
    """'was cancelled before it started', 'failed: out of memory at batch size 512': what became of
    a run, in words (its recorded error quoted, not repeated)."""
    phrase = _ENDED.get(run.status, run.status)
    error = (run.error or "").strip()
    if not error:
        return phrase
    if error.lower().startswith(run.status[:6]):          # 'cancelled before it started'
        return phrase.rsplit(" ", 1)[0] + " " + error if " " in phrase else error
    return f"{phrase}: {error}"


def why_no_telemetry(run: Run) -> str:
    """Why a finished run has no device telemetry, from what the store knows about it."""
    if run.started_at is None:
        return f"it never started ({run.error or run.status})"
    if run.worker_pid is None:
        return "it ran in the foreground (`optlab run`), where no sampler runs"
    return "the sampler recorded nothing: see the events below"


# Lines the profiler library (kineto) and CUDA probing print on every run; they say nothing about
# the run. Hidden from the log tail shown on the page, kept in the log file.
LOG_NOISE = (
    re.compile(r"^(USDT|STAGE|INFO):\d{4}-\d\d-\d\d [\d:]+ \d+:\d+ \w+\.cpp:\d+\]"),
    re.compile(r"^\w+:\d{4}-\d\d-\d\d [\d:]+ \d+:\d+ \w+\.cpp:\d+\] gpuGetDeviceCount failed"),
)


def log_lines(text: str | None) -> tuple[str, int]:
    """(the log tail without the library chatter in LOG_NOISE, how many lines were left out)."""
    kept, hidden = [], 0
    for line in (text or "").splitlines():
        if any(p.match(line) for p in LOG_NOISE):
            hidden += 1
        else:
            kept.append(line)
    return "\n".join(kept), hidden


# -- the GPU, seen through NVML ------------------------------------------------------------------
def gpu_snapshot(index: int = 0) -> dict | None:
    """Utilisation (%), memory used (MB), power (W) and temperature (°C) of the GPU that is
    cuda:`index` right now, read the way the run telemetry reads them (optlab.telemetry); a field
    the GPU does not report is absent. None where NVML is unavailable (no GPU, no driver)."""
    try:
        from optlab.telemetry import NVML_FIELDS, nvml_handle, read_fields
        nv, handle = nvml_handle(index)
    except Exception:   # ImportError, pynvml.NVMLError, a device torch cannot describe
        return None
    try:
        wanted = ("gpu_util_pct", "mem_used_mb", "power_w", "temperature_c")
        return read_fields({k: (lambda f=NVML_FIELDS[k]: f(nv, handle)) for k in wanted}, {}, (nv.NVMLError,))
    finally:
        try:
            nv.nvmlShutdown()
        except nv.NVMLError:
            pass
