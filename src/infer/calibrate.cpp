#include "moe/infer/calibrate.h"

#include <algorithm>

#include "moe/core/error.h"

namespace moe::infer {

ExpertUsage measure_expert_usage(const model::Transformer& m, const std::vector<int32_t>& tokens,
                                 int64_t seq_len) {
  const model::ModelConfig& c = m.config();
  MOE_CHECK(!tokens.empty(), "expert usage: no calibration tokens");
  MOE_CHECK(seq_len >= 1 && seq_len <= c.max_position_embeddings, "expert usage: seq_len ", seq_len,
            " must be in [1, max_position_embeddings = ", c.max_position_embeddings, "]");
  for (size_t i = 0; i < tokens.size(); ++i)
    MOE_CHECK(tokens[i] >= 0 && tokens[i] < c.vocab_size, "expert usage: token ", i, " = ", tokens[i],
              " is outside the vocabulary [0, ", c.vocab_size, ")");
  ExpertUsage u;
  u.tokens = static_cast<int64_t>(tokens.size());
  const int64_t E = c.num_experts;
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    if (!m.moe_layer(l)) continue;
    LayerUsage lu;
    lu.layer = l;
    lu.count.assign(static_cast<size_t>(E), 0);
    lu.weight.assign(static_cast<size_t>(E), 0.0);
    u.layers.push_back(std::move(lu));
  }
  // Windows of seq_len tokens (the last one shorter), up to kBatch full windows per forward. No
  // targets: only the routing statistics are used.
  constexpr int64_t kBatch = 8;
  const int64_t n = u.tokens;
  std::vector<int32_t> targets;
  for (int64_t pos = 0; pos < n;) {
    const int64_t full = (n - pos) / seq_len;
    const int64_t rows = full > 0 ? std::min(kBatch, full) : 1, len = full > 0 ? seq_len : n - pos;
    targets.assign(static_cast<size_t>(rows * len), -1);
    const model::StepResult r = m.evaluate(tokens.data() + pos, targets.data(), rows, len);
    MOE_CHECK(r.stats.size() == u.layers.size(), "expert usage: the model returned ", r.stats.size(),
              " MoE layer statistics, expected ", u.layers.size());
    for (size_t i = 0; i < r.stats.size(); ++i) {
      const MoEStats& s = r.stats[i];
      LayerUsage& lu = u.layers[i];
      MOE_CHECK(r.moe_layers[i] == lu.layer && static_cast<int64_t>(s.routed_per_expert.size()) == E &&
                    static_cast<int64_t>(s.routed_weight_per_expert.size()) == E,
                "expert usage: unexpected statistics for layer ", r.moe_layers[i]);
      for (int64_t e = 0; e < E; ++e) {
        lu.count[e] += s.routed_per_expert[e];
        lu.weight[e] += s.routed_weight_per_expert[e];
      }
    }
    pos += rows * len;
  }
  return u;
}

}  // namespace moe::infer
