import gzip
import struct

import pytest
import torch
from PIL import Image

from optlab.config import RunConfig
from optlab.data import DATASETS, DataError, load_dataset, read_idx


def test_fashion_mnist_loads_the_real_files():
    ds = DATASETS.get("fashion-mnist")()
    assert ds.train_x.shape == (60000, 1, 28, 28) and ds.train_x.dtype == torch.uint8
    assert ds.test_x.shape == (10000, 1, 28, 28)
    assert ds.train_y.dtype == torch.long and set(ds.train_y[:1000].tolist()) == set(range(10))
    assert ds.classes[9] == "Ankle boot"
    assert 0.2 < ds.mean[0] < 0.4


def test_limits_take_slices():
    ds = load_dataset(RunConfig(limit_train=100, limit_test=50))
    assert len(ds.train_y) == 100 and len(ds.test_y) == 50


def _write_idx(path, data: bytes, dims, magic=0x0803, truncate=0):
    raw = struct.pack(">I", magic) + struct.pack(f">{len(dims)}I", *dims) + data
    raw = raw[:len(raw) - truncate]
    with gzip.open(path, "wb") as f:
        f.write(raw)


def test_truncated_idx_file_is_a_clear_error(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte.gz"
    _write_idx(path, bytes(2 * 28 * 28), (2, 28, 28), truncate=10)
    with pytest.raises(DataError, match="truncated or corrupt"):
        read_idx(path)


def test_corrupt_gzip_is_a_clear_error(tmp_path):
    path = tmp_path / "t10k-labels-idx1-ubyte.gz"
    path.write_bytes(b"\x1f\x8b\x08\x00garbage")
    with pytest.raises(DataError, match="corrupt"):
        read_idx(path)


def test_wrong_header_is_refused(tmp_path):
    path = tmp_path / "x.gz"
    _write_idx(path, bytes(4), (4,), magic=0x0D03)
    with pytest.raises(DataError, match="not an IDX file"):
        read_idx(path)


def test_a_well_formed_idx_file_reads_back(tmp_path):
    path = tmp_path / "x.gz"
    _write_idx(path, bytes(range(8)), (2, 2, 2))
    assert read_idx(path).tolist() == [[[[0, 1], [2, 3]]], [[[4, 5], [6, 7]]]]


def test_missing_dataset_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv("OPTLAB_DATA", str(tmp_path))
    with pytest.raises(DataError, match="dataset-fashion-mnist|IDX files"):
        DATASETS.get("mnist")()


def test_cifar_offline_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv("OPTLAB_DATA", str(tmp_path))
    with pytest.raises(DataError, match="could not be downloaded"):
        DATASETS.get("cifar10")()


def _image_folder(root):
    for c, colour in enumerate([(255, 0, 0), (0, 0, 255)]):
        folder = root / f"class{c}"
        folder.mkdir(parents=True)
        for i in range(5):
            Image.new("RGB", (24, 20), colour).save(folder / f"{i}.png")


def test_imagefolder_outside_the_allowed_roots_is_refused(tmp_path, monkeypatch):
    _image_folder(tmp_path / "imgs")
    monkeypatch.setenv("OPTLAB_IMAGE_ROOTS", str(tmp_path / "elsewhere"))
    with pytest.raises(DataError, match="outside the folders"):
        DATASETS.get("imagefolder")(RunConfig(dataset="imagefolder", data_path=str(tmp_path / "imgs")))


def test_imagefolder_loads_resized_rgb_with_a_split(tmp_path, monkeypatch):
    _image_folder(tmp_path / "imgs")
    monkeypatch.setenv("OPTLAB_IMAGE_ROOTS", str(tmp_path))
    ds = DATASETS.get("imagefolder")(RunConfig(dataset="imagefolder", data_path=str(tmp_path / "imgs"), image_size=16))
    assert ds.train_x.shape == (8, 3, 16, 16) and ds.test_x.shape == (2, 3, 16, 16)
    assert ds.classes == ["class0", "class1"]
    red = ds.train_x[ds.train_y == 0]
    assert (red[:, 0] == 255).all() and (red[:, 2] == 0).all()


def test_imagefolder_refuses_a_class_folder_that_links_outside_the_roots(tmp_path, monkeypatch):
    _image_folder(tmp_path / "allowed" / "imgs")
    _image_folder(tmp_path / "secret")
    (tmp_path / "allowed" / "imgs" / "class2").symlink_to(tmp_path / "secret" / "class0", target_is_directory=True)
    monkeypatch.setenv("OPTLAB_IMAGE_ROOTS", str(tmp_path / "allowed"))
    with pytest.raises(DataError, match="class folder .*class2 links to a place outside"):
        load_dataset(RunConfig(dataset="imagefolder", data_path=str(tmp_path / "allowed" / "imgs")))


def test_imagefolder_refuses_an_image_file_that_links_outside_the_roots(tmp_path, monkeypatch):
    _image_folder(tmp_path / "allowed" / "imgs")
    _image_folder(tmp_path / "secret")
    (tmp_path / "allowed" / "imgs" / "class1" / "9.png").symlink_to(tmp_path / "secret" / "class0" / "0.png")
    monkeypatch.setenv("OPTLAB_IMAGE_ROOTS", str(tmp_path / "allowed"))
    with pytest.raises(DataError, match=r"image .*9\.png links to a place outside"):
        load_dataset(RunConfig(dataset="imagefolder", data_path=str(tmp_path / "allowed" / "imgs")))


def test_imagefolder_follows_links_that_stay_inside_the_roots(tmp_path, monkeypatch):
    _image_folder(tmp_path / "allowed" / "imgs")
    (tmp_path / "allowed" / "imgs" / "class1" / "9.png").symlink_to(tmp_path / "allowed" / "imgs" / "class0" / "0.png")
    monkeypatch.setenv("OPTLAB_IMAGE_ROOTS", str(tmp_path / "allowed"))
    ds = load_dataset(RunConfig(dataset="imagefolder", data_path=str(tmp_path / "allowed" / "imgs"), image_size=8))
    assert len(ds.train_y) + len(ds.test_y) == 11


def test_synthetic_data_says_accuracy_does_not_apply():
    ds = DATASETS.get("synthetic")(RunConfig(dataset="synthetic", limit_train=64, limit_test=16, image_size=32))
    assert not ds.accuracy_applies
    assert ds.train_x.shape == (64, 3, 32, 32)


def test_a_file_read_again_comes_from_memory_as_a_copy(tmp_path):
    path = tmp_path / "x-idx3-ubyte"
    path.write_bytes(bytes([0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 1, 0, 0, 0, 2, 0, 1, 2, 3]))
    first = read_idx(path)
    first[0, 0, 0, 0] = 99                       # a caller's change stays in its copy
    assert read_idx(path).tolist() == [[[[0, 1]]], [[[2, 3]]]]
    path.write_bytes(bytes([0, 0, 8, 3, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 2, 7, 7]))
    assert read_idx(path).tolist() == [[[[7, 7]]]]   # a rewritten file is read again
