"""tools/graft_backbone.py: the YOLACT built-in's ResNet-18 backbone as SOLOv2's starting point
(how the built-in SOLOv2 model was trained, docs/builtin-model.md)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rtseg.models import MODELS
from rtseg.families.solov2.network import Solov2
from rtseg.train.trainer import load_matching_weights

ROOT = Path(__file__).resolve().parents[1]
TOOL = ROOT / "tools" / "graft_backbone.py"
YOLACT = ROOT / "rtseg" / "weights" / "yolact_resnet18_half_384.pth"
SOLOV2 = "solov2_light_resnet18_half_384"


def graft(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(TOOL), *args], capture_output=True, text=True, timeout=120, cwd=ROOT)


def test_graft_replaces_only_the_backbone_and_loads_strictly(tmp_path):
    torch.manual_seed(0)
    into = Solov2(MODELS[SOLOV2]).state_dict()
    torch.save(into, tmp_path / "solov2.pth")
    proc = graft("--backbone", str(YOLACT), "--into", str(tmp_path / "solov2.pth"), "--out", str(tmp_path / "g.pth"))
    assert proc.returncode == 0, proc.stderr
    assert "120 backbone tensors" in proc.stdout
    grafted = torch.load(tmp_path / "g.pth", weights_only=True)
    net = Solov2(MODELS[SOLOV2])
    net.load_state_dict(grafted, strict=True)
    yolact = torch.load(YOLACT, weights_only=True)
    own = net.state_dict()
    # YOLACT's backbone.layers.{0..3} are mmdetection's backbone.layer{1..4}; the stem keeps its names
    assert torch.equal(own["backbone.layer3.1.conv2.weight"], yolact["backbone.layers.2.1.conv2.weight"].float())
    assert torch.equal(own["backbone.conv1.weight"], yolact["backbone.conv1.weight"].float())
    assert torch.equal(own["backbone.layer4.0.downsample.1.running_var"],
                       yolact["backbone.layers.3.0.downsample.1.running_var"].float())
    for key, value in own.items():
        if not key.startswith("backbone."):
            assert torch.equal(value, into[key]), key


def test_backbone_alone_initialises_only_the_backbone(tmp_path):
    proc = graft("--backbone", str(YOLACT), "--out", str(tmp_path / "b.pth"))
    assert proc.returncode == 0, proc.stderr
    net = Solov2(MODELS[SOLOV2])
    kept, reinit = load_matching_weights(net, str(tmp_path / "b.pth"))
    backbone = [k for k in net.state_dict() if k.startswith("backbone.")]
    assert sorted(kept) == sorted(backbone) and reinit == []


@pytest.mark.slow  # ~10 s: two model builds in a subprocess for one error line
def test_another_backbone_is_refused_in_one_line(tmp_path):
    centermask = ROOT / "rtseg" / "weights" / "centermask_lite_vovnet19_quarter_384.pth"
    proc = graft("--backbone", str(YOLACT), "--into", str(centermask), "--out", str(tmp_path / "x.pth"))
    assert proc.returncode == 2
    assert proc.stderr.startswith("graft_backbone: error: backbones differ:") and proc.stderr.count("\n") == 1
    assert not (tmp_path / "x.pth").exists()
    proc = graft("--backbone", str(tmp_path / "missing.pth"), "--out", str(tmp_path / "x.pth"))
    assert proc.returncode == 2 and "not found" in proc.stderr and "Traceback" not in proc.stderr
