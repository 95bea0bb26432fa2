"""The inference engine shared by validation, ``test``, ``predict`` and ``export``.

``engine``   ``predict_volume``: the reference slice loop and the batched path with the same predictions
``targets``  a run folder or checkpoint given on the command line -> ``RunTarget``; where its results go
``sources``  checkpoints and ONNX files as ensemble members, their agreement, test-time augmentation
``onnx``     ``organseg export``: the network as ONNX with the metadata that makes the file self-describing
"""

from organseg.inference.engine import predict_volume

__all__ = ["predict_volume"]
