// GET /metrics: Prometheus text exposition format 0.0.4 (one "# HELP" and "# TYPE" line per
// family, then samples `name{label="value"} number`).
#include <cmath>
#include <sstream>

#include "moe/infer/server.h"

namespace moe::infer {

namespace {

// Label values escape backslash, double quote and newline.
std::string label(const std::string& v) {
  std::string s;
  for (char c : v) {
    if (c == '\\')
      s += "\\\\";
    else if (c == '"')
      s += "\\\"";
    else if (c == '\n')
      s += "\\n";
    else
      s += c;
  }
  return s;
}

std::string num(double x) {
  if (std::isnan(x)) return "NaN";
  if (std::isinf(x)) return x > 0 ? "+Inf" : "-Inf";
  std::ostringstream os;
  os.precision(10);
  os << x;
  return os.str();
}

void family(std::ostringstream& os, const char* name, const char* type, const char* help) {
  os << "# HELP " << name << " " << help << "\n# TYPE " << name << " " << type << "\n";
}

void scalar(std::ostringstream& os, const char* name, const char* type, const char* help, double v) {
  family(os, name, type, help);
  os << name << " " << num(v) << "\n";
}

}  // namespace

const std::vector<double>& ServerMetrics::buckets() {
  static const std::vector<double> b = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1,
                                        2.5,   5,    10,    30,   60,  120,  300};
  return b;
}

void ServerMetrics::count_request(const std::string& endpoint, int status) {
  std::lock_guard<std::mutex> lock(mu_);
  ++requests_[{endpoint, status}];
}

void ServerMetrics::count_finish(const std::string& reason) {
  std::lock_guard<std::mutex> lock(mu_);
  ++finishes_[reason];
}

void ServerMetrics::observe(double latency_s, double ttft_s) {
  std::lock_guard<std::mutex> lock(mu_);
  const std::vector<double>& b = buckets();
  for (auto [h, x] : {std::pair<Histogram*, double>{&latency_, latency_s}, {&ttft_, ttft_s}}) {
    if (h->counts.empty()) h->counts.assign(b.size() + 1, 0);
    size_t i = 0;
    while (i < b.size() && x > b[i]) ++i;
    ++h->counts[i];
    h->sum += x;
    ++h->n;
  }
}

std::string ServerMetrics::render(const EngineStats& s, double tokens_per_s, double uptime_s) const {
  std::lock_guard<std::mutex> lock(mu_);
  std::ostringstream os;
  family(os, "moe_http_requests_total", "counter", "HTTP requests by endpoint and status code.");
  for (const auto& [key, n] : requests_)
    os << "moe_http_requests_total{endpoint=\"" << label(key.first) << "\",status=\"" << key.second << "\"} "
       << n << "\n";
  family(os, "moe_request_finish_total", "counter", "Generation requests by how they ended.");
  for (const char* r : {"stop", "length", "cancelled", "error"}) {
    auto it = finishes_.find(r);
    os << "moe_request_finish_total{reason=\"" << r << "\"} " << (it == finishes_.end() ? 0 : it->second)
       << "\n";
  }
  scalar(os, "moe_requests_finished_total", "counter", "Generation requests the engine finished.",
         static_cast<double>(s.requests_finished));
  scalar(os, "moe_requests_rejected_total", "counter",
         "Generation requests refused because the queue was full.", static_cast<double>(s.requests_rejected));
  scalar(os, "moe_prompt_tokens_total", "counter", "Prompt tokens prefilled.",
         static_cast<double>(s.prompt_tokens));
  scalar(os, "moe_generation_tokens_total", "counter", "Tokens generated.",
         static_cast<double>(s.generated_tokens));
  scalar(os, "moe_generation_tokens_per_second", "gauge",
         "Tokens generated per second since the previous scrape.", tokens_per_s);
  scalar(os, "moe_forward_passes_total", "counter", "Batched forward passes.",
         static_cast<double>(s.forward_passes));
  scalar(os, "moe_engine_busy_seconds_total", "counter", "Time spent in forward passes and sampling.",
         s.busy_s);
  scalar(os, "moe_queue_length", "gauge", "Requests waiting for admission.", static_cast<double>(s.queued));
  scalar(os, "moe_running_requests", "gauge", "Requests admitted (prefilling or decoding).",
         static_cast<double>(s.running));
  scalar(os, "moe_batch_tokens", "gauge", "Tokens in the latest forward pass.",
         static_cast<double>(s.batch_tokens_last));
  scalar(os, "moe_batch_sequences", "gauge", "Sequences in the latest forward pass.",
         static_cast<double>(s.batch_seqs_last));
  const double passes = static_cast<double>(s.forward_passes);
  scalar(os, "moe_batch_tokens_mean", "gauge", "Mean tokens per forward pass since start.",
         passes > 0 ? static_cast<double>(s.batch_tokens_sum) / passes : 0.0);
  scalar(os, "moe_batch_sequences_mean", "gauge", "Mean sequences per forward pass since start.",
         passes > 0 ? static_cast<double>(s.batch_seqs_sum) / passes : 0.0);
  scalar(os, "moe_kv_blocks_total", "gauge", "KV cache blocks in the pool.",
         static_cast<double>(s.kv_blocks_total));
  scalar(os, "moe_kv_blocks_used", "gauge", "KV cache blocks in use.", static_cast<double>(s.kv_blocks_used));
  family(os, "moe_expert_tokens_total", "counter", "Tokens routed to each expert of each MoE layer.");
  for (size_t l = 0; l < s.expert_hits.size(); ++l) {
    const int64_t layer = l < s.moe_layers.size() ? s.moe_layers[l] : static_cast<int64_t>(l);
    for (size_t e = 0; e < s.expert_hits[l].size(); ++e)
      os << "moe_expert_tokens_total{layer=\"" << layer << "\",expert=\"" << e << "\"} "
         << s.expert_hits[l][e] << "\n";
  }
  const std::vector<double>& b = buckets();
  auto histogram = [&](const char* name, const char* help, const Histogram& h) {
    family(os, name, "histogram", help);
    int64_t cum = 0;
    for (size_t i = 0; i <= b.size(); ++i) {
      cum += h.counts.empty() ? 0 : h.counts[i];
      os << name << "_bucket{le=\"" << (i < b.size() ? num(b[i]) : "+Inf") << "\"} " << cum << "\n";
    }
    os << name << "_sum " << num(h.sum) << "\n" << name << "_count " << h.n << "\n";
  };
  histogram("moe_request_latency_seconds", "Time from submission to the last token of generation requests.",
            latency_);
  histogram("moe_time_to_first_token_seconds", "Time from submission to the first new token.", ttft_);
  scalar(os, "moe_uptime_seconds", "gauge", "Seconds since the server started.", uptime_s);
  return os.str();
}

std::string ServerMetrics::render_store(const ExpertStoreStats& s) {
  std::ostringstream os;
  scalar(os, "moe_expert_cache_hit_rate", "gauge", "Share of expert uses whose weights were resident.",
         s.hit_rate());
  scalar(os, "moe_expert_cache_hits_total", "counter", "Expert uses whose weights were resident.",
         static_cast<double>(s.hits));
  scalar(os, "moe_expert_cache_misses_total", "counter", "Expert uses that waited for weights.",
         static_cast<double>(s.misses));
  scalar(os, "moe_expert_bytes_moved_total", "counter", "Bytes of expert weights read from the checkpoint.",
         static_cast<double>(s.bytes_moved));
  scalar(os, "moe_expert_stall_seconds_total", "counter", "Time forward passes waited for expert weights.",
         s.stall_seconds);
  scalar(os, "moe_expert_prefetches_total", "counter", "Prefetch loads started.",
         static_cast<double>(s.prefetch_issued));
  scalar(os, "moe_expert_prefetches_used_total", "counter", "Prefetched experts used before eviction.",
         static_cast<double>(s.prefetch_used));
  scalar(os, "moe_expert_resident", "gauge", "Experts resident now.", static_cast<double>(s.resident));
  scalar(os, "moe_expert_capacity", "gauge", "Resident expert slots.", static_cast<double>(s.capacity));
  family(os, "moe_expert_cache_layer_hits_total", "counter", "Resident hits per MoE layer.");
  for (size_t l = 0; l < s.layer_hits.size(); ++l) {
    int64_t h = 0;
    for (int64_t v : s.layer_hits[l]) h += v;
    os << "moe_expert_cache_layer_hits_total{layer=\""
       << (l < s.layers.size() ? s.layers[l] : static_cast<int64_t>(l)) << "\"} " << h << "\n";
  }
  return os.str();
}

}  // namespace moe::infer
