// Comparison of two models' next-token distributions on the same tokens (`moe eval --compare`):
// perplexity of each, KL(base || model) per predicted position, and top-1 agreement.
// docs/PRUNING.md states the formulas.
#pragma once

#include <cstdint>
#include <vector>

#include "moe/model/transformer.h"

namespace moe::infer {

struct CompareResult {
  int64_t tokens = 0;              // predicted positions n
  double loss = 0, base_loss = 0;  // mean cross-entropy (nats) of the model and of the base
  double kl_mean = 0;              // (1/n) Σ_t KL_t, KL_t = Σ_v p_base(v) (log p_base(v) - log p_model(v))
  double kl_max = 0;               // max_t KL_t
  double top1_agreement = 0;       // share of positions where both argmaxes (lowest index on ties) agree
};

// Sums over logit rows; rows of both models must come from the same input positions.
class CompareAccumulator {
 public:
  explicit CompareAccumulator(int64_t vocab);
  // base, model: (n, V) logits; targets (n): the next token of each row (< 0: not counted in the
  // cross-entropies, still compared).
  void add(const double* base, const double* model, const int32_t* targets, int64_t n);
  CompareResult result() const;  // throws when no row was added

 private:
  int64_t V_;
  int64_t rows_ = 0, counted_ = 0, agree_ = 0;
  double ce_ = 0, ce_base_ = 0, kl_sum_ = 0, kl_max_ = 0;
};

// Runs both models over `tokens` in windows of seq_len + 1 tokens overlapping by one (every token
// but the first predicted once, the context restarting per window), `batch` windows per forward,
// as `moe eval` does. Both models need the same vocabulary size; ids must be inside it.
CompareResult compare_models(const model::Transformer& base, const model::Transformer& m,
                             const std::vector<int32_t>& tokens, int64_t seq_len, int64_t batch);

}  // namespace moe::infer
