"""Datasets, preparation, augmentation and the CT phantom."""

from organseg.data.base import SPLITS, ArrayDataset, SegmentationDataset, Volume

__all__ = ["SPLITS", "ArrayDataset", "SegmentationDataset", "Volume"]
