"""Weights are read with torch.load(weights_only=True): pickled code and custom objects are refused."""
import os

import pytest
import torch

from optlab.compress.checkpoint import CheckpointError, fit_to_state_dict, load_run_model, load_weights
from optlab.models import build_model


class Custom:
    """A custom class: loading it needs this module's code, which a weights file must not need."""

    def __init__(self):
        self.note = "not a tensor"


class RunsCode:
    """Unpickling this calls os.mkdir: the kind of payload weights_only=True exists to stop."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return os.mkdir, (self.path,)


def test_a_plain_state_dict_loads(tmp_path):
    model = build_model("speednet", 1, 10, 16)
    torch.save(model.state_dict(), tmp_path / "ok.pt")
    state = load_weights(tmp_path / "ok.pt")
    assert torch.equal(state["head.weight"], model.head.weight)


def test_a_checkpoint_holding_a_custom_object_is_refused(tmp_path):
    torch.save({"weight": torch.ones(2), "extra": Custom()}, tmp_path / "custom.pt")
    with pytest.raises(CheckpointError, match=r"refusing to load .*pickled Python objects.*weights_only=True"):
        load_weights(tmp_path / "custom.pt")


def test_a_checkpoint_that_would_run_code_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "created-by-unpickling"
    torch.save({"weight": torch.ones(2), "payload": RunsCode(str(marker))}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="refusing to load"):
        load_weights(tmp_path / "evil.pt")
    assert not marker.exists()
    torch.load(tmp_path / "evil.pt", weights_only=False)   # what an unsafe load would have done
    assert marker.exists()


def test_a_file_that_is_not_a_state_dict_or_missing_is_refused(tmp_path):
    torch.save([torch.ones(2)], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match="not a state dict"):
        load_weights(tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match="no weights at"):
        load_weights(tmp_path / "missing.pt")


def test_a_run_without_weights_cannot_be_compressed(store):
    from conftest import tiny_config
    rid = store.submit(tiny_config())
    with pytest.raises(CheckpointError, match=f"run #{rid} has no saved weights"):
        load_run_model(store.get(rid), None, torch.device("cpu"))


@pytest.mark.parametrize("name", ["speednet", "mobilenet_v3_small"])
def test_a_channel_pruned_model_is_rebuilt_from_plain_tensors(name):
    import torch_pruning as tp
    torch.manual_seed(0)
    pruned = build_model(name, 1, 10, 16).eval()
    x = torch.randn(2, 1, 16, 16)
    head = [m for m in pruned.modules() if isinstance(m, torch.nn.Linear)][-1]
    tp.pruner.MetaPruner(pruned, x, importance=tp.importance.GroupMagnitudeImportance(p=2), pruning_ratio=0.5,
                         ignored_layers=[head]).step()
    rebuilt = fit_to_state_dict(build_model(name, 1, 10, 16), pruned.state_dict()).eval()
    with torch.no_grad():
        assert torch.allclose(rebuilt(x), pruned(x), atol=1e-5)
    assert sum(p.numel() for p in rebuilt.parameters()) == sum(p.numel() for p in pruned.parameters())


def _good_weights(tmp_path):
    path = tmp_path / "model.pt"
    torch.save(build_model("speednet", 1, 10, 16).state_dict(), path)
    return path


@pytest.mark.parametrize("damage", ["truncated", "empty", "random bytes", "zeroed middle"])
def test_a_damaged_weights_file_is_called_damaged_and_never_suggests_unsafe_loading(tmp_path, damage):
    path = _good_weights(tmp_path)
    data = path.read_bytes()
    path.write_bytes({"truncated": data[: len(data) // 2], "empty": b"", "random bytes": os.urandom(len(data)),
                      "zeroed middle": data[:2000] + bytes(len(data) - 4000) + data[-2000:]}[damage])
    with pytest.raises(CheckpointError) as e:
        load_weights(path)
    message = str(e.value)
    assert "is damaged" in message and str(path) in message
    assert "weights_only=False" not in message and "\x1b" not in message


def test_a_failed_save_leaves_the_previous_weights_and_no_partial_file(tmp_path, monkeypatch):
    from optlab.compress import checkpoint
    model = build_model("speednet", 1, 10, 16)
    path = checkpoint.save_weights(model, tmp_path / "model.pt")
    before = path.read_bytes()
    partial = tmp_path / ".model.pt.test.partial"
    partial.touch()
    # The temporary file's writes go to /dev/full, which answers each write with ENOSPC: the
    # kernel's own full-disk error.
    monkeypatch.setattr(checkpoint, "_new_partial_file", lambda path: (os.open("/dev/full", os.O_WRONLY), str(partial)))
    with pytest.raises(OSError) as e:
        checkpoint.save_weights(model, path)
    assert e.value.errno == 28
    assert path.read_bytes() == before and not partial.exists()


def test_saved_weights_get_the_usual_file_mode(tmp_path):
    from optlab.compress import checkpoint
    mask = os.umask(0o022)
    try:
        path = checkpoint.save_weights(build_model("speednet", 1, 10, 16), tmp_path / "model.pt")
    finally:
        os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o644 and [p.name for p in tmp_path.iterdir()] == ["model.pt"]
