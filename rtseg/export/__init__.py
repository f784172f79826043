"""Build artifacts: ONNX graphs (:mod:`rtseg.export.onnx_export`, deformable convolution in
standard operators by :mod:`rtseg.export.deform_conv_onnx`) and TensorRT engines
(:mod:`rtseg.export.engine`, either flavour through :mod:`rtseg.export.trt_flavour`), each
with a JSON manifest beside it."""
