"""Segmenter (synchronous core) and strict checkpoint loading."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rtseg.errors import CheckpointError, ConfigError
from rtseg.models import MODELS, get_config
from rtseg.families.yolact.network import Yolact
from rtseg.segmenter import Segmenter, parse_device
from rtseg.structures import Instances

SMALL = "yolact_resnet18_half_384"


@pytest.fixture(scope="module")
def small_state(tmp_path_factory):
    torch.manual_seed(1)
    net = Yolact(MODELS[SMALL]).eval()
    path = tmp_path_factory.mktemp("w") / "small.pth"
    torch.save(net.state_dict(), path)
    return net, str(path)


def test_segmenter_returns_valid_instances_for_any_image_size(small_state):
    _, path = small_state
    seg = Segmenter(SMALL, weights=path, score_threshold=0.0)
    for shape in [(240, 320, 3), (97, 411, 3)]:
        img = np.random.default_rng(0).integers(0, 255, shape, dtype=np.uint8)
        inst = seg(img)
        assert isinstance(inst, Instances)
        assert inst.image_size == shape[:2]
        assert np.all(inst.boxes[:, 0] <= inst.boxes[:, 2]) and np.all(inst.boxes[:, 2] <= shape[1])
        assert np.all(np.diff(inst.scores) <= 0)
        assert len(inst) <= MODELS[SMALL].max_num_detections


def test_weights_round_trip_gives_identical_outputs(small_state):
    net, path = small_state
    seg = Segmenter(SMALL, weights=path)
    x = torch.randn(1, 3, 384, 384)
    with torch.no_grad():
        a, b = net(x), seg.net(x)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)


def test_wrapped_checkpoints_load(small_state, tmp_path):
    net, _ = small_state
    for wrapper in ("model", "state_dict"):
        p = tmp_path / f"{wrapper}.pth"
        torch.save({wrapper: net.state_dict(), "iteration": 5}, p)
        Segmenter(SMALL, weights=str(p))


def test_legacy_keys_are_dropped_as_upstream_does(small_state, tmp_path):
    net, _ = small_state
    state = dict(net.state_dict())
    state["backbone.layer1.0.conv1.weight"] = torch.zeros(1)  # pre-1.0 name, ignored upstream
    state["fpn.downsample_layers.2.weight"] = torch.zeros(1)  # beyond num_downsample, ignored upstream
    p = tmp_path / "legacy.pth"
    torch.save(state, p)
    Segmenter(SMALL, weights=str(p))


@pytest.mark.parametrize("case", ["missing", "empty", "garbage", "other_model", "nan", "not_tensors", "directory"])
def test_bad_checkpoints_are_refused_in_one_line(small_state, tmp_path, case):
    net, _ = small_state
    p = tmp_path / "w.pth"
    if case == "empty":
        p.write_bytes(b"")
    elif case == "garbage":
        p.write_bytes(b"this is not a checkpoint" * 10)
    elif case == "other_model":
        torch.save(Yolact(MODELS["yolact_plus_resnet50"]).state_dict(), p)
    elif case == "nan":
        state = dict(net.state_dict())
        state["fpn.pred_layers.0.weight"] = torch.full_like(state["fpn.pred_layers.0.weight"], float("nan"))
        torch.save(state, p)
    elif case == "not_tensors":
        torch.save({"a": 1}, p)
    elif case == "directory":
        p = tmp_path
    with pytest.raises(CheckpointError) as info:
        Segmenter(SMALL, weights=str(p))
    msg = str(info.value)
    assert "\n" not in msg and str(p) in msg
    expected = {"missing": "not found", "empty": "empty (0 bytes)", "garbage": "not a readable PyTorch checkpoint",
                "other_model": "does not fit", "nan": "NaN", "not_tensors": "expected a state_dict",
                "directory": "is a directory"}[case]
    assert expected in msg


def test_checkpoint_mismatch_lists_missing_unexpected_and_misshaped(small_state, tmp_path):
    net, _ = small_state
    state = dict(net.state_dict())
    del state["proto_net.0.weight"]
    state["extra.weight"] = torch.zeros(3)
    state["fpn.lat_layers.0.bias"] = torch.zeros(7)
    p = tmp_path / "w.pth"
    torch.save(state, p)
    with pytest.raises(CheckpointError) as info:
        Segmenter(SMALL, weights=str(p))
    msg = str(info.value)
    assert "missing proto_net.0.weight" in msg
    assert "unexpected extra.weight" in msg
    assert "fpn.lat_layers.0.bias (7,) vs (96,)" in msg


def test_unknown_model_and_device_and_threshold():
    with pytest.raises(ConfigError, match="unknown model 'yolact_resnet5'; did you mean yolact_resnet50"):
        get_config("yolact_resnet5")
    with pytest.raises(ConfigError, match="unknown device 'gpu0'"):
        parse_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA GPU"):
            parse_device("cuda")
    with pytest.raises(ConfigError, match=r"score threshold must be in \[0, 1\)"):
        Segmenter(SMALL, score_threshold=1.5)


def test_segmenter_rejects_non_image_input(small_state):
    seg = Segmenter(SMALL, weights=small_state[1])
    with pytest.raises(ValueError, match=r"uint8 \(H, W, 3\) BGR"):
        seg(np.zeros((10, 10), np.uint8))


# -- input geometry per frame size, --canvas, rank_by (issue 16) -----------------------------------

def test_geometry_follows_the_frame_once_per_size_and_canvas_fixes_it():
    from rtseg.errors import ConfigError

    seg = Segmenter("solov2_light_448_r18", score_threshold=0.0)  # random init: shapes only
    assert seg.geometry_follows_frame
    first = seg.geometry((480, 288))
    assert seg.geometry((480, 288)) is first and first.padded == (768, 448)
    assert tuple(seg.preprocess(np.zeros((300, 451, 3), np.uint8)).shape) == (1, 3, 448, 704)
    fixed = Segmenter("solov2_light_448_r18", canvas=(448, 768))
    assert not fixed.geometry_follows_frame and fixed.input_size == (448, 768)
    assert tuple(fixed.preprocess(np.zeros((480, 288, 3), np.uint8)).shape) == (1, 3, 448, 768)
    with pytest.raises(ConfigError, match="multiples of 32"):
        Segmenter("solov2_light_448_r18", canvas=(450, 768))
    with pytest.raises(ConfigError, match="--canvas 448x768"):
        Segmenter("yolact_resnet18_half_384", canvas=(448, 768))
    with pytest.raises(ConfigError, match="rank_by"):
        Segmenter(rank_by="box")


def test_rank_by_mask_score_ranks_thresholds_and_publishes_the_mask_score():
    from rtseg.structures import Instances

    masks = np.zeros((3, 4, 4), bool)
    inst = Instances(boxes=np.zeros((3, 4), np.float32), scores=np.array([0.9, 0.8, 0.7], np.float32),
                     class_ids=np.array([0, 1, 2], np.int64), masks=masks, image_size=(4, 4),
                     mask_scores=np.array([0.1, 0.6, -0.2], np.float32))
    ranked = inst.ranked_by_mask_score(0.05)
    assert ranked.class_ids.tolist() == [1, 0] and ranked.scores.tolist() == pytest.approx([0.6, 0.1])
    assert ranked.mask_scores is None
    assert inst[[2, 0]].mask_scores.tolist() == pytest.approx([-0.2, 0.1])


def test_a_fixed_shape_graph_is_refused_for_per_frame_geometry_unless_the_canvas_matches():
    from rtseg.errors import ConfigError

    seg = Segmenter("solov2_light_448_r18")
    with pytest.raises(ConfigError, match="fixed 448x768 input .* pass --canvas 448x768"):
        seg._check_graph_shape("m.onnx", [1, 3, 448, 768])
    seg._check_graph_shape("m.onnx", [1, 3, "height", "width"])  # symbolic: fine
    Segmenter("solov2_light_448_r18", canvas=(448, 768))._check_graph_shape("m.onnx", [1, 3, 448, 768])
    with pytest.raises(ConfigError, match="not the --canvas 448x736"):
        Segmenter("solov2_light_448_r18", canvas=(448, 736))._check_graph_shape("m.onnx", [1, 3, 448, 768])
    Segmenter()._check_graph_shape("m.onnx", [1, 3, 384, 384])  # the built-in model's fixed input


# -- issue 17 item 5: one path for one frame and for a batch; --half ----------------------------------

def test_process_is_process_batch_of_one(small_state):
    _, path = small_state
    seg = Segmenter(SMALL, weights=path, score_threshold=0.0)
    img = np.random.default_rng(3).integers(0, 255, (240, 320, 3), dtype=np.uint8)
    one, times = seg.process(img)
    (batched, btimes), = seg.process_batch([img])
    assert len(one) > 0 and len(one) == len(batched)
    for field in ("boxes", "scores", "class_ids"):
        assert np.array_equal(getattr(one, field), getattr(batched, field)), field
    assert one.masks == batched.masks  # CompactMasks: the same pixels
    for t in (times, btimes):  # the stage clock's times: each stage measured, none negative
        assert t.preprocess >= 0 and t.inference > 0 and t.postprocess >= 0


def test_half_is_refused_on_a_cpu_before_the_model_is_built():
    with pytest.raises(ConfigError, match=r"^--half runs the network in float16 on a CUDA GPU: it needs --device "
                                          r"cuda\[:N\], got 'cpu'$"):
        Segmenter(SMALL, half=True)
