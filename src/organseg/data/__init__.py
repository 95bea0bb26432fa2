"""Datasets, preparation, augmentation and the CT phantom.

``open_dataset(root)`` reads Synapse (TransUNet format), ACDC (SSL4MIS h5) and nnU-Net v2 raw folders behind
the one :class:`SegmentationDataset` interface; ``classes`` is the single source of truth for class orders.
"""

from organseg.data.base import SPLITS, ArrayDataset, SegmentationDataset, Volume
from organseg.data.detect import detect_layout, open_dataset

__all__ = ["SPLITS", "ArrayDataset", "SegmentationDataset", "Volume", "detect_layout", "open_dataset"]
