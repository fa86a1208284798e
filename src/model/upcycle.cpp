#include "moe/model/upcycle.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "moe/core/error.h"
#include "moe/model/transformer.h"

namespace moe::model {

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

json read_json(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  MOE_CHECK(f.good(), "cannot open '", p.string(), "'");
  try {
    return json::parse(f);
  } catch (const json::exception& e) {
    throw Error(cat(p.string(), ": invalid JSON: ", e.what()));
  }
}

// The MoE config of the upcycled model, and the source's dense FFN width.
ModelConfig target_config(const json& src, const UpcycleOptions& o, int64_t& dense_width) {
  MOE_CHECK(src.contains("model_type") && src["model_type"].is_string(), "config.json: missing 'model_type'");
  const std::string type = src["model_type"];
  ModelConfig c;
  if (type == "llama" || type == "mistral" || type == "qwen3") {
    for (const char* k : {"rope_scaling", "sliding_window"})
      MOE_CHECK(!src.contains(k) || src[k].is_null() || (src[k].is_boolean() && !src[k].get<bool>()),
                "upcycle: ", type, " with '", k, "' set is not supported");
    for (const char* k : {"attention_bias", "mlp_bias"})
      MOE_CHECK(!src.contains(k) || !src[k].get<bool>(), "upcycle: ", type, " with ", k,
                " = true is not supported");
    json j = src;
    j["model_type"] = type == "qwen3" ? "qwen3_moe" : "mixtral";
    MOE_CHECK(src.contains("intermediate_size"), "config.json: missing 'intermediate_size'");
    dense_width = src["intermediate_size"].get<int64_t>();
    MOE_CHECK(dense_width % o.split == 0, "upcycle: intermediate_size ", dense_width,
              " is not divisible by split ", o.split);
    j["num_experts_per_tok"] = o.top_k * o.split;
    if (type == "qwen3") {
      j["num_experts"] = o.n_experts * o.split;
      j["moe_intermediate_size"] = dense_width / o.split;
      j["norm_topk_prob"] = true;
      j["mlp_only_layers"] = o.keep_dense;
      j["decoder_sparse_step"] = 1;
    } else {
      MOE_CHECK(o.keep_dense.empty(),
                "upcycle: mixtral has MoE in every layer; --keep-dense needs a qwen source");
      j["num_local_experts"] = o.n_experts * o.split;
      j["intermediate_size"] = dense_width / o.split;
    }
    c = model_config_from_json(j.dump());
  } else if (type == "qwen2_moe" || type == "qwen3_moe") {
    c = model_config_from_json(src.dump());
    dense_width = c.intermediate_size;
    bool any_dense = false, any_moe = false;
    for (int64_t l = 0; l < c.num_hidden_layers; ++l) (c.is_moe_layer(l) ? any_moe : any_dense) = true;
    MOE_CHECK(any_dense, "upcycle: the ", type, " checkpoint has no dense layer to convert");
    MOE_CHECK(dense_width % o.split == 0, "upcycle: intermediate_size ", dense_width,
              " is not divisible by split ", o.split);
    if (any_moe) {
      MOE_CHECK(c.num_experts == o.n_experts * o.split && c.moe_intermediate_size == dense_width / o.split &&
                    c.num_experts_per_tok == o.top_k * o.split,
                "upcycle: the checkpoint already has MoE layers with ", c.num_experts, " experts of width ",
                c.moe_intermediate_size, " (top-", c.num_experts_per_tok, "); the new layers would have ",
                o.n_experts * o.split, " of width ", dense_width / o.split, " (top-", o.top_k * o.split, ")");
    }
    c.num_experts = o.n_experts * o.split;
    c.moe_intermediate_size = dense_width / o.split;
    c.num_experts_per_tok = o.top_k * o.split;
    c.norm_topk_prob = true;
    c.mlp_only_layers = o.keep_dense;
    c.decoder_sparse_step = 1;
    c.validate();
  } else {
    throw Error(cat("upcycle: unsupported source model_type '", type,
                    "' (supported: llama, mistral, qwen3, and qwen2_moe / qwen3_moe with dense layers)"));
  }
  return c;
}

}  // namespace

UpcycleResult upcycle(const std::string& src_dir, const std::string& dst_dir, const UpcycleOptions& o) {
  MOE_CHECK(o.n_experts >= 1 && o.top_k >= 1 && o.top_k <= o.n_experts,
            "upcycle: need 1 <= top_k <= n_experts, got ", "top_k ", o.top_k, ", n_experts ", o.n_experts);
  MOE_CHECK(o.split >= 1, "upcycle: split must be >= 1, got ", o.split);
  MOE_CHECK(fs::absolute(src_dir) != fs::absolute(dst_dir),
            "upcycle: the output must differ from the source");
  const json src_cfg = read_json(fs::path(src_dir) / "config.json");
  int64_t F = 0;
  UpcycleResult res;
  res.config = target_config(src_cfg, o, F);
  const ModelConfig& c = res.config;
  const std::map<std::string, Tensor> src = load_hf_tensors(src_dir);

  Transformer m(c);
  m.init_params(o.seed);  // routers (and anything the source lacks would stay random: checked below)
  std::map<std::string, Tensor> dst = m.hf_state_dict();
  std::set<std::string> used;
  auto source = [&](const std::string& name, const Shape& shape) -> const Tensor& {
    auto it = src.find(name);
    MOE_CHECK(it != src.end(), "upcycle: the source has no tensor '", name, "'");
    MOE_CHECK(it->second.shape() == shape, "upcycle: source tensor '", name, "': expected shape ",
              shape_str(shape), ", got ", shape_str(it->second.shape()));
    used.insert(name);
    return it->second;
  };
  const int64_t d = c.hidden_size, Fe = F / o.split;
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    const std::string pre = cat("model.layers.", l, ".");
    const bool was_dense = src.count(pre + "mlp.gate_proj.weight") != 0;
    if (!was_dense || !c.is_moe_layer(l)) continue;
    ++res.converted_layers;
    const Tensor gate = source(pre + "mlp.gate_proj.weight", {F, d}).to(DType::F32);
    const Tensor up = source(pre + "mlp.up_proj.weight", {F, d}).to(DType::F32);
    const Tensor down = source(pre + "mlp.down_proj.weight", {d, F}).to(DType::F32);
    const bool mixtral = c.arch == Arch::Mixtral;
    const std::string mp = pre + (mixtral ? "block_sparse_moe" : "mlp");
    for (int64_t e = 0; e < c.num_experts; ++e) {
      const int64_t g = e % o.split;  // slice of the FFN width
      const std::string ep = cat(mp, ".experts.", e, ".");
      Tensor eg = gate.slice(0, g * Fe, (g + 1) * Fe).contiguous();
      Tensor eu = up.slice(0, g * Fe, (g + 1) * Fe).contiguous();
      Tensor ed = down.slice(1, g * Fe, (g + 1) * Fe).contiguous();
      if (o.split > 1) {
        float* p = ed.data<float>();
        for (int64_t i = 0; i < ed.numel(); ++i) p[i] *= static_cast<float>(o.split);
      }
      dst[ep + (mixtral ? "w1.weight" : "gate_proj.weight")] = eg;
      dst[ep + (mixtral ? "w3.weight" : "up_proj.weight")] = eu;
      dst[ep + (mixtral ? "w2.weight" : "down_proj.weight")] = ed;
    }
    for (const char* k : {".shared_expert.gate_proj.weight", ".shared_expert.up_proj.weight",
                          ".shared_expert.down_proj.weight", ".shared_expert_gate.weight"})
      if (dst.count(mp + k)) dst[mp + k].fill(0.0);
  }
  // Everything else is copied by name; routers of converted layers keep their fresh init.
  for (auto& [name, t] : dst) {
    if (used.count(name) || name.find(".experts.") != std::string::npos ||
        name.find("shared_expert") != std::string::npos)
      continue;
    if (src.count(name)) {
      t = source(name, t.shape()).to(DType::F32);
      continue;
    }
    const bool fresh_router = name.size() > 12 && name.compare(name.size() - 12, 12, ".gate.weight") == 0;
    MOE_CHECK(fresh_router, "upcycle: the source has no tensor '", name, "'");
  }
  // Routed experts of layers that were MoE already come from the source as they are.
  for (auto& [name, t] : dst)
    if (!used.count(name) && src.count(name) &&
        (name.find(".experts.") != std::string::npos || name.find("shared_expert") != std::string::npos))
      t = source(name, t.shape()).to(DType::F32);
  for (const auto& [name, t] : src) {
    if (used.count(name)) continue;
    const bool tied_head = name == "lm_head.weight" && c.tie_word_embeddings;
    MOE_CHECK(tied_head, "upcycle: source tensor '", name, "' has no place in the ", arch_name(c.arch),
              " model");
  }
  m.load_hf_state_dict(dst);
  save_pretrained(m, dst_dir);
  const fs::path tok = fs::path(src_dir) / "tokenizer.json";
  if (fs::exists(tok))
    fs::copy_file(tok, fs::path(dst_dir) / "tokenizer.json", fs::copy_options::overwrite_existing);
  return res;
}

}  // namespace moe::model
