"""The image file formats organseg reads beside DICOM, and the one line worth showing of an ITK error.

The bottom of :mod:`organseg.imageio`: :mod:`~organseg.imageio.volumes` and :mod:`~organseg.imageio.dicom`
both need these, and neither should import the other for them.
"""

from __future__ import annotations

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd", ".nhdr")


def describe_itk_error(exc: BaseException) -> str:
    """The line of a SimpleITK exception that says what went wrong (they are multi-line C++ dumps)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return lines[-1] if lines else type(exc).__name__
