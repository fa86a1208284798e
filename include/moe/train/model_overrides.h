// The model of a new training run from size and router overrides (`moe train --layers 2 --hidden 64
// ...`, moe_cpp.train(layers=2, ...)): the default model (default_model_config) or a given
// config.json, with each set field applied.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "moe/model/model_config.h"

namespace moe::train {

// 0 / -1 / empty = keep the base config's value.
struct ModelOverrides {
  std::string arch = "qwen3_moe";
  std::string model_config;       // a config.json to start from
  std::string model_config_json;  // or the text of one (takes precedence over model_config)
  int64_t layers = 0, hidden = 0, heads = 0, kv_heads = 0, head_dim = 0, experts = 0, top_k = 0,
          expert_width = 0;
  int64_t shared_width = -1, dense_width = 0;
  std::vector<int64_t> dense_layers;
  bool tie = false;
  double aux_coef = -1, z_coef = -1;
  std::string routing, score;
  double bias_update_rate = 0, capacity_factor = 0;
  int n_groups = 1, topk_groups = 1;
  double router_top_p = 0, entropy_coef = 0;  // adaptive-k routing (0 = off): top_k is then the most k
  int min_k = 1;
};

// Throws moe::Error on an invalid combination (the messages name the `moe train` flags);
// max_position_embeddings is raised to seq_len.
model::ModelConfig build_model_config(const ModelOverrides& f, int64_t seq_len);

}  // namespace moe::train
