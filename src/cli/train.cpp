// `moe train`: train an MoE language model (defaults: a small qwen3_moe on the English text of
// Debian's fortunes package), or `moe train --resume RUN_DIR` to continue one.
#include <filesystem>
#include <iostream>
#include <memory>

#include "cli/common.h"
#include "moe/core/error.h"
#include "moe/core/parallel.h"
#include "moe/moe/config.h"
#include "moe/train/trainer.h"

namespace moe::cli {
namespace {

struct TrainArgs {
  train::TrainOptions opt;
  std::string arch = "qwen3_moe";
  std::string model_config;  // a config.json to start from
  int64_t layers = 0, hidden = 0, heads = 0, kv_heads = 0, head_dim = 0, experts = 0, top_k = 0, expert_width = 0;
  int64_t shared_width = -1, dense_width = 0;
  std::vector<int64_t> dense_layers;
  bool tie = false;
  double aux_coef = -1, z_coef = -1;
  std::string routing, score;
  double bias_update_rate = 0, capacity_factor = 0;
  int n_groups = 1, topk_groups = 1;
  std::string resume;
  bool overwrite = false;
  double time_limit_min = 0;
  int threads = 0;
};

model::ModelConfig build_model(const TrainArgs& a) {
  model::ModelConfig c = train::default_model_config();
  if (!a.model_config.empty()) c = model::load_model_config(a.model_config);
  else c.arch = model::arch_from_name(a.arch);
  if (a.layers) c.num_hidden_layers = a.layers;
  if (a.hidden) c.hidden_size = a.hidden;
  if (a.heads) c.num_attention_heads = a.heads, c.num_key_value_heads = std::min(c.num_key_value_heads, a.heads);
  if (a.kv_heads) c.num_key_value_heads = a.kv_heads;
  if (a.head_dim) c.head_dim = a.head_dim;
  if (a.hidden || a.heads) c.head_dim = a.head_dim ? a.head_dim : c.hidden_size / c.num_attention_heads;
  if (c.arch == model::Arch::Olmoe) c.head_dim = c.hidden_size / c.num_attention_heads;
  if (a.experts) c.num_experts = a.experts;
  if (a.top_k) c.num_experts_per_tok = a.top_k;
  const bool expert_is_intermediate = c.arch == model::Arch::Mixtral || c.arch == model::Arch::Olmoe;
  if (a.expert_width) (expert_is_intermediate ? c.intermediate_size : c.moe_intermediate_size) = a.expert_width;
  else if (a.model_config.empty() && expert_is_intermediate) c.intermediate_size = c.moe_intermediate_size;
  if (a.dense_width) c.intermediate_size = a.dense_width;
  if (!a.dense_layers.empty()) {
    MOE_CHECK(c.arch == model::Arch::Qwen2Moe || c.arch == model::Arch::Qwen3Moe,
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
  if (!a.routing.empty() || !a.score.empty() || a.bias_update_rate > 0 || a.capacity_factor > 0 || a.n_groups > 1) {
    c.has_extra = true;
    if (!a.routing.empty()) c.router_extra.routing = router_type_from_name(a.routing);
    if (!a.score.empty()) c.router_extra.score = score_fn_from_name(a.score);
    c.router_extra.capacity_factor = a.capacity_factor;
    c.router_extra.n_groups = a.n_groups;
    c.router_extra.topk_groups = a.topk_groups;
    if (a.bias_update_rate > 0) c.router_extra.use_bias = true, c.balance_extra.bias_update_rate = a.bias_update_rate;
  }
  c.max_position_embeddings = std::max(c.max_position_embeddings, a.opt.seq_len);
  return c;
}

int run_train(TrainArgs& a) {
  if (a.threads > 0) set_num_threads(a.threads);
  const double limit_s = a.time_limit_min * 60.0;
  train::TrainSummary s;
  if (!a.resume.empty()) {
    s = train::resume(a.resume, a.opt.steps, a.opt.halt_after, limit_s, a.opt.quiet);
  } else {
    a.opt.model = build_model(a);
    a.opt.model.vocab_size = a.opt.vocab_size;  // replaced by the tokenizer's size
    a.opt.time_limit_s = limit_s;
    if (a.overwrite) {
      std::error_code ec;
      std::filesystem::remove_all(a.opt.run_dir, ec);
      MOE_CHECK(!ec, "cannot remove '", a.opt.run_dir, "': ", ec.message());
    }
    s = train::train(a.opt);
  }
  std::cout << "done: " << s.steps_done << " steps, train loss " << s.final_loss << ", val loss " << s.eval_loss
            << " (unigram entropy " << s.unigram_entropy << "), " << static_cast<int64_t>(s.tokens_per_s)
            << " tokens/s";
  if (s.skipped) std::cout << ", " << s.skipped << " steps skipped (non-finite)";
  std::cout << "\ncheckpoint: " << s.checkpoint << "\n";
  return kExitOk;
}

}  // namespace

void register_train(CLI::App& app, Registry& reg) {
  auto a = std::make_shared<TrainArgs>();
  a->opt.steps = 0;  // 0 = the default (or, with --resume, the run's own)
  CLI::App* c = app.add_subcommand("train", "Train an MoE language model (default: a small qwen3_moe on the "
                                            "fortunes corpus) or resume one");
  train::TrainOptions& o = a->opt;
  c->add_option("--out", o.run_dir, "Run directory")->capture_default_str();
  c->add_option("--data", o.data, "Text file or directory of text files (default: the fortunes package)");
  c->add_option("--resume", a->resume, "Continue the run in this directory from its last checkpoint");
  c->add_flag("--overwrite", a->overwrite, "Delete an existing run in --out first");
  c->add_option("--model-config", a->model_config, "Start from this Hugging Face config.json");
  c->add_option("--init", o.init_from, "Start from this model directory's weights and tokenizer (e.g. `moe upcycle`)");
  c->add_option("--arch", a->arch, "mixtral | qwen2_moe | qwen3_moe | olmoe")->capture_default_str();
  c->add_option("--layers", a->layers, "Transformer layers (default 4)");
  c->add_option("--hidden", a->hidden, "Model width d (default 256)");
  c->add_option("--heads", a->heads, "Attention heads (default 8)");
  c->add_option("--kv-heads", a->kv_heads, "Key/value heads (grouped-query attention; default 4)");
  c->add_option("--head-dim", a->head_dim, "Head dimension (default hidden / heads)");
  c->add_option("--experts", a->experts, "Routed experts per MoE layer (default 8)");
  c->add_option("--top-k", a->top_k, "Experts per token (default 2)");
  c->add_option("--expert-width", a->expert_width, "Width of each expert's FFN (default 256)");
  c->add_option("--shared-width", a->shared_width, "qwen2_moe: shared expert width (default 2 x expert width)");
  c->add_option("--dense-layers", a->dense_layers, "qwen: layers with a dense FFN instead of MoE")->delimiter(',');
  c->add_option("--dense-width", a->dense_width, "Width of the dense FFN layers (default 1024)");
  c->add_flag("--tie", a->tie, "Tie the output head to the token embedding");
  c->add_option("--routing", a->routing, "token_choice | expert_choice | hash | balanced");
  c->add_option("--score", a->score, "softmax | sigmoid");
  c->add_option("--aux-coef", a->aux_coef, "Switch/GShard balancing loss coefficient (default 0.01)");
  c->add_option("--z-coef", a->z_coef, "Router z-loss coefficient (default 0.001)");
  c->add_option("--bias-update-rate", a->bias_update_rate, "Aux-loss-free balancing: bias step size (0 = off)");
  c->add_option("--capacity-factor", a->capacity_factor, "Expert capacity factor (0 = dropless)");
  c->add_option("--n-groups", a->n_groups, "Group-limited routing: expert groups");
  c->add_option("--topk-groups", a->topk_groups, "Group-limited routing: groups eligible per token");
  c->add_option("--vocab-size", o.vocab_size, "BPE vocabulary size")->capture_default_str();
  c->add_option("--seq-len", o.seq_len, "Tokens per sequence")->capture_default_str();
  c->add_option("--batch-size", o.batch_size, "Sequences per micro-batch")->capture_default_str();
  c->add_option("--grad-accum", o.grad_accum, "Micro-batches per optimizer step")->capture_default_str();
  c->add_option("--steps", o.steps, "Optimizer steps (default 800)");
  c->add_option("--lr", o.lr, "Peak learning rate")->capture_default_str();
  c->add_option("--min-lr-ratio", o.min_lr_ratio, "Final learning rate / peak")->capture_default_str();
  c->add_option("--warmup", o.warmup_steps, "Warmup steps")->capture_default_str();
  c->add_option("--weight-decay", o.weight_decay, "AdamW weight decay")->capture_default_str();
  c->add_option("--clip", o.grad_clip, "Gradient clipping max norm (0 = off)")->capture_default_str();
  c->add_flag("--bf16", o.bf16, "bf16 compute for the dense linear layers (f32 master weights and experts)");
  c->add_option("--seed", o.seed, "Seed of init, data order and router jitter")->capture_default_str();
  c->add_option("--log-every", o.log_every, "Progress line every N steps")->capture_default_str();
  c->add_option("--eval-every", o.eval_every, "Validation loss every N steps (0 = at the end)")->capture_default_str();
  c->add_option("--eval-batches", o.eval_batches, "Validation batches per evaluation")->capture_default_str();
  c->add_option("--checkpoint-every", o.checkpoint_every, "Checkpoint every N steps (0 = at the end)")
      ->capture_default_str();
  c->add_option("--time-limit", a->time_limit_min, "Stop with a checkpoint after this many minutes (0 = none)");
  c->add_option("--halt-after", o.halt_after, "Stop with a checkpoint after N steps of this invocation");
  c->add_option("--threads", a->threads, "Threads (default: all cores, or MOE_NUM_THREADS)");
  c->add_flag("--quiet", o.quiet, "No progress lines");
  c->add_option("--fault-nan-step", o.fault_nan_step, "Testing: poison the gradient of this step with NaN")
      ->group("Testing");
  c->callback([&reg, a] {
    if (a->opt.steps == 0 && a->resume.empty()) a->opt.steps = train::TrainOptions{}.steps;
    reg.action = [a] { return run_train(*a); };
  });
}

}  // namespace moe::cli
