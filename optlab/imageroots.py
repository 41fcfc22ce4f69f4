"""Where the `imagefolder` data set may read: the folders in OPTLAB_IMAGE_ROOTS, after following
every link.

A path is inside when its fully resolved form (every symbolic link followed) lies under a
resolved root, so a class folder or an image file that links elsewhere is outside. No torch
here: a config is checked before it is queued.
"""
from __future__ import annotations

import os
from pathlib import Path


def allowed_image_roots() -> list[Path]:
    """Folders under which `imagefolder` may read, from OPTLAB_IMAGE_ROOTS (os.pathsep separated)."""
    value = os.environ.get("OPTLAB_IMAGE_ROOTS", "")
    return [Path(p).expanduser().resolve() for p in value.split(os.pathsep) if p]


def inside(path: str | Path, roots: list[Path] | None = None) -> bool:
    """Whether `path`, every link in it followed, lies in one of the allowed roots."""
    roots = allowed_image_roots() if roots is None else roots
    real = Path(path).expanduser().resolve()
    return any(real == r or r in real.parents for r in roots)


def outside_message(path: str | Path, roots: list[Path] | None = None) -> str:
    roots = allowed_image_roots() if roots is None else roots
    allowed = ", ".join(map(str, roots)) or "none (set OPTLAB_IMAGE_ROOTS on the server)"
    return f"{path} is outside the folders this server allows; allowed: {allowed}"


def folder_problem(data_path: str | None) -> str | None:
    """Why an image folder cannot be used (missing, outside the roots, not a folder), or None."""
    if not data_path:
        return "the imagefolder data set needs a folder (data_path / --data-path)"
    path = Path(data_path).expanduser()
    if not inside(path):
        return outside_message(path.resolve())
    if not path.is_dir():
        return f"{path} is not a folder of class sub-folders"
    return None
