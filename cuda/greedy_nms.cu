// Greedy NMS batched over classes (FCOS / CenterMask), with a suppression bitmask;
// torch twin: rtseg/families/centermask/postprocess.py::class_aware_nms (torchvision batched_nms).
//
// The caller (rtseg/kernels/nms.py) sorts the candidates by score (torch's stable argsort); the
// kernels see them in that order. Candidate j is suppressed when an earlier *kept* candidate i of
// the same class has IoU(i, j) > threshold, the IoU rounded as torchvision's CPU kernel rounds it
// and compared with the threshold in double precision as that kernel does.
//
// Arguments (contiguous, one device); B = ceil(N / 64) column blocks:
//   boxes     float32[N, 4]   xyxy, sorted by score
//   classes   int64[N]        class of each box
//   mask      uint64[N, B]    bit b of mask[i, w] set when i suppresses j = 64 w + b (j > i, same
//                             class, IoU above the threshold); only words w >= i / 64 are written
//                             or read
//   keep      int64[top_k]    positions (into the sorted order) of the kept candidates, in order
//   count     int32[1]        how many of keep are set (<= top_k)
//
// greedy_nms_mask_kernel:   grid (B, B), block (64), shared 64 boxes + classes. Block (x, y) covers
//   rows 64 y .. 64 y + 63 against columns 64 x .. 64 x + 63; blocks with x < y return at once.
// greedy_nms_reduce_kernel: grid (1), block (256), shared B + 64 uint64 words. Walks the column
//   blocks in order: thread 0 resolves the 64 candidates of block c against each other
//   (greedy_nms_resolve_chunk) and appends the kept ones (greedy_nms_emit); then every thread ORs
//   the kept rows into the removed-words of later blocks (greedy_nms_or_rows). Stops once top_k
//   candidates are kept, so only the work that decides the output is done, and nothing is copied
//   to the host.
#include "box_math.cuh"

#define GREEDY_NMS_BLOCK 64

// Does box i suppress box j (same class assumed)? torchvision's CPU nms: `ovr > iou_threshold`
// with ovr a float and the threshold a double.
RT_HD bool greedy_nms_suppresses(const float* box_i, const float* box_j, double thr) {
  return (double)box_iou(box_i, box_j) > thr;
}

// Bits of row i over the columns [col_start, col_start + col_count): which of them it suppresses.
RT_HD unsigned long long greedy_nms_row_bits(const float* box_i, long long class_i, int i, const float* col_boxes,
                                             const long long* col_classes, int col_start, int col_count,
                                             double thr) {
  unsigned long long bits = 0;
  for (int b = 0; b < col_count; ++b) {
    if (col_start + b <= i || col_classes[b] != class_i) continue;
    if (greedy_nms_suppresses(box_i, col_boxes + 4 * b, thr)) bits |= 1ULL << b;
  }
  return bits;
}

// Greedy pass over one block of n <= 64 candidates: `removed` are those already suppressed by
// earlier blocks, diag[b] the bits of candidate b within the block. Returns the kept bits.
RT_HD unsigned long long greedy_nms_resolve_chunk(const unsigned long long* diag, unsigned long long removed, int n) {
  unsigned long long kept = 0;
  for (int b = 0; b < n; ++b) {
    if ((removed >> b) & 1ULL) continue;
    kept |= 1ULL << b;
    removed |= diag[b];
  }
  return kept;
}

// Append the kept positions of block c to keep[count..] (at most top_k in all); the new count.
RT_HD int greedy_nms_emit(unsigned long long kept, int c, int count, int top_k, long long* keep) {
  for (int b = 0; b < GREEDY_NMS_BLOCK && count < top_k; ++b) {
    if ((kept >> b) & 1ULL) keep[count++] = (long long)c * GREEDY_NMS_BLOCK + b;
  }
  return count;
}

// Word w of the union of the mask rows of block c's kept candidates.
RT_HD unsigned long long greedy_nms_or_rows(const unsigned long long* mask, int blocks, int c,
                                            unsigned long long kept, int w) {
  unsigned long long acc = 0;
  for (int b = 0; b < GREEDY_NMS_BLOCK; ++b) {
    if ((kept >> b) & 1ULL) acc |= mask[((long long)c * GREEDY_NMS_BLOCK + b) * blocks + w];
  }
  return acc;
}

extern "C" __global__ void greedy_nms_mask_kernel(const float* boxes, const long long* classes, int N, double thr,
                                                  unsigned long long* mask) {
  const int col = blockIdx.x, row = blockIdx.y;
  if (col < row) return;
  const int blocks = (N + GREEDY_NMS_BLOCK - 1) / GREEDY_NMS_BLOCK;
  const int col_start = col * GREEDY_NMS_BLOCK;
  const int col_count = min(GREEDY_NMS_BLOCK, N - col_start);
  __shared__ float s_boxes[GREEDY_NMS_BLOCK * 4];
  __shared__ long long s_classes[GREEDY_NMS_BLOCK];
  const int t = threadIdx.x;
  if (t < col_count) {
    for (int k = 0; k < 4; ++k) s_boxes[4 * t + k] = boxes[4 * (long long)(col_start + t) + k];
    s_classes[t] = classes[col_start + t];
  }
  __syncthreads();
  const int i = row * GREEDY_NMS_BLOCK + t;
  if (i < N) {
    mask[(long long)i * blocks + col] =
        greedy_nms_row_bits(boxes + 4 * (long long)i, classes[i], i, s_boxes, s_classes, col_start, col_count, thr);
  }
}

extern "C" __global__ void greedy_nms_reduce_kernel(const unsigned long long* mask, int N, int top_k, long long* keep,
                                                    int* count) {
  const int blocks = (N + GREEDY_NMS_BLOCK - 1) / GREEDY_NMS_BLOCK;
  extern __shared__ unsigned long long s_words[];  // [blocks] removed words, then [64] diagonal words
  unsigned long long* removed = s_words;
  unsigned long long* diag = s_words + blocks;
  __shared__ unsigned long long s_kept;
  __shared__ int s_count;
  for (int w = threadIdx.x; w < blocks; w += blockDim.x) removed[w] = 0;
  if (threadIdx.x == 0) s_count = 0;
  for (int c = 0; c < blocks; ++c) {
    __syncthreads();  // removed[] and s_count of the previous block are final
    if (s_count >= top_k) break;  // the same value in every thread: uniform
    if (threadIdx.x < GREEDY_NMS_BLOCK) {
      const int i = c * GREEDY_NMS_BLOCK + threadIdx.x;
      diag[threadIdx.x] = i < N ? mask[(long long)i * blocks + c] : 0ULL;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      const int n = min(GREEDY_NMS_BLOCK, N - c * GREEDY_NMS_BLOCK);
      s_kept = greedy_nms_resolve_chunk(diag, removed[c], n);
      s_count = greedy_nms_emit(s_kept, c, s_count, top_k, keep);
    }
    __syncthreads();
    const unsigned long long kept = s_kept;
    for (int w = c + 1 + threadIdx.x; w < blocks; w += blockDim.x) removed[w] |= greedy_nms_or_rows(mask, blocks, c, kept, w);
  }
  __syncthreads();
  if (threadIdx.x == 0) count[0] = s_count;
}

#ifdef RTSEG_HOST_BUILD
#include <vector>

// Both kernels for every index their launches cover; writes keep[0..count) and returns count.
extern "C" int host_greedy_nms(const float* boxes, const long long* classes, int N, double thr, int top_k,
                               long long* keep) {
  const int blocks = (N + GREEDY_NMS_BLOCK - 1) / GREEDY_NMS_BLOCK;
  std::vector<unsigned long long> mask((size_t)N * blocks);
  for (int row = 0; row < blocks; ++row) {  // greedy_nms_mask_kernel, blocks (col, row), col >= row
    for (int col = row; col < blocks; ++col) {
      const int col_start = col * GREEDY_NMS_BLOCK;
      const int col_count = N - col_start < GREEDY_NMS_BLOCK ? N - col_start : GREEDY_NMS_BLOCK;
      for (int t = 0; t < GREEDY_NMS_BLOCK; ++t) {
        const int i = row * GREEDY_NMS_BLOCK + t;
        if (i >= N) break;
        mask[(size_t)i * blocks + col] = greedy_nms_row_bits(boxes + 4 * (long long)i, classes[i], i,
                                                             boxes + 4 * (long long)col_start, classes + col_start,
                                                             col_start, col_count, thr);
      }
    }
  }
  std::vector<unsigned long long> removed(blocks, 0), diag(GREEDY_NMS_BLOCK);
  int count = 0;
  for (int c = 0; c < blocks && count < top_k; ++c) {  // greedy_nms_reduce_kernel
    for (int t = 0; t < GREEDY_NMS_BLOCK; ++t) {
      const int i = c * GREEDY_NMS_BLOCK + t;
      diag[t] = i < N ? mask[(size_t)i * blocks + c] : 0ULL;
    }
    const int n = N - c * GREEDY_NMS_BLOCK < GREEDY_NMS_BLOCK ? N - c * GREEDY_NMS_BLOCK : GREEDY_NMS_BLOCK;
    const unsigned long long kept = greedy_nms_resolve_chunk(diag.data(), removed[c], n);
    count = greedy_nms_emit(kept, c, count, top_k, keep);
    for (int w = c + 1; w < blocks; ++w) removed[w] |= greedy_nms_or_rows(mask.data(), blocks, c, kept, w);
  }
  return count;
}
#endif
