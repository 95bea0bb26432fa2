"""Networks: ``create_model("unet" | "swin_unet", **overrides)``."""

from organseg.models import swin_unet as _swin_unet  # noqa: F401  (registers "swin_unet")
from organseg.models import unet as _unet  # noqa: F401  (registers "unet")
from organseg.models._registry import create_model, list_models, register_model

__all__ = ["create_model", "list_models", "register_model"]
