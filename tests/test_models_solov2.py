"""SOLOv2 faithfulness: official checkpoint layouts key for key, conversion, configs, outputs.

The key tables in ``tests/fixtures/official/solov2_keys`` were read off the official modules
(WXinlong/SOLO, mmdetection 3.3.0, AdelaiDet + detectron2) instantiated outside this repository;
see ``tests/fixtures/official/SOLOV2.md``. Nothing here runs upstream code.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch

from rtseg.errors import CheckpointError, ConfigError
from rtseg.models import MODELS, SYNTHETIC_CLASSES
from rtseg.models.checkpoint import load_weights
from rtseg.models.mmdet_resnet import make_conv
from rtseg.families.solov2.network import Solov2, Solov2Config
from rtseg.families.solov2.postprocess import point_nms, point_nms_cells
from rtseg.families.solov2.checkpoints import convert_state_dict, detect_layout
from reference_ops_solov2 import point_nms_reference

KEYS = Path(__file__).parent / "fixtures" / "official" / "solov2_keys"
WX_FIXTURES = sorted(p.stem for p in KEYS.glob("*.json"))
SMALL = "solov2_light_resnet18_half_384"


def fixture(*parts: str) -> dict:
    return json.loads(KEYS.joinpath(*parts).with_suffix(".json").read_text())


def official_state(keys: dict) -> dict[str, torch.Tensor]:
    """Distinct values per tensor, so a wrong key mapping cannot go unnoticed in a value check."""
    return {k: torch.full(v, float(i % 997) / 997) if v else torch.tensor(0) for i, (k, v) in enumerate(keys.items())}


def shapes(net: torch.nn.Module) -> dict[str, list[int]]:
    return {k: list(v.shape) for k, v in net.state_dict().items()}


#: official variants with no WXinlong twin: key table read off mmdetection 3.3.0 only
MMDET_ONLY = ("solov2_light_448_dcn_r50",)


def test_every_official_wxinlong_variant_has_a_key_fixture():
    listed = {n for n, c in MODELS.items() if c.family == "solov2" and n != SMALL and "adet" not in n}
    assert listed == set(WX_FIXTURES) | set(MMDET_ONLY)


@pytest.mark.parametrize("name", MMDET_ONLY)
def test_mmdetection_only_variant_takes_its_keys_key_for_key(name):
    """mmdetection's solov2-light_r50-dcn (DCNv2: 27-channel conv_offset in the backbone and the last
    tower conv) converts onto the variant's state_dict exactly: nothing missing, unexpected or mis-shaped."""
    state = official_state(fixture("mmdetection", name)["keys"])
    converted = convert_state_dict(state, MODELS[name])
    ours = shapes(Solov2(MODELS[name]))
    assert {k: list(v.shape) for k, v in converted.items()} == ours
    assert ours["backbone.layer3.0.conv2.conv_offset.weight"][0] == 27
    assert ours["bbox_head.kernel_convs.2.conv.conv_offset.weight"][0] == 27
    assert "bbox_head.kernel_convs.1.conv.conv_offset.weight" not in ours


@pytest.mark.parametrize("name", WX_FIXTURES)
def test_state_dict_matches_official_checkpoint_key_for_key_and_in_order(name):
    official = fixture(name)["keys"]
    ours = shapes(Solov2(MODELS[name]))
    assert [k for k in official if k not in ours] == []  # missing
    assert [k for k in ours if k not in official] == []  # unexpected
    assert {k: (official[k], ours[k]) for k in official if official[k] != ours[k]} == {}  # mis-shaped
    assert list(ours) == list(official)


@pytest.mark.parametrize("name", WX_FIXTURES)
def test_config_matches_official_config(name):
    f, cfg = fixture(name), MODELS[name]
    head, mfh, tc = f["bbox_head"], f["mask_feat_head"], f["test_cfg"]
    assert cfg.num_classes == head["num_classes"] - 1  # upstream: cate_out_channels = num_classes - 1
    assert list(cfg.num_grids) == head["num_grids"] and list(cfg.strides) == head["strides"]
    assert [list(r) for r in cfg.scale_ranges] == head["scale_ranges"]
    assert cfg.center_sigma == head["sigma"] and cfg.head_convs == head["stacked_convs"]
    assert cfg.head_channels == head["seg_feat_channels"] and cfg.mask_channels == head["ins_out_channels"]
    assert cfg.mask_channels == mfh["num_classes"] and cfg.mask_feat_channels == mfh["out_channels"]
    assert cfg.head_dcn == (head.get("type_dcn") if head.get("use_dcn_in_tower") else None)
    assert cfg.head_dcn_last_only == (head["type"] == "SOLOv2LightHead")
    assert cfg.mask_feat_dcn == (mfh.get("conv_cfg") or {}).get("type")
    assert cfg.backbone_dcn == (f["backbone"].get("dcn") or {}).get("type")
    assert cfg.backbone_depth == f["backbone"]["depth"] and cfg.fpn_channels == f["neck"]["out_channels"]
    assert (cfg.nms_pre, cfg.score_thr, cfg.mask_thr, cfg.update_thr, cfg.nms_kernel, cfg.nms_sigma, cfg.max_per_img) == (
        tc["nms_pre"], tc["score_thr"], tc["mask_thr"], tc["update_thr"], tc["kernel"], tc["sigma"], tc["max_per_img"])
    assert cfg.pixel_norm == "rgb_imagenet" and f["img_norm_cfg"]["to_rgb"]
    long_edge, short_edge = max(f["test_img_scale"]), min(f["test_img_scale"])
    assert tuple(cfg.resize_max) == (long_edge, short_edge)
    # the fixed canvas: upstream's landscape bound padded up to a multiple of 32 (Pad(size_divisor=32))
    assert cfg.input_size == (32 * math.ceil(short_edge / 32), 32 * math.ceil(long_edge / 32))


def expected_keys(wx_name: str) -> set[str]:
    """The WXinlong-layout keys a converted checkpoint must have (BatchNorm counters optional)."""
    return {k for k in fixture(wx_name)["keys"] if not k.endswith("num_batches_tracked")}


@pytest.mark.parametrize("name", ["solov2_r50_fpn", "solov2_light_448_r18"])
def test_mmdetection_layout_converts_key_for_key(name):
    state = official_state(fixture("mmdetection", name)["keys"])
    converted = convert_state_dict(state, MODELS[name])
    wx = fixture(name)["keys"]
    assert set(converted) == set(wx)  # mmdetection's BatchNorms keep num_batches_tracked too
    assert {k: list(v.shape) for k, v in converted.items() if list(v.shape) != wx[k]} == {}
    # spot checks that values went where they belong
    assert converted["bbox_head.solo_cate.weight"] is state["mask_head.conv_cls.weight"]
    assert converted["bbox_head.cate_convs.0.gn.bias"] is state["mask_head.cls_convs.0.gn.bias"]
    assert converted["mask_feat_head.conv_pred.0.conv.weight"] is state["mask_head.mask_feature_head.conv_pred.conv.weight"]
    assert converted["neck.fpn_convs.3.conv.bias"] is state["neck.fpn_convs.3.conv.bias"]


@pytest.mark.parametrize("name,wx_name", [("solov2_adet_r50_fpn", "solov2_r50_fpn"),
                                          ("solov2_adet_r101_fpn", "solov2_r101_fpn")])
def test_adelaidet_layout_converts_key_for_key(name, wx_name):
    state = official_state(fixture("adelaidet", name)["keys"])
    converted = convert_state_dict(state, MODELS[name])
    assert set(converted) == expected_keys(wx_name)  # same network as WXinlong's, other names
    wx = fixture(wx_name)["keys"]
    assert {k: list(v.shape) for k, v in converted.items() if list(v.shape) != wx[k]} == {}
    pairs = {
        "backbone.bn1.running_var": "backbone.bottom_up.stem.conv1.norm.running_var",
        "backbone.layer4.0.downsample.1.weight": "backbone.bottom_up.res5.0.shortcut.norm.weight",
        "backbone.layer2.1.conv3.weight": "backbone.bottom_up.res3.1.conv3.weight",
        "neck.lateral_convs.0.conv.weight": "backbone.fpn_lateral2.weight",
        "neck.fpn_convs.3.conv.bias": "backbone.fpn_output5.bias",
        "bbox_head.kernel_convs.3.conv.weight": "ins_head.kernel_tower.9.weight",
        "bbox_head.cate_convs.2.gn.weight": "ins_head.cate_tower.7.weight",
        "mask_feat_head.conv_pred.0.gn.bias": "mask_head.conv_pred.1.bias",
        "mask_feat_head.convs_all_levels.3.conv2.conv.weight": "mask_head.convs_all_levels.3.conv2.0.weight",
    }
    assert [ours for ours, theirs in pairs.items() if converted[ours] is not state[theirs]] == []


def test_mmdetection_file_loads_strictly_through_load_weights(tmp_path):
    # (a WXinlong-layout mmcv file goes the same way in test_official_outputs_solov2.py)
    name = "solov2_light_448_r18"
    net = Solov2(MODELS[name])
    state = official_state(fixture("mmdetection", name)["keys"])
    torch.save({"meta": {"mmdet_version": "3.3.0"}, "state_dict": state}, tmp_path / "mmdet.pth")
    load_weights(net, str(tmp_path / "mmdet.pth"), model_name=name, convert=net.load_official_state_dict)
    assert torch.equal(net.state_dict()["bbox_head.solo_kernel.bias"], state["mask_head.conv_kernel.bias"])


@pytest.mark.slow
def test_adelaidet_file_loads_strictly_into_its_variant(tmp_path):
    name = "solov2_adet_r50_fpn"
    state = official_state(fixture("adelaidet", name)["keys"])
    torch.save({"model": state, "iteration": 270000}, tmp_path / "adet.pth")  # detectron2 checkpointer layout
    net = Solov2(MODELS[name])
    load_weights(net, str(tmp_path / "adet.pth"), model_name=name, convert=net.load_official_state_dict)
    assert torch.equal(net.state_dict()["bbox_head.solo_kernel.weight"], state["ins_head.kernel_pred.weight"])


def test_adelaidet_variants_are_caffe_style_with_bgr_input():
    for name in ("solov2_adet_r50_fpn", "solov2_adet_r101_fpn"):
        cfg = MODELS[name]
        assert (cfg.backbone_style, cfg.pixel_norm) == ("caffe", "bgr_caffe")
    net = Solov2(MODELS["solov2_adet_r50_fpn"])
    block = net.backbone.layer2[0]  # detectron2 STRIDE_IN_1X1=True: the stride is in conv1
    assert block.conv1.stride == (2, 2) and block.conv2.stride == (1, 1)
    block = Solov2(MODELS["solov2_r50_fpn"]).backbone.layer2[0]
    assert block.conv1.stride == (1, 1) and block.conv2.stride == (2, 2)


def test_adelaidet_checkpoint_is_refused_by_a_pytorch_style_variant():
    state = official_state(fixture("adelaidet", "solov2_adet_r50_fpn")["keys"])
    with pytest.raises(CheckpointError, match="solov2_adet_r50_fpn"):
        Solov2(MODELS["solov2_r50_fpn"]).load_official_state_dict(state)


def test_legacy_mmdet_v1_dcn_offset_names_are_renamed():
    name = "solov2_light_512_dcn_r50"
    state = official_state(fixture(name)["keys"])
    # mmdet v1 DeformConvPack version < 2 stored offsets as '<conv>_offset.*'
    legacy = {k.replace("conv2.conv_offset.", "conv2_offset."): v for k, v in state.items()}
    assert sum(".conv2_offset." in k for k in legacy) == 2 * 13  # weight + bias of 13 DCN blocks (stages 2-4)
    converted = convert_state_dict(legacy, MODELS[name])
    assert list(converted) == list(state)
    assert all(converted[k] is state[k] for k in state)


def test_unknown_layout_is_refused_with_the_expected_prefixes():
    with pytest.raises(CheckpointError, match="bbox_head.*mask_head.mask_feature_head.*ins_head"):
        detect_layout(["prediction_layers.0.conf_layer.weight", "proto_net.0.weight"])
    assert detect_layout(["bbox_head.solo_cate.weight"]) == "wxinlong"


def test_convert_does_not_modify_its_input():
    state = official_state(fixture("mmdetection", "solov2_light_448_r18")["keys"])
    before = dict(state)
    convert_state_dict(state, MODELS["solov2_light_448_r18"])
    assert list(state) == list(before) and all(state[k] is before[k] for k in before)


@pytest.mark.parametrize("name", [SMALL, pytest.param("solov2_light_512_dcn_r50", marks=pytest.mark.slow),
                                  pytest.param("solov2_r101_dcn_fpn", marks=pytest.mark.slow)])
def test_output_names_and_shapes(name):
    # official grids make the head cost ~10 GMAC at any input size: tiny grids keep this fast
    # while every layer type (DCN, DCNv2, light head) still runs
    cfg = dataclasses.replace(MODELS[name], num_grids=(5, 4, 3, 2, 2)) if name != SMALL else MODELS[name]
    net = Solov2(cfg)
    x = torch.randn(2, 3, 32, 64, generator=torch.Generator().manual_seed(0))  # any multiple of 32 works
    with torch.no_grad():
        ev = net.eval()(x)
        tr = net.train()(x)
    g, c, e = cfg.num_cells, cfg.num_classes, cfg.mask_channels
    assert {k: tuple(v.shape) for k, v in ev.items()} == {"cate": (2, g, c), "kernel": (2, g, e), "mask_feat": (2, e, 8, 16)}
    assert {k: tuple(v.shape) for k, v in tr.items()} == {"cate_logits": (2, g, c), "kernel": (2, g, e),
                                                          "mask_feat": (2, e, 8, 16)}
    assert ((ev["cate"] >= 0) & (ev["cate"] <= 1)).all()


def test_eval_cate_is_sigmoid_of_train_logits_and_point_nms_cells_is_per_level_row_major():
    cfg = MODELS[SMALL]
    net = Solov2(cfg)
    x = torch.randn(1, 3, 96, 96, generator=torch.Generator().manual_seed(0))
    net.train()
    for m in net.modules():  # BatchNorm on running statistics in both modes (as the trainer's validation)
        if isinstance(m, torch.nn.BatchNorm2d):
            m.eval()
    with torch.no_grad():
        logits = net(x)["cate_logits"][0]
        cate = net.eval()(x)["cate"][0]
    torch.testing.assert_close(cate, torch.sigmoid(logits))
    cate = point_nms_cells(cate, cfg.num_grids)
    start = 0
    for s in cfg.num_grids:
        level = torch.sigmoid(logits[start: start + s * s]).reshape(s, s, -1).permute(2, 0, 1)  # [C, S, S]
        expected = torch.from_numpy(point_nms_reference(level.numpy())).permute(1, 2, 0).reshape(s * s, -1)
        torch.testing.assert_close(cate[start: start + s * s], expected)
        start += s * s
    assert start == cate.shape[0]


def test_deformable_convs_with_zero_offsets_are_plain_convolutions():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, 9, 11, generator=g)
    for conv_type, scale in (("DCN", 1.0), ("DCNv2", 0.5)):  # DCNv2: zero mask logits -> sigmoid(0) = 0.5
        for kernel, stride, padding in ((3, 1, 1), (3, 2, 1), (1, 1, 0)):
            dcn = make_conv(conv_type, 4, 6, kernel, stride=stride, padding=padding, bias=False)
            assert list(dict(dcn.named_parameters())) == ["weight", "conv_offset.weight", "conv_offset.bias"]
            assert dcn.conv_offset.out_channels == (2 if conv_type == "DCN" else 3) * kernel * kernel
            with torch.no_grad():
                dcn.weight.copy_(torch.randn(dcn.weight.shape, generator=g))
                plain = torch.nn.functional.conv2d(x, dcn.weight, stride=stride, padding=padding)
                torch.testing.assert_close(dcn(x), scale * plain, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="no bias"):
        make_conv("DCN", 4, 6, 3, bias=True)


def test_deformable_conv_offsets_move_the_sampling_point():
    # a 1x1 DCN whose offset is a constant +1 px in x reads the right-hand neighbour
    dcn = make_conv("DCN", 1, 1, 1, bias=False)
    x = torch.arange(12.0).reshape(1, 1, 3, 4)
    with torch.no_grad():
        dcn.weight.fill_(1.0)
        dcn.conv_offset.bias.copy_(torch.tensor([0.0, 1.0]))  # channel 0 = dy, channel 1 = dx
        out = dcn(x)
    torch.testing.assert_close(out[..., :3], x[..., 1:])
    assert (out[..., 3] == 0).all()  # sampled outside the input: zero


@pytest.mark.parametrize("seed", range(4))
def test_point_nms_matches_reference_with_ties(seed):
    g = torch.Generator().manual_seed(seed)
    heat = torch.rand(3, 7, 7, generator=g)
    heat = torch.round(heat * 3) / 3  # many exact ties: tied maxima are all kept, as upstream
    out = point_nms(heat[None])[0]
    torch.testing.assert_close(out, torch.from_numpy(point_nms_reference(heat.numpy())))


def test_small_model_knobs_and_size():
    cfg = MODELS[SMALL]
    assert cfg.class_names == SYNTHETIC_CLASSES
    assert cfg.input_size == (384, 384) and not cfg.keep_ratio
    assert (cfg.backbone_depth, cfg.backbone_width, cfg.fpn_channels) == (18, 0.5, 64)
    assert (cfg.head_convs, cfg.head_channels, cfg.mask_feat_channels, cfg.mask_channels) == (2, 128, 64, 64)
    params = sum(p.numel() for p in Solov2(cfg).parameters())
    assert 3_000_000 < params < 4_500_000  # about the size of the built-in yolact_resnet18_half_384 (3.8 M)


def test_config_errors_say_expected_and_found():
    base = MODELS[SMALL]
    with pytest.raises(ConfigError, match=r"canvas.*multiples of 32.*\(380, 384\)"):
        dataclasses.replace(base, canvas=(380, 384))
    with pytest.raises(ConfigError, match=r"nms_kernel.*'gaussian' or 'linear'.*'box'"):
        dataclasses.replace(base, nms_kernel="box")
    with pytest.raises(ConfigError, match=r"head_channels.*multiple of gn_groups=32.*100"):
        dataclasses.replace(base, head_channels=100)
    with pytest.raises(ConfigError, match=r"5 entries"):
        dataclasses.replace(base, num_grids=(12, 8))
    with pytest.raises(ConfigError, match=r"backbone_dcn"):
        dataclasses.replace(base, backbone_dcn="DCNv3")


def test_models_registry_lists_the_variants():
    names = [n for n, c in MODELS.items() if c.family == "solov2"]
    assert "solov2_r50_fpn" in names and SMALL in names
    assert isinstance(MODELS[SMALL], Solov2Config)
