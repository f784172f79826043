// cuda/rounding.cuh: the float operations every kernel rounds exactly as its torch twin does.
// Header-only, no standard headers (NVRTC has none); included by box_math.cuh and resample.cuh.
//
// On the device each operation goes through a round-to-nearest intrinsic, so that nvcc cannot
// contract `a * b + c` into a fused multiply-add (default --fmad=true): the torch twins round
// every operation, and a value exactly at a threshold must stay exactly there on the GPU too.
// On the host (the -DRTSEG_HOST_BUILD test build, x86-64 without FMA) they are plain IEEE float
// operations. rt_fma is the one deliberate fused multiply-add (fmaf: one rounding on both).
#pragma once

#define RT_HD __host__ __device__ __forceinline__

RT_HD float rt_add(float a, float b) {
#ifdef __CUDA_ARCH__
  return __fadd_rn(a, b);
#else
  return a + b;
#endif
}

RT_HD float rt_sub(float a, float b) {
#ifdef __CUDA_ARCH__
  return __fsub_rn(a, b);
#else
  return a - b;
#endif
}

RT_HD float rt_mul(float a, float b) {
#ifdef __CUDA_ARCH__
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}

RT_HD float rt_div(float a, float b) {
#ifdef __CUDA_ARCH__
  return __fdiv_rn(a, b);
#else
  return a / b;
#endif
}

RT_HD float rt_fma(float a, float b, float c) { return fmaf(a, b, c); }
