"""CenterMask's second stage: the RoI heads on the pooled boxes of one image, as an explicit network
module (``rtseg export`` writes it as ``<stem>.stage2.onnx`` beside the stage-1 graph).

Stage 1 (:class:`~rtseg.families.centermask.network.CenterMask`) ends at the FPN features and the
FCOS head; post-processing decodes, NMS-es and RoI-pools the kept boxes (``roi_align``, a
data-dependent gather that stays a torch op), then calls stage 2 through the callable
``stage2({"roi_feats", "class_ids"}) -> {"mask_probs", "maskiou"}``
(:data:`rtseg.families.base.Stage2`), so a backend can run it: the torch module below, ONNX Runtime
or TensorRT with the number of RoIs ``K`` as the dynamic axis.

Upstream: centermask2 ``SpatialAttentionMaskHead`` + ``mask_rcnn_inference`` (the predicted
class's mask, sigmoid) and ``MaskIoUHead`` + ``mask_iou_inference`` (the predicted class's
maskiou), ``centermask/modeling/centermask/{mask_head,maskiou_head}.py``.
"""

from __future__ import annotations

import torch
from torch import nn

from rtseg.families.centermask.network import CenterMask


class CenterMaskStage2(nn.Module):
    """``forward(roi_feats float32[K, C, R, R], class_ids int64[K]) -> (mask_probs float32[K, 2R, 2R],
    maskiou float32[K])`` (``maskiou`` only with the MaskIoU head): the mask of each RoI's class,
    sigmoid, and that class's predicted mask IoU. Shares the parameters of ``net.roi_heads``."""

    input_names = ("roi_feats", "class_ids")

    def __init__(self, net: CenterMask) -> None:
        super().__init__()
        self.mask_head = net.roi_heads.mask_head
        self.maskiou_head = getattr(net.roi_heads, "maskiou_head", None)
        self.output_names: tuple[str, ...] = ("mask_probs", "maskiou") if self.maskiou_head is not None \
            else ("mask_probs",)
        self.cfg = net.cfg
        #: the most RoIs post-processing hands it (the NMS keeps ``post_nms_topk``)
        self.max_k = int(net.cfg.post_nms_topk)

    def example_inputs(self, k: int, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """``k`` RoIs of zeros in the shapes of :meth:`forward` (for export)."""
        r = int(self.cfg.pooler_resolution)
        return (torch.zeros(k, int(self.cfg.fpn_channels), r, r, device=device),
                torch.zeros(k, dtype=torch.int64, device=device))

    def forward(self, roi_feats: torch.Tensor, class_ids: torch.Tensor) -> tuple[torch.Tensor, ...]:
        logits = self.mask_head(roi_feats)  # [K, classes, 2R, 2R]
        index = class_ids.view(-1, 1, 1, 1).expand(-1, 1, logits.shape[2], logits.shape[3])
        probs = torch.sigmoid(logits.gather(1, index))  # [K, 1, 2R, 2R]: the predicted class's mask
        if self.maskiou_head is None:
            return (probs[:, 0],)
        maskiou = self.maskiou_head(roi_feats, probs).gather(1, class_ids.view(-1, 1))[:, 0]
        return probs[:, 0], maskiou
