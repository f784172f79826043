"""rtseg's YOLACT / YOLACT++ gives the outputs the official dbolya/yolact code gives.

The official network was run (outside this repository, see tests/fixtures/official/README.md)
with deterministic weights from ``official_reference.deterministic_state_dict`` on
``official_reference.reference_image()``. Here the same weights go through rtseg's own
``--weights`` loading path and its Segmenter stages, and every stored output is compared:
the preprocessed input, the raw head outputs, and the final detections after Fast NMS and
mask assembly (and, for YOLACT++, mask re-scoring).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from official_reference import deterministic_state_dict, load_official_keys, load_official_outputs, reference_image
from rtseg.segmenter import Segmenter

CONFIGS = ["yolact_resnet50", "yolact_plus_resnet50", "yolact_base", "yolact_im400", "yolact_im700", "yolact_plus_base"]


@pytest.fixture(scope="module")
def image():
    return reference_image()


@pytest.mark.parametrize("name", CONFIGS)
def test_matches_official_outputs(name, image, tmp_path):
    ref = load_official_outputs(name)
    weights = tmp_path / f"{name}.pth"
    torch.save(deterministic_state_dict(load_official_keys(name)["keys"]), weights)  # a bare state_dict, as upstream saves
    seg = Segmenter(name, weights=str(weights), score_threshold=0.0)
    assert int(image.astype(np.int64).sum()) == int(ref["image_sum"])

    batch = seg.preprocess(image)
    assert list(batch.shape) == ref["input_shape"].tolist()
    np.testing.assert_allclose(batch.sum(dtype=torch.float64).item(), float(ref["input_sum"]), rtol=1e-6)
    np.testing.assert_allclose(batch[0, :, :4, :4].numpy(), ref["input_corner"], rtol=1e-5, atol=1e-5)

    out = seg.infer(batch)
    rows = torch.from_numpy(ref["prior_index"])
    assert out["loc"].shape[1] == int(ref["num_priors"])
    np.testing.assert_allclose(out["loc"][0, rows].numpy(), ref["loc_rows"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(out["conf"][0, rows].numpy(), ref["conf_rows"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(out["coef"][0, rows].numpy(), ref["coeff_rows"], rtol=1e-4, atol=1e-5)
    ys, xs = torch.from_numpy(ref["proto_y"]), torch.from_numpy(ref["proto_x"])
    np.testing.assert_allclose(out["proto"][0][ys][:, xs].numpy(), ref["proto_samples"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(seg.net.priors[rows].numpy(), ref["priors_rows"], rtol=1e-6, atol=1e-7)

    inst = seg.postprocess(out, image.shape[:2])
    # as upstream's postprocess: box scores in NMS order; YOLACT++ adds mask_scores = score * maskiou
    # (upstream's [scores, scores * maskiou])
    order = np.arange(len(ref["scores"]))
    assert len(inst) == len(order)
    np.testing.assert_array_equal(inst.class_ids, ref["classes"])
    np.testing.assert_allclose(inst.scores, ref["scores"], rtol=1e-4, atol=1e-6)
    # upstream truncates pixel boxes with .long(); rtseg keeps them as float32
    np.testing.assert_array_equal(np.floor(inst.boxes).astype(np.int64), ref["boxes"])
    np.testing.assert_array_equal(inst.masks_dense(), ref["masks"])
    if "mask_scores" in ref:
        np.testing.assert_allclose(inst.mask_scores, ref["mask_scores"], rtol=1e-4, atol=1e-6)
        # the official display path (prep_display, rescore_bbox=True) ranks by score * maskiou
        ranked = inst.ranked_by_mask_score(0.0)
        demo = np.argsort(-ref["mask_scores"], kind="stable")
        demo = demo[ref["mask_scores"][demo] > 0]
        np.testing.assert_array_equal(ranked.class_ids, ref["classes"][demo])
        np.testing.assert_allclose(ranked.scores, ref["mask_scores"][demo], rtol=1e-4, atol=1e-6)
    else:
        assert inst.mask_scores is None
