"""OptLab in the browser: navigation over the pages, the shared sidebar, and this server's one
background scheduler. `make run` starts it (`streamlit run app.py`).

Widgets defined here live on every page, so the submitter's name survives page changes. Pages
find the server's device in st.session_state["device_info"].

The navigation and a "starting" line are drawn before anything imports PyTorch: the first visit
after a server start loads it (several seconds), and the browser shows the app meanwhile.
"""
from __future__ import annotations

import os

import streamlit as st

import optlab
from app_pages import _room
from optlab.store import Store, optlab_home


st.set_page_config(page_title="OptLab", page_icon="⚡", layout="wide")
pages = [
    st.Page("app_pages/lab.py", title="Lab", icon=":material/science:", default=True),
    st.Page("app_pages/runs.py", title="Runs", icon=":material/format_list_bulleted:"),
    st.Page("app_pages/compare.py", title="Compare", icon=":material/insights:"),
    st.Page("app_pages/profile.py", title="Profile", icon=":material/speed:"),
    st.Page("app_pages/tune.py", title="Autotune", icon=":material/tune:"),
    st.Page("app_pages/workshop.py", title="Workshop", icon=":material/groups:"),
]
page = st.navigation(pages)
with st.sidebar:
    _room.name_field(_room.current(Store(optlab_home())))   # the joined person's name, or a free label
starting = st.empty()
if not getattr(optlab, "engine_ready", False):      # set below, once per server process
    starting.info("Starting OptLab: loading PyTorch and the model registry. The first visit after a server "
                  "start takes a few seconds.", icon=":material/hourglass_top:")


@st.cache_resource(show_spinner=False)
def engine() -> None:
    """The engine modules every page needs, imported once per server (torch among them); and
    pandas and Plotly, whole, before any page runs: a module first imported by one session's
    script while another session's chart checks `sys.modules` is seen half-initialised (Plotly
    then fails with "partially initialized module 'pandas' has no attribute 'Series'")."""
    import pandas  # noqa: F401
    import plotly.graph_objects  # noqa: F401

    import optlab.compress  # noqa: F401
    import optlab.data  # noqa: F401
    import optlab.models  # noqa: F401
    optlab.engine_ready = True


@st.cache_resource(show_spinner=False)
def scheduler(home: str):
    """The process-wide scheduler that works the queue of the store at `home`.

    Keyed by home so a server pointed at another OPTLAB_HOME (tests do this) gets its own.
    """
    from optlab.scheduler import shared_scheduler
    return shared_scheduler(Store(home))


@st.cache_resource(show_spinner=False)
def server_device():
    """The device runs from this server use by default ('auto')."""
    from optlab import device as devices
    return devices.describe("auto")


home = str(optlab_home())
# OPTLAB_SCHEDULER=0 leaves the queue to another process (a separate `optlab` worker host, or
# tests that check only what the form queues).
queue = scheduler(home) if os.environ.get("OPTLAB_SCHEDULER", "1") != "0" else None
info = server_device()
engine()
starting.empty()
st.session_state["device_info"] = info

with st.sidebar:
    if info.is_gpu:
        memory = f" · {info.total_memory_mb / 1024:.0f} GiB" if info.total_memory_mb else ""
        st.caption(f":material/memory: **{info.label}**{memory}")
    else:
        st.caption(":material/computer: **No GPU here**: runs use the CPU and every figure is a CPU figure.")
    st.caption(f"Queue: {queue.message if queue else 'worked by another process (OPTLAB_SCHEDULER=0)'}")
    st.caption(f"Store: `{home}`")

page.run()
