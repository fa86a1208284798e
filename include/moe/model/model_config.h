// Configuration of a decoder-only MoE transformer. Field names mirror the Hugging Face
// `config.json` of the four supported architectures, so a config written here loads in
// transformers and theirs loads here:
//
//   mixtral    experts width `intermediate_size`, `num_local_experts`, top-k then renormalise;
//              every layer MoE.
//   qwen2_moe  experts width `moe_intermediate_size`, one shared expert of width
//              `shared_expert_intermediate_size` with a sigmoid gate, q/k/v biases, dense layers
//              (width `intermediate_size`) chosen by `decoder_sparse_step` and `mlp_only_layers`.
//   qwen3_moe  like qwen2_moe without the shared expert, with per-head q/k RMSNorm (`head_dim`).
//   olmoe      experts width `intermediate_size`, q/k RMSNorm over the whole projection.
//   deepseek_v3  multi-head latent attention (q_lora_rank, kv_lora_rank, qk_nope/qk_rope/v head
//              dims, YaRN rope scaling), `n_routed_experts` of width `moe_intermediate_size` with a
//              sigmoid, group-limited router and a selection bias (e_score_correction_bias),
//              `n_shared_experts` ungated shared experts, layers < `first_k_dense_replace` dense.
//              docs/MODELS.md has the math.
//
// Options beyond the Hugging Face fields (other routers, balancing, capacity) live under the key
// "moe_cpp" of the same file; transformers ignores it, so checkpoints trained with them load there
// but compute with the architecture's own router.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "moe/moe/config.h"

namespace moe::model {

enum class Arch { Mixtral, Qwen2Moe, Qwen3Moe, Olmoe, DeepseekV3 };
const char* arch_name(Arch a);            // the Hugging Face model_type
Arch arch_from_name(const std::string&);  // throws moe::Error listing the supported ones

enum class QkNorm { None, PerHead, Full };  // qwen3_moe: RMSNorm(head_dim); olmoe: RMSNorm(heads · head_dim)

// Rotary scaling ("rope_scaling" in transformers 4, "rope_parameters" in 5), deepseek_v3 only.
// type "default" (none) or "yarn"; the YaRN fields as transformers' _compute_yarn_parameters reads
// them (0 = absent where transformers treats absent specially).
struct RopeScaling {
  std::string type = "default";
  double factor = 1.0;
  double mscale = 0;                             // 0 = absent
  double mscale_all_dim = 0;                     // 0 = absent
  double attention_factor = 0;                   // 0 = derived from factor, mscale, mscale_all_dim
  int64_t original_max_position_embeddings = 0;  // 0 = max_position_embeddings
  double beta_fast = 32, beta_slow = 1;
  bool truncate = true;
  bool yarn() const { return type == "yarn"; }
};

struct ModelConfig {
  Arch arch = Arch::Qwen3Moe;
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t num_hidden_layers = 0;
  int64_t num_attention_heads = 0;
  int64_t num_key_value_heads = 0;
  int64_t head_dim = 0;                         // 0 = hidden_size / num_attention_heads
  int64_t intermediate_size = 0;                // dense FFN width (mixtral, olmoe: the expert width)
  int64_t moe_intermediate_size = 0;            // expert width (qwen2_moe, qwen3_moe)
  int64_t shared_expert_intermediate_size = 0;  // qwen2_moe
  int64_t num_experts = 0;
  int64_t num_experts_per_tok = 0;
  bool norm_topk_prob = false;           // mixtral always renormalises
  int64_t decoder_sparse_step = 1;       // qwen: layer i is MoE when (i + 1) % step == 0 ...
  std::vector<int64_t> mlp_only_layers;  // ... and i is not listed here
  double rope_theta = 10000.0;
  double rms_norm_eps = 1e-6;
  int64_t max_position_embeddings = 4096;
  bool tie_word_embeddings = false;
  double router_aux_loss_coef = 0.001;
  double router_z_loss_coef = 0.0;
  double initializer_range = 0.02;
  int64_t bos_token_id = -1;
  int64_t eos_token_id = -1;
  // deepseek_v3 (num_experts holds n_routed_experts; head_dim is qk_rope_head_dim, as transformers sets it)
  int64_t n_shared_experts = 0;       // ungated shared experts, each moe_intermediate_size wide
  int64_t first_k_dense_replace = 0;  // layers < this are dense (intermediate_size)
  int64_t n_group = 1;                // expert groups of the group-limited router ...
  int64_t topk_group = 1;             // ... of which the best topk_group are eligible
  double routed_scaling_factor = 1.0;
  int64_t q_lora_rank = 0;  // 0 (null in config.json) = plain q_proj
  int64_t kv_lora_rank = 0;
  int64_t qk_nope_head_dim = 0;
  int64_t qk_rope_head_dim = 0;
  int64_t v_head_dim = 0;
  bool rope_interleave = true;
  bool mla_bias = false;  // config.json attention_bias: q_a_proj, kv_a_proj_with_mqa, o_proj
  RopeScaling rope_scaling;
  // "moe_cpp" extension: router and balancing options beyond the architecture's own. The fields
  // that the architecture defines (top_k, normalisation, aux coefficient) are taken from above.
  RouterConfig router_extra;
  BalanceConfig balance_extra;
  bool has_extra = false;  // write the "moe_cpp" key

  int64_t head_dim_or_default() const { return head_dim > 0 ? head_dim : hidden_size / num_attention_heads; }
  int64_t expert_width() const;  // per architecture
  bool is_moe_layer(int64_t layer) const;
  bool attention_bias() const { return arch == Arch::Qwen2Moe; }  // q/k/v projection biases
  bool mla() const { return arch == Arch::DeepseekV3; }           // multi-head latent attention
  // Head dims of queries/keys and of values (qk_nope + qk_rope and v_head_dim for deepseek_v3).
  int64_t qk_head_dim() const { return mla() ? qk_nope_head_dim + qk_rope_head_dim : head_dim_or_default(); }
  int64_t v_head_dim_or_default() const { return mla() ? v_head_dim : head_dim_or_default(); }
  int64_t rope_dim() const { return mla() ? qk_rope_head_dim : head_dim_or_default(); }
  // Rotary frequencies (rope_dim / 2) with the rope scaling applied, the factor that scales cos and
  // sin (YaRN's attention factor) and the softmax scale of attention (qk_head_dim^-1/2, times
  // YaRN's mscale(factor, mscale_all_dim)² for deepseek_v3), as transformers computes them.
  std::vector<double> rope_inv_freq() const;
  double rope_attention_factor() const;
  double attention_scale() const;
  QkNorm qk_norm() const;
  // The MoE layer configuration of every MoE block of this model.
  MoEConfig moe_layer_config() const;
  // Throws moe::Error naming the first invalid field.
  void validate() const;
  void validate_mla() const;         // the deepseek_v3 fields
  int64_t attention_params() const;  // per layer
  // Parameters: total, and active per token (k routed experts + everything else).
  int64_t n_params() const;
  int64_t n_active_params() const;
};

// Hugging Face config.json text <-> config. Unknown keys are ignored (transformers writes many);
// missing required keys and invalid values are a moe::Error naming the key.
ModelConfig model_config_from_json(const std::string& json_text);
ModelConfig load_model_config(const std::string& path);  // a config.json file
std::string to_json(const ModelConfig& c);               // includes "model_type" and "architectures"

}  // namespace moe::model
