// cuda/resample.cuh: float arithmetic shared by the mask and preprocessing kernels
// (mask_assembly.cu, mask_paste.cu, preprocess.cu).
//
// Everything here is `__host__ __device__` so that the host build (tests/cuda_host.py) runs
// the same code as the GPU. Two things would otherwise make the two builds round differently:
//
// - nvcc contracts `a * b + c` into one fused multiply-add on the device (default --fmad=true),
//   g++ does not on a baseline x86-64 host. So every multiply, add and divide below goes
//   through rt_mul / rt_add / rt_div (cuda/rounding.cuh: one IEEE rounding each, never
//   contracted) and every fused multiply-add through rt_fma (fmaf: one rounding on both).
// - expf differs between CUDA's libdevice and glibc by up to 2 ulp: only sigmoid uses it, and
//   the tests bound what that changes (see tests/test_kernels_masks.py).
//
// No standard headers: NVRTC (the loader's fallback compiler) has none. The math functions used
// (fmaf, floorf, fabsf, expf, rintf) are built into nvcc and NVRTC alike.
#pragma once

#include "rounding.cuh"

#ifndef RTSEG_RS_HD
#define RTSEG_RS_HD __host__ __device__ __forceinline__
#endif


RTSEG_RS_HD float rs_min(float a, float b) { return a < b ? a : b; }
RTSEG_RS_HD float rs_max(float a, float b) { return a > b ? a : b; }
RTSEG_RS_HD int rs_imin(int a, int b) { return a < b ? a : b; }
RTSEG_RS_HD int rs_imax(int a, int b) { return a > b ? a : b; }

// 1 / (1 + exp(-x)), torch.sigmoid's formula.
RTSEG_RS_HD float rs_sigmoid(float x) { return rt_div(1.0f, rt_add(1.0f, expf(-x))); }

// Two taps of a 1-d bilinear resize with align_corners=False, as torch's upsample_bilinear2d
// (ATen/native/UpSample.h: area_pixel_compute_scale, area_pixel_compute_source_index,
// guard_index_and_lambda): scale = in / out in float, src = scale * (dst + 0.5) - 0.5 (one
// rounding: torch's CPU and CUDA builds both contract it to a fused multiply-add), clamped at
// 0; i0 = floor(src) (at most in - 1), i1 = i0 + 1 except at the last input index;
// lambda1 = src - i0 clamped to [0, 1], lambda0 = 1 - lambda1.
struct LinearTaps {
  int i0, i1;
  float l0, l1;
};

RTSEG_RS_HD LinearTaps rs_linear_taps(int dst, int in_size, int out_size) {
  const float scale = rt_div((float)in_size, (float)out_size);
  float src = rt_fma(scale, rt_add((float)dst, 0.5f), -0.5f);
  if (src < 0.0f) src = 0.0f;
  LinearTaps t;
  t.i0 = rs_imin((int)floorf(src), in_size - 1);
  t.l1 = rs_min(rs_max(rt_sub(src, (float)t.i0), 0.0f), 1.0f);
  t.l0 = rt_sub(1.0f, t.l1);
  t.i1 = t.i0 + (t.i0 < in_size - 1 ? 1 : 0);
  return t;
}

// Bilinear blend of four samples: rows first (v00, v01 along x), then the two rows along y.
RTSEG_RS_HD float rs_bilinear(float v00, float v01, float v10, float v11, const LinearTaps& ty,
                              const LinearTaps& tx) {
  const float top = rt_fma(v01, tx.l1, rt_mul(v00, tx.l0));
  const float bottom = rt_fma(v11, tx.l1, rt_mul(v10, tx.l0));
  return rt_fma(bottom, ty.l1, rt_mul(top, ty.l0));
}

// float32 -> IEEE binary16 bits, round to nearest even (what __float2half_rn and torch's
// .half() do), overflow to infinity, NaN kept NaN. Plain integer code so that the host build
// and NVRTC (no cuda_fp16.h there) give the same bits as the device.
RTSEG_RS_HD unsigned short rs_float_to_half_bits(float f) {
  union {
    float f;
    unsigned int u;
  } v;
  v.f = f;
  const unsigned int x = v.u;
  const unsigned int sign = (x >> 16) & 0x8000u;
  const unsigned int abs = x & 0x7fffffffu;
  if (abs >= 0x7f800000u)  // inf or NaN
    return (unsigned short)(sign | 0x7c00u | (abs > 0x7f800000u ? 0x200u : 0u));
  if (abs >= 0x477ff000u) return (unsigned short)(sign | 0x7c00u);  // rounds to >= 65520: inf
  if (abs < 0x38800000u) {  // below the smallest normal half: subnormal (or zero)
    if (abs < 0x33000000u) return (unsigned short)sign;  // < 2^-25: rounds to 0 (2^-25 ties to even 0)
    const unsigned int mant = (abs & 0x007fffffu) | 0x00800000u;
    const int shift = 126 - (int)(abs >> 23);  // 14 .. 24: value = mant * 2^(e - 150), half unit 2^-24
    const unsigned int q = mant >> shift;
    const unsigned int rem = mant & ((1u << shift) - 1u);
    const unsigned int half = 1u << (shift - 1);
    const unsigned int r = q + ((rem > half || (rem == half && (q & 1u))) ? 1u : 0u);
    return (unsigned short)(sign | r);
  }
  // normal: rebias exponent (127 -> 15) and round the 23-bit mantissa to 10 bits
  const unsigned int e_m = abs - 0x38000000u;  // exponent rebias, mantissa untouched
  const unsigned int q = e_m >> 13;
  const unsigned int rem = e_m & 0x1fffu;
  const unsigned int r = q + ((rem > 0x1000u || (rem == 0x1000u && (q & 1u))) ? 1u : 0u);
  return (unsigned short)(sign | r);
}
