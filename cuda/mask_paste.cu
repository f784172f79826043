// cuda/mask_paste.cu: CenterMask / Mask R-CNN paste of RoI masks into the frame, all
// instances in one launch.
//
// Torch reference twin: rtseg/families/centermask/postprocess.py `paste_masks` (detectron2's
// `_do_paste_mask`: grid_sample, align_corners=False, zeros outside the RoI mask; `>= threshold`).
// Frame pixel centre c + 0.5 maps to mask coordinate u = (c + 0.5 - x0) / (x1 - x0) * M - 0.5;
// the value is the bilinear tent sum over mask taps m of max(0, 1 - |u - m|), separable in y
// and x. Taps outside [0, M) contribute nothing (grid_sample's zero padding). A box of zero
// (or negative) width or height has all weights 0, so the value is 0.
//
// Launch: mask_paste, grid (ceil(H * W / 256), N), block 256, no shared memory;
// thread = frame pixel (n, y, x).
//   masks  float32[N, Mh, Mw] contiguous, probabilities (Mh = Mw = 28 for CenterMask)
//   boxes  float32[N, 4] contiguous, x0, y0, x1, y1 in frame pixels
//   out    uint8[N, H, W] contiguous, written 0 / 1 (the storage of a torch.bool tensor)
//
// Exactness. The tent weights are computed with the reference's own operation order, so each
// weight is bit-identical. The reference then sums with two batched matmuls (MKL / cuBLAS,
// unspecified order and fused multiply-adds) where this sums the at most 2 x 2 non-zero taps
// directly (rows first, like the reference's first matmul): values differ by a few ulps at
// most, and a pixel within that distance of the threshold can flip. The tests also check the
// values against an independent float64 grid_sample: within 1e-5 (at most 3.6e-6 seen, the
// float32 rounding of u at frame coordinates), and compare masks exactly except within 1e-5 of
// the threshold (counted and bounded; seeded runs: 22 such pixels in 5.7 million, none flipped).

#include "resample.cuh"

// Tent weights of one output index along one axis: taps m0 = floor(u) and m0 + 1, weights
// max(0, 1 - |u - m|) computed as the reference does, 0 for taps outside [0, m_size) or when
// the box is empty along the axis.
struct TentTaps {
  int m0;
  float w0, w1;
};

__host__ __device__ inline TentTaps tent_taps(int index, float lo, float hi, int m_size) {
  TentTaps t;
  const float extent = rt_sub(hi, lo);
  const bool valid = extent > 0.0f;
  const float centre = rt_add((float)index, 0.5f);
  const float u = rt_sub(rt_mul(rt_div(rt_sub(centre, lo), valid ? extent : 1.0f), (float)m_size), 0.5f);
  const float fm0 = floorf(u);
  // far outside the RoI: no tap has weight (also keeps the int conversion in range)
  if (!valid || !(fm0 >= -1.0f && fm0 < (float)m_size)) {
    t.m0 = 0;
    t.w0 = t.w1 = 0.0f;
    return t;
  }
  t.m0 = (int)fm0;
  t.w0 = t.m0 >= 0 ? rs_max(rt_sub(1.0f, fabsf(rt_sub(u, (float)t.m0))), 0.0f) : 0.0f;
  t.w1 = t.m0 + 1 < m_size ? rs_max(rt_sub(1.0f, fabsf(rt_sub(u, (float)(t.m0 + 1)))), 0.0f) : 0.0f;
  return t;
}

// Pasted value of instance n at frame pixel (y, x).
__host__ __device__ inline float pasted_value(const float* masks, const float* boxes, int mh, int mw, int n, int y,
                                              int x) {
  const float* box = boxes + 4 * (long long)n;
  const TentTaps ty = tent_taps(y, box[1], box[3], mh);
  const TentTaps tx = tent_taps(x, box[0], box[2], mw);
  if ((ty.w0 == 0.0f && ty.w1 == 0.0f) || (tx.w0 == 0.0f && tx.w1 == 0.0f)) return 0.0f;
  const float* m = masks + (long long)n * mh * mw;
  // a tap whose weight is 0 may lie outside the mask: read it as 0 rather than out of bounds
  const int r0 = ty.m0, r1 = ty.m0 + 1, c0 = tx.m0, c1 = tx.m0 + 1;
  const bool ok_r0 = r0 >= 0, ok_r1 = r1 < mh, ok_c0 = c0 >= 0, ok_c1 = c1 < mw;
  float col_sum[2];
  for (int j = 0; j < 2; ++j) {
    const int c = j == 0 ? c0 : c1;
    const bool ok_c = j == 0 ? ok_c0 : ok_c1;
    const float a = ok_c && ok_r0 ? m[(long long)r0 * mw + c] : 0.0f;
    const float b = ok_c && ok_r1 ? m[(long long)r1 * mw + c] : 0.0f;
    col_sum[j] = rt_fma(ty.w1, b, rt_mul(ty.w0, a));
  }
  return rt_fma(col_sum[1], tx.w1, rt_mul(col_sum[0], tx.w0));
}

__host__ __device__ inline unsigned char paste_bit(float value, float threshold) { return value >= threshold ? 1 : 0; }

extern "C" __global__ void mask_paste(const float* __restrict__ masks, const float* __restrict__ boxes, int n, int mh,
                                      int mw, int H, int W, float threshold, unsigned char* __restrict__ out) {
  const long long pixel = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  const int inst = blockIdx.y;
  if (inst >= n || pixel >= (long long)H * W) return;
  const int y = (int)(pixel / W), x = (int)(pixel % W);
  out[(long long)inst * H * W + pixel] = paste_bit(pasted_value(masks, boxes, mh, mw, inst, y, x), threshold);
}

#ifdef RTSEG_HOST_BUILD
// values != NULL: also writes the pasted values float32[N, H, W].
extern "C" int host_mask_paste(const float* masks, const float* boxes, int n, int mh, int mw, int H, int W,
                               float threshold, unsigned char* out, float* values) {
  if (n < 0 || mh < 1 || mw < 1 || H < 1 || W < 1) return -1;
  for (int inst = 0; inst < n; ++inst)
    for (int y = 0; y < H; ++y)
      for (int x = 0; x < W; ++x) {
        const float v = pasted_value(masks, boxes, mh, mw, inst, y, x);
        const long long i = ((long long)inst * H + y) * W + x;
        out[i] = paste_bit(v, threshold);
        if (values) values[i] = v;
      }
  return 0;
}
#endif
