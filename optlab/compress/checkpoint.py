"""Saving and loading weights. Loading never unpickles code: `torch.load(weights_only=True)` only,
and a file that holds Python objects beyond tensors and plain containers is refused. A file that
is not whole (truncated, empty, overwritten) is called damaged; OptLab never suggests loading
anything with weights_only=False. Saving writes a temporary file and renames it, so a full disk
or a crash never leaves a truncated file under the real name."""
from __future__ import annotations

import os
import re
import secrets
import zipfile
from pathlib import Path

import torch
from torch import nn

from optlab.models import build_model
from optlab.pipeline import memory_format


class CheckpointError(RuntimeError):
    """Weights that cannot be loaded safely or do not fit; the message says what to do."""


def save_weights(model: nn.Module, path: Path) -> Path:
    """The module's state dict at `path` (folders created); returns the path. Written to a
    temporary file in the same folder, flushed to disk, then renamed over `path`: an error (a
    full disk raises OSError ENOSPC) leaves no file, or the previous one, under the name."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _new_partial_file(path)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(model.state_dict(), f)   # to a file object, so that write errors are Python's OSError
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        os_error = _os_error(e) if isinstance(e, Exception) else None
        if os_error is not None and os_error is not e:   # torch wraps it in RuntimeError; say it plainly
            raise OSError(os_error.errno, os_error.strerror, str(path)) from e
        if os_error is not None and not os_error.filename:
            os_error.filename = str(path)   # write errors do not name the file
        raise
    return path


def _new_partial_file(path: Path) -> tuple[int, str]:
    """A new, empty file beside `path` (its mode from the umask, like any file the run writes)."""
    while True:
        tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.partial"
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), str(tmp)
        except FileExistsError:
            continue


def _os_error(e: BaseException | None) -> OSError | None:
    """The OSError behind `e` (itself, or its cause or context), if any."""
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, OSError):
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return None
    return path


# torch names the class or function a weights_only load refused in this phrase
_REFUSED_GLOBAL = re.compile(r"\bGLOBAL ([\w.]+)")


def load_weights(path: str | Path) -> dict:
    """A state dict read with `weights_only=True`, onto the CPU."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"no weights at {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except OSError as e:
        raise CheckpointError(f"cannot read the weights at {path}: {e.strerror or e}") from None
    except Exception as e:   # torch's messages suggest weights_only=False: never pass them on
        refused = _REFUSED_GLOBAL.search(str(e))
        if refused and _looks_like_weights(path):
            raise CheckpointError(
                f"refusing to load {path}: it holds pickled Python objects, not only tensors (it needs "
                f"{refused.group(1)}). OptLab reads weights with torch.load(weights_only=True) so a file "
                "cannot run code; save weights with torch.save(model.state_dict(), path)") from None
        raise CheckpointError(_damaged(path)) from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} holds a {type(state).__name__}, not a state dict of tensors")
    return state


def _looks_like_weights(path: Path) -> bool:
    """torch.save's format: a zip archive, or (before PyTorch 1.6) a pickle stream (PROTO opcode)."""
    with open(path, "rb") as f:
        return zipfile.is_zipfile(f) or f.read(1) == b"\x80"


def _damaged(path: Path) -> str:
    size = path.stat().st_size
    what = ("it is empty" if size == 0 else
            "it is not a PyTorch weights file (or is truncated)" if not zipfile.is_zipfile(path) else
            "its contents are incomplete or corrupt")
    return (f"the weights file {path} is damaged: {what} ({size:,} bytes); run the training again to "
            "write it anew")


def fit_to_state_dict(model: nn.Module, state: dict) -> nn.Module:
    """Resize convolutions, batch norms and linear layers to the shapes in `state`, so a model
    narrowed by structured pruning is rebuilt from its registry architecture and plain tensors."""
    for name, m in list(model.named_modules()):
        weight = state.get(f"{name}.weight" if name else "weight")
        if weight is None or getattr(m, "weight", None) is None or tuple(m.weight.shape) == tuple(weight.shape):
            continue
        if isinstance(m, nn.modules.conv._ConvNd):
            out_c, in_per_group = weight.shape[:2]
            depthwise = m.groups == m.in_channels and m.groups > 1
            groups = out_c if depthwise else m.groups
            m.in_channels, m.out_channels, m.groups = in_per_group * groups, out_c, groups
        elif isinstance(m, nn.modules.batchnorm._NormBase):
            m.num_features = weight.shape[0]
            for buf in ("running_mean", "running_var"):
                if getattr(m, buf, None) is not None:
                    setattr(m, buf, torch.empty_like(state[f"{name}.{buf}"]))
        elif isinstance(m, nn.Linear):
            m.out_features, m.in_features = weight.shape
        elif isinstance(m, nn.LayerNorm):
            m.normalized_shape = tuple(weight.shape)
        else:
            raise CheckpointError(f"layer {name!r} ({type(m).__name__}) has shape {tuple(m.weight.shape)} here "
                                  f"but {tuple(weight.shape)} in the weights, and cannot be resized")
        m.weight = nn.Parameter(torch.empty_like(weight))
        bias = state.get(f"{name}.bias")
        if bias is not None and getattr(m, "bias", None) is not None:
            m.bias = nn.Parameter(torch.empty_like(bias))
    model.load_state_dict(state)
    return model


def load_run_model(run, ds, device: torch.device) -> nn.Module:
    """The finished run's trained model, rebuilt from the model registry and its saved weights."""
    cfg = run.run_config
    path = (run.summary or {}).get("weights_path")
    if not path:
        raise CheckpointError(f"run #{run.id} has no saved weights (status {run.status}); "
                              "compress needs a finished run")
    model = build_model(cfg.model, ds.channels, ds.num_classes, cfg.image_size or ds.native_size)
    state = load_weights(path)
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise CheckpointError(f"the weights at {path} do not fit {cfg.model}: {str(e).splitlines()[0]}") from None
    return model.to(device, memory_format=memory_format(cfg.channels_last)).eval()
