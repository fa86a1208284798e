// Configuration of one MoE layer. The exact math of every option is in docs/MOE_LAYER.md.
#pragma once

#include <cstdint>
#include <string>

#include "moe/kernels/ops.h"

namespace moe {

enum class RouterType { TokenChoice, ExpertChoice, Hash, Balanced };
enum class ScoreFn { Softmax, Sigmoid };
enum class TopkOrder { ScoreThenTopk, TopkThenSoftmax };  // "softmax then top-k" / "top-k then softmax"
enum class GroupScore { Max, SumTop2 };
enum class DropPolicy { Position, Probs };

const char* router_type_name(RouterType r);
const char* score_fn_name(ScoreFn s);
const char* topk_order_name(TopkOrder o);
const char* group_score_name(GroupScore g);
const char* drop_policy_name(DropPolicy d);
RouterType router_type_from_name(const std::string& s);  // token_choice | expert_choice | hash | balanced
ScoreFn score_fn_from_name(const std::string& s);        // softmax | sigmoid
TopkOrder topk_order_from_name(const std::string& s);    // score_then_topk | topk_then_softmax
GroupScore group_score_from_name(const std::string& s);  // max | sum_top2
DropPolicy drop_policy_from_name(const std::string& s);  // position | probs

struct RouterConfig {
  RouterType routing = RouterType::TokenChoice;
  ScoreFn score = ScoreFn::Softmax;
  TopkOrder order = TopkOrder::ScoreThenTopk;
  int top_k = 2;
  bool normalize = false;  // renormalise the k selected weights to sum to 1
  double scaling = 1.0;    // routed scaling factor applied to the weights
  int n_groups = 1;        // group-limited routing: experts split in n_groups contiguous groups
  int topk_groups = 1;     // ... of which the best topk_groups are eligible
  GroupScore group_score = GroupScore::SumTop2;
  bool use_bias = false;         // per-expert selection bias (aux-loss-free balancing)
  double jitter_eps = 0.0;       // training only: router input scaled by U(1-eps, 1+eps)
  double capacity_factor = 0.0;  // 0 = dropless; > 0: capacity per expert = ceil(cf * T * k / E)
  DropPolicy drop_policy = DropPolicy::Position;
  int sinkhorn_iters = 8;  // balanced routing
  uint64_t hash_seed = 0;  // hash routing
  // Inference only (a forward with ForwardOptions::training false): assignments whose combine
  // weight is below this are not computed (dropped like capacity drops; the other weights are not
  // renormalised). 0 = off. docs/PRUNING.md.
  double skip_threshold = 0.0;
  // Adaptive-k (top-p) routing, token choice with softmax scores: a token's experts are taken in
  // order of score until their probability mass reaches top_p, at least min_k and at most top_k
  // (the candidates). The others are not selected: they count nowhere (no compute, no load, no
  // balancing term). With normalize (or order topk_then_softmax) the weights are renormalised over
  // the selected experts. 0 = off (always top_k). docs/MOE_LAYER.md section 2.
  double top_p = 0.0;
  int min_k = 1;
};

struct BalanceConfig {
  double aux_coef = 0.0;          // Switch/GShard auxiliary loss coefficient α
  double seq_aux_coef = 0.0;      // sequence-level auxiliary loss coefficient
  int64_t seq_len = 0;            // sequence length for the sequence-level loss (0 = whole batch)
  double z_coef = 0.0;            // router z-loss coefficient
  double bias_update_rate = 0.0;  // γ of the aux-loss-free bias update
  double entropy_coef = 0.0;      // router entropy loss: coef · mean_t H(p_t) (lower H: fewer top-p experts)
};

struct MoEConfig {
  int64_t d_model = 0;
  int64_t d_ff = 0;  // width of each routed expert
  int64_t n_experts = 0;
  kernels::Activation activation = kernels::Activation::SwiGLU;  // SwiGLU, or Gelu/Relu/Silu for plain FFN
  int64_t n_shared_experts = 0;
  int64_t d_ff_shared = 0;   // width of each shared expert (0 = d_ff)
  bool shared_gate = false;  // Qwen2-MoE style sigmoid gate on the shared experts' output
  RouterConfig router;
  BalanceConfig balance;

  // Throws moe::Error naming the first invalid field (k > E, groups not dividing E, ...).
  void validate() const;
  int64_t shared_width() const { return n_shared_experts * (d_ff_shared > 0 ? d_ff_shared : d_ff); }
};

// JSON (field names as in docs/MOE_LAYER.md). Unknown keys and bad values throw moe::Error.
std::string to_json(const MoEConfig& c);
MoEConfig moe_config_from_json(const std::string& json_text);

}  // namespace moe
