"""Official YOLACT / YOLACT++ checkpoints, where ../shared/weights holds them, on real photographs.

The checkpoints cannot be downloaded here; put e.g. ``yolact_plus_resnet50_54_800000.pth`` (with
a SOURCE.txt) in ``shared/weights/`` beside the repository and these tests run.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from rtseg.models import MODELS

WEIGHTS_DIR = Path(__file__).resolve().parents[2] / "shared" / "weights"
OFFICIAL = [n for n, c in MODELS.items() if c.family == "yolact" and not n.startswith("yolact_resnet18")]


def checkpoint_for(name: str) -> Path:
    path = WEIGHTS_DIR / f"{name}_54_800000.pth"
    if not path.exists():
        pytest.skip(f"no official checkpoint {path.name} in {WEIGHTS_DIR} (cannot be downloaded here)")
    return path


@pytest.mark.parametrize("name", OFFICIAL)
def test_official_checkpoint_loads_strictly_and_finds_objects_in_photographs(name):
    skimage_data = pytest.importorskip("skimage.data")
    from rtseg.segmenter import Segmenter

    seg = Segmenter(name, weights=str(checkpoint_for(name)), score_threshold=0.3)
    expected = {"astronaut": {"person"}, "chelsea": {"cat"}, "coffee": {"cup"}}
    for photo, classes in expected.items():
        rgb = getattr(skimage_data, photo)()
        inst = seg(np.ascontiguousarray(rgb[..., ::-1]))
        found = {seg.class_names[c] for c in inst.class_ids}
        assert classes <= found, f"{photo}: expected {classes}, found {found}"
        assert (inst.mask_areas() > 0).all()
