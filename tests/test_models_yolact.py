"""YOLACT / YOLACT++ faithfulness: official checkpoint layout key for key, anchors, outputs.

The fixtures in ``tests/fixtures/official`` were read off the official dbolya/yolact code
(see that folder's README); nothing here runs upstream code.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from rtseg.models import MODELS
from rtseg.families.yolact.network import Yolact, make_priors

FIXTURES = Path(__file__).parent / "fixtures" / "official"
KEY_FILES = sorted((FIXTURES / "yolact_keys").glob("*.json"))
IMPLEMENTED = {p.stem for p in KEY_FILES if p.stem in MODELS}


def load_keys(name: str) -> dict:
    return json.loads((FIXTURES / "yolact_keys" / f"{name}.json").read_text())


def test_every_official_variant_we_list_has_a_key_fixture():
    official = {n for n, c in MODELS.items() if c.family == "yolact" and not n.startswith("yolact_resnet18")}
    assert official <= IMPLEMENTED, f"no fixture for {sorted(official - IMPLEMENTED)}"


@pytest.mark.parametrize("name", sorted(IMPLEMENTED))
def test_state_dict_matches_official_checkpoint_key_for_key(name):
    fixture = load_keys(name)
    ours = {k: list(v.shape) for k, v in Yolact(MODELS[name]).state_dict().items()}
    official = fixture["keys"]
    assert [k for k in official if k not in ours] == []  # missing
    assert [k for k in ours if k not in official] == []  # unexpected
    assert {k: (official[k], ours[k]) for k in official if official[k] != ours[k]} == {}  # mis-shaped
    assert list(ours) == list(official)  # same order as upstream's state_dict


@pytest.mark.parametrize("name", sorted(IMPLEMENTED))
def test_anchors_match_official(name):
    fixture = load_keys(name)
    priors = make_priors(MODELS[name])
    assert priors.shape[0] == fixture["num_priors"]
    sample = fixture["prior_sample"]
    first = torch.tensor(sample["first3"])
    last = torch.tensor(sample["last3"])
    torch.testing.assert_close(priors[: len(first)], first, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(priors[-len(last):], last, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", sorted(IMPLEMENTED))
def test_head_output_shapes_match_official(name):
    fixture = load_keys(name)
    shapes = fixture.get("head_output_shapes")
    if not shapes:
        pytest.skip(f"fixture for {name} records no head output shapes")
    cfg = MODELS[name]
    net = Yolact(cfg).eval()
    with torch.no_grad():
        out = net(torch.zeros(1, 3, cfg.max_size, cfg.max_size))
    names = {"loc": "loc", "conf": "conf", "mask": "coef", "proto": "proto"}
    for theirs, ours in names.items():
        if theirs in shapes:
            assert list(out[ours].shape) == list(shapes[theirs]), theirs
