// Next-token sampling from logits: greedy (temperature 0), temperature, top-k and nucleus (top-p),
// after optional penalties on tokens already seen:
//   repetition_penalty p (Hugging Face): for every distinct token of prompt + output,
//                                        logit > 0 ? logit / p : logit · p
//   frequency_penalty f, presence_penalty r (OpenAI), over the output tokens only:
//                                        logit −= f · count(token) + r · [count(token) > 0]
// (repetition first, then frequency/presence, then temperature and the cuts).
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
  double repetition_penalty = 1.0;  // > 0; 1 = off
  double frequency_penalty = 0.0;   // in [-2, 2]; 0 = off
  double presence_penalty = 0.0;    // in [-2, 2]; 0 = off
  bool has_penalties() const {
    return repetition_penalty != 1.0 || frequency_penalty != 0.0 || presence_penalty != 0.0;
  }
  void validate() const;  // throws moe::Error naming the bad option
};

// Picks a token id in [0, V) from logits (V). `draw` indexes the random stream (one per token).
// NaN logits are an error; -inf logits are never picked (unless every logit is -inf: an error).
int32_t sample_token(const float* logits, int64_t V, const SamplingOptions& opt, uint64_t draw);

// The tokens the penalties look at (ids outside [0, V) are an error).
struct TokenHistory {
  const int32_t* prompt = nullptr;
  int64_t n_prompt = 0;
  const int32_t* output = nullptr;  // tokens generated so far
  int64_t n_output = 0;
};
// As above, with the penalties applied to a copy of the logits first.
int32_t sample_token(const float* logits, int64_t V, const SamplingOptions& opt, uint64_t draw,
                     const TokenHistory& history);
// The penalised logits (V) themselves, for tests and tools.
std::vector<float> apply_penalties(const float* logits, int64_t V, const SamplingOptions& opt,
                                   const TokenHistory& history);

}  // namespace moe::infer
