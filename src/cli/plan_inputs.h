// Inputs of `moe plan` that come from other layers: the model (a Hugging Face config.json read by the
// project's loader, or a preset of a published model) turned into the sizes the planner needs
// (dist::ModelShape), and measured expert loads from a JSON file or a `moe train` metrics.jsonl.
// Header-only so that tests/cpp/test_plan.cpp checks the same code the tool runs.
#pragma once

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "moe/core/error.h"
#include "moe/dist/plan.h"
#include "moe/model/model_config.h"
#include "moe/train/report.h"

namespace moe::cli {

// config.json of the published models (the keys the loader reads), from their Hugging Face repos.
struct PlanModelPreset {
  const char* name;
  const char* config_json;
};
inline const std::vector<PlanModelPreset>& plan_model_presets() {
  static const std::vector<PlanModelPreset> presets = {
      {"deepseek-v3",  // deepseek-ai/DeepSeek-V3 (the MTP module is not counted)
       R"({"model_type": "deepseek_v3", "vocab_size": 129280, "hidden_size": 7168, "intermediate_size": 18432,
          "moe_intermediate_size": 2048, "num_hidden_layers": 61, "num_attention_heads": 128,
          "num_key_value_heads": 128, "n_shared_experts": 1, "n_routed_experts": 256, "routed_scaling_factor": 2.5,
          "kv_lora_rank": 512, "q_lora_rank": 1536, "qk_rope_head_dim": 64, "v_head_dim": 128,
          "qk_nope_head_dim": 128, "n_group": 8, "topk_group": 4, "num_experts_per_tok": 8,
          "first_k_dense_replace": 3, "norm_topk_prob": true, "max_position_embeddings": 163840,
          "rms_norm_eps": 1e-06, "rope_theta": 10000, "tie_word_embeddings": false,
          "rope_scaling": {"beta_fast": 32, "beta_slow": 1, "factor": 40, "mscale": 1.0, "mscale_all_dim": 1.0,
                           "original_max_position_embeddings": 4096, "type": "yarn"}})"},
      {"mixtral-8x7b",  // mistralai/Mixtral-8x7B-v0.1
       R"({"model_type": "mixtral", "vocab_size": 32000, "hidden_size": 4096, "intermediate_size": 14336,
          "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8, "num_local_experts": 8,
          "num_experts_per_tok": 2, "rope_theta": 1e6, "rms_norm_eps": 1e-5, "max_position_embeddings": 32768,
          "tie_word_embeddings": false})"},
      {"mixtral-8x22b",  // mistralai/Mixtral-8x22B-v0.1
       R"({"model_type": "mixtral", "vocab_size": 32000, "hidden_size": 6144, "intermediate_size": 16384,
          "num_hidden_layers": 56, "num_attention_heads": 48, "num_key_value_heads": 8, "num_local_experts": 8,
          "num_experts_per_tok": 2, "rope_theta": 1e6, "rms_norm_eps": 1e-5, "max_position_embeddings": 65536,
          "tie_word_embeddings": false})"},
      {"qwen3-235b-a22b",  // Qwen/Qwen3-235B-A22B
       R"({"model_type": "qwen3_moe", "vocab_size": 151936, "hidden_size": 4096, "intermediate_size": 12288,
          "moe_intermediate_size": 1536, "num_hidden_layers": 94, "num_attention_heads": 64,
          "num_key_value_heads": 4, "head_dim": 128, "num_experts": 128, "num_experts_per_tok": 8,
          "decoder_sparse_step": 1, "mlp_only_layers": [], "norm_topk_prob": true, "rope_theta": 1e6,
          "rms_norm_eps": 1e-6, "max_position_embeddings": 40960, "tie_word_embeddings": false})"},
      {"olmoe",  // allenai/OLMoE-1B-7B-0924
       R"({"model_type": "olmoe", "vocab_size": 50304, "hidden_size": 2048, "intermediate_size": 1024,
          "num_hidden_layers": 16, "num_attention_heads": 16, "num_key_value_heads": 16, "num_experts": 64,
          "num_experts_per_tok": 8, "norm_topk_prob": false, "rope_theta": 10000, "rms_norm_eps": 1e-5,
          "max_position_embeddings": 4096, "tie_word_embeddings": false})"},
  };
  return presets;
}

// Sizes of a validated config. Activations kept by attention per token (elements): the norm's input
// and output, the projections' outputs (queries, keys, values; the latent vectors and their norms for
// multi-head latent attention) and the attention output that o_proj reads.
inline dist::ModelShape plan_model_shape(const model::ModelConfig& c, const std::string& name) {
  c.validate();
  const MoEConfig moe_cfg = c.moe_layer_config();
  dist::ModelShape s;
  s.name = name;
  s.hidden_size = c.hidden_size;
  s.num_layers = c.num_hidden_layers;
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) s.num_moe_layers += c.is_moe_layer(l) ? 1 : 0;
  s.n_experts = c.num_experts;
  s.top_k = c.num_experts_per_tok;
  s.expert_ffn = c.expert_width();
  s.shared_ffn = moe_cfg.shared_width();
  s.extra_moe_params = moe_cfg.shared_gate ? c.hidden_size : 0;
  s.dense_ffn = c.intermediate_size;
  s.attn_params = c.attention_params();
  s.attn_heads = c.num_attention_heads;
  s.attn_qk_dim = c.qk_head_dim();
  s.attn_v_dim = c.v_head_dim_or_default();
  const int64_t hq = c.num_attention_heads, d = c.hidden_size;
  if (c.mla()) {
    s.attn_act_dim = 2 * d + (c.q_lora_rank > 0 ? 2 * c.q_lora_rank : 0) + hq * s.attn_qk_dim +
                     (2 * c.kv_lora_rank + c.qk_rope_head_dim) + hq * s.attn_qk_dim + 2 * hq * s.attn_v_dim;
  } else {
    const int64_t hd = c.head_dim_or_default();
    s.attn_act_dim = 2 * d + 2 * hq * hd + 2 * c.num_key_value_heads * hd;
  }
  s.vocab_size = c.vocab_size;
  s.tied_embeddings = c.tie_word_embeddings;
  return s;
}

// The config that `spec` names: a preset name, a config.json, or a directory holding one.
inline model::ModelConfig plan_model_config(const std::string& spec) {
  for (const PlanModelPreset& p : plan_model_presets())
    if (spec == p.name) return model::model_config_from_json(p.config_json);
  namespace fs = std::filesystem;
  if (fs::is_directory(spec)) return model::load_model_config((fs::path(spec) / "config.json").string());
  if (fs::is_regular_file(spec)) return model::load_model_config(spec);
  std::string known;
  for (const PlanModelPreset& p : plan_model_presets())
    known += (known.empty() ? "" : ", ") + std::string(p.name);
  throw Error(
      cat("--model '", spec, "' is neither a preset (", known, ") nor a config.json or model directory"));
}
inline dist::ModelShape plan_model(const std::string& spec) {
  return plan_model_shape(plan_model_config(spec), spec);
}

// Measured per-expert loads from `path`: JSON as dist::parse_expert_loads reads it, or else a metrics
// log of `moe train` (include/moe/train/report.h), whose last (up to) 10 logged steps with an
// "expert_load" are averaged per layer and expert.
inline std::vector<std::vector<double>> plan_expert_loads(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  MOE_CHECK(f.good(), "cannot open expert load file '", path, "'");
  std::ostringstream text;
  text << f.rdbuf();
  if (nlohmann::json::accept(text.str())) return dist::parse_expert_loads(text.str(), path);
  const train::RunMetrics m = train::parse_metrics(text.str(), path);
  std::vector<std::vector<double>> mean;
  int used = 0;
  for (auto it = m.steps.rbegin(); it != m.steps.rend() && used < 10; ++it) {
    const std::vector<std::vector<double>>& load = it->expert_load;  // (L, E)
    if (load.empty()) continue;
    if (mean.empty()) {
      mean.assign(load.size(), std::vector<double>(load[0].size(), 0.0));
    }
    MOE_CHECK(load.size() == mean.size(), path, ": step ", it->step, " has loads of ", load.size(),
              " MoE layers, a later step of ", mean.size());
    for (size_t l = 0; l < load.size(); ++l) {
      MOE_CHECK(load[l].size() == mean[l].size(), path, ": step ", it->step, " layer ", l, " has ",
                load[l].size(), " experts, a later step ", mean[l].size());
      for (size_t e = 0; e < load[l].size(); ++e) mean[l][e] += load[l][e];
    }
    ++used;
  }
  MOE_CHECK(used > 0, path, ": no step line with an \"expert_load\"");
  return dist::parse_expert_loads(nlohmann::json(mean).dump(), path);  // checks and normalises
}

}  // namespace moe::cli
