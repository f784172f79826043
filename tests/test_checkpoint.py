"""rtseg.models.checkpoint: a weights file torch cannot read is named for what it is (issue
15, item 13), from files the tests write: text, a zip without data.pkl, an ONNX model, an
HTML page, a Git LFS pointer, random bytes."""

from __future__ import annotations

import zipfile

import numpy as np
import pytest

from cli_helpers import assert_one_line_error, run_cli
from rtseg.errors import CheckpointError
from rtseg.models.checkpoint import read_state_dict

EXPECTED = "expected a file written by torch.save (a zip archive with data.pkl, or a legacy pickle)"


def _onnx_model(path) -> None:
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    onnx.save(helper.make_model(graph, producer_name="rtseg-test"), str(path))


def _write(kind: str, path) -> None:
    if kind == "text":
        path.write_text("hello weights\nsecond line\n")
    elif kind == "zip without data.pkl":
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("model/weights.txt", "x")
    elif kind == "onnx":
        _onnx_model(path)
    elif kind == "html":
        path.write_text("<!DOCTYPE html><html><body>404</body></html>")
    elif kind == "lfs pointer":
        path.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:00ff\nsize 1234\n")
    elif kind == "random bytes":
        path.write_bytes(np.random.default_rng(0).integers(0, 256, 300, dtype=np.uint8).tobytes())


@pytest.mark.parametrize("kind, found", [
    ("text", "found a text file starting 'hello weights', 26 bytes"),
    ("zip without data.pkl", "found a zip archive without data.pkl (1 entries: 'model/weights.txt')"),
    ("onnx", "found an ONNX model (use it with --backend onnxruntime --engine FILE)"),
    ("html", "found an HTML page"),
    ("lfs pointer", "found a Git LFS pointer, not the file it points to"),
    ("random bytes", "found binary data starting "),
])
def test_a_file_torch_cannot_read_is_described_with_what_was_expected(tmp_path, kind, found):
    path = tmp_path / "weights.pth"
    _write(kind, path)
    with pytest.raises(CheckpointError) as info:
        read_state_dict(str(path))
    message = str(info.value)
    assert "\n" not in message and "not a readable PyTorch checkpoint" in message
    assert EXPECTED in message and found in message and f"{path.stat().st_size} bytes" in message
    assert ": 101" not in message  # was torch's bare KeyError for a text file


def test_run_with_a_text_file_as_weights_says_it_is_a_text_file(tmp_path):
    path = tmp_path / "weights.pth"
    path.write_text("hello weights\n")
    assert_one_line_error(run_cli("run", "--weights", str(path), "--max-frames", "1"), 4,
                          "is not a readable PyTorch checkpoint", "found a text file starting 'hello weights', 14 bytes")
