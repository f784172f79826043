// cuda/mask_assembly.cu: YOLACT mask assembly, threshold(resize(crop(sigmoid(P C^T)))).
//
// Torch reference twin: rtseg/families/yolact/postprocess.py `assemble_masks` (sigmoid of the
// prototype / coefficient product, `crop_masks` with padding 1 at prototype resolution)
// followed by `masks_to_image` (F.interpolate bilinear, align_corners=False, to the frame
// size, then `> threshold`, 0.5 in `postprocess`). The crop happens BEFORE the resize, at
// prototype resolution, exactly as there.
//
// Two passes, no full-size float mask anywhere:
//
// 1. mask_assembly_proto: soft masks at prototype resolution (a few 100 KB per instance).
//    grid (ceil(h * w / 256), N), block 256, no shared memory; thread = pixel (n, row, col).
//      proto  float32[h, w, k] contiguous (the network's `proto` output of one image)
//      coef   float32[N, k] contiguous (coefficients of the kept detections)
//      boxes  float32[N, 4] contiguous, relative x1, y1, x2, y2 (may exceed [0, 1])
//      soft   float32[N, h, w] contiguous, written: sigmoid(dot) inside the padded box, else 0
// 2. mask_assembly_upsample: bilinear resize + threshold, straight to the bool masks.
//    grid (ceil(H * W / 256), N), block 256, no shared memory; thread = pixel (n, y, x).
//      soft   float32[N, h, w] from pass 1
//      masks  uint8[N, H, W] contiguous, written 0 / 1 (the storage of a torch.bool tensor)
//
// Exactness. The reference's matrix product runs in BLAS (MKL on the CPU, cuBLAS on the GPU),
// whose summation order is unspecified, and torch's sigmoid and interpolate round differently
// again (vectorised exp, fused multiply-adds chosen by the compiler and by memory layout). So
// the soft values here and there differ by a few float32 ulps (at most 6.6e-7 over 300 random
// cases with k = 32 unit-normal prototypes and coefficients, against torch on the CPU), and a
// pixel whose resized value lies that close to the threshold can come out on the other side.
// Everywhere else the masks are identical. The test (tests/test_kernels_masks.py) compares masks
// exactly except at pixels where torch's resized value is within 1e-5 of the threshold
// (NEAR_THRESHOLD_EPS), and counts and bounds those (seeded runs: 34 such pixels in 8.5 million,
// none of them flipped).

#include "resample.cuh"

// The box of one instance at mask resolution, as `sanitize_coordinates(x1, x2, size, 1)`:
// x1 * size and x2 * size ordered, then 1 pixel of padding, clamped to [0, size].
struct CropRange {
  float lo, hi;
};

__host__ __device__ inline CropRange crop_range(float a, float b, int size) {
  const float x1 = rt_mul(a, (float)size);
  const float x2 = rt_mul(b, (float)size);
  CropRange r;
  r.lo = rs_max(rt_sub(rs_min(x1, x2), 1.0f), 0.0f);
  r.hi = rs_min(rt_add(rs_max(x1, x2), 1.0f), (float)size);
  return r;
}

// Soft mask value of instance n at prototype pixel (row, col): 0 outside the padded box
// (columns lo <= col < hi, rows likewise, as crop_masks), else sigmoid(proto[row, col, :] . coef[n, :]).
__host__ __device__ inline float soft_mask_value(const float* proto, const float* coef, const float* boxes,
                                                 int h, int w, int k, int n, int row, int col) {
  const float* box = boxes + 4 * (long long)n;
  const CropRange cx = crop_range(box[0], box[2], w);
  const CropRange cy = crop_range(box[1], box[3], h);
  const float c = (float)col, r = (float)row;
  if (!(c >= cx.lo && c < cx.hi && r >= cy.lo && r < cy.hi)) return 0.0f;
  const float* p = proto + ((long long)row * w + col) * k;
  const float* q = coef + (long long)n * k;
  float acc = 0.0f;
  for (int j = 0; j < k; ++j) acc = rt_fma(p[j], q[j], acc);
  return rs_sigmoid(acc);
}

// Bilinearly resized soft value of instance n at frame pixel (y, x) (F.interpolate,
// align_corners=False, from (h, w) to (H, W)).
__host__ __device__ inline float upsampled_value(const float* soft, int h, int w, int H, int W, int n, int y, int x) {
  const LinearTaps ty = rs_linear_taps(y, h, H);
  const LinearTaps tx = rs_linear_taps(x, w, W);
  const float* s = soft + (long long)n * h * w;
  return rs_bilinear(s[(long long)ty.i0 * w + tx.i0], s[(long long)ty.i0 * w + tx.i1], s[(long long)ty.i1 * w + tx.i0],
                     s[(long long)ty.i1 * w + tx.i1], ty, tx);
}

// `> threshold`, as masks_to_image.
__host__ __device__ inline unsigned char mask_bit(float value, float threshold) { return value > threshold ? 1 : 0; }

extern "C" __global__ void mask_assembly_proto(const float* __restrict__ proto, const float* __restrict__ coef,
                                               const float* __restrict__ boxes, int n, int h, int w, int k,
                                               float* __restrict__ soft) {
  const long long pixel = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  const int inst = blockIdx.y;
  if (inst >= n || pixel >= (long long)h * w) return;
  const int row = (int)(pixel / w), col = (int)(pixel % w);
  soft[(long long)inst * h * w + pixel] = soft_mask_value(proto, coef, boxes, h, w, k, inst, row, col);
}

extern "C" __global__ void mask_assembly_upsample(const float* __restrict__ soft, int n, int h, int w, int H, int W,
                                                  float threshold, unsigned char* __restrict__ masks) {
  const long long pixel = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  const int inst = blockIdx.y;
  if (inst >= n || pixel >= (long long)H * W) return;
  const int y = (int)(pixel / W), x = (int)(pixel % W);
  masks[(long long)inst * H * W + pixel] = mask_bit(upsampled_value(soft, h, w, H, W, inst, y, x), threshold);
}

#ifdef RTSEG_HOST_BUILD
// Host drivers: the same functions for every index the launches cover. Return 0, or -1 on
// sizes a launch would reject.
extern "C" int host_mask_assembly_proto(const float* proto, const float* coef, const float* boxes, int n, int h, int w,
                                        int k, float* soft) {
  if (n < 0 || h < 1 || w < 1 || k < 1) return -1;
  for (int inst = 0; inst < n; ++inst)
    for (int row = 0; row < h; ++row)
      for (int col = 0; col < w; ++col)
        soft[((long long)inst * h + row) * w + col] = soft_mask_value(proto, coef, boxes, h, w, k, inst, row, col);
  return 0;
}

// values != NULL: also writes the resized soft values float32[N, H, W] (what the test
// compares with torch before thresholding).
extern "C" int host_mask_assembly_upsample(const float* soft, int n, int h, int w, int H, int W, float threshold,
                                           unsigned char* masks, float* values) {
  if (n < 0 || h < 1 || w < 1 || H < 1 || W < 1) return -1;
  for (int inst = 0; inst < n; ++inst)
    for (int y = 0; y < H; ++y)
      for (int x = 0; x < W; ++x) {
        const float v = upsampled_value(soft, h, w, H, W, inst, y, x);
        const long long i = ((long long)inst * H + y) * W + x;
        masks[i] = mask_bit(v, threshold);
        if (values) values[i] = v;
      }
  return 0;
}
#endif
