// grad mode: the backward ops against central finite differences of the forward ops, in double.
//   activation_backward  vs  d activation / d a (and d b for SwiGLU)
//   combine_backward     vs  d <dY, combine(X, w)> / d X and / d w
//   grouped_gemm_wgrad   vs  d <dC, grouped_gemm(A, W)> / d W
//   grouped_ffn_down_backward (+ wgrad with dC_gather) vs d L / d G, U, scale, W_down of the
//                        unfused activation + grouped_gemm
// Tolerances: a central difference with step h has truncation error <= h^2 / 6 * |f'''| and
// rounding error ~ u_double * |f| / h. With h = 1e-5 on O(1) smooth functions both are < 1e-9, so
// 1e-7 relative to the magnitude of the terms is far below what a wrong formula gives. combine and
// grouped_gemm are linear in the perturbed variable: truncation is zero, only rounding remains.
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "op_cases.h"

namespace moe::ops_test {
namespace {

using kernels::Activation;

class OpsGrad : public testing::TestWithParam<Backend> {
 protected:
  void SetUp() override {
    if (GetParam() == Backend::Cuda) {
      GTEST_SKIP() << "skipped: grad mode runs in double and the cuda backend is float-only "
                      "(its backward ops are checked against Ref by Ops/OpsCase.MatchesRef/*__cuda)";
    }
  }
};

std::vector<double> values(const Rng& rng, int64_t n, double scale) {
  std::vector<double> v(static_cast<size_t>(n));
  fill_values(rng, v.data(), n);
  for (double& x : v) x *= scale;
  return v;
}

TEST_P(OpsGrad, ActivationBackward) {
  const Backend be = GetParam();
  const int64_t n = 300;
  const double h = 1e-5;
  for (Activation act : {Activation::SwiGLU, Activation::Gelu, Activation::Relu, Activation::Silu}) {
    const Rng rng(11);
    std::vector<double> a = values(rng.fork(0), n, 3.0), b = values(rng.fork(1), n, 1.0);
    const std::vector<double> dout = values(rng.fork(2), n, 1.0);
    for (double& x : a) {
      if (std::fabs(x) < 1e-3) x += 1e-2;  // relu has a kink at 0
    }
    const bool swiglu = act == Activation::SwiGLU;
    // f(a + s_a, b + s_b) for all elements at once (the op is elementwise).
    auto forward = [&](double s_a, double s_b) {
      std::vector<double> ap(a), bp(b), out(static_cast<size_t>(n));
      for (auto& x : ap) x += s_a;
      for (auto& x : bp) x += s_b;
      kernels::ActivationArgs<double> g;
      g.act = act;
      g.n = n;
      g.a = ap.data();
      g.b = swiglu ? bp.data() : nullptr;
      g.out = out.data();
      kernels::activation(be, g);
      return out;
    };
    const std::vector<double> fa_p = forward(h, 0), fa_m = forward(-h, 0);
    const std::vector<double> fb_p = forward(0, h), fb_m = forward(0, -h);
    std::vector<double> da(static_cast<size_t>(n), NAN), db(static_cast<size_t>(n), NAN);
    kernels::ActivationBackwardArgs<double> g;
    g.act = act;
    g.n = n;
    g.a = a.data();
    g.b = swiglu ? b.data() : nullptr;
    g.dout = dout.data();
    g.da = da.data();
    g.db = swiglu ? db.data() : nullptr;
    kernels::activation_backward(be, g);
    for (int64_t i = 0; i < n; ++i) {
      const double mag = std::fabs(dout[i]) * (1 + std::fabs(a[i])) * (1 + std::fabs(b[i]));
      const double num_da = dout[i] * (fa_p[i] - fa_m[i]) / (2 * h);
      ASSERT_NEAR(da[i], num_da, 1e-7 * mag)
          << kernels::activation_name(act) << " da[" << i << "], a = " << a[i];
      if (swiglu) {
        const double num_db = dout[i] * (fb_p[i] - fb_m[i]) / (2 * h);
        ASSERT_NEAR(db[i], num_db, 1e-7 * mag) << "swiglu db[" << i << "], a = " << a[i];
      }
    }
  }
}

TEST_P(OpsGrad, CombineBackward) {
  const Backend be = GetParam();
  const int64_t T = 7, E = 4, k = 2, D = 5, n = T * k;
  const double h = 1e-3;
  const Rng rng(12);
  const Routing rt = make_routing(rng.fork(0), T, E, k, Pattern::Random, 0.2);
  const int64_t rows = rt.rows();
  std::vector<double> X = values(rng.fork(1), rows * D, 1.0), w = values(rng.fork(2), n, 1.0);
  const std::vector<double> dY = values(rng.fork(3), T * D, 1.0);
  std::vector<int32_t> tok_offsets, tok_assign, token;
  for (int64_t t = 0; t <= T; ++t) tok_offsets.push_back(static_cast<int32_t>(t * k));
  for (int64_t a = 0; a < n; ++a) {
    tok_assign.push_back(static_cast<int32_t>(a));
    token.push_back(static_cast<int32_t>(a / k));
  }
  auto loss = [&]() {  // <dY, combine(X, w)>
    std::vector<double> Y(static_cast<size_t>(T * D));
    kernels::CombineArgs<double> g;
    g.T_ = T, g.D = D;
    g.tok_offsets = tok_offsets.data(), g.tok_assign = tok_assign.data(), g.pos = rt.pos.data();
    g.weight = w.data(), g.X = X.data(), g.Y = Y.data();
    kernels::combine(be, g);
    double l = 0;
    for (size_t i = 0; i < Y.size(); ++i) l += dY[i] * Y[i];
    return l;
  };
  auto numeric = [&](double& x) {
    const double x0 = x;
    x = x0 + h;
    const double lp = loss();
    x = x0 - h;
    const double lm = loss();
    x = x0;
    return (lp - lm) / (2 * h);
  };
  std::vector<double> dX(static_cast<size_t>(rows * D), NAN), dw(static_cast<size_t>(n), NAN);
  kernels::CombineBackwardArgs<double> g;
  g.N = n, g.D = D, g.token = token.data(), g.pos = rt.pos.data(), g.weight = w.data();
  g.dY = dY.data(), g.X = X.data(), g.dX = dX.data(), g.dweight = dw.data();
  kernels::combine_backward(be, g);
  for (size_t i = 0; i < X.size(); ++i) ASSERT_NEAR(dX[i], numeric(X[i]), 1e-9) << "dX[" << i << "]";
  for (size_t a = 0; a < w.size(); ++a) ASSERT_NEAR(dw[a], numeric(w[a]), 1e-9) << "dweight[" << a << "]";
}

TEST_P(OpsGrad, GroupedGemmWgrad) {
  const Backend be = GetParam();
  const int64_t E = 4, N = 5, K = 6, T = 9, k = 2;
  const double h = 1e-3;
  for (Pattern pattern : {Pattern::Random, Pattern::EvenOnly}) {  // EvenOnly: experts 1, 3 have no rows
    for (bool gather : {true, false}) {
      const Rng rng(13);
      const Routing rt = make_routing(rng.fork(0), T, E, k, pattern, 0.1);
      const int64_t rows = rt.rows(), a_rows = gather ? T : rows;
      std::vector<int32_t> rows_of(static_cast<size_t>(rows));
      for (int64_t p = 0; p < rows; ++p)
        rows_of[static_cast<size_t>(p)] = rt.perm[static_cast<size_t>(p)] / static_cast<int32_t>(k);
      const std::vector<double> A = values(rng.fork(1), a_rows * K, 1.0),
                                dC = values(rng.fork(2), rows * N, 1.0);
      std::vector<double> W = values(rng.fork(3), E * N * K, 1.0);
      auto loss = [&]() {  // <dC, grouped_gemm(A, W)>
        std::vector<double> C(static_cast<size_t>(rows * N));
        kernels::GroupedGemmArgs<double> g;
        g.E = E, g.N = N, g.K = K, g.offsets = rt.offsets.data();
        g.A = A.data(), g.lda = K, g.gather = gather ? rows_of.data() : nullptr;
        g.W = W.data(), g.C = C.data(), g.ldc = N;
        kernels::grouped_gemm(be, g);
        double l = 0;
        for (size_t i = 0; i < C.size(); ++i) l += dC[i] * C[i];
        return l;
      };
      std::vector<double> dW(W.size(), NAN);
      kernels::GroupedWgradArgs<double> g;
      g.E = E, g.N = N, g.K = K, g.offsets = rt.offsets.data();
      g.dC = dC.data(), g.ldc = N, g.A = A.data(), g.lda = K, g.gather = gather ? rows_of.data() : nullptr;
      g.dW = dW.data();
      kernels::grouped_gemm_wgrad(be, g);
      for (size_t i = 0; i < W.size(); ++i) {
        const double w0 = W[i];
        W[i] = w0 + h;
        const double lp = loss();
        W[i] = w0 - h;
        const double lm = loss();
        W[i] = w0;
        ASSERT_NEAR(dW[i], (lp - lm) / (2 * h), 1e-9)
            << pattern_name(pattern) << (gather ? " gather" : "") << " dW[" << i << "]";
      }
    }
  }
}

// grouped_ffn_down_backward vs d L / d G, d U, d scale of
//   L = Σ_p <dY[row(p)], scale[p] * act(G, U)[p] · W_down_e^T>   (activation + grouped_gemm).
TEST_P(OpsGrad, FfnDownBackward) {
  const Backend be = GetParam();
  const int64_t E = 4, F = 5, D = 6, T = 9, k = 2;
  const double h = 1e-5;
  for (Activation act : {Activation::SwiGLU, Activation::Gelu, Activation::Silu, Activation::Relu}) {
    for (Pattern pattern : {Pattern::Random, Pattern::EvenOnly}) {
      const bool swiglu = act == Activation::SwiGLU;
      const Rng rng(14);
      const Routing rt = make_routing(rng.fork(0), T, E, k, pattern, 0.1);
      const int64_t M = rt.rows();
      std::vector<int32_t> tok(static_cast<size_t>(M));
      for (int64_t p = 0; p < M; ++p)
        tok[static_cast<size_t>(p)] = rt.perm[static_cast<size_t>(p)] / static_cast<int32_t>(k);
      const std::vector<double> dY = values(rng.fork(1), T * D, 1.0);
      std::vector<double> W = values(rng.fork(2), E * D * F, 1.0);
      std::vector<double> G = values(rng.fork(3), M * F, 2.0), U = values(rng.fork(4), M * F, 2.0);
      std::vector<double> scale = values(rng.fork(5), M, 1.0);
      for (double& x : U) {
        if (std::fabs(x) < 1e-3) x += 1e-2;  // relu has a kink at 0
      }
      auto loss = [&]() {
        std::vector<double> H(static_cast<size_t>(M * F)), O(static_cast<size_t>(M * D));
        kernels::ActivationArgs<double> a;
        a.act = act, a.n = M * F, a.a = swiglu ? G.data() : U.data(), a.b = swiglu ? U.data() : nullptr;
        a.out = H.data();
        kernels::activation(be, a);
        kernels::GroupedGemmArgs<double> g;
        g.E = E, g.N = D, g.K = F, g.offsets = rt.offsets.data(), g.A = H.data(), g.lda = F;
        g.W = W.data(), g.C = O.data(), g.ldc = D;
        kernels::grouped_gemm(be, g);
        double l = 0;
        for (int64_t p = 0; p < M; ++p)
          for (int64_t i = 0; i < D; ++i) l += dY[tok[p] * D + i] * scale[p] * O[p * D + i];
        return l;
      };
      auto numeric = [&](double& x) {
        const double x0 = x;
        x = x0 + h;
        const double lp = loss();
        x = x0 - h;
        const double lm = loss();
        x = x0;
        return (lp - lm) / (2 * h);
      };
      std::vector<double> dG(G.size(), NAN), dU(U.size(), NAN), Hs(U.size(), NAN), ds(scale.size(), NAN);
      kernels::FfnDownBackwardArgs<double> g;
      g.act = act, g.E = E, g.F = F, g.D = D, g.offsets = rt.offsets.data();
      g.dY = dY.data(), g.ldy = D, g.gather = tok.data(), g.scale = scale.data(), g.W_down = W.data();
      g.G = swiglu ? G.data() : nullptr, g.ldg = F, g.U = U.data(), g.ldu = F;
      g.dG = swiglu ? dG.data() : nullptr, g.lddg = F, g.dU = dU.data(), g.lddu = F;
      g.Hs = Hs.data(), g.ldhs = F, g.dscale = ds.data();
      kernels::grouped_ffn_down_backward(be, g);
      const std::string what = std::string(kernels::activation_name(act)) + " " + pattern_name(pattern);
      for (size_t i = 0; i < U.size(); ++i) {
        ASSERT_NEAR(dU[i], numeric(U[i]), 1e-7 * (1 + std::fabs(dU[i]))) << what << " dU[" << i << "]";
        if (swiglu) {
          ASSERT_NEAR(dG[i], numeric(G[i]), 1e-7 * (1 + std::fabs(dG[i]))) << what << " dG[" << i << "]";
        }
      }
      for (size_t p = 0; p < scale.size(); ++p)
        ASSERT_NEAR(ds[p], numeric(scale[p]), 1e-7 * (1 + std::fabs(ds[p])))
            << what << " dscale[" << p << "]";
      // Hs = scale * h: the weight gradient of W_down is Σ dY^T Hs, i.e. d L / d W_down.
      std::vector<double> dWd(W.size(), NAN);
      kernels::GroupedWgradArgs<double> w;
      w.E = E, w.N = D, w.K = F, w.offsets = rt.offsets.data(), w.dC = dY.data(), w.ldc = D;
      w.dC_gather = tok.data(), w.A = Hs.data(), w.lda = F, w.dW = dWd.data();
      kernels::grouped_gemm_wgrad(be, w);
      for (size_t i = 0; i < W.size(); ++i) {
        const double w0 = W[i];
        W[i] = w0 + h;
        const double lp = loss();
        W[i] = w0 - h;
        const double lm = loss();
        W[i] = w0;
        ASSERT_NEAR(dWd[i], (lp - lm) / (2 * h), 1e-7 * (1 + std::fabs(dWd[i])))
            << what << " dW_down[" << i << "]";
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Ops, OpsGrad, testing::Values(Backend::Ref, Backend::Cpu, Backend::Cuda),
                         [](const testing::TestParamInfo<Backend>& param) {
                           return std::string(kernels::backend_name(param.param));
                         });

}  // namespace
}  // namespace moe::ops_test
