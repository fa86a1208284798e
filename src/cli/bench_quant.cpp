// `moe bench quant [--shapes NxK,...] [--m 1,4,16,256] [--group-size G] [--threads T] [--iters I]
//  [--copies C] [--json]`: the quantized-weight GEMM (kernels::gemm_qw, int8 and int4) beside the f32
// GEMM (kernels::gemm), the bf16-weight GEMM (kernels::gemm_bf16w) and the packed formats of
// grouped_gemm_w (bf16-packed; int8-packed, W8A8) on the same shapes, in one run.
//
// Each kind multiplies M rows by (N, K) weights stored as nn.Linear (out, in). Every kind keeps `copies`
// distinct weight matrices and cycles through them, so that with the default the weights of a call
// come from memory (not from a cache warmed by the previous call), as the experts of a decoding step
// do. The kinds are timed in turn within each repetition (A/B interleaved) and the median of the
// repetitions is reported: GFLOP/s = 2·M·N·K / time, GB/s = bytes of the weights read / time.
#include <chrono>
#include <cmath>
#include <cstdio>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "cli/common.h"
#include "moe/core/dtype.h"
#include "moe/core/error.h"
#include "moe/core/parallel.h"
#include "moe/core/rng.h"
#include "moe/kernels/ops.h"
#include "moe/kernels/ops_bf16.h"
#include "moe/kernels/ops_quant.h"
#include "moe/kernels/weights.h"

namespace moe::cli {
namespace {

struct BenchQuantOptions {
  std::vector<std::string> shapes{"2816x1024", "1024x2816"};
  std::vector<int64_t> ms{1, 4, 16, 256};
  int64_t group = 64;
  int threads = 0;
  int iters = 30;
  int warmup = 3;
  int copies = 8;
  uint64_t seed = 0;
  std::string isa;  // gemm_qw instruction set; empty: the best one
  bool json = false;
};

constexpr int kKindCount = 7;
const char* const kKinds[kKindCount] = {"f32", "bf16", "int8", "int4", "bf16-packed", "w8a8", "w4a8"};

struct Row {
  int64_t N = 0, K = 0, M = 0;
  std::string kind;
  double ms = 0, gflops = 0, gbps = 0;
  int64_t weight_bytes = 0;  // of one matrix
};

void parse_shape(const std::string& s, int64_t& N, int64_t& K) {
  const size_t x = s.find('x');
  try {
    MOE_CHECK(x != std::string::npos, "");
    size_t used = 0;
    N = std::stoll(s.substr(0, x), &used);
    MOE_CHECK(used == x, "");
    K = std::stoll(s.substr(x + 1), &used);
    MOE_CHECK(used == s.size() - x - 1, "");
  } catch (const std::exception&) {
    throw Error(cat("bench quant: --shapes: '", s, "' is not NxK (e.g. 2816x1024)"));
  }
  MOE_CHECK(N > 0 && K > 0, "bench quant: --shapes: '", s, "' needs N, K >= 1");
}

std::vector<Row> bench_shape(const BenchQuantOptions& o, int64_t N, int64_t K) {
  MOE_CHECK(K % o.group == 0, "bench quant: K = ", K, " of shape ", N, "x", K,
            " is not a multiple of --group-size ", o.group);
  const Rng rng(o.seed, static_cast<uint64_t>(N * 131 + K));
  uint64_t draw = 0;
  const int C = o.copies;
  std::vector<std::vector<float>> w32(C);
  std::vector<std::vector<uint16_t>> w16(C);
  std::vector<kernels::QuantizedMatrix> w8(C), w4(C);
  std::vector<std::vector<uint8_t>> p16(C), p8(C), p4(C);  // bf16-, int8-, int4-packed
  std::vector<kernels::WeightView> v16(C), v8(C), v4(C);
  const float scale = 1.0f / std::sqrt(static_cast<float>(K));
  for (int c = 0; c < C; ++c) {
    w32[c].resize(static_cast<size_t>(N * K));
    for (float& v : w32[c]) v = scale * static_cast<float>(rng.normal(draw++));
    w16[c].resize(w32[c].size());
    for (size_t i = 0; i < w32[c].size(); ++i) w16[c][i] = f32_to_bf16(w32[c][i]);
    w8[c] = kernels::quantize_matrix(w32[c].data(), N, K, 8, o.group, "w");
    w4[c] = kernels::quantize_matrix(w32[c].data(), N, K, 4, o.group, "w");
    p16[c].resize(static_cast<size_t>(kernels::packed_bf16_bytes(N, K)));
    v16[c] = kernels::pack_bf16_weights(
        {.format = kernels::WeightFormat::F32, .N = N, .K = K, .data = w32[c].data()}, 1, p16[c].data());
    p8[c].resize(static_cast<size_t>(kernels::packed_int8_bytes(N, K, o.group)));
    const kernels::QuantWeight q = w8[c].view();
    v8[c] = kernels::pack_int8_weights({.format = kernels::WeightFormat::Int8,
                                        .N = N,
                                        .K = K,
                                        .data = q.q,
                                        .scales = q.scales,
                                        .group = o.group},
                                       1, p8[c].data());
    p4[c].resize(static_cast<size_t>(kernels::packed_int4_bytes(N, K, o.group)));
    const kernels::QuantWeight q4 = w4[c].view();
    v4[c] = kernels::pack_int4_weights({.format = kernels::WeightFormat::Int4,
                                        .N = N,
                                        .K = K,
                                        .data = q4.q,
                                        .scales = q4.scales,
                                        .mins = q4.mins,
                                        .group = o.group},
                                       1, p4[c].data());
  }
  const int64_t bytes[kKindCount] = {4 * N * K,
                                     2 * N * K,
                                     w8[0].bytes(),
                                     w4[0].bytes(),
                                     v16[0].expert_bytes(),
                                     v8[0].expert_bytes(),
                                     v4[0].expert_bytes()};
  std::vector<Row> rows;
  for (int64_t M : o.ms) {
    std::vector<float> A(static_cast<size_t>(M * K)), Cm(static_cast<size_t>(M * N));
    for (float& v : A) v = static_cast<float>(rng.normal(draw++));
    auto run = [&](int kind, int c) {
      switch (kind) {
        case 0: {
          kernels::GemmArgs<float> g;
          g.M = M, g.N = N, g.K = K, g.A = A.data(), g.lda = K, g.B = w32[c].data(), g.ldb = K,
          g.trans_b = true;
          g.C = Cm.data(), g.ldc = N;
          return kernels::gemm(kernels::Backend::Cpu, g);
        }
        case 1: {
          kernels::GemmBf16Args g;
          g.M = M, g.N = N, g.K = K, g.A = A.data(), g.lda = K, g.W = w16[c].data(), g.C = Cm.data(),
          g.ldc = N;
          return kernels::gemm_bf16w(kernels::Backend::Cpu, g);
        }
        case 4:
        case 5:
        case 6: {
          const int32_t offsets[2] = {0, static_cast<int32_t>(M)};
          kernels::GroupedGemmWArgs g;
          g.E = 1, g.offsets = offsets, g.A = A.data(), g.lda = K,
          g.W = (kind == 4   ? v16
                 : kind == 5 ? v8
                             : v4)[c];
          g.C = Cm.data(), g.ldc = N;
          return kernels::grouped_gemm_w(kernels::Backend::Cpu, g);
        }
        default: {
          kernels::GemmQuantArgs g;
          g.M = M, g.A = A.data(), g.lda = K, g.W = (kind == 2 ? w8 : w4)[c].view(), g.C = Cm.data(),
          g.ldc = N;
          return kernels::gemm_qw(kernels::Backend::Cpu, g);
        }
      }
    };
    std::vector<double> times[kKindCount];
    int c = 0;
    for (int it = 0; it < o.warmup + o.iters; ++it) {
      for (int kind = 0; kind < kKindCount; ++kind) {  // interleaved: every kind sees the same machine state
        const auto t0 = std::chrono::steady_clock::now();
        run(kind, c);
        const double ms = ms_since(t0);
        if (it >= o.warmup) times[kind].push_back(ms);
      }
      c = (c + 1) % C;
    }
    for (int kind = 0; kind < kKindCount; ++kind) {
      Row r;
      r.N = N, r.K = K, r.M = M, r.kind = kKinds[kind], r.ms = median(times[kind]),
      r.weight_bytes = bytes[kind];
      r.gflops = 2.0 * static_cast<double>(M * N * K) / (r.ms * 1e6);
      r.gbps = static_cast<double>(bytes[kind]) / (r.ms * 1e6);
      rows.push_back(r);
    }
  }
  return rows;
}

int run_bench_quant(const BenchQuantOptions& o) {
  MOE_CHECK(o.iters >= 1, "bench quant: --iters must be >= 1, got ", o.iters);
  MOE_CHECK(o.warmup >= 0, "bench quant: --warmup must be >= 0, got ", o.warmup);
  MOE_CHECK(o.copies >= 1, "bench quant: --copies must be >= 1, got ", o.copies);
  for (int64_t m : o.ms) MOE_CHECK(m >= 1, "bench quant: --m values must be >= 1, got ", m);
  apply_threads(o.threads);
  if (!o.isa.empty()) kernels::set_gemm_quant_isa(o.isa);
  std::vector<std::pair<int64_t, int64_t>> shapes;
  for (const std::string& s : o.shapes) {
    int64_t N = 0, K = 0;
    parse_shape(s, N, K);
    shapes.emplace_back(N, K);
  }
  std::vector<Row> rows;
  for (const auto& [N, K] : shapes) {
    const auto r = bench_shape(o, N, K);
    rows.insert(rows.end(), r.begin(), r.end());
  }
  if (o.json) {
    nlohmann::json j;
    j["threads"] = num_threads();
    j["group_size"] = o.group;
    j["quant_isa"] = kernels::gemm_quant_isa();
    j["bf16_isa"] = kernels::gemm_bf16_isa();
    j["copies"] = o.copies;
    j["iters"] = o.iters;
    j["results"] = nlohmann::json::array();
    for (const Row& r : rows)
      j["results"].push_back({{"N", r.N},
                              {"K", r.K},
                              {"M", r.M},
                              {"kind", r.kind},
                              {"ms", round_sig(r.ms, 4)},
                              {"gflops", round_sig(r.gflops, 4)},
                              {"weight_gbps", round_sig(r.gbps, 4)},
                              {"weight_bytes", r.weight_bytes}});
    std::cout << j.dump() << "\n";
    return kExitOk;
  }
  std::printf(
      "bench quant: %d threads, group %lld, gemm_qw isa %s, gemm_bf16w isa %s, %d weight copies per kind, "
      "median of %d\n",
      num_threads(), static_cast<long long>(o.group), kernels::gemm_quant_isa(), kernels::gemm_bf16_isa(),
      o.copies, o.iters);
  std::printf("%-11s %5s  %-11s %10s %9s %9s %9s\n", "N x K", "M", "kind", "ms", "GFLOP/s", "GB/s",
              "vs bf16");
  for (size_t i = 0; i < rows.size(); ++i) {
    const Row& r = rows[i];
    const double bf16_ms = rows[i - i % kKindCount + 1].ms;  // the bf16 row of the same shape and M
    char shape[32];
    std::snprintf(shape, sizeof shape, "%lldx%lld", static_cast<long long>(r.N), static_cast<long long>(r.K));
    std::printf("%-11s %5lld  %-11s %10.4f %9.2f %9.2f %8.2fx\n", shape, static_cast<long long>(r.M),
                r.kind.c_str(), r.ms, r.gflops, r.gbps, bf16_ms / r.ms);
  }
  return kExitOk;
}

}  // namespace

void add_bench_quant(CLI::App& bench, Registry& reg) {
  auto o = std::make_shared<BenchQuantOptions>();
  CLI::App* c = bench.add_subcommand(
      "quant", "Quantized-weight GEMM (int8, int4) beside the f32 and bf16-weight GEMMs");
  c->add_option("--shapes", o->shapes, "Weight shapes NxK (out x in)")->delimiter(',')->capture_default_str();
  c->add_option("--m", o->ms, "Rows M (tokens) per call")
      ->check(in_range(1, 1 << 20))
      ->delimiter(',')
      ->capture_default_str();
  c->add_option("--group-size", o->group, "Quantization group")
      ->check(CLI::IsMember({32, 64, 128}))
      ->capture_default_str();
  add_threads_flag(c, o->threads);
  c->add_option("--iters", o->iters, "Timed repetitions; the median is reported")
      ->check(in_range(1, kMaxRepsFlag))
      ->capture_default_str();
  c->add_option("--warmup", o->warmup, "Untimed repetitions first")
      ->check(in_range(0, kMaxRepsFlag))
      ->capture_default_str();
  c->add_option("--copies", o->copies, "Distinct weight matrices per kind, cycled (weights from memory)")
      ->check(in_range(1, 1024))
      ->capture_default_str();
  add_seed_flag(c, o->seed, "weights and inputs");
  c->add_option("--isa", o->isa,
                "Instruction set of gemm_qw: generic, avx2, avx512 (default: the best supported)");
  add_json_flag(c, o->json);
  c->footer(
      "Kinds: f32 = kernels::gemm with f32 weights, bf16 = kernels::gemm_bf16w, int8 / int4 = "
      "kernels::gemm_qw\n"
      "(group-wise, f16 scales, fp32 activations), bf16-packed = grouped_gemm_w on bf16 weights packed "
      "once,\n"
      "w8a8 = grouped_gemm_w on int8 weights packed once with the activations quantized to int8 per row;\n"
      "w4a8 = the same on int4 weights (asymmetric, nibbles unpacked in registers).\n"
      "GB/s counts the bytes of the weights (with scales and mins) per call; 'vs bf16' is the bf16 time\n"
      "over the kind's time.");
  c->callback([&reg, o] { reg.action = [o] { return run_bench_quant(*o); }; });
}

}  // namespace moe::cli
