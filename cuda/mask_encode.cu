// cuda/mask_encode.cu: bit-packed mask windows (wire format `bitpacked-window`) on the GPU.
//
// Torch / NumPy reference twin: rtseg/structures.py `CompactMasks.from_dense` (`dense_windows`,
// then numpy.packbits per window) and rtseg/postprocess `pack_masks` (docs/wire-format.md, section 4): per instance the tightest window
// x0 <= x < x1, y0 <= y < y1 (an empty mask gets 0, 0, 0, 0), its pixels flattened row-major
// and packed most significant bit first (numpy.packbits), zero padding in the last byte,
// masks laid out back to back in instance order. The publisher then copies these bytes
// (ceil(window area / 8) per instance) instead of N * H * W booleans.
//
// Three launches (rtseg/kernels/masks.py `encode_masks_cuda` runs them in order):
//
// 1. mask_row_extents: grid (ceil(N * H / 8)), block 256 = 8 warps, one warp per mask row.
//      masks    uint8[N, H, W] contiguous (a torch.bool tensor's storage; non-zero = set)
//      row_lo   int32[N, H] written: smallest set column of the row, or W if none
//      row_hi   int32[N, H] written: largest set column + 1, or 0 if none
// 2. mask_windows_from_rows: grid (ceil(N / 128)), block 128, one thread per instance.
//      windows  int32[N, 4] written: x0, y0, x1, y1 (0, 0, 0, 0 for an empty mask)
//      lengths  int64[N] written: ceil((x1 - x0) * (y1 - y0) / 8)
//    The caller then computes offsets int64[N] = exclusive cumulative sum of lengths and the
//    total (one small device-to-host copy: the header needs the windows anyway).
// 3. mask_pack_bits: grid (ceil(total / 256)), block 256, one thread per output byte.
//      offsets  int64[N]; blob uint8[total] written.
//
// Exact: integer work only; the test asks for the very bytes encode_message writes.

// Set columns of one row visited by one lane (start, start + stride, ...): lo = smallest,
// hi = largest + 1; (w, 0) when none. A warp combines its lanes with min / max.
__host__ __device__ inline void row_extent_part(const unsigned char* row, int w, int start, int stride, int* lo, int* hi) {
  int l = w, h = 0;
  for (int x = start; x < w; x += stride)
    if (row[x]) {
      if (x < l) l = x;
      h = x + 1;  // increasing x within a lane
    }
  *lo = l;
  *hi = h;
}

// Window of one instance from its rows' extents, and its byte length.
__host__ __device__ inline void window_from_rows(const int* row_lo, const int* row_hi, int h, int w,
                                                 int* window, long long* length) {
  int x0 = w, x1 = 0, y0 = -1, y1 = 0;
  for (int y = 0; y < h; ++y)
    if (row_hi[y] > 0) {
      if (y0 < 0) y0 = y;
      y1 = y + 1;
      if (row_lo[y] < x0) x0 = row_lo[y];
      if (row_hi[y] > x1) x1 = row_hi[y];
    }
  if (y0 < 0) {
    window[0] = window[1] = window[2] = window[3] = 0;
    *length = 0;
    return;
  }
  window[0] = x0, window[1] = y0, window[2] = x1, window[3] = y1;
  *length = ((long long)(x1 - x0) * (y1 - y0) + 7) / 8;
}

// The instance whose byte range holds blob byte `byte`: the last i with offsets[i] <= byte
// (instances with zero bytes share their successor's offset and come before it).
__host__ __device__ inline int instance_of_byte(const long long* offsets, int n, long long byte) {
  int lo = 0, hi = n - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (offsets[mid] <= byte)
      lo = mid;
    else
      hi = mid - 1;
  }
  return lo;
}

// Byte `local` of instance `inst`'s packed window: bits k = 8 * local + j, MSB first.
__host__ __device__ inline unsigned char packed_byte(const unsigned char* masks, int h, int w, const int* window, int inst,
                                               long long local) {
  const int x0 = window[0], y0 = window[1], ww = window[2] - window[0], wh = window[3] - window[1];
  const long long bits = (long long)ww * wh;
  const unsigned char* m = masks + (long long)inst * h * w;
  unsigned char byte = 0;
  for (int j = 0; j < 8; ++j) {
    const long long k = 8 * local + j;
    if (k >= bits) break;  // zero padding
    const long long y = y0 + k / ww, x = x0 + k % ww;
    if (m[y * w + x]) byte |= (unsigned char)(0x80u >> j);
  }
  return byte;
}

extern "C" __global__ void mask_row_extents(const unsigned char* __restrict__ masks, int n, int h, int w,
                                            int* __restrict__ row_lo, int* __restrict__ row_hi) {
  const long long row = ((long long)blockIdx.x * blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  if (row >= (long long)n * h) return;  // whole warps leave together: blockDim is a multiple of 32
  int lo, hi;
  row_extent_part(masks + row * w, w, lane, 32, &lo, &hi);
  for (int offset = 16; offset > 0; offset /= 2) {
    lo = min(lo, __shfl_down_sync(0xffffffffu, lo, offset));
    hi = max(hi, __shfl_down_sync(0xffffffffu, hi, offset));
  }
  if (lane == 0) {
    row_lo[row] = lo;
    row_hi[row] = hi;
  }
}

extern "C" __global__ void mask_windows_from_rows(const int* __restrict__ row_lo, const int* __restrict__ row_hi,
                                                  int n, int h, int w, int* __restrict__ windows,
                                                  long long* __restrict__ lengths) {
  const int inst = blockIdx.x * blockDim.x + threadIdx.x;
  if (inst >= n) return;
  window_from_rows(row_lo + (long long)inst * h, row_hi + (long long)inst * h, h, w, windows + 4 * inst, lengths + inst);
}

extern "C" __global__ void mask_pack_bits(const unsigned char* __restrict__ masks, int n, int h, int w,
                                          const int* __restrict__ windows, const long long* __restrict__ offsets,
                                          long long total, unsigned char* __restrict__ blob) {
  const long long byte = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (byte >= total || n <= 0) return;
  const int inst = instance_of_byte(offsets, n, byte);
  blob[byte] = packed_byte(masks, h, w, windows + 4 * inst, inst, byte - offsets[inst]);
}

#ifdef RTSEG_HOST_BUILD
// All three steps; offsets computed as the caller does. `blob` must hold
// sum(lengths) bytes: call first with blob = NULL to get the total in *total.
extern "C" int host_mask_encode(const unsigned char* masks, int n, int h, int w, int* windows, long long* lengths,
                                long long* offsets, unsigned char* blob, long long* total) {
  if (n < 0 || h < 1 || w < 1) return -1;
  int* lo = new int[(size_t)h];
  int* hi = new int[(size_t)h];
  long long sum = 0;
  for (int inst = 0; inst < n; ++inst) {
    for (int y = 0; y < h; ++y)
      row_extent_part(masks + ((long long)inst * h + y) * w, w, 0, 1, &lo[y], &hi[y]);
    window_from_rows(lo, hi, h, w, windows + 4 * inst, lengths + inst);
    offsets[inst] = sum;
    sum += lengths[inst];
  }
  delete[] lo;
  delete[] hi;
  *total = sum;
  if (blob)
    for (long long byte = 0; byte < sum; ++byte) {
      const int inst = instance_of_byte(offsets, n, byte);
      blob[byte] = packed_byte(masks, h, w, windows + 4 * inst, inst, byte - offsets[inst]);
    }
  return 0;
}
#endif
