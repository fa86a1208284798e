// Dense GEMM ceiling of `moe bench layer` (see bench_dense.h).
#include "cli/bench_dense.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <vector>

#include "cli/common.h"
#include "moe/core/error.h"
#include "moe/core/rng.h"
#include "moe/core/tensor.h"

namespace moe::cli {

namespace {

// C (M, N) = A (M, K) · B^T with B stored (N, K), all contiguous f32.
void gemm_nt(kernels::Backend be, int64_t M, int64_t N, int64_t K, const float* A, const float* B, float* C) {
  kernels::GemmArgs<float> g;
  g.M = M;
  g.N = N;
  g.K = K;
  g.A = A;
  g.lda = K;
  g.B = B;
  g.ldb = K;
  g.trans_b = true;
  g.C = C;
  g.ldc = N;
  kernels::gemm(be, g);
}

}  // namespace

DenseGemmResult measure_dense_gemm(const DenseGemmSpec& s) {
  MOE_CHECK(s.rows >= 1 && s.F >= 1 && s.d >= 1, "dense GEMM: sizes must be >= 1, got rows ", s.rows, ", F ",
            s.F, ", d ", s.d);
  MOE_CHECK(s.mats == 2 || s.mats == 3, "dense GEMM: mats must be 2 or 3, got ", s.mats);
  MOE_CHECK(s.reps >= 1, "dense GEMM: reps must be >= 1, got ", s.reps);

  const Rng rng(s.seed);
  Tensor x = Tensor::empty({s.rows, s.d}, DType::F32, "dense x");     // (M, d)
  Tensor wg = Tensor::empty({s.F, s.d}, DType::F32, "dense w_gate");  // (F, d)
  Tensor wu = Tensor::empty({s.F, s.d}, DType::F32, "dense w_up");    // (F, d)
  Tensor wd = Tensor::empty({s.d, s.F}, DType::F32, "dense w_down");  // (d, F)
  Tensor g = Tensor::empty({s.rows, s.F}, DType::F32, "dense gate");  // (M, F)
  Tensor u = Tensor::empty({s.rows, s.F}, DType::F32, "dense up");    // (M, F)
  Tensor y = Tensor::empty({s.rows, s.d}, DType::F32, "dense out");   // (M, d)
  rng.fork(1).fill_normal(x, 0.0, 1.0);
  rng.fork(2).fill_normal(wg, 0.0, 1.0 / std::sqrt(static_cast<double>(s.d)));
  rng.fork(3).fill_normal(wu, 0.0, 1.0 / std::sqrt(static_cast<double>(s.d)));
  rng.fork(4).fill_normal(wd, 0.0, 1.0 / std::sqrt(static_cast<double>(s.F)));

  const float* X = x.data<float>();
  float* G = g.data<float>();
  float* U = u.data<float>();
  float* Y = y.data<float>();
  auto rep = [&] {
    if (s.mats == 3) gemm_nt(s.backend, s.rows, s.F, s.d, X, wg.data<float>(), G);
    gemm_nt(s.backend, s.rows, s.F, s.d, X, wu.data<float>(), U);
    // The down projection reads the up output (values ~N(0, 1)), as the layer reads its hidden rows.
    gemm_nt(s.backend, s.rows, s.d, s.F, U, wd.data<float>(), Y);
  };

  DenseGemmResult r;
  r.flops = 2.0 * static_cast<double>(s.rows) * static_cast<double>(s.F) * static_cast<double>(s.d) * s.mats;
  rep();  // untimed: first touch of the outputs, packing buffers, thread start-up
  std::vector<double> ms;
  for (int i = 0; i < s.reps; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    rep();
    ms.push_back(ms_since(t0));
  }
  r.best_ms = *std::min_element(ms.begin(), ms.end());
  r.median_ms = median(ms);
  r.gflops_best = r.best_ms > 0 ? r.flops / (r.best_ms * 1e6) : 0.0;
  r.gflops_median = r.median_ms > 0 ? r.flops / (r.median_ms * 1e6) : 0.0;
  return r;
}

}  // namespace moe::cli
