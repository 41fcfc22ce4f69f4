import os
import shutil
import time
from pathlib import Path

import pytest

FASHION = Path("/usr/share/datasets/fashion-mnist")
APP = str(Path(__file__).resolve().parent.parent / "app.py")


@pytest.fixture(autouse=True)
def isolated_home(tmp_path, monkeypatch):
    """Every test gets its own OPTLAB_HOME; no downloads are attempted."""
    monkeypatch.setenv("OPTLAB_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("OPTLAB_DOWNLOAD", "0")
    monkeypatch.delenv("OPTLAB_DATA", raising=False)
    return tmp_path / "home"


@pytest.fixture
def store(isolated_home):
    from optlab.store import Store
    return Store(isolated_home)


def tiny_config(**changes):
    """A run that trains in a few seconds on the CPU on a real Fashion-MNIST slice, at 16 px (half
    the compute of the native 28 px; the suite runs on two cores)."""
    from optlab.config import RunConfig
    base = dict(model="speednet", dataset="fashion-mnist", device="cpu", epochs=1, limit_train=512,
                limit_test=256, batch_size=64, num_workers=0, profile=False, image_size=16)
    base.update(changes)
    return RunConfig(**base)


# -- runs trained once for the whole session ----------------------------------------------------------
def built_once(tmp_path_factory, name: str, build) -> Path:
    """A folder that `build(folder)` fills once per test session and every pytest-xdist worker reads
    (each worker would otherwise train the same runs again for the files it was handed): the first
    to ask builds it under a file lock, the others wait for it. Tests read it or copy it, never
    write to it."""
    from filelock import FileLock
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent          # this session's folder, which its workers share
    folder = root / f"built-{name}"
    with FileLock(str(root / f"built-{name}.lock")):
        if not (folder / ".built").exists():
            shutil.rmtree(folder, ignore_errors=True)   # a build that failed half-way
            folder.mkdir()
            build(folder)
            (folder / ".built").touch()
    return folder


# -- waiting on background runs (the scheduler's and the Ray cluster's tests) ---------------------------
def wait_for(predicate, timeout_s: float, what: str):
    """The first true value of `predicate()`, polled every 0.2 s; fails the test after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def training(store, run_id):
    """The run once its worker is in the training phase."""
    run = store.get(run_id)
    return run if run.status == "running" and (run.progress or {}).get("phase") == "train" else None


def pid_gone(pid: int) -> bool:
    """Whether a process has exited (a zombie counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def attached(store, run_id):
    """The run once its worker has taken it and started beating (before torch has loaded)."""
    run = store.get(run_id)
    return run if run.worker_pid and (run.progress or {}).get("phase") else None


def open_page(monkeypatch, home, page: str, **query):
    """One page of the app as AppTest renders it, on the store at `home` with the scheduler off and
    `query` in the address; fails on any exception the page raised."""
    from streamlit.testing.v1 import AppTest
    monkeypatch.setenv("OPTLAB_HOME", str(home))
    monkeypatch.setenv("OPTLAB_SCHEDULER", "0")
    at = AppTest.from_file(APP, default_timeout=60).run()
    for key, value in query.items():
        at.query_params[key] = str(value)
    at.switch_page(f"app_pages/{page}.py").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def pytest_configure(config):
    if not FASHION.exists() and not os.environ.get("OPTLAB_DATA"):
        raise pytest.UsageError("Fashion-MNIST is missing: apt-get install -y dataset-fashion-mnist")


# `make test` runs two pytest processes, each taking whole files in collection order. The files
# that take longest start first, so the two finish together instead of one idling while the
# other works through a long file it picked up last. Order within a file is kept (sort is stable).
SLOW_FIRST = ("test_browser.py", "test_gpu_suite.py", "test_app.py", "test_browser_room.py", "test_scheduler.py",
              "test_train.py", "test_cli.py", "test_ddp.py", "test_bundle.py", "test_autotune.py", "test_profile_page.py",
              "test_compress_openvino.py", "test_compress.py", "test_lessons.py", "test_profiling.py", "test_ray.py")


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(SLOW_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))
