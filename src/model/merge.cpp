// Expert merging (moe/model/merge.h): similarity on calibration rows, groups around the pruning
// pivots, hidden-unit alignment by linear assignment (model/assignment.h) and the weighted average.
#include "moe/model/merge.h"

#include <algorithm>
#include <cmath>
#include <map>

#include "model/assignment.h"
#include "model/svd.h"
#include "moe/core/error.h"
#include "moe/kernels/ops.h"
#include "moe/model/prune.h"
#include "moe/moe/router.h"

namespace moe::model {

namespace {

using kernels::Backend;

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

template <typename T>
std::vector<T> values_as(const Tensor& t) {
  const Tensor c = t.contiguous();
  const DType want = std::is_same_v<T, float> ? DType::F32 : DType::F64;
  const Tensor v = c.dtype() == want ? c : c.to(want);
  const T* p = v.data<T>();
  return std::vector<T>(p, p + v.numel());
}

// The routed experts' weights of a layer, checked: (E, F, d), (E, F, d), (E, d, F).
void check_experts(const MoELayer& layer) {
  const MoEConfig& mc = layer.config();
  const MoEParams& p = layer.params();
  MOE_CHECK(layer.first_expert() == 0 && layer.local_experts() == mc.n_experts && !layer.external_experts(),
            "merge: the layer must hold all its ", mc.n_experts,
            " experts (no expert parallelism or offloading)");
  MOE_CHECK(mc.activation == kernels::Activation::SwiGLU && p.w_gate.defined() && p.w_up.defined() &&
                p.w_down.defined(),
            "merge: the experts must be SwiGLU FFNs with w_gate, w_up and w_down");
}

// cos(a, b) from a Gram matrix (E, E); 0 when either norm is 0.
double gram_cos(const std::vector<double>& g, int64_t E, int64_t a, int64_t b) {
  const double den = std::sqrt(g[a * E + a] * g[b * E + b]);
  return den > 0 ? g[a * E + b] / den : 0.0;
}

// Gram matrix (E, E) of the router logit columns over rows X, each row centred over the experts.
std::vector<double> router_gram(const MoELayer& layer, const LayerRows& rows) {
  const int64_t E = layer.config().n_experts, d = rows.d, n = rows.n;
  const std::vector<float> Rw = values_as<float>(layer.params().router_w);  // (E, d)
  std::vector<float> Z(static_cast<size_t>(n * E));                         // (n, E)
  kernels::gemm<float>(Backend::Cpu, {.M = n,
                                      .N = E,
                                      .K = d,
                                      .A = rows.x.data(),
                                      .lda = d,
                                      .B = Rw.data(),
                                      .ldb = d,
                                      .trans_b = true,
                                      .C = Z.data(),
                                      .ldc = E});
  std::vector<double> g(static_cast<size_t>(E * E), 0.0), z(static_cast<size_t>(E));
  for (int64_t t = 0; t < n; ++t) {
    double mean = 0;
    for (int64_t e = 0; e < E; ++e) mean += Z[t * E + e];
    mean /= static_cast<double>(E);
    for (int64_t e = 0; e < E; ++e) z[e] = Z[t * E + e] - mean;
    for (int64_t a = 0; a < E; ++a)
      for (int64_t b = a; b < E; ++b) g[a * E + b] += z[a] * z[b];
  }
  for (int64_t a = 0; a < E; ++a)
    for (int64_t b = 0; b < a; ++b) g[a * E + b] = g[b * E + a];
  return g;
}

// Gram matrix (E, E) of the experts' outputs over rows X: g[a][b] = Σ_t <f_a(x_t), f_b(x_t)>.
// Every expert runs on every row, a chunk of rows at a time (one grouped FFN call per chunk).
std::vector<double> output_gram(const MoELayer& layer, const LayerRows& rows) {
  const MoEConfig& mc = layer.config();
  const int64_t E = mc.n_experts, d = rows.d, F = mc.d_ff, n = rows.n;
  const std::vector<float> Wg = values_as<float>(layer.params().w_gate);  // (E, F, d)
  const std::vector<float> Wu = values_as<float>(layer.params().w_up);    // (E, F, d)
  const std::vector<float> Wd = values_as<float>(layer.params().w_down);  // (E, d, F)
  const int64_t chunk = std::clamp<int64_t>((int64_t{1} << 22) / (E * std::max(d, F)), 1, n);
  std::vector<double> g(static_cast<size_t>(E * E), 0.0);
  std::vector<float> H(static_cast<size_t>(E * chunk * F)), O(static_cast<size_t>(E * chunk * d));
  std::vector<int32_t> offsets(static_cast<size_t>(E + 1)), gather(static_cast<size_t>(E * chunk));
  for (int64_t s = 0; s < n; s += chunk) {
    const int64_t m = std::min(chunk, n - s);  // rows of this chunk; expert e's copies at [e·m, (e+1)·m)
    for (int64_t e = 0; e <= E; ++e) offsets[e] = static_cast<int32_t>(e * m);
    for (int64_t p = 0; p < E * m; ++p) gather[p] = static_cast<int32_t>(s + p % m);
    kernels::grouped_ffn_up<float>(Backend::Cpu, {.act = mc.activation,
                                                  .E = E,
                                                  .F = F,
                                                  .K = d,
                                                  .offsets = offsets.data(),
                                                  .A = rows.x.data(),
                                                  .lda = d,
                                                  .gather = gather.data(),
                                                  .W_gate = Wg.data(),
                                                  .W_up = Wu.data(),
                                                  .H = H.data(),
                                                  .ldh = F});  // (E·m, F)
    kernels::grouped_gemm<float>(Backend::Cpu, {.E = E,
                                                .N = d,
                                                .K = F,
                                                .offsets = offsets.data(),
                                                .A = H.data(),
                                                .lda = F,
                                                .W = Wd.data(),
                                                .C = O.data(),
                                                .ldc = d});  // (E·m, d)
    for (int64_t a = 0; a < E; ++a)
      for (int64_t b = a; b < E; ++b) {
        double acc = 0;
        for (int64_t p = 0; p < m; ++p) {
          const float* oa = O.data() + (a * m + p) * d;
          const float* ob = O.data() + (b * m + p) * d;
          for (int64_t k = 0; k < d; ++k) acc += static_cast<double>(oa[k]) * ob[k];
        }
        g[a * E + b] += acc;
      }
  }
  for (int64_t a = 0; a < E; ++a)
    for (int64_t b = 0; b < a; ++b) g[a * E + b] = g[b * E + a];
  return g;
}

// The refit of merge_experts (MergeOptions::refit_damping): the down projection of merged expert j
// (gate, up (F, d) and the averaged down (d, F), overwritten) fitted to its members' outputs on the
// calibration rows X (n, d) by their original routing.
void refit_down(const MoELayer& ml, const std::vector<double>& Wg, const std::vector<double>& Wu,
                const std::vector<double>& Wd, const LayerRows& rows, const Routing& routing,
                const std::vector<int64_t>& group, const std::vector<double>& gate,
                const std::vector<double>& up, double damping, std::vector<double>& down) {
  const MoEConfig& mc = ml.config();
  const int64_t d = mc.d_model, F = mc.d_ff;
  auto silu = [](double v) { return v / (1.0 + std::exp(-v)); };
  // h = silu(G·x) ⊙ (U·x) of an expert's (F, d) gate and up.
  auto hidden = [&](const double* G, const double* U, const float* x, std::vector<double>& h) {
    h.assign(static_cast<size_t>(F), 0.0);
    for (int64_t u = 0; u < F; ++u) {
      double g = 0, v = 0;
      for (int64_t k = 0; k < d; ++k) g += G[u * d + k] * x[k], v += U[u * d + k] * x[k];
      h[u] = silu(g) * v;
    }
  };
  std::vector<double> H(static_cast<size_t>(F * F), 0.0), YH(static_cast<size_t>(d * F), 0.0);
  std::vector<double> h, he, y(static_cast<size_t>(d));
  const int32_t* ex = routing.expert.data<int32_t>();
  const int32_t* tok = routing.token.data<int32_t>();
  const uint8_t* kept = routing.kept.data<uint8_t>();
  const float* w = routing.weight.data<float>();
  double total = 0;
  for (int64_t a = 0; a < routing.n_assign; ++a) {
    const int64_t e = ex[a];
    if (!kept[a] || std::find(group.begin(), group.end(), e) == group.end() || !(w[a] > 0)) continue;
    const float* x = rows.x.data() + static_cast<int64_t>(tok[a]) * d;
    hidden(gate.data(), up.data(), x, h);
    hidden(Wg.data() + e * F * d, Wu.data() + e * F * d, x, he);
    const double* De = Wd.data() + e * d * F;
    for (int64_t i = 0; i < d; ++i) {
      double v = 0;
      for (int64_t u = 0; u < F; ++u) v += De[i * F + u] * he[u];
      y[i] = v;
    }
    const double wa = w[a];
    total += wa;
    for (int64_t u = 0; u < F; ++u) {
      const double wh = wa * h[u];
      for (int64_t v = 0; v <= u; ++v) H[u * F + v] += wh * h[v];
    }
    for (int64_t i = 0; i < d; ++i)
      for (int64_t u = 0; u < F; ++u) YH[i * F + u] += wa * y[i] * h[u];
  }
  if (total <= 0) return;  // no calibration row reached the group: keep the average
  double mean_diag = 0;
  for (int64_t u = 0; u < F; ++u) mean_diag += H[u * F + u];
  mean_diag /= static_cast<double>(F);
  const double lambda = damping * (mean_diag > 0 ? mean_diag : 1.0);
  for (int64_t u = 0; u < F; ++u) {
    for (int64_t v = 0; v < u; ++v) H[v * F + u] = H[u * F + v];
    H[u * F + u] += lambda;
  }
  // W (H + λI) = YH + λ W̄, row by row: (H + λI) is symmetric, so each row r solves (H + λI) rᵀ = bᵀ.
  std::vector<double> L;
  MOE_CHECK(svd::cholesky(H, F, L), "merge: the refit's normal equations are not positive definite");
  std::vector<double> b(static_cast<size_t>(F)), z(static_cast<size_t>(F));
  for (int64_t i = 0; i < d; ++i) {
    for (int64_t u = 0; u < F; ++u) b[u] = YH[i * F + u] + lambda * down[i * F + u];
    for (int64_t u = 0; u < F; ++u) {  // L z = b
      double v = b[u];
      for (int64_t q = 0; q < u; ++q) v -= L[u * F + q] * z[q];
      z[u] = v / L[u * F + u];
    }
    for (int64_t u = F - 1; u >= 0; --u) {  // Lᵀ r = z
      double v = z[u];
      for (int64_t q = u + 1; q < F; ++q) v -= L[q * F + u] * down[i * F + q];
      down[i * F + u] = v / L[u * F + u];
    }
  }
}

}  // namespace

std::vector<double> expert_similarity(const MoELayer& layer, const LayerRows& rows, double routing_weight) {
  const MoEConfig& mc = layer.config();
  const int64_t E = mc.n_experts;
  check_experts(layer);
  MOE_CHECK(routing_weight >= 0 && routing_weight <= 1, "merge: the routing weight ", routing_weight,
            " must be in [0, 1]");
  MOE_CHECK(rows.n >= 1 && rows.d == mc.d_model && static_cast<int64_t>(rows.x.size()) == rows.n * rows.d,
            "merge: calibration rows of layer ", rows.layer, " are (", rows.n, ", ", rows.d, ") with ",
            rows.x.size(), " values; the layer needs (n >= 1, d = ", mc.d_model, ")");
  const std::vector<double> gr = router_gram(layer, rows), go = output_gram(layer, rows);
  std::vector<double> sim(static_cast<size_t>(E * E));
  for (int64_t a = 0; a < E; ++a)
    for (int64_t b = 0; b < E; ++b)
      sim[a * E + b] =
          a == b ? 1.0
                 : routing_weight * gram_cos(gr, E, a, b) + (1 - routing_weight) * gram_cos(go, E, a, b);
  return sim;
}

MergePlan plan_merge(const Transformer& m, const ExpertUsage& usage, const std::vector<LayerRows>& rows,
                     int64_t keep, const MergeOptions& opt) {
  const ModelConfig& c = m.config();
  const PrunePlan pp = plan_prune(c, usage, keep);  // the pivots, and every check of K and the usage
  MOE_CHECK(rows.size() == pp.layers.size(), "merge: calibration rows for ", rows.size(),
            " layers, the model has ", pp.layers.size(), " MoE layers");
  MergePlan plan;
  plan.config = pp.config;
  plan.groups_reset = pp.groups_reset;
  plan.options = opt;
  const int64_t E = c.num_experts, G = c.moe_layer_config().router.n_groups;
  const bool grouped = G > 1 && !pp.groups_reset;
  const int64_t per_group = E / std::max<int64_t>(G, 1);
  for (size_t i = 0; i < pp.layers.size(); ++i) {
    const LayerPrune& lp = pp.layers[i];
    const MoELayer* ml = m.moe_layer(lp.layer);
    MOE_CHECK(ml, "merge: layer ", lp.layer, " is not an MoE layer");
    MOE_CHECK(rows[i].layer == lp.layer, "merge: calibration rows entry ", i, " is layer ", rows[i].layer,
              ", expected MoE layer ", lp.layer);
    const std::vector<double> sim = expert_similarity(*ml, rows[i], opt.routing_weight);
    const std::vector<double>& w = usage.layers[i].weight;
    LayerMerge lm;
    lm.layer = lp.layer;
    lm.weight_share = lp.weight_share;
    lm.similarity.assign(static_cast<size_t>(E), 1.0);
    for (int64_t p : lp.kept) lm.groups.push_back({p});
    for (int64_t e = 0; e < E; ++e) {
      if (std::binary_search(lp.kept.begin(), lp.kept.end(), e)) continue;
      int64_t best = -1;
      for (size_t j = 0; j < lp.kept.size(); ++j) {
        const int64_t p = lp.kept[j];
        if (grouped && p / per_group != e / per_group) continue;
        if (best < 0 || sim[e * E + p] > sim[e * E + lp.kept[best]]) best = static_cast<int64_t>(j);
      }
      MOE_CHECK(best >= 0, "merge: layer ", lp.layer, ": expert ", e, " has no pivot in its group");
      lm.groups[best].push_back(e);
      lm.similarity[e] = sim[e * E + lp.kept[best]];
    }
    const bool by_sim = opt.shares == MergeShares::UsageSimilarity;
    for (const std::vector<int64_t>& g : lm.groups) {
      std::vector<double> s;  // unnormalised shares
      double total = 0;
      for (int64_t e : g) {
        s.push_back(w[e] * (by_sim ? std::max(lm.similarity[e], 0.0) : 1.0));
        total += s.back();
      }
      for (double& x : s) x = total > 0 ? x / total : 1.0 / static_cast<double>(g.size());
      lm.shares.push_back(std::move(s));
    }
    plan.layers.push_back(std::move(lm));
  }
  return plan;
}

std::vector<int64_t> align_units(const MoELayer& layer, int64_t ref, int64_t other) {
  check_experts(layer);
  const MoEConfig& mc = layer.config();
  const int64_t E = mc.n_experts, d = mc.d_model, F = mc.d_ff;
  MOE_CHECK(ref >= 0 && ref < E && other >= 0 && other < E, "merge: experts ", ref, " and ", other,
            " must be in [0, ", E, ")");
  const MoEParams& p = layer.params();
  auto expert = [](const Tensor& t, int64_t e) { return values_as<double>(t.slice(0, e, e + 1)); };
  const std::vector<double> gr = expert(p.w_gate, ref), go = expert(p.w_gate, other);  // (F, d)
  const std::vector<double> ur = expert(p.w_up, ref), uo = expert(p.w_up, other);      // (F, d)
  const std::vector<double> dr = expert(p.w_down, ref), dn = expert(p.w_down, other);  // (d, F)
  // S (F, F): S[i][j] = <gate_ref[i], gate_other[j]> + <up_ref[i], up_other[j]> + <down_ref[:, i],
  // down_other[:, j]>
  std::vector<double> S(static_cast<size_t>(F * F));
  kernels::gemm<double>(Backend::Cpu, {.M = F,
                                       .N = F,
                                       .K = d,
                                       .A = gr.data(),
                                       .lda = d,
                                       .B = go.data(),
                                       .ldb = d,
                                       .trans_b = true,
                                       .C = S.data(),
                                       .ldc = F});
  kernels::gemm<double>(Backend::Cpu, {.M = F,
                                       .N = F,
                                       .K = d,
                                       .A = ur.data(),
                                       .lda = d,
                                       .B = uo.data(),
                                       .ldb = d,
                                       .trans_b = true,
                                       .C = S.data(),
                                       .ldc = F,
                                       .beta = 1});
  kernels::gemm<double>(Backend::Cpu, {.M = F,
                                       .N = F,
                                       .K = d,
                                       .A = dr.data(),
                                       .lda = F,
                                       .trans_a = true,
                                       .B = dn.data(),
                                       .ldb = F,
                                       .C = S.data(),
                                       .ldc = F,
                                       .beta = 1});
  for (double& s : S) s = -s;  // the solver minimises
  return solve_assignment(S, F);
}

Transformer merge_experts(const Transformer& m, const MergePlan& plan, const std::vector<LayerRows>* rows) {
  const bool refit = plan.options.refit_damping > 0;
  MOE_CHECK(!refit || rows, "merge: the down-projection refit needs the calibration rows");
  const ModelConfig& c = m.config();
  const ModelConfig& pc = plan.config;
  const int64_t K = pc.num_experts;
  MOE_CHECK(pc.num_hidden_layers == c.num_hidden_layers && K < c.num_experts,
            "merge: the plan does not match the model");
  Transformer out(pc, m.dtype());
  std::map<std::string, Tensor> sd;
  std::map<std::string, const Tensor*> src;  // m's parameters by name (stacked experts included)
  for (const NamedParam& p : m.parameters()) src[p.name] = &p.value;
  for (const NamedParam& p : out.parameters()) {
    if (p.name.find(".experts.w_") != std::string::npos) continue;
    auto it = src.find(p.name);
    MOE_CHECK(it != src.end(), "merge: the model has no tensor '", p.name, "'");
    sd[p.name] = *it->second;
  }
  const char* suffix[3];
  expert_suffixes(c, suffix);
  size_t li = 0;
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    const MoELayer* ml = m.moe_layer(l);
    if (!ml) continue;
    MOE_CHECK(li < plan.layers.size() && plan.layers[li].layer == l && out.moe_layer(l),
              "merge: the plan has no entry for MoE layer ", l);
    const LayerMerge& lm = plan.layers[li++];
    check_experts(*ml);
    MOE_CHECK(static_cast<int64_t>(lm.groups.size()) == K && lm.shares.size() == lm.groups.size(),
              "merge: layer ", l, " has ", lm.groups.size(), " groups, the plan's config ", K, " experts");
    const MoEConfig& mc = ml->config();
    const int64_t E = mc.n_experts, d = mc.d_model, F = mc.d_ff;
    const MoEParams& p = ml->params();
    const std::vector<double> Wg = values_as<double>(p.w_gate), Wu = values_as<double>(p.w_up);  // (E, F, d)
    const std::vector<double> Wd = values_as<double>(p.w_down);                                  // (E, d, F)
    const std::vector<double> Rw = values_as<double>(p.router_w);                                // (E, d)
    const bool bias = mc.router.use_bias;
    const std::vector<double> Rb = bias ? values_as<double>(p.router_bias) : std::vector<double>();  // (E)
    std::vector<double> router(static_cast<size_t>(K * d), 0.0), rbias(static_cast<size_t>(K), 0.0);
    const std::string pre = moe_prefix(c, l);
    // The refit's rows and their routing by the original router.
    const LayerRows* lr = nullptr;
    Routing routing;
    if (refit) {
      MOE_CHECK(mc.activation == kernels::Activation::SwiGLU,
                "merge: the down-projection refit needs SwiGLU experts");
      MOE_CHECK(li - 1 < rows->size() && (*rows)[li - 1].layer == l && (*rows)[li - 1].d == d,
                "merge: no calibration rows for MoE layer ", l);
      lr = &(*rows)[li - 1];
      Tensor logits = Tensor::zeros({lr->n, E}, DType::F32);  // X · router_wᵀ
      float* z = logits.data<float>();
      for (int64_t t = 0; t < lr->n; ++t)
        for (int64_t e = 0; e < E; ++e) {
          double v = 0;
          for (int64_t k = 0; k < d; ++k) v += static_cast<double>(lr->x[t * d + k]) * Rw[e * d + k];
          z[t * E + e] = static_cast<float>(v);
        }
      routing = route(mc, logits, p.router_bias.to(DType::F32), nullptr, kernels::Backend::Cpu);
    }
    for (int64_t j = 0; j < K; ++j) {
      const std::vector<int64_t>& g = lm.groups[j];
      const std::vector<double>& s = lm.shares[j];
      MOE_CHECK(!g.empty() && s.size() == g.size(), "merge: layer ", l, " group ", j, " is empty");
      std::vector<double> gate(static_cast<size_t>(F * d), 0.0), up(gate.size(), 0.0), down(gate.size(), 0.0);
      for (size_t i = 0; i < g.size(); ++i) {
        const int64_t e = g[i];
        MOE_CHECK(e >= 0 && e < E, "merge: layer ", l, ": expert ", e, " out of range");
        std::vector<int64_t> perm(static_cast<size_t>(F));
        for (int64_t u = 0; u < F; ++u) perm[u] = u;
        if (i > 0 && plan.options.align == MergeAlign::Weights) perm = align_units(*ml, g[0], e);
        const double* ge = Wg.data() + e * F * d;
        const double* ue = Wu.data() + e * F * d;
        const double* de = Wd.data() + e * d * F;
        for (int64_t u = 0; u < F; ++u) {
          const int64_t v = perm[u];  // the member's unit that lands on the pivot's unit u
          for (int64_t k = 0; k < d; ++k) {
            gate[u * d + k] += s[i] * ge[v * d + k];
            up[u * d + k] += s[i] * ue[v * d + k];
            down[k * F + u] += s[i] * de[k * F + v];
          }
        }
      }
      if (refit && lr->n > 0)
        refit_down(*ml, Wg, Wu, Wd, *lr, routing, g, gate, up, plan.options.refit_damping, down);
      const std::string ex = cat(pre, ".experts.", j, ".");
      sd[ex + suffix[0]] = Tensor::from(gate, {F, d}, m.dtype());
      sd[ex + suffix[1]] = Tensor::from(up, {F, d}, m.dtype());
      sd[ex + suffix[2]] = Tensor::from(down, {d, F}, m.dtype());
      const bool average = plan.options.router == MergeRouter::Average;
      for (size_t i = 0; i < g.size(); ++i) {
        const double share = average ? s[i] : (i == 0 ? 1.0 : 0.0);
        if (share == 0) continue;
        for (int64_t k = 0; k < d; ++k) router[j * d + k] += share * Rw[g[i] * d + k];
        if (bias) rbias[j] += share * Rb[g[i]];
      }
    }
    sd[pre + ".gate.weight"] = Tensor::from(router, {K, d}, m.dtype());
    if (bias) sd[pre + ".gate.e_score_correction_bias"] = Tensor::from(rbias, {K}, m.dtype());
  }
  out.load_hf_state_dict(sd);
  return out;
}

}  // namespace moe::model
