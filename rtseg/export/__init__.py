"""Build artifacts: ONNX graphs (:mod:`rtseg.export.onnx_export`) and TensorRT engines
(:mod:`rtseg.export.engine`), each with a JSON manifest beside it."""
