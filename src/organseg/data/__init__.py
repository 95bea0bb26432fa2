"""Datasets: folders read as one interface, the subjects and folds, augmentation, and the datasets organseg
writes.

``base``        ``SegmentationDataset``, ``Volume``, ``ArrayDataset``; subjects and their disjointness check
``detect``      ``open_dataset`` / ``resolve_dataset``: which layout a folder is, and its reader
``synapse``, ``acdc``, ``nnunet``  the readers (TransUNet Synapse, SSL4MIS ACDC h5, nnU-Net v2 raw)
``folds``       the subject rule and K cross-validation folds (``FoldView``)
``identity``    which dataset a run was trained on: its record and fingerprint
``classes``     the one source of class orders and the one class-name check
``preprocess``  intensity mappings (CT window, MRI normalisation) as data
``augment``     the reference augmentation and its batched torch twin
``io``, ``slices``  the prepared ``.npz`` / ``.h5`` arrays and the slices training reads
``phantom``, ``prepare``, ``split``, ``completion``  writing datasets: the synthetic CT, raw BTCV -> Synapse,
                the split rule, the "in progress" / "complete" record
"""

from organseg.data.base import SPLITS, ArrayDataset, SegmentationDataset, Volume
from organseg.data.detect import detect_layout, open_dataset

__all__ = ["SPLITS", "ArrayDataset", "SegmentationDataset", "Volume", "detect_layout", "open_dataset"]
