"""``organseg info`` and the FLOP counter behind it."""

from __future__ import annotations

import contextlib
import io
import json

import pytest
import torch
from torch import nn

from organseg.cli.main import main
from organseg.models import create_model
from organseg.models.flops import REFERENCE, count_flops, count_model_flops, count_parameters, model_profile


def _run(argv: list[str]) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = main(argv)
    return rc, out.getvalue()


@pytest.fixture(scope="module")
def info_table() -> str:
    rc, text = _run(["info"])
    assert rc == 0
    return text


def _row(table: str, name: str) -> list[str]:
    line = next(line for line in table.splitlines() if line.startswith(name + " "))
    return line.split()


def test_info_table_lists_both_networks(info_table):
    unet = next(line for line in info_table.splitlines() if line.startswith("unet "))
    swin = next(line for line in info_table.splitlines() if line.startswith("swin_unet "))
    assert "24,898,953" in unet and "VGG16-BN" in unet
    assert "27,168,900" in swin and "window 7" in swin and "heads [3, 6, 12, 24]" in swin
    header = info_table.splitlines()[0]
    assert "GFLOPs" in header and "GMACs" in header


@pytest.mark.parametrize("name", ["unet", "swin_unet"])
def test_flops_and_params_match_reference(info_table, name):
    # Columns: model, params, ref params, GFLOPs, ref GFLOPs, GMACs, configuration...
    _, params, ref_params, gflops, ref_gflops, gmacs = _row(info_table, name)[:6]
    assert int(params.replace(",", "")) == REFERENCE[name]["params"] == int(ref_params.replace(",", ""))
    assert float(ref_gflops) == REFERENCE[name]["gflops"]
    # Within 5 % of the reference GFLOPs (2 FLOPs per multiply-add); GMACs are half.
    assert float(gflops) == pytest.approx(REFERENCE[name]["gflops"], rel=0.05)
    assert float(gmacs) == pytest.approx(float(gflops) / 2, abs=0.01)


def test_info_json_is_machine_readable():
    rc, text = _run(["info", "--json", "--models", "unet", "--img-size", "32"])
    assert rc == 0
    (row,) = json.loads(text)
    assert row["name"] == "unet" and row["params"] == REFERENCE["unet"]["params"]
    assert row["config"] == create_model("unet").config
    assert row["gflops"] == pytest.approx(REFERENCE["unet"]["gflops"] * (32 / 224) ** 2, rel=0.05)
    assert row["ref_gflops"] is None  # the reference figure is for 224x224 only


def test_unet_flops_equal_the_analytic_conv_count():
    # Independent of the counter: 2 * H_out * W_out * C_out * C_in * k * k summed over the convs.
    model = create_model("unet")
    total, hooks = 0, []

    def hook(mod: nn.Conv2d, inp, out) -> None:
        nonlocal total
        total += 2 * out.shape[-2] * out.shape[-1] * mod.weight.numel()

    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            hooks.append(m.register_forward_hook(hook))
    with torch.no_grad():
        model(torch.zeros(1, 1, 64, 64))
    for h in hooks:
        h.remove()
    assert count_model_flops(model, 64) == total


def test_meta_count_equals_real_count():
    # The fast (meta-device, no arithmetic) path against the plain CPU pass.
    unet = create_model("unet")
    assert count_model_flops(unet, 32, on_meta=True) == count_model_flops(unet, 32, on_meta=False)
    swin = create_model("swin_unet", embed_dim=12, num_heads=(1, 2, 3, 4))
    assert count_model_flops(swin, on_meta=True) == count_model_flops(swin, on_meta=False)


def test_sdpa_attention_is_counted_like_the_reference_path():
    # torch's counter has no formula for the CPU fused-attention kernel; flops.py adds one.
    swin = create_model("swin_unet", embed_dim=12, num_heads=(1, 2, 3, 4)).eval()
    x = torch.rand(1, 1, 224, 224)
    fast = count_flops(swin.set_attn_impl("sdpa"), x)
    plain = count_flops(swin.set_attn_impl("reference"), x)
    assert fast == plain


def test_count_parameters_excludes_buffers():
    bn = nn.BatchNorm2d(8)
    assert count_parameters(bn) == 16


def test_profile_off_the_paper_setting_has_no_reference():
    row = model_profile("unet", img_size=64, num_classes=4)
    assert row["ref_gflops"] is None and row["ref_params"] is None
    assert row["config"]["num_classes"] == 4


def test_unknown_model_is_one_line_error(capsys):
    assert main(["info", "--models", "nope"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "nope" in err and "unet" in err


def test_bad_image_size_is_one_line_error(capsys):
    assert main(["info", "--img-size", "100"]) == 2
    assert "multiple of 16" in capsys.readouterr().err
