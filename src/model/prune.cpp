#include "moe/model/prune.h"

#include <algorithm>
#include <cstring>
#include <functional>
#include <map>
#include <numeric>

#include "moe/core/error.h"

namespace moe::model {

namespace {

std::string moe_prefix(const ModelConfig& c, int64_t l) {
  return cat("model.layers.", l, ".", c.arch == Arch::Mixtral ? "block_sparse_moe" : "mlp");
}

// Hugging Face suffixes of an expert's gate, up and down projections (after "<prefix>.experts.<e>.").
void expert_suffixes(const ModelConfig& c, const char* out[3]) {
  const bool mixtral = c.arch == Arch::Mixtral;
  out[0] = mixtral ? "w1.weight" : "gate_proj.weight";
  out[1] = mixtral ? "w3.weight" : "up_proj.weight";
  out[2] = mixtral ? "w2.weight" : "down_proj.weight";
}

// Rows idx of t (E, ...) as a new contiguous tensor (K, ...) of t's dtype.
Tensor select_rows(const Tensor& t, const std::vector<int64_t>& idx) {
  const Tensor src = t.contiguous();
  Shape s = src.shape();
  const size_t row = src.nbytes() / static_cast<size_t>(s[0]);  // bytes per row
  s[0] = static_cast<int64_t>(idx.size());
  Tensor out = Tensor::empty(s, src.dtype(), t.name());
  auto* dst = static_cast<unsigned char*>(out.raw());
  const auto* from = static_cast<const unsigned char*>(src.raw());
  for (size_t j = 0; j < idx.size(); ++j)
    std::memcpy(dst + j * row, from + static_cast<size_t>(idx[j]) * row, row);
  return out;
}

// The `n` best experts among `cand` by (weight desc, count desc, index asc).
std::vector<int64_t> best_of(const LayerUsage& u, std::vector<int64_t> cand, int64_t n) {
  std::stable_sort(cand.begin(), cand.end(), [&u](int64_t a, int64_t b) {
    if (u.weight[a] != u.weight[b]) return u.weight[a] > u.weight[b];
    if (u.count[a] != u.count[b]) return u.count[a] > u.count[b];
    return a < b;
  });
  cand.resize(static_cast<size_t>(n));
  return cand;
}

}  // namespace

PrunePlan plan_prune(const ModelConfig& c, const ExpertUsage& usage, int64_t keep) {
  const MoEConfig mc = c.moe_layer_config();
  const int64_t E = c.num_experts, k = c.num_experts_per_tok;
  MOE_CHECK(mc.router.routing == RouterType::TokenChoice, "prune: the router is '",
            router_type_name(mc.router.routing), "'; pruning needs token_choice routing");
  MOE_CHECK(keep >= k, "prune: --keep ", keep, " is below the experts per token (top-k = ", k, ")");
  MOE_CHECK(keep < E, "prune: --keep ", keep, " must be below the model's ", E, " experts");
  std::vector<int64_t> moe_layers;
  for (int64_t l = 0; l < c.num_hidden_layers; ++l)
    if (c.is_moe_layer(l)) moe_layers.push_back(l);
  MOE_CHECK(usage.layers.size() == moe_layers.size(), "prune: the usage has ", usage.layers.size(),
            " layers, the model ", moe_layers.size(), " MoE layers");

  PrunePlan plan;
  plan.config = c;
  plan.config.num_experts = keep;
  // Group-limited routing stays when each group can keep the same number of experts.
  const int64_t G = mc.router.n_groups, TG = mc.router.topk_groups;
  const bool grouped = G > 1 && keep % G == 0 && keep / G >= 2 && k <= TG * (keep / G);
  if (G > 1 && !grouped) {
    plan.groups_reset = true;
    if (c.arch == Arch::DeepseekV3) plan.config.n_group = 1, plan.config.topk_group = 1;
    plan.config.router_extra.n_groups = 1, plan.config.router_extra.topk_groups = 1;
  }
  plan.config.validate();

  for (size_t i = 0; i < moe_layers.size(); ++i) {
    const LayerUsage& u = usage.layers[i];
    MOE_CHECK(u.layer == moe_layers[i], "prune: usage entry ", i, " is layer ", u.layer,
              ", expected MoE layer ", moe_layers[i]);
    MOE_CHECK(static_cast<int64_t>(u.count.size()) == E && static_cast<int64_t>(u.weight.size()) == E,
              "prune: usage of layer ", u.layer, " has ", u.count.size(), " experts, the model ", E);
    LayerPrune lp;
    lp.layer = u.layer;
    if (grouped) {
      const int64_t per = E / G;
      for (int64_t g = 0; g < G; ++g) {
        std::vector<int64_t> cand(static_cast<size_t>(per));
        std::iota(cand.begin(), cand.end(), g * per);
        for (int64_t e : best_of(u, cand, keep / G)) lp.kept.push_back(e);
      }
    } else {
      std::vector<int64_t> cand(static_cast<size_t>(E));
      std::iota(cand.begin(), cand.end(), 0);
      lp.kept = best_of(u, cand, keep);
    }
    std::sort(lp.kept.begin(), lp.kept.end());
    double w_all = 0, w_kept = 0, n_all = 0, n_kept = 0;
    for (int64_t e = 0; e < E; ++e) w_all += u.weight[e], n_all += static_cast<double>(u.count[e]);
    for (int64_t e : lp.kept) w_kept += u.weight[e], n_kept += static_cast<double>(u.count[e]);
    lp.weight_share = w_all > 0 ? w_kept / w_all : 0.0;
    lp.count_share = n_all > 0 ? n_kept / n_all : 0.0;
    plan.layers.push_back(std::move(lp));
  }
  return plan;
}

Transformer prune_experts(const Transformer& m, const PrunePlan& plan) {
  const ModelConfig& c = m.config();
  const ModelConfig& pc = plan.config;
  MOE_CHECK(pc.num_hidden_layers == c.num_hidden_layers && pc.num_experts < c.num_experts,
            "prune: the plan does not match the model");
  Transformer out(pc, m.dtype());
  std::map<std::string, const Tensor*> src;  // m's parameters by name (stacked experts included)
  for (const NamedParam& p : m.parameters()) src[p.name] = &p.value;
  const char* suffix[3];
  expert_suffixes(c, suffix);
  const char* stacked[3] = {".experts.w_gate", ".experts.w_up", ".experts.w_down"};

  // name -> tensor of the pruned model, built on demand while loading.
  std::map<std::string, std::function<Tensor()>> make;
  for (const NamedParam& p : out.parameters()) {
    if (p.name.find(".experts.w_") != std::string::npos) continue;
    auto it = src.find(p.name);
    MOE_CHECK(it != src.end(), "prune: the model has no tensor '", p.name, "'");
    const Tensor* t = it->second;
    make[p.name] = [t] { return *t; };
  }
  size_t li = 0;
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    const MoELayer* ml = m.moe_layer(l);
    if (!ml) continue;
    MOE_CHECK(li < plan.layers.size() && plan.layers[li].layer == l && out.moe_layer(l),
              "prune: the plan has no entry for MoE layer ", l);
    const std::vector<int64_t>& kept = plan.layers[li++].kept;
    const std::vector<int64_t>* kp = &kept;
    MOE_CHECK(static_cast<int64_t>(kept.size()) == pc.num_experts, "prune: layer ", l, " keeps ", kept.size(),
              " experts, the plan's config ", pc.num_experts);
    for (int64_t e : kept)
      MOE_CHECK(e >= 0 && e < c.num_experts, "prune: layer ", l, ": expert ", e, " out of range");
    const std::string pre = moe_prefix(c, l);
    make[pre + ".gate.weight"] = [ml, kp] { return select_rows(ml->params().router_w, *kp); };
    if (ml->config().router.use_bias)
      make[pre + ".gate.e_score_correction_bias"] = [ml, kp] {
        return select_rows(ml->params().router_bias, *kp);
      };
    const Tensor* W[3] = {&ml->params().w_gate, &ml->params().w_up, &ml->params().w_down};
    for (int i = 0; i < 3; ++i) {
      MOE_CHECK(W[i]->defined(), "prune: layer ", l, " has no ", pre, stacked[i]);
      for (size_t j = 0; j < kept.size(); ++j) {
        const Tensor* w = W[i];
        const int64_t e = kept[j];
        make[cat(pre, ".experts.", j, ".", suffix[i])] = [w, e] {
          return w->slice(0, e, e + 1).reshape({w->size(1), w->size(2)});
        };
      }
    }
  }
  TensorSource ts;
  for (const auto& [name, f] : make) ts.names.push_back(name);
  ts.load = [&make](const std::string& name) { return make.at(name)(); };
  out.load_hf_state_dict(ts);
  return out;
}

}  // namespace moe::model
