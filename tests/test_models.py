import pytest
import torch

from optlab.models import MODELS, build_model, count_parameters


@pytest.mark.parametrize("name", MODELS.names())
def test_every_model_classifies_grey_28px_images(name):
    torch.manual_seed(0)
    model = build_model(name, in_channels=1, num_classes=10, image_size=28).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 1, 28, 28))
    assert out.shape == (2, 10)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", ["speednet", "resnet18", "vit_tiny"])
def test_models_adapt_to_colour_images_and_class_count(name):
    model = build_model(name, in_channels=3, num_classes=100, image_size=32).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 100)


def test_large_images_get_the_imagenet_stem():
    small = build_model("resnet18", 1, 10, 28)
    large = build_model("resnet18", 1, 10, 224)
    assert small.conv1.stride == (1, 1) and isinstance(small.maxpool, torch.nn.Identity)
    assert large.conv1.stride == (2, 2)


def test_parameter_count_sees_zeros():
    model = build_model("speednet", 1, 10, 28)
    total, nonzero = count_parameters(model)
    with torch.no_grad():
        model.head.weight.zero_()
    assert count_parameters(model) == (total, nonzero - model.head.weight.numel())
