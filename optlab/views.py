"""What the pages show, as plain data: the knob descriptions of the form, runs as table rows,
short labels that name only what differs, the figures a chart needs, and a GPU snapshot.

No Streamlit here: the pages call these and draw, and the report reuses them.
"""
from __future__ import annotations

import csv
import io
import json
import math
import re
import time
from dataclasses import dataclass, fields

from optlab import naming, repeats
from optlab.config import MAX_REPEATS, ConfigError, RunConfig, parse_batch_size
from optlab.memory import headline_memory
from optlab.stats import MIN_EFFECT
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
    "repeats": Knob("Repeats", f"Run the same settings this many times (1..{MAX_REPEATS}) to see the spread: "
                               "Compare then shows each figure with its interval and says whether a difference "
                               "is beyond noise. A sweep's repeats run interleaved (A B A B ...).", "Measurement"),
    "gpus": Knob("Data-parallel ranks", "Train on this many devices at once (torchrun + DistributedDataParallel): "
                                        "each rank trains on its own share of the images with the batch size "
                                        "above, and the gradients are averaged every step. On a CPU-only machine "
                                        "the ranks are processes sharing its cores (Gloo): a lesson in the "
                                        "mechanics, not in speed. Compare with the same run on one device for the "
                                        "scaling efficiency.", "Speed"),
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
    """What one run trains: 'speednet fp32 bs=64' (see `run_names` to tell neighbours apart);
    'repeat 2 of 3' for a repeat."""
    name = naming.base_name(run.config)
    if run.repeat_group:
        name += f" · repeat {run.repeat_index} of {run.config.get('repeats')}"
    return name


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


def quality_text(summary: dict | None) -> str:
    """How far a run's throughput can be relied on: 'solid', 'thin: <why>', or that an older run
    recorded no per-step times (no interval, no quality)."""
    t = (summary or {}).get("throughput")
    if not summary or summary.get("train_images_per_s") is None:
        return ""
    if not t:
        return "no interval (" + repeats.OLD_RUN + ")"
    return "thin: " + (t.get("why") or "too little measured") if t.get("quality") == "thin" else "solid"


def throughput_detail(summary: dict | None) -> str:
    """One line under a run's throughput: what the figure is and how precise it is."""
    s = summary or {}
    t = s.get("throughput")
    if s.get("train_images_per_s") is None:
        return "not measured"
    if not t:
        return f"steady-state steps only; no interval: {repeats.OLD_RUN}"
    text = f"median over {t['steps']} steady steps ({t['seconds']:.2f} s)"
    if t.get("ci95"):
        text += f"; 95 % within-run interval {t['ci95'][0]:,.0f}–{t['ci95'][1]:,.0f} img/s"
    if t.get("p10") is not None:
        text += f"; steps p10–p90 {t['p10']:,.0f}–{t['p90']:,.0f} img/s"
    return text


def headline(run: Run) -> list[tuple[str, str, str]]:
    """The four figures a finished run is judged by: (name, value with unit, what it means)."""
    s = run.summary or {}

    def fmt(value, pattern):
        return "n/a" if value is None else pattern.format(value)
    peak_mb, memory = headline_memory(s)
    accuracy = (fmt(_pct(s.get("test_accuracy")), "{:.2f} %") if s.get("accuracy_applies", True)
                else "n/a (random labels)")
    thin = (s.get("throughput") or {}).get("quality") == "thin"
    return [
        ("Training speed", fmt(s.get("train_images_per_s"), "{:,.0f} img/s") + (" (thin)" if thin else ""),
         "median per-step throughput of the steady-state steps (warm-up and profiled steps left out): "
         + throughput_detail(s)),
        ("Test accuracy", accuracy, "top-1 on the held-out test images after training"),
        ("Peak memory", fmt(peak_mb, "{:,.0f} MB"), memory),
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
            "throughput": quality_text(s),
            "repeat": f"{run.repeat_index} of {run.config.get('repeats')}" if run.repeat_group else "",
            "accuracy %": _pct(s.get("test_accuracy")), "peak MB": s.get("peak_memory_mb"),
            "wall min": None if took is None else took / 60, "dataset": run.config.get("dataset"),
            "submitted": when(run.created_at), "sweep": run.sweep_id or "", "label": run.label or "",
            "from": origin_text(run),
        })
    return rows


def _pct(value):
    return None if value is None else 100 * value


# Not knobs of what a run does: how often it was repeated says nothing about its outcome.
NOT_KNOBS = ("repeats",)


def origin_text(run: Run) -> str:
    """Where an imported run was measured: 'ada-laptop run #12'; '' for a run measured here."""
    o = run.origin or {}
    return f"{o.get('host', '?')} run #{o.get('run_id', '?')}" if o else ""


def varying_knobs(runs: list[Run]) -> list[str]:
    """RunConfig fields whose value is not the same in every run, in RunConfig order."""
    if len(runs) < 2:
        return []
    names = [f.name for f in fields(RunConfig) if f.name not in NOT_KNOBS]
    return [n for n in names if len({json.dumps(r.config.get(n), sort_keys=True) for r in runs}) > 1]


def compress_text(steps: list[dict] | None) -> str:
    """Compression steps compactly: 'prune_unstructured+int8_static', or 'no compression'."""
    methods = [step.get("method") for step in steps or [] if step.get("method") != "benchmark"]
    return "+".join(str(m) for m in methods) if methods else "no compression"


def _knob_parts(run: Run, vary: list[str]) -> list[str]:
    names = {"batch_size": "bs", "channels_last": "NHWC", "compile": "compiled"}
    parts = []
    for k in vary:
        v = run.config.get(k)
        if isinstance(v, bool):
            parts.append(names.get(k, k) if v else f"no {names.get(k, k)}")
        elif k in ("precision", "model", "dataset"):
            parts.append(str(v))
        elif k == "pipeline":
            parts.append(f"data on {v}")
        elif k == "compress":
            parts.append(compress_text(v))
        else:
            parts.append(f"{names.get(k, k)}={v if v is not None else 'default'}")
    return parts


def short_labels(runs: list[Run], limit: int = 2) -> dict[int, str]:
    """'#12 bf16 bs=256': the id plus the knobs that differ across these runs (see
    naming.labels_for: when more than `limit` differ, only each run's changes from the default)."""
    words = naming.labels_for([r.config for r in runs], [naming.config_device(r.config, r.summary) for r in runs],
                              limit)
    return {run.id: " ".join([f"#{run.id}", *w]) for run, w in zip(runs, words)}


def unit_labels(units: list[list[Run]], limit: int = 3) -> list[str]:
    """Short labels of comparison units: a repeat group is named by its first run plus
    '(3 repeats)', so one line on a chart stands for the whole group."""
    labels = short_labels([r for unit in units for r in unit], limit)
    return [labels[unit[0].id] + (f" ({len(unit)} repeats)" if len(unit) > 1 else "") for unit in units]


FIGURE_KEYS = ("train_images_per_s", "test_accuracy", "peak_memory_mb", "memory_kind", "train_seconds",
               "time_to_target_s", "step_ms_p50", "step_ms_p90", "input_wait_share", "batch_size",
               "params", "weights_mb", "device_label")


def figure_rows(runs: list[Run]) -> list[dict]:
    """The rows the comparison charts take, one per unit (a repeat group pooled into one row, or a
    single run): summary figures, a short label, the knobs, and per pooled figure its interval.

    A pooled figure `k` (repeats.FIGURES) is the unit's central value, with `k_ci95` (None when
    there is none), `k_basis` ("between repeats", "within run" or "no interval") and `k_values`
    (each repeat's value). `thin` marks a unit whose throughput was measured on too few steps or
    too little time, `thin_why` says which; `unit` holds the whole repeats.unit_figures result.
    """
    groups = repeats.units(runs)
    rows = []
    for unit, label in zip(groups, unit_labels(groups)):
        first = unit[0]
        s = first.summary or {}
        figures = repeats.unit_figures(unit)
        row = {"id": first.id, "ids": [r.id for r in unit], "label": label, "status": first.status,
               "sweep_id": first.sweep_id, "repeat_group": first.repeat_group, "repeats": len(unit)}
        row.update({k: s.get(k) for k in FIGURE_KEYS})
        for key, f in figures["figures"].items():
            row.update({key: f["value"], f"{key}_ci95": f["ci95"], f"{key}_basis": f["basis"],
                        f"{key}_values": f["values"]})
        row["device_label"] = device_label(first)
        row["thin"] = figures["quality"] == "thin"
        row["thin_why"] = "; ".join(f"#{i}: {why}" for i, why in figures["thin"]) or None
        row["unit"] = figures
        row.update({f"knob:{k}": v for k, v in first.config.items() if k not in ("compress", *NOT_KNOBS)})
        row["knob:compress"] = compress_text(first.config.get("compress"))
        rows.append(row)
    return rows


def speed_verdicts(rows: list[dict], baseline: dict) -> list[dict]:
    """For every unit but the baseline: its throughput against the baseline's, in words.

    Each: {"label", "ratio", "ci95", "verdict", "basis", "text"}; text reads like '#3 bf16 is 1.52x
    as fast as #1 fp32 (95 % interval 1.40x to 1.65x, between repeats): faster, beyond noise' or
    '... not distinguishable from #1 fp32 at this spread'."""
    out = []
    for row in rows:
        if row["id"] == baseline["id"]:
            continue
        v = repeats.verdict(row["unit"], baseline["unit"], "train_images_per_s", against=baseline["label"])
        if v["ratio"] is None:
            text = f"{row['label']}: no throughput to compare with {baseline['label']}"
        else:
            basis = {repeats.BETWEEN: "between repeats",
                     repeats.WITHIN: "within-run intervals: run-to-run noise left out",
                     repeats.NONE: "no interval"}[v["basis"]]
            if v["ci95"] and math.isinf(v["ci95"][1]):
                interval = (f"95 % interval unbounded, {basis}: the repeats differ so much that the interval of "
                            "a side reaches zero; more repeats narrow it")
            elif v["ci95"]:
                interval = f"95 % interval {v['ci95'][0]:.2f}x to {v['ci95'][1]:.2f}x, {basis}"
            else:
                interval = "no interval: " + (repeats.OLD_RUN if repeats.OLD_RUN in _why_none(row, baseline)
                                               else "one side has no spread recorded")
            call = {"better": "faster, beyond noise", "worse": "slower, beyond noise",
                    "within noise": f"not distinguishable from {baseline['label']} at this spread",
                    "no interval": "cannot tell whether this is a difference"}[v["verdict"]]
            if v["basis"] == repeats.WITHIN and v["verdict"] in ("better", "worse"):
                # Within-run intervals cannot see how much the next run may differ (on a busy
                # machine the same config has measured 1.45x apart), so they never settle it alone.
                call = (f"{'faster' if v['verdict'] == 'better' else 'slower'} beyond each run's own step-to-step "
                        "noise, but run-to-run noise was not measured: set Repeats to 3 or more to tell")
            text = f"{row['label']} is {v['ratio']:.2f}x as fast as {baseline['label']} ({interval}): {call}"
        out.append({"label": row["label"], "id": row["id"], "ratio": v["ratio"], "ci95": v["ci95"],
                    "verdict": v["verdict"], "basis": v["basis"], "text": text})
    return out


def interval_note(rows: list[dict]) -> str:
    """What the intervals on the Compare page are, for the units shown."""
    bases = {r.get("train_images_per_s_basis") for r in rows if r.get("train_images_per_s") is not None}
    parts = ["Intervals are 95 %. A difference is called only when the whole interval of the ratio lies "
             f"beyond 1 ± {100 * MIN_EFFECT:.0f} %."]
    if repeats.BETWEEN in bases:
        parts.append("Repeat groups: between repeats (Student's t over the repeats' figures; from five repeats the "
                     "central value is MLPerf's mean without the fastest and slowest).")
    if repeats.WITHIN in bases:
        parts.append("Single runs: within run (bootstrap of the median over the run's steady steps). That leaves "
                     "out how much the next run may differ, which on a shared machine can be far more: set "
                     "Repeats to 3 or more to be sure.")
    old = [r["label"] for r in rows if r["unit"]["figures"]["train_images_per_s"].get("why_none")]
    if old:
        parts.append(f"No interval for {', '.join(old)}: {repeats.OLD_RUN}.")
    return " ".join(parts)


_MARKDOWN = set("\\`*_{}[]()<>#+-.!|~$")


def md_escape(text: str) -> str:
    """Text that st.markdown shows as typed: labels may carry values a person typed, and Markdown
    would turn them into links or images in every viewer's browser."""
    return "".join("\\" + c if c in _MARKDOWN else c for c in str(text))


def group_figure_rows(unit: dict) -> list[dict]:
    """A repeat group's figures (repeats.unit_figures) as table rows: central value, interval,
    cv, how many repeats had the figure, and each repeat's value; accuracy in %."""
    rows = []
    for key, f in unit["figures"].items():
        if f["value"] is None:
            continue
        spec = repeats.FIGURES[key]
        scale = 100 if spec.unit == "fraction" else 1
        rows.append({"figure": spec.label + (" (%)" if scale == 100 else f" ({spec.unit})"),
                     "central": scale * f["value"],
                     "95 % low": scale * f["ci95"][0] if f["ci95"] else None,
                     "95 % high": scale * f["ci95"][1] if f["ci95"] else None,
                     "cv %": 100 * f["cv"] if f["cv"] is not None else None, "n": f["n"],
                     "each repeat": ", ".join("–" if v is None else f"{scale * v:,.4g}" for v in f["values"])})
    return rows


def outcome_text(o: dict) -> str:
    """An advice outcome (advisor.advice_outcome) as Markdown: 'predicted x1.00 to x1.67 … —
    measured **x2.10** (95 % interval x1.90 to x2.32, within run) on CPU: …: **above** the predicted
    range.' Text from the store is escaped."""
    rng = o["predicted_range"]
    predicted = f"x{rng[0]:.2f} to x{rng[1]:.2f}" if rng else o["predicted"]
    measured = f"x{o['measured_factor']:.2f}" if o["measured_factor"] is not None else "n/a"
    ci = o["measured_ci95"]
    interval = (" (no interval)" if not ci else f" (95 % interval unbounded, {o['measured_basis']})"
                if math.isinf(ci[1]) else f" (95 % interval x{ci[0]:.2f} to x{ci[1]:.2f}, {o['measured_basis']})")
    where = {"inside": "inside the predicted range", "above": "**above** the predicted range",
             "below": "**below** the predicted range"}.get(o["position"], o["position"])
    device = "" if o["same_device"] else "; NOT the parent's device"
    return md_escape(f"predicted {predicted} {o['metric'] or ''} — measured ") + f"**{md_escape(measured)}**" \
        + md_escape(f"{interval} on {o['device_label']}{device}") + f": {where}."


def _why_none(*rows: dict) -> str:
    return " ".join(r["unit"]["figures"]["train_images_per_s"].get("why_none") or "" for r in rows)


# How the comparison table shows its numbers (printf style, as st.column_config takes them).
TABLE_FORMATS = {"train images/s": "%.0f", "step ms p50": "%.1f", "accuracy %": "%.2f", "peak memory MB": "%.0f",
                 "train s": "%.1f", "time to target s": "%.1f", "size MB": "%.2f", "latency ms p50": "%.2f",
                 "latency ms p90": "%.2f", "inference images/s": "%.0f", "images/s 95 % low": "%.0f",
                 "images/s 95 % high": "%.0f"}
MEMORY_KINDS = {"cuda_allocator": "GPU allocator peak", "host_rss": "process peak RSS (host)"}


def table_rows(runs: list[Run]) -> list[dict]:
    """The comparison table: one row per run (with its throughput interval and quality), then one
    indented child row per compressed variant; after the runs of a repeat group, one row with the
    group's central values and the interval between repeats."""
    out = []
    labels = short_labels(runs)
    groups = repeats.units(runs)
    for unit, label in zip(groups, unit_labels(groups)):
        for run in unit:
            out += _run_table_rows(run, labels[run.id])
        if len(unit) > 1:
            out.append(_group_table_row(unit, label))
    return out


def _row(**values) -> dict:
    """A table row with every column, in order; columns not given are empty."""
    return {column: values.get(column) for column in TABLE_COLUMNS}


TABLE_COLUMNS = ("run", "repeat", "variant", "device", "train images/s", "images/s 95 % low", "images/s 95 % high",
                 "interval", "throughput quality", "step ms p50", "accuracy %", "peak memory MB", "memory kind",
                 "train s", "time to target s", "params", "nonzero params", "size MB", "latency ms p50",
                 "latency ms p90", "inference images/s")


def _run_table_rows(run: Run, label: str) -> list[dict]:
    s = run.summary or {}
    t = s.get("throughput") or {}
    ci = t.get("ci95")
    repeat = f"{run.repeat_index} of {run.config.get('repeats')}" if run.repeat_group else ""
    interval = (repeats.WITHIN if ci else repeats.NONE if t else f"{repeats.NONE}: {repeats.OLD_RUN}"
                if s.get("train_images_per_s") is not None else "")
    out = [_row(run=label, repeat=repeat, variant="trained model", device=device_label(run) or "",
                **{"train images/s": s.get("train_images_per_s"), "images/s 95 % low": ci[0] if ci else None,
                   "images/s 95 % high": ci[1] if ci else None, "interval": interval,
                   "throughput quality": quality_text(s), "step ms p50": s.get("step_ms_p50"),
                   "accuracy %": _pct(s.get("test_accuracy")), "peak memory MB": s.get("peak_memory_mb"),
                   "memory kind": MEMORY_KINDS.get(s.get("memory_kind"), s.get("memory_kind")),
                   "train s": s.get("train_seconds"),
                   "time to target s": s.get("time_to_target_s"), "params": s.get("params"),
                   "nonzero params": s.get("nonzero_params"), "size MB": s.get("weights_mb")})]
    for v in s.get("variants") or []:
        out.append(_row(run=label, repeat=repeat, variant="  ↳ " + str(v.get("name", "variant")),
                        device=v.get("device_label") or device_label(run) or "",
                        **{"accuracy %": _pct(v.get("test_accuracy")), "params": v.get("params"),
                           "nonzero params": v.get("nonzero_params"), "size MB": v.get("size_mb"),
                           "latency ms p50": v.get("latency_ms_p50"), "latency ms p90": v.get("latency_ms_p90"),
                           "inference images/s": v.get("throughput_images_per_s")}))
    return out


def _group_table_row(unit: list[Run], label: str) -> dict:
    figures = repeats.unit_figures(unit)
    f = figures["figures"]
    speed = f["train_images_per_s"]
    central = "MLPerf mean" if speed["mlperf"] else "mean"
    s = unit[0].summary or {}
    return _row(run=label, repeat=f"{central} of {figures['done']}", variant="trained model",
                device=device_label(unit[0]) or "",
                **{"train images/s": speed["value"],
                   "images/s 95 % low": speed["ci95"][0] if speed["ci95"] else None,
                   "images/s 95 % high": speed["ci95"][1] if speed["ci95"] else None,
                   "interval": speed["basis"],
                   "throughput quality": ("thin: " + ", ".join(f"#{i}" for i, _ in figures["thin"])
                                          if figures["thin"] else figures["quality"]),
                   "step ms p50": f["step_ms_p50"]["value"], "accuracy %": _pct(f["test_accuracy"]["value"]),
                   "peak memory MB": f["peak_memory_mb"]["value"], "memory kind": s.get("memory_kind"),
                   "train s": f["train_seconds"]["value"], "time to target s": f["time_to_target_s"]["value"],
                   "params": s.get("params"), "nonzero params": s.get("nonzero_params"), "size MB": s.get("weights_mb")})


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
    """sweep id -> its runs, newest sweep first (runs arrive newest first from store.list). The
    repeats of a config queued on its own count as a sweep of one setting under their group id."""
    out: dict[str, list[Run]] = {}
    for run in runs:
        key = run.sweep_id or run.repeat_group
        if key:
            out.setdefault(key, []).append(run)
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
