// The op consistency test over all backends (cases: test_ops_cases*.cpp, harness: op_cases.h).
//   test  Ops/OpsBackend.MatchesRef/<backend>: every case, two fresh seeds, vs the Ref backend.
//   grad  OpsGrad.* (test_ops_grad.cpp): backward ops vs finite differences in double.
//   perf  OpsPerf.Rates: GFLOP/s and GB/s per op and backend; runs only with MOE_OPS_PERF=1.
#include <gtest/gtest.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "moe/core/parallel.h"
#include "op_cases.h"

namespace moe::ops_test {
namespace {

class OpsBackend : public testing::TestWithParam<Backend> {};

TEST_P(OpsBackend, MatchesRef) {
  const Backend b = GetParam();
  if (b == Backend::Cuda && !have_gpu()) GTEST_SKIP() << "skipped: no GPU";
  const CaseList cases = consistency_cases();
  int checks = 0, unsupported = 0;
  for (const auto& c : cases) {
    if (!c->supports(b)) {
      ++unsupported;
      continue;
    }
    for (uint64_t seed : {uint64_t{1}, uint64_t{2}}) {  // fresh inputs per check
      const Buffers in = c->make(seed * 7919 + 17);
      const Buffers ref = run_case(*c, Backend::Ref, in);
      const Buffers got = run_case(*c, b, in);
      EXPECT_TRUE(compare_outputs(*c, in, ref, got))
          << "seed " << seed << ", backend " << kernels::backend_name(b);
      ++checks;
    }
  }
  std::printf("[ ops ] %s: %zu cases, %d checks, %d cases not supported (double on cuda)\n",
              kernels::backend_name(b), cases.size(), checks, unsupported);
}

INSTANTIATE_TEST_SUITE_P(Ops, OpsBackend, testing::Values(Backend::Ref, Backend::Cpu, Backend::Cuda),
                         [](const testing::TestParamInfo<Backend>& param) {
                           return std::string(kernels::backend_name(param.param));
                         });

// The harness itself: a poisoned (NaN) output never passes, the reference passes against itself.
TEST(OpsHarness, PoisonedOutputsAreDetected) {
  const CaseList cases = consistency_cases();
  const auto& c = *cases.front();  // a gemm
  const Buffers in = c.make(3);
  const Buffers ref = run_case(c, Backend::Ref, in);
  Buffers poisoned = ref;
  poison_outputs(poisoned);
  EXPECT_FALSE(compare_outputs(c, in, ref, poisoned)) << "NaN must never pass a comparison";
  EXPECT_TRUE(compare_outputs(c, in, ref, ref));
}

// ---- perf ----

double seconds_per_run(const OpCase& c, Backend b, Buffers& bufs) {
  DeviceCopies dev(bufs, b);
  c.run(b, bufs);  // warm-up
  dev.synchronize();
  int reps = 1;
  for (;;) {
    const auto t0 = std::chrono::steady_clock::now();
    for (int r = 0; r < reps; ++r) c.run(b, bufs);
    dev.synchronize();
    const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (dt > 0.2 || reps >= 1 << 16) return dt / reps;
    reps *= 2;
  }
}

TEST(OpsPerf, Rates) {
  const char* env = std::getenv("MOE_OPS_PERF");
  if (env == nullptr || std::string(env) != "1") GTEST_SKIP() << "set MOE_OPS_PERF=1 to run the perf mode";
  std::printf("%-72s %-7s %10s %10s %9s\n", "case", "backend", "time (us)", "GFLOP/s", "GB/s");
  for (const auto& c : perf_cases()) {
    for (Backend b : kernels::available_backends()) {
      if (b == Backend::Ref || !c->supports(b)) continue;
      Buffers bufs = c->make(1);
      const double t = seconds_per_run(*c, b, bufs);
      std::printf("%-72s %-7s %10.1f %10.2f %9.2f\n", c->name().c_str(), kernels::backend_name(b), t * 1e6,
                  c->flops() / t * 1e-9, c->bytes() / t * 1e-9);
    }
  }
  std::printf("(cpu threads: %d)\n", num_threads());
}

}  // namespace
}  // namespace moe::ops_test
