// Inputs of the EP × DP planner (include/moe/dist/plan.h): the all-to-all byte counts of one
// dispatch, cluster presets, the model and training shapes with their checks, routing distributions
// and measured per-expert loads. The cost model itself is in plan.cpp.
#include <algorithm>
#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <numeric>
#include <sstream>
#include <string>
#include <vector>

#include "moe/core/error.h"
#include "moe/dist/plan.h"

namespace moe::dist {

using json = nlohmann::json;

// ---- dispatch bytes ------------------------------------------------------------------------------

void DispatchShape::validate() const {
  MOE_CHECK(ep >= 1, "plan: EP size must be >= 1, got ", ep);
  MOE_CHECK(n_experts >= 1, "plan: the number of experts must be >= 1, got ", n_experts);
  MOE_CHECK(n_experts % ep == 0, "plan: EP size ", ep, " does not divide the ", n_experts, " experts");
  MOE_CHECK(hidden >= 1, "plan: hidden size must be >= 1, got ", hidden);
  MOE_CHECK(elem_bytes >= 1, "plan: bytes per element must be >= 1, got ", elem_bytes);
}

int64_t DispatchBytes::total() const { return std::accumulate(sent.begin(), sent.end(), int64_t{0}); }

DispatchBytes dispatch_bytes(const DispatchShape& s, const std::vector<int64_t>& counts) {
  s.validate();
  const int64_t P = s.ep, E = s.n_experts, per_rank = E / P;
  MOE_CHECK(static_cast<int64_t>(counts.size()) == P * E, "plan: dispatch counts must be (ep = ", P,
            ") x (E = ", E, ") = ", P * E, " entries, got ", counts.size());
  const int64_t row = s.hidden * s.elem_bytes;
  DispatchBytes b;
  b.sent.assign(static_cast<size_t>(P), 0);
  b.received.assign(static_cast<size_t>(P), 0);
  for (int64_t src = 0; src < P; ++src) {
    for (int64_t e = 0; e < E; ++e) {
      const int64_t c = counts[static_cast<size_t>(src * E + e)];
      MOE_CHECK(c >= 0, "plan: dispatch count [", src, ", ", e, "] is negative (", c, ")");
      const int64_t dst = e / per_rank;
      if (dst == src) continue;  // the self block stays on the rank
      b.sent[static_cast<size_t>(src)] += c * row;
      b.received[static_cast<size_t>(dst)] += c * row;
    }
  }
  return b;
}

namespace {
// The probabilities of expert_load (E) summed per EP rank (contiguous placement).
std::vector<double> rank_probabilities(const std::vector<double>& expert_load, int64_t ep, const char* what) {
  const double sum = std::accumulate(expert_load.begin(), expert_load.end(), 0.0);
  MOE_CHECK(std::isfinite(sum) && sum > 0, "plan: ", what, " must have a positive finite sum");
  const int64_t E = static_cast<int64_t>(expert_load.size()), per_rank = E / ep;
  std::vector<double> q(static_cast<size_t>(ep), 0.0);
  for (int64_t e = 0; e < E; ++e) {
    MOE_CHECK(std::isfinite(expert_load[e]) && expert_load[e] >= 0, "plan: ", what, "[", e,
              "] must be a finite number >= 0, got ", expert_load[e]);
    q[static_cast<size_t>(e / per_rank)] += expert_load[e] / sum;
  }
  return q;
}
}  // namespace

double ExpectedDispatchBytes::mean_sent() const {
  return sent.empty() ? 0.0
                      : std::accumulate(sent.begin(), sent.end(), 0.0) / static_cast<double>(sent.size());
}

ExpectedDispatchBytes expected_dispatch_bytes(const DispatchShape& s, int64_t tokens, int64_t top_k,
                                              const std::vector<double>& expert_load) {
  s.validate();
  MOE_CHECK(tokens >= 0, "plan: tokens per rank must be >= 0, got ", tokens);
  MOE_CHECK(top_k >= 1 && top_k <= s.n_experts, "plan: top_k must be in [1, E = ", s.n_experts, "], got ",
            top_k);
  MOE_CHECK(static_cast<int64_t>(expert_load.size()) == s.n_experts, "plan: expert load has ",
            expert_load.size(), " entries, expected E = ", s.n_experts);
  const std::vector<double> q = rank_probabilities(expert_load, s.ep, "expert load");
  const double rows = static_cast<double>(tokens) * static_cast<double>(top_k);
  const double row = static_cast<double>(s.hidden * s.elem_bytes);
  ExpectedDispatchBytes b;
  for (double qr : q) {
    b.sent.push_back(rows * (1.0 - qr) * row);
    b.received.push_back(static_cast<double>(s.ep - 1) * rows * qr * row);
  }
  return b;
}

// ---- cluster -------------------------------------------------------------------------------------

void ClusterSpec::validate() const {
  auto positive = [](double v) { return std::isfinite(v) && v > 0; };
  MOE_CHECK(nodes >= 1, "cluster ", name, ": nodes must be >= 1, got ", nodes);
  MOE_CHECK(gpus_per_node >= 1, "cluster ", name, ": GPUs per node must be >= 1, got ", gpus_per_node);
  MOE_CHECK(positive(intra_gbps), "cluster ", name, ": intra-node bandwidth must be > 0 GB/s, got ",
            intra_gbps);
  MOE_CHECK(positive(inter_gbps), "cluster ", name, ": inter-node bandwidth must be > 0 GB/s, got ",
            inter_gbps);
  MOE_CHECK(std::isfinite(intra_latency_us) && intra_latency_us >= 0, "cluster ", name,
            ": intra-node latency must be >= 0 us, got ", intra_latency_us);
  MOE_CHECK(std::isfinite(inter_latency_us) && inter_latency_us >= 0, "cluster ", name,
            ": inter-node latency must be >= 0 us, got ", inter_latency_us);
  MOE_CHECK(positive(peak_tflops), "cluster ", name, ": peak TFLOP/s must be > 0, got ", peak_tflops);
  MOE_CHECK(positive(mfu) && mfu <= 1, "cluster ", name, ": MFU must be in (0, 1], got ", mfu);
  MOE_CHECK(positive(memory_gib), "cluster ", name, ": GPU memory must be > 0 GiB, got ", memory_gib);
  MOE_CHECK(std::isfinite(reserve_gib) && reserve_gib >= 0 && reserve_gib < memory_gib, "cluster ", name,
            ": reserved memory must be in [0, ", memory_gib, ") GiB, got ", reserve_gib);
}

namespace {
struct Preset {
  const char* name;
  double intra_gbps, intra_latency_us, inter_gbps, inter_latency_us, peak_tflops, memory_gib;
};
// Per GPU: NVLink bandwidth each direction, one 400 Gb/s (50 GB/s) NIC per GPU (200 Gb/s for A100
// clusters), dense bf16 peak of the SXM part, memory. Latencies are typical figures, not measured.
constexpr Preset kPresets[] = {
    {"h100-ib", 450, 2, 50, 5, 989, 80},   // NVLink 4: 900 GB/s both directions
    {"h800-ib", 200, 2, 50, 5, 989, 80},   // NVLink of the H800: 400 GB/s both directions
    {"h200-ib", 450, 2, 50, 5, 989, 141},  // H100 compute, 141 GB HBM3e
    {"a100-ib", 300, 2, 25, 5, 312, 80},   // NVLink 3: 600 GB/s both directions; 200 Gb/s HDR
};
}  // namespace

std::vector<std::string> cluster_preset_names() {
  std::vector<std::string> names;
  for (const Preset& p : kPresets) names.emplace_back(p.name);
  return names;
}

ClusterSpec cluster_preset(const std::string& name) {
  for (const Preset& p : kPresets) {
    if (name != p.name) continue;
    ClusterSpec c;
    c.name = p.name;
    c.intra_gbps = p.intra_gbps, c.intra_latency_us = p.intra_latency_us;
    c.inter_gbps = p.inter_gbps, c.inter_latency_us = p.inter_latency_us;
    c.peak_tflops = p.peak_tflops, c.memory_gib = p.memory_gib;
    return c;
  }
  std::string known;
  for (const std::string& n : cluster_preset_names()) known += (known.empty() ? "" : ", ") + n;
  throw Error(cat("unknown cluster preset '", name, "' (known: ", known, ")"));
}

// ---- model and training shapes -------------------------------------------------------------------

int64_t ModelShape::n_params() const {
  const int64_t d = hidden_size;
  const int64_t moe_layer =
      n_experts * expert_params() + n_experts * d + 3 * d * shared_ffn + extra_moe_params;
  const int64_t dense_layer = 3 * d * dense_ffn;
  return vocab_size * d * (tied_embeddings ? 1 : 2) + d + num_layers * (attn_params + 2 * d) +
         num_moe_layers * moe_layer + (num_layers - num_moe_layers) * dense_layer;
}

int64_t ModelShape::n_active_params() const {
  return n_params() - num_moe_layers * (n_experts - top_k) * expert_params();
}

void ModelShape::validate() const {
  const std::string m = "model " + (name.empty() ? std::string("(unnamed)") : name) + ": ";
  MOE_CHECK(hidden_size >= 1, m, "hidden size must be >= 1, got ", hidden_size);
  MOE_CHECK(num_layers >= 1, m, "layers must be >= 1, got ", num_layers);
  MOE_CHECK(num_moe_layers >= 1 && num_moe_layers <= num_layers, m, "MoE layers must be in [1, ", num_layers,
            "], got ", num_moe_layers);
  MOE_CHECK(n_experts >= 1, m, "experts must be >= 1, got ", n_experts);
  MOE_CHECK(top_k >= 1 && top_k <= n_experts, m, "top_k must be in [1, E = ", n_experts, "], got ", top_k);
  MOE_CHECK(expert_ffn >= 1, m, "expert width must be >= 1, got ", expert_ffn);
  MOE_CHECK(shared_ffn >= 0 && extra_moe_params >= 0, m, "shared expert width must be >= 0");
  MOE_CHECK(num_moe_layers == num_layers || dense_ffn >= 1, m, "dense layers need a dense FFN width >= 1");
  MOE_CHECK(attn_params >= 0 && attn_heads >= 1 && attn_qk_dim >= 1 && attn_v_dim >= 1 && attn_act_dim >= 0,
            m, "attention sizes must be positive");
  MOE_CHECK(vocab_size >= 1, m, "vocabulary size must be >= 1, got ", vocab_size);
}

void TrainShape::validate() const {
  MOE_CHECK(seq_len >= 1, "--seq-len must be >= 1, got ", seq_len);
  MOE_CHECK(micro_batch_tokens >= seq_len && micro_batch_tokens % seq_len == 0, "--micro-batch-tokens (",
            micro_batch_tokens, ") must be a positive multiple of --seq-len (", seq_len, ")");
  MOE_CHECK(global_batch_tokens >= 1, "--global-batch-tokens must be >= 1, got ", global_batch_tokens);
  MOE_CHECK(act_bytes >= 1 && dispatch_bytes >= 1 && param_bytes >= 1 && grad_bytes >= 1,
            "bytes per element of "
            "activations, dispatch rows, parameters and gradients must be >= 1");
  MOE_CHECK(master_bytes >= 0 && opt_bytes >= 0,
            "bytes of master weights and optimizer moments must be >= 0");
}

// ---- routing -------------------------------------------------------------------------------------

void RoutingSpec::validate(const ModelShape& m) const {
  MOE_CHECK(trials >= 1, "--trials must be >= 1, got ", trials);
  if (kind == LoadKind::Zipf)
    MOE_CHECK(std::isfinite(zipf_s) && zipf_s >= 0, "--zipf-s must be a finite number >= 0, got ", zipf_s);
  if (kind != LoadKind::Measured) return;
  MOE_CHECK(!measured.empty(), "plan: the measured expert load has no layers");
  MOE_CHECK(measured.size() == 1 || static_cast<int64_t>(measured.size()) == m.num_moe_layers,
            "plan: the measured expert load has ", measured.size(),
            " layers; give one, or one per MoE layer (", m.num_moe_layers, ")");
  for (size_t l = 0; l < measured.size(); ++l) {
    MOE_CHECK(static_cast<int64_t>(measured[l].size()) == m.n_experts,
              "plan: the measured expert load of layer ", l, " has ", measured[l].size(),
              " experts, the model has ", m.n_experts);
    double sum = 0;
    for (double v : measured[l]) {
      MOE_CHECK(std::isfinite(v) && v >= 0, "plan: the measured expert load of layer ", l,
                " has an entry that is not a finite number >= 0 (", v, ")");
      sum += v;
    }
    MOE_CHECK(sum > 0, "plan: the measured expert load of layer ", l, " is all zero");
  }
}

std::vector<double> expert_distribution(const RoutingSpec& r, int64_t n_experts) {
  std::vector<double> p(static_cast<size_t>(n_experts), 1.0 / static_cast<double>(n_experts));
  if (r.kind != LoadKind::Zipf) return p;
  double sum = 0;
  for (int64_t i = 0; i < n_experts; ++i) sum += p[i] = std::pow(static_cast<double>(i + 1), -r.zipf_s);
  for (double& v : p) v /= sum;
  return p;
}

namespace {
// One layer of loads (a JSON list of numbers), normalised.
std::vector<double> load_row(const json& row, const std::string& where) {
  MOE_CHECK(row.is_array() && !row.empty(), where, " must be a non-empty list of numbers");
  std::vector<double> v;
  for (size_t e = 0; e < row.size(); ++e) {
    MOE_CHECK(row[e].is_number(), where, "[", e, "] must be a number, got ", row[e].dump());
    const double x = row[e].get<double>();
    MOE_CHECK(std::isfinite(x) && x >= 0, where, "[", e, "] must be >= 0, got ", x);
    v.push_back(x);
  }
  const double sum = std::accumulate(v.begin(), v.end(), 0.0);
  MOE_CHECK(sum > 0, where, " is all zero");
  for (double& x : v) x /= sum;
  return v;
}

std::vector<std::vector<double>> loads_from_json(const json& j, const std::string& source) {
  const json* v = &j;
  std::string where = source;
  if (j.is_object()) {
    MOE_CHECK(j.contains("expert_load"), source, ": the object has no \"expert_load\"");
    v = &j.at("expert_load");
    where += ": expert_load";
  }
  MOE_CHECK(v->is_array() && !v->empty(), where,
            " must be a list of per-expert loads (or of such lists per layer)");
  std::vector<std::vector<double>> layers;
  if (!(*v)[0].is_array()) {
    layers.push_back(load_row(*v, where));
  } else {
    for (size_t l = 0; l < v->size(); ++l) layers.push_back(load_row((*v)[l], cat(where, "[", l, "]")));
  }
  for (size_t l = 1; l < layers.size(); ++l) {
    MOE_CHECK(layers[l].size() == layers[0].size(), where, "[", l, "] has ", layers[l].size(),
              " experts, [0] has ", layers[0].size());
  }
  return layers;
}
}  // namespace

std::vector<std::vector<double>> parse_expert_loads(const std::string& text, const std::string& source) {
  const json j = json::parse(text, nullptr, /*allow_exceptions=*/false);
  MOE_CHECK(!j.is_discarded(), source,
            ": invalid JSON (expected a list of per-expert loads, a list of such "
            "lists, or an object with \"expert_load\")");
  return loads_from_json(j, source);
}

std::vector<std::vector<double>> load_expert_loads(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  MOE_CHECK(f.good(), "cannot open expert load file '", path, "'");
  std::ostringstream s;
  s << f.rdbuf();
  return parse_expert_loads(s.str(), path);
}

}  // namespace moe::dist
