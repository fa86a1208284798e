// Model flags shared by `moe train` and `moe bench train` (--arch, --layers, --hidden, --experts,
// router and balancing options, ...) and the model config they describe: the default model of
// `moe train` (train::default_model_config) with each given flag applied.
#pragma once

#include <CLI/CLI.hpp>
#include "moe/model/model_config.h"
#include "moe/train/model_overrides.h"

namespace moe::cli {

using ModelFlags = train::ModelOverrides;  // the flags fill it (model_config is --model-config)

void add_model_flags(CLI::App* c, ModelFlags& f);
// Throws moe::Error on an invalid combination; max_position_embeddings is raised to seq_len.
inline model::ModelConfig build_model(const ModelFlags& f, int64_t seq_len) {
  return train::build_model_config(f, seq_len);
}

}  // namespace moe::cli
