"""Schema 1.2's optional per-instance ``mask_score``: written when the instances carry mask
scores, decoded back exactly, absent otherwise, and all-or-none within a message."""

from __future__ import annotations

import json

import numpy as np
import pytest

from rtseg.errors import PublishError
from rtseg.wire import SCHEMA, decode_message, encode_message
from rtseg.structures import Frame, Instances


def _instances(mask_scores) -> Instances:
    masks = np.zeros((2, 6, 5), bool)
    masks[0, 1:3, 1:4] = True
    masks[1, 4:, :2] = True
    return Instances(boxes=np.array([[1, 1, 4, 3], [0, 4, 2, 6]], np.float32), scores=np.array([0.9, 0.4], np.float32),
                     class_ids=np.array([0, 1], np.int64), masks=masks, image_size=(6, 5), mask_scores=mask_scores)


def _frame(instances: Instances) -> Frame:
    return Frame(seq=3, source_id="t", capture_time=1.0, image=np.zeros((6, 5, 3), np.uint8), instances=instances)


def test_mask_scores_round_trip_and_are_optional():
    assert SCHEMA == "rtseg.instances/1.3"  # mask_score since 1.2
    with_scores = _instances(np.array([0.75, -0.03125], np.float32))  # CenterMask's maskiou is not clamped
    decoded = decode_message(encode_message(_frame(with_scores), ["a", "b"])).instances
    assert decoded == with_scores
    np.testing.assert_array_equal(decoded.mask_scores, with_scores.mask_scores)

    parts = encode_message(_frame(_instances(None)), ["a", "b"])
    assert all("mask_score" not in e for e in json.loads(parts[1])["instances"])
    assert decode_message(parts).instances.mask_scores is None


def test_mask_score_on_some_instances_only_is_refused():
    topic, header, blob = encode_message(_frame(_instances(np.array([0.5, 0.25], np.float32))), ["a", "b"])
    h = json.loads(header)
    del h["instances"][1]["mask_score"]
    with pytest.raises(PublishError, match="mask_score.*every instance or on none"):
        decode_message([topic, json.dumps(h).encode(), blob])
