// Expert predictors for prefetching: pre-gating and a softmax-regression predictor learned on
// calibration text (moe/infer/expert_predictor.h).
#include "moe/infer/expert_predictor.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <sstream>

#include "moe/core/error.h"
#include "moe/model/safetensors.h"

namespace moe::infer {

namespace {

const float* param_data(const model::Transformer& m, const std::string& name) {
  for (const auto& p : m.parameters())
    if (p.name == name) return p.value.defined() ? p.value.data<float>() : nullptr;
  throw Error(cat("expert predictor: the model has no parameter '", name, "'"));
}

// acc (E) = [x, onehot(chosen), 1] · W for W (d + E + 1, E): the predictor's scores, in double.
void linear_scores(const float* W, int64_t d, int64_t E, const float* x, const int32_t* chosen, int64_t n,
                   double* acc) {
  std::fill(acc, acc + E, 0.0);
  for (int64_t i = 0; i < d; ++i) {
    const double xi = x[i];
    const float* row = W + i * E;
    for (int64_t e = 0; e < E; ++e) acc[e] += xi * row[e];
  }
  for (int64_t j = 0; j < n; ++j) {
    if (chosen[j] < 0 || chosen[j] >= E) continue;
    const float* row = W + (d + chosen[j]) * E;
    for (int64_t e = 0; e < E; ++e) acc[e] += row[e];
  }
  const float* bias = W + (d + E) * E;
  for (int64_t e = 0; e < E; ++e) acc[e] += bias[e];
}

std::string join(const std::vector<int64_t>& v) {
  std::ostringstream s;
  for (size_t i = 0; i < v.size(); ++i) s << (i ? "," : "") << v[i];
  return s.str();
}

// The whole of `s` as a decimal integer, or false.
bool parse_int(const std::string& s, int64_t* out) {
  size_t used = 0;
  try {
    *out = std::stoll(s, &used);
  } catch (...) {
    return false;
  }
  return !s.empty() && used == s.size();
}

std::vector<int64_t> moe_layers(const model::Transformer& m) {
  std::vector<int64_t> out;
  for (int64_t l = 0; l < m.config().num_hidden_layers; ++l)
    if (m.moe_layer(l)) out.push_back(l);
  return out;
}

}  // namespace

void RoutingSamples::append(RoutingSamples&& o, bool new_sequence, bool generated_tokens) {
  const int64_t n0 = tokens(), n1 = o.tokens();
  if (x.empty()) {
    d = o.d, E = o.E, top_k = o.top_k;
    x.resize(o.x.size());
    experts.resize(o.experts.size());
  }
  MOE_CHECK(o.d == d && o.E == E && o.top_k == top_k && o.x.size() == x.size() &&
                o.experts.size() == experts.size(),
            "routing samples: appending samples of another shape");
  if (n1 == 0) return;
  for (size_t l = 0; l < x.size(); ++l) {
    x[l].insert(x[l].end(), o.x[l].begin(), o.x[l].end());
    experts[l].insert(experts[l].end(), o.experts[l].begin(), o.experts[l].end());
  }
  // per-token flags, materialised once any is needed
  auto extend = [&](std::vector<uint8_t>& mine, const std::vector<uint8_t>& theirs, bool all_of_them) {
    mine.resize(static_cast<size_t>(n0), 0);
    if (theirs.empty())
      mine.resize(static_cast<size_t>(n0 + n1), all_of_them ? 1 : 0);
    else
      mine.insert(mine.end(), theirs.begin(), theirs.end());
  };
  const bool had_starts = !seq_start.empty();
  extend(seq_start, o.seq_start, false);
  if (!had_starts && n0 > 0) seq_start[0] = 1;
  if (n0 == 0 || new_sequence) seq_start[static_cast<size_t>(n0)] = 1;
  if (!generated.empty() || !o.generated.empty() || generated_tokens) {
    extend(generated, o.generated, generated_tokens);
    if (generated_tokens) std::fill(generated.begin() + n0, generated.end(), 1);
  }
}

bool RoutingSamples::next_token_sample(int64_t t) const {
  if (!continues(t)) return false;
  if (generated.empty()) return true;
  return generated[static_cast<size_t>(t + 1)] != 0;
}

PreGating::PreGating(const model::Transformer& m, int64_t depth) {
  MOE_CHECK(m.dtype() == DType::F32, "pre-gating: the model must be f32");
  const std::vector<int64_t> layers = moe_layers(m);
  MOE_CHECK(!layers.empty(), "pre-gating: the model has no MoE layer");
  const MoEConfig& c0 = m.moe_layer(layers[0])->config();
  d_ = c0.d_model;
  E_ = c0.n_experts;
  std::vector<const float*> ln;
  for (int64_t l : layers) {
    const MoELayer* layer = m.moe_layer(l);
    Gate g;
    g.w = layer->params().router_w.data<float>();
    const Tensor& b = layer->params().router_bias;
    g.bias = layer->config().router.use_bias && b.defined() ? b.data<float>() : nullptr;
    g.sigmoid = layer->config().router.score == ScoreFn::Sigmoid;
    gates_.push_back(g);
    ln.push_back(param_data(m, cat("model.layers.", l, ".post_attention_layernorm.weight")));
  }
  const int64_t L = static_cast<int64_t>(layers.size());
  ratio_.resize(static_cast<size_t>(L));
  for (int64_t li = 0; li < L; ++li) {
    for (int64_t dl = 1; dl <= depth && li + dl < L; ++dl) {
      std::vector<float> r(static_cast<size_t>(d_), 1.0f);
      for (int64_t i = 0; i < d_; ++i)
        if (std::fabs(ln[li][i]) > 1e-12f) r[i] = ln[li + dl][i] / ln[li][i];
      ratio_[li].push_back(std::move(r));
    }
  }
}

bool PreGating::score(int64_t li, int64_t dl, const float* x, const int32_t*, int64_t, float* out) const {
  if (li < 0 || dl < 1 || li >= static_cast<int64_t>(ratio_.size()) ||
      dl > static_cast<int64_t>(ratio_[li].size()))
    return false;
  const Gate& g = gates_[li + dl];
  const float* r = ratio_[li][dl - 1].data();
  for (int64_t e = 0; e < E_; ++e) {
    const float* w = g.w + e * d_;
    double acc = 0;
    for (int64_t i = 0; i < d_; ++i) acc += static_cast<double>(w[i]) * x[i] * r[i];
    if (g.sigmoid) acc = 1.0 / (1.0 + std::exp(-acc));
    out[e] = static_cast<float>(acc + (g.bias ? g.bias[e] : 0.0));
  }
  return true;
}

bool PreGating::linear_map(int64_t li, int64_t dl, float* W) const {
  if (li < 0 || dl < 1 || li >= static_cast<int64_t>(ratio_.size()) ||
      dl > static_cast<int64_t>(ratio_[li].size()))
    return false;
  const Gate& g = gates_[li + dl];
  const float* r = ratio_[li][dl - 1].data();
  for (int64_t i = 0; i < d_; ++i)
    for (int64_t e = 0; e < E_; ++e) W[i * E_ + e] = g.w[e * d_ + i] * r[i];
  for (int64_t e = 0; e < E_; ++e) W[(d_ + E_) * E_ + e] = g.bias && !g.sigmoid ? g.bias[e] : 0.0f;
  return true;
}

bool ExpertPredictor::score(int64_t li, int64_t dl, const float* x, const int32_t* chosen, int64_t n,
                            float* out) const {
  if (li < 0 || dl < 1 || li >= static_cast<int64_t>(W.size()) || dl > static_cast<int64_t>(W[li].size()) ||
      W[li][dl - 1].empty())
    return false;
  std::vector<double> acc(static_cast<size_t>(E));
  linear_scores(W[li][dl - 1].data(), d, E, x, chosen, n, acc.data());
  for (int64_t e = 0; e < E; ++e) out[e] = static_cast<float>(acc[e]);
  return true;
}

void ExpertPredictor::check_matches(const model::Transformer& m, const std::string& what) const {
  const std::vector<int64_t> ml = moe_layers(m);
  MOE_CHECK(!ml.empty(), what, ": the model has no MoE layer");
  const MoEConfig& c = m.moe_layer(ml[0])->config();
  MOE_CHECK(layers == ml, what, ": fitted for MoE layers [", join(layers), "], the model has [", join(ml),
            "]");
  MOE_CHECK(d == c.d_model && E == c.n_experts && top_k == c.router.top_k, what, ": fitted for d ", d, ", ",
            E, " experts, top-", top_k, "; the model has d ", c.d_model, ", ", c.n_experts, " experts, top-",
            c.router.top_k);
}

ExpertPredictor fit_expert_predictor(const RoutingSamples& s, const std::vector<int64_t>& layers,
                                     int64_t depth, const PredictorFitOptions& opt, const PreGating* init) {
  const int64_t L = static_cast<int64_t>(s.x.size()), d = s.d, E = s.E, k = s.top_k;
  MOE_CHECK(L >= 1 && L == static_cast<int64_t>(s.experts.size()) && L == static_cast<int64_t>(layers.size()),
            "expert predictor: samples of ", L, " layers with ", s.experts.size(), " expert lists for ",
            layers.size(), " MoE layers");
  MOE_CHECK(d >= 1 && E >= 2 && k >= 1 && k <= E, "expert predictor: bad shape d ", d, ", E ", E, ", top-k ",
            k);
  MOE_CHECK(depth >= 1, "expert predictor: depth must be >= 1, got ", depth);
  MOE_CHECK(opt.epochs >= 1 && opt.batch >= 1 && opt.lr > 0 && std::isfinite(opt.lr) && opt.weight_decay >= 0,
            "expert predictor: bad fit options (epochs ", opt.epochs, ", batch ", opt.batch, ", lr ", opt.lr,
            ", weight decay ", opt.weight_decay, ")");
  const int64_t N = s.tokens();
  MOE_CHECK(N >= 1, "expert predictor: no calibration tokens");
  for (int64_t li = 0; li < L; ++li) {
    MOE_CHECK(
        static_cast<int64_t>(s.x[li].size()) == N * d && static_cast<int64_t>(s.experts[li].size()) == N * k,
        "expert predictor: layer ", li, " has ", s.x[li].size() / static_cast<size_t>(d),
        " tokens, layer 0 has ", N);
    for (float v : s.x[li])
      MOE_CHECK(std::isfinite(v), "expert predictor: a router input of MoE layer ", layers[li],
                " is not finite");
  }
  ExpertPredictor p;
  p.d = d;
  p.E = E;
  p.top_k = k;
  p.depth = depth;
  p.layers = layers;
  p.calibration_tokens = N;
  p.W.resize(static_cast<size_t>(L));
  const int64_t P = d + E + 1, B = std::min<int64_t>(opt.batch, N);
  std::vector<double> acc(static_cast<size_t>(E));
  std::vector<float> z(static_cast<size_t>(E));
  std::vector<double> grad(static_cast<size_t>(P * E)), m1(grad.size()), m2(grad.size());
  std::vector<int64_t> rows;  // the source tokens of a pair
  for (int64_t li = 0; li < L; ++li) {
    for (int64_t dl = 1; dl <= depth && li + dl < 2 * L; ++dl) {
      // Softmax regression of the chosen set (each chosen expert 1/n of the target), minibatch Adam
      // from pre-gating's map (or zero), tokens in order: the fit is deterministic.
      const int64_t tl = predicted_layer(li, dl, L), off = predicted_token_offset(li, dl, L);
      rows.clear();
      for (int64_t t = 0; t < N; ++t)
        if (off == 0 || s.next_token_sample(t)) rows.push_back(t);
      std::vector<float> W(static_cast<size_t>(P * E), 0.0f);
      if (rows.empty() || (off > 0 && !opt.next_token)) {  // nothing to fit: left to pre-gating
        p.W[li].emplace_back();
        continue;
      }
      if (init) init->linear_map(li, dl, W.data());
      std::fill(m1.begin(), m1.end(), 0.0);
      std::fill(m2.begin(), m2.end(), 0.0);
      int64_t step = 0;
      const float* X = s.x[li].data();
      const int32_t* C = s.experts[li].data();
      const int32_t* T = s.experts[tl].data() + off * k;  // row t: the target of source token t
      const int64_t R = static_cast<int64_t>(rows.size());
      for (int64_t ep = 0; ep < opt.epochs; ++ep) {
        for (int64_t b0 = 0; b0 < R; b0 += B) {
          const int64_t nb = std::min(B, R - b0);
          std::fill(grad.begin(), grad.end(), 0.0);
          for (int64_t t = 0; t < nb; ++t) {
            const int64_t src = rows[static_cast<size_t>(b0 + t)];
            const float* x = X + src * d;
            const int32_t* c = C + src * k;
            const int32_t* y = T + src * k;
            linear_scores(W.data(), d, E, x, c, k, acc.data());  // the arithmetic of score()
            const double mx = *std::max_element(acc.begin(), acc.end());
            double sum = 0;
            for (int64_t e = 0; e < E; ++e) acc[e] = std::exp(acc[e] - mx), sum += acc[e];
            int64_t nt = 0;
            for (int64_t j = 0; j < k; ++j) nt += y[j] >= 0 && y[j] < E ? 1 : 0;
            // z = probabilities - target (each chosen expert 1/nt); zero when the target chose none
            for (int64_t e = 0; e < E; ++e) z[e] = nt > 0 ? static_cast<float>(acc[e] / sum) : 0.0f;
            if (nt > 0)
              for (int64_t j = 0; j < k; ++j)
                if (y[j] >= 0 && y[j] < E) z[y[j]] -= 1.0f / static_cast<float>(nt);
            // dW += f^T (p - y)
            for (int64_t i = 0; i < d; ++i) {
              const double xi = x[i];
              double* g = &grad[i * E];
              for (int64_t e = 0; e < E; ++e) g[e] += xi * z[e];
            }
            for (int64_t j = 0; j < k; ++j)
              if (c[j] >= 0 && c[j] < E)
                for (int64_t e = 0; e < E; ++e) grad[(d + c[j]) * E + e] += z[e];
            for (int64_t e = 0; e < E; ++e) grad[(d + E) * E + e] += z[e];
          }
          ++step;
          const double b1 = 0.9, b2 = 0.999, c1 = 1 - std::pow(b1, step), c2 = 1 - std::pow(b2, step);
          for (int64_t q = 0; q < P * E; ++q) {
            const double g = grad[q] / static_cast<double>(nb) + opt.weight_decay * W[q];
            m1[q] = b1 * m1[q] + (1 - b1) * g;
            m2[q] = b2 * m2[q] + (1 - b2) * g * g;
            W[q] -= static_cast<float>(opt.lr * (m1[q] / c1) / (std::sqrt(m2[q] / c2) + 1e-8));
          }
        }
      }
      for (float v : W)
        MOE_CHECK(std::isfinite(v), "expert predictor: the fit of MoE layer ", layers[li], " -> ", layers[tl],
                  off ? " of the next token" : "", " diverged (lower the learning rate)");
      p.W[li].push_back(std::move(W));
    }
  }
  return p;
}

std::vector<PredictorRecall> predictor_recall(const ExpertScorer& p, const RoutingSamples& s, int64_t depth,
                                              int64_t k) {
  const int64_t L = static_cast<int64_t>(s.x.size()), d = s.d, E = s.E, tk = s.top_k, N = s.tokens();
  MOE_CHECK(k >= 1 && k <= E, "expert predictor: recall at ", k, " needs 1 <= k <= ", E);
  std::vector<PredictorRecall> out;
  std::vector<float> sc(static_cast<size_t>(E));
  std::vector<int64_t> idx(static_cast<size_t>(E));
  for (int64_t li = 0; li < L; ++li) {
    for (int64_t dl = 1; dl <= depth && li + dl < 2 * L; ++dl) {
      const int64_t tl = predicted_layer(li, dl, L), off = predicted_token_offset(li, dl, L);
      int64_t found = 0, total = 0;
      bool any = true;
      for (int64_t t = 0; t < N; ++t) {
        if (off == 1 && !s.next_token_sample(t)) continue;
        any = p.score(li, dl, &s.x[li][t * d], &s.experts[li][t * tk], tk, sc.data());
        if (!any) break;
        std::iota(idx.begin(), idx.end(), 0);
        std::partial_sort(idx.begin(), idx.begin() + k, idx.end(),
                          [&](int64_t a, int64_t b) { return sc[a] > sc[b] || (sc[a] == sc[b] && a < b); });
        for (int64_t j = 0; j < tk; ++j) {
          const int32_t e = s.experts[tl][(t + off) * tk + j];
          found += std::find(idx.begin(), idx.begin() + k, e) != idx.begin() + k ? 1 : 0;
          ++total;
        }
      }
      if (!any || total == 0) continue;
      out.push_back({li, dl, static_cast<double>(found) / static_cast<double>(total)});
    }
  }
  return out;
}

void save_expert_predictor(const ExpertPredictor& p, const std::string& path) {
  std::map<std::string, Tensor> t;
  const int64_t P = p.d + p.E + 1;
  for (size_t li = 0; li < p.W.size(); ++li)
    for (size_t j = 0; j < p.W[li].size(); ++j) {
      if (p.W[li][j].empty()) continue;  // a pair left to pre-gating
      MOE_CHECK(static_cast<int64_t>(p.W[li][j].size()) == P * p.E, "expert predictor: weights of layer ", li,
                " have ", p.W[li][j].size(), " values, expected ", P * p.E);
      Tensor w = Tensor::empty({P, p.E});
      std::copy(p.W[li][j].begin(), p.W[li][j].end(), w.data<float>());
      t[cat("predictor.", li, ".", j + 1)] = w;
    }
  save_safetensors(path, t,
                   {{"format", "moe-expert-predictor"},
                    {"d", std::to_string(p.d)},
                    {"experts", std::to_string(p.E)},
                    {"top_k", std::to_string(p.top_k)},
                    {"depth", std::to_string(p.depth)},
                    {"moe_layers", join(p.layers)},
                    {"calibration_tokens", std::to_string(p.calibration_tokens)}});
}

ExpertPredictor load_expert_predictor(const std::string& path) {
  const SafetensorsReader r(path);
  const auto& md = r.metadata();
  auto field = [&](const char* key) -> const std::string& {
    auto it = md.find(key);
    MOE_CHECK(it != md.end(), path, ": not an expert predictor (metadata has no '", key, "')");
    return it->second;
  };
  MOE_CHECK(field("format") == "moe-expert-predictor", path, ": metadata format is '", field("format"),
            "', expected 'moe-expert-predictor'");
  auto integer = [&](const char* key, int64_t lo) {
    const std::string& v = field(key);
    int64_t x = 0;
    MOE_CHECK(parse_int(v, &x) && x >= lo, path, ": metadata '", key, "' = '", v,
              "' is not an integer >= ", lo);
    return x;
  };
  ExpertPredictor p;
  p.d = integer("d", 1);
  p.E = integer("experts", 2);
  p.top_k = integer("top_k", 1);
  p.depth = integer("depth", 1);
  p.calibration_tokens = integer("calibration_tokens", 0);
  MOE_CHECK(p.top_k <= p.E, path, ": top_k ", p.top_k, " exceeds experts ", p.E);
  std::stringstream ls(field("moe_layers"));
  std::string item;
  while (std::getline(ls, item, ',')) {
    int64_t v = -1;
    MOE_CHECK(parse_int(item, &v) && v >= 0 && (p.layers.empty() || v > p.layers.back()), path,
              ": metadata moe_layers '", field("moe_layers"), "' is not an increasing list of layer indices");
    p.layers.push_back(v);
  }
  MOE_CHECK(!p.layers.empty(), path, ": metadata moe_layers is empty");
  const int64_t L = static_cast<int64_t>(p.layers.size()), P = p.d + p.E + 1;
  p.W.resize(static_cast<size_t>(L));
  size_t expected = 0;
  for (int64_t li = 0; li < L; ++li)
    for (int64_t dl = 1; dl <= p.depth && li + dl < 2 * L; ++dl) {
      const std::string name = cat("predictor.", li, ".", dl);
      if (!r.contains(name)) {  // a pair left to pre-gating
        p.W[li].emplace_back();
        continue;
      }
      const SafetensorsEntry& en = r.entry(name);
      MOE_CHECK(en.dtype == DType::F32 && (en.shape == Shape{P, p.E}), path, ": tensor '", name, "' is ",
                dtype_name(en.dtype), " ", shape_str(en.shape), ", expected F32 ", shape_str(Shape{P, p.E}));
      const Tensor w = r.load(name);
      std::vector<float> v(w.data<float>(), w.data<float>() + w.numel());
      for (float x : v) MOE_CHECK(std::isfinite(x), path, ": tensor '", name, "' holds a non-finite value");
      p.W[li].push_back(std::move(v));
      ++expected;
    }
  MOE_CHECK(r.names().size() == expected, path, ": holds ", r.names().size(), " tensors, of which ", expected,
            " are pairs (predictor.<li>.<dl>) of ", L, " MoE layers at depth ", p.depth);
  return p;
}

}  // namespace moe::infer
