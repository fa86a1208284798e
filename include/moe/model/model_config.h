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

enum class Arch { Mixtral, Qwen2Moe, Qwen3Moe, Olmoe };
const char* arch_name(Arch a);           // the Hugging Face model_type
Arch arch_from_name(const std::string&);  // throws moe::Error listing the supported ones

enum class QkNorm { None, PerHead, Full };  // qwen3_moe: RMSNorm(head_dim); olmoe: RMSNorm(heads · head_dim)

struct ModelConfig {
  Arch arch = Arch::Qwen3Moe;
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t num_hidden_layers = 0;
  int64_t num_attention_heads = 0;
  int64_t num_key_value_heads = 0;
  int64_t head_dim = 0;                 // 0 = hidden_size / num_attention_heads
  int64_t intermediate_size = 0;        // dense FFN width (mixtral, olmoe: the expert width)
  int64_t moe_intermediate_size = 0;    // expert width (qwen2_moe, qwen3_moe)
  int64_t shared_expert_intermediate_size = 0;  // qwen2_moe
  int64_t num_experts = 0;
  int64_t num_experts_per_tok = 0;
  bool norm_topk_prob = false;          // mixtral always renormalises
  int64_t decoder_sparse_step = 1;      // qwen: layer i is MoE when (i + 1) % step == 0 ...
  std::vector<int64_t> mlp_only_layers; // ... and i is not listed here
  double rope_theta = 10000.0;
  double rms_norm_eps = 1e-6;
  int64_t max_position_embeddings = 4096;
  bool tie_word_embeddings = false;
  double router_aux_loss_coef = 0.001;
  double router_z_loss_coef = 0.0;
  double initializer_range = 0.02;
  int64_t bos_token_id = -1;
  int64_t eos_token_id = -1;
  // "moe_cpp" extension: router and balancing options beyond the architecture's own. The fields
  // that the architecture defines (top_k, normalisation, aux coefficient) are taken from above.
  RouterConfig router_extra;
  BalanceConfig balance_extra;
  bool has_extra = false;               // write the "moe_cpp" key

  int64_t head_dim_or_default() const { return head_dim > 0 ? head_dim : hidden_size / num_attention_heads; }
  int64_t expert_width() const;         // per architecture
  bool is_moe_layer(int64_t layer) const;
  bool attention_bias() const { return arch == Arch::Qwen2Moe; }
  QkNorm qk_norm() const;
  // The MoE layer configuration of every MoE block of this model.
  MoEConfig moe_layer_config() const;
  // Throws moe::Error naming the first invalid field.
  void validate() const;
  // Parameters: total, and active per token (k routed experts + everything else).
  int64_t n_params() const;
  int64_t n_active_params() const;
};

// Hugging Face config.json text <-> config. Unknown keys are ignored (transformers writes many);
// missing required keys and invalid values are a moe::Error naming the key.
ModelConfig model_config_from_json(const std::string& json_text);
ModelConfig load_model_config(const std::string& path);  // a config.json file
std::string to_json(const ModelConfig& c);                // includes "model_type" and "architectures"

}  // namespace moe::model
