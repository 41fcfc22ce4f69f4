import pytest
import torch

from conftest import tiny_config
from optlab.augment import AUGMENTATIONS
from optlab.data import load_dataset
from optlab.pipeline import PIPELINES, make_pipeline

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def data():
    return load_dataset(tiny_config(limit_train=256, limit_test=64))


@pytest.mark.parametrize("pipeline", PIPELINES.names())
def test_every_pipeline_yields_normalised_batches_on_the_device(data, pipeline):
    cfg = tiny_config(pipeline=pipeline, augment=False)
    x, y = next(iter(make_pipeline(data, cfg, CPU, 32, train=True)))
    assert x.shape == (32, 1, cfg.image_size, cfg.image_size) and x.dtype == torch.float32 and y.shape == (32,)
    assert abs(float(x.mean())) < 0.5 and 0.6 < float(x.std()) < 1.4   # normalised with the data's stats


@pytest.mark.parametrize("size", [28, 16])     # native, and resized
def test_both_pipelines_give_the_same_test_images(data, size):
    cpu = list(make_pipeline(data, tiny_config(pipeline="cpu", image_size=size), CPU, 64, train=False))
    gpu = list(make_pipeline(data, tiny_config(pipeline="gpu", image_size=size), CPU, 64, train=False))
    assert torch.allclose(cpu[0][0], gpu[0][0], atol=1e-5)
    assert torch.equal(cpu[0][1], gpu[0][1])


@pytest.mark.parametrize("pipeline", PIPELINES.names())
def test_resize_and_channels_last_are_applied(data, pipeline):
    cfg = tiny_config(pipeline=pipeline, image_size=32, channels_last=True)
    x, _ = next(iter(make_pipeline(data, cfg, CPU, 16, train=True)))
    assert x.shape == (16, 1, 32, 32)
    assert x.is_contiguous(memory_format=torch.channels_last)


def test_training_batches_are_shuffled_and_drop_the_ragged_end(data):
    batches = make_pipeline(data, tiny_config(pipeline="gpu"), CPU, 100, train=True)
    assert len(batches) == 2
    labels = torch.cat([y for _, y in batches])
    assert not torch.equal(labels, data.train_y[:200])


@pytest.mark.parametrize("name", AUGMENTATIONS.names())
def test_batched_augmentations_are_per_sample(name):
    x = torch.arange(64 * 28 * 28, dtype=torch.float32).view(64, 1, 28, 28).remainder(251)
    x = x.repeat(1, 1, 1, 1)
    same = x[:1].expand(64, 1, 28, 28).contiguous()
    out = AUGMENTATIONS.get(name).batched(same, torch.Generator().manual_seed(0))
    assert out.shape == same.shape
    distinct = {tuple(o.flatten()[:200].tolist()) for o in out}
    assert len(distinct) > 1, "every image got the same transform"


def test_gpu_pipeline_augments_training_batches_only(data):
    cfg = tiny_config(pipeline="gpu", augment=True)
    train = make_pipeline(data, cfg, CPU, 64, train=True)
    test = make_pipeline(data, cfg, CPU, 64, train=False)
    assert train.augment and not test.augment


def test_the_gpu_pipeline_makes_its_normalisation_tensors_once(data, monkeypatch):
    """A tensor built from Python numbers per batch is a blocking host-to-device copy on a GPU."""
    import optlab.pipeline as pipeline_module
    batches = make_pipeline(data, tiny_config(pipeline="gpu"), CPU, 32, train=True)
    made = []
    monkeypatch.setattr(pipeline_module, "normalisation", lambda *a: made.append(a))
    assert len(list(batches)) == len(batches) > 1
    assert made == []
