"""Official SOLOv2 checkpoints, where ../shared/weights holds them, on a real photograph.

The checkpoints cannot be downloaded here (Hugging Face / OpenMMLab / cloudstor links); put a
file named as its publisher names it in ``shared/weights/`` beside the repository (AdelaiDet's,
whose names clash with WXinlong's, in ``shared/weights/adelaidet/``) and these tests run.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

WEIGHTS_DIR = Path(__file__).resolve().parents[2] / "shared" / "weights"

#: (variant, file under WEIGHTS_DIR): WXinlong/SOLO README, mmdetection configs/solov2/metafile.yml,
#: AdelaiDet configs/SOLOv2/README.md
CHECKPOINTS = [
    ("solov2_r50_fpn", "SOLOv2_R50_1x.pth"),
    ("solov2_r50_fpn", "SOLOv2_R50_3x.pth"),
    ("solov2_r101_fpn", "SOLOv2_R101_3x.pth"),
    ("solov2_r101_dcn_fpn", "SOLOv2_R101_DCN_3x.pth"),
    ("solov2_light_448_r18", "SOLOv2_LIGHT_448_R18_3x.pth"),
    ("solov2_light_448_r34", "SOLOv2_LIGHT_448_R34_3x.pth"),
    ("solov2_light_448_r50", "SOLOv2_LIGHT_448_R50_3x.pth"),
    ("solov2_light_512_dcn_r50", "SOLOv2_LIGHT_512_DCN_R50_3x.pth"),
    ("solov2_r50_fpn", "solov2_r50_fpn_1x_coco_20220512_125858-a357fa23.pth"),
    ("solov2_r50_fpn", "solov2_r50_fpn_3x_coco_20220512_125856-fed092d4.pth"),
    ("solov2_r101_dcn_fpn", "solov2_r101_dcn_fpn_3x_coco_20220513_214734-16c966cb.pth"),
    ("solov2_light_448_r18", "solov2_light_r18_fpn_3x_coco_20220511_083717-75fa355b.pth"),
    ("solov2_light_448_r50", "solov2_light_r50_fpn_3x_coco_20220512_165256-c93a6074.pth"),
    ("solov2_adet_r50_fpn", "adelaidet/SOLOv2_R50_3x.pth"),
    ("solov2_adet_r101_fpn", "adelaidet/SOLOv2_R101_3x.pth"),
]


@pytest.mark.parametrize("name,file", CHECKPOINTS, ids=[f"{n}:{Path(f).name}" for n, f in CHECKPOINTS])
def test_official_checkpoint_loads_strictly_and_finds_the_astronaut(name, file):
    path = WEIGHTS_DIR / file
    if not path.exists():
        pytest.skip(f"no official checkpoint {file} in {WEIGHTS_DIR} (cannot be downloaded here)")
    skimage_data = pytest.importorskip("skimage.data")
    from rtseg.segmenter import Segmenter

    seg = Segmenter(name, weights=str(path), score_threshold=0.3)
    inst = seg(np.ascontiguousarray(skimage_data.astronaut()[..., ::-1]))
    found = {seg.class_names[c] for c in inst.class_ids}
    assert "person" in found, f"expected a person, found {sorted(found)}"
    best = inst[int(np.flatnonzero(inst.class_ids == seg.class_names.index("person"))[0])]
    assert best.mask_areas()[0] > 0.1 * 512 * 512  # the astronaut fills much of the photograph
