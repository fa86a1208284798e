#include "moe/infer/compare.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "moe/core/error.h"

namespace moe::infer {

namespace {

// log_softmax of row x (V) into out, in double; returns the argmax (lowest index on ties).
int64_t log_softmax(const double* x, int64_t V, double* out) {
  int64_t arg = 0;
  for (int64_t v = 1; v < V; ++v)
    if (x[v] > x[arg]) arg = v;
  const double mx = x[arg];
  double z = 0;
  for (int64_t v = 0; v < V; ++v) z += std::exp(x[v] - mx);
  const double lse = mx + std::log(z);
  for (int64_t v = 0; v < V; ++v) out[v] = x[v] - lse;
  return arg;
}

}  // namespace

CompareAccumulator::CompareAccumulator(int64_t vocab) : V_(vocab) {
  MOE_CHECK(vocab >= 1, "compare: vocabulary size must be >= 1, got ", vocab);
}

void CompareAccumulator::add(const double* base, const double* model, const int32_t* targets, int64_t n) {
  std::vector<double> lb(static_cast<size_t>(V_)), lm(static_cast<size_t>(V_));
  for (int64_t t = 0; t < n; ++t) {
    const double* b = base + t * V_;
    const double* m = model + t * V_;
    for (int64_t v = 0; v < V_; ++v)
      MOE_CHECK(std::isfinite(b[v]) && std::isfinite(m[v]), "compare: non-finite logit at row ", rows_ + t,
                ", token ", v, " (base ", b[v], ", model ", m[v], ")");
    const int64_t ab = log_softmax(b, V_, lb.data()), am = log_softmax(m, V_, lm.data());
    double kl = 0;
    for (int64_t v = 0; v < V_; ++v) kl += std::exp(lb[v]) * (lb[v] - lm[v]);
    kl_sum_ += kl;
    kl_max_ = rows_ + t == 0 ? kl : std::max(kl_max_, kl);
    agree_ += ab == am ? 1 : 0;
    const int32_t y = targets[t];
    if (y >= 0) {
      MOE_CHECK(y < V_, "compare: target ", y, " at row ", rows_ + t, " is outside the vocabulary [0, ", V_,
                ")");
      ce_ -= lm[y], ce_base_ -= lb[y], ++counted_;
    }
  }
  rows_ += n;
}

CompareResult CompareAccumulator::result() const {
  MOE_CHECK(rows_ > 0, "compare: no positions compared");
  CompareResult r;
  r.tokens = rows_;
  const double n = static_cast<double>(rows_);
  r.loss = counted_ > 0 ? ce_ / static_cast<double>(counted_) : 0.0;
  r.base_loss = counted_ > 0 ? ce_base_ / static_cast<double>(counted_) : 0.0;
  r.kl_mean = kl_sum_ / n;
  r.kl_max = kl_max_;
  r.top1_agreement = static_cast<double>(agree_) / n;
  return r;
}

CompareResult compare_models(const model::Transformer& base, const model::Transformer& m,
                             const std::vector<int32_t>& toks, int64_t S, int64_t batch) {
  const int64_t V = m.config().vocab_size;
  MOE_CHECK(base.config().vocab_size == V, "compare: the base model's vocabulary has ",
            base.config().vocab_size, " tokens, the model's ", V);
  MOE_CHECK(toks.size() >= 2, "compare: need at least 2 tokens, got ", toks.size());
  MOE_CHECK(S >= 1 && S <= m.config().max_position_embeddings && S <= base.config().max_position_embeddings,
            "compare: seq_len ", S, " must be in [1, the context of both models]");
  MOE_CHECK(batch >= 1, "compare: batch must be >= 1, got ", batch);
  for (size_t i = 0; i < toks.size(); ++i)
    MOE_CHECK(toks[i] >= 0 && toks[i] < V, "compare: token ", i, " = ", toks[i],
              " is outside the vocabulary [0, ", V, ")");
  CompareAccumulator acc(V);
  const int64_t n = static_cast<int64_t>(toks.size());
  std::vector<int32_t> tgt;
  int64_t pos = 0;
  while (pos + 1 < n) {
    // Up to `batch` full windows, or one shorter final window; inputs toks[pos .. pos + rows·len).
    const int64_t full = (n - 1 - pos) / S;
    const int64_t nb = std::min(batch, full), len = nb > 0 ? S : n - 1 - pos, rows = nb > 0 ? nb : 1;
    tgt.assign(toks.begin() + pos + 1, toks.begin() + pos + 1 + rows * len);
    const Tensor lb = base.logits(toks.data() + pos, rows, len).to(DType::F64);  // (rows·len, V)
    const Tensor lm = m.logits(toks.data() + pos, rows, len).to(DType::F64);
    acc.add(lb.data<double>(), lm.data<double>(), tgt.data(), rows * len);
    pos += rows * len;
  }
  return acc.result();
}

}  // namespace moe::infer
