"""End to end: ``Segmenter("solov2_light_resnet18_half_384")`` on a real photograph.

The plumbing and the contract of the result, with the built-in weights (trained on the
synthetic shapes; their accuracy is tests/test_builtin_models.py's) and with weights saved
from the network (rtseg's own checkpoint layout).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rtseg.families.solov2 import SOLOV2
from rtseg.models import MODELS
from rtseg.families.solov2.postprocess import masks_to_boxes
from rtseg.segmenter import Segmenter

NAME = "solov2_light_resnet18_half_384"


@pytest.fixture(scope="module")
def photo():
    skimage_data = pytest.importorskip("skimage.data")
    return np.ascontiguousarray(skimage_data.coffee()[..., ::-1])  # 400 x 600 BGR, not square


def check_instances(inst, image_shape, num_classes):
    h, w = image_shape[:2]
    assert inst.image_size == (h, w) and inst.masks_dense().shape == (len(inst), h, w)
    assert np.all(np.diff(inst.scores) <= 0) and np.all((inst.scores > 0) & (inst.scores <= 1))
    assert np.all((inst.class_ids >= 0) & (inst.class_ids < num_classes))
    b = inst.boxes
    assert np.all((0 <= b[:, 0]) & (b[:, 0] <= b[:, 2]) & (b[:, 2] <= w) & (0 <= b[:, 1]) & (b[:, 1] <= b[:, 3])
                  & (b[:, 3] <= h))
    np.testing.assert_array_equal(b, masks_to_boxes(torch.from_numpy(inst.masks_dense())).numpy())


def test_segmenter_runs_the_small_solov2_on_a_photograph(photo):
    seg = Segmenter(NAME, score_threshold=0.0)
    assert seg.weights_origin == "built-in" and seg.input_size == (384, 384)
    inst, times = seg.process(photo)
    assert len(inst) > 0  # trained on shapes, it still scores some of the photograph's round parts above 0.1
    check_instances(inst, photo.shape, len(seg.class_names))
    assert times.inference > 0


def test_segmenter_loads_rtseg_fp16_weights_and_repeats_itself(photo, tmp_path):
    cfg = MODELS[NAME]
    torch.manual_seed(1)
    net = SOLOV2.build(cfg)
    SOLOV2.init_from_scratch(net)
    with torch.no_grad():  # a nudge so a few category scores pass 0.1 (the prior puts them at 0.01)
        net.bbox_head.solo_cate.bias.fill_(-2.6)
    torch.save({k: v.half() for k, v in net.state_dict().items()}, tmp_path / "w.pth")  # as rtseg ships weights
    seg = Segmenter(NAME, weights=str(tmp_path / "w.pth"), score_threshold=0.05)
    a, b = seg(photo), seg(photo)
    assert a == b and len(a) > 0
    check_instances(a, photo.shape, len(cfg.class_names))
    assert all(s > 0.05 for s in a.scores)
    assert torch.equal(seg.net.bbox_head.solo_cate.bias, torch.full((5,), -2.6).half().float())  # fp16 -> fp32
