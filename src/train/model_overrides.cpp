// The model config of a new training run from overrides (moe/train/model_overrides.h).
#include "moe/train/model_overrides.h"

#include <algorithm>

#include "moe/core/error.h"
#include "moe/moe/config.h"
#include "moe/train/trainer.h"

namespace moe::train {

model::ModelConfig build_model_config(const ModelOverrides& a, int64_t seq_len) {
  model::ModelConfig c = default_model_config();
  const bool given = !a.model_config.empty() || !a.model_config_json.empty();  // a config to start from
  if (!a.model_config_json.empty())
    c = model::model_config_from_json(a.model_config_json);
  else if (!a.model_config.empty())
    c = model::load_model_config(a.model_config);
  else
    c.arch = model::arch_from_name(a.arch);
  MOE_CHECK(
      c.arch != model::Arch::DeepseekV3 || given,
      "--arch deepseek_v3 needs --model-config (a config.json with its latent attention and router sizes)");
  if (a.layers) c.num_hidden_layers = a.layers;
  if (a.hidden) c.hidden_size = a.hidden;
  if (a.heads)
    c.num_attention_heads = a.heads, c.num_key_value_heads = std::min(c.num_key_value_heads, a.heads);
  if (a.kv_heads) c.num_key_value_heads = a.kv_heads;
  if (a.head_dim) c.head_dim = a.head_dim;
  if (a.hidden || a.heads) c.head_dim = a.head_dim ? a.head_dim : c.hidden_size / c.num_attention_heads;
  if (c.arch == model::Arch::Olmoe) c.head_dim = c.hidden_size / c.num_attention_heads;
  if (a.experts) c.num_experts = a.experts;
  if (a.top_k) c.num_experts_per_tok = a.top_k;
  const bool expert_is_intermediate = c.arch == model::Arch::Mixtral || c.arch == model::Arch::Olmoe;
  if (a.expert_width)
    (expert_is_intermediate ? c.intermediate_size : c.moe_intermediate_size) = a.expert_width;
  else if (!given && expert_is_intermediate)
    c.intermediate_size = c.moe_intermediate_size;
  if (a.dense_width) c.intermediate_size = a.dense_width;
  if (!a.dense_layers.empty()) {
    MOE_CHECK(
        c.arch == model::Arch::Qwen2Moe || c.arch == model::Arch::Qwen3Moe,
        "--dense-layers needs --arch qwen2_moe or qwen3_moe (mixtral and olmoe have MoE in every layer)");
    c.mlp_only_layers = a.dense_layers;
  }
  if (c.arch == model::Arch::Qwen2Moe && a.shared_width < 0 && !given)
    c.shared_expert_intermediate_size = 2 * c.expert_width();
  if (a.shared_width >= 0) {
    MOE_CHECK(c.arch == model::Arch::Qwen2Moe, "--shared-width needs --arch qwen2_moe");
    c.shared_expert_intermediate_size = a.shared_width;
  }
  if (a.tie) c.tie_word_embeddings = true;
  if (a.aux_coef >= 0) c.router_aux_loss_coef = a.aux_coef;
  if (a.z_coef >= 0) c.router_z_loss_coef = a.z_coef;
  if (!a.routing.empty() || !a.score.empty() || a.bias_update_rate > 0 || a.capacity_factor > 0 ||
      a.n_groups > 1 || a.router_top_p > 0 || a.entropy_coef > 0) {
    c.has_extra = true;
    if (!a.routing.empty()) c.router_extra.routing = router_type_from_name(a.routing);
    if (!a.score.empty()) c.router_extra.score = score_fn_from_name(a.score);
    c.router_extra.capacity_factor = a.capacity_factor;
    c.router_extra.n_groups = a.n_groups;
    c.router_extra.topk_groups = a.topk_groups;
    if (a.bias_update_rate > 0)
      c.router_extra.use_bias = true, c.balance_extra.bias_update_rate = a.bias_update_rate;
    c.router_extra.top_p = a.router_top_p;
    c.router_extra.min_k = a.min_k;
    c.balance_extra.entropy_coef = a.entropy_coef;
  }
  c.max_position_embeddings = std::max(c.max_position_embeddings, seq_len);
  return c;
}

}  // namespace moe::train
