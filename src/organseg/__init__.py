"""organseg: U-Net and Swin-Unet for 2-D multi-organ CT and cardiac MRI segmentation."""

__version__ = "0.2.0"
