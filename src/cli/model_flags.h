// Model flags shared by `moe train` and `moe bench train` (--arch, --layers, --hidden, --experts,
// router and balancing options, ...) and the model config they describe: the default model of
// `moe train` (train::default_model_config) with each given flag applied.
#pragma once

#include <CLI/CLI.hpp>
#include <cstdint>
#include <string>
#include <vector>

#include "moe/model/model_config.h"

namespace moe::cli {

struct ModelFlags {
  std::string arch = "qwen3_moe";
  std::string model_config;  // a config.json to start from
  int64_t layers = 0, hidden = 0, heads = 0, kv_heads = 0, head_dim = 0, experts = 0, top_k = 0,
          expert_width = 0;
  int64_t shared_width = -1, dense_width = 0;
  std::vector<int64_t> dense_layers;
  bool tie = false;
  double aux_coef = -1, z_coef = -1;
  std::string routing, score;
  double bias_update_rate = 0, capacity_factor = 0;
  int n_groups = 1, topk_groups = 1;
};

void add_model_flags(CLI::App* c, ModelFlags& f);
// Throws moe::Error on an invalid combination; max_position_embeddings is raised to seq_len.
model::ModelConfig build_model(const ModelFlags& f, int64_t seq_len);

}  // namespace moe::cli
