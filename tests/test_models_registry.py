"""The model registry names an unknown network once, with one error type, for every verb."""

from __future__ import annotations

import pytest

from organseg.cli.main import main
from organseg.errors import ConfigError, UnknownModelError
from organseg.models import check_model_name, create_model, list_models, model_name_problem


def test_an_unknown_network_is_one_typed_error_naming_the_key_and_the_nearest_name():
    available = ", ".join(list_models())  # swin_unet, unet and any a test registers
    assert model_name_problem("unet") is None and model_name_problem("swin_unet") is None
    with pytest.raises(UnknownModelError) as err:
        create_model("vnet", num_classes=2)
    assert isinstance(err.value, ConfigError)  # the command line's one-line error
    want = f"model.name: unknown model 'vnet' (did you mean 'unet'?); available: {available}"
    assert str(err.value) == want
    with pytest.raises(UnknownModelError, match=r"^--models: unknown model 'swin-unet' \(did you mean"):
        check_model_name("swin-unet", key="--models")
    assert "(did you mean 'swin_unet'?)" in model_name_problem("Swin-Unet")
    assert model_name_problem("zzz") == f"unknown model 'zzz'; available: {available}"  # nothing near


def test_the_command_line_says_it_in_one_line(capsys):
    assert main(["info", "--models", "unet", "resnet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("organseg info: error: --models: unknown model 'resnet'") and "\n" not in err
