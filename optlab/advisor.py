"""What to try next, from what a run measured — and whether it then did what was predicted.

Rules read a run's figures (its summary, with the profile when one was recorded, its config and
the device it ran on). Each that finds its evidence returns one `Advice`: the numbers that
triggered it, one RunConfig change to try, and the effect to expect with where that expectation
comes from — a reference run (clearly labelled, never a measurement of this run) or a bound
computed from this run's own figures. A rule whose evidence is absent says nothing.

Every prediction is a range (`expected_range`, child / parent of the figure) with its source: a
bound computed from this run ("up to x1.6 if the input wait disappears": 1.0 to the bound) or a
reference figure, which is the top of the range because the reference is a large model on an H100
and smaller work gains less.

`try_advice` submits the parent's config with that one change as a child run (as many repeats as
the parent's config asks for); `advice_outcome` puts the prediction next to what the child measured,
with the measured ratio's interval, and says whether it fell inside, above or below the range and
why that can happen.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Callable

from optlab.config import ConfigError, RunConfig
from optlab.registry import Registry

# -- the figures that trigger rules (module constants so a reader finds them in one place) --------
INPUT_WAIT_SHARE = 0.15     # of steady-state step time spent waiting for the next batch
LOW_GPU_BUSY = 0.70         # GPU busy share of the profiled window
HOST_BOUND = 0.80           # host time per step / step time, with the GPU below LOW_GPU_BUSY
SMALL_KERNEL_US = 20.0      # median kernel duration
MEMORY_HEADROOM = 0.50      # peak memory / device memory below this leaves room for a larger batch
CONV_SHARE = 0.20           # convolution share of device time that makes a run a conv net

# H100 reference runs (ResNet-50, 224 px, steady-state training throughput) made with a minimal
# plain-PyTorch training loop, not with OptLab. A reference is a prediction for someone else's run,
# so every use says so.
REFERENCE = {"bf16": 2.2, "bf16+channels_last": 4.0}
REFERENCE_SOURCE = ("reference, not a measurement of this run: plain-PyTorch reference runs on an H100 (a minimal "
                    "training loop, not OptLab runs) of ResNet-50 at 224 px — bf16 alone 2.2x, bf16 + "
                    "channels_last 4.0x the fp32 throughput; smaller models and images gain less, so the range "
                    "runs from no gain (x1.0) up to the reference's figure")
CONV_MODELS = {"speednet", "resnet18", "resnet50", "mobilenet_v3_small", "efficientnet_b0"}


@dataclass
class Advice:
    rule: str
    title: str                       # what to do, in a few words
    why: str                         # the evidence in a sentence
    evidence: dict                   # the figures that triggered the rule
    change: dict                     # one RunConfig change; empty when there is nothing to try here
    expected: str                    # e.g. "x2.2 throughput"
    expected_factor: float | None    # the predicted ratio child / parent of `metric`
    metric: str | None               # the summary figure the prediction is about
    prediction_source: str           # where the expectation comes from
    reference: bool = False          # True: a reference run's figure, not computed from this run
    device: str = ""                 # the device of the run the evidence came from
    expected_range: tuple[float, float] | None = None   # (low, high) of child / parent; None: no prediction

    def __post_init__(self):
        # Every factor the rules give is a bound or a reference's best case, so the range runs
        # from no change (1.0) to that factor.
        if self.expected_range is None and self.expected_factor is not None:
            self.expected_range = (min(1.0, self.expected_factor), max(1.0, self.expected_factor))
        elif self.expected_range is not None:
            self.expected_range = tuple(self.expected_range)

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def tryable(self) -> bool:
        return bool(self.change)


@dataclass
class Evidence:
    """A run's figures as the rules read them."""
    summary: dict
    config: dict
    device_info: dict = field(default_factory=dict)

    @property
    def profile(self) -> dict:
        return self.summary.get("profile") or {}

    @property
    def on_gpu(self) -> bool:
        return (self.summary.get("device") or self.device_info.get("kind")) == "cuda"

    @property
    def device_label(self) -> str:
        return self.summary.get("device_label") or self.device_info.get("label") or self.summary.get("device", "?")

    def category_share(self, category: str) -> float | None:
        rows = self.profile.get("categories")
        if not rows:
            return None
        return next((r["share"] for r in rows if r["category"] == category), 0.0)


Rule = Callable[[Evidence], "Advice | None"]
RULES: Registry[Rule] = Registry("advice rule")


def rule(name: str):
    return RULES.register(name)


def _batch(e: Evidence) -> int | None:
    size = e.summary.get("batch_size", e.config.get("batch_size"))
    return size if isinstance(size, int) and not isinstance(size, bool) else None


# -- the rules, in the order they are shown ------------------------------------------------------------
@rule("cpu_figures")
def _cpu_figures(e: Evidence):
    if e.on_gpu or not e.summary.get("device"):
        return None
    return Advice(
        "cpu_figures", "These are CPU figures",
        f"This run executed on the CPU ({e.device_label}): its throughput, step times and memory say "
        "nothing about a GPU. On an NVIDIA GPU the knobs that matter change: bf16 runs matrix work on "
        "Tensor Cores, channels_last feeds them without layout conversions, and the GPU data pipeline "
        "removes per-sample CPU work.",
        {"device": "cpu", "device_label": e.device_label}, {},
        "on the plain-PyTorch H100 reference runs, bf16 x2.2 and bf16 + channels_last x4.0 over fp32", None, None,
        REFERENCE_SOURCE, reference=True, device="cpu")


@rule("input_bound")
def _input_bound(e: Evidence):
    wait = e.summary.get("input_wait_share")
    if wait is None or wait < INPUT_WAIT_SHARE:
        return None
    evidence = {"input_wait_share": wait, "input_wait_ms_p50": e.summary.get("input_wait_ms_p50"),
                "step_ms_p50": e.summary.get("step_ms_p50"), "pipeline": e.config.get("pipeline"),
                "num_workers": e.config.get("num_workers")}
    if e.config.get("pipeline") == "gpu":
        return _device_input(e, wait, evidence)
    if e.config.get("dataset") != "imagefolder":
        change = {"pipeline": "gpu"}
        how = ("hold the data set on the device and augment whole batches there (the 'gpu' pipeline; on a "
               "CPU run, one in-memory tensor instead of per-sample transforms)")
    else:
        # The workers the run really had (the CPU plan may have given fewer than asked), and no
        # more than the cores leave beside one training thread.
        threads = (e.summary.get("host") or {}).get("threads") or {}
        workers = int(threads.get("loader_workers", e.config.get("num_workers") or 0))
        cores = threads.get("cores") or os.cpu_count() or 2
        more = min(max(2, 2 * workers), cores - 1 if e.summary.get("device") == "cpu" else cores)
        if more <= workers:
            return None
        change = {"num_workers": more}
        how = f"use {more} DataLoader workers instead of {workers}"
    bound = 1 / (1 - wait)
    return Advice(
        "input_bound", "Feed the model faster",
        f"{100 * wait:.0f} % of each steady-state step was spent waiting for the next batch; {how}.",
        evidence, change, f"up to x{bound:.2f} throughput", bound, "train_images_per_s",
        f"computed from this run: the bound if the {100 * wait:.0f} % input wait disappears entirely",
        device=e.summary.get("device", ""))


def _device_input(e: Evidence, wait: float, evidence: dict) -> Advice:
    """The gpu pipeline has no loader workers: its input work (gather, per-sample augmentation,
    resize, normalise) is kernels on the run's device between the steps. What applies is making
    those kernels cheaper; turning augmentation off measures what it costs."""
    where = "GPU" if e.on_gpu else "CPU (this run's device)"
    size = e.config.get("image_size")
    resize = f"; it also resizes every batch to {size} px there" if size else ""
    why = (f"{100 * wait:.0f} % of each steady-state step went to preparing the next batch. With the 'gpu' pipeline "
           f"that is not a loader waiting: the batch is gathered, augmented and normalised by kernels on the {where}"
           f"{resize}, so DataLoader workers would change nothing. ")
    if e.config.get("augment", True):
        why += ("A run without augmentation shows what the on-device augmentation costs (it may cost accuracy); the "
                "Profile page lists the input kernels.")
        change = {"augment": False}
        expected = "no prediction: measures the augmentation's share of the input time"
    else:
        why += "Augmentation is already off: the Profile page shows which input kernels take the time."
        change = {}
        expected = "nothing to try automatically"
    return Advice("input_bound", "Input work runs on the device", why, evidence, change, expected, None,
                  "train_images_per_s", "no prediction: the input kernels' share depends on the model and image size",
                  device=e.summary.get("device", ""))


@rule("reduced_precision")
def _reduced_precision(e: Evidence):
    precision = e.config.get("precision")
    if not e.on_gpu or not e.device_info.get("has_tensor_cores") or precision not in ("fp32", "tf32"):
        return None
    target = "bf16" if e.device_info.get("supports_bf16") else "fp16"
    evidence = {"precision": precision, "gpu": e.device_info.get("name"),
                "compute_capability": e.device_info.get("capability")}
    tc = (e.profile.get("tensor_cores") or {}).get("share")
    if tc is not None:
        evidence["tensor_core_share"] = tc
    heavy = [s for s in (e.category_share("convolution"), e.category_share("matmul")) if s is not None]
    if heavy:
        evidence["conv_and_matmul_share"] = sum(heavy)
    if precision == "fp32":
        expected, factor = f"x1.0 to x{REFERENCE['bf16']:.1f} throughput", REFERENCE["bf16"]
        why = (f"The run trained in fp32 on a Tensor Core GPU ({e.device_info.get('name')}), so its convolutions "
               f"and matrix products ran on the slower FP32 units")
    else:
        expected, factor = "less than x2.2: tf32 already runs on Tensor Cores; bf16 halves the bytes moved", None
        why = "tf32 uses Tensor Cores but keeps 32-bit activations; bf16 halves memory traffic too"
    if tc is not None:
        why += f" ({100 * tc:.0f} % of kernel time on Tensor Cores)"
    if heavy and sum(heavy) < 0.3:
        why += f"; only {100 * sum(heavy):.0f} % of GPU time is convolution or matmul, so expect less"
    return Advice("reduced_precision", f"Train in {target}", why + ".", evidence, {"precision": target},
                  expected, factor, "train_images_per_s", REFERENCE_SOURCE, reference=factor is not None,
                  device="cuda")


@rule("channels_last")
def _channels_last(e: Evidence):
    if not e.on_gpu or e.config.get("precision") not in ("bf16", "fp16") or e.config.get("channels_last"):
        return None
    conv = e.category_share("convolution")
    if conv is None and e.config.get("model") not in CONV_MODELS:
        return None
    if conv is not None and conv < CONV_SHARE:
        return None
    factor = REFERENCE["bf16+channels_last"] / REFERENCE["bf16"]
    share = (f"{100 * conv:.0f} % of GPU time is convolution" if conv is not None
             else f"{e.config.get('model')} is a conv net")
    return Advice(
        "channels_last", "Use channels_last",
        f"Mixed precision on a conv net in NCHW layout: {share}, and Tensor Core convolutions want NHWC, so "
        "cuDNN converts layouts around each one.",
        {"precision": e.config.get("precision"), "channels_last": False, "convolution_share": conv,
         "model": e.config.get("model")},
        {"channels_last": True}, f"x1.0 to x{factor:.1f} throughput over {e.config.get('precision')} alone", factor,
        "train_images_per_s", REFERENCE_SOURCE, reference=True, device="cuda")


@rule("host_overhead")
def _host_overhead(e: Evidence):
    host, util = e.profile.get("host") or {}, e.profile.get("utilisation") or {}
    if not e.on_gpu or host.get("basis") != "gpu" or e.config.get("compile"):
        return None
    busy, step = util.get("busy_share"), host.get("step_ms")
    host_share = host["host_ms"] / step if step else None
    median = e.profile.get("kernel_us_median")
    host_bound = host_share is not None and busy is not None and host_share >= HOST_BOUND and busy < LOW_GPU_BUSY
    tiny = median is not None and median < SMALL_KERNEL_US and busy is not None and busy < LOW_GPU_BUSY
    if not (host_bound or tiny):
        return None
    why = []
    if host_bound:
        why.append(f"the host was busy {100 * host_share:.0f} % of each step while the GPU was busy only "
                   f"{100 * busy:.0f} %: the GPU waits for Python to launch work")
    if tiny:
        why.append(f"the median kernel lasts {median:.1f} µs ({e.profile.get('kernels_per_step', 0):.0f} "
                   "kernels per step), so launch overhead dominates")
    return Advice(
        "host_overhead", "Compile the model", "; ".join(why).capitalize() + ". torch.compile fuses small kernels "
        "and cuts the launches per step.",
        {"host_ms_per_step": host.get("host_ms"), "device_ms_per_step": host.get("device_ms"),
         "gpu_busy_share": busy, "kernel_us_median": median, "kernels_per_step": e.profile.get("kernels_per_step")},
        {"compile": True}, "fewer, fused kernels; the gain depends on the model (no reference figure)", None,
        "train_images_per_s", "no prediction: try it and compare the measured throughput", device="cuda")


@rule("low_gpu_utilisation")
def _low_utilisation(e: Evidence):
    util = e.profile.get("utilisation") or {}
    busy, size = util.get("busy_share"), _batch(e)
    if not e.on_gpu or util.get("basis") != "gpu" or busy is None or busy >= LOW_GPU_BUSY or size is None:
        return None
    peak = e.summary.get("peak_reserved_mb") or e.summary.get("peak_memory_mb")
    total = e.device_info.get("total_memory_mb")
    if peak and total and 2 * peak > 0.9 * total:
        return None   # twice the batch would not fit; the memory rule stays silent too
    bound = min(2.0, 1 / busy)
    return Advice(
        "low_gpu_utilisation", "Double the batch",
        f"The GPU was idle {100 * (1 - busy):.0f} % of the profiled window: each step gives it too little work "
        "to cover the fixed per-step costs.",
        {"gpu_busy_share": busy, "batch_size": size, "peak_memory_mb": peak, "device_memory_mb": total},
        {"batch_size": 2 * size}, f"up to x{bound:.2f} throughput", bound, "train_images_per_s",
        "computed from this run: the bound if twice the work per step kept the idle GPU busy "
        "(never more than x2)", device="cuda")


@rule("memory_headroom")
def _memory_headroom(e: Evidence):
    peak = e.summary.get("peak_reserved_mb") or e.summary.get("peak_memory_mb")
    total, size = e.device_info.get("total_memory_mb"), _batch(e)
    if not e.on_gpu or not peak or not total or size is None or e.summary.get("memory_kind") != "cuda_allocator":
        return None
    if peak / total >= MEMORY_HEADROOM:
        return None
    room = 0.9 * total / peak
    return Advice(
        "memory_headroom", "Let OptLab pick the batch size",
        f"Peak GPU memory was {peak:,.0f} MB of {total:,.0f} MB ({100 * peak / total:.0f} %): a batch about "
        f"{room:.1f}x larger would fit. 'auto' finds the largest that fits, keeps headroom and confirms it.",
        {"peak_memory_mb": peak, "device_memory_mb": total, "batch_size": size},
        {"batch_size": "auto"}, f"a batch up to ~{room:.1f}x larger; throughput gains only if the GPU was not "
        "already saturated", None, "train_images_per_s",
        "computed from this run's peak memory (memory grows roughly with the batch)", device="cuda")


# -- the public surface -------------------------------------------------------------------------------
def advise(run_summary: dict | None, config: RunConfig | dict, device_info: dict | None = None) -> list[Advice]:
    """Every rule whose evidence is present in this run's figures, in registry order.

    `device_info` is the run's device (Run.device: capability, memory, Tensor Cores); rules that
    need it stay silent without it.
    """
    cfg = config.to_dict() if isinstance(config, RunConfig) else dict(config or {})
    evidence = Evidence(run_summary or {}, cfg, device_info or {})
    if not evidence.summary.get("device"):
        return []   # not finished: nothing was measured yet
    return [a for a in (check(evidence) for _, check in RULES.items()) if a is not None]


def describe_change(change: dict, device: str | None = None) -> str:
    """'pipeline=gpu (data in memory)': each setting as typed, with what it means on `device`
    when the value alone does not say it."""
    from optlab.naming import knob_word
    parts = []
    for k, v in change.items():
        word = knob_word(k, v, device)
        parts.append(f"{k}={v}" + ("" if str(v) in word else f" ({word})"))
    return ", ".join(parts)


def tried_child(store, run, advice: Advice | dict) -> int | None:
    """The run already queued to try this advice on `run` (queued, running or done), if any: a
    second click, or a second person, gets that run instead of a duplicate."""
    change = advice.change if isinstance(advice, Advice) else advice.get("change")
    if not change:
        return None
    wanted = run.run_config.replace(**change).to_dict()
    for child in store.list(parent_id=run.id, status=("queued", "running", "done"), newest_first=False):
        if child.config == wanted:
            return child.id
    return None


def try_advice(store, run, advice: Advice | dict, user: str = "") -> int:
    """Queue the parent's config with the advice's one change as a child run and return its id
    (the first of its repeat group when the config repeats); when that child was already queued
    (see `tried_child`), return it instead of queueing twice.

    Each child records the prediction (metric kind "advice") so `advice_outcome` can compare.
    """
    advice = advice if isinstance(advice, Advice) else Advice(**advice)
    if not advice.change:
        raise ConfigError(f"advice {advice.rule!r} has no setting to try on this machine; "
                          "only advice with a change can be tried")
    from optlab import repeats
    config = run.run_config.replace(**advice.change).validate()   # keeps the parent's repeats
    existing = tried_child(store, run, advice)
    if existing is not None:
        return existing
    label = f"#{run.id} + {describe_change(advice.change, (run.summary or {}).get('device'))}"
    children = repeats.submit(store, config, user=user, parent_id=run.id, label=label)
    parent = run.summary or {}
    for child in children:
        store.add_metric(child, "advice", {**advice.to_dict(), "parent_id": run.id,
                                           "parent_value": parent.get(advice.metric) if advice.metric else None,
                                           "parent_device_label": parent.get("device_label")})
    return children[0]


def advice_outcome(store, run_id: int) -> dict | None:
    """Predicted vs measured for a child run that `try_advice` queued, once it is done.

    The measured factor is the child's figure over the parent's (steady-state throughput unless the
    advice names another figure), each side its repeat group's central value when it has one, with
    the ratio's 95 % interval from both sides' intervals (between repeats, or within run). `position`
    says whether the measurement fell inside, above or below the predicted range, and `why` what can
    put it there. None for a run that is not an advice child or not done yet.
    """
    from optlab import repeats
    from optlab.stats import ratio_interval, verdict
    records = store.metrics(run_id, "advice")
    child = store.get(run_id)
    if not records or child is None or child.status != "done":
        return None
    advice = records[-1]
    # an imported child whose parent stayed behind has no parent here: its recorded figure stands in
    parent = store.get(advice["parent_id"]) if advice.get("parent_id") is not None else None
    metric = advice.get("metric")
    kids = [r for r in repeats.members(store, child) if r.status == "done"]
    before_fig = _figure(repeats.members(store, parent), metric) if parent and metric else None
    after_fig = _figure(kids, metric) if metric else None
    before = before_fig["value"] if before_fig else advice.get("parent_value")
    after = after_fig["value"] if after_fig else None
    measured, lo, hi = (ratio_interval(after, after_fig["ci95"], before, before_fig["ci95"])
                        if before and after is not None and before_fig else
                        (after / before if before and after is not None else None, None, None))
    basis = (repeats.NONE if lo is None else
             repeats.BETWEEN if {before_fig["basis"], after_fig["basis"]} == {repeats.BETWEEN} else repeats.WITHIN)
    predicted = advice.get("expected_range")
    if predicted is None and advice.get("expected_factor") is not None:
        f = advice["expected_factor"]
        predicted = (min(1.0, f), max(1.0, f))
    position = _position(predicted, measured, lo, hi)
    child_label = (child.summary or {}).get("device_label")
    parent_label = (parent.summary or {}).get("device_label") if parent else advice.get("parent_device_label")
    return {
        "rule": advice["rule"], "title": advice["title"], "change": advice["change"], "metric": metric,
        "parent_id": advice["parent_id"], "child_id": run_id, "child_ids": [r.id for r in kids],
        "predicted": advice["expected"], "predicted_factor": advice.get("expected_factor"),
        "predicted_range": tuple(predicted) if predicted else None,
        "prediction_source": advice["prediction_source"], "reference": advice.get("reference", False),
        "parent_value": before, "child_value": after, "measured_factor": measured,
        "measured_ci95": (lo, hi) if lo is not None else None, "measured_basis": basis,
        "measured_verdict": verdict(measured, lo, hi) if measured is not None else "no figure",
        "position": position, "why": _why(position, advice.get("reference", False), basis, lo, hi),
        "device_label": child_label, "same_device": child_label == parent_label,
    }


def _figure(runs: list, metric: str) -> dict | None:
    from optlab import repeats
    done = [r for r in runs if r.status == "done"]
    if not done:
        return None
    if metric in repeats.FIGURES:
        return repeats.unit_figures(done)["figures"][metric]
    value = (done[0].summary or {}).get(metric)
    return {"value": value, "ci95": None, "basis": repeats.NONE}


def _position(predicted, measured, lo, hi) -> str:
    """"inside", "above" or "below" the predicted range; with an interval, "inside" when the
    interval reaches into the range, so noise alone never puts a measurement outside it."""
    if measured is None:
        return "not measured"
    if not predicted:
        return "no prediction"
    low, high = (lo, hi) if lo is not None else (measured, measured)
    if low > predicted[1]:
        return "above"
    if high < predicted[0]:
        return "below"
    return "inside"


def _why(position: str, reference: bool, basis: str, lo, hi) -> str:
    from optlab import repeats
    noise = ("" if basis == repeats.BETWEEN else
             " These are single runs: the interval is within-run and leaves out run-to-run noise, which on a "
             "shared machine can move a figure by tens of percent; repeat both runs (Repeats >= 3) to be sure."
             if basis == repeats.WITHIN else " Neither side has an interval, so noise cannot be ruled out.")
    flat = (" The measured change itself is within noise of no change." if lo is not None and lo <= 1 <= hi else "")
    if position == "above":
        cause = ("The range tops out at a reference figure from plain-PyTorch runs of ResNet-50 on an H100, not at a "
                 "measurement of this model: a different model, batch or device, or a parent run that was slow for "
                 "another reason (other work on the machine, clocks), can gain more." if reference else
                 "The range is a bound computed from the parent's own figures, assuming only the bottleneck the rule "
                 "saw goes away. Beating it means the change did more (it also removed work the rule did not count, "
                 "e.g. CPU cores freed for the model's own threads) or the parent was slowed by something else while "
                 "it ran.")
    elif position == "below":
        cause = ("The reference is a large model at 224 px on an H100, where matrix work dominates each step; a "
                 "smaller model, smaller images or another device spends more of each step on work the change does "
                 "not speed up." if reference else
                 "The bound assumed the bottleneck the rule saw was the only one; when something else limits the "
                 "step as well (compute, the host launching work, another process on the machine), removing it "
                 "gains less.")
    elif position == "inside":
        cause = "The measurement fell inside the predicted range."
    else:
        cause = "There was no predicted range to compare with." if position == "no prediction" else ""
    return (cause + flat + (noise if position in ("above", "below") else "")).strip()
