"""Networks: ``create_model("unet" | "swin_unet" | "mypkg.nets:build_mynet", **overrides)``, the registry's
accessors and the layout policy (networks of one's own: :mod:`organseg.models.external`, docs/networks.md;
networks of the field, built by their own libraries, optional extras: :mod:`organseg.models.library`).
Code outside ``organseg.models`` imports from here, not from the private ``_registry``."""

from organseg.models import monai_attention_unet as _monai_attention_unet  # noqa: F401  (registers it)
from organseg.models import monai_basic_unet as _monai_basic_unet  # noqa: F401  (registers it)
from organseg.models import monai_swin_unetr as _monai_swin_unetr  # noqa: F401  (registers it)
from organseg.models import nnunet_2d as _nnunet_2d  # noqa: F401  (registers it)
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
    is_builtin,
    list_models,
    model_defaults,
    model_name_problem,
    model_source,
    register_model,
    takes_image_size,
)
from organseg.models.external import ENTRY_POINT_GROUP, check_contract, is_external, missing_module
from organseg.models.layout import (
    is_channels_last,
    prefers_channels_last,
    set_channels_last,
    wants_channels_last,
)

__all__ = [
    "ENTRY_POINT_GROUP",
    "check_contract",
    "check_input_size",
    "check_model_args",
    "check_model_name",
    "create_model",
    "has_model",
    "head_key",
    "input_size_problem",
    "is_external",
    "is_builtin",
    "is_channels_last",
    "list_models",
    "missing_module",
    "model_defaults",
    "model_name_problem",
    "model_source",
    "prefers_channels_last",
    "register_model",
    "set_channels_last",
    "takes_image_size",
    "wants_channels_last",
]
