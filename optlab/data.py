"""Data-set registry. Every data set loads to uint8 image tensors (N, C, H, W) and int64 labels,
so both input pipelines start from the same bytes.

Fashion-MNIST is found, in order, in $OPTLAB_DATA, torchvision's download folder under it, and
/usr/share/datasets/fashion-mnist (Debian package `dataset-fashion-mnist`); it is downloaded by
torchvision only where the internet is reachable.
"""
from __future__ import annotations

import gzip
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from optlab.imageroots import allowed_image_roots, folder_problem, inside
from optlab.registry import Registry


class DataError(RuntimeError):
    """A data set that is missing, corrupt or not allowed; the message says what to do."""


@dataclass
class DataSet:
    name: str
    train_x: torch.Tensor          # uint8 (N, C, H, W)
    train_y: torch.Tensor          # int64 (N,)
    test_x: torch.Tensor
    test_y: torch.Tensor
    classes: list[str]
    augmentations: tuple[str, ...] = ("crop", "flip")   # what "augment" means for this data
    accuracy_applies: bool = True                       # False for random labels (synthetic)
    source: str = ""                                    # where the files came from
    mean: tuple[float, ...] = field(default=())
    std: tuple[float, ...] = field(default=())

    def __post_init__(self):
        if not self.mean:
            x = self.train_x[:10000].float() / 255
            self.mean = tuple(x.mean(dim=(0, 2, 3)).tolist())
            self.std = tuple(x.std(dim=(0, 2, 3)).clamp_min(1e-3).tolist())

    @property
    def channels(self) -> int:
        return self.train_x.shape[1]

    @property
    def native_size(self) -> int:
        return self.train_x.shape[-1]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def limited(self, train: int | None, test: int | None) -> "DataSet":
        if train is not None and train > len(self.train_y):
            raise DataError(f"train limit {train} is larger than {self.name}'s {len(self.train_y)} images")
        return self._with_train(slice(None, train), slice(None, test))

    def shard(self, rank: int, world: int) -> "DataSet":
        """Rank `rank`'s share of the training images for data-parallel training: every `world`-th
        image from `rank` on, the set first cut to a multiple of `world`, so that every rank has as
        many images, hence as many steps (a rank with one step more would wait for the others
        forever). The test images stay whole: every rank evaluates the same model on all of them."""
        usable = len(self.train_y) - len(self.train_y) % world
        return self._with_train(slice(rank, usable, world), slice(None))

    def _with_train(self, train: slice, test: slice) -> "DataSet":
        return DataSet(self.name, self.train_x[train].contiguous(), self.train_y[train].contiguous(),
                       self.test_x[test], self.test_y[test], self.classes, self.augmentations,
                       self.accuracy_applies, self.source, self.mean, self.std)


DATASETS: Registry[Callable[..., DataSet]] = Registry("dataset")


def data_home() -> Path:
    return Path(os.environ.get("OPTLAB_DATA") or Path(os.environ.get("OPTLAB_HOME", "~/.optlab")).expanduser() / "data")


def downloads_allowed() -> bool:
    return os.environ.get("OPTLAB_DOWNLOAD", "1") != "0"


def load_dataset(cfg) -> DataSet:
    """The data set a RunConfig names, limited to its train/test slices."""
    ds = DATASETS.get(cfg.dataset)(cfg)
    return ds.limited(cfg.limit_train, cfg.limit_test)


# -- IDX (MNIST-format) files -------------------------------------------------------------------
_IDX_FILES = {"train_x": "train-images-idx3-ubyte", "train_y": "train-labels-idx1-ubyte",
              "test_x": "t10k-images-idx3-ubyte", "test_y": "t10k-labels-idx1-ubyte"}


# Decoded IDX files by (path, size, mtime): a process that runs several runs (the server's Lab
# estimate, `optlab run --repeats`, the test suite) inflates each file once. Callers get copies.
_DECODED: dict[tuple, torch.Tensor] = {}
_DECODED_MAX = 8


def read_idx(path: Path) -> torch.Tensor:
    """Read an IDX file (optionally gzipped) of unsigned bytes, checking its header and length."""
    try:
        st = path.stat()
        key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    except OSError:
        key = None                       # reading it below says what is wrong
    if key in _DECODED:
        return _DECODED[key].clone()
    t = _decode_idx(path)
    if key is not None:
        while len(_DECODED) >= _DECODED_MAX:
            _DECODED.pop(next(iter(_DECODED)))
        _DECODED[key] = t
    return t.clone()


def _decode_idx(path: Path) -> torch.Tensor:
    try:
        raw = gzip.open(path).read() if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise DataError(f"{path} is corrupt or truncated ({e}); delete it and install the data set again") from None
    if len(raw) < 4:
        raise DataError(f"{path} is truncated: {len(raw)} bytes, not an IDX file")
    zero, dtype, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype != 0x08 or ndim not in (1, 3):
        raise DataError(f"{path} is not an IDX file of unsigned bytes (header {raw[:4].hex()})")
    dims = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
    expected = 4 + 4 * ndim + int(torch.tensor(dims).prod())
    if len(raw) != expected:
        raise DataError(f"{path} is truncated or corrupt: expected {expected} bytes, found {len(raw)}; "
                        "delete it and install the data set again")
    t = torch.frombuffer(bytearray(raw[4 + 4 * ndim:]), dtype=torch.uint8).reshape(dims)
    return t.unsqueeze(1) if ndim == 3 else t.long()


def _find_idx_folder(folders: list[Path]) -> Path | None:
    for folder in folders:
        if all((folder / f).exists() or (folder / (f + ".gz")).exists() for f in _IDX_FILES.values()):
            return folder
    return None


def _load_idx_folder(folder: Path) -> dict[str, torch.Tensor]:
    out = {}
    for key, stem in _IDX_FILES.items():
        path = folder / stem if (folder / stem).exists() else folder / (stem + ".gz")
        out[key] = read_idx(path)
    for split in ("train", "test"):
        if len(out[f"{split}_x"]) != len(out[f"{split}_y"]):
            raise DataError(f"{folder}: {split} images and labels differ in count")
    return out


def _idx_dataset(name, folders, tv_class, classes, augmentations, how_to_get) -> DataSet:
    folder = _find_idx_folder(folders)
    if folder is None and downloads_allowed():
        try:
            tv_class(root=str(data_home()), train=True, download=True)
            tv_class(root=str(data_home()), train=False, download=True)
        except Exception:  # offline: fall through to the message below
            pass
        folder = _find_idx_folder(folders)
    if folder is None:
        raise DataError(f"{name} was not found in: {', '.join(str(f) for f in folders)}. {how_to_get}")
    t = _load_idx_folder(folder)
    return DataSet(name, t["train_x"], t["train_y"], t["test_x"], t["test_y"], classes,
                   augmentations, source=str(folder))


FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                   "Sneaker", "Bag", "Ankle boot"]


@DATASETS.register("fashion-mnist")
def fashion_mnist(cfg=None) -> DataSet:
    from torchvision.datasets import FashionMNIST
    home = data_home()
    folders = [home / "fashion-mnist", home / "FashionMNIST" / "raw", Path("/usr/share/datasets/fashion-mnist")]
    return _idx_dataset("fashion-mnist", folders, FashionMNIST, FASHION_CLASSES, ("crop", "flip"),
                        "Install it with `apt-get install dataset-fashion-mnist`, or put the four IDX files "
                        f"in {home / 'fashion-mnist'} (set OPTLAB_DATA to use another folder).")


@DATASETS.register("mnist")
def mnist(cfg=None) -> DataSet:
    from torchvision.datasets import MNIST
    home = data_home()
    folders = [home / "mnist", home / "MNIST" / "raw", Path("/usr/share/datasets/mnist")]
    # Flipping digits changes what they mean: crop only.
    return _idx_dataset("mnist", folders, MNIST, [str(i) for i in range(10)], ("crop",),
                        f"Connect to the internet once (torchvision downloads it), or put the four IDX files in {home / 'mnist'}.")


def _cifar(name, tv_class):
    def load(cfg=None) -> DataSet:
        root = data_home()
        try:
            train = tv_class(root=str(root), train=True, download=downloads_allowed())
            test = tv_class(root=str(root), train=False, download=False)
        except Exception as e:
            raise DataError(
                f"{name} is not in {root} and could not be downloaded ({type(e).__name__}). On a machine with "
                f"internet run `python -c \"import torchvision; torchvision.datasets.{tv_class.__name__}('{root}', download=True)\"`, "
                f"or copy the extracted cifar-*-python folder into {root}.") from None
        def tensors(split):
            return (torch.from_numpy(split.data).permute(0, 3, 1, 2).contiguous(),
                    torch.tensor(split.targets, dtype=torch.long))
        (trx, try_), (tex, tey) = tensors(train), tensors(test)
        return DataSet(name, trx, try_, tex, tey, list(train.classes), ("crop", "flip"), source=str(root))
    return load


def _register_cifar():
    from torchvision.datasets import CIFAR10, CIFAR100
    DATASETS.add("cifar10", _cifar("cifar10", CIFAR10))
    DATASETS.add("cifar100", _cifar("cifar100", CIFAR100))


_register_cifar()


# -- a folder of class sub-folders ------------------------------------------------------------------
def check_image_folder(data_path: str | None) -> Path:
    """The folder an imagefolder run may read, resolved; DataError naming the problem when there is
    none, it lies outside OPTLAB_IMAGE_ROOTS, or it is not a folder (optlab.imageroots checks)."""
    problem = folder_problem(data_path)
    if problem:
        raise DataError(problem)
    return Path(data_path).expanduser().resolve()


@DATASETS.register("imagefolder")
def imagefolder(cfg) -> DataSet:
    from PIL import Image, UnidentifiedImageError
    from torchvision.datasets import ImageFolder
    from torchvision.transforms.v2 import functional as F

    problem = folder_problem(cfg.data_path)
    if problem:
        raise DataError(problem)
    path = Path(cfg.data_path).expanduser().resolve()
    roots = allowed_image_roots()
    size = cfg.image_size or 64

    def confined(item: Path, what: str) -> Path:
        # Every class folder and file is resolved on its own: a link inside an allowed root
        # may point anywhere, and what it points to is what would be read.
        real = item.resolve()
        if not inside(real, roots):
            raise DataError(f"{what} {item} links to a place outside the folders this server allows "
                            f"({', '.join(map(str, roots))}); copy the images into an allowed folder instead")
        return real

    def load(folder: Path):
        confined(folder, "the folder")
        for entry in sorted(folder.iterdir()):
            if entry.is_dir():
                confined(entry, "the class folder")
        try:
            found = ImageFolder(str(folder))
        except (OSError, ValueError) as e:
            raise DataError(f"{folder} is not a folder of class sub-folders with images ({e})") from None
        images = []
        for file, _ in found.samples:
            real = confined(Path(file), "the image")
            try:
                with Image.open(real) as pil:
                    img = F.pil_to_tensor(pil.convert("RGB"))
            except (OSError, UnidentifiedImageError) as e:
                raise DataError(f"{file} is not a readable image ({e})") from None
            images.append(F.resize(img, [size, size], antialias=True))
        return torch.stack(images), torch.tensor(found.targets), found.classes

    if (path / "train").is_dir() and ((path / "test").is_dir() or (path / "val").is_dir()):
        trx, try_, classes = load(path / "train")
        tex, tey, _ = load(path / "test" if (path / "test").is_dir() else path / "val")
    else:  # one folder: a fixed, seeded 80/20 split
        x, y, classes = load(path)
        order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
        cut = int(0.8 * len(y))
        trx, try_, tex, tey = x[order[:cut]], y[order[:cut]], x[order[cut:]], y[order[cut:]]
    return DataSet("imagefolder", trx, try_, tex, tey, classes, ("crop", "flip"), source=str(path))


@DATASETS.register("synthetic")
def synthetic(cfg=None) -> DataSet:
    """Random images and labels: for throughput only; accuracy does not apply."""
    size = (cfg.image_size if cfg and cfg.image_size else 32)
    n_train = (cfg.limit_train if cfg and cfg.limit_train else 8192)
    n_test = (cfg.limit_test if cfg and cfg.limit_test else 1024)
    g = torch.Generator().manual_seed(0)
    def images(n):
        return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)
    def labels(n):
        return torch.randint(0, 10, (n,), generator=g)
    return DataSet("synthetic", images(n_train), labels(n_train), images(n_test), labels(n_test),
                   [str(i) for i in range(10)], ("crop", "flip"), accuracy_applies=False,
                   source="random tensors", mean=(0.5,) * 3, std=(0.29,) * 3)
