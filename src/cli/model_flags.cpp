// The model flags shared by `moe train` and `moe bench train`, and the config they build.
#include "cli/model_flags.h"

#include "cli/common.h"

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
      ->check(in_range(0, 1023))
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
  c->add_option("--router-top-p", f.router_top_p,
                "Adaptive-k (top-p) routing: experts by score until their probability mass reaches P, at "
                "least --router-min-k and at most --top-k (0 = off)")
      ->check(in_range(0, 1));
  c->add_option("--router-min-k", f.min_k, "Adaptive-k routing: experts per token at least (default 1)")
      ->check(in_range(1, 1 << 14));
  c->add_option(
       "--entropy-coef", f.entropy_coef,
       "Router entropy loss coefficient (with --router-top-p: lower entropy, fewer experts; default 0)")
      ->check(in_range(0, 1e3));
}

}  // namespace moe::cli
