// Expert usage files (moe/model/expert_usage.h): save and load.
#include "moe/model/expert_usage.h"

#include <cmath>
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>

#include "moe/core/error.h"

namespace moe::model {

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

}  // namespace moe::model
