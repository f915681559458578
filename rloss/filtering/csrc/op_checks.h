// Input checks shared by the CPU and CUDA ops, so both fail with the same messages.
#pragma once

#include <ATen/ATen.h>

#include "permutohedral_math.h"

namespace rloss {

inline void check_filter_inputs(const char* op, const at::Tensor& features, const at::Tensor& values) {
  TORCH_CHECK(features.dim() == 3 && features.size(2) == kFeatureDim, op, ": features must be [N, P, ", kFeatureDim,
              "], got ", features.sizes());
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
// sigmas) or non-finite ones cannot be placed.
inline void check_feature_range(const char* op, float max_abs_feature) {
  TORCH_CHECK(max_lattice_coord<kFeatureDim>(max_abs_feature) < static_cast<float>(kKeyFieldBias), op,
              ": features must be finite and at most about ",
              static_cast<float>(kKeyFieldBias) / max_lattice_coord<kFeatureDim>(1.0f),
              " in absolute value (are the sigmas tiny?), got ", max_abs_feature);
}

}  // namespace rloss
