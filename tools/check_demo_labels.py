"""Check the overlay of the README's demo: on the built-in model's real output for the first N
frames of the synthetic video (the README's first command records 200), every detection is
labelled, or a higher-scoring detection of the same object (mask IoU >= rtseg.render.DUPLICATE_IOU)
is; every label, as painted, is filled with its own class colour (none painted over, none
outside the image).

    python tools/check_demo_labels.py --frames 200

Prints the counts; exits 1 if any frame breaks a rule (tests/test_render.py checks 10 frames).
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from rtseg.render import _fps_rect, _same_object, class_color, label_boxes, render
from rtseg.segmenter import Segmenter
from rtseg.sources import open_source


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=200)
    parser.add_argument("--model", default="yolact_resnet18_half_384")
    args = parser.parse_args()
    seg = Segmenter(args.model)
    problems = duplicates = labels = 0
    with open_source("synthetic", max_frames=args.frames) as source:
        for frame in source:
            inst, _ = seg.process(frame.image)
            drawn = render(frame.image, inst, seg.class_names, fps=20.0)
            placed = label_boxes(inst, seg.class_names, reserved=[_fps_rect(20.0)[1]])
            labelled = {i for i, _, _ in placed}
            for j in sorted(set(range(len(inst))) - labelled):
                if any(inst.scores[i] >= inst.scores[j] and _same_object(inst, i, j) for i in labelled):
                    duplicates += 1
                else:
                    problems += 1
                    print(f"frame {frame.seq}: detection {j} has no label and no better one of its object")
            for i, _, (x1, y1, x2, y2) in placed:
                color = np.array(class_color(int(inst.class_ids[i])), np.int16)
                patch = drawn[y1:y2, x1:x2]
                if not ((patch == color).all(axis=-1).mean() > 0.3 and (patch >= color - 1).all()):
                    problems += 1
                    print(f"frame {frame.seq}: the label of detection {i} is painted over")
                labels += 1
    print(f"{args.frames} frames: {labels} labels, {duplicates} duplicates drawn without a label, {problems} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
