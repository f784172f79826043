// Matrix NMS (SOLOv2, Wang et al. 2020, Sec. 4); torch twin: rtseg/families/solov2/postprocess.py::matrix_nms.
//
// Masks come sorted by score, highest first. The mask IoU matrix is built from bit-packed masks
// (one popcount per 32 pixels instead of a float matmul over every pixel), and only for the pairs
// the decay uses (i < j, same class); everything else is 0 as in the twin's triu * same-class.
//
// Arguments (contiguous, one device); P = h * w pixels, W = ceil(P / 32) words per mask:
//   masks   uint8[N, P]      0/1 (a torch bool tensor's bytes)
//   bits    uint32[N, W]     bit b of bits[n, w] = pixel 32 w + b of mask n
//   areas   float32[N]       pixels per mask (given by the caller, or counted by matrix_nms_area_kernel)
//   labels  int64[N]; scores float32[N]
//   decay   float32[N, N]    decay_iou[i, j]: mask IoU when i < j and same class, else 0
//   comp    float32[N]       comp[i] = max_k decay_iou[k, i]
//   out     float32[N]       decayed scores
//
// matrix_nms_pack_kernel:  grid (ceil(N * W / 256)), block (256): one word per thread.
// matrix_nms_area_kernel:  grid (N), block (256), shared 256 int32: block-sum of popcounts.
// matrix_nms_iou_kernel:   grid (ceil(N * N / 8)), block (256): one warp per (i, j) pair, lanes
//                          stride over the W words (matrix_nms_pair_inter) and sum by shuffles.
// matrix_nms_comp_kernel:  grid (ceil(N / 256)), block (256): one column max per thread.
// matrix_nms_decay_kernel: grid (ceil(N / 256)), block (256): one output score per thread.
#include "box_math.cuh"

#define MATRIX_NMS_GAUSSIAN 0
#define MATRIX_NMS_LINEAR 1

// Word w of mask n: pixels 32 w .. 32 w + 31 (those below P).
RT_HD unsigned int matrix_nms_pack_word(const unsigned char* masks, long long P, long long n, long long w) {
  const unsigned char* px = masks + n * P;
  unsigned int word = 0;
  for (int b = 0; b < 32; ++b) {
    const long long p = 32 * w + b;
    if (p < P && px[p]) word |= 1u << b;
  }
  return word;
}

// Pixels set in both masks among words first, first + stride, ... < W (one lane's share).
RT_HD unsigned int matrix_nms_pair_inter(const unsigned int* a, const unsigned int* b, long long W, long long first,
                                         long long stride) {
  unsigned int n = 0;
  for (long long w = first; w < W; w += stride) n += rt_popc(a[w] & b[w]);
  return n;
}

// Pixels set in one mask among words first, first + stride, ...
RT_HD unsigned int matrix_nms_area_part(const unsigned int* a, long long W, long long first, long long stride) {
  unsigned int n = 0;
  for (long long w = first; w < W; w += stride) n += rt_popc(a[w]);
  return n;
}

// decay_iou[i, j] from the intersection count, as the twin: union = area_i + area_j - inter,
// iou = inter / max(union, 1e-12) where union > 0, else 0; kept only for i < j of one class.
RT_HD float matrix_nms_decay_iou(float inter, float area_i, float area_j, bool upper_same_class) {
  if (!upper_same_class) return 0.0f;
  const float uni = rt_sub(rt_add(area_i, area_j), inter);
  return uni > 0.0f ? rt_div(inter, rt_max(uni, 1e-12f)) : 0.0f;
}

// comp[i]: the largest decay_iou in column i (entries k >= i are 0).
RT_HD float matrix_nms_comp(const float* decay, long long N, long long i) {
  float m = 0.0f;
  for (long long k = 0; k < i; ++k) m = rt_max(m, decay[k * N + i]);
  return m;
}

// f(iou) of the decay kernel; neg_sigma = float32(-sigma) as the twin's `-sigma * iou ** 2`.
RT_HD float matrix_nms_f(float iou, int kernel, float neg_sigma) {
  if (kernel == MATRIX_NMS_GAUSSIAN) return expf(rt_mul(neg_sigma, rt_mul(iou, iou)));
  return rt_sub(1.0f, iou);
}

// scores[j] * min_i f(decay_iou[i, j]) / f(comp[i]) over every row i, the twin's matrix
// expression; the linear kernel's denominator is clamped to 1e-6 as in the twin.
RT_HD float matrix_nms_decayed_score(const float* decay, const float* comp, const float* scores, long long N,
                                     long long j, int kernel, float neg_sigma) {
  float lowest = 0.0f;
  for (long long i = 0; i < N; ++i) {
    const float num = matrix_nms_f(decay[i * N + j], kernel, neg_sigma);
    float den = matrix_nms_f(comp[i], kernel, neg_sigma);
    if (kernel == MATRIX_NMS_LINEAR) den = rt_max(den, 1e-6f);
    const float ratio = rt_div(num, den);
    lowest = (i == 0 || ratio < lowest) ? ratio : lowest;
  }
  return rt_mul(scores[j], lowest);
}

extern "C" __global__ void matrix_nms_pack_kernel(const unsigned char* masks, long long N, long long P,
                                                  unsigned int* bits) {
  const long long W = (P + 31) / 32;
  const long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (t >= N * W) return;
  bits[t] = matrix_nms_pack_word(masks, P, t / W, t % W);
}

extern "C" __global__ void matrix_nms_area_kernel(const unsigned int* bits, long long N, long long W, float* areas) {
  __shared__ unsigned int s_sum[256];
  const long long n = blockIdx.x;
  if (n >= N) return;
  s_sum[threadIdx.x] = matrix_nms_area_part(bits + n * W, W, threadIdx.x, blockDim.x);
  __syncthreads();
  for (int half = blockDim.x / 2; half > 0; half /= 2) {  // blockDim.x is 256, a power of two
    if (threadIdx.x < half) s_sum[threadIdx.x] += s_sum[threadIdx.x + half];
    __syncthreads();
  }
  if (threadIdx.x == 0) areas[n] = (float)s_sum[0];
}

extern "C" __global__ void matrix_nms_iou_kernel(const unsigned int* bits, const float* areas, const long long* labels,
                                                 long long N, long long W, float* decay) {
  const long long pair = ((long long)blockIdx.x * blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  if (pair >= N * N) return;  // whole warps leave together: N * N pairs, 32 lanes each
  const long long i = pair / N, j = pair % N;
  const bool used = i < j && labels[i] == labels[j];
  unsigned int inter = used ? matrix_nms_pair_inter(bits + i * W, bits + j * W, W, lane, 32) : 0u;
  for (int offset = 16; offset > 0; offset /= 2) inter += __shfl_down_sync(0xffffffffu, inter, offset);
  if (lane == 0) decay[pair] = matrix_nms_decay_iou((float)inter, areas[i], areas[j], used);
}

extern "C" __global__ void matrix_nms_comp_kernel(const float* decay, long long N, float* comp) {
  const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (i < N) comp[i] = matrix_nms_comp(decay, N, i);
}

extern "C" __global__ void matrix_nms_decay_kernel(const float* decay, const float* comp, const float* scores,
                                                   long long N, int kernel, float neg_sigma, float* out) {
  const long long j = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (j < N) out[j] = matrix_nms_decayed_score(decay, comp, scores, N, j, kernel, neg_sigma);
}

#ifdef RTSEG_HOST_BUILD
#include <vector>

// Every kernel for every index its launch covers. areas may be null (then counted, as on the GPU).
extern "C" int host_matrix_nms(const unsigned char* masks, const long long* labels, const float* scores,
                               const float* areas_given, long long N, long long P, int kernel, float neg_sigma,
                               float* out) {
  const long long W = (P + 31) / 32;
  std::vector<unsigned int> bits(N * W);
  for (long long t = 0; t < N * W; ++t) bits[t] = matrix_nms_pack_word(masks, P, t / W, t % W);
  std::vector<float> areas(N);
  for (long long n = 0; n < N; ++n) {
    if (areas_given) { areas[n] = areas_given[n]; continue; }
    unsigned int sum = 0;
    for (int t = 0; t < 256; ++t) sum += matrix_nms_area_part(bits.data() + n * W, W, t, 256);
    areas[n] = (float)sum;
  }
  std::vector<float> decay(N * N), comp(N);
  for (long long pair = 0; pair < N * N; ++pair) {
    const long long i = pair / N, j = pair % N;
    const bool used = i < j && labels[i] == labels[j];
    unsigned int inter = 0;
    if (used) for (int lane = 0; lane < 32; ++lane) inter += matrix_nms_pair_inter(bits.data() + i * W, bits.data() + j * W, W, lane, 32);
    decay[pair] = matrix_nms_decay_iou((float)inter, areas[i], areas[j], used);
  }
  for (long long i = 0; i < N; ++i) comp[i] = matrix_nms_comp(decay.data(), N, i);
  for (long long j = 0; j < N; ++j) out[j] = matrix_nms_decayed_score(decay.data(), comp.data(), scores, N, j, kernel, neg_sigma);
  return 0;
}
#endif
