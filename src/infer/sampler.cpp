#include "moe/infer/sampler.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "moe/core/error.h"
#include "moe/core/rng.h"

namespace moe::infer {

void SamplingOptions::validate() const {
  MOE_CHECK(std::isfinite(temperature) && temperature >= 0, "sampling: temperature must be >= 0, got ",
            temperature);
  MOE_CHECK(std::isfinite(top_p) && top_p > 0 && top_p <= 1, "sampling: top_p must be in (0, 1], got ",
            top_p);
  MOE_CHECK(top_k >= 0, "sampling: top_k must be >= 0, got ", top_k);
  MOE_CHECK(std::isfinite(repetition_penalty) && repetition_penalty > 0,
            "sampling: repetition_penalty must be > 0, got ", repetition_penalty);
  MOE_CHECK(std::isfinite(frequency_penalty) && frequency_penalty >= -2 && frequency_penalty <= 2,
            "sampling: frequency_penalty must be in [-2, 2], got ", frequency_penalty);
  MOE_CHECK(std::isfinite(presence_penalty) && presence_penalty >= -2 && presence_penalty <= 2,
            "sampling: presence_penalty must be in [-2, 2], got ", presence_penalty);
}

std::vector<float> apply_penalties(const float* logits, int64_t V, const SamplingOptions& opt,
                                   const TokenHistory& h) {
  opt.validate();
  std::vector<float> out(logits, logits + V);
  auto check = [&](int32_t t, const char* where) {
    MOE_CHECK(t >= 0 && t < V, "sampling: ", where, " token id ", t, " is outside the vocabulary [0, ", V,
              ")");
  };
  if (opt.repetition_penalty != 1.0) {
    std::vector<uint8_t> seen(static_cast<size_t>(V), 0);
    for (int64_t i = 0; i < h.n_prompt; ++i) check(h.prompt[i], "prompt"), seen[h.prompt[i]] = 1;
    for (int64_t i = 0; i < h.n_output; ++i) check(h.output[i], "output"), seen[h.output[i]] = 1;
    const double p = opt.repetition_penalty;
    for (int64_t t = 0; t < V; ++t)
      if (seen[t]) out[t] = static_cast<float>(out[t] > 0 ? out[t] / p : out[t] * p);
  }
  if (opt.frequency_penalty != 0.0 || opt.presence_penalty != 0.0) {
    std::vector<int64_t> count(static_cast<size_t>(V), 0);
    for (int64_t i = 0; i < h.n_output; ++i) check(h.output[i], "output"), ++count[h.output[i]];
    for (int64_t t = 0; t < V; ++t)
      if (count[t] > 0)
        out[t] = static_cast<float>(out[t] - opt.frequency_penalty * static_cast<double>(count[t]) -
                                    opt.presence_penalty);
  }
  return out;
}

int32_t sample_token(const float* logits, int64_t V, const SamplingOptions& opt, uint64_t draw,
                     const TokenHistory& history) {
  if (!opt.has_penalties()) return sample_token(logits, V, opt, draw);
  const std::vector<float> pen = apply_penalties(logits, V, opt, history);
  return sample_token(pen.data(), V, opt, draw);
}

int32_t sample_token(const float* logits, int64_t V, const SamplingOptions& opt, uint64_t draw) {
  opt.validate();
  MOE_CHECK(V > 0, "sampling: empty vocabulary");
  int64_t best = -1;
  for (int64_t i = 0; i < V; ++i) {
    MOE_CHECK(!std::isnan(logits[i]), "sampling: logit ", i, " is NaN");
    if (logits[i] != -INFINITY && (best < 0 || logits[i] > logits[best])) best = i;
  }
  MOE_CHECK(best >= 0, "sampling: every logit is -inf");
  if (opt.temperature == 0) return static_cast<int32_t>(best);

  // Candidates sorted by logit (descending; ties by id), cut by top-k.
  std::vector<int32_t> idx;
  idx.reserve(static_cast<size_t>(V));
  for (int64_t i = 0; i < V; ++i)
    if (logits[i] != -INFINITY) idx.push_back(static_cast<int32_t>(i));
  std::stable_sort(idx.begin(), idx.end(), [&](int32_t a, int32_t b) { return logits[a] > logits[b]; });
  if (opt.top_k > 0 && static_cast<int64_t>(idx.size()) > opt.top_k)
    idx.resize(static_cast<size_t>(opt.top_k));
  // Softmax at temperature T over the candidates, in double.
  std::vector<double> p(idx.size());
  const double mx = logits[idx[0]];
  double z = 0;
  for (size_t j = 0; j < idx.size(); ++j) z += p[j] = std::exp((logits[idx[j]] - mx) / opt.temperature);
  // Nucleus: the shortest prefix whose mass reaches top_p.
  size_t keep = idx.size();
  if (opt.top_p < 1) {
    double c = 0;
    for (size_t j = 0; j < idx.size(); ++j) {
      c += p[j] / z;
      if (c >= opt.top_p) {
        keep = j + 1;
        break;
      }
    }
  }
  const double mass = std::accumulate(p.begin(), p.begin() + static_cast<long>(keep), 0.0);
  const double u = Rng(opt.seed).uniform(draw) * mass;
  double c = 0;
  for (size_t j = 0; j < keep; ++j) {
    c += p[j];
    if (u < c) return idx[j];
  }
  return idx[keep - 1];
}

}  // namespace moe::infer
