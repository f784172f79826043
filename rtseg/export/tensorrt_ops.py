"""Whether TensorRT parses an exported graph: the real ONNX parser where one is installed
(:func:`tensorrt_refusals`, what ``rtseg export`` checks), else an operator table.

The table proved wrong once: it listed ``DeformConv``, but the TensorRT-RTX 1.7 parser refuses
it (``DeformConv (importFallbackPluginImporter): Plugin not found``: the operator is a plugin,
and TensorRT-RTX has no plugins), so rtseg's YOLACT++ graph passed the table and failed the
parser. ``DeformConv`` is out of the table now (rtseg exports deformable convolution as
standard operators, :mod:`rtseg.export.deform_conv_onnx`), and the tests check the table
against the real parser on every listed variant: every graph the table passes must parse.

Table facts from onnx/onnx-tensorrt ``docs/operators.md`` at commit 96e7811 ("ONNX-TensorRT 10.1
GA release", 2024-06-17): "TensorRT 10.0 supports operators in the inclusive range of opset 9
to opset 20"; the operators below are the rows marked ``Y`` in its support matrix (150 of
them). A few restrictions of that table that our exported graphs could meet are checked too
(:func:`unsupported_nodes`).
"""

from __future__ import annotations

#: opsets the TensorRT 10 ONNX parser accepts (inclusive)
MIN_OPSET = 9
MAX_OPSET = 20

#: ONNX operators (default domain) marked supported in the TensorRT 10.1 parser's matrix, less
#: ``DeformConv`` (a plugin there; no parser without plugins takes it)
SUPPORTED_OPS: frozenset[str] = frozenset({
    "Abs", "Acos", "Acosh", "Add", "And", "ArgMax", "ArgMin", "Asin", "Asinh", "Atan", "Atanh",
    "AveragePool", "BatchNormalization", "Cast", "CastLike", "Ceil", "Celu", "Clip", "Concat",
    "Constant", "ConstantOfShape", "Conv", "ConvTranspose", "Cos", "Cosh", "CumSum",
    "DepthToSpace", "DequantizeLinear", "Div", "Dropout", "Einsum", "Elu", "Equal", "Erf", "Exp",
    "Expand", "EyeLike", "Flatten", "Floor", "Gather", "GatherElements", "GatherND", "Gelu", "Gemm",
    "GlobalAveragePool", "GlobalLpPool", "GlobalMaxPool", "Greater", "GreaterOrEqual", "GridSample",
    "GroupNormalization", "GRU", "HardSigmoid", "HardSwish", "Hardmax", "Identity", "If",
    "ImageScaler", "InstanceNormalization", "IsInf", "IsNaN", "LayerNormalization", "LeakyRelu",
    "Less", "LessOrEqual", "Log", "LogSoftmax", "Loop", "LRN", "LSTM", "LpNormalization", "LpPool",
    "MatMul", "Max", "MaxPool", "Mean", "MeanVarianceNormalization", "Min", "Mish", "Mod", "Mul",
    "Neg", "NonMaxSuppression", "NonZero", "Not", "OneHot", "Or", "Pad", "ParametricSoftplus",
    "Pow", "PRelu", "QuantizeLinear", "RandomNormal", "RandomNormalLike", "RandomUniform",
    "RandomUniformLike", "Range", "Reciprocal", "ReduceL1", "ReduceL2", "ReduceLogSum",
    "ReduceLogSumExp", "ReduceMax", "ReduceMean", "ReduceMin", "ReduceProd", "ReduceSum",
    "ReduceSumSquare", "Relu", "Reshape", "Resize", "ReverseSequence", "RNN", "RoiAlign", "Round",
    "ScaledTanh", "Scan", "Scatter", "ScatterElements", "ScatterND", "Selu", "Shape", "Shrink",
    "Sigmoid", "Sign", "Sin", "Sinh", "Size", "Slice", "Softmax", "Softplus", "Softsign",
    "SpaceToDepth", "Split", "Sqrt", "Squeeze", "Sub", "Sum", "Tan", "Tanh", "ThresholdedRelu",
    "Tile", "TopK", "Transpose", "Trilu", "Unsqueeze", "Upsample", "Where", "Xor",
})

#: Resize ``coordinate_transformation_mode`` values the parser supports (same table)
RESIZE_COORDINATE_MODES = frozenset({"half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn", "asymmetric",
                                      "align_corners"})
#: TopK: "``K`` input must be less than 3840" (same table)
TOPK_MAX_K = 3840


def unsupported_nodes(model) -> list[str]:
    """Every reason the TensorRT 10 ONNX parser would refuse ``model`` (an ``onnx.ModelProto``),
    one string per offending node or setting; empty when the graph is acceptable."""
    from onnx import numpy_helper

    problems = []
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is None or not MIN_OPSET <= opset <= MAX_OPSET:
        problems.append(f"opset {opset} (TensorRT 10 parses opsets {MIN_OPSET}-{MAX_OPSET})")
    constants = {t.name: t for t in model.graph.initializer}
    for node in model.graph.node:
        where = f"node '{node.name or node.output[0]}'"
        if node.domain not in ("", "ai.onnx"):
            problems.append(f"{node.domain}::{node.op_type} ({where}): custom-domain operator")
        elif node.op_type not in SUPPORTED_OPS:
            problems.append(f"{node.op_type} ({where}): not supported by the TensorRT 10 ONNX parser")
        elif node.op_type == "Resize":
            attrs = {a.name: a for a in node.attribute}
            mode = attrs["coordinate_transformation_mode"].s.decode() if "coordinate_transformation_mode" in attrs else "half_pixel"
            if mode not in RESIZE_COORDINATE_MODES:
                problems.append(f"Resize ({where}): coordinate_transformation_mode '{mode}' not supported")
        elif node.op_type == "TopK" and len(node.input) > 1 and node.input[1] in constants:
            k = int(numpy_helper.to_array(constants[node.input[1]]).reshape(-1)[0])
            if k >= TOPK_MAX_K:
                problems.append(f"TopK ({where}): K={k}, TensorRT needs K < {TOPK_MAX_K}")
    return problems


def tensorrt_refusals(model) -> tuple[str, list[str]]:
    """``(checker, refusals)``: the real ONNX parser's errors for ``model`` (an
    ``onnx.ModelProto``) when a TensorRT flavour is installed (``checker`` names it and its
    version), else the operator table's (``checker`` = ``"operator table"``)."""
    from rtseg.export.trt_flavour import TENSORRT, TENSORRT_RTX

    unusable = []
    for flavour in (TENSORRT_RTX, TENSORRT):
        if flavour.installed():
            try:
                return parse_with(flavour, model.SerializeToString())
            except Exception as exc:  # e.g. datacenter TensorRT without a GPU cannot make a builder
                unusable.append(f"{flavour.name}: {type(exc).__name__}")
    note = f" ({', '.join(unusable)})" if unusable else ""
    return f"operator table{note}", unsupported_nodes(model)


def parse_with(flavour, model_bytes: bytes) -> tuple[str, list[str]]:
    """Parse ``model_bytes`` with ``flavour``'s ONNX parser (no build): its name and errors."""
    from rtseg.errors import EngineError
    from rtseg.export.engine import parser_errors, trt_logger

    trt = flavour.import_module()
    logger = trt_logger(trt)
    builder = trt.Builder(logger)
    if builder is None:
        raise EngineError(f"{flavour.name} could not create a builder here")
    network = flavour.create_network(trt, builder, False)
    parser = trt.OnnxParser(network, logger)
    quiet, logger.min_severity = logger.min_severity, trt.Logger.INTERNAL_ERROR  # its errors come back in the list
    try:
        ok = parser.parse(model_bytes)
    finally:
        logger.min_severity = quiet
    errors = [] if ok else (parser_errors(trt, parser) or ["the parser refused the graph without saying why"])
    return f"{flavour.version(trt)} ONNX parser", errors
