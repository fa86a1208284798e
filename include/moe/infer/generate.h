// Autoregressive generation of one sequence with a KV cache.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "moe/infer/sampler.h"
#include "moe/model/transformer.h"

namespace moe::infer {

struct GenerateOptions {
  int64_t max_new_tokens = 64;
  SamplingOptions sampling;
  int32_t eos_id = -1;  // stop after producing it (it is included in the result); -1 = never
};

struct GenerateResult {
  std::vector<int32_t> tokens;  // the new tokens only
  std::string finish_reason;    // "eos", "length" (max_new_tokens or the model's context), "stopped"
  double prefill_s = 0, decode_s = 0;
};

// Feeds `prompt` (non-empty) in one pass, then samples up to max_new_tokens tokens, one forward
// pass each. on_token (may be empty) sees each new token as it is made; returning false stops.
// The context is capped by the model's max_position_embeddings.
GenerateResult generate(const model::Transformer& m, const std::vector<int32_t>& prompt,
                        const GenerateOptions& opt, const std::function<bool(int32_t)>& on_token = {});

}  // namespace moe::infer
