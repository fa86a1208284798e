// Op properties beyond agreement with the reference: thread-count determinism of the Cpu backend,
// every CPU instruction set of the GEMM micro-kernel, argument errors, and names.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "kernels/cpu/gemm_engine.h"
#include "moe/core/error.h"
#include "moe/core/parallel.h"
#include "moe/moe/router.h"
#include "op_cases.h"

namespace moe::ops_test {
namespace {

using kernels::Activation;

// Restores the thread count (or gemm instruction set) when a test ends.
struct ThreadsGuard {
  int saved = num_threads();
  ~ThreadsGuard() { set_num_threads(saved); }
};
struct IsaGuard {
  std::string saved = kernels::cpu::gemm_isa();
  ~IsaGuard() { kernels::cpu::set_gemm_isa(saved); }
};

TEST(OpsDeterminism, CpuBitIdenticalFor1To4Threads) {
  ThreadsGuard guard;
  const CaseList cases = consistency_cases();
  for (const auto& c : cases) {
    const Buffers in = c->make(5);
    set_num_threads(1);
    const Buffers one = run_case(*c, Backend::Cpu, in);
    for (int threads : {2, 4}) {
      set_num_threads(threads);
      const Buffers many = run_case(*c, Backend::Cpu, in);
      for (int id = 0; id < one.size(); ++id) {
        if (one[id].role == Role::In) continue;
        // Compare only the defined outputs (permute leaves perm's tail alone).
        const size_t n = static_cast<size_t>(c->compare_count(one, id)) * elem_size(one[id].elem);
        if (n == 0) continue;
        EXPECT_EQ(std::memcmp(one[id].bytes.data(), many[id].bytes.data(), n), 0)
            << c->name() << ": output " << one[id].name << " differs between 1 and " << threads << " threads";
      }
    }
  }
}

TEST(OpsIsa, EveryCpuGemmInstructionSetMatchesRef) {
  IsaGuard guard;
  const CaseList cases = consistency_cases();
  for (const char* isa : {"generic", "avx2", "avx512"}) {
    if (!kernels::cpu::gemm_isa_supported(isa)) {
      std::printf("[ ops ] gemm instruction set %s: not supported by this CPU, skipped\n", isa);
      continue;
    }
    kernels::cpu::set_gemm_isa(isa);
    int checked = 0;
    for (const auto& c : cases) {
      if (c->op().find("gemm") == std::string::npos) continue;
      const Buffers in = c->make(9);
      EXPECT_TRUE(compare_outputs(*c, in, run_case(*c, Backend::Ref, in), run_case(*c, Backend::Cpu, in)))
          << "instruction set " << isa;
      ++checked;
    }
    std::printf("[ ops ] gemm instruction set %s: %d cases\n", isa, checked);
  }
  EXPECT_THROW(kernels::cpu::set_gemm_isa("sse9"), Error);
}

// ---- errors ----

// Runs fn on the host backends and expects moe::Error whose message contains every part.
template <typename F>
void expect_error(F&& fn, const std::vector<std::string>& parts) {
  for (Backend b : {Backend::Ref, Backend::Cpu}) {
    try {
      fn(b);
      ADD_FAILURE() << "no moe::Error on backend " << kernels::backend_name(b) << " (expected '" << parts[0]
                    << "')";
    } catch (const Error& e) {
      for (const auto& p : parts) EXPECT_NE(std::string(e.what()).find(p), std::string::npos) << e.what();
    }
  }
}

TEST(OpsErrors, PermuteRejectsExpertIdsOutsideRange) {
  std::vector<int32_t> expert = {0, 1, 9, 2}, offsets(5), perm(4), pos(4);
  kernels::PermuteArgs p;
  p.N = 4, p.E = 4, p.expert = expert.data(), p.offsets = offsets.data(), p.perm = perm.data(),
  p.pos = pos.data();
  expect_error([&](Backend b) { kernels::permute(b, p); }, {"permute", "expert[2] = 9", "E = 4"});
  expert[2] = 4;  // == E
  expect_error([&](Backend b) { kernels::permute(b, p); }, {"permute", "expert[2] = 4"});
  expert[2] = -1;
  expect_error([&](Backend b) { kernels::permute(b, p); }, {"permute", "expert[2] = -1"});
  p.E = 0;
  expect_error([&](Backend b) { kernels::permute(b, p); }, {"permute", "E"});
#ifdef MOE_HAVE_CUDA
  if (have_gpu()) {  // the device flags the bad id, the host throws
    expert[2] = 9;
    p.E = 4;
    Buffers bufs;
    const int ids[4] = {bufs.add<int32_t>("expert", 4), bufs.add<int32_t>("offsets", 5),
                        bufs.add<int32_t>("perm", 4), bufs.add<int32_t>("pos", 4)};
    std::copy(expert.begin(), expert.end(), bufs.host<int32_t>(ids[0]));
    DeviceCopies dev(bufs, Backend::Cuda);
    p.expert = bufs.arg<int32_t>(ids[0]), p.offsets = bufs.arg<int32_t>(ids[1]);
    p.perm = bufs.arg<int32_t>(ids[2]), p.pos = bufs.arg<int32_t>(ids[3]);
    try {
      kernels::permute(Backend::Cuda, p);
      ADD_FAILURE() << "no moe::Error from the cuda permute";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("expert[2] = 9"), std::string::npos) << e.what();
    }
  }
#endif
}

TEST(OpsErrors, NullPointersAndBadSizesThrow) {
  std::vector<float> buf(64, 1.0f);
  std::vector<int32_t> idx(8, 0);
  kernels::GemmArgs<float> g;
  g.M = 2, g.N = 2, g.K = 2, g.A = buf.data(), g.lda = 2, g.B = nullptr, g.ldb = 2, g.C = buf.data(),
  g.ldc = 2;
  expect_error([&](Backend b) { kernels::gemm(b, g); }, {"gemm", "B is null"});
  g.B = buf.data(), g.M = -3;
  expect_error([&](Backend b) { kernels::gemm(b, g); }, {"gemm", "M must be >= 0", "-3"});
  g.M = 2, g.ldc = 1;
  expect_error([&](Backend b) { kernels::gemm(b, g); }, {"gemm", "ldc = 1"});

  kernels::GroupedGemmArgs<float> gg;
  gg.E = 2, gg.N = 2, gg.K = 2, gg.offsets = nullptr, gg.A = buf.data(), gg.lda = 2, gg.W = buf.data();
  gg.C = buf.data(), gg.ldc = 2;
  expect_error([&](Backend b) { kernels::grouped_gemm(b, gg); }, {"grouped_gemm", "offsets is null"});
  idx = {0, 3, 1};  // decreasing offsets
  gg.offsets = idx.data();
  expect_error([&](Backend b) { kernels::grouped_gemm(b, gg); }, {"grouped_gemm", "must not decrease"});

  kernels::GroupedWgradArgs<float> gw;
  gw.E = 1, gw.N = 2, gw.K = 2, gw.offsets = idx.data(), gw.dC = buf.data(), gw.ldc = 2, gw.A = buf.data();
  gw.lda = 2, gw.dW = nullptr;
  expect_error([&](Backend b) { kernels::grouped_gemm_wgrad(b, gw); }, {"grouped_gemm_wgrad", "dW is null"});

  kernels::ActivationArgs<float> ga;
  ga.act = Activation::SwiGLU, ga.n = 4, ga.a = buf.data(), ga.b = nullptr, ga.out = buf.data();
  expect_error([&](Backend b) { kernels::activation(b, ga); }, {"activation", "b (swiglu) is null"});
  kernels::ActivationBackwardArgs<float> gab;
  gab.act = Activation::Gelu, gab.n = 4, gab.a = buf.data(), gab.dout = buf.data(), gab.da = nullptr;
  expect_error([&](Backend b) { kernels::activation_backward(b, gab); },
               {"activation_backward", "da is null"});

  kernels::CombineArgs<float> gc;
  gc.T_ = 2, gc.D = 4, gc.tok_offsets = idx.data(), gc.tok_assign = idx.data(), gc.pos = nullptr;
  gc.X = buf.data(), gc.Y = buf.data();
  expect_error([&](Backend b) { kernels::combine(b, gc); }, {"combine", "pos is null"});
  kernels::CombineBackwardArgs<float> gcb;
  gcb.N = 2, gcb.D = 4, gcb.token = idx.data(), gcb.pos = idx.data(), gcb.dY = buf.data(),
  gcb.dX = buf.data();
  gcb.dweight = buf.data(), gcb.X = nullptr;
  expect_error([&](Backend b) { kernels::combine_backward(b, gcb); },
               {"combine_backward", "X (needed for dweight)"});
}

TEST(OpsErrors, CudaRequestsFailClearlyWithoutGpuOrForDouble) {
  std::vector<double> buf(16, 1.0);
  kernels::ActivationArgs<double> g;
  g.act = Activation::Relu, g.n = 4, g.a = buf.data(), g.out = buf.data();
  EXPECT_THROW(kernels::activation(Backend::Cuda, g), Error);  // double is never supported on cuda
  try {
    kernels::activation(Backend::Cuda, g);
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("cuda"), std::string::npos) << e.what();
  }
  if (!have_gpu()) {
    std::vector<float> f(16, 1.0f);
    kernels::ActivationArgs<float> gf;
    gf.act = Activation::Relu, gf.n = 4, gf.a = f.data(), gf.out = f.data();
    EXPECT_THROW(kernels::activation(Backend::Cuda, gf), Error);
  }
}

// ---- names ----

TEST(OpsNames, RoundTripAndUnknownNamesThrow) {
  for (Backend b : {Backend::Ref, Backend::Cpu, Backend::Cuda}) {
    EXPECT_EQ(kernels::backend_from_name(kernels::backend_name(b)), b);
  }
  for (Activation a : {Activation::SwiGLU, Activation::Gelu, Activation::Relu, Activation::Silu}) {
    EXPECT_EQ(kernels::activation_from_name(kernels::activation_name(a)), a);
  }
  EXPECT_THROW(kernels::backend_from_name("tpu"), Error);
  EXPECT_THROW(kernels::activation_from_name("tanh"), Error);
  const std::vector<Backend> av = kernels::available_backends();
  ASSERT_GE(av.size(), 2u);
  EXPECT_EQ(av[0], Backend::Ref);
  EXPECT_EQ(av[1], Backend::Cpu);
  EXPECT_EQ(kernels::backend_available(Backend::Cuda), av.size() == 3);
}

// The router's top-k (small k: insertion selection; large k: partial sort) against a full stable
// sort by value descending (NaN as -inf), ties to the lower index: identical for every k.
TEST(RouterTopk, SelectionMatchesStableSort) {
  const Rng rng(21);
  for (int64_t n : {1, 5, 16, 40, 64}) {
    std::vector<double> v(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) {
      const uint64_t u = rng.below(static_cast<uint64_t>(i), 8);  // few distinct values: many ties
      v[i] = u == 6 ? -INFINITY : u == 7 ? NAN : static_cast<double>(u % 3);
    }
    std::vector<int32_t> order(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) order[i] = static_cast<int32_t>(i);
    auto key = [&](int32_t i) { return std::isnan(v[i]) ? -INFINITY : v[i]; };
    std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return key(a) > key(b); });
    for (int64_t k = 1; k <= n; ++k) {
      std::vector<int32_t> got(static_cast<size_t>(k), -1);
      topk_desc(v.data(), n, k, got.data());
      for (int64_t j = 0; j < k; ++j)
        ASSERT_EQ(got[j], order[j]) << "n = " << n << ", k = " << k << ", j = " << j;
    }
  }
}

}  // namespace
}  // namespace moe::ops_test
