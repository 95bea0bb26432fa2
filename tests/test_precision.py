import pytest
import torch

from organseg.errors import ConfigError
from organseg.precision import autocast, autocast_dtype

CPU = torch.device("cpu")


def test_names_map_to_autocast_dtypes_on_cpu():
    assert autocast_dtype("fp32", CPU) is None
    assert autocast_dtype("bf16", CPU) is torch.bfloat16
    with autocast("bf16", CPU):
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16 and torch.is_autocast_enabled("cpu")
    with autocast("fp32", CPU):
        assert not torch.is_autocast_enabled("cpu")


@pytest.mark.parametrize(
    ("name", "message"), [("fp16", "needs a CUDA device"), ("half", "unknown precision")]
)
def test_unusable_precisions_are_config_errors(name, message):
    with pytest.raises(ConfigError, match=message):
        autocast_dtype(name, CPU)
