"""Put a trained YOLACT ResNet backbone into a SOLOv2 weights file, as a starting point for
``rtseg train --init-weights``.

The official SOLOv2 recipes start from an ImageNet-trained ResNet; none can be fetched here.
The built-in ``yolact_resnet18_half_384`` has a half-width ResNet-18 trained on the same
synthetic shapes, with the same layer shapes and the same pixel normalisation (YOLACT's BGR
means/stds reversed to RGB are ImageNet's to two decimals), so its backbone serves instead.
Only the key names differ: YOLACT's ``backbone.layers.{0..3}`` are mmdetection's
``backbone.layer{1..4}``; the stem (``conv1``, ``bn1``) and every block's inner names agree.

    .venv/bin/python tools/graft_backbone.py --backbone rtseg/weights/yolact_resnet18_half_384.pth \\
        --into run3/M/M_final_fp16.pth --out grafted.pth

``--into`` is optional: without it the file holds the backbone alone, and
``--init-weights`` leaves the FPN and heads freshly initialised. Every backbone tensor of the
target must be found in the source with the same shape, or the tool stops with one line.
"""

from __future__ import annotations

import argparse
import re
import sys

import torch

from rtseg.errors import RtsegError
from rtseg.models.checkpoint import read_state_dict


def yolact_backbone_as_mmdet(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The ``backbone.*`` tensors of a YOLACT state_dict under mmdetection ResNet names."""
    out = {}
    for key, value in state.items():
        if key.startswith("backbone."):
            out[re.sub(r"^backbone\.layers\.(\d+)\.", lambda m: f"backbone.layer{int(m.group(1)) + 1}.", key)] = value
    return out


def graft(backbone: dict[str, torch.Tensor], into: dict[str, torch.Tensor] | None) -> dict[str, torch.Tensor]:
    """``into`` with its backbone replaced by ``backbone`` (or ``backbone`` alone)."""
    if into is None:
        return dict(backbone)
    target = [k for k in into if k.startswith("backbone.")]
    missing = [k for k in target if k not in backbone]
    wrong = [f"{k} {tuple(backbone[k].shape)} vs {tuple(into[k].shape)}" for k in target
             if k in backbone and backbone[k].shape != into[k].shape]
    if missing or wrong:
        raise RtsegError(f"backbones differ: {len(missing)} keys missing from the source "
                         f"({', '.join(missing[:3])}), {len(wrong)} mis-shaped ({', '.join(wrong[:3])})")
    out = dict(into)
    for k in target:
        out[k] = backbone[k].to(into[k].dtype)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", required=True, help="YOLACT weights file whose backbone is taken")
    parser.add_argument("--into", help="SOLOv2 weights file whose FPN and heads are kept (optional)")
    parser.add_argument("--out", required=True, help="weights file to write")
    args = parser.parse_args(argv)
    try:
        backbone = yolact_backbone_as_mmdet(read_state_dict(args.backbone))
        if not backbone:
            raise RtsegError(f"'{args.backbone}' has no backbone.* tensors, expected a YOLACT weights file")
        state = graft(backbone, read_state_dict(args.into) if args.into else None)
    except RtsegError as exc:
        print(f"graft_backbone: error: {exc}", file=sys.stderr)
        return 2
    torch.save(state, args.out)
    print(f"wrote {args.out}: {len(backbone)} backbone tensors from {args.backbone}"
          f"{f', the rest from {args.into}' if args.into else ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
