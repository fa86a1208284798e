#include "moe/infer/evaluate.h"

#include <algorithm>

#include "moe/core/error.h"

namespace moe::infer {

EvalResult evaluate_tokens(const model::Transformer& m, const std::vector<int32_t>& toks, int64_t S,
                           int64_t batch) {
  const int64_t V = m.config().vocab_size;
  MOE_CHECK(toks.size() >= 2, "eval: need at least 2 tokens, got ", toks.size());
  for (size_t i = 0; i < toks.size(); ++i)
    MOE_CHECK(toks[i] >= 0 && toks[i] < V, "eval: token ", i, " = ", toks[i],
              " is outside the vocabulary [0, ", V, ")");
  MOE_CHECK(S >= 1 && S <= m.config().max_position_embeddings, "eval: seq_len ", S,
            " must be in [1, the model's context ", m.config().max_position_embeddings, "]");
  MOE_CHECK(batch >= 1, "eval: batch must be >= 1, got ", batch);
  const int64_t n = static_cast<int64_t>(toks.size());
  EvalResult res;
  std::vector<int32_t> in, tgt;
  int64_t pos = 0;
  while (pos + 1 < n) {
    // Up to `batch` full windows, or one shorter final window.
    const int64_t full = (n - 1 - pos) / S;
    const int64_t nb = std::min(batch, full), len = nb > 0 ? S : n - 1 - pos, rows = nb > 0 ? nb : 1;
    in.assign(static_cast<size_t>(rows * len), 0), tgt.assign(static_cast<size_t>(rows * len), 0);
    for (int64_t b = 0; b < rows; ++b)
      for (int64_t s = 0; s < len; ++s) {
        in[b * len + s] = toks[pos + b * len + s];
        tgt[b * len + s] = toks[pos + b * len + s + 1];
      }
    const model::StepResult r = m.evaluate(in.data(), tgt.data(), rows, len);
    res.loss_sum += r.loss_sum, res.tokens += r.count;
    res.positions += rows * len;
    res.routed_per_layer.resize(r.stats.size(), 0);
    for (size_t l = 0; l < r.stats.size(); ++l) {
      const MoEStats& st = r.stats[l];
      res.skipped += st.skipped;
      for (int64_t c : st.routed_per_expert) res.routed += c, res.routed_per_layer[l] += c;
    }
    pos += rows * len;
  }
  return res;
}

}  // namespace moe::infer
