// Shared arithmetic of the NMS kernels (cuda/fast_nms.cu, cuda/greedy_nms.cu, cuda/matrix_nms.cu);
// other kernels may include it read-only. Header-only, no standard headers (NVRTC has none).
//
// Float arithmetic goes through cuda/rounding.cuh, so an IoU that is exactly at a threshold
// stays exactly there on the GPU as in the torch twins (and torchvision's CPU NMS).
#pragma once

#include "rounding.cuh"

// torch.maximum / torch.minimum / clamp for finite inputs (the NMS inputs are finite boxes)
RT_HD float rt_max(float a, float b) { return a < b ? b : a; }
RT_HD float rt_min(float a, float b) { return b < a ? b : a; }

RT_HD unsigned int rt_popc(unsigned int x) {
#ifdef __CUDA_ARCH__
  return __popc(x);
#else
  return (unsigned int)__builtin_popcount(x);
#endif
}

// IoU of two xyxy boxes (4 consecutive floats each), rounded exactly as
// rtseg.families.yolact.postprocess.box_iou and torchvision's CPU nms kernel round it:
//   w = max(0, min(a.x2, b.x2) - max(a.x1, b.x1)), h likewise, inter = w * h,
//   iou = inter / ((area_a + area_b) - inter), area = (x2 - x1) * (y2 - y1).
// Degenerate boxes follow IEEE: two zero-area boxes give 0 / 0 = NaN, as in torch.
RT_HD float box_iou(const float* a, const float* b) {
  const float w = rt_max(rt_sub(rt_min(a[2], b[2]), rt_max(a[0], b[0])), 0.0f);
  const float h = rt_max(rt_sub(rt_min(a[3], b[3]), rt_max(a[1], b[1])), 0.0f);
  const float inter = rt_mul(w, h);
  const float area_a = rt_mul(rt_sub(a[2], a[0]), rt_sub(a[3], a[1]));
  const float area_b = rt_mul(rt_sub(b[2], b[0]), rt_sub(b[3], b[1]));
  return rt_div(inter, rt_sub(rt_add(area_a, area_b), inter));
}
