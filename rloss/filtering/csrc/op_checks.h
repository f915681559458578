// Input checks shared by the CPU and CUDA ops, so both fail with the same messages.
#pragma once

#include <ATen/ATen.h>

#include <type_traits>

#include "permutohedral_math.h"

namespace rloss {

inline void check_filter_inputs(const char* op, const at::Tensor& features, const at::Tensor& values) {
  TORCH_CHECK(features.dim() == 3 && features.size(2) >= kMinFeatureDim && features.size(2) <= kMaxFeatureDim, op,
              ": features must be [N, P, D] with ", kMinFeatureDim, " <= D <= ", kMaxFeatureDim,
              " (spatial axes + channels), got ", features.sizes());
  TORCH_CHECK(values.dim() == 3 && values.size(0) == features.size(0) && values.size(2) == features.size(1), op,
              ": values must be [N, K, P] matching features ", features.sizes(), ", got ", values.sizes());
  TORCH_CHECK(features.scalar_type() == at::kFloat && values.scalar_type() == at::kFloat, op,
              ": features and values must be float32");
  TORCH_CHECK(features.size(1) < (int64_t{1} << 28), op, ": too many pixels per image");
}

inline void check_roi(const char* op, const at::Tensor& roi, const at::Tensor& probs) {
  TORCH_CHECK(roi.dim() == 2 && roi.size(0) == probs.size(0) && roi.size(1) == probs.size(2) &&
                  roi.scalar_type() == at::kFloat,
              op, ": roi must be float32 [N, P] matching probs ", probs.sizes(), ", got ", roi.sizes());
}

// Lattice keys hold each coordinate in a 21-bit field: large features (tiny
// sigmas) or non-finite ones cannot be placed. The bound grows with D.
template <int D>
void check_feature_range(const char* op, float max_abs_feature) {
  TORCH_CHECK(max_lattice_coord<D>(max_abs_feature) < static_cast<float>(kKeyFieldBias), op,
              ": features must be finite and at most about ",
              static_cast<float>(kKeyFieldBias) / max_lattice_coord<D>(1.0f),
              " in absolute value (are the sigmas tiny?), got ", max_abs_feature);
}

// Calls f(std::integral_constant<int, D>{}) for the run-time feature dimension
// `dim` (checked by check_filter_inputs): every D has its own compiled kernels,
// so the per-pixel loops keep fixed bounds and stack arrays.
template <typename F>
decltype(auto) with_feature_dim(int64_t dim, F&& f) {
  static_assert(kMinFeatureDim == 2 && kMaxFeatureDim == 16, "update the cases below");
  switch (dim) {
#define RLOSS_DIM_CASE(D) \
  case D:                 \
    return f(std::integral_constant<int, D>{});
    RLOSS_DIM_CASE(2) RLOSS_DIM_CASE(3) RLOSS_DIM_CASE(4) RLOSS_DIM_CASE(5) RLOSS_DIM_CASE(6) RLOSS_DIM_CASE(7)
    RLOSS_DIM_CASE(8) RLOSS_DIM_CASE(9) RLOSS_DIM_CASE(10) RLOSS_DIM_CASE(11) RLOSS_DIM_CASE(12) RLOSS_DIM_CASE(13)
    RLOSS_DIM_CASE(14) RLOSS_DIM_CASE(15) RLOSS_DIM_CASE(16)
#undef RLOSS_DIM_CASE
    default:
      break;
  }
  TORCH_CHECK(false, "rloss: feature dimension ", dim, " has no compiled lattice");
  return f(std::integral_constant<int, kMinFeatureDim>{});  // not reached: keeps every path returning
}

}  // namespace rloss
