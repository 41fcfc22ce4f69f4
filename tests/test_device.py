"""Which device a run would get, said without loading torch; what a CPU run loads of the GPU stack."""
import subprocess
import sys

import pytest


def fresh(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.strip()


def test_probe_describes_the_cpu_without_importing_torch():
    out = fresh("import sys\n"
                "from optlab.device import probe\n"
                "info = probe('cpu')\n"
                "print(info.kind, 'torch' in sys.modules)")
    assert out == "cpu False"


def test_probe_of_cuda_on_a_machine_without_a_gpu_is_the_cpu():
    import torch
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible here")
    assert fresh("from optlab.device import probe; print(probe('cuda').kind)") == "cpu"


CUDNN_LIBS = """
import torch
def cudnn():
    return sorted({line.split()[-1].rsplit('/', 1)[-1] for line in open('/proc/self/maps') if 'libcudnn' in line})
before = cudnn()
from optlab.device import software_versions
versions = software_versions()
print(before == cudnn(), versions['cudnn'])
"""


def test_the_software_versions_of_a_cpu_run_do_not_load_cudnn():
    # torch.backends.cudnn.version() loads cuDNN's libraries (~80 MB): a run on the CPU must not.
    assert fresh(CUDNN_LIBS) == "True None"
