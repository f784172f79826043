"""Make ``tests/fixtures/official/photos/``: the official code's detections on real photographs.

Runs the official implementations from paths given on the command line (nothing of them is in
this repository, and the tests never import this script):

- **SOLOv2, mmdetection 3.3.0** (``--site``: a folder with the ``mmdet-3.3.0``,
  ``mmcv-lite 2.1.0`` and ``mmengine 0.10.4`` wheels installed by ``pip install --no-deps
  --target``, plus ``pyyaml addict yapf termcolor rich six`` and detectron2's ``fvcore iopath
  omegaconf yacs tabulate portalocker cloudpickle``): the model is built by
  ``mmdet.apis.init_detector`` from the wheel's own config (``.mim/configs/solov2/<config>.py``)
  and run by ``mmdet.apis.inference_detector`` on the photo *file*: mmdetection's own test
  pipeline (``LoadImageFromFile``, ``Resize(keep_ratio=True)``, ``PackDetInputs``) and
  ``DetDataPreprocessor`` (normalise, pad to 32) preprocess it. mmcv-lite has no compiled
  ``mmcv.ops``; a stand-in module is put in its place whose names are inert placeholders
  (SOLOv2 without DCN uses none of them; importing mmdet needs them to exist).
- **CenterMask, centermask2 on detectron2** (``--detectron2-src`` holding the ``detectron2``
  package, uncompiled: its ``_C`` extension is only needed for deformable convs; ``--centermask2-src``):
  ``centermask.config.get_cfg()`` + ``merge_from_file(<config>)``, ``DefaultPredictor(cfg)``
  called on ``detectron2.data.detection_utils.read_image(file, "BGR")`` exactly as
  centermask2's ``demo/predictor.py`` does (``ResizeShortestEdge`` with PIL bilinear, then the
  model's normalisation and padding to 32).

- **YOLACT, dbolya/yolact** (``--yolact-src``): ``set_cfg('<variant>_config')``, ``Yolact()``,
  then as ``eval.py``'s ``evalimage``: ``cv2.imread`` of the file -> ``FastBaseTransform`` ->
  ``net`` -> ``postprocess(dets, w, h, crop_masks=True, score_threshold=0)`` (the settings
  ``eval.py`` sets: fast NMS, no cross-class NMS, ``mask_proto_debug=False``). Two device
  placements are neutralised at run time (no source edited): the module-level
  ``torch.cuda.current_device()`` and the ``.cuda()`` of ``FastBaseTransform``'s mean / std.

Weights: the deterministic state dicts of ``tests/official_reference*.py`` (a pure function of
key name and element index), in the official layout, loaded with ``strict=True``; the same
files are what rtseg's tests load through ``--weights``. Every score threshold is the config's.

Usage::

    python tools/make_official_fixtures.py --site /tmp/i16/site \\
        --detectron2-src /tmp/i16/src --centermask2-src /tmp/i16/src/centermask2 \\
        --yolact-src /tmp/i16/src/yolact --adelaidet-src /tmp/i16/src/AdelaiDet \\
        [--only solov2|centermask|yolact|adelaidet]
"""

from __future__ import annotations

import argparse
import importlib.abc
import importlib.machinery
import json
import subprocess
import sys
import tempfile
import types
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from official_reference_photos import PHOTO_DIR, PHOTOS, centermask_state_dict, mmdet_state_dict, write_photo  # noqa: E402

#: rtseg variant -> mmdetection 3.3.0 config file (``mmdet/.mim/configs/solov2/``)
MMDET_VARIANTS = {
    "solov2_light_448_r18": "solov2-light_r18_fpn_ms-3x_coco.py",
    "solov2_light_448_dcn_r50": "solov2-light_r50-dcn_fpn_ms-3x_coco.py",  # DCNv2: the stand-in below
}
#: photos per variant where not all of them (the fixtures' size: SOLOv2's random-weight masks are speckled)
MMDET_PHOTOS = {"solov2_light_448_dcn_r50": ("astronaut_portrait",)}
#: variants whose key table (``solov2_keys/mmdetection/<variant>.json``) this script writes
MMDET_KEY_TABLES = ("solov2_light_448_dcn_r50",)
#: rtseg variant = dbolya/yolact config name (``data/config.py``, ``<name>_config``)
YOLACT_VARIANTS = ("yolact_base",)
#: rtseg variant -> (AdelaiDet config ``configs/SOLOv2/<file>``, photos): ResNet-50 at 800 px on the CPU, two photos
ADET_VARIANTS = {"solov2_adet_r50_fpn": ("R50_3x.yaml", ("astronaut_portrait", "astronaut_landscape"))}
#: rtseg variant -> centermask2 config (``configs/centermask/``)
CENTERMASK_VARIANTS = {
    "centermask2_lite_v19_slim_dw": "centermask_lite_V_19_slim_dw_eSE_FPN_ms_4x.yaml",
}


# -- outputs ------------------------------------------------------------------------------------

def save(variant: str, name: str, image_shape, boxes, scores, labels, masks, meta: dict,
         mask_scores=None) -> Path:
    folder = PHOTO_DIR / variant
    folder.mkdir(parents=True, exist_ok=True)
    masks = np.asarray(masks, bool).reshape(-1, int(image_shape[0]), int(image_shape[1]))  # (0,) when empty
    fields = dict(
        boxes=np.asarray(boxes, np.float32).reshape(-1, 4), scores=np.asarray(scores, np.float32).reshape(-1),
        labels=np.asarray(labels, np.int64).reshape(-1), masks_shape=np.array(masks.shape, np.int64),
        masks_packed=np.packbits(masks.reshape(-1)), mask_areas=masks.reshape(len(masks), -1).sum(1).astype(np.int64) if len(masks) else np.zeros(0, np.int64),
        image_shape=np.array(image_shape, np.int64), meta=np.array(json.dumps(meta, sort_keys=True)),
    )
    if mask_scores is not None:
        fields["mask_scores"] = np.asarray(mask_scores, np.float32).reshape(-1)
    path = folder / f"{name}.npz"
    np.savez_compressed(path, **fields)
    return path


# -- mmdetection ----------------------------------------------------------------------------------

class _Inert:
    """What every ``mmcv.ops`` name is here: importable, unusable (mmcv-lite has no compiled ops)."""

    def __init__(self, *args, **kwargs):
        raise RuntimeError("mmcv.ops is not available (mmcv-lite); this model must not need it")


class _OpsFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Serve ``mmcv.ops`` and its submodules as modules whose every attribute is :class:`_Inert`."""

    def find_spec(self, fullname, path, target=None):
        if fullname == "mmcv.ops" or fullname.startswith("mmcv.ops."):
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec):
        module = types.ModuleType(spec.name)
        module.__path__ = []
        module.__getattr__ = lambda name: type(name, (_Inert,), {}) if not name.startswith("__") else None
        return module

    def exec_module(self, module):
        pass


def _register_dcnv2() -> None:
    """Register ``DCNv2`` (mmcv-lite lacks the compiled ``ModulatedDeformConv2dPack``) as a stand-in
    with mmcv 2.1's exact parameters (``mmcv/ops/modulated_deform_conv.py``: ``weight [out, in /
    groups, k, k]``, ``bias`` or ``None``, ``conv_offset = Conv2d(in, deform_groups * 3 * k * k, k,
    stride, padding, dilation, bias=True)``) and its ``forward`` (``o1, o2, mask = chunk(conv_offset(x),
    3)``, ``offset = cat(o1, o2)``, ``mask = sigmoid(mask)``), with ``torchvision.ops.deform_conv2d``
    standing in for the CUDA kernel (same offset layout: channel ``2k`` = dy, ``2k + 1`` = dx of tap ``k``)."""
    import torchvision
    from mmengine.registry import MODELS
    from torch import nn

    class ModulatedDeformConv2dPack(nn.Module):
        def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1,
                     deform_groups=1, bias=True, deformable_groups=None):
            super().__init__()
            deform_groups = deformable_groups or deform_groups
            k = kernel_size if isinstance(kernel_size, int) else kernel_size[0]
            self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
            self.kernel_size = (k, k)  # what ConvModule reads, as mmcv's attributes
            self.stride, self.padding, self.dilation = stride, padding, dilation
            self.transposed, self.output_padding = False, (0, 0)
            self.weight = nn.Parameter(torch.zeros(out_channels, in_channels // groups, k, k))
            if bias:
                self.bias = nn.Parameter(torch.zeros(out_channels))
            else:
                self.register_parameter("bias", None)
            self.conv_offset = nn.Conv2d(in_channels, deform_groups * 3 * k * k, k, stride=stride, padding=padding,
                                         dilation=dilation, bias=True)

        def forward(self, x):
            o1, o2, mask = torch.chunk(self.conv_offset(x), 3, dim=1)
            return torchvision.ops.deform_conv2d(x, torch.cat((o1, o2), dim=1), self.weight, self.bias,
                                                 stride=self.stride, padding=self.padding, dilation=self.dilation,
                                                 mask=torch.sigmoid(mask))

    MODELS.register_module("DCNv2", module=ModulatedDeformConv2dPack, force=True)


def write_mmdet_key_table(variant: str, config: str, model, mmdet_version: str) -> None:
    from official_reference_solov2 import FIXTURE_DIR

    keys = {k: list(v.shape) for k, v in model.state_dict().items()}
    table = {"variant": variant, "layout": "mmdetection",
             "source": f"open-mmlab/mmdetection v{mmdet_version} (PyPI wheel): the model of .mim/configs/solov2/"
                       f"{config} built by mmdet.apis.init_detector (mmcv-lite 2.1.0; DCNv2 = a stand-in with mmcv's "
                       "ModulatedDeformConv2dPack parameters), keys of model.state_dict() "
                       "(tools/make_official_fixtures.py)",
             "num_keys": len(keys), "keys": keys}
    path = FIXTURE_DIR / "solov2_keys" / "mmdetection" / f"{variant}.json"
    path.write_text(json.dumps(table, indent=1) + "\n")
    print(f"{variant}: {len(keys)} keys -> {path}")


def run_mmdet(site: Path, tmp: Path) -> None:
    sys.path.insert(0, str(site))
    sys.meta_path.insert(0, _OpsFinder())
    import mmcv
    import mmdet
    import mmengine
    from mmdet.apis import inference_detector, init_detector
    from mmengine.config import Config

    _register_dcnv2()

    for variant, config in MMDET_VARIANTS.items():
        cfg = Config.fromfile(str(site / "mmdet" / ".mim" / "configs" / "solov2" / config))
        cfg.model.backbone.init_cfg = None  # no torchvision download; the weights are loaded below
        model = init_detector(cfg, checkpoint=None, device="cpu")
        if variant in MMDET_KEY_TABLES:
            write_mmdet_key_table(variant, config, model, mmdet.__version__)
        state = mmdet_state_dict(variant)
        if list(model.state_dict()) != list(state):
            raise SystemExit(f"{variant}: mmdetection's state_dict keys differ from solov2_keys/mmdetection")
        model.load_state_dict(state, strict=True)
        model.eval()
        for name in MMDET_PHOTOS.get(variant, tuple(PHOTOS)):
            path = write_photo(name, tmp)
            with torch.no_grad():
                result = inference_detector(model, str(path))
            pred = result.pred_instances
            meta = {"official": f"mmdetection {mmdet.__version__} (mmcv-lite {mmcv.__version__}, mmengine "
                                f"{mmengine.__version__}), config {config}, inference_detector on the PNG file",
                    "torch": torch.__version__, "img_shape": list(result.metainfo["img_shape"]),
                    "pad_shape": list(result.metainfo.get("pad_shape", result.metainfo.get("batch_input_shape"))),
                    "ori_shape": list(result.metainfo["ori_shape"]), "test_cfg": cfg.model.test_cfg.to_dict()}
            out = save(variant, name, pred.masks.shape[1:], pred.bboxes.numpy(), pred.scores.numpy(),
                       pred.labels.numpy(), pred.masks.numpy(), meta)
            print(f"{variant} {name}: {len(pred.scores)} detections, img_shape {meta['img_shape']}, "
                  f"pad {meta['pad_shape']} -> {out} ({out.stat().st_size // 1024} KB)")


# -- dbolya/yolact ------------------------------------------------------------------------------------

def run_yolact(yolact_src: Path, tmp: Path) -> None:
    import cv2

    from official_reference import deterministic_state_dict, load_official_keys

    sys.path.insert(0, str(yolact_src))
    torch.cuda.current_device = lambda: 0  # yolact.py calls it at import (a Windows CUDA workaround)
    from data import cfg, set_cfg
    from layers.output_utils import postprocess
    from utils import augmentations
    from yolact import Yolact

    commit = git_head(yolact_src)
    for variant in YOLACT_VARIANTS:
        set_cfg(f"{variant}_config")
        cfg.mask_proto_debug = False
        net = Yolact()
        state = deterministic_state_dict(load_official_keys(variant)["keys"])
        net.load_state_dict(state, strict=True)
        net.eval()
        net.detect.use_fast_nms = True
        net.detect.use_cross_class_nms = False
        cuda = torch.Tensor.cuda
        torch.Tensor.cuda = lambda self, *a, **k: self  # FastBaseTransform.__init__ puts mean / std on the GPU
        try:
            transform = augmentations.FastBaseTransform()
        finally:
            torch.Tensor.cuda = cuda
        for name in PHOTOS:
            path = write_photo(name, tmp)
            frame = torch.from_numpy(cv2.imread(str(path))).float()
            h, w = frame.shape[:2]
            with torch.no_grad():
                preds = net(transform(frame.unsqueeze(0)))
                classes, scores, boxes, masks = postprocess(preds, w, h, crop_masks=True, score_threshold=0)
            mask_scores = None
            if isinstance(scores, (list, tuple)):
                scores, mask_scores = scores
            meta = {"official": f"dbolya/yolact@{commit or 'unknown'} (evalimage path: cv2.imread, FastBaseTransform, "
                                "postprocess score_threshold=0)", "torch": torch.__version__,
                    "config": f"{variant}_config", "max_size": cfg.max_size}
            out = save(variant, name, (h, w), boxes.numpy(), scores.numpy(), classes.numpy(), masks.numpy() > 0.5,
                       meta, mask_scores=None if mask_scores is None else mask_scores.numpy())
            print(f"{variant} {name}: {len(scores)} detections -> {out} ({out.stat().st_size // 1024} KB)")


# -- AdelaiDet ----------------------------------------------------------------------------------------

def run_adet(site: Path | None, detectron2_src: Path, adet_src: Path, tmp: Path) -> None:
    if site is not None:
        sys.path.insert(0, str(site))
    sys.path.insert(0, str(detectron2_src))
    sys.path.insert(0, str(adet_src))
    # adet.layers imports its compiled extension (BezierAlign, DefROIAlign: not used by SOLOv2)
    sys.modules.setdefault("adet._C", types.ModuleType("adet._C"))
    from adet.config import get_cfg
    from detectron2.data.detection_utils import read_image
    from detectron2.engine import DefaultPredictor

    commit = git_head(adet_src)
    for variant, (config, names) in ADET_VARIANTS.items():
        cfg = get_cfg()
        cfg.merge_from_file(str(adet_src / "configs" / "SOLOv2" / config))
        cfg.MODEL.DEVICE = "cpu"
        cfg.MODEL.WEIGHTS = ""
        cfg.freeze()
        predictor = DefaultPredictor(cfg)
        state = mmdet_state_dict(variant, layout="adelaidet")
        if list(predictor.model.state_dict()) != list(state):
            raise SystemExit(f"{variant}: AdelaiDet's keys differ from solov2_keys/adelaidet")
        predictor.model.load_state_dict(state, strict=True)
        predictor.model.eval()
        for name in names:
            path = write_photo(name, tmp)
            image = read_image(str(path), format="BGR")
            with torch.no_grad():
                inst = predictor(image)["instances"].to("cpu")
            resized = predictor.aug.get_transform(image).apply_image(image).shape[:2]
            meta = {"official": f"aim-uofa/AdelaiDet@{commit or 'unknown'} on detectron2 (DefaultPredictor on "
                                f"read_image of the PNG file), config configs/SOLOv2/{config}", "torch": torch.__version__,
                    "resized": list(resized), "test_sizes": [cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST]}
            boxes = inst.pred_boxes.tensor.numpy() if inst.has("pred_boxes") else np.zeros((len(inst), 4), np.float32)
            out = save(variant, name, image.shape[:2], boxes, inst.scores.numpy(), inst.pred_classes.numpy(),
                       inst.pred_masks.numpy(), meta)
            print(f"{variant} {name}: {len(inst)} detections, resized {resized} -> {out} ({out.stat().st_size // 1024} KB)")


# -- centermask2 ----------------------------------------------------------------------------------

def run_centermask(site: Path | None, detectron2_src: Path, centermask2_src: Path, tmp: Path) -> None:
    if site is not None:
        sys.path.insert(0, str(site))  # fvcore, iopath, yacs, ... (detectron2's pure-Python dependencies)
    sys.path.insert(0, str(detectron2_src))
    sys.path.insert(0, str(centermask2_src))
    from centermask.config import get_cfg
    from detectron2.data.detection_utils import read_image
    from detectron2.engine import DefaultPredictor

    for variant, config in CENTERMASK_VARIANTS.items():
        cfg = get_cfg()
        cfg.merge_from_file(str(centermask2_src / "configs" / "centermask" / config))
        cfg.MODEL.DEVICE = "cpu"
        cfg.MODEL.WEIGHTS = ""
        cfg.freeze()
        predictor = DefaultPredictor(cfg)
        state = centermask_state_dict(variant)
        if list(predictor.model.state_dict()) != list(state):
            missing = set(predictor.model.state_dict()) ^ set(state)
            raise SystemExit(f"{variant}: centermask2's keys differ from centermask_keys ({sorted(missing)[:4]})")
        predictor.model.load_state_dict(state, strict=True)
        predictor.model.eval()
        for name in PHOTOS:
            path = write_photo(name, tmp)
            image = read_image(str(path), format="BGR")
            with torch.no_grad():
                inst = predictor(image)["instances"].to("cpu")
            h, w = image.shape[:2]
            resized = predictor.aug.get_transform(image).apply_image(image).shape[:2]
            meta = {"official": "youngwanLEE/centermask2 (DefaultPredictor on detection_utils.read_image of the PNG "
                                f"file), config {config}", "torch": torch.__version__, "resized": list(resized),
                    "test_sizes": [cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST]}
            out = save(variant, name, (h, w), inst.pred_boxes.tensor.numpy(), inst.scores.numpy(),
                       inst.pred_classes.numpy(), inst.pred_masks.numpy(), meta,
                       mask_scores=inst.mask_scores.numpy() if inst.has("mask_scores") else None)
            print(f"{variant} {name}: {len(inst)} detections, resized {resized} -> {out} "
                  f"({out.stat().st_size // 1024} KB)")


def git_head(path: Path) -> str:
    try:
        return subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--site", type=Path)
    parser.add_argument("--detectron2-src", type=Path)
    parser.add_argument("--centermask2-src", type=Path)
    parser.add_argument("--yolact-src", type=Path)
    parser.add_argument("--adelaidet-src", type=Path)
    parser.add_argument("--only", choices=("solov2", "centermask", "yolact", "adelaidet"))
    args = parser.parse_args()
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        if args.only in (None, "yolact"):
            if args.yolact_src is None:
                parser.error("--yolact-src is needed for the YOLACT fixtures")
            run_yolact(args.yolact_src, Path(tmp))
        if args.only in (None, "solov2"):
            if args.site is None:
                parser.error("--site is needed for the SOLOv2 fixtures")
            run_mmdet(args.site, Path(tmp))
        if args.only in (None, "adelaidet"):
            if args.detectron2_src is None or args.adelaidet_src is None:
                parser.error("--detectron2-src and --adelaidet-src are needed for the AdelaiDet SOLOv2 fixtures")
            run_adet(args.site, args.detectron2_src, args.adelaidet_src, Path(tmp))
        if args.only in (None, "centermask"):
            if args.detectron2_src is None or args.centermask2_src is None:
                parser.error("--detectron2-src and --centermask2-src are needed for the CenterMask fixtures")
            run_centermask(args.site, args.detectron2_src, args.centermask2_src, Path(tmp))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
