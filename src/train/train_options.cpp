// TrainOptions <-> JSON (train_options.json of a run directory) and the default model.
#include <nlohmann/json.hpp>

#include "moe/core/error.h"
#include "moe/train/trainer.h"

namespace moe::train {

using json = nlohmann::json;

model::ModelConfig default_model_config() {
  model::ModelConfig c;
  c.arch = model::Arch::Qwen3Moe;
  c.vocab_size = 4096;
  c.hidden_size = 256;
  c.num_hidden_layers = 4;
  c.num_attention_heads = 8;
  c.num_key_value_heads = 4;
  c.head_dim = 32;
  c.intermediate_size = 1024;  // dense layers, if any are configured
  c.moe_intermediate_size = 256;
  c.num_experts = 8;
  c.num_experts_per_tok = 2;
  c.norm_topk_prob = true;
  c.rope_theta = 10000.0;
  c.rms_norm_eps = 1e-6;
  c.max_position_embeddings = 1024;
  c.tie_word_embeddings = false;
  c.router_aux_loss_coef = 0.01;
  c.router_z_loss_coef = 0.001;
  c.initializer_range = 0.02;
  return c;
}

std::string to_json(const TrainOptions& o) {
  json j = {{"run_dir", o.run_dir},
            {"data", o.data},
            {"init_from", o.init_from},
            {"teacher", o.teacher},
            {"kd_weight", o.kd_weight},
            {"temperature", o.temperature},
            {"model", json::parse(model::to_json(o.model))},
            {"vocab_size", o.vocab_size},
            {"seq_len", o.seq_len},
            {"batch_size", o.batch_size},
            {"grad_accum", o.grad_accum},
            {"steps", o.steps},
            {"lr", o.lr},
            {"min_lr_ratio", o.min_lr_ratio},
            {"warmup_steps", o.warmup_steps},
            {"weight_decay", o.weight_decay},
            {"beta1", o.beta1},
            {"beta2", o.beta2},
            {"grad_clip", o.grad_clip},
            {"bf16", o.bf16},
            {"seed", o.seed},
            {"log_every", o.log_every},
            {"eval_every", o.eval_every},
            {"eval_batches", o.eval_batches},
            {"checkpoint_every", o.checkpoint_every}};
  return j.dump(2);
}

namespace {
template <typename V>
void get(const json& j, const char* key, V& out) {
  auto it = j.find(key);
  MOE_CHECK(it != j.end(), "train options: missing key '", key, "'");
  try {
    out = it->get<V>();
  } catch (const json::exception&) {
    throw Error(cat("train options: key '", key, "': wrong type (", it->type_name(), ")"));
  }
}
}  // namespace

TrainOptions train_options_from_json(const std::string& text) {
  json j;
  try {
    j = json::parse(text);
  } catch (const json::exception& e) {  // a syntax error, or a number out of range (1e400)
    throw Error(cat("train options: invalid JSON: ", e.what()));
  }
  MOE_CHECK(j.is_object() && j.contains("model") && j["model"].is_object(),
            "train options: expected an object with a 'model' object");
  TrainOptions o;
  get(j, "run_dir", o.run_dir);
  get(j, "data", o.data);
  get(j, "init_from", o.init_from);
  if (j.contains("teacher")) {  // runs saved before distillation existed have none
    get(j, "teacher", o.teacher);
    get(j, "kd_weight", o.kd_weight);
    get(j, "temperature", o.temperature);
  }
  o.model = model::model_config_from_json(j["model"].dump());
  get(j, "vocab_size", o.vocab_size);
  get(j, "seq_len", o.seq_len);
  get(j, "batch_size", o.batch_size);
  get(j, "grad_accum", o.grad_accum);
  get(j, "steps", o.steps);
  get(j, "lr", o.lr);
  get(j, "min_lr_ratio", o.min_lr_ratio);
  get(j, "warmup_steps", o.warmup_steps);
  get(j, "weight_decay", o.weight_decay);
  get(j, "beta1", o.beta1);
  get(j, "beta2", o.beta2);
  get(j, "grad_clip", o.grad_clip);
  if (j.contains("bf16")) get(j, "bf16", o.bf16);
  get(j, "seed", o.seed);
  get(j, "log_every", o.log_every);
  get(j, "eval_every", o.eval_every);
  get(j, "eval_batches", o.eval_batches);
  get(j, "checkpoint_every", o.checkpoint_every);
  return o;
}

}  // namespace moe::train
