// The op table as data (op_table, supports, op_flops / op_bytes) and the execution context: an op
// run on an explicit Context gives what the bare Backend gives, the workspace grows only when asked
// for more, and a pair the table does not support is refused with its reason.
#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <set>
#include <string>
#include <vector>

#include "moe/core/error.h"
#include "moe/kernels/context.h"
#include "moe/kernels/isa.h"
#include "moe/kernels/ops.h"
#include "moe/kernels/ops_bf16.h"
#include "moe/kernels/ops_quant.h"
#include "moe/kernels/ops_routing.h"
#include "op_cases.h"

namespace moe::ops_test {
namespace {

using kernels::Activation;

TEST(OpTable, ListsEveryOpWithItsBackends) {
  const std::vector<kernels::OpInfo> rows = kernels::op_table();
  std::set<std::string> names;
  for (const auto& r : rows) {
    EXPECT_TRUE(names.insert(r.name).second) << "duplicate row " << r.name;
    EXPECT_TRUE(r.backend[static_cast<int>(Backend::Ref)]) << r.name << ": every op has a reference";
    EXPECT_TRUE(r.backend[static_cast<int>(Backend::Cpu)]) << r.name;
  }
  const std::set<std::string> with_cuda = {
      "gemm",    "permute",         "grouped_gemm", "grouped_gemm_wgrad", "activation", "activation_backward",
      "combine", "combine_backward"};
  for (const char* op : {"gemm",
                         "permute",
                         "grouped_gemm",
                         "grouped_gemm_wgrad",
                         "activation",
                         "activation_backward",
                         "combine",
                         "combine_backward",
                         "grouped_ffn_up",
                         "grouped_ffn_down_backward",
                         "grouped_gemm_cat",
                         "grouped_gemm_scatter",
                         "grouped_gemm_w",
                         "grouped_gemm_bf16w",
                         "gemm_bf16w",
                         "gemm_qw",
                         "router_topk",
                         "routing_stats",
                         "dispatch_rows",
                         "scale_scatter_rows",
                         "add_gated_rows",
                         "scatter_values"}) {
    ASSERT_TRUE(names.count(op)) << "no row for " << op;
    for (const auto& r : rows) {
      if (r.name != op) continue;
#ifdef MOE_HAVE_CUDA
      EXPECT_EQ(r.backend[static_cast<int>(Backend::Cuda)], with_cuda.count(op) == 1) << op;
#else
      EXPECT_FALSE(r.backend[static_cast<int>(Backend::Cuda)]) << op;
#endif
    }
  }
  EXPECT_TRUE(names.count("grouped_gemm[f64]"));  // double rows: Ref and Cpu (gradient checks)
  EXPECT_TRUE(names.count("router_topk[f64]"));
  EXPECT_TRUE(names.count("routing_stats[f64]"));
}

// supports() for every op on every backend, from one argument set each: Ref and Cpu run them all;
// Cuda runs the float ops it has (when built with CUDA), and says why not for the rest.
TEST(OpTable, SupportsEveryOpOnEveryBackend) {
  const int32_t offsets[3] = {0, 0, 0};
  kernels::GemmArgs<float> gemm;
  kernels::GroupedGemmArgs<float> grouped;
  grouped.offsets = offsets;
  kernels::FfnUpArgs<float> up;
  kernels::GemmQuantArgs qw;
  kernels::GroupedWgradArgs<float> wgrad_gather;
  wgrad_gather.dC_gather = offsets;
  kernels::GroupedWgradArgs<float> wgrad_preact;
  wgrad_preact.a_preact = true;
  kernels::GemmArgs<double> gemm64;
  kernels::RouterTopkArgs<float> topk;
  kernels::RoutingStatsArgs<float> stats;
  kernels::PermuteArgs tiles;
  tiles.tile_m = 16;
  for (Backend b : {Backend::Ref, Backend::Cpu}) {
    EXPECT_TRUE(kernels::supports(b, topk).ok);
    EXPECT_TRUE(kernels::supports(b, stats).ok);
    EXPECT_TRUE(kernels::supports(b, tiles).ok);
    EXPECT_TRUE(kernels::supports(b, gemm).ok);
    EXPECT_TRUE(kernels::supports(b, grouped).ok);
    EXPECT_TRUE(kernels::supports(b, up).ok);
    EXPECT_TRUE(kernels::supports(b, qw).ok);
    EXPECT_TRUE(kernels::supports(b, wgrad_gather).ok);
    EXPECT_TRUE(kernels::supports(b, gemm64).ok);
  }
  const auto no = [](const kernels::Support& s, const std::string& why) {
    EXPECT_FALSE(s.ok);
    EXPECT_NE(s.reason.find(why), std::string::npos) << s.reason;
  };
  no(kernels::supports(Backend::Cuda, up), "not implemented on cuda");
  no(kernels::supports(Backend::Cuda, qw), "not implemented on cuda");
  no(kernels::supports(Backend::Cuda, topk), "not implemented on cuda");
  no(kernels::supports(Backend::Cuda, stats), "not implemented on cuda");
  no(kernels::supports(Backend::Cuda, gemm64), "cuda");
#ifdef MOE_HAVE_CUDA
  EXPECT_TRUE(kernels::supports(Backend::Cuda, gemm).ok);
  EXPECT_TRUE(kernels::supports(Backend::Cuda, grouped).ok);
  EXPECT_TRUE(kernels::supports(Backend::Cuda, tiles).ok);
  no(kernels::supports(Backend::Cuda, wgrad_gather), "dC_gather is not implemented on cuda");
  no(kernels::supports(Backend::Cuda, wgrad_preact), "a_preact and a_scale are not implemented on cuda");
  no(kernels::supports(Backend::Cuda, gemm64), "float only");
#else
  no(kernels::supports(Backend::Cuda, gemm), "no CUDA support");
#endif
  // Running an unsupported pair throws the same reason, naming the op.
  try {
    kernels::grouped_ffn_up(Backend::Cuda, up);
    ADD_FAILURE() << "no moe::Error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("grouped_ffn_up: not implemented on cuda"), std::string::npos)
        << e.what();
  }
}

TEST(OpTable, FlopsAndBytes) {
  kernels::GemmArgs<float> g;
  g.M = 3, g.N = 5, g.K = 7;
  EXPECT_EQ(kernels::op_flops(g), 2.0 * 3 * 5 * 7);
  EXPECT_EQ(kernels::op_bytes(g), 4.0 * (3 * 7 + 7 * 5 + 3 * 5));
  g.beta = 1;  // C is read too
  EXPECT_EQ(kernels::op_bytes(g), 4.0 * (3 * 7 + 7 * 5 + 2 * 3 * 5));
  const int32_t offsets[4] = {0, 4, 4, 10};  // 10 sorted rows over 3 experts
  kernels::FfnUpArgs<float> up;
  up.E = 3, up.F = 8, up.K = 16, up.offsets = offsets;
  EXPECT_EQ(kernels::op_flops(up), 2.0 * 2 * 10 * 8 * 16);  // gate and up
  up.act = Activation::Gelu;
  EXPECT_EQ(kernels::op_flops(up), 2.0 * 10 * 8 * 16);
  kernels::GemmQuantArgs q;
  q.M = 2, q.W.bits = 4, q.W.N = 8, q.W.K = 64, q.W.group = 32;
  EXPECT_EQ(kernels::op_flops(q), 2.0 * 2 * 8 * 64);
  EXPECT_EQ(kernels::op_bytes(q), 4.0 * 2 * 64 + 8 * 64 / 2 + 16 * 4 + 4.0 * 2 * 8);
}

// Every consistency case, run on an explicit Cpu context, gives the bytes the bare Backend gives.
TEST(OpContext, ExplicitContextMatchesTheBackend) {
  kernels::Context ctx(Backend::Cpu);
  EXPECT_EQ(ctx.backend(), Backend::Cpu);
  EXPECT_FALSE(ctx.eager_errors());
  EXPECT_TRUE(kernels::default_context(Backend::Cpu).eager_errors());
  EXPECT_EQ(&kernels::default_context(Backend::Cpu), &kernels::Exec(Backend::Cpu).context());
  std::vector<float> A = {1, 2, 3, 4, 5, 6}, B = {1, 0, 0, 1, 1, 1}, C1(4), C2(4);
  kernels::GemmArgs<float> g;
  g.M = 2, g.N = 2, g.K = 3, g.A = A.data(), g.lda = 3, g.B = B.data(), g.ldb = 2, g.ldc = 2;
  g.C = C1.data();
  kernels::gemm(ctx, g);
  g.C = C2.data();
  kernels::gemm(Backend::Cpu, g);
  ctx.synchronize();  // nothing to wait for on the host
  EXPECT_EQ(C1, C2);
  EXPECT_EQ(C1, (std::vector<float>{4, 5, 10, 11}));
  for (const auto& c : consistency_cases()) {
    if (c->is_double() || c->op() != "grouped_gemm") continue;
    Buffers a = c->make(3), b = a;
    c->run(Backend::Cpu, a);
    kernels::Context local(Backend::Cpu);
    c->run(local, b);
    for (int id = 0; id < a.size(); ++id) EXPECT_EQ(a[id].bytes, b[id].bytes) << c->name();
  }
  EXPECT_THROW(ctx.device_error(), Error);  // device error records exist on cuda only
}

TEST(OpContext, WorkspaceGrowsOnlyForLargerRequests) {
  kernels::Workspace ws(Backend::Cpu);
  EXPECT_EQ(ws.capacity(), 0u);
  void* p = ws.reserve(1000);
  ASSERT_NE(p, nullptr);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(p) % 256, 0u);
  EXPECT_GE(ws.capacity(), 1000u);
  std::memset(p, 1, 1000);
  EXPECT_EQ(ws.reserve(10), p);
  EXPECT_EQ(ws.reserve(1000), p);
  EXPECT_EQ(ws.allocations(), 1);
  void* q = ws.reserve(100000);
  std::memset(q, 2, 100000);
  EXPECT_GE(ws.capacity(), 100000u);
  EXPECT_EQ(ws.allocations(), 2);
  EXPECT_EQ(ws.reserve(50000), q);
}

TEST(OpContext, CudaContextWithoutGpuFailsClearly) {
  if (have_gpu()) GTEST_SKIP() << "a GPU is present";
  std::vector<float> f(16, 1.0f);
  kernels::ActivationArgs<float> g;
  g.act = Activation::Relu, g.n = 4, g.a = f.data(), g.out = f.data();
  kernels::Context ctx(Backend::Cuda);
  try {
    kernels::activation(ctx, g);
    ADD_FAILURE() << "no moe::Error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("activation: "), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("cuda backend is not available"), std::string::npos) << e.what();
  }
}

// One registry of instruction sets: a cap applies to every family (each takes its best set under
// it), one family can be set alone, and names are checked against the family and the CPU.
TEST(CpuIsa, OneRegistryForEveryFamily) {
  struct Restore {
    std::string f32 = kernels::gemm_isa(), bf16 = kernels::gemm_bf16_isa(), quant = kernels::gemm_quant_isa();
    ~Restore() {
      kernels::set_gemm_isa(f32);
      kernels::set_gemm_bf16_isa(bf16);
      kernels::set_gemm_quant_isa(quant);
    }
  } restore;
  EXPECT_EQ(kernels::cpu_isa_names().front(), "generic");
  EXPECT_TRUE(kernels::cpu_isa_supported("generic"));
  EXPECT_FALSE(kernels::cpu_isa_supported("sse9"));
  kernels::set_cpu_isa("generic");
  EXPECT_EQ(kernels::cpu_isa_summary(), "f32 generic, bf16 generic, int8/int4 generic");
  if (kernels::cpu_isa_supported("avx2")) {
    kernels::set_cpu_isa("avx2");
    EXPECT_EQ(kernels::cpu_isa_summary(), "f32 avx2, bf16 avx2, int8/int4 avx2");
  }
  if (kernels::cpu_isa_supported("avx512bf16")) {
    kernels::set_cpu_isa("avx512bf16");  // the f32 and quantized families top out at avx512
    EXPECT_EQ(kernels::cpu_isa_summary(), "f32 avx512, bf16 avx512bf16, int8/int4 avx512");
  }
  kernels::set_cpu_isa("generic");
  kernels::set_gemm_bf16_isa(restore.bf16);  // one family alone
  EXPECT_EQ(std::string(kernels::gemm_isa()), "generic");
  EXPECT_EQ(std::string(kernels::gemm_bf16_isa()), restore.bf16);
  EXPECT_THROW(kernels::set_cpu_isa("sse9"), Error);
  EXPECT_FALSE(kernels::gemm_isa_supported("avx512bf16"));  // no f32 kernel of that name
  try {
    kernels::set_gemm_quant_isa("avx512bf16");
    ADD_FAILURE() << "no moe::Error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(
                  "gemm_qw: unknown instruction set 'avx512bf16' (expected generic, avx2, avx512 or amx)"),
              std::string::npos)
        << e.what();
  }
}

}  // namespace
}  // namespace moe::ops_test
