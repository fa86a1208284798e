// Load-balancing losses and their gradients (docs/MOE_LAYER.md section 5).
#pragma once

#include <vector>

#include "moe/moe/config.h"
#include "moe/moe/layer.h"

namespace moe {

struct BalanceLosses {
  double aux = 0.0;      // weighted Switch/GShard loss
  double seq_aux = 0.0;  // weighted sequence-level loss
  double z = 0.0;        // weighted z-loss
  double entropy = 0.0;  // weighted router entropy loss (BalanceConfig::entropy_coef)
};

// Routed counts per expert (before capacity) of the assignments in r that are selected (all but the
// slots top-p routing did not select).
std::vector<int64_t> routed_counts(const Routing& r, int64_t n_experts);

// Loss values for routing r (logits and scores inside r). When d_logits is not null, adds the
// gradient of aux + seq_aux + z + entropy with respect to the logits, (T, E) row-major, to it.
// With top-p routing, k in the loss scales is the batch's mean k (r.n_active / T).
BalanceLosses balance_losses(const MoEConfig& cfg, const Routing& r, double* d_logits);

// b_e += rate · sign(mean(c) − c_e); bias is (E) of dtype F32 or F64.
void update_bias(Tensor& bias, const std::vector<int64_t>& routed, double rate);

}  // namespace moe
