// Expert pruning: each MoE layer keeps the K experts that received the largest share of routing
// weight on calibration text (moe/model/expert_usage.h); the router rows (and the selection bias,
// e_score_correction_bias) of the kept experts stay, in their original order, and the experts are
// renumbered 0..K-1. docs/PRUNING.md states the score and what the pruned model computes.
#pragma once

#include <cstdint>
#include <vector>

#include "moe/model/expert_usage.h"
#include "moe/model/model_config.h"
#include "moe/model/transformer.h"

namespace moe::model {

struct LayerPrune {
  int64_t layer = 0;
  std::vector<int64_t> kept;  // (K) original expert indices, ascending; kept[j] becomes expert j
  double weight_share = 0.0;  // Σ_kept weight / Σ_all weight of the calibration usage
  double count_share = 0.0;   // Σ_kept count / Σ_all count
};

struct PrunePlan {
  ModelConfig config;              // the pruned model's config (num_experts = K, ...)
  std::vector<LayerPrune> layers;  // one per MoE layer, in layer order
  // Group-limited routing (n_groups > 1) could not be kept for K experts (the group count does
  // not divide K, a group would hold fewer than 2 experts, or top-k would exceed the eligible
  // experts): the pruned model routes without groups (n_groups = topk_groups = 1).
  bool groups_reset = false;
};

// score_e = weight_e / Σ_e' weight_e' (the share of routing weight expert e received); the order
// is score descending, then count descending, then index ascending. With group-limited routing
// whose group count G divides K (and leaves >= 2 experts per group and top-k reachable), each group
// keeps its K / G best experts, so every kept expert stays in its group; otherwise the K best of
// the layer and groups_reset. Throws moe::Error when K < top_k or K >= E, the router is not token
// choice, or the usage does not match the config's MoE layers and expert count.
PrunePlan plan_prune(const ModelConfig& c, const ExpertUsage& usage, int64_t keep);

// The pruned model (of m's dtype): every tensor of m, with each MoE layer's router rows, selection bias
// and experts taken from plan.layers[i].kept. Throws when the plan does not match m.
Transformer prune_experts(const Transformer& m, const PrunePlan& plan);

}  // namespace moe::model
