// CUDA permutohedral lattice filter: the whole batch in one pass, one lattice
// per image (the image index is part of every lattice key), all K channels of
// a lattice point stored together as one row of a [points, K] matrix.
//
// Instead of a hash table the lattice is built by sorting, so that every
// result is the same from run to run (no float atomics anywhere):
//   1. locate:  each pixel's D+1 simplex vertices become (key, entry) pairs,
//               entry = pixel * (D+1) + vertex, with the barycentric weights;
//   2. sort:    W stable radix sorts (one per key word, lowest word first)
//               order the entries by lattice point; equal keys keep entry order;
//   3. number:  a segment starts where the key changes; an inclusive scan of
//               the starts numbers the points 0..M-1 (M read back: the op's
//               one synchronisation, see filter_batch);
//   4. splat:   each point sums its own contiguous run of entries (one warp
//               per point, fixed summation order);
//   5. blur:    neighbours are found by binary search of the stepped key in
//               the sorted point keys; D+1 passes between two buffers whose
//               extra last row is zero and stands in for missing neighbours;
//   6. slice:   each pixel interpolates its D+1 vertices; with a ROI the
//               energy is summed per block in double, then per image in a
//               fixed order.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cub/device/device_radix_sort.cuh>
#include <cub/device/device_scan.cuh>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <utility>

#include "op_checks.h"
#include "permutohedral_math.h"

namespace rloss {
namespace {

constexpr int kBlock = 256;  // threads per block in every kernel
constexpr int kWarp = 32;
constexpr unsigned kFullMask = 0xFFFFFFFFu;

// Keys have key_words(D) words (permutohedral_math.h): three coordinates in
// each lower word, the last D % 3 coordinates in the top word with the image
// index above them, so that the sorts order the whole batch image by image.
constexpr int kFullWordBits = kFieldsPerWord * kKeyFieldBits;  // 63: the sort bits of a lower word

// Image-index bits the top key word has room for (at most 62, so 1 << bits fits an int64).
constexpr int max_image_bits(int D) { return 64 - image_shift(D) < 62 ? 64 - image_shift(D) : 62; }

// The W words of many keys, one array per word (each sort pass reads one).
template <int W>
struct KeyArrays {
  uint64_t* w[W];
};

// Key `i` of `keys`, through the read-only cache (the arrays are never written
// by the kernels that read them this way).
template <int W>
__device__ __forceinline__ PackedKey<W> load_key(const KeyArrays<W>& keys, int64_t i) {
  PackedKey<W> k;
#pragma unroll
  for (int j = 0; j < W; ++j) k.w[j] = __ldg(keys.w[j] + i);
  return k;
}

// Channels a splat lane accumulates at once (registers, not local memory).
constexpr int kSplatChannels = 8;

int64_t blocks_for(int64_t threads) { return (threads + kBlock - 1) / kBlock; }

__device__ __forceinline__ int64_t thread_index() {
  return static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
}

// Sum over the block, valid in thread 0. Every thread of the block must call
// it. The shuffle tree has a fixed shape, so the result is reproducible.
__device__ double block_sum(double x) {
  __shared__ double warp_sums[kBlock / kWarp];
  for (int offset = kWarp / 2; offset > 0; offset /= 2) x += __shfl_down_sync(kFullMask, x, offset);
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  if (lane == 0) warp_sums[warp] = x;
  __syncthreads();
  if (warp == 0) {
    x = lane < kBlock / kWarp ? warp_sums[lane] : 0.0;
    for (int offset = kWarp / 2; offset > 0; offset /= 2) x += __shfl_down_sync(kFullMask, x, offset);
  }
  return x;
}

// Maximum over the block, valid in thread 0 (same calling rules as block_sum).
__device__ unsigned block_max(unsigned x) {
  __shared__ unsigned warp_maxima[kBlock / kWarp];
  for (int offset = kWarp / 2; offset > 0; offset /= 2) x = max(x, __shfl_down_sync(kFullMask, x, offset));
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  if (lane == 0) warp_maxima[warp] = x;
  __syncthreads();
  if (warp == 0) {
    x = lane < kBlock / kWarp ? warp_maxima[lane] : 0u;
    for (int offset = kWarp / 2; offset > 0; offset /= 2) x = max(x, __shfl_down_sync(kFullMask, x, offset));
  }
  return x;
}

// ---------------------------------------------------------------------------
// 1. Locate

// For every pixel: the keys of its D+1 vertices (image index in the top
// word), the entry numbers to be sorted along, and the barycentric weights.
// Also folds max |feature| into *max_abs_feature_bits (the bits of a
// non-negative float order like the float; NaN orders above infinity), so the
// range check needs no pass of its own. The features are clamped to
// `clamp_to` = feature_limit (NaN to 0) before locate: the host raises the range error
// before any key is read, but locate's int32 arithmetic must not overflow first.
template <int D>
__global__ void locate_vertices(const float* __restrict__ features, int64_t num_pixels, int64_t pixels_per_image,
                                FeatureScales<D> scales, float clamp_to, KeyArrays<key_words(D)> keys,
                                int32_t* __restrict__ entry, float* __restrict__ weight,
                                int32_t* __restrict__ max_abs_feature_bits) {
  constexpr int V = D + 1, W = key_words(D);
  const int64_t pixel = thread_index();
  unsigned max_bits = 0;
  if (pixel < num_pixels) {
    float f[D];
    for (int i = 0; i < D; ++i) {
      const float raw = features[pixel * D + i];
      max_bits = max(max_bits, __float_as_uint(fabsf(raw)));
      f[i] = raw == raw ? fminf(fmaxf(raw, -clamp_to), clamp_to) : 0.0f;
    }
    Simplex<D> s;
    locate<D>(f, scales, s);
    const uint64_t image_bits = static_cast<uint64_t>(pixel / pixels_per_image) << image_shift(D);
    int32_t coords[D];
    for (int k = 0; k < V; ++k) {
      for (int i = 0; i < D; ++i) coords[i] = vertex_coord<D>(s, i, k);
      const PackedKey<W> key = pack_key<D, W>(coords);
      const int64_t e = pixel * V + k;
#pragma unroll
      for (int j = 0; j < W; ++j) keys.w[j][e] = j == W - 1 ? key.w[j] | image_bits : key.w[j];
      entry[e] = static_cast<int32_t>(e);
      weight[e] = s.weight[k];
    }
  }
  max_bits = block_max(max_bits);
  if (threadIdx.x == 0) atomicMax(max_abs_feature_bits, static_cast<int32_t>(max_bits));  // order-free: exact
}

// ---------------------------------------------------------------------------
// 2-3. Sort and number the lattice points

// dst[i] = src[index[i]]: carries a key word along a sort permutation.
__global__ void gather_keys(const uint64_t* __restrict__ src, const int32_t* __restrict__ index, int64_t n,
                            uint64_t* __restrict__ dst) {
  const int64_t i = thread_index();
  if (i < n) dst[i] = src[index[i]];
}

// 1 where a sorted entry starts a new lattice point (any key word changes), else 0.
template <int W>
__global__ void mark_point_starts(KeyArrays<W> sorted, int64_t n, int32_t* __restrict__ is_start) {
  const int64_t i = thread_index();
  if (i < n) is_start[i] = i == 0 || !(load_key(sorted, i) == load_key(sorted, i - 1));
}

// From the scan of the starts (points_so_far[i] = index of entry i's point + 1):
// each entry's point, each point's first entry (point_begin[M] = n closes the
// last run) and each point's key.
template <int W>
__global__ void record_points(const int32_t* __restrict__ points_so_far, const int32_t* __restrict__ sorted_entry,
                              KeyArrays<W> sorted, int64_t n, int32_t* __restrict__ vertex_point,
                              int32_t* __restrict__ point_begin, KeyArrays<W> point_keys) {
  const int64_t i = thread_index();
  if (i >= n) return;
  const int32_t point = points_so_far[i] - 1;
  vertex_point[sorted_entry[i]] = point;
  if (i == 0 || points_so_far[i - 1] != points_so_far[i]) {
    point_begin[point] = static_cast<int32_t>(i);
#pragma unroll
    for (int j = 0; j < W; ++j) point_keys.w[j][point] = sorted.w[j][i];
  }
  if (i == n - 1) point_begin[point + 1] = static_cast<int32_t>(n);
}

// ---------------------------------------------------------------------------
// 4. Splat

// signal[pixel, c] = in[n, c, p] (times roi[n, p]): pixel-major, so that a
// splat lane reads a pixel's channels from consecutive addresses.
__global__ void pixel_major_signal(const float* __restrict__ in, const float* __restrict__ roi, int64_t num_pixels,
                                   int64_t pixels_per_image, int64_t channels, float* __restrict__ signal) {
  const int64_t pixel = thread_index();
  if (pixel >= num_pixels) return;
  const int64_t n = pixel / pixels_per_image, p = pixel % pixels_per_image;
  const float* src = in + n * channels * pixels_per_image + p;
  float* dst = signal + pixel * channels;
  if (roi) {
    const float r = roi[pixel];
    for (int64_t c = 0; c < channels; ++c) dst[c] = src[c * pixels_per_image] * r;
  } else {
    for (int64_t c = 0; c < channels; ++c) dst[c] = src[c * pixels_per_image];
  }
}

// values[point, :] = sum of weight * signal[pixel, :] over the point's entries.
// One warp per point: runs range from one entry to thousands (flat image
// regions), and a warp spreads a long run over its lanes, then adds the lane
// sums in a fixed butterfly, so the sum is reproducible.
template <int V>
__global__ void splat(const int32_t* __restrict__ point_begin, const int32_t* __restrict__ sorted_entry,
                      const float* __restrict__ weight, const float* __restrict__ signal, int64_t num_points,
                      int64_t channels, float* __restrict__ values) {
  const int64_t point = thread_index() / kWarp;
  const int lane = threadIdx.x % kWarp;
  if (point >= num_points) return;  // whole warps leave together
  const int32_t begin = point_begin[point], end = point_begin[point + 1];
  for (int64_t c0 = 0; c0 < channels; c0 += kSplatChannels) {
    float acc[kSplatChannels] = {};
    for (int64_t i = begin + lane; i < end; i += kWarp) {
      const int32_t e = sorted_entry[i];
      const float w = weight[e];
      const float* src = signal + static_cast<int64_t>(e / V) * channels + c0;
#pragma unroll
      for (int cc = 0; cc < kSplatChannels; ++cc)
        if (c0 + cc < channels) acc[cc] += w * src[cc];
    }
#pragma unroll
    for (int cc = 0; cc < kSplatChannels; ++cc) {
      for (int offset = kWarp / 2; offset > 0; offset /= 2) acc[cc] += __shfl_xor_sync(kFullMask, acc[cc], offset);
      if (lane == cc && c0 + cc < channels) values[point * channels + c0 + cc] = acc[cc];
    }
  }
}

// ---------------------------------------------------------------------------
// 5. Blur

// Index of the point with this key in the sorted point keys, or `missing`.
template <int W>
__device__ int32_t find_point(const KeyArrays<W>& point_keys, int32_t num_points, const PackedKey<W>& key,
                              int32_t missing) {
  int32_t first = 0, count = num_points;  // lower bound, keys compared from the top word down
  while (count > 0) {
    const int32_t half = count / 2, mid = first + half;
    bool less = false;
#pragma unroll
    for (int j = W - 1; j >= 0; --j) {
      const uint64_t mid_word = __ldg(point_keys.w[j] + mid);
      if (mid_word != key.w[j]) {
        less = mid_word < key.w[j];
        break;
      }
    }
    if (less) {
      first = mid + 1;
      count -= half + 1;
    } else {
      count = half;
    }
  }
  return first < num_points && load_key(point_keys, first) == key ? first : missing;
}

// neighbours[dir, point] = (point + step, point - step) along lattice
// direction dir, where step = (-1, ..., -1, D at dir, -1, ..., -1) on the D
// stored coordinates (all -1 for dir == D); num_points where there is none,
// the zero row of the blur buffers.
template <int D>
__global__ void find_blur_neighbours(KeyArrays<key_words(D)> point_keys, int32_t num_points,
                                     int32_t* __restrict__ neighbours) {
  constexpr int W = key_words(D);
  const int64_t index = thread_index();
  if (index >= static_cast<int64_t>(D + 1) * num_points) return;
  const int dir = static_cast<int>(index / num_points);
  const int32_t point = static_cast<int32_t>(index % num_points);
  const PackedKey<W> key = load_key(point_keys, point);
  const uint64_t image_bits = key.w[W - 1] >> image_shift(D) << image_shift(D);
  int32_t coords[D], prev[D], next[D];
  unpack_key<D, W>(key, coords);
  for (int i = 0; i < D; ++i) {
    const int32_t step = i == dir ? D : -1;
    prev[i] = coords[i] + step;
    next[i] = coords[i] - step;
  }
  PackedKey<W> prev_key = pack_key<D, W>(prev), next_key = pack_key<D, W>(next);
  prev_key.w[W - 1] |= image_bits;
  next_key.w[W - 1] |= image_bits;
  int32_t* out = neighbours + 2 * index;
  out[0] = find_point(point_keys, num_points, prev_key, num_points);
  out[1] = find_point(point_keys, num_points, next_key, num_points);
}

// dst = src + (src[prev] + src[next]) / 2 along one direction (the CPU's
// expression, so both round alike).
__global__ void blur_along(const float* __restrict__ src, const int32_t* __restrict__ neighbours,
                           int64_t num_points, int64_t channels, float* __restrict__ dst) {
  const int64_t index = thread_index();
  if (index >= num_points * channels) return;
  const int64_t point = index / channels, c = index % channels;
  const int64_t prev = neighbours[2 * point], next = neighbours[2 * point + 1];
  dst[index] = src[index] + 0.5f * (src[prev * channels + c] + src[next * channels + c]);
}

// ---------------------------------------------------------------------------
// 6. Slice

// out[n, c, p] = alpha * sum_k weight_k values[vertex_k, c]; with a ROI the
// output is scaled by out_scale * roi and each block writes its share of
// sum(S * A S) to energy_partials[n, block] (in double). Blocks never span two
// images: image n owns blocks n * blocks_per_image ... (n+1) * blocks_per_image - 1.
template <int V>
__global__ void slice_values(const int32_t* __restrict__ vertex_point, const float* __restrict__ weight,
                             const float* __restrict__ values, const float* __restrict__ in,
                             const float* __restrict__ roi, int64_t pixels_per_image, int64_t blocks_per_image,
                             int64_t channels, float alpha, float out_scale, float* __restrict__ out,
                             double* __restrict__ energy_partials) {
  const int64_t n = blockIdx.x / blocks_per_image;
  const int64_t p = (blockIdx.x % blocks_per_image) * kBlock + threadIdx.x;
  float energy = 0.0f;
  if (p < pixels_per_image) {
    const int64_t pixel = n * pixels_per_image + p;
    const float* rows[V];
    float w[V];
    for (int k = 0; k < V; ++k) {
      rows[k] = values + static_cast<int64_t>(vertex_point[pixel * V + k]) * channels;
      w[k] = alpha * weight[pixel * V + k];
    }
    const float r = roi ? roi[pixel] : 1.0f;
    const float scale = out_scale * r;
    const int64_t first = n * channels * pixels_per_image + p;  // [n, 0, p]
    for (int64_t c = 0; c < channels; ++c) {
      float acc = 0.0f;
      for (int k = 0; k < V; ++k) acc += w[k] * rows[k][c];
      const int64_t at = first + c * pixels_per_image;
      if (roi) {
        energy += in[at] * r * acc;
        out[at] = acc * scale;
      } else {
        out[at] = acc;
      }
    }
  }
  if (energy_partials) {  // uniform over the grid: all threads reach block_sum
    const double block_energy = block_sum(static_cast<double>(energy));
    if (threadIdx.x == 0) energy_partials[blockIdx.x] = block_energy;
  }
}

// energy[n] = sum of image n's block partials, in a fixed order.
__global__ void sum_energy(const double* __restrict__ energy_partials, int64_t blocks_per_image,
                           float* __restrict__ energy) {
  const int64_t n = blockIdx.x;
  double sum = 0.0;
  for (int64_t b = threadIdx.x; b < blocks_per_image; b += blockDim.x) sum += energy_partials[n * blocks_per_image + b];
  sum = block_sum(sum);
  if (threadIdx.x == 0) energy[n] = static_cast<float>(sum);
}

// ---------------------------------------------------------------------------
// Host side

// The CPU op's checks (same messages), plus the CUDA-only limits. The feature
// range is checked later, on a maximum taken by locate_vertices.
void check_inputs(const char* op, const at::Tensor& features, const at::Tensor& values) {
  check_filter_inputs(op, features, values);
  TORCH_CHECK(features.is_cuda() && values.device() == features.device(), op,
              ": features and values must be on the same CUDA device, got ", features.device(), " and ",
              values.device());
  const int dim = static_cast<int>(features.size(2));
  TORCH_CHECK(features.size(0) <= (int64_t{1} << max_image_bits(dim)), op,
              ": too many images per batch");  // key bits
  TORCH_CHECK(features.size(0) * features.size(1) * (dim + 1) < (int64_t{1} << 31), op,
              ": too many pixels per batch (split the batch)");
}

// The same range check on the host, for batches the lattice never sees.
void check_feature_range_now(const char* op, const at::Tensor& features) {
  if (features.numel() == 0) return;
  const float max_abs_feature = features.abs().max().item<float>();  // synchronises; degenerate inputs only
  with_feature_dim(features.size(2),
                   [&](auto dim) { check_feature_range<decltype(dim)::value>(op, max_abs_feature); });
}

// Scratch from torch's caching allocator, on the current stream's device.
at::Tensor scratch(int64_t size, const at::Tensor& like, at::ScalarType type) {
  return at::empty({size}, like.options().dtype(type));
}

uint64_t* u64_ptr(at::Tensor& t) { return reinterpret_cast<uint64_t*>(t.data_ptr<int64_t>()); }

// The rows of a [W, n] int64 tensor, as key arrays.
template <int W>
KeyArrays<W> key_rows(at::Tensor& t) {
  KeyArrays<W> rows;
  for (int j = 0; j < W; ++j) rows.w[j] = u64_ptr(t) + j * t.size(1);
  return rows;
}

// Bits a radix sort of key word j looks at: all 63 field bits of a lower word;
// the fields and image index of the top word (at least 1: a 0-bit sort is not
// asked of CUB; the word is then all zero and the sort a stable no-op).
template <int D>
int sort_bits(int j, int image_bits) {
  return j < key_words(D) - 1 ? kFullWordBits : std::max(1, image_shift(D) + image_bits);
}

// The entries in lattice-point order: key words and entry numbers (pixel *
// (D+1) + vertex), sorted by key, equal keys in entry order.
template <int W>
struct SortedEntries {
  KeyArrays<W> keys;       // pointers into the buffers below
  const int32_t* entry;
  at::Tensor buffers[4];   // what the pointers point into
};

// Sorts the located entries by key, compared from the top word down: W stable
// radix sorts, least significant word first, each on its word gathered in the
// order of the sorts so far, carrying the permutation (entry numbers) along.
// Then every word but the top (the last sort's output) is gathered in the
// final order. `words` [W, n] holds the keys in entry order, `entry` the
// identity; both are consumed. For W = 2 these are the original two sorts.
template <int D>
SortedEntries<key_words(D)> sort_entries(at::Tensor& words, at::Tensor& entry, int image_bits, cudaStream_t stream) {
  constexpr int W = key_words(D);
  const int64_t num_entries = words.size(1);
  const int n = static_cast<int>(num_entries);
  KeyArrays<W> original = key_rows<W>(words);
  at::Tensor keys = scratch(num_entries, words, at::kLong), entry_alt = scratch(num_entries, words, at::kInt);
  at::Tensor spare;  // the middle sorts' (discarded) output
  if (W >= 3) spare = scratch(num_entries, words, at::kLong);
  size_t temp_bytes = 1;
  for (int j = 0; j < W; ++j) {
    size_t bytes = 0;
    C10_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(nullptr, bytes, original.w[0], u64_ptr(keys),
                                                   entry.data_ptr<int32_t>(), entry_alt.data_ptr<int32_t>(), n, 0,
                                                   sort_bits<D>(j, image_bits), stream));
    temp_bytes = std::max(temp_bytes, bytes);
  }
  at::Tensor temp = scratch(static_cast<int64_t>(temp_bytes), words, at::kByte);
  int32_t* perm = entry.data_ptr<int32_t>();
  int32_t* next_perm = entry_alt.data_ptr<int32_t>();
  for (int j = 0; j < W; ++j) {
    const uint64_t* in = original.w[0];
    if (j > 0) {
      gather_keys<<<blocks_for(num_entries), kBlock, 0, stream>>>(original.w[j], perm, num_entries, u64_ptr(keys));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      in = u64_ptr(keys);
    }
    // The top word's original is free once gathered: it receives the sorted top word.
    uint64_t* out = j == 0 ? u64_ptr(keys) : j == W - 1 ? original.w[j] : u64_ptr(spare);
    size_t bytes = temp_bytes;
    C10_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(temp.data_ptr(), bytes, in, out, perm, next_perm, n, 0,
                                                   sort_bits<D>(j, image_bits), stream));
    std::swap(perm, next_perm);
  }
  SortedEntries<W> sorted;
  sorted.keys.w[W - 1] = W == 1 ? u64_ptr(keys) : original.w[W - 1];
  for (int j = 0; j < W - 1; ++j) {
    // Into a buffer free by now: `keys`, then `spare`, then the originals already gathered.
    uint64_t* dst = j == 0 ? u64_ptr(keys) : j == 1 ? u64_ptr(spare) : original.w[j - 2];
    gather_keys<<<blocks_for(num_entries), kBlock, 0, stream>>>(original.w[j], perm, num_entries, dst);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    sorted.keys.w[j] = dst;
  }
  sorted.entry = perm;
  sorted.buffers[0] = words;
  sorted.buffers[1] = keys;
  sorted.buffers[2] = spare;
  sorted.buffers[3] = perm == entry.data_ptr<int32_t>() ? entry : entry_alt;
  return sorted;
}

// The lattice of a batch once splatted.
struct Lattice {
  at::Tensor weight, vertex_point;  // per entry (pixel, vertex)
  at::Tensor point_keys;            // [W, M]: the sorted point keys, word j in row j
  at::Tensor values;                // [M + 1, K]: per point K channels, then a zero row
  int32_t num_points = 0;
};

// Steps 1-3: locate, sort and number the points; fills all of `lattice` but
// the values and returns the sorted entries, which the splat needs.
//
// Synchronisation: one, an 8-byte device-to-host copy after the lattice points
// are numbered. It brings back the number of points M, which sizes the lattice
// buffers (the alternative, sizing them for one point per pixel vertex, costs
// 2 x 24 K bytes per pixel), and max |feature| for the range check, which is
// thus raised before any kernel reads a lattice key.
template <int D>
SortedEntries<key_words(D)> number_points(const char* op, const at::Tensor& feat, int64_t N, int64_t P,
                                          Lattice& lattice, cudaStream_t stream) {
  constexpr int V = D + 1, W = key_words(D);
  const int64_t num_pixels = N * P, num_entries = num_pixels * V;
  int image_bits = 0;
  while ((int64_t{1} << image_bits) < N) ++image_bits;

  // summary[0]: bits of max |feature|; summary[1]: number of lattice points.
  at::Tensor summary = at::zeros({2}, feat.options().dtype(at::kInt));
  lattice.weight = scratch(num_entries, feat, at::kFloat);
  lattice.vertex_point = scratch(num_entries, feat, at::kInt);
  at::Tensor words = at::empty({W, num_entries}, feat.options().dtype(at::kLong));
  at::Tensor entry = scratch(num_entries, feat, at::kInt);
  locate_vertices<D><<<blocks_for(num_pixels), kBlock, 0, stream>>>(
      feat.data_ptr<float>(), num_pixels, P, feature_scales<D>(), feature_limit<D>(), key_rows<W>(words),
      entry.data_ptr<int32_t>(), lattice.weight.data_ptr<float>(), summary.data_ptr<int32_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  SortedEntries<W> sorted = sort_entries<D>(words, entry, image_bits, stream);

  at::Tensor is_start = scratch(num_entries, feat, at::kInt), points_so_far = scratch(num_entries, feat, at::kInt);
  mark_point_starts<W><<<blocks_for(num_entries), kBlock, 0, stream>>>(sorted.keys, num_entries,
                                                                       is_start.data_ptr<int32_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  const int n = static_cast<int>(num_entries);
  size_t scan_bytes = 0;
  C10_CUDA_CHECK(cub::DeviceScan::InclusiveSum(nullptr, scan_bytes, is_start.data_ptr<int32_t>(),
                                               points_so_far.data_ptr<int32_t>(), n, stream));
  at::Tensor temp = scratch(static_cast<int64_t>(std::max(scan_bytes, size_t{1})), feat, at::kByte);
  C10_CUDA_CHECK(cub::DeviceScan::InclusiveSum(temp.data_ptr(), scan_bytes, is_start.data_ptr<int32_t>(),
                                               points_so_far.data_ptr<int32_t>(), n, stream));
  summary.narrow(0, 1, 1).copy_(points_so_far.narrow(0, num_entries - 1, 1));
  const at::Tensor host_summary = summary.cpu();  // the op's one synchronisation
  const int32_t max_bits = host_summary.data_ptr<int32_t>()[0];
  float max_feature;
  std::memcpy(&max_feature, &max_bits, sizeof max_feature);
  check_feature_range<D>(op, max_feature);
  lattice.num_points = host_summary.data_ptr<int32_t>()[1];

  at::Tensor point_begin = scratch(int64_t{lattice.num_points} + 1, feat, at::kInt);
  lattice.point_keys = at::empty({W, lattice.num_points}, feat.options().dtype(at::kLong));
  record_points<W><<<blocks_for(num_entries), kBlock, 0, stream>>>(
      points_so_far.data_ptr<int32_t>(), sorted.entry, sorted.keys, num_entries,
      lattice.vertex_point.data_ptr<int32_t>(), point_begin.data_ptr<int32_t>(), key_rows<W>(lattice.point_keys));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  // Only the sorted entries (and the point starts) are still needed: give the
  // keys back to the caching allocator before the K-channel buffers are allocated.
  sorted.buffers[0].reset();
  sorted.buffers[1].reset();
  sorted.buffers[2].reset();
  sorted.buffers[1] = point_begin;
  return sorted;
}

// Steps 1-4: the lattice of the batch, splatted.
template <int D>
Lattice build_lattice(const char* op, const at::Tensor& feat, const at::Tensor& in, const at::Tensor& roi,
                      cudaStream_t stream) {
  const int64_t N = in.size(0), K = in.size(1), P = in.size(2), num_pixels = N * P;
  Lattice lattice;
  const SortedEntries<key_words(D)> sorted = number_points<D>(op, feat, N, P, lattice, stream);
  const at::Tensor& point_begin = sorted.buffers[1];
  const int32_t num_points = lattice.num_points;

  at::Tensor signal = scratch(num_pixels * K, feat, at::kFloat);
  pixel_major_signal<<<blocks_for(num_pixels), kBlock, 0, stream>>>(
      in.data_ptr<float>(), roi.defined() ? roi.data_ptr<float>() : nullptr, num_pixels, P, K,
      signal.data_ptr<float>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  // Lattice buffers: one K-row per point plus a zero row for missing neighbours.
  lattice.values = at::empty({int64_t{num_points} + 1, K}, feat.options());
  lattice.values.select(0, num_points).zero_();
  splat<D + 1><<<blocks_for(int64_t{num_points} * kWarp), kBlock, 0, stream>>>(
      point_begin.data_ptr<int32_t>(), sorted.entry, lattice.weight.data_ptr<float>(), signal.data_ptr<float>(),
      num_points, K, lattice.values.data_ptr<float>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return lattice;  // the sorted entries, point starts and pixel-major signal are freed here
}

// out = A in, or with `roi` defined: S = in * roi, out = out_scale * roi * A S,
// energy[n] = sum(S * A S) over image n. `feat` and `in` are contiguous.
template <int D>
void filter_batch(const char* op, const at::Tensor& feat, const at::Tensor& in, const at::Tensor& roi,
                  float out_scale, at::Tensor& out, at::Tensor& energy) {
  constexpr int V = D + 1;
  const int64_t N = in.size(0), K = in.size(1), P = in.size(2);
  const bool with_roi = roi.defined();
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  Lattice lattice = build_lattice<D>(op, feat, in, roi, stream);
  at::Tensor& values = lattice.values;
  const int32_t num_points = lattice.num_points;

  // 5. Blur along the D+1 directions, ping-ponging between two buffers.
  at::Tensor neighbours = scratch(int64_t{V} * num_points * 2, feat, at::kInt);
  find_blur_neighbours<D><<<blocks_for(int64_t{V} * num_points), kBlock, 0, stream>>>(
      key_rows<key_words(D)>(lattice.point_keys), num_points, neighbours.data_ptr<int32_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  at::Tensor blurred = at::empty_like(values);
  blurred.select(0, num_points).zero_();
  for (int dir = 0; dir < V; ++dir) {
    blur_along<<<blocks_for(int64_t{num_points} * K), kBlock, 0, stream>>>(
        values.data_ptr<float>(), neighbours.data_ptr<int32_t>() + int64_t{2} * dir * num_points, num_points, K,
        blurred.data_ptr<float>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    std::swap(values, blurred);
  }

  // 6. Slice (and the energy).
  const int64_t blocks_per_image = blocks_for(P);
  at::Tensor energy_partials;
  if (with_roi) energy_partials = at::empty({N, blocks_per_image}, feat.options().dtype(at::kDouble));
  slice_values<V><<<N * blocks_per_image, kBlock, 0, stream>>>(
      lattice.vertex_point.data_ptr<int32_t>(), lattice.weight.data_ptr<float>(), values.data_ptr<float>(),
      in.data_ptr<float>(), with_roi ? roi.data_ptr<float>() : nullptr, P, blocks_per_image, K, slice_alpha<D>(),
      out_scale, out.data_ptr<float>(), with_roi ? energy_partials.data_ptr<double>() : nullptr);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  if (with_roi) {
    sum_energy<<<static_cast<unsigned>(N), kBlock, 0, stream>>>(energy_partials.data_ptr<double>(), blocks_per_image,
                                                                energy.data_ptr<float>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

// filter_batch for the features' dimension.
void filter_batch_any(const char* op, const at::Tensor& feat, const at::Tensor& in, const at::Tensor& roi,
                      float out_scale, at::Tensor& out, at::Tensor& energy) {
  with_feature_dim(feat.size(2), [&](auto dim) {
    filter_batch<decltype(dim)::value>(op, feat, in, roi, out_scale, out, energy);
  });
}

at::Tensor permutohedral_filter_cuda(const at::Tensor& features, const at::Tensor& values) {
  const char* op = "permutohedral_filter";
  check_inputs(op, features, values);
  const c10::cuda::CUDAGuard device_guard(features.device());
  const auto feat = features.contiguous();
  const auto in = values.contiguous();
  auto out = at::empty_like(in);
  at::Tensor no_roi, no_energy;
  if (in.numel() == 0) {
    check_feature_range_now(op, feat);
    return out;
  }
  filter_batch_any(op, feat, in, no_roi, 1.0f, out, no_energy);
  return out;
}

std::tuple<at::Tensor, at::Tensor> permutohedral_crf_cuda(const at::Tensor& features, const at::Tensor& probs,
                                                          const at::Tensor& roi, double out_scale) {
  const char* op = "permutohedral_crf";
  check_inputs(op, features, probs);
  check_roi(op, roi, probs);
  TORCH_CHECK(roi.device() == features.device(), op, ": roi must be on the features' device ", features.device(),
              ", got ", roi.device());
  const c10::cuda::CUDAGuard device_guard(features.device());
  const auto feat = features.contiguous();
  const auto in = probs.contiguous();
  const auto mask = roi.contiguous();
  auto out = at::empty_like(in);
  if (in.numel() == 0) {
    check_feature_range_now(op, feat);
    return {at::zeros({in.size(0)}, in.options()), out};
  }
  auto energy = at::empty({in.size(0)}, in.options());
  filter_batch_any(op, feat, in, mask, static_cast<float>(out_scale), out, energy);
  return {energy, out};
}

}  // namespace

TORCH_LIBRARY_IMPL(rloss, CUDA, m) {
  m.impl("permutohedral_filter", &permutohedral_filter_cuda);
  m.impl("permutohedral_crf", &permutohedral_crf_cuda);
}

}  // namespace rloss
