// Next-token sampling from logits: greedy (temperature 0), temperature, top-k and nucleus (top-p).
// Deterministic: draw i of a seed uses the counter-based RNG's value i, so the same seed and logits
// give the same tokens on any machine and thread count.
#pragma once

#include <cstdint>
#include <vector>

namespace moe::infer {

struct SamplingOptions {
  double temperature = 1.0;  // 0 = greedy (argmax; ties to the lowest id)
  double top_p = 1.0;        // keep the smallest set of most likely tokens whose mass reaches top_p
  int64_t top_k = 0;         // keep the k most likely tokens first; 0 = all
  uint64_t seed = 0;
  // Penalties on tokens already seen (apply_penalties; all off by default):
  double repetition_penalty = 1.0;  // > 0; tokens of the prompt or the output: logit / p if > 0, else logit * p
  double frequency_penalty = 0.0;   // subtracted once per occurrence in the output
  double presence_penalty = 0.0;    // subtracted once from every token present in the output
  bool has_penalties() const { return repetition_penalty != 1.0 || frequency_penalty != 0.0 || presence_penalty != 0.0; }
  void validate() const;     // throws moe::Error naming the bad option
};

// Applies the penalties of `opt` to logits (V) in place, given the prompt and the tokens generated
// so far (the rules of Hugging Face's repetition penalty and OpenAI's frequency/presence penalties).
void apply_penalties(float* logits, int64_t V, const SamplingOptions& opt, const std::vector<int32_t>& prompt,
                     const std::vector<int32_t>& output);

// Picks a token id in [0, V) from logits (V). `draw` indexes the random stream (one per token).
// NaN logits are an error; -inf logits are never picked (unless every logit is -inf: an error).
int32_t sample_token(const float* logits, int64_t V, const SamplingOptions& opt, uint64_t draw);

}  // namespace moe::infer
