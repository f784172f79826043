"""The weights shipped in the package segment what they were trained on.

Each built-in model is evaluated with pycocotools on synthetic images it never saw (seed
9090; training used seed 0, validation 1001, the held-out table in docs/builtin-model.md seed
2002). The bar, mask AP 0.35 on 16 images, sits well under the held-out figures (0.50 and up on
200 images) so that a small set's spread does not fail it, and far above what untrained or
wrongly loaded weights give (about 0).
"""

from __future__ import annotations

import pytest

from rtseg.data.synthetic_coco import generate_dataset
from rtseg.evaluate import evaluate
from rtseg.segmenter import builtin_weights_path

BUILTIN = ["yolact_resnet18_half_384", "centermask_lite_vovnet19_quarter_384", "solov2_light_resnet18_half_384"]


@pytest.fixture(scope="module")
def unseen(tmp_path_factory):
    folder = tmp_path_factory.mktemp("unseen") / "data"
    generate_dataset(str(folder), images=16, seed=9090)
    return str(folder)


@pytest.mark.parametrize("model", BUILTIN)
def test_builtin_weights_segment_unseen_synthetic_images(model, unseen):
    assert builtin_weights_path(model) is not None, f"the package lacks {model}'s built-in weights"
    result = evaluate(model, weights=None, data=unseen)
    assert result.images == 16 and result.detections > 0
    assert result.segm["AP"] >= 0.35, result.segm
    assert result.bbox["AP"] >= 0.35, result.bbox


def test_a_missing_builtin_file_is_reported_as_missing():
    # `rtseg models` says "built in" from the file itself; the config's text is what a user sees
    # (there and in the random-initialisation warning) only when the file is absent
    from rtseg.models import MODELS
    from rtseg.models.checkpoint import BUILTIN_WEIGHTS_MISSING

    shipped = {name for name in MODELS if builtin_weights_path(name) is not None}
    assert shipped == set(BUILTIN)
    assert {name for name, cfg in MODELS.items() if cfg.weights_source == BUILTIN_WEIGHTS_MISSING} == shipped
