"""organseg: U-Net and Swin-Unet for 2-D multi-organ CT and cardiac MRI segmentation."""

# The one place the version lives: the build reads it (pyproject.toml, tool.setuptools.dynamic), `organseg
# --version` prints it, and CHANGELOG.md has a section for it (tests/test_packaging.py checks all three).
__version__ = "0.2.0"
