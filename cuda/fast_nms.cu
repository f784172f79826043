// Fast NMS (YOLACT, Bolya et al. 2019, Sec. 3.4); torch twin: rtseg/families/yolact/postprocess.py::fast_nms.
//
// The caller (rtseg/kernels/nms.py) sorts each class's scores (torch's stable segmented sort) and
// keeps the best K = min(top_k, N); the kernels take it from there and return kept candidate indices.
//
// Arguments (all contiguous, row-major, on one device):
//   class_boxes   float32[C, K, 4]  xyxy boxes of each class's K best candidates, by score
//   sorted_scores float32[C, K]     their scores, non-increasing along K
//   sorted_index  int64[C, K]       their candidate indices (rows of the caller's boxes)
//   keep          uint8[C, K]       scratch: 1 where column j survives
//   kept_count    int32[C]          kept candidates per class
//   kept_scores   float32[C, K]     per class, the kept scores first (still non-increasing)
//   kept_index    int64[C, K]       per class, the kept candidate indices first
//   out_index, out_class int64[M], out_score float32[M]   M = min(sum(kept_count), max_detections)
//
// fast_nms_keep_kernel:  grid (C), block (256), no shared memory. Thread t of block c decides
//   columns j = t, t + 256, ... of class c (fast_nms_column_keep), then thread 0 compacts the
//   class's kept columns in order (fast_nms_compact).
// fast_nms_rank_kernel:  grid (ceil(C * K / 256)), block (256). Thread t handles kept entry
//   (c, r) = (t / K, t % K): its position in a stable descending sort of all kept scores taken
//   class-major (fast_nms_rank, binary searches in the other classes' non-increasing lists), and
//   writes the entry there when the position is below max_detections.
#include "box_math.cuh"

// Keep decision of column j of one class: the column max of triu(IoU, 1) is <= thr. The column
// holds the zeroed diagonal, so a negative threshold keeps nothing; a NaN IoU (two zero-area boxes)
// makes the max NaN, which fails `<=` as in torch.
RT_HD bool fast_nms_column_keep(const float* boxes, int j, float thr) {
  if (!(0.0f <= thr)) return false;
  const float* bj = boxes + 4 * (long long)j;
  for (int i = 0; i < j; ++i) {
    if (!(box_iou(boxes + 4 * (long long)i, bj) <= thr)) return false;
  }
  return true;
}

// Move class c's kept columns to the front of its rows of kept_scores / kept_index, in order.
RT_HD int fast_nms_compact(const unsigned char* keep, const float* scores, const long long* index, int K,
                           float* kept_scores, long long* kept_index) {
  int n = 0;
  for (int j = 0; j < K; ++j) {
    if (keep[j]) {
      kept_scores[n] = scores[j];
      kept_index[n] = index[j];
      ++n;
    }
  }
  return n;
}

// Number of the first n entries of a non-increasing list that are > s (or >= s when or_equal).
RT_HD int fast_nms_count_before(const float* row, int n, float s, bool or_equal) {
  int lo = 0, hi = n;
  while (lo < hi) {
    const int mid = lo + (hi - lo) / 2;
    const bool before = or_equal ? row[mid] >= s : row[mid] > s;
    if (before) lo = mid + 1; else hi = mid;
  }
  return lo;
}

// Position of kept entry r of class c in the stable descending sort of all kept scores flattened
// class-major: entries with a higher score, plus equal scores of earlier classes or earlier ranks.
RT_HD long long fast_nms_rank(const float* kept_scores, const int* kept_count, int C, int K, int c, int r) {
  const float s = kept_scores[(long long)c * K + r];
  long long rank = r;
  for (int c2 = 0; c2 < C; ++c2) {
    if (c2 == c) continue;
    rank += fast_nms_count_before(kept_scores + (long long)c2 * K, kept_count[c2], s, c2 < c);
  }
  return rank;
}

extern "C" __global__ void fast_nms_keep_kernel(const float* class_boxes, const float* sorted_scores,
                                                const long long* sorted_index, int C, int K, float thr,
                                                unsigned char* keep, int* kept_count, float* kept_scores,
                                                long long* kept_index) {
  const int c = blockIdx.x;
  if (c >= C) return;
  const long long row = (long long)c * K;
  for (int j = threadIdx.x; j < K; j += blockDim.x) {
    keep[row + j] = fast_nms_column_keep(class_boxes + 4 * row, j, thr) ? 1 : 0;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    kept_count[c] = fast_nms_compact(keep + row, sorted_scores + row, sorted_index + row, K,
                                     kept_scores + row, kept_index + row);
  }
}

extern "C" __global__ void fast_nms_rank_kernel(const float* kept_scores, const long long* kept_index,
                                                const int* kept_count, int C, int K, long long max_detections,
                                                long long* out_index, long long* out_class, float* out_score) {
  const long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (t >= (long long)C * K) return;
  const int c = (int)(t / K);
  const int r = (int)(t % K);
  if (r >= kept_count[c]) return;
  const long long rank = fast_nms_rank(kept_scores, kept_count, C, K, c, r);
  if (rank < max_detections) {
    out_index[rank] = kept_index[t];
    out_class[rank] = c;
    out_score[rank] = kept_scores[t];
  }
}

#ifdef RTSEG_HOST_BUILD
#include <vector>

// Both kernels for every index their launches cover, one index at a time; returns M.
extern "C" int host_fast_nms(const float* class_boxes, const float* sorted_scores, const long long* sorted_index,
                             int C, int K, float thr, long long max_detections, long long* out_index,
                             long long* out_class, float* out_score) {
  const long long ck = (long long)C * K;
  std::vector<unsigned char> keep(ck);
  std::vector<int> kept_count(C);
  std::vector<float> kept_scores(ck);
  std::vector<long long> kept_index(ck);
  for (int c = 0; c < C; ++c) {  // fast_nms_keep_kernel, block c
    const long long row = (long long)c * K;
    for (int j = 0; j < K; ++j) keep[row + j] = fast_nms_column_keep(class_boxes + 4 * row, j, thr) ? 1 : 0;
    kept_count[c] = fast_nms_compact(keep.data() + row, sorted_scores + row, sorted_index + row, K,
                                     kept_scores.data() + row, kept_index.data() + row);
  }
  long long total = 0;
  for (int c = 0; c < C; ++c) total += kept_count[c];
  const long long m = total < max_detections ? total : max_detections;
  for (long long t = 0; t < ck; ++t) {  // fast_nms_rank_kernel, thread t
    const int c = (int)(t / K), r = (int)(t % K);
    if (r >= kept_count[c]) continue;
    const long long rank = fast_nms_rank(kept_scores.data(), kept_count.data(), C, K, c, r);
    if (rank < max_detections) {
      out_index[rank] = kept_index[t];
      out_class[rank] = c;
      out_score[rank] = kept_scores[t];
    }
  }
  return (int)m;
}
#endif
