// Autoregressive generation of one sequence with a KV cache.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
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

// Generation one token at a time (the loop of generate(), for callers that pull tokens: streaming
// iterators, interactive front ends). The constructor feeds the prompt in one pass (prefill); each
// next() samples one token, running the forward pass of the previous token first, so a caller that
// stops pulling computes nothing more. Holds a reference to the model, which must outlive it.
class Generator {
 public:
  // Throws moe::Error on bad options, an empty prompt or one longer than the model's context.
  Generator(const model::Transformer& m, std::vector<int32_t> prompt, const GenerateOptions& opt);
  // The next new token, or nothing once finished (finish_reason() says why). The token that ends a
  // generation (eos, the last of max_new_tokens) is returned, and done() is true after it.
  std::optional<int32_t> next();
  // Ends the generation with finish_reason "stopped", also right after the token that finished it
  // (as generate()'s on_token returning false does).
  void stop();
  bool done() const { return done_; }
  const std::string& finish_reason() const { return result_.finish_reason; }  // "" while running
  const std::vector<int32_t>& prompt() const { return prompt_; }
  const GenerateResult& result() const { return result_; }  // tokens so far, timings

 private:
  const model::Transformer& m_;
  std::vector<int32_t> prompt_;
  GenerateOptions opt_;
  model::KVCache cache_;
  Tensor logits_;         // (V) of the last position fed
  bool pending_ = false;  // the last token returned is not fed yet
  bool done_ = false;
  GenerateResult result_;
};

// Feeds `prompt` (non-empty) in one pass, then samples up to max_new_tokens tokens, one forward
// pass each. on_token (may be empty) sees each new token as it is made; returning false stops.
// The context is capped by the model's max_position_embeddings.
GenerateResult generate(const model::Transformer& m, const std::vector<int32_t>& prompt,
                        const GenerateOptions& opt, const std::function<bool(int32_t)>& on_token = {});

}  // namespace moe::infer
