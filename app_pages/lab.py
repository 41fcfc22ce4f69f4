"""Lab: see the device, set every knob of a run (or sweep one or two), launch it into the queue."""
from __future__ import annotations

import streamlit as st

from app_pages import _ladder, _room
from optlab import ddp, fit, naming, repeats, views
from optlab.compress import METHODS, available_methods
from optlab.config import OPTIMIZERS, PRESETS, ConfigError, RunConfig
from optlab.data import DATASETS, allowed_image_roots
from optlab.estimate import estimate
from optlab.models import MODELS
from optlab.store import Store
from optlab.sweeps import MAX_RUNS, SWEEPABLE, parse_values, submit_sweep

NO_KNOB = "—"
GROUP_WIDTH = 185   # px: the widest label of a group ("Largest automatic batch") on one line
GAP = 16            # px: Streamlit's "small" gap (1rem)

store = Store()
info = st.session_state["device_info"]
state = st.session_state

st.title("Lab")
st.caption("Pick a model and data, turn the knobs, launch. Runs queue on this server's "
           f"{'GPU' if info.is_gpu else 'CPU'} and the Runs page shows them live.")

# -- the device card -----------------------------------------------------------------------------
if info.is_gpu:
    with st.container(border=True):
        st.markdown(f"#### :material/memory: {info.name}")
        cap = ".".join(map(str, info.capability)) if info.capability else "?"
        st.caption(f"{info.total_memory_mb / 1024:.0f} GiB · compute capability {cap} · "
                   f"bf16 {'yes' if info.supports_bf16 else 'no'} · Tensor Cores "
                   f"{'yes' if info.has_tensor_cores else 'no'}")

        @st.fragment(run_every=2)
        def live_gpu():
            snap = views.gpu_snapshot(info.index or 0)
            if snap is None:
                st.caption("Live utilisation unavailable: NVML could not be read on this server.")
                return
            row = st.container(horizontal=True, gap="small")    # wraps at narrow widths, never cut

            def show(label, value, fmt):
                row.metric(label, "n/a" if value is None else fmt.format(value), width=160)
            show("Utilisation", snap.get("gpu_util_pct"), "{:.0f} %")
            show("Memory used", snap.get("mem_used_mb"), "{:,.0f} MB")
            show("Power", snap.get("power_w"), "{:.0f} W")
            show("Temperature", snap.get("temperature_c"), "{:.0f} °C")
        live_gpu()
else:
    st.info(f"**No GPU on this server.** Runs use the CPU ({info.name}), so every figure they produce "
            "is a CPU figure, labelled as such. Keep runs small: a few thousand images, one or two epochs.",
            icon=":material/computer:")

# -- form state ----------------------------------------------------------------------------------
# The form's values live in state["_lab_values"] and reach each widget as its `value`: a widget's
# own state is forgotten when another page is shown, and a browser that misses a rerun's update
# falls back to the widget's `value`. Filling the form from a preset or a run starts a new form
# generation (fresh widget keys) instead of writing into widgets that already exist.
state.setdefault("_lab_gen", 0)
state.setdefault("_lab_values", views.form_values(fit.preset_for("baseline" if info.is_gpu else "cpu-quick", info)[0]))
device_word = "GPU" if info.is_gpu else "CPU"


def fill(values: dict, note: str | None = None) -> None:
    state["_lab_values"] = values
    state["_lab_gen"] += 1
    state["_lab_note"] = note


def apply_preset() -> None:
    if state.get("lab_preset"):
        cfg, note = fit.preset_for(state["lab_preset"], info)
        fill(views.form_values(cfg), note)


source = st.query_params.get("from_run")
if source and state.get("_lab_from") != source:
    state["_lab_from"] = source
    run = store.get(int(source)) if source.isdigit() else None
    if run is None:
        st.warning(f"The link asks for run {views.md_text(source)}, which is not in this store; "
                   "the form keeps its values.", icon=":material/warning:")
    else:
        fill(views.form_values(run.run_config), f"The form holds the settings of run #{run.id}: "
                                                 "change what you like and launch.")

if (shared := _room.shared_setup()) is not None:   # a link with ?setup=… fills the form
    fill(views.form_values(shared))

st.selectbox("Start from a preset", list(PRESETS), index=None, key="lab_preset", on_change=apply_preset,
             placeholder="Choose a preset to fill the form…",
             format_func=lambda p: p if info.is_gpu or p not in fit.CPU_VERSIONS else f"{p} (CPU version)",
             help="Named starting points: baseline (fp32), amp (bf16 + channels-last), amp-gpu-data, "
                  "imagenet-size, speedrun (tuned for 94 %), cpu-quick (small, for machines without a GPU)."
                  + ("" if info.is_gpu else " Without a GPU each preset keeps its knobs and trains a smaller run."))
if state.get("_lab_note"):
    st.info(state["_lab_note"], icon=":material/info:")
values = state["_lab_values"]


def key(name: str) -> str:
    return f"lab_{name}_{state['_lab_gen']}"


# -- the form ------------------------------------------------------------------------------------
def current(name: str):
    """The value a knob's widget holds in this run of the page (already drawn), else the form's."""
    return state.get(key(name), values[name])


def choice_control(name: str, common: dict) -> None:
    """A segmented control with the values this server can run; the others named with the reason.
    Its options wrap onto a second row in a narrow column instead of being cut off."""
    knob, value = views.KNOBS[name], values[name]
    target = views.target_device(current("device"), info) if name != "device" else info
    options, refused = fit.offered(name, target), fit.unavailable(name, target)
    device = "cuda" if target.is_gpu else "cpu"
    words = (lambda v: f"{v}: {naming.pipeline_word(v, device)}") if name == "pipeline" else str
    st.segmented_control(knob.label, options, default=value if value in options else options[0], required=True,
                         format_func=words, wrap=True, **common)
    if value not in options:
        st.warning(f"{value} cannot run here ({fit.short_reason(refused[value])}); the form uses {options[0]}.")
    if refused:
        st.caption("Not offered: " + fit.unavailable_note(refused, target))


def widget(name: str):
    """Draw the widget for one RunConfig knob; choices come from the registries and the device."""
    knob, value = views.KNOBS[name], values[name]
    choice = {"model": MODELS.names(), "dataset": DATASETS.names(),
              "optimizer": [views.DEFAULT_CHOICE, *OPTIMIZERS]}
    steps = {"epochs": 1, "max_batch_size": 1, "num_workers": 1, "seed": 1, "warmup_fraction": 0.05,
             "label_smoothing": 0.05, "target_accuracy": 0.01, "repeats": 1, "gpus": 1}
    common = dict(key=key(name), help=knob.help)
    if name == "data_path":
        if current("dataset") != "imagefolder":
            return                   # a folder means something only to the imagefolder data set
        roots = ", ".join(map(str, allowed_image_roots())) or "none: the server sets OPTLAB_IMAGE_ROOTS"
        common["help"] = f"{knob.help} Allowed under: {roots}."
    if name in choice:
        options = choice[name]
        st.selectbox(knob.label, options, index=options.index(value) if value in options else 0, **common)
    elif name in ("precision", "pipeline", "device"):
        choice_control(name, common)
    elif name in steps:
        st.number_input(knob.label, value=value, step=steps[name],
                        format="%g" if isinstance(steps[name], float) else None, **common)
    elif isinstance(value, bool):
        st.toggle(knob.label, value=value, **common)
    else:   # text: batch size ("auto"), settings that may be left empty, the image folder
        st.text_input(knob.label, value=value, placeholder=views.EMPTY_MEANS.get(name, ""), **common)


# No st.form: a form's widgets lose values set before the form was first submitted whenever a
# widget outside it (the sidebar's name) reruns the app.
with st.container(border=True):
    # Each group a fixed-width box, in pairs, in a row that wraps: four side by side from 1280 px
    # wide windows, two rows of two at 1024 px with the sidebar open, never a column too narrow for
    # its labels and options.
    groups = [g for g in views.GROUPS if g != "Compression"]
    row = st.container(horizontal=True, gap="small")
    pairs = [row.container(horizontal=True, gap="small", width=2 * GROUP_WIDTH + GAP) for _ in range(2)]
    for n, group in enumerate(groups):
        with pairs[n // 2].container(width=GROUP_WIDTH):
            st.markdown(f"**{group}**")
            for name, knob in views.KNOBS.items():
                if knob.group == group and _room.shown(name):
                    widget(name)
    with st.expander("Compression after training", expanded=bool(values["compress_methods"]
                                                                     or values["compress_json"])):
        # Offer what can run on this server; name the others, with why, in a line each.
        unavailable = available_methods(info)
        methods = [m for m, why in unavailable.items() if why is None and not METHODS.get(m).settings_only]
        refused = {m: why for m, why in unavailable.items() if why}
        st.multiselect(views.KNOBS["compress"].label, methods, key=key("compress_methods"),
                       default=[m for m in values["compress_methods"] if m in methods],
                       format_func=naming.method_title, help=views.KNOBS["compress"].help, disabled=not methods,
                       placeholder="none" if methods else "no compression methods installed")
        if refused:
            with st.popover(f"Not available on this server ({len(refused)})", icon=":material/block:"):
                for m, why in refused.items():
                    st.markdown(f"- **{naming.method_title(m)}**: {views.md_text(fit.short_reason(why))}")
        st.text_area("Step settings (JSON, optional)", value=values["compress_json"], key=key("compress_json"),
                     height=80, placeholder='[{"method": "prune_unstructured", "sparsity": 0.5}]',
                     help="A list of steps with their settings; when filled it replaces the methods picked above.")

    st.markdown("**Sweep** (optional): one run per combination of the values below, grouped for comparison.")
    slots = st.columns(2)
    for n, column in enumerate(slots, start=1):
        with column:
            a, b = st.columns([2, 3])
            a.selectbox(f"Knob {n}", [NO_KNOB, *SWEEPABLE], key=f"sweep_knob_{n}",
                        format_func=lambda k: k if k == NO_KNOB else views.KNOBS[k].label)
            b.text_input(f"Values {n}", key=f"sweep_values_{n}", placeholder="e.g. fp32, bf16  or  64, 128, 256",
                         help="Comma-separated values for this knob.")
    checks = st.container()          # filled below, once every widget's value is known
    launch = st.container(horizontal=True)
    launch_one = launch.button("Launch run", type="primary", icon=":material/rocket_launch:")
    launch_sweep = launch.button("Launch sweep", icon=":material/grid_view:")
    ladder_slot = launch.popover("Ladder", icon=":material/stairs:",
                                 help="Climb from these settings one knob at a time and see what each one added.")

values = state["_lab_values"] = {name: state.get(key(name), values[name]) for name in values}
_room.share_link(values)


# -- what Launch would queue: checked and estimated before anything is queued -------------------------------
def sweep_axes() -> dict:
    return {state[f"sweep_knob_{n}"]: parse_values(state[f"sweep_knob_{n}"], state.get(f"sweep_values_{n}", ""))
            for n in (1, 2) if state.get(f"sweep_knob_{n}", NO_KNOB) != NO_KNOB}


def planned(sweep: bool) -> list:
    """The form as SweepRun combinations (or the one RunConfig), checked as fit.plan checks them."""
    return fit.plan(views.config_from_form(values), sweep_axes() if sweep else None,
                    lambda c: views.target_device(c.device, info))


LAUNCH_WAIT_S = 20     # Launch waits this long for an estimate still being timed, then asks


def estimates(configs: list[RunConfig], wait: float) -> list:
    return [estimate(store, c, views.target_device(c.device, info), fit.data_facts(c), wait=wait) for c in configs]


def total(found: list) -> float | None:
    known = [e.seconds for e in found if e.seconds is not None]
    return sum(known) if known else None


def draw_checks(cfg: RunConfig) -> None:
    """What the run will be on this device before it is queued: warnings, steps, duration; and the
    sweep's total when the sweep fields are filled."""
    findings = fit.preflight(cfg)
    for finding in findings:
        error = finding.level == "error"
        (st.error if error else st.warning)(views.md_text(finding.message),
                                            icon=":material/error:" if error else ":material/warning:")
    if any(f.level == "error" for f in findings):
        return
    [est] = estimates([cfg], wait=0)

    @st.fragment(run_every=1.0 if est.source == "timing" else None)
    def estimate_panel():
        [now] = estimates([cfg], wait=0)
        if now.source != est.source:
            st.rerun()               # the calibration finished: the whole form follows (Launch, warnings)
        head, basis = views.estimate_lines(now, device_word)
        budget = fit.BUDGET_S[info.kind]
        icon = ":material/hourglass_top:" if now.seconds is None or now.seconds <= budget else ":material/warning:"
        st.markdown(f"{icon} **Before you launch:** {head}")
        st.caption(basis[:1].upper() + basis[1:] + ("" if basis.endswith("…") else "."))
        if cfg.gpus > 1:
            st.caption(f"The estimate is for one device: with {cfg.gpus} ranks each trains on 1 image in {cfg.gpus}, "
                       "and torchrun's start adds several seconds; the run's scaling efficiency says what it gained.")
        if now.seconds is not None and now.seconds > budget:
            st.warning(f"That is longer than {views.duration(budget)}, more than a run on this shared "
                       f"{device_word} should take. Launch offers a smaller version.", icon=":material/warning:")
        if any(state.get(f"sweep_knob_{n}", NO_KNOB) != NO_KNOB for n in (1, 2)):
            draw_sweep_estimate(cfg)
    estimate_panel()


def draw_sweep_estimate(cfg: RunConfig) -> None:
    try:
        configs = [c.config for c in planned(sweep=True)]
    except ConfigError as e:         # values that do not parse, or a combination this server refuses
        st.error(f"Launch sweep would queue nothing: {views.md_text(e)}", icon=":material/error:")
        return
    found = estimates(configs, wait=0)
    known = [e for e in found if e.seconds is not None]
    seconds = total(found)
    st.markdown(f":material/grid_view: **Launch sweep:** {views.count(len(configs), 'run')}"
                + (f", about {views.duration(seconds)} in all" if seconds is not None else "")
                + ("" if len(known) == len(found) else f" ({len(known)} of {len(found)} estimated so far)"))


with checks:
    if not (launch_one or launch_sweep):   # after a click, the launch message below says it all
        try:
            form = views.config_from_form(values)
            form.validate(views.target_device(form.device, info))
        except ConfigError as e:
            st.error(views.md_text(e), icon=":material/error:")
        else:
            draw_checks(form)

with ladder_slot:
    try:
        ladder_start = views.config_from_form(values)
    except ConfigError:                  # the form's own check above names the value
        st.caption("Fix the form first: the ladder climbs from its settings.")
    else:
        _ladder.launch_panel(store, ladder_start, info, "lab")


# -- launch ---------------------------------------------------------------------------------------------------
def queue(combos: list, sweep: bool, seconds: float | None) -> None:
    user, before = state.get("user", ""), []
    if sweep:
        sweep_id, ids = submit_sweep(store, combos, user=user, device_for=lambda c: views.target_device(c.device, info))
        times = combos[0].config.repeats if combos else 1
    else:
        # a data-parallel run is measured against the same settings on one device: queued first unless there
        reference = ddp.reference_to_queue(store, combos[0])
        before = repeats.submit(store, reference, user=user,
                                label=f"one-device reference for gpus={combos[0].gpus}") if reference else []
        ids = repeats.submit(store, combos[0], user=user)
        sweep_id, times = store.get(ids[0]).repeat_group, combos[0].repeats
    state["lab_notice"] = {"ids": ids, "sweep_id": sweep_id, "seconds": seconds, "repeats": times, "sweep": sweep,
                           "reference": before[0] if before else None}
    state.pop("lab_over", None)


def queue_anyway() -> None:
    over = state.get("lab_over")
    if over:
        queue(over["combos"], over["sweep"], over["seconds"])


def queue_smaller() -> None:
    over = state.get("lab_over")
    if over and over.get("smaller"):
        smaller = RunConfig.from_json(over["smaller"])
        queue([smaller], False, over["smaller_seconds"])
        fill(views.form_values(smaller), "The form holds the smaller version that was queued.")


if launch_one or launch_sweep:
    try:
        combos = planned(launch_sweep)
        configs = [c.config for c in combos] if launch_sweep else combos
        found = estimates(configs, wait=0 if launch_sweep else LAUNCH_WAIT_S)   # a sweep is not held up by each
        seconds = total(found)
        budget = fit.BUDGET_S[info.kind]
        if not launch_sweep and found[0].source == "timing":    # no run is queued blind: ask
            state["lab_over"] = {"combos": combos, "sweep": False, "seconds": None, "basis": found[0].basis}
            state.pop("lab_notice", None)
        elif seconds is not None and seconds > budget:
            smaller, smaller_s = None, None
            one = found[0]
            if not launch_sweep and one.seconds_per_image:
                small = fit.shrink(configs[0], one.seconds_per_image, one.overhead_seconds, budget,
                                   fit.data_facts(configs[0]))
                if small is not None:
                    smaller = small.to_json()
                    smaller_s = one.seconds_per_image * small.limit_train * small.epochs + one.overhead_seconds
            state["lab_over"] = {"combos": combos, "sweep": launch_sweep, "seconds": seconds,
                                 "basis": found[0].basis, "smaller": smaller, "smaller_seconds": smaller_s}
            state.pop("lab_notice", None)
        else:
            queue(combos, launch_sweep, seconds)
    except ConfigError as e:
        state.pop("lab_notice", None)
        state.pop("lab_over", None)
        st.error(f"**Nothing was queued.** {views.md_text(e)}", icon=":material/error:")
        if launch_sweep:
            st.caption(f"A sweep needs one or two knobs, each with comma-separated values, at most {MAX_RUNS} runs.")

over = state.get("lab_over")
if over and over["seconds"] is None:
    st.warning(f"**Not queued yet: how long it takes on this {device_word} is still being measured** "
               f"({over['basis']}). Launch again in a moment, or queue it without the estimate.",
               icon=":material/hourglass_top:")
    st.button("Queue it now", on_click=queue_anyway, icon=":material/schedule:")
elif over:
    what = f"This sweep of {len(over['combos'])} runs" if over["sweep"] else "This run"
    st.warning(f"**Not queued yet. {what} would take about {views.duration(over['seconds'])} on this "
               f"{device_word}**, longer than the {views.duration(fit.BUDGET_S[info.kind])} a run on a shared "
               f"{device_word} should take. The estimate is {over['basis']}.", icon=":material/warning:")
    cols = st.columns([1, 2])
    cols[0].button("Queue it anyway", on_click=queue_anyway, icon=":material/schedule:", width="stretch")
    if over.get("smaller"):
        small = RunConfig.from_json(over["smaller"])
        cols[1].button(f"Queue a smaller version: {views.smaller_words(small)}, about "
                       f"{views.duration(over['smaller_seconds'])}", on_click=queue_smaller, type="primary",
                       icon=":material/compress:", width="stretch")

notice = state.get("lab_notice")
if notice:
    ids = notice["ids"]
    took = f" Expected to take about {views.duration(notice['seconds'])}." if notice.get("seconds") else ""
    if notice["sweep_id"]:
        times = notice.get("repeats") or 1
        if notice.get("sweep", True):
            what = f"Sweep `{notice['sweep_id']}` queued: {views.count(len(ids), 'run')}" + (
                f" ({len(ids) // times} settings × {times} repeats, interleaved)" if times > 1 else "")
        else:
            what = f"Repeats `{notice['sweep_id']}` queued: the same settings {len(ids)} times"
        st.success(f"{what} (#{ids[0]}–#{ids[-1]}).{took}", icon=":material/check_circle:")
        st.page_link("app_pages/compare.py", label="Compare these runs", icon=":material/insights:",
                     query_params={"sweep": notice["sweep_id"]})
    else:
        st.success(f"Run #{ids[0]} queued.{took}", icon=":material/check_circle:")
    if notice.get("reference"):
        st.caption(f"Run #{notice['reference']}, the same settings on one device, was queued before it: the "
                   "scaling efficiency compares the two.")
    st.page_link("app_pages/runs.py", label=f"Watch run #{ids[0]} on the Runs page", icon=":material/visibility:",
                 query_params={"run": str(ids[0])})
