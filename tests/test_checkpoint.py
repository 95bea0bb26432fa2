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


# ------------------------------------------------------- validate_checkpoint: one check for every verb


def _unet_checkpoint(num_classes: int = 3, width: float = 0.125, **fields) -> dict:
    from organseg.models import create_model

    torch.manual_seed(0)
    net = create_model("unet", num_classes=num_classes, width=width)
    names = ["background"] + [f"organ{i}" for i in range(1, num_classes)]
    ckpt = ck.make_checkpoint(
        net,
        model_name="unet",
        model_args={"num_classes": num_classes, "width": width},
        class_names=names,
        preprocessing={"kind": "minmax"},
        config={"train": {"img_size": 32}},
    )
    ckpt.update(fields)
    return ckpt


def _fails(ckpt: dict, *parts: str) -> str:
    with pytest.raises(CheckpointError) as err:
        ck.validate_checkpoint(ckpt, "run/best.pt")
    msg = str(err.value)
    assert msg.startswith("run/best.pt: ") and "\n" not in msg
    for part in parts:
        assert part in msg, msg
    return msg


def test_a_sound_checkpoint_gives_the_network_in_eval_mode():
    net = ck.validate_checkpoint(_unet_checkpoint(), "run/best.pt")
    assert not net.training and net(torch.zeros(1, 1, 32, 32)).shape == (1, 3, 32, 32)


def test_class_names_must_match_the_output_layer():
    ckpt = _unet_checkpoint(class_names=["background", "liver", "spleen", "kidney"])
    _fails(ckpt, "4 class names", "output layer has 3 channels")


def test_nan_and_inf_weights_are_named():
    ckpt = _unet_checkpoint()
    ckpt["model"]["decoder.final.weight"][0, 0] = float("nan")
    ckpt["model"]["encoder.features.0.bias"][1] = float("inf")
    _fails(ckpt, "NaN or infinite", "decoder.final.weight", "encoder.features.0.bias")


def test_missing_and_unexpected_keys_are_named():
    ckpt = _unet_checkpoint()
    del ckpt["model"]["decoder.final.bias"]
    ckpt["model"]["extra.weight"] = torch.zeros(2)
    _fails(ckpt, "missing keys decoder.final.bias", "unexpected keys extra.weight")


def test_a_unet_of_another_width_names_the_shapes():
    ckpt = _unet_checkpoint(width=0.125)
    ckpt["model_args"] = {"num_classes": 3, "width": 0.25}  # the weights are of the narrower network
    _fails(ckpt, "shapes differ (checkpoint vs network)", "features.0.weight (8, 1, 3, 3) vs (16, 1, 3, 3)")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"model_name": "vnet"}, "unknown model 'vnet'"),
        ({"model_name": None}, "field 'model_name' should be a str, got nothing (missing)"),
        ({"preprocessing": "minmax"}, "field 'preprocessing' should be a dict, got str"),
        ({"class_names": "background"}, "field 'class_names' should be a list, got str"),
        ({"class_names": [0, 1, 2]}, "class_names must be strings"),
        ({"model_args": {"num_classes": 3, "depth": 5}}, "cannot build unet with model_args"),
        ({"model": {"w": [1, 2]}}, "model entries that are not tensors: w"),
    ],
)
def test_malformed_fields_are_named(change, message):
    _fails(_unet_checkpoint(**change), message)


def test_model_from_checkpoint_names_the_file(tmp_path):
    path = tmp_path / "nan.pt"
    ckpt = _unet_checkpoint()
    ckpt["model"]["decoder.final.bias"][:] = float("nan")
    ck.atomic_torch_save(ckpt, path)
    with pytest.raises(CheckpointError) as err:
        ck.model_from_checkpoint(path)
    assert str(err.value) == f"{path}: weights with NaN or infinite values: decoder.final.bias"


def test_the_input_size_in_the_config_must_fit_the_network():
    # test / predict feed config train.img_size slices: a size the U-Net cannot take failed mid-inference.
    ckpt = _unet_checkpoint(config={"train": {"img_size": 40}})
    _fails(ckpt, "its config says train.img_size=40, but unet takes inputs whose side is a multiple of 16")


def test_an_official_swin_unet_file_becomes_a_checkpoint_through_make_checkpoint(tmp_path):
    """One writer of the format: the model side reads the network off the file, ``checkpoint`` makes the
    dict, with the fields of any checkpoint but no ``orientation`` (the file records none)."""
    from organseg.models import create_model

    args = {"img_size": 64, "embed_dim": 12, "num_heads": [1, 2, 3, 4], "window_size": 4, "num_classes": 3}
    net = create_model("swin_unet", **args)
    path = tmp_path / "epoch_149.pth"
    torch.save(net.state_dict(), path)
    ckpt = ck.read_checkpoint(path, official=True)
    assert list(ckpt) == [
        "format",
        "model",
        "model_name",
        "model_args",
        "class_names",
        "preprocessing",
        "config",
        "source",
    ]
    assert ckpt["format"] == ck.FORMAT and ckpt["model_name"] == "swin_unet"
    assert ck.is_official_swin_unet(ckpt)
    assert (ckpt["class_names"], ckpt["preprocessing"], ckpt["config"]) == ([], {}, {})
    assert ckpt["source"] == {"kind": ck.OFFICIAL_SWIN_UNET, "path": str(path)}
    assert ck.checkpoint_orientation(ckpt) == ck.PREDATES_ORIENTATION
    assert {k: ckpt["model_args"][k] for k in args} == args
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in ckpt["model"].items())


def test_the_model_side_does_not_import_the_checkpoint_format():
    """models/ sits below checkpoint.py (no import circle): no module of it imports organseg.checkpoint."""
    import ast
    from pathlib import Path

    import organseg.models

    for path in Path(organseg.models.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            names += [a.name for a in node.names] if isinstance(node, ast.Import) else []
            assert not any(n.startswith("organseg.checkpoint") for n in names), path.name
