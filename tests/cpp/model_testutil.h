// Tiny model configurations of every architecture, shared by the model, batching and engine tests.
#pragma once

#include <cstdint>
#include <vector>

#include "moe/core/rng.h"
#include "moe/model/model_config.h"

namespace moe::model::testing {

// A two-layer model of `arch` small enough for finite differences, with the architecture's
// options on: qwen2_moe's shared expert and a dense layer, qwen3_moe's z-loss and dense layer,
// mixtral's tied head, deepseek_v3's latent attention with every option (low-rank q, YaRN with both
// mscales, interleaved rope, biases), a dense layer, grouped routing and a shared expert.
inline ModelConfig tiny_config(Arch arch) {
  ModelConfig c;
  c.arch = arch;
  c.vocab_size = 11;
  c.hidden_size = 8;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.head_dim = 4;
  c.num_experts = 4;
  c.num_experts_per_tok = 2;
  c.intermediate_size = 6;
  c.moe_intermediate_size = 5;
  c.max_position_embeddings = 64;
  c.router_aux_loss_coef = 0.01;
  c.initializer_range = 0.5;                // large weights so that every term matters in the gradient check
  if (arch == Arch::Olmoe) c.head_dim = 2;  // olmoe: heads · head_dim == hidden
  if (arch == Arch::Qwen2Moe) {
    c.shared_expert_intermediate_size = 7;
    c.mlp_only_layers = {1};
  }
  if (arch == Arch::Qwen3Moe) {
    c.norm_topk_prob = true;
    c.mlp_only_layers = {0};
    c.router_z_loss_coef = 0.001;
  }
  if (arch == Arch::Mixtral) c.tie_word_embeddings = true;
  if (arch == Arch::DeepseekV3) {
    c.num_key_value_heads = 4;
    c.head_dim = 2;
    c.q_lora_rank = 3, c.kv_lora_rank = 4, c.qk_nope_head_dim = 2, c.qk_rope_head_dim = 2, c.v_head_dim = 3;
    c.mla_bias = true;
    c.n_shared_experts = 1, c.first_k_dense_replace = 1, c.n_group = 2, c.topk_group = 1;
    c.norm_topk_prob = true, c.routed_scaling_factor = 2.0;
    c.rope_scaling.type = "yarn", c.rope_scaling.factor = 4.0, c.rope_scaling.mscale = 1.0;
    c.rope_scaling.mscale_all_dim = 0.5, c.rope_scaling.original_max_position_embeddings = 4;
  }
  return c;
}

// n token ids in [0, V) from a seed.
// A mixtral with enough experts for expert-store budgets to matter: 4 MoE layers x 8 experts, top-2.
inline ModelConfig offload_config() {
  ModelConfig c = tiny_config(Arch::Mixtral);
  c.hidden_size = 32;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.head_dim = 8;
  c.num_hidden_layers = 4;
  c.num_experts = 8;
  c.num_experts_per_tok = 2;
  c.intermediate_size = 64;
  c.vocab_size = 37;
  c.initializer_range = 0.2;
  return c;
}

inline std::vector<int32_t> random_tokens(int64_t n, int64_t V, uint64_t seed) {
  const Rng r(seed);
  std::vector<int32_t> t(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i)
    t[static_cast<size_t>(i)] = static_cast<int32_t>(r.below(static_cast<uint64_t>(i), V));
  return t;
}

}  // namespace moe::model::testing
