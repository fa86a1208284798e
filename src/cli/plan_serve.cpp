#include "cli/plan_serve.h"

#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <map>
#include <nlohmann/json.hpp>
#include <thread>

#include "cli/common.h"
#include "cli/plan_inputs.h"
#include "moe/core/membw.h"
#include "moe/core/parallel.h"
#include "moe/kernels/ops.h"
#include "moe/model/paged_kv.h"

namespace moe::cli {

namespace {

// This machine's f32 GEMM rate on all threads, GFLOP/s: the best of 5 products of 1024³.
double measure_gflops() {
  const int64_t n = 1024;
  std::vector<float> A(static_cast<size_t>(n * n), 0.5f), B(A.size(), 0.25f), C(A.size());
  double best = 0;
  for (int r = 0; r < 5; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    kernels::gemm<float>(
        kernels::Backend::Cpu,
        {.M = n, .N = n, .K = n, .A = A.data(), .lda = n, .B = B.data(), .ldb = n, .C = C.data(), .ldc = n});
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    best = std::max(best, 2.0 * static_cast<double>(n * n * n) / s / 1e9);
  }
  return best;
}

}  // namespace

void add_plan_serve_flags(CLI::App* sub, PlanServeArgs& a) {
  sub->add_flag(
      "--serve", a.on,
      "Predict serving with expert parallelism instead of training: decode tokens/s and memory per rank "
      "for each --ranks and --concurrency (docs/PLAN.md \"Serving\")");
  sub->add_option("--ranks", a.ranks, "--serve: expert-parallel sizes (comma-separated)")
      ->check(in_range(1, 1 << 20))
      ->delimiter(',')
      ->capture_default_str();
  sub->add_option("--concurrency", a.concurrency, "--serve: sequences decoding at once (comma-separated)")
      ->check(in_range(1, 1 << 20))
      ->delimiter(',')
      ->capture_default_str();
  sub->add_option("--context", a.context, "--serve: mean positions in a sequence's KV cache")
      ->check(in_range(1, 1 << 30))
      ->capture_default_str();
  sub->add_option("--format", a.format, "--serve: weights f32, bf16, int8 or int4 (routed experts)")
      ->capture_default_str();
  sub->add_option("--ranks-per-node", a.ranks_per_node, "--serve: ranks on each node (0: all on one)")
      ->check(in_range(0, 1 << 20))
      ->capture_default_str();
  sub->add_option("--mem-gbps", a.cluster.mem_gbps,
                  "--serve: read bandwidth of one node, GB/s (default: measured on this machine)")
      ->check(in_range(0, 1e6));
  sub->add_option("--node-gflops", a.cluster.gflops,
                  "--serve: GEMM rate of one node, GFLOP/s (default: this machine's f32 GEMM, measured)")
      ->check(in_range(0, 1e9));
  sub->add_option("--cores", a.cluster.cores,
                  "--serve: cores of a node, split between its ranks (default: this machine's when the node "
                  "figures are measured, else not limited)")
      ->check(in_range(0, 1 << 20));
  sub->add_option("--core-gbps", a.cluster.core_gbps,
                  "--serve: read bandwidth of one core alone, GB/s (default: measured with --cores)")
      ->check(in_range(0, 1e6));
  sub->add_option("--mbu", a.cluster.mbu, "--serve: fraction of the read bandwidth that decoding achieves")
      ->check(above_at_most(0, 1))
      ->capture_default_str();
  sub->add_option("--shm-gbps", a.cluster.shm_gbps, "--serve: bandwidth between ranks of a node, GB/s")
      ->check(above(0))
      ->capture_default_str();
  sub->add_option("--shm-latency-us", a.cluster.shm_latency_us,
                  "--serve: latency between ranks of a node, us")
      ->check(in_range(0, 1e9))
      ->capture_default_str();
  sub->add_option("--net-gbps", a.cluster.net_gbps, "--serve: network bandwidth between nodes, GB/s")
      ->check(above(0))
      ->capture_default_str();
  sub->add_option("--net-latency-us", a.cluster.net_latency_us, "--serve: network latency, us")
      ->check(in_range(0, 1e9))
      ->capture_default_str();
  sub->add_option(
      "--calibrate", a.calibrate,
      "--serve: the JSON of `moe bench generate --json` run in one process on this machine; each "
      "concurrency it measured scales the predictions at that concurrency by measured / predicted "
      "(one rank)");
  sub->add_option(
         "--overhead-mib", a.overhead_mib,
         "--serve: memory of one process beyond weights and KV cache, MiB (default: from --calibrate's "
         "peak RSS, else 0)")
      ->check(in_range(0, 1e9));
  sub->add_option("--node-memory-gib", a.cluster.memory_gib,
                  "--serve: memory of a node, GiB (0: not checked)")
      ->check(in_range(0, 1e9))
      ->capture_default_str();
}

int run_plan_serve(const PlanServeArgs& a, const std::string& model_spec, const dist::RoutingSpec& routing,
                   bool json) {
  const model::ModelConfig cfg = plan_model_config(model_spec);
  const dist::ModelShape m = plan_model_shape(cfg, model_spec);
  const dist::ServeFormat f = dist::serve_format(a.format);
  const model::KVDims kv = model::kv_dims(cfg);
  dist::ServeCluster c = a.cluster;
  std::string measured;
  const bool local_cores = c.mem_gbps <= 0 && c.cores == 0 && c.core_gbps <= 0;  // a node like this one
  if (c.mem_gbps <= 0) {
    c.mem_gbps = measure_read_bandwidth(size_t{512} << 20).gb_per_s;
    measured += cat("read bandwidth ", round_sig(c.mem_gbps, 3), " GB/s");
  }
  if (c.gflops <= 0) {
    c.gflops = measure_gflops();
    measured += cat(measured.empty() ? "" : ", ", "f32 GEMM ", round_sig(c.gflops, 3), " GFLOP/s");
  }
  if (local_cores) {  // this machine's cores, and what one of them reads alone
    c.cores = static_cast<int64_t>(std::max(1u, std::thread::hardware_concurrency()));
    const int saved = num_threads();
    set_num_threads(1);
    c.core_gbps = measure_read_bandwidth(size_t{512} << 20).gb_per_s;
    set_num_threads(saved);
    measured += cat(", ", c.cores, " cores, one reads ", round_sig(c.core_gbps, 3), " GB/s");
  }
  auto predict = [&](int64_t n, int64_t b) {
    dist::ServeCluster cn = c;
    cn.ranks_per_node = a.ranks_per_node > 0 ? a.ranks_per_node : n;
    dist::ServeShape s;
    s.ranks = n, s.concurrency = b, s.context = a.context, s.kv_dim = kv.hkv * (kv.k_dim + kv.v_dim);
    return dist::predict_serve(m, cn, f, s, routing);
  };
  // Measured one-process decode step per concurrency (--calibrate).
  std::map<int64_t, double> measured_step;
  double calib_rss_mib = 0;
  int64_t calib_conc = 1, calib_context = 1;
  if (!a.calibrate.empty()) {
    std::ifstream in(a.calibrate, std::ios::binary);
    MOE_CHECK(in.good(), "plan --serve: cannot open --calibrate '", a.calibrate, "'");
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(in);
      for (const nlohmann::json& l : j.at("levels")) {
        const double tps = l.at("decode_tokens_per_s").get<double>();
        const int64_t conc = l.at("concurrency").get<int64_t>();
        if (tps > 0 && conc > 0) measured_step[conc] = static_cast<double>(conc) / tps;
        calib_conc = std::max(calib_conc, conc);
      }
      calib_rss_mib = j.value("peak_rss_mib", 0.0);
      calib_context = j.value("prompt_tokens", int64_t{1}) + j.value("new_tokens", int64_t{0});
    } catch (const nlohmann::json::exception& e) {
      throw Error(cat("plan --serve: --calibrate '", a.calibrate,
                      "' is not the JSON of `moe bench generate --json`: ", e.what()));
    }
    MOE_CHECK(!j.contains("expert_parallel"), "plan --serve: --calibrate needs a one-process measurement");
  }
  // The process's own memory: given, or what the calibration run held beyond its weights and cache.
  std::string overhead_from;
  if (a.overhead_mib >= 0) {
    c.overhead_mib = a.overhead_mib;
  } else if (calib_rss_mib > 0) {
    dist::ServeShape s1;
    s1.ranks = 1, s1.concurrency = calib_conc, s1.context = calib_context;
    s1.kv_dim = kv.hkv * (kv.k_dim + kv.v_dim);
    dist::ServeCluster c1 = c;
    c1.ranks_per_node = 1, c1.overhead_mib = 0;
    const double held = dist::predict_serve(m, c1, f, s1, routing).memory_bytes() / 1048576.0;
    c.overhead_mib = std::max(0.0, calib_rss_mib - held);
    overhead_from = cat("; process overhead ", round_sig(c.overhead_mib, 3), " MiB (calibration's peak RSS)");
  }
  std::vector<dist::ServePrediction> rows;
  std::vector<double> scale;
  std::map<int64_t, double> calib;  // per concurrency: measured / predicted step of one process
  for (int64_t b : a.concurrency)
    if (auto it = measured_step.find(b); it != measured_step.end())
      calib[b] = it->second / predict(1, b).step_s;
  for (int64_t n : a.ranks)
    for (int64_t b : a.concurrency) {
      dist::ServePrediction p = predict(n, b);
      const double k = calib.count(b) ? calib[b] : 1.0;
      p.step_s *= k, p.dense_s *= k, p.expert_s *= k, p.exchange_s *= k, p.head_s *= k, p.announce_s *= k;
      p.tokens_per_s = static_cast<double>(b) / p.step_s;
      rows.push_back(p), scale.push_back(k);
    }
  constexpr double MiB = 1048576.0;
  if (json) {
    nlohmann::ordered_json j;
    j["command"] = "plan --serve";
    j["model"] = {{"name", m.name}, {"n_params", m.n_params()}, {"n_active_params", m.n_active_params()}};
    j["format"] = a.format;
    j["node"] = {{"mem_gbps", round_sig(c.mem_gbps, 4)}, {"mbu", c.mbu},
                 {"gflops", round_sig(c.gflops, 4)},     {"net_gbps", c.net_gbps},
                 {"net_latency_us", c.net_latency_us},   {"shm_gbps", c.shm_gbps},
                 {"shm_latency_us", c.shm_latency_us},   {"measured", measured}};
    j["context"] = a.context;
    for (const dist::ServePrediction& p : rows)
      j["predictions"].push_back({{"ranks", p.ranks},
                                  {"nodes", p.nodes},
                                  {"ranks_per_node", p.ranks_per_node},
                                  {"concurrency", p.concurrency},
                                  {"tokens_per_s", round_sig(p.tokens_per_s, 4)},
                                  {"step_s", round_sig(p.step_s, 4)},
                                  {"dense_s", round_sig(p.dense_s, 4)},
                                  {"expert_s", round_sig(p.expert_s, 4)},
                                  {"exchange_s", round_sig(p.exchange_s, 4)},
                                  {"head_s", round_sig(p.head_s, 4)},
                                  {"max_experts", round_sig(p.max_experts, 4)},
                                  {"memory_per_rank_mib", round_sig(p.memory_bytes() / MiB, 5)},
                                  {"dense_mib", round_sig(p.dense_bytes / MiB, 5)},
                                  {"experts_mib", round_sig(p.expert_bytes / MiB, 5)},
                                  {"kv_mib", round_sig(p.kv_bytes / MiB, 5)},
                                  {"overhead_mib", round_sig(p.overhead_bytes / MiB, 5)},
                                  {"calibration", round_sig(scale[&p - rows.data()], 4)},
                                  {"fits", p.fits}});
    std::cout << j.dump() << std::endl;
    return kExitOk;
  }
  std::printf("model %s: %.3gB params (%.3gB active), %s weights; node: %.3g GB/s x %.2f, %.4g GFLOP/s%s%s\n",
              m.name.c_str(), static_cast<double>(m.n_params()) / 1e9,
              static_cast<double>(m.n_active_params()) / 1e9, a.format.c_str(), c.mem_gbps, c.mbu, c.gflops,
              measured.empty() ? "" : "; measured here: ", (measured + overhead_from).c_str());
  std::printf("%5s %5s %5s %10s %9s %8s %8s %8s %8s %7s %12s %5s %6s\n", "ranks", "nodes", "conc", "tokens/s",
              "step ms", "dense", "experts", "exch", "head", "E max", "MiB per rank", "fits", "calib");
  for (size_t i = 0; i < rows.size(); ++i) {
    const dist::ServePrediction& p = rows[i];
    std::printf("%5lld %5lld %5lld %10.4g %9.2f %8.2f %8.2f %8.3f %8.2f %7.2f %12.0f %5s %6.3f\n",
                static_cast<long long>(p.ranks), static_cast<long long>(p.nodes),
                static_cast<long long>(p.concurrency), p.tokens_per_s, p.step_s * 1e3, p.dense_s * 1e3,
                p.expert_s * 1e3, p.exchange_s * 1e3, p.head_s * 1e3, p.max_experts, p.memory_bytes() / MiB,
                p.fits ? "yes" : "no", scale[i]);
  }
  return kExitOk;
}

}  // namespace moe::cli
