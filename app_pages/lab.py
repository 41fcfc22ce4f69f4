"""Lab: see the device, set every knob of a run (or sweep one or two), launch it into the queue."""
from __future__ import annotations

import streamlit as st

from app_pages import _room
from optlab import repeats, views
from optlab.compress import METHODS, available_methods
from optlab.config import DEVICES, OPTIMIZERS, PIPELINES, PRECISIONS, PRESETS, ConfigError, preset
from optlab.data import DATASETS
from optlab.models import MODELS
from optlab.store import Store
from optlab.sweeps import MAX_RUNS, SWEEPABLE, expand, parse_values, submit_sweep

NO_KNOB = "—"

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
            cols = st.columns(4)

            def show(col, label, value, fmt):
                col.metric(label, "n/a" if value is None else fmt.format(value))
            show(cols[0], "Utilisation", snap.get("gpu_util_pct"), "{:.0f} %")
            show(cols[1], "Memory used", snap.get("mem_used_mb"), "{:,.0f} MB")
            show(cols[2], "Power", snap.get("power_w"), "{:.0f} W")
            show(cols[3], "Temperature", snap.get("temperature_c"), "{:.0f} °C")
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
state.setdefault("_lab_values", views.form_values(preset("baseline" if info.is_gpu else "cpu-quick")))


def fill(values: dict) -> None:
    state["_lab_values"] = values
    state["_lab_gen"] += 1


def apply_preset() -> None:
    if state.get("lab_preset"):
        fill(views.form_values(preset(state["lab_preset"])))


source = st.query_params.get("from_run")
if source and state.get("_lab_from") != source:
    state["_lab_from"] = source
    run = store.get(int(source)) if source.isdigit() else None
    if run is None:
        st.warning(f"Run {source} is not in the store; the form keeps its values.")
    else:
        fill(views.form_values(run.run_config))
        st.info(f"The form holds the settings of run #{run.id}: change what you like and launch.")

if (shared := _room.shared_setup()) is not None:   # a link with ?setup=… fills the form
    fill(views.form_values(shared))

st.selectbox("Start from a preset", list(PRESETS), index=None, key="lab_preset", on_change=apply_preset,
             placeholder="Choose a preset to fill the form…",
             help="Named starting points: baseline (fp32), amp (bf16 + channels-last), amp-gpu-data, "
                  "imagenet-size, speedrun (tuned for 94 %), cpu-quick (small, for machines without a GPU).")
values = state["_lab_values"]


def key(name: str) -> str:
    return f"lab_{name}_{state['_lab_gen']}"


# -- the form ------------------------------------------------------------------------------------
def widget(name: str):
    """Draw the widget for one RunConfig knob; choices come from the registries."""
    knob, value = views.KNOBS[name], values[name]
    choice = {"model": MODELS.names(), "dataset": DATASETS.names(),
              "optimizer": [views.DEFAULT_CHOICE, *OPTIMIZERS]}
    segmented = {"precision": PRECISIONS, "pipeline": PIPELINES, "device": DEVICES}
    steps = {"epochs": 1, "max_batch_size": 1, "num_workers": 1, "seed": 1, "warmup_fraction": 0.05,
             "label_smoothing": 0.05, "target_accuracy": 0.01, "repeats": 1}
    common = dict(key=key(name), help=knob.help)
    if name in choice:
        options = choice[name]
        st.selectbox(knob.label, options, index=options.index(value) if value in options else 0, **common)
    elif name in segmented:
        st.segmented_control(knob.label, segmented[name], default=value, required=True, **common)
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
    groups = [g for g in views.GROUPS if g != "Compression"]
    for column, group in zip(st.columns(len(groups), gap="medium"), groups):
        with column:
            st.markdown(f"**{group}**")
            for name, knob in views.KNOBS.items():
                if knob.group == group and _room.shown(name):
                    widget(name)
    with st.expander("Compression after training", expanded=bool(values["compress_methods"]
                                                                     or values["compress_json"])):
        # Offer what can run on this server; say why the others cannot.
        unavailable = available_methods(info)
        methods = [m for m, why in unavailable.items() if why is None and not METHODS.get(m).settings_only]
        refused = {m: why for m, why in unavailable.items() if why}
        st.multiselect(views.KNOBS["compress"].label, methods, key=key("compress_methods"),
                       default=[m for m in values["compress_methods"] if m in methods],
                       help=views.KNOBS["compress"].help, disabled=not methods,
                       placeholder="none" if methods else "no compression methods installed")
        if refused:
            st.caption("Not offered here: " + "; ".join(f"**{m}**: {why}" for m, why in refused.items()))
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
    left, right, _ = st.columns([1, 1, 3])
    launch_one = left.button("Launch run", type="primary", icon=":material/rocket_launch:",
                                         width="stretch")
    launch_sweep = right.button("Launch sweep", icon=":material/grid_view:", width="stretch")

values = state["_lab_values"] = {name: state.get(key(name), values[name]) for name in values}
_room.share_link(values)

# -- launch ------------------------------------------------------------------------------------------
if launch_one or launch_sweep:
    user = state.get("user", "")
    try:
        cfg = views.config_from_form(values)
        if launch_sweep:
            axes = {state[f"sweep_knob_{n}"]: parse_values(state[f"sweep_knob_{n}"], state[f"sweep_values_{n}"])
                    for n in (1, 2) if state.get(f"sweep_knob_{n}", NO_KNOB) != NO_KNOB}
            combos = expand(cfg, axes)
            sweep_id, ids = submit_sweep(store, combos, user=user,
                                         device_for=lambda c: views.target_device(c.device, info))
            state["lab_notice"] = {"ids": ids, "sweep_id": sweep_id, "repeats": cfg.repeats, "sweep": True}
        else:
            cfg.validate(views.target_device(cfg.device, info))
            ids = repeats.submit(store, cfg, user=user)
            group = store.get(ids[0]).repeat_group
            state["lab_notice"] = {"ids": ids, "sweep_id": group, "repeats": cfg.repeats, "sweep": False}
    except ConfigError as e:
        state.pop("lab_notice", None)
        st.error(f"**Nothing was queued.** {e}", icon=":material/error:")
        if launch_sweep:
            st.caption(f"A sweep needs one or two knobs, each with comma-separated values, at most {MAX_RUNS} runs.")

notice = state.get("lab_notice")
if notice:
    ids = notice["ids"]
    if notice["sweep_id"]:
        if notice["sweep"]:
            times = notice["repeats"]
            what = f"Sweep `{notice['sweep_id']}` queued: {len(ids)} runs" + (
                f" ({len(ids) // times} settings × {times} repeats, interleaved)" if times > 1 else "")
        else:
            what = f"Repeats `{notice['sweep_id']}` queued: the same settings {len(ids)} times"
        st.success(f"{what} (#{ids[0]}–#{ids[-1]}).", icon=":material/check_circle:")
        st.page_link("app_pages/compare.py", label="Compare these runs", icon=":material/insights:",
                     query_params={"sweep": notice["sweep_id"]})
    else:
        st.success(f"Run #{ids[0]} queued.", icon=":material/check_circle:")
    st.page_link("app_pages/runs.py", label=f"Watch run #{ids[0]} on the Runs page", icon=":material/visibility:",
                 query_params={"run": str(ids[0])})
