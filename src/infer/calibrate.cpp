#include "moe/infer/calibrate.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>

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

void save_expert_usage(const ExpertUsage& u, const std::string& path) {
  nlohmann::json layers = nlohmann::json::array();
  for (const LayerUsage& l : u.layers)
    layers.push_back({{"layer", l.layer}, {"count", l.count}, {"weight", l.weight}});
  const nlohmann::json j = {{"tokens", u.tokens}, {"layers", layers}};
  const std::string tmp = path + ".tmp";
  {
    std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
    MOE_CHECK(f.good(), "cannot write '", tmp, "'");
    f << j.dump(1) << "\n";
    f.close();
    MOE_CHECK(f.good(), "error writing '", tmp, "'");
  }
  MOE_CHECK(std::rename(tmp.c_str(), path.c_str()) == 0, "cannot rename '", tmp, "' to '", path, "'");
}

ExpertUsage load_expert_usage(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  MOE_CHECK(f.good(), "cannot open expert usage file '", path, "'");
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(f);
  } catch (const nlohmann::json::exception& e) {
    throw Error(cat(path, ": invalid JSON: ", e.what()));
  }
  ExpertUsage u;
  try {
    MOE_CHECK(j.is_object() && j.contains("tokens") && j.contains("layers") && j["layers"].is_array(), path,
              ": expected {\"tokens\": N, \"layers\": [...]}");
    u.tokens = j["tokens"].get<int64_t>();
    MOE_CHECK(u.tokens >= 0, path, ": 'tokens' must be >= 0, got ", u.tokens);
    for (size_t i = 0; i < j["layers"].size(); ++i) {
      const nlohmann::json& l = j["layers"][i];
      MOE_CHECK(l.is_object() && l.contains("layer") && l.contains("count") && l.contains("weight"), path,
                ": layers[", i, "] needs 'layer', 'count' and 'weight'");
      LayerUsage lu;
      lu.layer = l["layer"].get<int64_t>();
      lu.count = l["count"].get<std::vector<int64_t>>();
      lu.weight = l["weight"].get<std::vector<double>>();
      MOE_CHECK(lu.layer >= 0, path, ": layers[", i, "].layer must be >= 0, got ", lu.layer);
      MOE_CHECK(!lu.count.empty() && lu.count.size() == lu.weight.size(), path, ": layers[", i,
                "]: 'count' and 'weight' must be non-empty and of equal length, got ", lu.count.size(),
                " and ", lu.weight.size());
      for (size_t e = 0; e < lu.count.size(); ++e)
        MOE_CHECK(lu.count[e] >= 0 && lu.weight[e] >= 0 && std::isfinite(lu.weight[e]), path, ": layers[", i,
                  "] expert ", e, ": count and weight must be >= 0 and finite");
      MOE_CHECK(u.layers.empty() || lu.layer > u.layers.back().layer, path,
                ": layers must be in increasing order");
      u.layers.push_back(std::move(lu));
    }
  } catch (const nlohmann::json::exception& e) {
    throw Error(cat(path, ": ", e.what()));
  }
  return u;
}

}  // namespace moe::infer
