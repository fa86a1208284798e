// Sparse upcycling: a dense checkpoint becomes an MoE one whose experts start as copies of the
// dense FFN, so training continues from the dense model's knowledge.
//
// Sources (a Hugging Face model directory): llama / mistral -> mixtral; qwen3 -> qwen3_moe; and a
// qwen2_moe / qwen3_moe checkpoint of this engine whose dense layers (mlp_only_layers) are turned
// into MoE layers. Attention, norms and embeddings are copied unchanged; each converted layer's
// FFN (gate, up, down of width F) is copied into n_experts experts, or, with split > 1, cut along
// its width into `split` slices of F / split, each copied n_experts times (n_experts · split
// experts, top_k · split per token; the down projection is scaled by split so that picking the
// slices of one copy with equal weights reproduces the FFN). Routers start from
// normal(0, initializer_range); top-k weights are renormalised. With split = 1 the upcycled model
// computes exactly the dense model's function at step 0 (any routing picks identical experts whose
// weights sum to one). A new qwen2_moe MoE layer gets a zero shared expert, so it adds nothing.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "moe/model/model_config.h"

namespace moe::model {

struct UpcycleOptions {
  int64_t n_experts = 8;            // copies of the FFN
  int64_t top_k = 2;                // copies per token
  int64_t split = 1;                // slices per copy (fine-grained experts)
  std::vector<int64_t> keep_dense;  // layers that stay dense (qwen only)
  uint64_t seed = 0;                // router init
};

struct UpcycleResult {
  ModelConfig config;
  int64_t converted_layers = 0;
};

// Reads `src_dir`, writes the MoE checkpoint (config.json, model.safetensors and a copy of
// tokenizer.json when present) to `dst_dir`. Throws moe::Error on an unsupported source, a width
// not divisible by split, or tensors that do not match the source config.
UpcycleResult upcycle(const std::string& src_dir, const std::string& dst_dir, const UpcycleOptions& opt);

}  // namespace moe::model
