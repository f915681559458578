// CPU permutohedral lattice filter: one lattice per image, all K channels
// filtered together (each lattice point holds a K-vector), images of the batch
// spread over torch's OpenMP threads.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <vector>

#include "op_checks.h"
#include "permutohedral_math.h"

namespace rloss {
namespace {

// Open-addressing hash table from lattice point to a dense point index
// 0..size()-1 in order of insertion. A slot holds the point index and 32 more
// bits of the key's hash (8 bytes, so the table stays in cache and most
// mismatches are rejected without reading the key); keys and coordinates are
// stored per point.
template <int D>
class LatticePoints {
 public:
  using Key = PackedKey<cpu_key_words(D)>;

  // Empties the table, keeping its memory for the next image.
  void reset(int64_t expected_points) {
    uint64_t capacity = 1024;
    while (capacity < 2 * static_cast<uint64_t>(expected_points) && capacity < (1ull << 30)) capacity <<= 1;
    slots_.assign(capacity, kEmpty);
    mask_ = capacity - 1;
    keys_.clear();
    coords_.clear();
  }

  int32_t size() const { return static_cast<int32_t>(keys_.size()); }
  const int32_t* coords(int32_t point) const { return coords_.data() + static_cast<size_t>(point) * D; }

  // `key` is pack_key<D, W>(coords).
  int32_t insert(const int32_t* coords, const Key& key) {
    const uint64_t hash = hash_key(key);
    uint64_t slot = probe(key, hash);
    if (slots_[slot] != kEmpty) return static_cast<int32_t>(slots_[slot]);
    const int32_t point = size();
    slots_[slot] = (hash & kTagMask) | static_cast<uint32_t>(point);
    keys_.push_back(key);
    coords_.insert(coords_.end(), coords, coords + D);
    if (2 * static_cast<uint64_t>(size()) > mask_) grow();
    return point;
  }

  // Index of the point, or -1 where the lattice has none.
  int32_t find(const int32_t* coords) const {
    const Key key = pack_key<D, cpu_key_words(D)>(coords);
    const uint64_t slot = probe(key, hash_key(key));
    return slots_[slot] == kEmpty ? -1 : static_cast<int32_t>(slots_[slot]);
  }

 private:
  static constexpr uint64_t kEmpty = ~0ull;
  static constexpr uint64_t kTagMask = 0xFFFFFFFF00000000ull;

  // The slot holding `key`, or the empty slot where it would go.
  uint64_t probe(const Key& key, uint64_t hash) const {
    const uint64_t tag = hash & kTagMask;
    for (uint64_t slot = hash & mask_;; slot = (slot + 1) & mask_) {
      const uint64_t entry = slots_[slot];
      if (entry == kEmpty) return slot;
      if ((entry & kTagMask) == tag && keys_[static_cast<uint32_t>(entry)] == key) return slot;
    }
  }

  void grow() {
    slots_.assign(2 * slots_.size(), kEmpty);
    mask_ = slots_.size() - 1;
    for (int32_t point = 0; point < size(); ++point) {
      const uint64_t hash = hash_key(keys_[point]);
      uint64_t slot = hash & mask_;
      while (slots_[slot] != kEmpty) slot = (slot + 1) & mask_;
      slots_[slot] = (hash & kTagMask) | static_cast<uint32_t>(point);
    }
  }

  std::vector<uint64_t> slots_;   // tag << 32 | point index, kEmpty where empty
  std::vector<Key> keys_;         // per point
  std::vector<int32_t> coords_;   // per point, D each
  uint64_t mask_;
};

// Pixels are moved between the [K, P] layout of the tensors and the [P, K]
// layout of the lattice in tiles of this many pixels.
constexpr int64_t kTile = 64;

// One image's inputs and outputs. With `roi` null the filter computes
// out = A in; with `roi` set it computes S = in * roi, out = out_scale * roi *
// (A S) and *energy = sum(S * A S): everything the DenseCRF loss needs (its
// gradient, with out_scale = -2 weight / N), in one pass.
struct ImageTask {
  const float* feat;  // [P, D]
  const float* in;    // [K, P]
  const float* roi;   // [P] or null
  float* out;         // [K, P]
  double* energy;     // null when roi is null
  float out_scale;    // used with roi
  int64_t P, K;
};

// Buffers of one thread, reused image after image: fresh multi-megabyte
// allocations would cost a page fault per 4 KiB on every call. Each thread
// keeps about 60 bytes per pixel of the largest image it has filtered.
template <int D>
struct Workspace {
  LatticePoints<D> lattice;
  std::vector<int32_t> vertex;    // [P, D+1] lattice point of each simplex vertex
  std::vector<float> weight;      // [P, D+1] barycentric weights
  std::vector<float> values, blurred;  // [M+1, K] lattice values
  std::vector<int32_t> neighbours;     // [M, 2] per blur direction
  std::vector<float> tile;        // [kTile, K] pixels in [pixel, channel] layout
};

// The steps of filter_image, always inlined into it (one function as far as
// the compiler is concerned, compiled per D and per target).

// Step 1: the lattice points and barycentric weights of every pixel's simplex.
template <int D>
__attribute__((always_inline)) inline void locate_pixels(const ImageTask& t, Workspace<D>& ws) {
  constexpr int V = D + 1;  // vertices per simplex
  constexpr int W = cpu_key_words(D);
  using Key = PackedKey<W>;
  const int64_t P = t.P;
  std::vector<int32_t>& vertex = ws.vertex;
  std::vector<float>& weight = ws.weight;
  vertex.resize(static_cast<size_t>(P) * V);
  weight.resize(static_cast<size_t>(P) * V);

  // 1. Locate every pixel. Neighbouring pixels mostly share vertices (crossing
  //    a simplex facet changes one), and a vertex keeps its remainder k, so
  //    the last point seen for each k is checked before the hash table.
  LatticePoints<D>& lattice = ws.lattice;
  lattice.reset(P / 8 + 64);  // grows as needed
  const FeatureScales<D> scales = feature_scales<D>();
  Simplex<D> s;
  Key last_key[V];
  int32_t last_point[V];
  for (int k = 0; k < V; ++k) last_point[k] = -1;
  // Packed keys step from vertex k to k+1 by adding 1 to every coordinate and
  // D+1 less to the one ranked D-k (no field overflows: coordinates are
  // range-checked on entry).
  int32_t ones[D], coords[D];
  for (int i = 0; i < D; ++i) ones[i] = 1 - kKeyFieldBias;  // packs to a 1 in each field
  const Key step = pack_key<D, W>(ones);
  Key wrap[V];  // D+1 in field i (nothing for i == D, which is not stored); a table, not branches
  for (int i = 0; i < V; ++i) {
    for (int j = 0; j < D; ++j) coords[j] = (j == i ? D + 1 : 0) - kKeyFieldBias;
    wrap[i] = pack_key<D, W>(coords);
  }
  for (int64_t p = 0; p < P; ++p) {
    locate<D>(t.feat + p * D, scales, s);
    int32_t coord_of_rank[V];
    for (int i = 0; i < V; ++i) coord_of_rank[s.rank[i]] = i;
    for (int i = 0; i < D; ++i) coords[i] = s.rem0[i];
    Key key = pack_key<D, W>(coords);
    float* w = weight.data() + p * V;
    int32_t* v = vertex.data() + p * V;
    for (int k = 0; k < V; ++k) {
      w[k] = s.weight[k];
      if (last_point[k] < 0 || !(last_key[k] == key)) {
        unpack_key<D, W>(key, coords);
        last_key[k] = key;
        last_point[k] = lattice.insert(coords, key);
      }
      v[k] = last_point[k];
      const Key& down = wrap[coord_of_rank[D - k]];
      for (int j = 0; j < W; ++j) key.w[j] += step.w[j] - down.w[j];
    }
  }
}

// Step 2: lattice values [M + 1, S] from the pixels' signal.
template <int D>
__attribute__((always_inline)) inline void splat_pixels(const ImageTask& t, int64_t S, Workspace<D>& ws) {
  constexpr int V = D + 1;
  const int64_t P = t.P, K = t.K;
  const std::vector<int32_t>& vertex = ws.vertex;
  const std::vector<float>& weight = ws.weight;
  // Lattice values, one K-vector per point, plus a zero row M standing in for
  // the neighbours that are not in the lattice.
  const int32_t M = ws.lattice.size();
  std::vector<float>& values = ws.values;
  std::vector<float>& blurred = ws.blurred;
  values.assign(static_cast<size_t>(M + 1) * S, 0.0f);
  blurred.assign(static_cast<size_t>(M + 1) * S, 0.0f);

  // 2. Splat, tile by tile: the tile holds the signal (input times ROI) of
  //    kTile pixels in [pixel, channel] layout.
  std::vector<float>& tile = ws.tile;
  tile.assign(static_cast<size_t>(kTile) * S, 0.0f);  // padding channels stay 0
  for (int64_t p0 = 0; p0 < P; p0 += kTile) {
    const int64_t n = std::min(kTile, P - p0);
    for (int64_t c = 0; c < K; ++c) {
      const float* src = t.in + c * P + p0;
      if (t.roi) {
        for (int64_t q = 0; q < n; ++q) tile[q * S + c] = src[q] * t.roi[p0 + q];
      } else {
        for (int64_t q = 0; q < n; ++q) tile[q * S + c] = src[q];
      }
    }
    for (int64_t q = 0; q < n; ++q) {
      const int32_t* v = vertex.data() + (p0 + q) * V;
      const float* w = weight.data() + (p0 + q) * V;
      const float* __restrict__ src = tile.data() + q * S;
      for (int k = 0; k < V; ++k) {
        float* __restrict__ dst = values.data() + static_cast<size_t>(v[k]) * S;
        const float wk = w[k];
        for (int64_t c = 0; c < S; ++c) dst[c] += wk * src[c];
      }
    }
  }
}

// Step 3: the blur, in place in ws.values.
template <int D>
__attribute__((always_inline)) inline void blur_lattice(int64_t S, Workspace<D>& ws) {
  const LatticePoints<D>& lattice = ws.lattice;
  const int32_t M = lattice.size();
  std::vector<float>& values = ws.values;
  std::vector<float>& blurred = ws.blurred;
  // 3. Blur with [1/2, 1, 1/2] along each of the D+1 lattice directions.
  std::vector<int32_t>& neighbours = ws.neighbours;
  neighbours.resize(static_cast<size_t>(M) * 2);
  int32_t prev[D];
  for (int dir = 0; dir <= D; ++dir) {
    // The step along a direction is (-1, ..., -1, D, -1, ..., -1) (D at `dir`,
    // nothing stored for dir == D). Only the backward neighbour is looked up:
    // if prev(j) = a then next(a) = j.
    for (int32_t j = 0; j < M; ++j) neighbours[2 * j + 1] = M;
    for (int32_t j = 0; j < M; ++j) {
      const int32_t* kj = lattice.coords(j);
      for (int i = 0; i < D; ++i) prev[i] = kj[i] - 1;
      if (dir < D) prev[dir] = kj[dir] + D;
      const int32_t a = lattice.find(prev);
      neighbours[2 * j] = a < 0 ? M : a;
      if (a >= 0) neighbours[2 * a + 1] = j;
    }
    for (int32_t j = 0; j < M; ++j) {
      const float* __restrict__ self = values.data() + static_cast<size_t>(j) * S;
      const float* __restrict__ a = values.data() + static_cast<size_t>(neighbours[2 * j]) * S;
      const float* __restrict__ b = values.data() + static_cast<size_t>(neighbours[2 * j + 1]) * S;
      float* __restrict__ dst = blurred.data() + static_cast<size_t>(j) * S;
      for (int64_t c = 0; c < S; ++c) dst[c] = self[c] + 0.5f * (a[c] + b[c]);
    }
    values.swap(blurred);
  }
}

// Step 4: the output (and energy) from the blurred lattice values.
template <int D>
__attribute__((always_inline)) inline void slice_pixels(const ImageTask& t, int64_t S, Workspace<D>& ws) {
  constexpr int V = D + 1;
  const int64_t P = t.P, K = t.K;
  const std::vector<int32_t>& vertex = ws.vertex;
  const std::vector<float>& weight = ws.weight;
  const std::vector<float>& values = ws.values;
  std::vector<float>& tile = ws.tile;
  // 4. Slice into the tile, then write it out in [channel, pixel] layout with
  //    (given a ROI) the ROI mask, the gradient scale and the energy
  //    sum(S * A S), S = input times ROI, summed along contiguous pixel rows.
  const float alpha = slice_alpha<D>();
  double energy = 0.0;
  for (int64_t p0 = 0; p0 < P; p0 += kTile) {
    const int64_t n = std::min(kTile, P - p0);
    for (int64_t q = 0; q < n; ++q) {
      const int32_t* v = vertex.data() + (p0 + q) * V;
      const float* w = weight.data() + (p0 + q) * V;
      const float* src[V];
      float wk[V];
      for (int k = 0; k < V; ++k) {
        src[k] = values.data() + static_cast<size_t>(v[k]) * S;
        wk[k] = alpha * w[k];
      }
      float* __restrict__ dst = tile.data() + q * S;
      for (int64_t c = 0; c < S; ++c) {
        float acc = 0.0f;
        for (int k = 0; k < V; ++k) acc += wk[k] * src[k][c];
        dst[c] = acc;
      }
    }
    for (int64_t c = 0; c < K; ++c) {
      float* __restrict__ dst = t.out + c * P + p0;
      const float* __restrict__ src = tile.data() + c;
      if (t.roi) {
        const float* __restrict__ in = t.in + c * P + p0;
        const float* __restrict__ roi = t.roi + p0;
        float row_energy = 0.0f;
        for (int64_t q = 0; q < n; ++q) {
          const float filtered = src[q * S];
          row_energy += in[q] * roi[q] * filtered;
          dst[q] = filtered * (t.out_scale * roi[q]);
        }
        energy += row_energy;
      } else {
        for (int64_t q = 0; q < n; ++q) dst[q] = src[q * S];
      }
    }
  }
  if (t.energy) *t.energy = energy;
}

template <int D>
__attribute__((always_inline)) inline void filter_image(const ImageTask& t) {
  // Rows of the [*, K] buffers are padded with zeros to whole 8-float vectors.
  const int64_t S = t.K <= 4 ? t.K : (t.K + 7) / 8 * 8;
  thread_local Workspace<D> ws;
  locate_pixels<D>(t, ws);
  splat_pixels<D>(t, S, ws);
  blur_lattice<D>(S, ws);
  slice_pixels<D>(t, S, ws);
}

// The same code compiled twice per D: for AVX2+FMA (8-wide channel loops,
// hardware rounding) and for baseline x86-64, chosen at run time.
#if defined(__x86_64__) && defined(__GNUC__)
template <int D>
__attribute__((target("avx2,fma"))) void filter_image_avx2(const ImageTask& t) { filter_image<D>(t); }
bool cpu_has_avx2() {
  static const bool has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return has;
}
#endif

template <int D>
void filter_image_dispatch(const ImageTask& t) {
#if defined(__x86_64__) && defined(__GNUC__)
  if (cpu_has_avx2()) return filter_image_avx2<D>(t);
#endif
  filter_image<D>(t);
}

void check_inputs(const char* op, const at::Tensor& features, const at::Tensor& values) {
  check_filter_inputs(op, features, values);
  if (features.numel() == 0) return;
  const float max_abs_feature = features.abs().max().item<float>();
  with_feature_dim(features.size(2),
                   [&](auto dim) { check_feature_range<decltype(dim)::value>(op, max_abs_feature); });
}

// Runs filter_image over the batch, images spread over torch's threads.
template <int D>
void filter_batch(const at::Tensor& feat, const at::Tensor& in, const at::Tensor* roi, at::Tensor& out,
                  double* energy, float out_scale) {
  const int64_t N = in.size(0), K = in.size(1), P = in.size(2);
  if (N == 0 || K == 0 || P == 0) return;
  const float* feat_ptr = feat.data_ptr<float>();
  const float* in_ptr = in.data_ptr<float>();
  const float* roi_ptr = roi ? roi->data_ptr<float>() : nullptr;
  float* out_ptr = out.data_ptr<float>();
  // Images differ in cost (lattice size), so threads take the next image as
  // they finish rather than fixed shares of the batch.
  std::atomic<int64_t> next_image{0};
  const int64_t workers = std::min<int64_t>(N, at::get_num_threads());
  at::parallel_for(0, workers, 1, [&](int64_t, int64_t) {
    for (int64_t n; (n = next_image.fetch_add(1)) < N;) {
      filter_image_dispatch<D>(ImageTask{feat_ptr + n * P * D, in_ptr + n * K * P,
                                         roi_ptr ? roi_ptr + n * P : nullptr, out_ptr + n * K * P,
                                         energy ? energy + n : nullptr, out_scale, P, K});
    }
  });
}

at::Tensor permutohedral_filter_cpu(const at::Tensor& features, const at::Tensor& values) {
  check_inputs("permutohedral_filter", features, values);
  const auto feat = features.contiguous();
  const auto in = values.contiguous();
  auto out = at::empty_like(in);
  with_feature_dim(feat.size(2), [&](auto dim) {
    filter_batch<decltype(dim)::value>(feat, in, nullptr, out, nullptr, 1.0f);
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> permutohedral_crf_cpu(const at::Tensor& features, const at::Tensor& probs,
                                                         const at::Tensor& roi, double out_scale) {
  check_inputs("permutohedral_crf", features, probs);
  check_roi("permutohedral_crf", roi, probs);
  const auto feat = features.contiguous();
  const auto in = probs.contiguous();
  const auto mask = roi.contiguous();
  auto out = at::empty_like(in);
  auto energy = at::zeros({in.size(0)}, in.options().dtype(at::kDouble));
  with_feature_dim(feat.size(2), [&](auto dim) {
    filter_batch<decltype(dim)::value>(feat, in, &mask, out, energy.data_ptr<double>(), static_cast<float>(out_scale));
  });
  return {energy.to(at::kFloat), out};
}

}  // namespace

TORCH_LIBRARY_IMPL(rloss, CPU, m) {
  m.impl("permutohedral_filter", &permutohedral_filter_cpu);
  m.impl("permutohedral_crf", &permutohedral_crf_cpu);
}

}  // namespace rloss
