"""rtseg.stream() (rtseg.api) and Instances.to_supervision(): a real model, real files, real supervision."""

from __future__ import annotations

import gc
import importlib.util
import threading

import numpy as np
import pytest

import rtseg
from rtseg.errors import ConfigError, SourceError
from rtseg.bench import write_video
from rtseg.segmenter import Segmenter
from rtseg.structures import Frame, Instances
from rtseg.synthetic import SyntheticVideo

N_FRAMES = 12
H, W = 240, 320


@pytest.fixture(scope="module")
def segmenter():
    return Segmenter("yolact_resnet18_half_384", score_threshold=0.3)


@pytest.fixture(scope="module")
def video_file(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("video") / "synthetic.avi")
    write_video(path, (H, W), N_FRAMES, seed=1, fps=25.0)
    return path


def _run_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name.startswith("rtseg-")}


def test_stream_yields_every_frame_of_a_file_in_order_with_its_instances(segmenter, video_file):
    frames = list(rtseg.stream(video_file, model=segmenter))
    assert [f.seq for f in frames] == list(range(N_FRAMES))
    assert all(isinstance(f, Frame) and isinstance(f.instances, Instances) for f in frames)
    assert all(f.rendered is None and "end to end" in f.timings for f in frames)
    assert sum(len(f.instances) for f in frames) > 0
    assert not _run_threads()


def test_stream_renders_on_request_and_takes_several_streams(segmenter, video_file):
    frames = list(rtseg.stream([video_file, "synthetic"], model=segmenter, names=["file", "synth"], max_frames=3,
                               render=True))
    by_stream = {name: [f.seq for f in frames if f.stream == name] for name in ("file", "synth")}
    assert by_stream == {"file": [0, 1, 2], "synth": [0, 1, 2]}
    assert all(f.rendered is not None and f.rendered.shape == f.image.shape for f in frames)


def test_leaving_the_loop_stops_the_pipeline_and_leaves_no_thread(segmenter):
    """``break`` out of an endless source: the generator is closed when the loop drops it, the
    pipeline stops, and every thread of the run has ended before the next statement."""
    before = set(threading.enumerate())
    seqs = []
    for frame in rtseg.stream("synthetic", model=segmenter, buffer=1):
        seqs.append(frame.seq)
        if len(seqs) == 3:
            break
    assert seqs == [0, 1, 2]
    assert not _run_threads() and set(threading.enumerate()) <= before


def test_closing_the_generator_and_an_error_in_the_loop_stop_it_too(segmenter):
    results = rtseg.stream("synthetic", model=segmenter)
    assert next(results).seq == 0
    results.close()
    assert not _run_threads()
    with pytest.raises(ZeroDivisionError):
        for _ in rtseg.stream("synthetic", model=segmenter):
            1 / 0
    gc.collect()
    assert not _run_threads()


def test_errors_are_rtsegs_one_line_errors(segmenter, tmp_path):
    with pytest.raises(ConfigError, match="unknown model 'yolact_resnet5'"):
        rtseg.stream("synthetic", model="yolact_resnet5")
    with pytest.raises(ConfigError, match="buffer must be an int >= 1, got 0"):
        rtseg.stream("synthetic", model=segmenter, buffer=0)
    with pytest.raises(SourceError, match="no such file"):
        next(iter(rtseg.stream(str(tmp_path / "missing.mp4"), model=segmenter)))
    assert not _run_threads()


def test_track_gives_ids_that_follow_the_objects_and_a_bad_tracker_is_one_error(segmenter):
    pytest.importorskip("trackers", reason="needs the track extra (pip install --no-deps trackers, see pyproject)")
    frames = list(rtseg.stream("synthetic:0:320x240", model=segmenter, track=True, max_frames=8))
    assert [f.seq for f in frames] == list(range(8))
    ids = [f.instances.track_ids for f in frames]
    assert all(i is not None and len(i) == len(f.instances) for i, f in zip(ids, frames))
    confirmed = [set(i[i >= 0].tolist()) for i in ids[2:]]
    assert confirmed[-1] and confirmed[-1] & set().union(*confirmed[:-1])  # the same ids over frames
    with pytest.raises(ConfigError, match="unknown tracker 'kalman'"):
        rtseg.stream("synthetic", model=segmenter, track="kalman")


# -- supervision ------------------------------------------------------------------------------
needs_supervision = pytest.mark.skipif(importlib.util.find_spec("supervision") is None,
                                       reason="needs supervision (pip install 'rtseg[supervision]')")


@needs_supervision
def test_to_supervision_feeds_supervisions_annotators_and_zones(segmenter):
    import supervision as sv

    image = SyntheticVideo(seed=0, size=(H, W)).frame(0).image
    instances, _ = segmenter.process(image)
    assert len(instances) > 0
    detections = instances.to_supervision()
    assert isinstance(detections, sv.Detections) and len(detections) == len(instances)
    np.testing.assert_array_equal(detections.xyxy, instances.boxes)
    np.testing.assert_array_equal(detections.confidence, instances.scores)
    np.testing.assert_array_equal(detections.class_id, instances.class_ids)
    np.testing.assert_array_equal(detections.mask, instances.masks_dense())
    assert detections.tracker_id is None
    detections.xyxy[0, 0] += 1  # copies: supervision may change them without touching rtseg's
    assert detections.xyxy[0, 0] != instances.boxes[0, 0]

    annotated = sv.MaskAnnotator(opacity=1.0).annotate(image.copy(), detections)
    covered = instances.masks_dense().any(axis=0)
    assert (annotated[covered] != image[covered]).any(axis=1).mean() > 0.9  # the masks are painted
    np.testing.assert_array_equal(annotated[~covered], image[~covered])  # and nothing else
    labels = [segmenter.class_names[c] for c in instances.class_ids]
    sv.LabelAnnotator().annotate(annotated, detections, labels=labels)

    # a zone over the left half counts the objects whose box bottom centre lies in it
    zone = sv.PolygonZone(np.array([[0, 0], [W // 2, 0], [W // 2, H], [0, H]]))
    inside = zone.trigger(detections)
    centre_x = (instances.boxes[:, 0] + instances.boxes[:, 2]) / 2
    np.testing.assert_array_equal(inside, centre_x < W // 2)
    assert zone.current_count == int((centre_x < W // 2).sum())


@needs_supervision
def test_to_supervision_of_no_instances_is_empty_detections():
    empty = Instances.empty((H, W)).to_supervision()
    assert len(empty) == 0 and empty.mask.shape == (0, H, W) and empty.xyxy.shape == (0, 4)


@needs_supervision
def test_to_supervision_carries_track_ids(segmenter):
    import dataclasses

    if "track_ids" not in {f.name for f in dataclasses.fields(Instances)}:
        pytest.skip("Instances has no track_ids in this version (tracking not merged)")
    inst, _ = segmenter.process(SyntheticVideo(seed=0, size=(H, W)).frame(0).image)
    ids = np.arange(len(inst), dtype=np.int64) + 7
    tracked = dataclasses.replace(inst, track_ids=ids).to_supervision()
    assert tracked.tracker_id.tolist() == ids.tolist()


def test_to_supervision_without_supervision_names_the_extra(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "supervision", None)  # what `import supervision` finds when it is not installed
    with pytest.raises(ConfigError, match=r"pip install 'rtseg\[supervision\]'"):
        Instances.empty((H, W)).to_supervision()
