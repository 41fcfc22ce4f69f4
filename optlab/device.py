"""Which device a run uses, what it can do, and the software it runs on.

Every figure OptLab shows says where it was taken; this module is where that comes from.
"""
from __future__ import annotations

import platform
from dataclasses import asdict, dataclass

import torch


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
    return torch.cuda.is_available()


def resolve(requested: str = "auto") -> torch.device:
    """'auto' is the first GPU when one is visible, else the CPU."""
    if requested == "auto":
        return torch.device("cuda" if cuda_available() else "cpu")
    return torch.device(requested)


def _cpu_name() -> str:
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{name} ({torch.get_num_threads()} threads)"


def describe(device: torch.device | str = "auto") -> DeviceInfo:
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
    import torchvision
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
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
