"""The networks' own layout policy and the registry's public accessors (issue 11: one rule, asked of the
network, instead of an isinstance check in inference and a parameter-count guess in training)."""

from __future__ import annotations

import copy
import inspect

import pytest
import torch
from torch import nn

from organseg.models import (
    create_model,
    is_channels_last,
    list_models,
    model_defaults,
    prefers_channels_last,
    set_channels_last,
    takes_image_size,
    wants_channels_last,
)
from organseg.models.swin_unet import SwinTransformerSys
from organseg.models.unet import prepare_for_speed

SMALL = {"unet": {"width": 0.25}, "swin_unet": {"embed_dim": 12, "num_heads": (1, 2, 3, 4)}}


def _conv_share_rule(model: nn.Module) -> bool:
    """The rule training used before the networks said it themselves: most parameters in Conv2d layers."""
    total = sum(p.numel() for p in model.parameters())
    conv = sum(p.numel() for m in model.modules() if isinstance(m, nn.Conv2d) for p in m.parameters(False))
    return conv > total / 2


@pytest.mark.parametrize("name", ["unet", "swin_unet"])
def test_auto_layout_is_the_old_rule_for_both_networks(name):
    paper = create_model(name)  # the paper configuration: what the presets train
    small = create_model(name, **SMALL[name])
    for model in (paper, small):
        assert prefers_channels_last(model) is _conv_share_rule(model)
        assert wants_channels_last(model, "auto") is _conv_share_rule(model)
        assert wants_channels_last(model, True) is True and wants_channels_last(model, False) is False
    assert prefers_channels_last(paper) is (name == "unet")


def test_a_network_that_says_nothing_keeps_the_default_layout():
    net = nn.Sequential(nn.Conv2d(1, 8, 3), nn.Conv2d(8, 8, 3))  # all convolutions, but no declaration
    assert not prefers_channels_last(net) and not wants_channels_last(net)


def test_is_channels_last_agrees_with_the_unet_property():
    model = create_model("unet", width=0.25)
    assert not is_channels_last(model) and not model.is_channels_last
    fast = prepare_for_speed(copy.deepcopy(model))
    assert is_channels_last(fast) and fast.is_channels_last
    assert not is_channels_last(set_channels_last(fast, False)) and not fast.is_channels_last
    assert not is_channels_last(nn.Linear(3, 3))  # no 4-D weight: never channels-last


def test_swin_factory_signature_is_the_constructor_s():
    ctor = inspect.signature(SwinTransformerSys).parameters
    defaults = model_defaults("swin_unet")
    assert list(defaults) == list(ctor) and len(defaults) == 19
    assert all(defaults[k] == p.default for k, p in ctor.items())
    assert takes_image_size("swin_unet") and not takes_image_size("unet")
    assert {"swin_unet", "unet"} <= set(list_models())  # other tests may register more


def test_swin_factory_normalises_lists_and_refuses_unknown_arguments():
    small = {"img_size": (112, 112), "depths": (2, 2, 2), "num_heads": (1, 2, 3), "embed_dim": 12}
    model = create_model("swin_unet", **small)
    assert model.config["img_size"] == [112, 112]
    assert model.config["depths"] == [2, 2, 2] and model.config["num_heads"] == [1, 2, 3]
    assert list(model.config) == list(inspect.signature(SwinTransformerSys).parameters)
    with pytest.raises(TypeError, match="no_such_argument"):
        create_model("swin_unet", no_such_argument=1)
    with torch.no_grad():
        assert model(torch.zeros(1, 1, 112, 112)).shape == (1, 9, 112, 112)
