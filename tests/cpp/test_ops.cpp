// The op consistency test over all backends (cases: test_ops_cases*.cpp, harness: op_cases.h).
//   test  Ops/OpsCase.MatchesRef/<case>__<backend>: one case on one backend, two fresh seeds, vs Ref.
//   grad  OpsGrad.* (test_ops_grad.cpp): backward ops vs finite differences in double.
//   perf  OpsPerf.Rates: GFLOP/s and GB/s per op and backend; runs only with MOE_OPS_PERF=1.
#include <gtest/gtest.h>

#include <cctype>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <set>
#include <string>
#include <vector>

#include "moe/core/parallel.h"
#include "op_cases.h"

namespace moe::ops_test {
namespace {

// One test per (case, backend): Ops/OpsCase.MatchesRef/<case>__<backend>, so that one op on one
// backend runs alone by filter (--gtest_filter='Ops/OpsCase.MatchesRef/grouped_gemm_f32*__cpu').
// A pair the op table does not support is skipped with the table's reason, never thrown.
struct CaseParam {
  size_t index = 0;  // into all_cases()
  Backend backend = Backend::Cpu;
  std::string name;  // the case's name as a test name (letters, digits, underscores)
};

const CaseList& all_cases() {
  static const CaseList cases = consistency_cases();
  return cases;
}

std::string test_name(const std::string& case_name) {
  std::string out;
  for (char ch : case_name) {
    const bool word = std::isalnum(static_cast<unsigned char>(ch)) != 0 || ch == '.';
    if (ch == '=') continue;  // "M=7" -> "M7"
    if (word) {
      out += ch == '.' ? 'p' : ch;
    } else if (!out.empty() && out.back() != '_') {
      out += '_';
    }
  }
  while (!out.empty() && out.back() == '_') out.pop_back();
  return out;
}

std::vector<CaseParam> case_params() {
  std::vector<CaseParam> out;
  std::set<std::string> seen;
  for (size_t i = 0; i < all_cases().size(); ++i) {
    std::string name = test_name(all_cases()[i]->name());
    if (!seen.insert(name).second) name.append("_").append(std::to_string(i));  // keep names unique
    for (Backend b : {Backend::Ref, Backend::Cpu, Backend::Cuda}) {
      CaseParam p;
      p.index = i, p.backend = b;
      p.name.append(name).append("__").append(kernels::backend_name(b));
      out.push_back(std::move(p));
    }
  }
  return out;
}

class OpsCase : public testing::TestWithParam<CaseParam> {};

TEST_P(OpsCase, MatchesRef) {
  const OpCase& c = *all_cases()[GetParam().index];
  const Backend b = GetParam().backend;
  if (const kernels::Support s = c.supports(b); !s) GTEST_SKIP() << "not supported: " << s.reason;
  if (!kernels::backend_available(b))
    GTEST_SKIP() << "skipped: the " << kernels::backend_name(b) << " backend is not available here";
  for (uint64_t seed : {uint64_t{1}, uint64_t{2}}) {  // fresh inputs per check
    const Buffers in = c.make(seed * 7919 + 17);
    const Buffers ref = run_case(c, Backend::Ref, in);
    const Buffers got = run_case(c, b, in);
    EXPECT_TRUE(compare_outputs(c, in, ref, got))
        << c.name() << ", seed " << seed << ", backend " << kernels::backend_name(b);
  }
}

INSTANTIATE_TEST_SUITE_P(Ops, OpsCase, testing::ValuesIn(case_params()),
                         [](const testing::TestParamInfo<CaseParam>& param) { return param.param.name; });

// What the op table says of each case: Ref and Cpu run every case; Cuda runs only float cases and
// only ops with a CUDA implementation, and says why not otherwise.
TEST(OpsCase, SupportsEveryCaseOnHostBackends) {
  for (const auto& c : all_cases()) {
    for (Backend b : {Backend::Ref, Backend::Cpu}) {
      const kernels::Support s = c->supports(b);
      EXPECT_TRUE(s.ok) << c->name() << " on " << kernels::backend_name(b) << ": " << s.reason;
    }
    const kernels::Support cuda = c->supports(Backend::Cuda);
    if (c->is_double()) {
      EXPECT_FALSE(cuda.ok) << c->name();
    }
    if (!cuda.ok) {
      EXPECT_NE(cuda.reason.find("cuda"), std::string::npos) << c->name() << ": " << cuda.reason;
    }
  }
}

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
      if (b == Backend::Ref || !c->supports(b).ok) continue;
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
