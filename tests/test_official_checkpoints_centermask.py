"""Official centermask2 checkpoints, where ../shared/weights holds them, on a real photograph.

The checkpoints (Dropbox links in youngwanLEE/centermask2's README) cannot be downloaded here;
put e.g. ``centermask2-lite-V-19-eSE-FPN-ms-4x.pth`` in ``shared/weights/`` beside the
repository and these tests run. File names: ``checkpoint_file`` of
``tests/fixtures/official/centermask_keys/<variant>.json``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from rtseg.models import MODELS

WEIGHTS_DIR = Path(__file__).resolve().parents[2] / "shared" / "weights"
KEYS_DIR = Path(__file__).parent / "fixtures" / "official" / "centermask_keys"
OFFICIAL = sorted(n for n, c in MODELS.items() if c.family == "centermask" and n.startswith("centermask2_"))


def checkpoint_for(name: str) -> Path:
    file_name = json.loads((KEYS_DIR / f"{name}.json").read_text())["checkpoint_file"]
    path = WEIGHTS_DIR / file_name
    if not path.exists():
        pytest.skip(f"no official checkpoint {file_name} in {WEIGHTS_DIR} (cannot be downloaded here)")
    return path


@pytest.mark.parametrize("name", OFFICIAL)
def test_official_checkpoint_loads_strictly_and_finds_the_astronaut(name):
    path = checkpoint_for(name)
    skimage_data = pytest.importorskip("skimage.data")
    from rtseg.segmenter import Segmenter

    seg = Segmenter(name, weights=str(path), score_threshold=0.3)
    rgb = skimage_data.astronaut()
    inst = seg(np.ascontiguousarray(rgb[..., ::-1]))
    found = [seg.class_names[c] for c in inst.class_ids]
    assert "person" in found, f"expected a person in the astronaut photograph, found {found}"
    person = inst[int(found.index("person"))]
    assert person.mask_areas()[0] > 0
    x1, y1, x2, y2 = person.boxes[0]
    assert (x2 - x1) * (y2 - y1) > 0.1 * 512 * 512  # the astronaut fills much of the frame
