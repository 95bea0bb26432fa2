"""Networks: ``create_model("unet" | "swin_unet", **overrides)``, the registry's accessors and the layout
policy. Code outside ``organseg.models`` imports from here, not from the private ``_registry``."""

from organseg.models import swin_unet as _swin_unet  # noqa: F401  (registers "swin_unet")
from organseg.models import unet as _unet  # noqa: F401  (registers "unet")
from organseg.models._registry import (
    check_input_size,
    check_model_args,
    check_model_name,
    create_model,
    has_model,
    head_key,
    input_size_problem,
    list_models,
    model_defaults,
    model_name_problem,
    register_model,
    takes_image_size,
)
from organseg.models.layout import (
    is_channels_last,
    prefers_channels_last,
    set_channels_last,
    wants_channels_last,
)

__all__ = [
    "check_input_size",
    "check_model_args",
    "check_model_name",
    "create_model",
    "has_model",
    "head_key",
    "input_size_problem",
    "is_channels_last",
    "list_models",
    "model_defaults",
    "model_name_problem",
    "prefers_channels_last",
    "register_model",
    "set_channels_last",
    "takes_image_size",
    "wants_channels_last",
]
