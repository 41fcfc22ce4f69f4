import os
from pathlib import Path

import pytest

FASHION = Path("/usr/share/datasets/fashion-mnist")

# Under `make test` (pytest-xdist) each test process gets its share of the cores, as the scheduler
# gives each of its slots (optlab.hostload reads OMP_NUM_THREADS): two processes of two threads each
# on two cores wait on each other at every OpenMP barrier. Set before any test module loads torch;
# the runs, servers and workers a test starts inherit it.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT") and "OMP_NUM_THREADS" not in os.environ:
    _cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    os.environ["OMP_NUM_THREADS"] = str(max(1, _cores // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))


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


def pytest_configure(config):
    if not FASHION.exists() and not os.environ.get("OPTLAB_DATA"):
        raise pytest.UsageError("Fashion-MNIST is missing: apt-get install -y dataset-fashion-mnist")


# `make test` runs two pytest processes, each taking whole files in collection order. The files
# that take longest start first, so the two finish together instead of one idling while the
# other works through a long file it picked up last. Order within a file is kept (sort is stable).
SLOW_FIRST = ("test_gpu_suite.py", "test_browser.py", "test_browser_room.py", "test_app.py",
              "test_compress_openvino.py", "test_scheduler.py", "test_cli.py", "test_train.py")


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(SLOW_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))
