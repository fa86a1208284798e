// Hugging Face tensor names of the linears that `moe quantize` may store quantized: the routed experts'
// gate/up/down projections and the attention projections, per architecture. One definition for the
// quantized-checkpoint writer and reader (and any loader that needs the names).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "moe/core/error.h"
#include "moe/model/model_config.h"

namespace moe::model::hf_names {

inline std::string layer_prefix(int64_t l) { return cat("model.layers.", l, "."); }

// The MoE block of layer l: "model.layers.l.block_sparse_moe" (mixtral) or "model.layers.l.mlp".
inline std::string moe_prefix(const ModelConfig& c, int64_t l) {
  return layer_prefix(l) + (c.arch == Arch::Mixtral ? "block_sparse_moe" : "mlp");
}

// The selection bias of an MoE block's router (deepseek_v3), after moe_prefix.
inline constexpr const char* kRouterBiasSuffix = ".gate.e_score_correction_bias";

// The gate, up and down projections of routed expert e of MoE layer l (mixtral: w1, w3, w2).
inline void expert_names(const ModelConfig& c, int64_t l, int64_t e, std::string out[3]) {
  const std::string p = cat(moe_prefix(c, l), ".experts.", e, ".");
  if (c.arch == Arch::Mixtral) {
    out[0] = p + "w1.weight", out[1] = p + "w3.weight", out[2] = p + "w2.weight";
  } else {
    out[0] = p + "gate_proj.weight", out[1] = p + "up_proj.weight", out[2] = p + "down_proj.weight";
  }
}

// The attention projections of layer l: q/k/v/o_proj, or for deepseek_v3's latent attention
// q_a_proj and q_b_proj (q_proj when q_lora_rank is 0), kv_a_proj_with_mqa, kv_b_proj and o_proj.
inline std::vector<std::string> attention_names(const ModelConfig& c, int64_t l) {
  const std::string p = layer_prefix(l) + "self_attn.";
  if (!c.mla()) return {p + "q_proj.weight", p + "k_proj.weight", p + "v_proj.weight", p + "o_proj.weight"};
  std::vector<std::string> n;
  if (c.q_lora_rank > 0) {
    n.push_back(p + "q_a_proj.weight");
    n.push_back(p + "q_b_proj.weight");
  } else {
    n.push_back(p + "q_proj.weight");
  }
  for (const char* s : {"kv_a_proj_with_mqa.weight", "kv_b_proj.weight", "o_proj.weight"}) n.push_back(p + s);
  return n;
}

}  // namespace moe::model::hf_names
