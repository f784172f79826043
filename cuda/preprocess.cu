// cuda/preprocess.cu: resize + normalise + HWC uint8 BGR -> CHW float32 / float16, one pass.
//
// Torch reference twins: `preprocess` in rtseg/families/yolact/postprocess.py, solov2.py and
// centermask.py. All three are this one op with different parameters (the wrapper
// rtseg/kernels/masks.py `preprocess_cuda` derives them from each family's config):
//
//   resized = resize(image, (hr, wr))          bilinear, align_corners=False;
//                                              antialias=1: torch's antialiased bilinear
//                                              (CenterMask), rounded half-to-even and clamped
//                                              to [0, 255] as there
//   out[c]  = (resized[src_c] - mean_c) / std_c   for (y, x) inside (hr, wr)
//   out[c]  = 0                                   in the padding up to the canvas (hc, wc)
//
//   YOLACT: (hr, wr) = (hc, wc) = (S, S), src = (2, 1, 0) (BGR -> RGB), mean_c / std_c the BGR
//           constants of the source channel (or 0 / 255 without `normalize`).
//   SOLOv2: keep-ratio (hr, wr) inside the canvas, src = (2, 1, 0) with ImageNet RGB constants
//           or src = (0, 1, 2) with the Caffe BGR constants. Without a resize the reference
//           skips interpolate; the bilinear taps at scale 1 are exact copies, so same values.
//   CenterMask: antialias=1, src = (0, 1, 2), detectron2's BGR constants.
//
// Launch: preprocess_frames, grid (ceil(hc * wc / 256), B), block 256, no shared memory;
// thread = output pixel (b, y, x), all 3 channels.
//   images  uint8[B, H, W, 3] contiguous (BGR frames as captured)
//   out     float32[B, 3, hc, wc] contiguous (out_half = 0) or float16 (out_half = 1)
//
// Exactness. Normalisation is the reference's two roundings (subtract, divide). The bilinear
// blend rounds like torch's CUDA kernel (fused multiply-adds), and torch's CPU kernel picks
// its own order by memory layout, so values agree within a few ulps (the test asks 1e-5).
// Antialiased resizing rounds to integers: where torch's unrounded value lies within a few
// ulps of k + 0.5 the grey level can differ by one (the test counts and bounds those pixels).


#include "resample.cuh"

struct PreprocessParams {
  int h, w;    // source frame
  int hr, wr;  // resized content
  int hc, wc;  // canvas
  int src[3];
  float mean[3], std_[3];
  int antialias;
};

// Antialiased bilinear taps along one axis (torch's upsample with antialias=True,
// ATen/native/cpu/UpSampleKernel.cpp `_compute_indices_min_size_weights_aa`): support
// scale (downscaling) or 1 (upscaling), tent filter of the source distance times
// 1 / scale, weights normalised to sum 1. Returns the window start; weights go to w_out[0..size).
__host__ __device__ inline int aa_window(int dst, int in_size, int out_size, int* size, float* w_out, int capacity) {
  const float scale = rt_div((float)in_size, (float)out_size);
  const float support = scale >= 1.0f ? scale : 1.0f;
  const float invscale = scale >= 1.0f ? rt_div(1.0f, scale) : 1.0f;
  const float center = rt_mul(scale, rt_add((float)dst, 0.5f));
  const int xmin = rs_imax((int)rt_add(rt_sub(center, support), 0.5f), 0);
  int xsize = rs_imin((int)rt_add(rt_add(center, support), 0.5f), in_size) - xmin;
  if (xsize > capacity) xsize = capacity;
  float total = 0.0f;
  for (int j = 0; j < xsize; ++j) {
    const float d = fabsf(rt_mul(rt_add(rt_sub((float)(j + xmin), center), 0.5f), invscale));
    const float wt = d < 1.0f ? rt_sub(1.0f, d) : 0.0f;
    w_out[j] = wt;
    total = rt_add(total, wt);
  }
  if (total != 0.0f)
    for (int j = 0; j < xsize; ++j) w_out[j] = rt_div(w_out[j], total);
  *size = xsize;
  return xmin;
}

// longest antialiasing window handled: 2 * scale + 2 taps, i.e. downscaling by up to 15x
#define RTSEG_AA_CAPACITY 32

// The three normalised output values of canvas pixel (y, x) of one frame.
__host__ __device__ inline void preprocess_pixel(const unsigned char* image, const PreprocessParams& p, int y, int x,
                                                 float out[3]) {
  if (y >= p.hr || x >= p.wr) {
    out[0] = out[1] = out[2] = 0.0f;
    return;
  }
  float resized[3];
  if (!p.antialias) {
    const LinearTaps ty = rs_linear_taps(y, p.h, p.hr);
    const LinearTaps tx = rs_linear_taps(x, p.w, p.wr);
    const unsigned char* r0 = image + (long long)ty.i0 * p.w * 3;
    const unsigned char* r1 = image + (long long)ty.i1 * p.w * 3;
    for (int c = 0; c < 3; ++c) {
      const int s = p.src[c];
      resized[c] = rs_bilinear((float)r0[tx.i0 * 3 + s], (float)r0[tx.i1 * 3 + s], (float)r1[tx.i0 * 3 + s],
                               (float)r1[tx.i1 * 3 + s], ty, tx);
    }
  } else {
    float wy[RTSEG_AA_CAPACITY], wx[RTSEG_AA_CAPACITY];
    int ny, nx;
    const int y0 = aa_window(y, p.h, p.hr, &ny, wy, RTSEG_AA_CAPACITY);
    const int x0 = aa_window(x, p.w, p.wr, &nx, wx, RTSEG_AA_CAPACITY);
    for (int c = 0; c < 3; ++c) {
      const int s = p.src[c];
      // horizontal pass first (torch resizes the contiguous axis first), then vertical
      float acc = 0.0f;
      for (int i = 0; i < ny; ++i) {
        const unsigned char* row = image + (long long)(y0 + i) * p.w * 3;
        float hsum = 0.0f;
        for (int j = 0; j < nx; ++j) hsum = rt_fma((float)row[(x0 + j) * 3 + s], wx[j], hsum);
        acc = rt_fma(hsum, wy[i], acc);
      }
      resized[c] = rs_min(rs_max(rintf(acc), 0.0f), 255.0f);
    }
  }
  for (int c = 0; c < 3; ++c) out[c] = rt_div(rt_sub(resized[c], p.mean[c]), p.std_[c]);
}

__host__ __device__ inline PreprocessParams make_params(int h, int w, int hr, int wr, int hc, int wc, int src0,
                                                        int src1, int src2, float mean0, float mean1, float mean2,
                                                        float std0, float std1, float std2, int antialias) {
  PreprocessParams p;
  p.h = h, p.w = w, p.hr = hr, p.wr = wr, p.hc = hc, p.wc = wc;
  p.src[0] = src0, p.src[1] = src1, p.src[2] = src2;
  p.mean[0] = mean0, p.mean[1] = mean1, p.mean[2] = mean2;
  p.std_[0] = std0, p.std_[1] = std1, p.std_[2] = std2;
  p.antialias = antialias;
  return p;
}

__host__ __device__ inline void store_pixel(void* out, int out_half, long long plane, long long base, const float v[3]) {
  for (int c = 0; c < 3; ++c) {
    if (out_half)
      ((unsigned short*)out)[base + c * plane] = rs_float_to_half_bits(v[c]);
    else
      ((float*)out)[base + c * plane] = v[c];
  }
}

extern "C" __global__ void preprocess_frames(const unsigned char* __restrict__ images, int b, int h, int w, int hr, int wr,
                                            int hc, int wc, int src0, int src1, int src2, float mean0, float mean1,
                                            float mean2, float std0, float std1, float std2, int antialias,
                                            int out_half, void* __restrict__ out) {
  const long long pixel = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  const int frame = blockIdx.y;
  const long long plane = (long long)hc * wc;
  if (frame >= b || pixel >= plane) return;
  const PreprocessParams p =
      make_params(h, w, hr, wr, hc, wc, src0, src1, src2, mean0, mean1, mean2, std0, std1, std2, antialias);
  float v[3];
  preprocess_pixel(images + (long long)frame * h * w * 3, p, (int)(pixel / wc), (int)(pixel % wc), v);
  store_pixel(out, out_half, plane, (long long)frame * 3 * plane + pixel, v);
}

#ifdef RTSEG_HOST_BUILD
extern "C" int host_preprocess(const unsigned char* images, int b, int h, int w, int hr, int wr, int hc, int wc, int src0,
                               int src1, int src2, float mean0, float mean1, float mean2, float std0, float std1,
                               float std2, int antialias, int out_half, void* out) {
  if (b < 0 || h < 1 || w < 1 || hr < 1 || wr < 1 || hr > hc || wr > wc) return -1;
  const PreprocessParams p =
      make_params(h, w, hr, wr, hc, wc, src0, src1, src2, mean0, mean1, mean2, std0, std1, std2, antialias);
  const long long plane = (long long)hc * wc;
  for (int frame = 0; frame < b; ++frame)
    for (int y = 0; y < hc; ++y)
      for (int x = 0; x < wc; ++x) {
        float v[3];
        preprocess_pixel(images + (long long)frame * h * w * 3, p, y, x, v);
        store_pixel(out, out_half, plane, (long long)frame * 3 * plane + (long long)y * wc + x, v);
      }
  return 0;
}
#endif
