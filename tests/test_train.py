"""Tests of the YOLACT training loss and the trainer (rtseg.train), on tiny models and data.

Sizes: the half-width ResNet-18 variant at a 128 px input (anchor scales rescaled as
upstream's im400/im700 configs do), COCO folders of a few synthetic 112x144 scenes.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from rtseg.data.coco import CocoInstanceDataset, collate
from rtseg.data.synthetic_coco import generate_dataset
from rtseg.errors import CheckpointError, ConfigError
from rtseg.models import get_config
from rtseg.models.checkpoint import load_weights
from rtseg.models.yolact import Yolact, make_priors
from rtseg.train.trainer import (EpochBatchSampler, init_from_scratch, learning_rate, load_matching_weights, train,
                                 validation_loss)
from rtseg.train.yolact_loss import (YolactLossConfig, encode_boxes, match_priors, ohem_conf_loss, priors_to_xyxy,
                                     yolact_loss)

SIZE = 128


def tiny_config(size: int = SIZE, **changes):
    base = get_config("yolact_resnet18_half_384")
    scales = tuple((int(s / 550 * size),) for s in (24, 48, 96, 192, 384))
    return dataclasses.replace(base, name=f"tiny_yolact_{size}", max_size=size, pred_scales=scales, **changes)


@pytest.fixture(scope="module")
def coco_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("coco") / "train"
    generate_dataset(str(root), images=8, seed=3, size=(112, 144), n_objects=(2, 5))
    return str(root)


@pytest.fixture(scope="module")
def fixed_batch(coco_folder):
    """Four un-augmented samples and their collated batch."""
    ds = CocoInstanceDataset(coco_folder, size=SIZE, augment=False)
    return ds, collate([ds[i] for i in range(4)])


@pytest.fixture(autouse=True)
def _threads():
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(old)


# --------------------------------------------------------------------------------------
# matching: loop-based reference (box_utils.match, written out per prior and per GT)
# --------------------------------------------------------------------------------------
def _iou(a, b):
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def reference_match(gts, labels, priors, pos=0.5, neg=0.4):
    pboxes = [(cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2) for cx, cy, w, h in priors]
    ov = [[_iou(g, p) for p in pboxes] for g in gts]
    best, best_gt = [], []
    for i in range(len(pboxes)):
        j = max(range(len(gts)), key=lambda j: (ov[j][i], -j))  # first max on ties
        best.append(ov[j][i])
        best_gt.append(j)
    for _ in gts:  # greedy forcing: highest remaining (gt, prior) overlap first
        j, i = max(((j, i) for j in range(len(gts)) for i in range(len(pboxes))), key=lambda ji: ov[ji[0]][ji[1]])
        for jj in range(len(gts)):
            ov[jj][i] = -1
        ov[j] = [-1] * len(pboxes)
        best[i], best_gt[i] = 2.0, j
    out = []
    for i in range(len(pboxes)):
        out.append(-1 if neg <= best[i] < pos else 0 if best[i] < neg else labels[best_gt[i]] + 1)
    return out, best_gt


def test_match_thresholds_on_crafted_boxes():
    # dyadic coordinates: every IoU below is exact in float32 and float64
    gts = [(0.0, 0.0, 0.5, 0.5), (0.75, 0.75, 0.8125, 0.8125)]
    priors = [
        (0.25, 0.25, 0.5, 0.5),      # equals GT 0: IoU 1 -> forced positive
        (0.25, 0.5, 0.5, 1.0),       # IoU exactly 0.5 with GT 0 -> positive
        (0.25, 0.625, 0.5, 1.25),    # IoU exactly 0.4 -> neutral (negative is < 0.4)
        (0.25, 0.5625, 0.5, 1.125),  # IoU 0.444 -> neutral
        (0.25, 0.75, 0.5, 1.5),      # IoU 0.333 -> background
        (0.78125, 0.78125, 0.25, 0.25),  # GT 1's best prior, IoU 1/16 -> forced positive
        (0.125, 0.875, 0.125, 0.125),    # overlaps nothing -> background
    ]
    labels = [2, 4]
    m = match_priors(torch.tensor(gts), torch.tensor(labels), torch.tensor(priors))
    assert m.labels.tolist() == [3, 3, -1, -1, 0, 5, 0]
    ref_labels, ref_gt = reference_match(gts, labels, priors)
    assert m.labels.tolist() == ref_labels
    assert m.gt_index[[0, 1, 5]].tolist() == [ref_gt[0], ref_gt[1], ref_gt[5]] == [0, 0, 1]
    # encoding of the exact prior is zero; the 0.5-IoU prior: centre offset -0.25/(0.1*1), log(0.5)/0.2
    assert torch.allclose(m.loc[0], torch.zeros(4), atol=1e-6)
    assert torch.allclose(m.loc[1], torch.tensor([0.0, -2.5, 0.0, math.log(0.5) / 0.2]), atol=1e-5)


def test_match_against_reference_on_random_boxes():
    gen = torch.Generator().manual_seed(0)
    priors = make_priors(tiny_config()).double()
    for trial in range(3):
        n = 1 + trial * 3
        xy = torch.rand(n, 2, generator=gen, dtype=torch.float64) * 0.7
        wh = 0.03 + torch.rand(n, 2, generator=gen, dtype=torch.float64) * 0.3
        gts = torch.cat([xy, xy + wh], 1)
        labels = torch.randint(0, 5, (n,), generator=gen)
        m = match_priors(gts, labels, priors)
        ref_labels, ref_gt = reference_match(gts.tolist(), labels.tolist(), priors.tolist())
        assert m.labels.tolist() == ref_labels
        pos = m.labels > 0
        assert m.gt_index[pos].tolist() == [g for g, lab in zip(ref_gt, ref_labels) if lab > 0]
        assert (m.labels > 0).sum() >= n  # every GT trains at least one prior


def test_crowd_boxes_make_covered_non_positive_priors_neutral():
    priors = torch.tensor([(0.25, 0.25, 0.5, 0.5), (0.75, 0.75, 0.25, 0.25), (0.5, 0.5, 0.5, 0.5), (0.1, 0.9, 0.1, 0.1)])
    gts = torch.tensor([(0.0, 0.0, 0.5, 0.5)])
    crowd = torch.tensor([(0.5, 0.5, 1.0, 1.0)])  # covers prior 1 fully, prior 2 by 1/4
    m = match_priors(gts, torch.tensor([0]), priors, crowd)
    assert m.labels.tolist() == [1, -1, 0, 0]
    # a crowd over a positive prior leaves it positive
    m2 = match_priors(gts, torch.tensor([0]), priors, torch.tensor([(0.0, 0.0, 0.5, 0.5)]))
    assert m2.labels[0] == 1


def test_match_with_no_ground_truth_is_all_background():
    m = match_priors(torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64), make_priors(tiny_config()))
    assert (m.labels == 0).all()


def test_encode_inverts_decode():
    from rtseg.postprocess.yolact import decode_boxes

    priors = make_priors(tiny_config())[:50]
    loc = torch.randn(50, 4, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(encode_boxes(decode_boxes(loc, priors), priors), loc, atol=1e-4)


def test_ohem_picks_the_hardest_negatives():
    gen = torch.Generator().manual_seed(2)
    conf = torch.randn(2, 40, 4, generator=gen)
    labels = torch.zeros(2, 40, dtype=torch.int64)
    labels[0, [3, 7]] = torch.tensor([1, 3])
    labels[0, [5, 9]] = -1  # neutrals are never used
    labels[1, 0] = 2
    got = ohem_conf_loss(conf, labels, negpos_ratio=3)
    expected = 0.0
    for b in range(2):
        bg = (torch.logsumexp(conf[b], 1) - conf[b, :, 0]).tolist()
        cand = sorted((i for i in range(40) if labels[b, i] == 0), key=lambda i: -bg[i])
        chosen = [i for i in range(40) if labels[b, i] > 0] + cand[: 3 * int((labels[b] > 0).sum())]
        expected += float(F.cross_entropy(conf[b, chosen], labels[b, chosen].clamp(min=0), reduction="sum"))
    assert float(got) == pytest.approx(expected, rel=1e-5)


# --------------------------------------------------------------------------------------
# the loss
# --------------------------------------------------------------------------------------
def _copy_targets(targets):
    return [{k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in t.items()} for t in targets]


@pytest.mark.parametrize("plus", [False, True], ids=["yolact", "yolact++"])
def test_loss_is_finite_and_positive_on_a_random_network(coco_folder, plus):
    # the mask-IoU net's five unpadded stride-2 convs need prototypes of at least 63 px: 256 px input
    size = 256 if plus else SIZE
    dataset = CocoInstanceDataset(coco_folder, size=size, augment=False)
    images, targets = collate([dataset[0], dataset[1], dataset[2]])
    targets[2] = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64),
                  "masks": torch.zeros(0, size, size, dtype=torch.uint8), "crowd": torch.zeros(0, dtype=torch.bool)}
    before = _copy_targets(targets)  # an image without annotations is allowed
    torch.manual_seed(0)
    net = Yolact(tiny_config(size, use_maskiou=plus))
    init_from_scratch(net)
    net.train()
    out = net(images[:3])
    losses = yolact_loss(out, targets, net.priors, cfg=YolactLossConfig(discard_mask_area=0),
                         maskiou_net=net.maskiou_net if plus else None)
    names = {"box", "conf", "mask", "semantic", "total"} | ({"maskiou"} if plus else set())
    assert set(losses) == names
    for k, v in losses.items():
        assert v.dim() == 0 and torch.isfinite(v), k
        assert float(v.detach()) > 0, k
    total = sum(float(v.detach()) for k, v in losses.items() if k != "total")
    assert float(losses["total"].detach()) == pytest.approx(total, rel=1e-5)
    losses["total"].backward()
    grads = [p.grad for p in net.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    if plus:
        assert net.maskiou_net.maskiou_net[0].weight.grad.abs().sum() > 0
    for a, b in zip(before, targets):  # the loss does not modify its inputs
        assert all(torch.equal(a[k], b[k]) if isinstance(a[k], torch.Tensor) else a[k] == b[k] for k in a)


def _perfect_outputs(targets, cfg):
    """Head outputs that predict every target exactly (boxes, classes, masks, semantic map)."""
    priors = make_priors(cfg)
    h = w = SIZE // 4
    k = cfg.mask_dim
    out = {"loc": [], "conf": [], "coef": [], "proto": [], "segm": []}
    for t in targets:
        m = match_priors(t["boxes"], t["labels"], priors)
        out["loc"].append(m.loc)
        conf = torch.full((len(priors), cfg.num_classes), -20.0)
        conf[torch.arange(len(priors)), m.labels.clamp(min=0)] = 20.0
        out["conf"].append(conf)
        small = F.interpolate(t["masks"][None].float(), (h, w), mode="bilinear", align_corners=False)[0] > 0.5
        proto = torch.zeros(h, w, k)
        proto[..., : len(small)] = (2 * small.float() - 1).permute(1, 2, 0)
        out["proto"].append(proto)
        coef = torch.zeros(len(priors), k)
        coef[torch.arange(len(priors)), m.gt_index] = 30.0
        out["coef"].append(coef)
        seg_small = F.interpolate(t["masks"][None].float(), (h // 2, w // 2), mode="bilinear", align_corners=False)[0] > 0.5
        segm = torch.full((cfg.num_classes - 1, h // 2, w // 2), -30.0)
        for mask, label in zip(seg_small, t["labels"]):
            segm[label][mask] = 30.0
        out["segm"].append(segm)
    return {key: torch.stack(v) for key, v in out.items()}


def test_loss_is_near_zero_for_a_perfect_prediction(fixed_batch):
    _, (_, targets) = fixed_batch
    cfg = tiny_config()
    out = _perfect_outputs(targets, cfg)
    losses = yolact_loss(out, targets, make_priors(cfg))
    for k, v in losses.items():
        assert float(v) < 1e-4, (k, float(v))
    # a constant offset of 0.5 on every regression: smooth-L1 0.125 x 4 coordinates x alpha 1.5 per positive
    out["loc"] = out["loc"] + 0.5
    assert float(yolact_loss(out, targets, make_priors(cfg))["box"]) == pytest.approx(0.75, rel=1e-5)


def test_masks_to_train_caps_the_masks_and_keeps_the_scale(fixed_batch):
    _, (_, targets) = fixed_batch
    cfg = tiny_config()
    out = _perfect_outputs(targets[:1], cfg)
    out["proto"] = torch.zeros_like(out["proto"])  # every mask pixel predicts 0.5: BCE log 2 per pixel
    full = yolact_loss(out, targets[:1], make_priors(cfg))["mask"]
    capped = yolact_loss(out, targets[:1], make_priors(cfg), cfg=YolactLossConfig(masks_to_train=1))["mask"]
    assert float(full) > 0 and float(capped) > 0
    # same order of magnitude: the subset's loss is scaled up by (positives / kept)
    assert 0.2 < float(capped) / float(full) < 5


# --------------------------------------------------------------------------------------
# the trainer
# --------------------------------------------------------------------------------------
def test_learning_rate_schedule():
    kw = dict(lr=1e-3, iterations=100, warmup_iters=10, warmup_init_lr=1e-4, lr_steps=(0.7, 0.9), gamma=0.1)
    assert learning_rate(0, schedule="step", **kw) == pytest.approx(1e-4)
    assert learning_rate(5, schedule="step", **kw) == pytest.approx(5.5e-4)
    assert learning_rate(10, schedule="step", **kw) == pytest.approx(1e-3)
    assert learning_rate(69, schedule="step", **kw) == pytest.approx(1e-3)
    assert learning_rate(70, schedule="step", **kw) == pytest.approx(1e-4)
    assert learning_rate(95, schedule="step", **kw) == pytest.approx(1e-5)
    assert learning_rate(10, schedule="cosine", **kw) == pytest.approx(1e-3)
    assert learning_rate(55, schedule="cosine", **kw) == pytest.approx(5e-4)
    assert learning_rate(100, schedule="cosine", **kw) == pytest.approx(0.0, abs=1e-12)


def test_batch_sampler_covers_epochs_and_resumes_the_same_stream():
    full = list(EpochBatchSampler(10, 4, 0, 6, seed=1))
    keys = [k for batch in full for k in batch]
    assert sorted(i for e, i in keys if e == 0) == list(range(10))
    assert sorted(i for e, i in keys if e == 1) == list(range(10))
    assert list(EpochBatchSampler(10, 4, 3, 6, seed=1)) == full[3:]
    assert list(EpochBatchSampler(10, 4, 0, 6, seed=2)) != full


@pytest.mark.slow  # ~90 s on a quiet 2-core CPU (30 iterations); the loss-falls tests of tests/test_loss_*.py stay in the default run
def test_training_on_a_fixed_batch_lowers_the_loss(fixed_batch, tmp_path):
    dataset, _ = fixed_batch
    subset = torch.utils.data.Subset(dataset, range(4))
    subset.class_names = dataset.class_names
    result = train(model=tiny_config(), data=subset, out=str(tmp_path), iterations=30, batch_size=4, lr=2e-3,
                   warmup_iters=5, lr_steps=(0.9,), checkpoint_every=100, progress=False)
    log = [json.loads(line) for line in open(result.log_path)]
    totals = [r["total"] for r in log]
    assert [r["iteration"] for r in log] == list(range(1, 31))
    assert all(math.isfinite(t) for t in totals)
    first, last = np.mean(totals[:3]), np.mean(totals[-3:])
    assert last < 0.5 * first, (first, last)
    assert {"box", "conf", "mask", "semantic", "lr", "seconds"} <= set(log[0])


def _state_equal(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_resume_continues_exactly_where_the_run_stopped(coco_folder, tmp_path):
    common = dict(model=tiny_config(), data=coco_folder, iterations=4, batch_size=2, warmup_iters=2,
                  checkpoint_every=2, progress=False, seed=5)
    full = train(out=str(tmp_path / "full"), val_data=coco_folder, **common)
    assert (tmp_path / "full" / "iter_2.pth").exists() and (tmp_path / "full" / "iter_4.pth").exists()
    assert set(full.val_losses) == {"box", "conf", "mask", "semantic", "total"}
    ckpt2 = torch.load(tmp_path / "full" / "iter_2.pth", weights_only=True)
    assert ckpt2["iteration"] == 2 and ckpt2["config"] == "tiny_yolact_128"
    assert ckpt2["optimizer"]["state"]  # momentum buffers are saved

    resumed = train(out=str(tmp_path / "resumed"), resume=str(tmp_path / "full" / "iter_2.pth"), **common)
    assert resumed.start_iteration == 2
    log = [json.loads(line) for line in open(resumed.log_path)]
    assert [r["iteration"] for r in log] == [3, 4]
    full_log = [json.loads(line) for line in open(full.log_path) if '"val"' not in line]
    assert [r["total"] for r in log] == pytest.approx([r["total"] for r in full_log[2:]], rel=1e-5)
    a = torch.load(full.last_checkpoint, weights_only=True)
    b = torch.load(resumed.last_checkpoint, weights_only=True)
    assert b["iteration"] == 4
    for k in a["model"]:
        assert torch.allclose(a["model"][k].float(), b["model"][k].float(), atol=1e-5), k
    for pid, st in a["optimizer"]["state"].items():
        assert torch.allclose(st["momentum_buffer"], b["optimizer"]["state"][pid]["momentum_buffer"], atol=1e-5)

    # resuming into the run's own folder drops the log records after the checkpoint, then appends
    again = train(out=str(tmp_path / "full"), resume=str(tmp_path / "full" / "iter_2.pth"), **common)
    iterations = [json.loads(line)["iteration"] for line in open(again.log_path) if '"val"' not in line]
    assert iterations == [1, 2, 3, 4]

    # the shippable fp16 weights load through the strict loader into a float32 model
    net = Yolact(tiny_config())
    load_weights(net, full.final_weights, model_name="tiny_yolact_128")
    assert net.backbone.conv1.weight.dtype == torch.float32
    for k, v in net.state_dict().items():
        if v.is_floating_point():
            assert torch.equal(v, a["model"][k].half().float()), k


def test_resume_refuses_other_models_and_weights_only_files(coco_folder, tmp_path):
    common = dict(data=coco_folder, out=str(tmp_path / "o"), iterations=3, batch_size=2, progress=False)
    first = train(model=tiny_config(), checkpoint_every=1, **{**common, "iterations": 1})
    other = dataclasses.replace(tiny_config(), name="other_model")
    with pytest.raises(CheckpointError, match="is for model 'tiny_yolact_128', not 'other_model'"):
        train(model=other, resume=first.last_checkpoint, **common)
    with pytest.raises(CheckpointError, match="not a training checkpoint"):
        train(model=tiny_config(), resume=first.final_weights, **common)
    with pytest.raises(ConfigError, match="leaves nothing to train"):
        train(model=tiny_config(), resume=first.last_checkpoint, **{**common, "iterations": 1})


def test_validation_leaves_the_model_untouched(fixed_batch):
    dataset, _ = fixed_batch
    torch.manual_seed(0)
    net = Yolact(tiny_config()).train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    rng_before = torch.get_rng_state()
    losses = validation_loss(net, torch.utils.data.Subset(dataset, range(3)), batch_size=2)
    assert all(math.isfinite(v) for v in losses.values())
    assert _state_equal(before, net.state_dict())  # BatchNorm running stats not updated
    assert net.training and torch.equal(rng_before, torch.get_rng_state())


CLASS_KEYS = {"prediction_layers.0.conf_layer.weight", "prediction_layers.0.conf_layer.bias",
              "semantic_seg_conv.weight", "semantic_seg_conv.bias"}
MASKIOU_KEYS = {"maskiou_net.maskiou_net.10.weight", "maskiou_net.maskiou_net.10.bias"}


def test_fine_tuning_on_other_classes_keeps_the_rest(tmp_path):
    five = Yolact(tiny_config(use_maskiou=True))
    init_from_scratch(five)
    path = str(tmp_path / "five.pth")
    torch.save({"model": five.state_dict(), "iteration": 7}, path)
    three = Yolact(tiny_config(use_maskiou=True, class_names=("a", "b", "c")))
    init_from_scratch(three)
    fresh = {k: v.clone() for k, v in three.state_dict().items()}
    kept, reinit = load_matching_weights(three, path)
    assert set(reinit) == CLASS_KEYS | MASKIOU_KEYS
    now = three.state_dict()
    assert set(kept) == set(now) - set(reinit)
    for k in kept:
        assert torch.equal(now[k], five.state_dict()[k]), k
    for k in reinit:
        assert torch.equal(now[k], fresh[k]), k


def test_train_with_init_weights_adapts_to_the_dataset_classes(coco_folder, tmp_path, caplog):
    # the same scenes with 3 classes: categories 1..5 folded onto 1..3
    root = tmp_path / "three"
    generate_dataset(str(root), images=4, seed=3, size=(112, 144), n_objects=(2, 5))
    ann = json.loads((root / "annotations.json").read_text())
    ann["categories"] = [{"id": i, "name": n} for i, n in ((1, "a"), (2, "b"), (3, "c"))]
    for a in ann["annotations"]:
        a["category_id"] = (a["category_id"] - 1) % 3 + 1
    (root / "annotations.json").write_text(json.dumps(ann))
    five = Yolact(tiny_config())
    torch.save(five.state_dict(), tmp_path / "five.pth")

    with caplog.at_level(logging.INFO, logger="rtseg.train"):
        result = train(model=tiny_config(), data=str(root), out=str(tmp_path / "o"), iterations=1, batch_size=2,
                       init_weights=str(tmp_path / "five.pth"), progress=False)
    init_msgs = [r.getMessage() for r in caplog.records if r.getMessage().startswith("init weights")]
    assert len(init_msgs) == 1
    assert all(k in init_msgs[0] for k in CLASS_KEYS) and "kept" in init_msgs[0]
    final = torch.load(result.final_weights, weights_only=True)
    assert final["prediction_layers.0.conf_layer.weight"].shape[0] == 3 * 4  # 3 anchors x (3 classes + bg)
    assert final["semantic_seg_conv.weight"].shape[0] == 3
    assert final["backbone.conv1.weight"].dtype == torch.float16


def test_init_weights_of_another_architecture_are_refused(tmp_path):
    wide = Yolact(dataclasses.replace(get_config("yolact_resnet18_384"), max_size=SIZE))
    torch.save(wide.state_dict(), tmp_path / "wide.pth")
    with pytest.raises(CheckpointError, match="mis-shaped"):
        load_matching_weights(Yolact(tiny_config()), str(tmp_path / "wide.pth"))


def test_load_weights_accepts_float16_state_dicts(tmp_path):
    net = Yolact(tiny_config())
    half = {k: (v.half() if v.is_floating_point() else v) for k, v in net.state_dict().items()}
    torch.save(half, tmp_path / "half.pth")
    other = Yolact(tiny_config())
    load_weights(other, str(tmp_path / "half.pth"), model_name="tiny")
    assert all(p.dtype == torch.float32 for p in other.parameters())
    assert torch.equal(other.fpn.lat_layers[0].weight, half["fpn.lat_layers.0.weight"].float())
    half["fpn.lat_layers.0.weight"] = half["fpn.lat_layers.0.weight"][:1]  # the strict checks still apply
    torch.save(half, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match="mis-shaped"):
        load_weights(other, str(tmp_path / "bad.pth"), model_name="tiny")


@pytest.mark.parametrize("change, message", [
    (dict(iterations=0), "iterations must be"),
    (dict(batch_size=0), "batch size"),
    (dict(lr=-1.0), "learning rate"),
    (dict(optimizer="adam"), "optimizer must be"),
    (dict(schedule="linear"), "schedule must be"),
    (dict(lr_steps=(0.9, 0.5)), "lr steps"),
    (dict(gamma=0.0), "gamma"),
    (dict(warmup_init_lr=1.0), "warm-up initial lr"),
    (dict(checkpoint_every=0), "checkpoint interval"),
    (dict(init_weights="a.pth", resume="b.pth"), "not both"),
    (dict(data="/nonexistent/folder"), "does not exist"),
    (dict(device="tpu"), "device"),
])
def test_bad_settings_raise_one_line_errors(coco_folder, tmp_path, change, message):
    kw = dict(model=tiny_config(), data=coco_folder, out=str(tmp_path), iterations=2, progress=False)
    with pytest.raises(ConfigError, match=message) as info:
        train(**{**kw, **change})
    assert "\n" not in str(info.value)


def test_unknown_model_name_is_a_config_error(coco_folder, tmp_path):
    with pytest.raises(ConfigError, match="unknown model"):
        train(model="yolact_resnet18_half", data=coco_folder, out=str(tmp_path), iterations=1, progress=False)


def test_priors_to_xyxy():
    assert priors_to_xyxy(torch.tensor([[0.5, 0.5, 0.2, 0.4]]))[0].tolist() == pytest.approx([0.4, 0.3, 0.6, 0.7])


@pytest.mark.parametrize("annotations", ["none", "only empty masks"])
def test_training_on_a_set_without_usable_annotations_is_refused_before_it_starts(tmp_path, annotations):
    """It used to train and write weights (issue 15, item 14); now one line, and no file."""
    from cli_helpers import assert_one_line_error, run_cli

    root = tmp_path / "set"
    generate_dataset(str(root), images=2, seed=3, size=(64, 80), n_objects=(1, 2))
    data = json.loads((root / "annotations.json").read_text())
    if annotations == "none":
        data["annotations"] = []
    else:  # every polygon shorter than 3 points: masks with no pixel
        data["annotations"] = [{"image_id": img["id"], "category_id": data["categories"][0]["id"],
                                "segmentation": [[1, 1, 5, 5]]} for img in data["images"]]
    (root / "annotations.json").write_text(json.dumps(data))
    out = tmp_path / "out"
    with pytest.raises(ConfigError, match="has no usable annotations: expected at least one non-crowd annotation") as info:
        train(model=tiny_config(), data=str(root), out=str(out), iterations=2, progress=False)
    assert "\n" not in str(info.value) and f"found {len(data['annotations'])} annotation(s) in 2 image(s)" in str(info.value)
    assert not out.exists()
    if annotations == "none":  # the command line says the same in one line
        proc = run_cli("train", "--data", str(root), "--out", str(out), "--iterations", "2", timeout=300)
        assert_one_line_error(proc, 2, "has no usable annotations")
        assert not out.exists()
