"""Which device a run uses, what it can do, and the software it runs on.

Every figure OptLab shows says where it was taken; this module is where that comes from.
Importing it does not import torch: `probe` describes the device a run would get without
loading torch (seconds), for the commands that only queue runs.
"""
from __future__ import annotations

import itertools
import os
import platform
import sys
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class DeviceInfo:
    kind: str                 # "cuda" or "cpu"
    name: str                 # "NVIDIA H100 80GB HBM3", or the CPU model
    index: int | None = None
    capability: tuple[int, int] | None = None
    total_memory_mb: float | None = None
    supports_bf16: bool = True
    supports_fp16: bool = False
    has_tensor_cores: bool = False

    @property
    def is_gpu(self) -> bool:
        return self.kind == "cuda"

    @property
    def label(self) -> str:
        """Short text every figure carries, e.g. 'GPU: NVIDIA H100' or 'CPU: x86_64 (2 threads)'."""
        return f"{'GPU' if self.is_gpu else 'CPU'}: {self.name}"

    def to_dict(self) -> dict:
        d = asdict(self)
        d["label"] = self.label
        return d


def cuda_available() -> bool:
    import torch
    return torch.cuda.is_available()


def resolve(requested: str = "auto") -> "torch.device":
    """'auto' is the first GPU when one is visible, else the CPU."""
    import torch
    if requested == "auto":
        return torch.device("cuda" if cuda_available() else "cpu")
    return torch.device(requested)


def _cpu_name(threads: int | None = None) -> str:
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    if threads is None:
        import torch
        threads = torch.get_num_threads()
    return f"{name} ({threads} thread{'' if threads == 1 else 's'})"


def describe(device: "torch.device | str" = "auto") -> DeviceInfo:
    import torch
    device = resolve(device) if isinstance(device, str) else device
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        props = torch.cuda.get_device_properties(index)
        cap = (props.major, props.minor)
        return DeviceInfo(
            kind="cuda", name=props.name, index=index, capability=cap,
            total_memory_mb=props.total_memory / 2**20,
            supports_bf16=cap >= (8, 0), supports_fp16=True, has_tensor_cores=cap >= (7, 0),
        )
    return DeviceInfo(kind="cpu", name=_cpu_name(), supports_bf16=True, supports_fp16=False)


def software_versions() -> dict:
    """Versions of the software a run used. cuDNN's is asked only once CUDA is in use: asking
    loads cuDNN's libraries (about 80 MB), which a CPU run must not pay for."""
    import torch
    import torchvision
    cudnn = None
    if torch.cuda.is_initialized() and torch.backends.cudnn.is_available():
        cudnn = torch.backends.cudnn.version()
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "cuda": torch.version.cuda,
        "cudnn": cudnn,
        "nvidia_driver": nvidia_driver(),
        "os": platform.platform(),
    }


def nvidia_driver() -> str | None:
    """The NVIDIA driver's version as NVML reports it; None where there is no driver (or no NVML)."""
    try:
        import pynvml
        pynvml.nvmlInit()
    except Exception:   # ImportError, pynvml.NVMLError_LibraryNotFound on machines without a driver
        return None
    try:
        version = pynvml.nvmlSystemGetDriverVersion()
        return version.decode() if isinstance(version, bytes) else str(version)
    except Exception:
        return None
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:
            pass




# -- the GPUs, without torch ----------------------------------------------------------------------
def _gpu_count() -> int:
    if "torch" in sys.modules:   # already loaded: its count honours CUDA_VISIBLE_DEVICES
        import torch
        return torch.cuda.device_count()
    try:   # without loading torch (seconds)
        import pynvml
        pynvml.nvmlInit()
        return pynvml.nvmlDeviceGetCount()
    except Exception:
        return 0


def visible_gpus() -> list[str]:
    """The GPUs this process may use, as values for a worker's CUDA_VISIBLE_DEVICES."""
    count = _gpu_count()
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is None:
        return [str(i) for i in range(count)]
    # CUDA stops reading the list at the first invalid entry, e.g. "-1"
    listed = list(itertools.takewhile(lambda x: x and not x.startswith("-"), (x.strip() for x in env.split(","))))
    return listed[:count]


def probe(requested: str = "auto") -> DeviceInfo:
    """The device a run asking for `requested` would get on this machine: the first visible GPU
    for 'auto' and 'cuda' when there is one, else the CPU (so that 'cuda' without a GPU is then
    refused by RunConfig.validate). Asks NVML rather than torch while torch is not loaded."""
    if "torch" in sys.modules:
        return describe("cpu" if requested == "cpu" or not cuda_available() else "cuda")
    gpus = visible_gpus() if requested != "cpu" else []
    if gpus:
        try:
            return _nvml_info(gpus[0])
        except Exception:   # NVML answers the count but not the details: let torch say
            return describe("cuda" if cuda_available() else "cpu")
    threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return DeviceInfo(kind="cpu", name=_cpu_name(threads), supports_bf16=True, supports_fp16=False)


def _nvml_info(gpu: str) -> DeviceInfo:
    import pynvml
    pynvml.nvmlInit()
    handle = (pynvml.nvmlDeviceGetHandleByUUID(gpu) if not gpu.isdigit()
              else pynvml.nvmlDeviceGetHandleByIndex(int(gpu)))
    name = pynvml.nvmlDeviceGetName(handle)
    name = name.decode() if isinstance(name, bytes) else name
    cap = tuple(pynvml.nvmlDeviceGetCudaComputeCapability(handle))
    total = pynvml.nvmlDeviceGetMemoryInfo(handle).total / 2**20
    return DeviceInfo(kind="cuda", name=name, index=0, capability=cap, total_memory_mb=total,
                      supports_bf16=cap >= (8, 0), supports_fp16=True, has_tensor_cores=cap >= (7, 0))
