import subprocess
import sys

# Runs in a fresh interpreter where importing streamlit or plotly fails, as on a GPU machine
# that has only torch and torchvision.
BLOCKED = r"""
import builtins, importlib, pkgutil
real = builtins.__import__
def guard(name, *args, **kwargs):
    if name.split(".")[0] in ("streamlit", "plotly"):
        raise ImportError("blocked " + name)
    return real(name, *args, **kwargs)
builtins.__import__ = guard
import optlab
names = [m.name for m in pkgutil.walk_packages(optlab.__path__, "optlab.")]
for name in names:
    importlib.import_module(name)
print(len(names))
"""


def test_every_engine_module_imports_without_streamlit_or_plotly():
    out = subprocess.run([sys.executable, "-c", BLOCKED], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert int(out.stdout.split()[-1]) >= 30
