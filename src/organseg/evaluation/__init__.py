"""Test protocol (reference and corrected metrics), volume inference, prediction and reports.

``metrics``    per-case Dice / HD95 under the reference and corrected protocols (MedPy's numbers, fast)
``inference``  ``predict_volume``: the reference slice loop and the batched path with the same predictions
``evaluate``   ``evaluate_dataset``: a split's per-case, per-class arrays and summaries
``testing``    ``organseg test``; ``predict``: ``organseg predict``; ``report``: ``organseg report``
"""

from organseg.evaluation.evaluate import EvaluationResult, evaluate_dataset
from organseg.evaluation.inference import predict_volume
from organseg.evaluation.metrics import case_metrics, case_metrics_all

__all__ = ["EvaluationResult", "case_metrics", "case_metrics_all", "evaluate_dataset", "predict_volume"]
