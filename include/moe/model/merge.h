// Expert merging: each MoE layer's E experts become K. The K pivots are the experts pruning would
// keep (plan_prune, moe/model/prune.h); every other expert joins the pivot it is most similar to on
// calibration rows (router logits and expert outputs); each group's members have their hidden
// units aligned to the pivot's (a permutation found by linear assignment) and are averaged with
// their routing-weight shares. docs/MERGING.md states every formula.
#pragma once

#include <cstdint>
#include <vector>

#include "moe/model/expert_usage.h"
#include "moe/model/model_config.h"
#include "moe/model/transformer.h"

namespace moe::model {

// Inputs of one MoE layer observed on calibration text: rows of the layer input x (the router's
// input), the same tokens in every layer (infer::measure_merge_calibration, moe/infer/merge_calibrate.h).
struct LayerRows {
  int64_t layer = 0;
  int64_t n = 0, d = 0;
  std::vector<float> x;  // (n, d)
};

// The merged router row (and selection bias) of a group.
enum class MergeRouter {
  Pivot,    // the pivot's row, unchanged
  Average,  // Σ_members share · row (likewise the bias)
};
// How a member's hidden units are matched to the pivot's before averaging.
enum class MergeAlign {
  Weights,  // weight matching: linear assignment on unit feature inner products
  None,     // unit i with unit i (plain average, for comparison)
};

// Each member's share of its merged expert.
enum class MergeShares {
  Usage,            // s_e ∝ weight[e]
  UsageSimilarity,  // s_e ∝ weight[e] · max(sim(e, pivot), 0)
};

struct MergeOptions {
  // sim(a, b) = routing_weight · cos_router(a, b) + (1 − routing_weight) · cos_output(a, b)
  double routing_weight = 0.5;
  MergeRouter router = MergeRouter::Pivot;
  MergeAlign align = MergeAlign::Weights;
  MergeShares shares = MergeShares::Usage;
  // Refit each merged expert's down projection on the calibration rows (merge_experts with rows):
  // with the merged gate and up fixed, W_down minimises
  //   Σ_a w_a · |W_down · h_g(x_a) − f_e(x_a)|² + λ · |W_down − W̄_down|²
  // over the rows' assignments a to any member e of the group (w_a their routing weight, f_e the
  // member's original FFN, h_g the merged hidden vector, W̄_down the averaged down projection),
  // λ = refit_damping · the mean diagonal of Σ_a w_a · h·hᵀ. 0 = no refit (the plain average).
  double refit_damping = 0;
};

struct LayerMerge {
  int64_t layer = 0;
  // (K) members of merged expert j (original indices): its pivot first, then the others ascending.
  // Pivots ascend with j (the order of plan_prune's kept experts).
  std::vector<std::vector<int64_t>> groups;
  std::vector<std::vector<double>> shares;  // (K) each member's share of its group's usage weight (Σ = 1)
  std::vector<double> similarity;           // (E) sim(e, pivot of e's group); 1 for pivots
  double weight_share = 0.0;                // Σ_pivots weight / Σ_all weight (what pruning would keep)
};

struct MergePlan {
  ModelConfig config;              // the merged model's config (num_experts = K, ...), as plan_prune's
  std::vector<LayerMerge> layers;  // one per MoE layer, in layer order
  bool groups_reset = false;       // as PrunePlan::groups_reset
  MergeOptions options;
};

// Expert similarity of one MoE layer on rows X (n, d), (E, E) row-major, symmetric:
//   cos_router(a, b) = cos(Z[:, a], Z[:, b]), Z (n, E) the router logits X · router_wᵀ with each
//     row's mean over the experts subtracted (the scores depend on a row only up to that shift);
//   cos_output(a, b) = Σ_t <f_a(x_t), f_b(x_t)> / sqrt(Σ_t |f_a(x_t)|² · Σ_t |f_b(x_t)|²), f_e the
//     expert's FFN;
//   sim = w · cos_router + (1 − w) · cos_output, w = routing_weight in [0, 1].
// A zero column or output counts as cosine 0. Computed in f32 with double sums.
std::vector<double> expert_similarity(const MoELayer& layer, const LayerRows& rows, double routing_weight);

// The pivots are plan_prune(c, usage, keep)'s kept experts (so the same errors: K < top-k, K >= E,
// a router that is not token choice, usage not matching the model). Each other expert joins the
// pivot of highest sim (ties: the lower index); with group-limited routing kept (not groups_reset)
// only the pivots of its own group are candidates. shares[j][i] = weight[member] / Σ_group weight
// (MergeShares::UsageSimilarity: weight · max(sim, 0) normalised likewise; equal shares when the
// group's total is 0). rows: one per MoE layer, in layer order.
MergePlan plan_merge(const Transformer& m, const ExpertUsage& usage, const std::vector<LayerRows>& rows,
                     int64_t keep, const MergeOptions& opt = {});

// Weight matching of one expert's hidden units to another's: the permutation perm (F) maximising
// Σ_i <u_i, v_perm[i]>, u_i = [w_gate[i, :], w_up[i, :], w_down[:, i]] the feature vector of unit i
// of the reference expert `ref`, v_j that of unit j of `other` (layer experts, any dtype). Unit i of
// the aligned expert is unit perm[i] of `other`.
std::vector<int64_t> align_units(const MoELayer& layer, int64_t ref, int64_t other);

// The merged model (of m's dtype): every tensor of m but the MoE layers' routed experts, router rows
// and selection biases, which come from the plan: merged expert j of a layer is
//   W_j = Σ_i shares[j][i] · P_i(W_{groups[j][i]})
// for W in w_gate, w_up, w_down, P_i the alignment of member i to the pivot (identity for the pivot
// and with MergeAlign::None); its router row and bias per plan.options.router. Throws when the plan
// does not match m.
// rows (one per MoE layer, as plan_merge's): the calibration rows for plan.options.refit_damping > 0
// (required then, ignored otherwise). SwiGLU experts only for the refit.
Transformer merge_experts(const Transformer& m, const MergePlan& plan,
                          const std::vector<LayerRows>* rows = nullptr);

}  // namespace moe::model
