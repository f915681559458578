// Geometry of the permutohedral lattice (Adams, Baek & Davis, Eurographics 2010),
// shared by the CPU and CUDA kernels so both place every pixel identically.
//
// A D-dimensional feature vector is scaled, elevated onto the hyperplane
// {x in R^(D+1) : sum x = 0}, and located in its enclosing simplex: the closest
// remainder-0 lattice point `rem0`, the rank ordering of the differences, and
// the D+1 barycentric weights. Vertex k (k = 0..D) of the simplex has
// coordinates rem0[i] + offset(rank[i], k) (see vertex_coord).
#pragma once

#include <cmath>
#include <cstdint>

// Always inlined on the host too: with a kernel per D, GCC's unit-growth limit
// would otherwise leave locate out of line, compiled without the AVX2/FMA
// target of its caller (slower, and rounding unlike the inlined code).
#if defined(__CUDACC__)
#define RLOSS_HD __host__ __device__ __forceinline__
#elif defined(__GNUC__)
#define RLOSS_HD inline __attribute__((always_inline))
#else
#define RLOSS_HD inline
#endif

namespace rloss {

// Feature dimensions D the kernels are compiled for: the spatial axes plus the
// channels ((x, y, r, g, b) for the DenseCRF loss: D = 5). Key fields bound D
// only through the word count; 16 bounds the build time.
constexpr int kMinFeatureDim = 2;
constexpr int kMaxFeatureDim = 16;

// Slice normalisation constant of the standard lattice filter, 1 / (1 + 2^-D).
// No normalisation by a filtered constant follows: the published DenseCRF loss
// weight is tuned to this unnormalised output.
template <int D>
RLOSS_HD float slice_alpha() {
  return 1.0f / (1.0f + 1.0f / static_cast<float>(1 << D));
}

// Per-dimension scaling applied before elevation: sqrt(2/3) (D+1) / sqrt((i+1)(i+2)).
// It makes the lattice blur's variance match a unit Gaussian in feature space.
template <int D>
RLOSS_HD float feature_scale(int i) {
  const float inv_std = 0.81649658092772603f * static_cast<float>(D + 1);  // sqrt(2/3)(D+1)
  return inv_std / sqrtf(static_cast<float>((i + 1) * (i + 2)));
}

// a * b rounded to float, a value the compiler cannot fuse into a later
// addition. Compilers contract a * b + c into one fused multiply-add where they
// see fit (GCC and nvcc do by default), and may do it in one use of a product
// but not in another: then two coordinates equal in exact arithmetic (the
// elevation of zero features, as at black pixels) come out an ulp apart, their
// tie is broken unlike in the other lattices and another set of lattice points
// exists (2-3% of the output at D = 9-11 on photos, GCC with FMA).
RLOSS_HD float rounded_product(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(a, b);  // documented never to be merged into a multiply-add
#else
  float product = a * b;
#if defined(__GNUC__) && defined(__x86_64__)
  __asm__("" : "+x"(product));  // the rounded product, in an SSE register
#elif defined(__GNUC__) && defined(__aarch64__)
  __asm__("" : "+w"(product));
#endif
  return product;
#endif
}

// The D scales, computed once per call rather than once per pixel.
template <int D>
struct FeatureScales {
  float s[D];
};

template <int D>
RLOSS_HD FeatureScales<D> feature_scales() {
  FeatureScales<D> scales;
  for (int i = 0; i < D; ++i) scales.s[i] = feature_scale<D>(i);
  return scales;
}

template <int D>
struct Simplex {
  int32_t rem0[D + 1];   // closest remainder-0 lattice point
  int32_t rank[D + 1];   // rank of each coordinate's offset from rem0 (0 = largest)
  float weight[D + 1];   // barycentric weight of vertex k
};

// Coordinate i of vertex k of the simplex (the canonical simplex, permuted by rank).
template <int D>
RLOSS_HD int32_t vertex_coord(const Simplex<D>& s, int i, int k) {
  return s.rem0[i] + (s.rank[i] <= D - k ? k : k - (D + 1));
}

// Locates the (unscaled) feature vector `f` of length D in the lattice.
template <int D>
RLOSS_HD void locate(const float* f, const FeatureScales<D>& scales, Simplex<D>& s) {
  // Elevate: y = E f with E the (D+1) x D matrix of the paper, whose column i
  // is (1, ..., 1, -(i+1), 0, ..., 0) / sqrt((i+1)(i+2)) (i+1 ones).
  float elevated[D + 1];
  float tail = 0.0f;  // sum of the scaled features of index >= j
  for (int j = D; j > 0; --j) {
    const float cf = rounded_product(f[j - 1], scales.s[j - 1]);
    elevated[j] = tail - static_cast<float>(j) * cf;
    tail += cf;
  }
  elevated[0] = tail;

  // Closest remainder-0 point: round each coordinate to a multiple of D+1.
  int32_t coord_sum = 0;
  for (int i = 0; i <= D; ++i) {
    const float v = rounded_product(elevated[i], 1.0f / static_cast<float>(D + 1));
    int32_t down = static_cast<int32_t>(v);  // floor without a libm call
    down -= static_cast<float>(down) > v;
    const int32_t nearest = v - static_cast<float>(down) > 0.5f ? down + 1 : down;  // ties go down
    s.rem0[i] = nearest * (D + 1);
    coord_sum += nearest;
  }

  // Rank the offsets elevated - rem0 (0 = largest).
  // Branch-free: the comparisons are unpredictable.
  float offset[D + 1];
  for (int i = 0; i <= D; ++i) {
    offset[i] = elevated[i] - static_cast<float>(s.rem0[i]);
    s.rank[i] = 0;
  }
  for (int i = 0; i < D; ++i) {
    for (int j = i + 1; j <= D; ++j) {
      const int32_t i_smaller = offset[i] < offset[j];
      s.rank[i] += i_smaller;
      s.rank[j] += 1 - i_smaller;
    }
  }

  // rem0 must lie on the hyperplane: shifting every rank by the excess sum
  // and wrapping the ranks that leave 0..D moves exactly the coordinates that
  // were rounded the wrong way by D+1 (branch-free).
  for (int i = 0; i <= D; ++i) {
    const int32_t r = s.rank[i] + coord_sum;
    const int32_t wrap = static_cast<int32_t>(r < 0) - static_cast<int32_t>(r > D);
    s.rank[i] = r + wrap * (D + 1);
    s.rem0[i] += wrap * (D + 1);
  }

  // Barycentric weights from the offsets sorted by rank (largest first):
  // weight[0] = 1 + d[D] - d[0], weight[k] = d[D-k] - d[D+1-k].
  float sorted[D + 1];
  for (int i = 0; i <= D; ++i) {
    sorted[s.rank[i]] = (elevated[i] - static_cast<float>(s.rem0[i])) * (1.0f / static_cast<float>(D + 1));
  }
  s.weight[0] = 1.0f + sorted[D] - sorted[0];
  for (int k = 1; k <= D; ++k) s.weight[k] = sorted[D - k] - sorted[D + 1 - k];
}

// A lattice point keyed by its first D coordinates (the last one is implied by
// the zero sum), packed as 21-bit fields, 3 to a 64-bit word (coordinate i in
// word i / 3 at bit 21 (i % 3)), so that keys hash and compare in a few
// instructions. Bit 63 of every word stays clear.
constexpr int kKeyFieldBits = 21;
constexpr int kFieldsPerWord = 3;
constexpr int32_t kKeyFieldBias = 1 << (kKeyFieldBits - 1);  // coordinates must lie in [-bias, bias)

// Words of a key with an image index (CUDA: one lattice for the whole batch):
// the index goes in the top word above its fields, at image_shift(D) (in a word
// of its own when D % 3 == 0). For D = 5: coordinates 0-2, then 3-4 and the image.
constexpr int key_words(int D) { return D / kFieldsPerWord + 1; }
constexpr int image_shift(int D) { return kKeyFieldBits * (D % kFieldsPerWord); }

// Words of a key without one (CPU: one lattice per image): as few as hold the
// fields, but two up to D = 5, the layout (and hash) the CPU always had.
constexpr int cpu_key_words(int D) { return D <= 5 ? 2 : (D + kFieldsPerWord - 1) / kFieldsPerWord; }

template <int W>
struct PackedKey {
  uint64_t w[W];  // w[0] holds coordinates 0-2
};

template <int W>
RLOSS_HD bool operator==(const PackedKey<W>& a, const PackedKey<W>& b) {
  bool equal = true;
  for (int j = 0; j < W; ++j) equal &= a.w[j] == b.w[j];
  return equal;
}

template <int D, int W>
RLOSS_HD PackedKey<W> pack_key(const int32_t* key) {
  static_assert(W * kFieldsPerWord >= D, "too few key words for D coordinates");
  PackedKey<W> k;
  for (int j = 0; j < W; ++j) k.w[j] = 0;
  for (int i = 0; i < D; ++i) {
    const uint64_t field = static_cast<uint64_t>(static_cast<uint32_t>(key[i] + kKeyFieldBias));
    k.w[i / kFieldsPerWord] |= field << (kKeyFieldBits * (i % kFieldsPerWord));
  }
  return k;
}

template <int D, int W>
RLOSS_HD void unpack_key(const PackedKey<W>& k, int32_t* coords) {
  constexpr uint64_t mask = (uint64_t{1} << kKeyFieldBits) - 1;
  for (int i = 0; i < D; ++i) {
    const uint64_t word = k.w[i / kFieldsPerWord];
    coords[i] = static_cast<int32_t>((word >> (kKeyFieldBits * (i % kFieldsPerWord))) & mask) - kKeyFieldBias;
  }
}

// 64-bit hash: the low bits pick a slot, the high 32 bits tag it. Words beyond
// the second are mixed in before the final mix: two-word keys hash as they always did.
template <int W>
RLOSS_HD uint64_t hash_key(const PackedKey<W>& k) {
  static_assert(W >= 2, "hash_key expects at least two words");
  uint64_t h = k.w[0] * 0x9E3779B97F4A7C15ull ^ k.w[1] * 0xC2B2AE3D27D4EB4Full;
  for (int j = 2; j < W; ++j) {
    h ^= h >> 32;
    h = h * 0xD6E8FEB86659FD93ull ^ k.w[j] * 0x9E3779B97F4A7C15ull;
  }
  h ^= h >> 31;
  h *= 0xBF58476D1CE4E5B9ull;
  return h ^ (h >> 29);
}

// Largest |coordinate| of a lattice point, or of its blur neighbours, whose
// features are at most `max_abs_feature` in absolute value: elevation sums at
// most 2D scaled features; rounding and the sum fix move a coordinate by at
// most 1.5(D+1), the simplex vertex by D+1 more, a blur step by D: < 4(D+1).
template <int D>
RLOSS_HD float max_lattice_coord(float max_abs_feature) {
  return 2.0f * D * feature_scale<D>(0) * max_abs_feature + 4.0f * (D + 1);
}

// Largest |feature| that max_lattice_coord keeps inside the key fields. Kernels
// that locate before the range check clamp their features to it, so that the
// int32 arithmetic of locate cannot overflow on features the check rejects.
template <int D>
RLOSS_HD float feature_limit() {
  return (static_cast<float>(kKeyFieldBias) - 4.0f * (D + 1)) / (2.0f * D * feature_scale<D>(0));
}

}  // namespace rloss
