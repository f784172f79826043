"""rtseg's SOLOv2 gives the outputs the official WXinlong/SOLO code gives.

The official modules were run (outside this repository, see tests/fixtures/official/SOLOV2.md)
with deterministic weights from ``official_reference_solov2.deterministic_state_dict`` on
``official_reference.reference_image()``, on a fixed-canvas input made by a float resize (what
rtseg fed its network before it followed the official test pipeline; reproduced here by
``canvas_input``): these fixtures check the network and post-processing, not the
preprocessing (``test_official_photos.py`` checks the whole path from the file). Here the same weights go through rtseg's ``--weights`` loading path (an mmcv-style
file) and its Segmenter stages, and every stored output is compared: the preprocessed input,
the raw head outputs (category scores, compared after point NMS, kernels, mask features) and the final
instances after Matrix NMS and mask pasting.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from official_reference import reference_image
from official_reference_solov2 import deterministic_state_dict, load_keys, load_outputs
import torch.nn.functional as F

from rtseg.families.solov2.network import IMAGENET_MEAN_RGB, IMAGENET_STD_RGB
from rtseg.segmenter import Segmenter
from rtseg.families.solov2.postprocess import point_nms_cells


def canvas_input(image: np.ndarray, resized: tuple[int, int], canvas: tuple[int, int]) -> torch.Tensor:
    """The input the fixtures' official modules were fed (SOLOV2.md): float bilinear resize
    (``align_corners=False``), RGB, ImageNet mean / std, zero padding to the canvas."""
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float()
    x = F.interpolate(x, resized, mode="bilinear", align_corners=False)[:, [2, 1, 0]]
    x = (x - torch.tensor(IMAGENET_MEAN_RGB).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD_RGB).view(1, 3, 1, 1)
    return F.pad(x, (0, canvas[1] - resized[1], 0, canvas[0] - resized[0])).contiguous()

VARIANTS = [
    "solov2_light_448_r18",
    pytest.param("solov2_light_512_dcn_r50", marks=pytest.mark.slow),  # DCN (v1), light head
    pytest.param("solov2_r101_dcn_fpn", marks=pytest.mark.slow),  # DCNv2 in backbone, towers and mask branch
]


@pytest.mark.parametrize("name", VARIANTS)
def test_matches_official_outputs(name, tmp_path):
    ref = load_outputs(name)
    image = reference_image()
    assert int(image.astype(np.int64).sum()) == int(ref["image_sum"])
    state = deterministic_state_dict(load_keys(name)["keys"])
    assert float(sum(v.double().sum() for v in state.values() if v.is_floating_point())) == pytest.approx(
        float(ref["weights_sum"]), rel=1e-9)
    torch.save({"meta": {}, "state_dict": state}, tmp_path / "w.pth")  # mmcv save_checkpoint layout
    seg = Segmenter(name, weights=str(tmp_path / "w.pth"), score_threshold=0.0)

    canvas = tuple(ref["input_shape"].tolist()[2:])
    seg = Segmenter(name, weights=str(tmp_path / "w.pth"), score_threshold=0.0, canvas=canvas)
    assert seg.geometry(image.shape[:2]).resized == tuple(ref["resized_shape"].tolist())
    batch = canvas_input(image, seg.geometry(image.shape[:2]).resized, canvas)
    assert list(batch.shape) == ref["input_shape"].tolist()
    np.testing.assert_allclose(batch.double().sum().item(), float(ref["input_sum"]), rtol=1e-6)
    np.testing.assert_allclose(batch[0, :, :4, :4].numpy(), ref["input_corner"], atol=1e-5)
    hr, wr = ref["resized_shape"].tolist()
    np.testing.assert_allclose(batch[0, :, hr - 2:hr, wr - 2:wr + 2].numpy(), ref["input_edge"], atol=1e-5)

    out = seg.infer(batch)
    rows = torch.from_numpy(ref["cate_rows_index"])
    assert list(out["cate"].shape[1:]) == ref["cate_shape"].tolist()
    cate = point_nms_cells(out["cate"][0], seg.config.num_grids)  # upstream's get_seg reads scores after point NMS
    np.testing.assert_allclose(cate[rows].numpy(), ref["cate_rows"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(out["kernel"][0, rows].numpy(), ref["kernel_rows"], rtol=1e-4, atol=1e-4)
    assert int((cate > 0.1).sum()) == int(ref["num_candidates"])
    assert list(out["mask_feat"].shape) == ref["mask_feat_shape"].tolist()
    np.testing.assert_allclose(out["mask_feat"].double().abs().sum().item(), float(ref["mask_feat_abs_sum"]), rtol=1e-5)
    np.testing.assert_allclose(out["mask_feat"][0, ::9, ::7, ::7].numpy(), ref["mask_feat_sample"], rtol=1e-4, atol=1e-5)

    inst = seg.postprocess(out, image.shape[:2])
    assert len(inst) == len(ref["scores"]) > 10
    assert inst.class_ids.tolist() == ref["labels"].tolist()
    np.testing.assert_allclose(inst.scores, ref["scores"], rtol=1e-4, atol=1e-6)
    # masks (identical when this was written; a pixel whose value sits at the 0.5 threshold may
    # flip with float noise, so allow a few): areas and first moments of all, pixels of the first K
    assert np.abs(inst.mask_areas() - ref["mask_areas"]).max() <= 10
    moments = np.array([[np.nonzero(m)[1].sum(), np.nonzero(m)[0].sum()] for m in inst.masks_dense()], np.float64)
    np.testing.assert_allclose(moments, ref["mask_moments"], rtol=1e-4, atol=200)
    k = len(ref["masks_top"])
    assert (inst[:k].masks_dense() != ref["masks_top"]).sum() <= 10 * k
