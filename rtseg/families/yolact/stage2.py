"""YOLACT++'s second stage: the fast mask re-scoring network on the kept detections' cropped soft
masks, as an explicit network module (``rtseg export`` writes it as ``<stem>.stage2.onnx`` beside the
stage-1 graph).

Post-processing (:func:`rtseg.families.yolact.postprocess.postprocess`) assembles and crops the soft
masks of the detections Fast NMS kept, then calls stage 2 through the callable
``stage2({"masks", "class_ids"}) -> {"maskiou"}`` (:data:`rtseg.families.base.Stage2`), so a backend
can run it: the torch module below, ONNX Runtime or TensorRT with the number of detections ``K`` as
the dynamic axis. Upstream: dbolya/yolact ``layers/output_utils.py`` ``postprocess`` with
``cfg.rescore_mask`` (``maskiou_net(masks.unsqueeze(1))`` then the score of the detection's class).
"""

from __future__ import annotations

import torch
from torch import nn

from rtseg.families.yolact.network import Yolact, _level_sizes


class YolactStage2(nn.Module):
    """``forward(masks float32[K, 1, h, w], class_ids int64[K]) -> (maskiou float32[K],)``: the
    predicted mask IoU of each detection's class. Shares the parameters of ``net.maskiou_net``."""

    input_names = ("masks", "class_ids")
    output_names = ("maskiou",)

    def __init__(self, net: Yolact) -> None:
        super().__init__()
        self.maskiou_net = net.maskiou_net
        # the prototypes are at twice P3's resolution (ProtoNet's upsampling of P3)
        self.mask_size = 2 * _level_sizes(int(net.cfg.max_size))[0][0]
        #: the most detections post-processing hands it (Fast NMS keeps ``max_num_detections``)
        self.max_k = int(net.cfg.max_num_detections)

    def example_inputs(self, k: int, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """``k`` detections of zeros in the shapes of :meth:`forward` (for export)."""
        s = self.mask_size
        return torch.zeros(k, 1, s, s, device=device), torch.zeros(k, dtype=torch.int64, device=device)

    def forward(self, masks: torch.Tensor, class_ids: torch.Tensor) -> tuple[torch.Tensor]:
        return (self.maskiou_net(masks).gather(1, class_ids.view(-1, 1))[:, 0],)
