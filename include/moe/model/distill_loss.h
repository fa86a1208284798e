// The loss of knowledge distillation (docs/DISTILLATION.md): cross-entropy against the targets blended
// with the KL divergence from a teacher's temperature-softened distribution, and its logits gradient.
//
// Per counted row r (target >= 0), with student logits z (V), teacher logits t (V), A = kd_weight and
// T = temperature:
//   ce_r = −log softmax(z)[target]
//   kd_r = T² · KL(softmax(t/T) ‖ softmax(z/T)) = T² · Σ_j p_j (log p_j − log q_j),  p = softmax(t/T),
//                                                                                   q = softmax(z/T)
//   loss = (1 − A) · ce_r + A · kd_r
//   dloss/dz = grad_scale · [ (1 − A) · (softmax(z) − onehot(target)) + A · T · (q − p) ]
// Ignored rows (target < 0) contribute nothing and get a zero gradient. With A = 0 the gradient is
// bit-identical to nn::cross_entropy's (the KD term is still measured when a teacher is given).
#pragma once

#include <cstdint>

#include "moe/core/tensor.h"

namespace moe::nn {

struct DistillArgs {
  int64_t n = 0;            // rows
  int64_t V = 0;            // vocabulary
  double kd_weight = 0;     // A in [0, 1]
  double temperature = 1;   // T > 0
  double grad_scale = 1.0;  // multiplies the whole gradient (the trainer's 1 / tokens)
};

struct DistillResult {
  double ce_sum = 0;  // Σ ce_r over counted rows
  double kd_sum = 0;  // Σ kd_r over counted rows (0 without a teacher)
  int64_t count = 0;  // counted rows
};

// logits (n, V); teacher (n, V) of dtype F32 or F64, or null (then A must be 0: plain cross-entropy);
// targets (n); dlogits (n, V) or null (loss only), may alias logits. Throws moe::Error on a target
// >= V, A outside [0, 1], T <= 0, or a teacher of another shape or dtype.
template <typename T>
DistillResult distill_cross_entropy(const DistillArgs& a, const T* logits, const Tensor* teacher,
                                    const int32_t* targets, T* dlogits);

}  // namespace moe::nn
