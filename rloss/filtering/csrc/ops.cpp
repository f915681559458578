// Declares the extension's operators; the CPU and CUDA files register their
// implementations for the same schema.
#include <torch/library.h>

TORCH_LIBRARY(rloss, m) {
  // features [N, P, D] float32 (2 <= D <= 16), values [N, K, P] float32 -> [N, K, P]:
  // the permutohedral-lattice approximation of sum_j exp(-|f_i - f_j|^2 / 2) values_j.
  m.def("permutohedral_filter(Tensor features, Tensor values) -> Tensor");
  // The DenseCRF loss in one pass: with S = probs * roi (probs [N, K, P], roi
  // [N, P]), returns (sum(S * A S) per image [N], out_scale * roi * A S [N, K, P]).
  m.def("permutohedral_crf(Tensor features, Tensor probs, Tensor roi, float out_scale) -> (Tensor, Tensor)");
}
