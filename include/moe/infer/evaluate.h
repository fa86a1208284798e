// Cross-entropy of a model on a token sequence, as `moe eval` computes it: the tokens are cut into
// windows of seq_len + 1 tokens that overlap by one, so every token but the first is predicted exactly
// once (the context restarts per window); up to `batch` full windows go in one forward pass, then one
// shorter final window.
#pragma once

#include <cstdint>
#include <vector>

#include "moe/model/transformer.h"

namespace moe::infer {

struct EvalResult {
  double loss_sum = 0;                    // Σ cross-entropy (nats) over the predicted tokens
  int64_t tokens = 0;                     // predicted tokens (tokens.size() - 1)
  int64_t skipped = 0;                    // routed expert assignments skipped by the skip threshold
  int64_t routed = 0;                     // routed expert assignments in all
  int64_t positions = 0;                  // token positions run through the model
  std::vector<int64_t> routed_per_layer;  // routed assignments per MoE layer: mean k = this / positions
  double loss() const { return tokens > 0 ? loss_sum / static_cast<double>(tokens) : 0.0; }
  // Experts per token of MoE layer l, and of all MoE layers together.
  double mean_k(size_t l) const {
    return positions > 0 ? static_cast<double>(routed_per_layer[l]) / static_cast<double>(positions) : 0.0;
  }
  double mean_k() const {
    return positions > 0 && !routed_per_layer.empty()
               ? static_cast<double>(routed) / static_cast<double>(positions) /
                     static_cast<double>(routed_per_layer.size())
               : 0.0;
  }
};

// Throws moe::Error when there are fewer than 2 tokens, an id is outside the vocabulary, seq_len is
// not in [1, max_position_embeddings] or batch < 1.
EvalResult evaluate_tokens(const model::Transformer& m, const std::vector<int32_t>& tokens, int64_t seq_len,
                           int64_t batch);

}  // namespace moe::infer
