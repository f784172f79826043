"""CenterMask faithfulness: centermask2's checkpoint layout key for key, level sizes, and the
outputs of the official network (run outside this repository, see
tests/fixtures/official/CENTERMASK.md) through rtseg's whole Segmenter path."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from rtseg.errors import CheckpointError, ConfigError
from rtseg.models import MODELS
from rtseg.families.centermask.network import CenterMask, CenterMaskConfig, make_locations
from rtseg.models.checkpoint import load_weights
from rtseg.models.vovnet import VOVNET_SPECS, VoVNetSpec

FIXTURES = Path(__file__).parent / "fixtures" / "official"
KEY_FILES = sorted((FIXTURES / "centermask_keys").glob("*.json"))
OFFICIAL = sorted(n for n, c in MODELS.items() if c.family == "centermask" and n.startswith("centermask2_"))
TINY = CenterMaskConfig(name="tiny", class_names=("a", "b"), vovnet=VoVNetSpec((8, 8, 16), (8, 8, 8, 8), (16, 16, 16, 16), 1,
                                                                             (1, 1, 1, 1)), vovnet_norm="BN",
                        fpn_channels=32, fcos_num_convs=1, mask_num_conv=1, mask_conv_dim=16, maskiou_num_conv=1,
                        maskiou_conv_dim=8, maskiou_fc_dim=16, input_height=96, input_width=160, keep_ratio=False)


def load_keys(name: str) -> dict:
    return json.loads((FIXTURES / "centermask_keys" / f"{name}.json").read_text())


def meta_state_shapes(cfg: CenterMaskConfig) -> dict[str, list[int]]:
    with torch.device("meta"):  # shapes only: no memory for the 97 M parameters of V-99
        net = CenterMask(cfg)
    return {k: list(v.shape) for k, v in net.state_dict().items()}


def test_every_official_variant_we_list_has_a_key_fixture():
    assert OFFICIAL, "no centermask2_* variants registered"
    assert set(OFFICIAL) <= {p.stem for p in KEY_FILES}


@pytest.mark.parametrize("name", OFFICIAL)
def test_state_dict_matches_official_checkpoint_key_for_key(name):
    official = load_keys(name)["keys"]
    ours = meta_state_shapes(MODELS[name])
    assert [k for k in official if k not in ours] == []  # missing
    assert [k for k in ours if k not in official] == []  # unexpected
    assert {k: (official[k], ours[k]) for k in official if official[k] != ours[k]} == {}  # mis-shaped
    assert list(ours) == list(official)  # upstream's order


@pytest.mark.parametrize("name", OFFICIAL)
def test_config_mirrors_the_official_config(name):
    fixture, cfg = load_keys(name), MODELS[name]
    assert VOVNET_SPECS[fixture["conv_body"]] == cfg.vovnet
    assert fixture["fpn_out_channels"] == cfg.fpn_channels
    fcos = fixture["fcos"]
    assert (fcos["NUM_CLS_CONVS"], fcos["NUM_BOX_CONVS"]) == (cfg.fcos_num_convs, cfg.fcos_num_convs)
    assert (fcos["INFERENCE_TH_TEST"], fcos["PRE_NMS_TOPK_TEST"], fcos["NMS_TH"], fcos["POST_NMS_TOPK_TEST"]) == (
        cfg.score_thresh, cfg.pre_nms_topk, cfg.nms_thresh, cfg.post_nms_topk)
    assert fcos["THRESH_WITH_CTR"] is False
    assert fixture["roi_mask_head"]["POOLER_RESOLUTION"] == cfg.pooler_resolution
    assert fixture["roi_mask_head"]["POOLER_SAMPLING_RATIO"] == cfg.pooler_sampling_ratio
    assert fixture["roi_mask_head"]["POOLER_TYPE"] == "ROIAlignV2"  # aligned=True, as pool_rois uses
    assert fixture["roi_mask_head"]["ASSIGN_CRITERION"] == "ratio"
    assert fixture["roi_heads_in_features"] == ["p3", "p4", "p5"]
    inp = fixture["input"]
    assert (inp["min_size_test"], inp["max_size_test"]) == (cfg.min_size_test, cfg.max_size_test)
    assert tuple(inp["pixel_mean"]) == cfg.pixel_mean and tuple(inp["pixel_std"]) == cfg.pixel_std
    assert inp["format"] == "BGR" and fixture["vovnet_norm"] == cfg.vovnet_norm
    # the fixed canvas is the official padded size of an image at max_size_test (size_divisibility 32)
    assert list(fixture["probe_input_shape"][2:]) == list(cfg.input_size)
    assert all(v % 32 == 0 for v in cfg.input_size) and cfg.input_width >= cfg.max_size_test


@pytest.mark.parametrize("name", OFFICIAL)
def test_level_sizes_match_the_official_fpn(name):
    fixture, cfg = load_keys(name), MODELS[name]
    _, _, sizes = make_locations(cfg.input_size)
    official = [fixture["fpn_output_shapes"][f"p{level}"][2:] for level in range(3, 8)]
    assert [list(s) for s in sizes] == official


def test_forward_output_shapes_and_locations():
    net = CenterMask(TINY).eval()
    with torch.no_grad():
        out = net(torch.zeros(2, 3, 96, 160))
    sizes = [(12, 20), (6, 10), (3, 5), (2, 3), (1, 2)]
    assert list(net.level_sizes) == sizes
    p = sum(h * w for h, w in sizes)
    assert out["cls_logits"].shape == (2, p, 2) and out["bbox_reg"].shape == (2, p, 4)
    assert out["ctrness_logits"].shape == (2, p)
    assert [tuple(out[f"p{i}"].shape) for i in (3, 4, 5)] == [(2, 32, 12, 20), (2, 32, 6, 10), (2, 32, 3, 5)]
    assert (out["bbox_reg"] >= 0).all()
    # FCOS.compute_locations: stride // 2 + stride * index, row-major, P3 first
    assert net.locations[:3].tolist() == [[4.0, 4.0], [12.0, 4.0], [20.0, 4.0]]
    assert net.locations[20].tolist() == [4.0, 12.0]
    assert net.locations[-1].tolist() == [64.0 + 128.0, 64.0] and net.location_strides[-1] == 128


def test_forward_refuses_an_input_not_padded_to_32():
    net = CenterMask(TINY).eval()
    with pytest.raises(ValueError, match=r"multiples of 32 .*got \(1, 3, 96, 100\)"):
        net(torch.zeros(1, 3, 96, 100))


def test_locations_follow_the_input_size():
    net = CenterMask(TINY).eval()
    locs, strides, sizes = net.locations_for((128, 96))
    assert sizes[0] == (16, 12) and locs.shape[0] == sum(h * w for h, w in sizes) == strides.shape[0]
    assert net.locations_for(TINY.input_size)[0] is net.locations


def test_module_names_with_slashes_round_trip():
    net = CenterMask(TINY)
    keys = list(net.state_dict())
    assert "backbone.bottom_up.stem.stem_1/conv.weight" in keys
    assert "backbone.bottom_up.stage2.OSA2_1.layers.0.OSA2_1_0/conv.weight" in keys
    assert "backbone.bottom_up.stage3.OSA3_1.concat.OSA3_1_concat/norm.running_var" in keys
    other = CenterMask(TINY)
    other.load_state_dict(net.state_dict(), strict=True)
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), other.state_dict().values()))


@pytest.mark.parametrize("bad, match", [
    (dict(input_height=100), "input_height must be a positive multiple of 32"),
    (dict(input_width=0), "input_width must be a positive multiple of 32"),
    (dict(fpn_channels=48), "multiple of 32 for GroupNorm"),
    (dict(class_names=()), "at least one class"),
    (dict(input_height=64, input_width=64), "more than one value per group on P7 \\(1 x 1"),
    (dict(vovnet_norm="GN"), "'FrozenBN' or 'BN'"),
])
def test_config_errors_say_what_was_expected(bad, match):
    from dataclasses import replace

    with pytest.raises(ConfigError, match=match):
        CenterMask(replace(TINY, **bad))


def test_official_checkpoint_wrapper_and_pixel_buffers_are_handled(tmp_path):
    net = CenterMask(TINY)
    state = {k: v.clone() for k, v in net.state_dict().items()}
    path = tmp_path / "ckpt.pth"
    # detectron2 2020: {'model': state_dict incl. pixel_mean/pixel_std [3, 1, 1], 'iteration': n}
    good = dict(state, pixel_mean=torch.tensor(TINY.pixel_mean).view(3, 1, 1),
                pixel_std=torch.tensor(TINY.pixel_std).view(3, 1, 1))
    torch.save({"model": good, "iteration": 7}, path)
    load_weights(CenterMask(TINY), str(path), model_name="tiny", convert=net.load_official_state_dict)
    bad = dict(state, pixel_std=torch.tensor([57.375, 57.12, 58.395]).view(3, 1, 1))
    torch.save({"model": bad}, path)
    with pytest.raises(CheckpointError, match="pixel_std is .*57.375.* normalises with"):
        load_weights(CenterMask(TINY), str(path), model_name="tiny", convert=net.load_official_state_dict)


def test_small_model_is_what_the_docs_say():
    cfg = MODELS["centermask_lite_vovnet19_quarter_384"]
    assert cfg.input_size == (384, 384) and cfg.class_names == ("circle", "square", "triangle", "star", "ring")
    v19 = VOVNET_SPECS["V-19-eSE"]
    quarter = lambda t: tuple(c // 4 for c in t)  # noqa: E731
    assert cfg.vovnet.stage_conv_ch == quarter(v19.stage_conv_ch) and cfg.vovnet.stage_out_ch == quarter(v19.stage_out_ch)
    assert cfg.vovnet.stem == quarter(v19.stem) and cfg.vovnet.layer_per_block == v19.layer_per_block
    assert not cfg.keep_ratio


# -- against the official network (tests/fixtures/official/centermask_outputs) --------------------

def _compare_with_official(variant: str, tmp_path, device: str = "cpu") -> None:
    from official_reference_centermask import (
        deterministic_state_dict,
        load_official_keys,
        load_official_outputs,
        reference_image,
    )
    from rtseg.families import FAMILIES
    from rtseg.families.base import TorchStage2
    from rtseg.families.centermask import postprocess as post
    from rtseg.segmenter import Segmenter

    ref = load_official_outputs(variant)
    weights = tmp_path / f"{variant}.pth"
    state = deterministic_state_dict(load_official_keys(variant)["keys"])
    assert sum(float(v.double().sum()) for v in state.values()) == pytest.approx(float(ref["weights_sum"]), rel=1e-9)
    torch.save({"model": state, "iteration": 0}, weights)  # detectron2's checkpoint layout
    seg = Segmenter(variant, weights=str(weights), score_threshold=0.0, device=device)
    image = reference_image()
    assert int(image.astype(np.int64).sum()) == int(ref["image_sum"])

    batch = seg.preprocess(image)  # 600 x 1000: no resize, padded to the 608 x 1024 canvas as ImageList pads
    assert list(batch.shape) == ref["input_shape"].tolist()
    assert float(batch.double().sum()) == pytest.approx(float(ref["input_sum"]), rel=1e-9)
    assert float(batch.double().abs().sum()) == pytest.approx(float(ref["input_abs_sum"]), rel=1e-9)

    raw = seg.infer(batch)
    h, w = ref["output_size"].tolist()  # as if the original image were 480 x 800 (resized to 600 x 1000)
    inst = seg.postprocess(raw, (h, w))  # the whole pipeline on the segmenter's device
    out = {k: v.cpu() for k, v in raw.items()}  # intermediate checks on the CPU
    net = seg.net.cpu()
    idx = torch.from_numpy(ref["location_index"])
    for ours, theirs in (("cls_logits", "cls_logits_rows"), ("bbox_reg", "bbox_reg_rows"), ("ctrness_logits", "ctrness_rows")):
        np.testing.assert_allclose(out[ours][0][idx].numpy(), ref[theirs], rtol=1e-4, atol=1e-4, err_msg=ours)
        assert float(out[ours].double().sum()) == pytest.approx(float(ref[theirs.replace("_rows", "_sum")]), rel=1e-4)
    for i, level in enumerate((3, 4, 5)):
        assert float(out[f"p{level}"].double().abs().sum()) == pytest.approx(float(ref["fpn_abs_sums"][i]), rel=1e-5)

    cfg = seg.config
    with torch.inference_mode():
        cand = post.fcos_candidates(out["cls_logits"][0], out["bbox_reg"][0], out["ctrness_logits"][0], net.locations,
                                    net.location_strides, net.level_sizes, cfg.score_thresh, cfg.pre_nms_topk)
        keep = post.class_aware_nms(cand.boxes, cand.scores, cand.class_ids, cfg.nms_thresh, cfg.post_nms_topk)
        np.testing.assert_allclose(cand.boxes[keep].numpy(), ref["proposal_boxes"], rtol=1e-5, atol=1e-3)
        np.testing.assert_allclose(torch.sqrt(cand.scores[keep]).numpy(), ref["proposal_scores"], rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(cand.class_ids[keep].numpy(), ref["proposal_classes"])
        np.testing.assert_allclose(net.locations[cand.location_index[keep]].numpy(), ref["proposal_locations"])
        feats = [out[f"p{level}"] for level in (3, 4, 5)]
        stage2 = TorchStage2(FAMILIES["centermask"].stage2(net, cfg))
        probs, maskiou = post.mask_head_outputs(stage2, cfg, feats, cand.boxes[keep], cand.class_ids[keep], 600.0 * 1000.0)
        np.testing.assert_allclose(probs.numpy(), ref["roi_mask_probs"], atol=1e-4)
        np.testing.assert_allclose((torch.sqrt(cand.scores[keep]) * maskiou).numpy(), ref["roi_mask_scores"], atol=1e-5)

    # as upstream: box scores in FCOS order, and mask_scores = box score x maskiou (not clamped)
    order = np.arange(len(ref["scores"]))
    assert len(inst) == len(order)
    np.testing.assert_allclose(inst.scores, ref["scores"], atol=1e-5)
    np.testing.assert_allclose(inst.mask_scores, ref["mask_scores"], atol=1e-5)
    np.testing.assert_allclose(inst.boxes, ref["boxes"][order], atol=1e-3)
    np.testing.assert_array_equal(inst.class_ids, ref["classes"][order])
    differing = (inst.masks_dense() != ref["masks"][order]).sum(axis=(1, 2))
    assert differing.max() <= 3, differing  # pixels whose value sits at the 0.5 threshold


def test_matches_official_lite_v19_slim_dw(tmp_path):
    _compare_with_official("centermask2_lite_v19_slim_dw", tmp_path)


@pytest.mark.slow
def test_matches_official_lite_v39(tmp_path):
    _compare_with_official("centermask2_lite_v39", tmp_path)


@pytest.mark.gpu
@pytest.mark.parametrize("variant", ["centermask2_lite_v19_slim_dw", "centermask2_lite_v39"])
def test_matches_official_on_cuda(variant, tmp_path):
    """The whole pipeline on the GPU with TF32 off (fp32 as the reference; TF32 convolutions
    move scores by ~1e-4, enough to swap near-tied detections)."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        _compare_with_official(variant, tmp_path, device="cuda")
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved
