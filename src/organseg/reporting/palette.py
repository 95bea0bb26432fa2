"""One palette for every picture and file that colours organs: report figures, the HTML viewer, DICOM-SEG
segment colours. Class 0 (background) has no colour; classes 1.. cycle through the palette.
"""

from __future__ import annotations

import numpy as np

# Distinct colours (RGB 0..1) for classes 1..; background is transparent.
PALETTE: tuple[tuple[float, float, float], ...] = (
    (0.90, 0.10, 0.10),
    (0.10, 0.60, 0.95),
    (0.15, 0.80, 0.25),
    (1.00, 0.80, 0.00),
    (0.70, 0.30, 0.90),
    (1.00, 0.50, 0.05),
    (0.00, 0.85, 0.85),
    (0.95, 0.35, 0.70),
    (0.55, 0.35, 0.15),
    (0.60, 0.80, 0.20),
    (0.30, 0.30, 0.95),
    (0.95, 0.60, 0.60),
)


def class_color(index: int) -> tuple[float, float, float]:
    """RGB (0..1) of class ``index`` (1..): the same colour in every picture and file organseg writes."""
    return PALETTE[(index - 1) % len(PALETTE)]


def colorize(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """(H, W) labels -> (H, W, 4) RGBA, background transparent."""
    lut = np.zeros((max(num_classes, int(labels.max()) + 1), 4))
    for c in range(1, lut.shape[0]):
        lut[c] = (*class_color(c), 1.0)
    return lut[labels]
