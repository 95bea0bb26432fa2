"""The ``organseg test`` verb: a split's per-case scores under both metric protocols.

``evaluate``  ``evaluate_dataset``: a split's per-case, per-class arrays and summaries (``EvaluationResult``)
``tester``    ``run_test``: one run, an ensemble or ONNX files tested on a split; the results folder it writes

The metrics themselves are :mod:`organseg.metrics`; the networks run through :mod:`organseg.inference`.
"""

from organseg.evaluation.evaluate import EvaluationResult, evaluate_dataset

__all__ = ["EvaluationResult", "evaluate_dataset"]
