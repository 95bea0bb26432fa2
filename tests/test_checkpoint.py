import pytest
import torch
from torch import nn

from organseg import checkpoint as ck
from organseg.errors import CheckpointError


def test_atomic_torch_save_failure_keeps_old_file(tmp_path):
    target = tmp_path / "c.pt"
    ck.atomic_torch_save({"a": torch.ones(2)}, target)

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        ck.atomic_torch_save({"bad": Unpicklable()}, target)
    assert torch.equal(torch.load(target, weights_only=True)["a"], torch.ones(2))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pt"]


def test_read_checkpoint_errors_name_the_file(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        ck.read_checkpoint(tmp_path / "missing.pt")
    bad = tmp_path / "trunc.pt"
    ck.atomic_torch_save({"format": ck.FORMAT, "model": {"w": torch.randn(100)}}, bad)
    bad.write_bytes(bad.read_bytes()[:50])
    with pytest.raises(CheckpointError, match="trunc.pt"):
        ck.read_checkpoint(bad)
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(CheckpointError, match="not an organseg checkpoint"):
        ck.read_checkpoint(foreign)


def test_make_checkpoint_unwraps_wrappers():
    net = nn.Linear(2, 3)

    class Wrapper(nn.Module):
        def __init__(self, m):
            super().__init__()
            self.module = m

    a = ck.make_checkpoint(net, model_name="x")
    b = ck.make_checkpoint(Wrapper(net), model_name="x")
    assert a["model"].keys() == b["model"].keys() == {"weight", "bias"}
    assert a["format"] == ck.FORMAT
