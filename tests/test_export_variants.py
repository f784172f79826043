"""Every model variant rtseg lists exports to ONNX, passes the TensorRT operator check, and
gives under ONNX Runtime the head outputs and the Instances torch gives.

Variants with built-in weights run with them; the others with their seeded random
initialisation (the segmenter's fallback), which exercises every layer just the same. The
small variants (input side <= 384) run by default; the full-size ones are ``slow``.
"""

from __future__ import annotations

import numpy as np
import pytest

from rtseg.models import MODELS
from rtseg.segmenter import Segmenter
from rtseg.synthetic import SyntheticVideo


def _param(name: str):
    small = max(MODELS[name].input_size) <= 384
    return pytest.param(name, marks=() if small else pytest.mark.slow)


@pytest.mark.parametrize("name", [_param(n) for n in MODELS])
def test_variant_exports_and_onnxruntime_matches_torch(name, tmp_path):
    ref_seg = Segmenter(name, score_threshold=0.05)
    ort_seg = Segmenter(name, score_threshold=0.05, backend="onnxruntime", cache_dir=str(tmp_path))
    image = SyntheticVideo(seed=9, size=(480, 640)).frame(3).image
    batch = ref_seg.preprocess(image)
    ref, got = ref_seg.infer(batch), ort_seg.infer(batch)
    assert list(got) == list(ref)
    for key in ref:
        scale = ref[key].abs().max().clamp_min(1e-12)
        assert float((got[key] - ref[key]).abs().max() / scale) <= 1e-4, key
    # the same Instances: post-processing the ONNX Runtime outputs and the torch outputs
    a = ref_seg.postprocess(ref, image.shape[:2])
    b = ort_seg.postprocess(got, image.shape[:2])
    assert len(a) == len(b)
    for i, j in enumerate(_pair(a, b)):
        assert a.class_ids[i] == b.class_ids[j]
        assert abs(a.scores[i] - b.scores[j]) <= 1e-4
        np.testing.assert_allclose(a.boxes[i], b.boxes[j], atol=0.5)
        assert (a.masks[i].dense() != b.masks[j].dense()).mean() < 1e-3


def _pair(a, b) -> list[int]:
    """For each instance of ``a``, the index of the same instance in ``b``: the same order,
    except that instances whose scores differ by less than 1e-4 may come in either order
    (with random weights such near-ties are common, and the last bits decide them)."""
    pairs, used = [], set()
    for i in range(len(a)):
        near = [j for j in range(len(b)) if j not in used and abs(a.scores[i] - b.scores[j]) <= 1e-4
                and a.class_ids[i] == b.class_ids[j]]
        j = max(near, key=lambda j: (a.masks[i].dense() == b.masks[j].dense()).mean(), default=i)
        used.add(j)
        pairs.append(j)
    return pairs
