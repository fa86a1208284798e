// The model flags shared by `moe train` and `moe bench train`, and the config they build.
#include "cli/model_flags.h"

#include <algorithm>

#include "cli/common.h"
#include "moe/core/error.h"
#include "moe/moe/config.h"
#include "moe/train/trainer.h"

namespace moe::cli {

void add_model_flags(CLI::App* c, ModelFlags& f) {
  c->add_option("--model-config", f.model_config, "Start from this Hugging Face config.json");
  c->add_option("--arch", f.arch, "mixtral | qwen2_moe | qwen3_moe | olmoe")->capture_default_str();
  c->add_option("--layers", f.layers, "Transformer layers (default 4)")->check(at_least(1));
  c->add_option("--hidden", f.hidden, "Model width d (default 256)")->check(at_least(1));
  c->add_option("--heads", f.heads, "Attention heads (default 8)")->check(at_least(1));
  c->add_option("--kv-heads", f.kv_heads, "Key/value heads (grouped-query attention; default 4)")
      ->check(at_least(1));
  c->add_option("--head-dim", f.head_dim, "Head dimension (default hidden / heads)")->check(at_least(1));
  c->add_option("--experts", f.experts, "Routed experts per MoE layer (default 8)")->check(at_least(1));
  c->add_option("--top-k", f.top_k, "Experts per token (default 2)")->check(at_least(1));
  c->add_option("--expert-width", f.expert_width, "Width of each expert's FFN (default 256)")
      ->check(at_least(1));
  c->add_option("--shared-width", f.shared_width, "qwen2_moe: shared expert width (default 2 x expert width)")
      ->check(at_least(0));
  c->add_option("--dense-layers", f.dense_layers, "qwen: layers with a dense FFN instead of MoE")
      ->delimiter(',');
  c->add_option("--dense-width", f.dense_width, "Width of the dense FFN layers (default 1024)")
      ->check(at_least(1));
  c->add_flag("--tie", f.tie, "Tie the output head to the token embedding");
  c->add_option("--routing", f.routing, "token_choice | expert_choice | hash | balanced");
  c->add_option("--score", f.score, "softmax | sigmoid");
  c->add_option("--aux-coef", f.aux_coef, "Switch/GShard balancing loss coefficient (default 0.01)")
      ->check(at_least(0));
  c->add_option("--z-coef", f.z_coef, "Router z-loss coefficient (default 0.001)")->check(at_least(0));
  c->add_option("--bias-update-rate", f.bias_update_rate, "Aux-loss-free balancing: bias step size (0 = off)")
      ->check(at_least(0));
  c->add_option("--capacity-factor", f.capacity_factor, "Expert capacity factor (0 = dropless)")
      ->check(at_least(0));
  c->add_option("--n-groups", f.n_groups, "Group-limited routing: expert groups")->check(at_least(1));
  c->add_option("--topk-groups", f.topk_groups, "Group-limited routing: groups eligible per token")
      ->check(at_least(1));
}

model::ModelConfig build_model(const ModelFlags& a, int64_t seq_len) {
  model::ModelConfig c = train::default_model_config();
  if (!a.model_config.empty())
    c = model::load_model_config(a.model_config);
  else
    c.arch = model::arch_from_name(a.arch);
  MOE_CHECK(
      c.arch != model::Arch::DeepseekV3 || !a.model_config.empty(),
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
  else if (a.model_config.empty() && expert_is_intermediate)
    c.intermediate_size = c.moe_intermediate_size;
  if (a.dense_width) c.intermediate_size = a.dense_width;
  if (!a.dense_layers.empty()) {
    MOE_CHECK(
        c.arch == model::Arch::Qwen2Moe || c.arch == model::Arch::Qwen3Moe,
        "--dense-layers needs --arch qwen2_moe or qwen3_moe (mixtral and olmoe have MoE in every layer)");
    c.mlp_only_layers = a.dense_layers;
  }
  if (c.arch == model::Arch::Qwen2Moe && a.shared_width < 0 && a.model_config.empty())
    c.shared_expert_intermediate_size = 2 * c.expert_width();
  if (a.shared_width >= 0) {
    MOE_CHECK(c.arch == model::Arch::Qwen2Moe, "--shared-width needs --arch qwen2_moe");
    c.shared_expert_intermediate_size = a.shared_width;
  }
  if (a.tie) c.tie_word_embeddings = true;
  if (a.aux_coef >= 0) c.router_aux_loss_coef = a.aux_coef;
  if (a.z_coef >= 0) c.router_z_loss_coef = a.z_coef;
  if (!a.routing.empty() || !a.score.empty() || a.bias_update_rate > 0 || a.capacity_factor > 0 ||
      a.n_groups > 1) {
    c.has_extra = true;
    if (!a.routing.empty()) c.router_extra.routing = router_type_from_name(a.routing);
    if (!a.score.empty()) c.router_extra.score = score_fn_from_name(a.score);
    c.router_extra.capacity_factor = a.capacity_factor;
    c.router_extra.n_groups = a.n_groups;
    c.router_extra.topk_groups = a.topk_groups;
    if (a.bias_update_rate > 0)
      c.router_extra.use_bias = true, c.balance_extra.bias_update_rate = a.bias_update_rate;
  }
  c.max_position_embeddings = std::max(c.max_position_embeddings, seq_len);
  return c;
}

}  // namespace moe::cli
