"""The official resize rules and uint8 resampling (rtseg.postprocess.resize), and each family's
input geometry: keep ratio, pad to 32, any aspect ratio; ``canvas`` only when asked."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from rtseg.models import get_config
from rtseg.postprocess import centermask as cm_post
from rtseg.postprocess import solov2 as solo_post
from rtseg.postprocess import yolact as yolact_post
from rtseg.postprocess.resize import mmcv_rescale_size, resize_uint8, shortest_edge_size


@pytest.mark.parametrize("size,scale,expected", [
    ((480, 288), (768, 448), (747, 448)),  # portrait: the short side binds (mmcv: int(x * s + 0.5))
    ((300, 451), (768, 448), (448, 673)),
    ((300, 512), (768, 448), (448, 765)),
    ((1080, 1920), (1333, 800), (750, 1333)),  # the long side binds
])
def test_mmcv_rescale_rule(size, scale, expected):
    assert mmcv_rescale_size(size, scale) == expected


@pytest.mark.parametrize("size,expected", [((480, 288), (1000, 600)), ((300, 451), (600, 902)),
                                           ((300, 512), (586, 1000)), ((400, 400), (600, 600))])
def test_detectron2_shortest_edge_rule(size, expected):
    assert shortest_edge_size(size, 600, 1000) == expected


def test_uint8_resampling_is_the_libraries_own():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (2, 37, 53, 3), dtype=np.uint8)
    got_cv2 = resize_uint8(torch.from_numpy(images), (61, 29), "cv2").numpy()
    got_pil = resize_uint8(torch.from_numpy(images), (61, 29), "pil").numpy()
    for i, img in enumerate(images):
        assert np.array_equal(got_cv2[i], cv2.resize(img, (29, 61), interpolation=cv2.INTER_LINEAR))
        assert np.array_equal(got_pil[i], np.asarray(Image.fromarray(img).resize((29, 61), Image.BILINEAR)))
    assert not np.array_equal(got_cv2, got_pil)  # two different resamplings, each upstream's own


@pytest.mark.parametrize("model,size,resized,padded", [
    ("solov2_light_448_r18", (480, 288), (747, 448), (768, 448)),  # portrait stays portrait
    ("solov2_light_448_r18", (300, 451), (448, 673), (448, 704)),
    ("solov2_r50_fpn", (1080, 1920), (750, 1333), (768, 1344)),
    ("solov2_adet_r50_fpn", (480, 288), (1333, 800), (1344, 800)),  # AdelaiDet: detectron2's rule
    ("centermask2_lite_v19_slim_dw", (480, 288), (1000, 600), (1024, 608)),
    ("centermask2_v39", (300, 451), (800, 1203), (800, 1216)),
])
def test_official_geometry_keeps_the_ratio_and_pads_to_32(model, size, resized, padded):
    cfg = get_config(model)
    module = solo_post if cfg.family == "solov2" else cm_post
    g = module.input_geometry(cfg, size)
    assert (g.image_size, g.resized, g.padded) == (size, resized, padded)
    x = module.preprocess(torch.zeros((1, *size, 3), dtype=torch.uint8), cfg, g)
    assert tuple(x.shape) == (1, 3, *padded)


def test_canvas_caps_the_resize_and_pads_to_it():
    cfg = get_config("solov2_light_448_r18")
    g = solo_post.input_geometry(cfg, (480, 288), (448, 768))
    assert g.resized == (448, 269) and g.padded == (448, 768)  # the portrait fitted into the landscape canvas
    assert cm_post.input_geometry(get_config("centermask2_lite_v19"), (300, 451), (608, 1024)).resized == (600, 902)


def test_square_models_keep_their_training_stretch():
    for name in ("solov2_light_resnet18_half_384", "centermask_lite_vovnet19_quarter_384"):
        cfg = get_config(name)
        module = solo_post if cfg.family == "solov2" else cm_post
        g = module.input_geometry(cfg, (480, 640))
        assert g.resized == g.padded == (384, 384)
        images = torch.from_numpy(np.random.default_rng(1).integers(0, 256, (1, 480, 640, 3), dtype=np.uint8))
        assert torch.equal(module.preprocess(images, cfg, g), module.preprocess_float(images, cfg, g))


def test_yolact_is_always_its_square_and_refuses_another_canvas():
    cfg = get_config("yolact_resnet50")
    assert yolact_post.input_geometry(cfg, (480, 288)).padded == (550, 550)
    with pytest.raises(ValueError, match="550x550.*--canvas 448x768"):
        yolact_post.input_geometry(cfg, (480, 288), (448, 768))


def test_a_registered_host_twin_is_resampled_instead_of_the_tensor():
    """The segmenter's upload registers the frame it came from: resize_uint8 reads that (on CUDA:
    no copy back to the host); any other tensor is resampled from its own pixels."""
    from rtseg.postprocess.resize import host_twin

    rng = np.random.default_rng(5)
    frame = rng.integers(0, 256, (1, 40, 30, 3), dtype=np.uint8)
    other = rng.integers(0, 256, (1, 40, 30, 3), dtype=np.uint8)
    tensor = torch.from_numpy(other.copy())
    with host_twin(tensor, frame):
        twin = resize_uint8(tensor, (21, 17), "cv2").numpy()
        derived = resize_uint8(tensor.clone(), (21, 17), "cv2").numpy()  # not the registered tensor
    after = resize_uint8(tensor, (21, 17), "cv2").numpy()  # outside the block: the tensor's own pixels
    assert np.array_equal(twin, resize_uint8(torch.from_numpy(frame), (21, 17), "cv2").numpy())
    assert np.array_equal(derived, after) and not np.array_equal(twin, after)
