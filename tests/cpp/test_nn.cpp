// RMSNorm, RoPE and cross-entropy (moe/model/nn.h): plain double references written here, float
// and double against them, finite-difference gradients in double, bit-identical results for 1, 2
// and 4 threads, edge cases and bad input. Attention is in test_nn_attention.cpp.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "model/nn_math.h"
#include "moe/core/error.h"
#include "moe/model/nn.h"
#include "nn_testutil.h"

namespace moe::testing::nn {
namespace {

using moe::nn::CrossEntropyResult;
using moe::nn::RmsNormArgs;
using moe::nn::RopeArgs;

// ---------------------------------------------------------------------------------------------
// Plain references.

// y (n, d) = x · rstd · w, rstd = 1 / sqrt(mean(x²) + eps).
std::vector<double> ref_rmsnorm(const RmsNormArgs& a, const std::vector<double>& x,
                                const std::vector<double>& w, std::vector<double>* rstd = nullptr) {
  std::vector<double> y(x.size());
  if (rstd) rstd->assign(static_cast<size_t>(a.n), 0.0);
  for (int64_t r = 0; r < a.n; ++r) {
    double ss = 0;
    for (int64_t j = 0; j < a.d; ++j) ss += x[r * a.d + j] * x[r * a.d + j];
    const double rs = 1.0 / std::sqrt(ss / a.d + a.eps);
    if (rstd) (*rstd)[r] = rs;
    for (int64_t j = 0; j < a.d; ++j) y[r * a.d + j] = x[r * a.d + j] * rs * w[j];
  }
  return y;
}

// The rotate_half formula of the header, angle = pos · theta^(-2i/hd).
std::vector<double> ref_rope(const RopeArgs& a, const std::vector<int32_t>& pos,
                             const std::vector<double>& x) {
  std::vector<double> y = x;
  const int64_t half = a.hd / 2;
  for (int64_t r = 0; r < a.n; ++r) {
    for (int64_t h = 0; h < a.heads; ++h) {
      for (int64_t i = 0; i < half; ++i) {
        const double ang = pos[r] * std::pow(a.theta, -2.0 * i / a.hd);
        const int64_t o = (r * a.heads + h) * a.hd;
        y[o + i] = x[o + i] * std::cos(ang) - x[o + i + half] * std::sin(ang);
        y[o + i + half] = x[o + i + half] * std::cos(ang) + x[o + i] * std::sin(ang);
      }
    }
  }
  return y;
}

// Σ over counted rows of −log softmax(x)[t], and grad_scale · (softmax − onehot).
CrossEntropyResult ref_ce(int64_t n, int64_t V, const std::vector<double>& x, const std::vector<int32_t>& t,
                          double grad_scale, std::vector<double>* grad) {
  CrossEntropyResult res;
  grad->assign(static_cast<size_t>(n * V), 0.0);
  for (int64_t r = 0; r < n; ++r) {
    if (t[r] < 0) continue;
    double m = -INFINITY;
    for (int64_t j = 0; j < V; ++j) m = std::max(m, x[r * V + j]);
    double s = 0;
    for (int64_t j = 0; j < V; ++j) s += std::exp(x[r * V + j] - m);
    const double lse = m + std::log(s);
    res.loss_sum += lse - x[r * V + t[r]];
    ++res.count;
    for (int64_t j = 0; j < V; ++j)
      (*grad)[r * V + j] = grad_scale * (std::exp(x[r * V + j] - lse) - (j == t[r] ? 1.0 : 0.0));
  }
  return res;
}

std::vector<int32_t> positions(int64_t n, int32_t start, int32_t step) {
  std::vector<int32_t> p(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) p[i] = start + step * static_cast<int32_t>(i);
  return p;
}

// ---------------------------------------------------------------------------------------------
// The vectorisable float exp of the softmax loops (src/model/nn_math.h).

TEST(NnMath, ExpNonpositiveWithinOneUlp) {
  double worst = 0;
  for (int i = 0; i <= 400000; ++i) {
    const float x = -88.0f * static_cast<float>(i) / 400000.0f;
    const double want = std::exp(static_cast<double>(x));
    const float got = moe::nn::detail::exp_nonpositive(x);
    if (want < std::numeric_limits<float>::min()) {  // denormal results may flush to 0
      ASSERT_LE(std::abs(got - want), std::numeric_limits<float>::min()) << "x = " << x;
      continue;
    }
    const float wf = static_cast<float>(want);
    const double ulp = std::nextafter(wf, INFINITY) - wf;
    worst = std::max(worst, std::abs(got - want) / ulp);
  }
  EXPECT_LE(worst, 1.0);
  EXPECT_EQ(moe::nn::detail::exp_nonpositive(0.0f), 1.0f);
  EXPECT_EQ(moe::nn::detail::exp_nonpositive(-0.0f), 1.0f);
  EXPECT_EQ(moe::nn::detail::exp_nonpositive(-INFINITY), 0.0f);
  EXPECT_EQ(moe::nn::detail::exp_nonpositive(-1e30f), 0.0f);
  EXPECT_EQ(moe::nn::detail::exp_nonpositive(-1.2e7f), 0.0f);
  EXPECT_TRUE(std::isnan(moe::nn::detail::exp_nonpositive(NAN)));
}

// ---------------------------------------------------------------------------------------------
// RMSNorm

template <typename T>
void check_rmsnorm_forward(int64_t n, int64_t d, double tol) {
  const RmsNormArgs a{n, d, 1e-5};
  const std::vector<double> x = randn(n * d, 11 + n), w = randn(d, 12 + d, 0.5);
  std::vector<double> rs_ref;
  const std::vector<double> y_ref = ref_rmsnorm(a, x, w, &rs_ref);
  const std::vector<T> xt = cast<T>(x), wt = cast<T>(w);
  std::vector<T> y = poisoned<T>(n * d), rs = poisoned<T>(n);
  moe::nn::rmsnorm_forward<T>(a, xt.data(), wt.data(), y.data(), rs.data());
  EXPECT_LE(rel_err(y, y_ref), tol) << "n = " << n << ", d = " << d;
  EXPECT_LE(rel_err(rs, rs_ref), tol);
  // In place (y aliases x) gives the same bits.
  std::vector<T> inplace = xt;
  moe::nn::rmsnorm_forward<T>(a, inplace.data(), wt.data(), inplace.data(), nullptr);
  EXPECT_TRUE(same_bits(inplace, y));
}

TEST(NnRmsNorm, ForwardMatchesReference) {
  for (auto [n, d] : {std::pair<int64_t, int64_t>{1, 1}, {7, 5}, {70, 33}, {3, 512}}) {
    check_rmsnorm_forward<double>(n, d, 1e-14);
    check_rmsnorm_forward<float>(n, d, f32_tol(d));
  }
}

TEST(NnRmsNorm, GradientFiniteDifference) {
  // n = 70 spans three row blocks of the weight-gradient reduction.
  for (auto [n, d] : {std::pair<int64_t, int64_t>{1, 1}, {3, 4}, {70, 5}}) {
    const RmsNormArgs a{n, d, 1e-3};
    std::vector<double> x = randn(n * d, 21), w = randn(d, 22, 0.7);
    const std::vector<double> dy = randn(n * d, 23);
    auto loss = [&] { return dot(dy, ref_rmsnorm(a, x, w)); };
    const std::vector<double> gx = numeric_grad(x, loss), gw = numeric_grad(w, loss);

    std::vector<double> y(x.size()), rs(static_cast<size_t>(n));
    moe::nn::rmsnorm_forward<double>(a, x.data(), w.data(), y.data(), rs.data());
    std::vector<double> dx = poisoned<double>(n * d), dw(static_cast<size_t>(d), 0.25);  // dw accumulates
    moe::nn::rmsnorm_backward<double>(a, x.data(), w.data(), rs.data(), dy.data(), dx.data(), dw.data());
    for (double& v : dw) v -= 0.25;
    EXPECT_LE(rel_err(dx, gx), 1e-7) << "n = " << n << ", d = " << d;
    EXPECT_LE(rel_err(dw, gw), 1e-7);
    // Without saved rstd, and with dx aliasing dy: the same values.
    std::vector<double> inplace = dy;
    moe::nn::rmsnorm_backward<double>(a, x.data(), w.data(), nullptr, inplace.data(), inplace.data(),
                                      nullptr);
    EXPECT_LE(rel_err(inplace, to_double(dx)), 1e-14);
  }
}

TEST(NnRmsNorm, FloatBackwardMatchesDouble) {
  const int64_t n = 100, d = 48;
  const RmsNormArgs a{n, d, 1e-6};
  const std::vector<double> x = randn(n * d, 31), w = randn(d, 32), dy = randn(n * d, 33);
  std::vector<double> dx64(x.size()), dw64(static_cast<size_t>(d), 0.0);
  moe::nn::rmsnorm_backward<double>(a, x.data(), w.data(), nullptr, dy.data(), dx64.data(), dw64.data());
  const std::vector<float> xf = cast<float>(x), wf = cast<float>(w), dyf = cast<float>(dy);
  std::vector<float> rs(static_cast<size_t>(n)), y(x.size()), dx = poisoned<float>(n * d);
  std::vector<float> dw(static_cast<size_t>(d), 0.0f);
  moe::nn::rmsnorm_forward<float>(a, xf.data(), wf.data(), y.data(), rs.data());
  moe::nn::rmsnorm_backward<float>(a, xf.data(), wf.data(), rs.data(), dyf.data(), dx.data(), dw.data());
  EXPECT_LE(rel_err(dx, dx64), f32_tol(d));
  EXPECT_LE(rel_err(dw, dw64), f32_tol(n));
}

TEST(NnRmsNorm, BitIdenticalAcrossThreadCounts) {
  // Odd row counts: a partial last row block; 9001 rows: more rows per block (at most 256 blocks).
  for (auto [n, d] : {std::pair<int64_t, int64_t>{203, 96}, {9001, 12}}) {
    const RmsNormArgs a{n, d, 1e-6};
    const std::vector<float> x = cast<float>(randn(n * d, 41)), w = cast<float>(randn(d, 42)),
                             dy = cast<float>(randn(n * d, 43));
    std::vector<std::vector<float>> outs;
    for (int threads : {1, 2, 4}) {
      ThreadCount tc(threads);
      std::vector<float> y = poisoned<float>(n * d), rs = poisoned<float>(n), dx = poisoned<float>(n * d);
      std::vector<float> dw(static_cast<size_t>(d), 0.0f);
      moe::nn::rmsnorm_forward<float>(a, x.data(), w.data(), y.data(), rs.data());
      moe::nn::rmsnorm_backward<float>(a, x.data(), w.data(), rs.data(), dy.data(), dx.data(), dw.data());
      std::vector<float> all = y;
      all.insert(all.end(), rs.begin(), rs.end());
      all.insert(all.end(), dx.begin(), dx.end());
      all.insert(all.end(), dw.begin(), dw.end());
      outs.push_back(all);
    }
    EXPECT_TRUE(same_bits(outs[0], outs[1])) << "n = " << n << ": 1 vs 2 threads";
    EXPECT_TRUE(same_bits(outs[0], outs[2])) << "n = " << n << ": 1 vs 4 threads";
  }
}

TEST(NnRmsNorm, EmptyAndBadInput) {
  moe::nn::rmsnorm_forward<float>(RmsNormArgs{0, 8, 1e-6}, nullptr, nullptr, nullptr, nullptr);
  moe::nn::rmsnorm_backward<double>(RmsNormArgs{0, 8, 1e-6}, nullptr, nullptr, nullptr, nullptr, nullptr,
                                    nullptr);
  std::vector<float> x(8, 1.0f), w(4, 1.0f), y(8);
  EXPECT_THROW(
      moe::nn::rmsnorm_forward<float>(RmsNormArgs{2, 0, 1e-6}, x.data(), w.data(), y.data(), nullptr),
      moe::Error);
  EXPECT_THROW(
      moe::nn::rmsnorm_forward<float>(RmsNormArgs{2, 4, -1.0}, x.data(), w.data(), y.data(), nullptr),
      moe::Error);
  EXPECT_THROW(moe::nn::rmsnorm_forward<float>(RmsNormArgs{2, 4, 1e-6}, x.data(), nullptr, y.data(), nullptr),
               moe::Error);
}

// ---------------------------------------------------------------------------------------------
// RoPE

TEST(NnRope, ForwardMatchesReference) {
  for (auto [n, heads, hd] : {std::tuple<int64_t, int64_t, int64_t>{1, 1, 2}, {5, 3, 8}, {17, 4, 64}}) {
    const RopeArgs a{n, heads, hd, 10000.0};
    const std::vector<int32_t> pos = positions(n, 3, 97);  // large positions: large angles
    const std::vector<double> x = randn(n * heads * hd, 51 + hd);
    const std::vector<double> y_ref = ref_rope(a, pos, x);
    std::vector<double> y64 = x;
    moe::nn::rope_forward<double>(a, pos.data(), y64.data());
    // An angle is known to a few ulps of its size (pow, product), so cos and sin to that absolute error.
    const double max_angle = static_cast<double>(pos.back());
    EXPECT_LE(rel_err(y64, y_ref), 8 * (1 + max_angle) * 0x1p-53);
    std::vector<float> y32 = cast<float>(x);
    moe::nn::rope_forward<float>(a, pos.data(), y32.data());
    EXPECT_LE(rel_err(y32, y_ref), f32_tol(2));
  }
  // Position 0 is the identity; theta changes the frequencies.
  const RopeArgs a{2, 1, 4, 500000.0};
  const std::vector<int32_t> pos = {0, 12345};
  const std::vector<double> x = randn(8, 52);
  std::vector<double> y = x;
  moe::nn::rope_forward<double>(a, pos.data(), y.data());
  for (int i = 0; i < 4; ++i) EXPECT_EQ(y[i], x[i]);
  EXPECT_LE(rel_err(y, ref_rope(a, pos, x)), 1e-14);
}

TEST(NnRope, GradientFiniteDifference) {
  const RopeArgs a{4, 2, 6, 10000.0};
  const std::vector<int32_t> pos = {0, 1, 7, 1000};
  std::vector<double> x = randn(4 * 2 * 6, 61);
  const std::vector<double> dy = randn(x.size(), 62);
  auto loss = [&] {
    std::vector<double> y = x;
    moe::nn::rope_forward<double>(a, pos.data(), y.data());
    return dot(dy, y);
  };
  const std::vector<double> g = numeric_grad(x, loss);
  std::vector<double> dx = dy;
  moe::nn::rope_backward<double>(a, pos.data(), dx.data());
  EXPECT_LE(rel_err(dx, g), 1e-8);
  // The backward is the inverse rotation: forward then backward restores x.
  std::vector<double> round = x;
  moe::nn::rope_forward<double>(a, pos.data(), round.data());
  moe::nn::rope_backward<double>(a, pos.data(), round.data());
  EXPECT_LE(rel_err(round, x), 1e-14);
}

TEST(NnRope, BitIdenticalAcrossThreadCounts) {
  const RopeArgs a{301, 4, 32, 10000.0};
  const std::vector<int32_t> pos = positions(a.n, 0, 1);
  const std::vector<float> x = cast<float>(randn(a.n * a.heads * a.hd, 71));
  std::vector<std::vector<float>> outs;
  for (int threads : {1, 2, 4}) {
    ThreadCount tc(threads);
    std::vector<float> y = x, g = x;
    moe::nn::rope_forward<float>(a, pos.data(), y.data());
    moe::nn::rope_backward<float>(a, pos.data(), g.data());
    y.insert(y.end(), g.begin(), g.end());
    outs.push_back(y);
  }
  EXPECT_TRUE(same_bits(outs[0], outs[1]));
  EXPECT_TRUE(same_bits(outs[0], outs[2]));
}

TEST(NnRope, EmptyAndBadInput) {
  moe::nn::rope_forward<float>(RopeArgs{0, 4, 8, 10000.0}, nullptr, nullptr);
  moe::nn::rope_backward<float>(RopeArgs{3, 0, 8, 10000.0}, nullptr, nullptr);
  std::vector<float> x(3 * 5, 1.0f);
  const std::vector<int32_t> pos = {0, 1, 2};
  try {
    moe::nn::rope_forward<float>(RopeArgs{3, 1, 5, 10000.0}, pos.data(), x.data());
    FAIL() << "odd head dim accepted";
  } catch (const moe::Error& e) {
    EXPECT_NE(std::string(e.what()).find("hd"), std::string::npos) << e.what();
  }
  EXPECT_THROW(moe::nn::rope_backward<float>(RopeArgs{3, 1, 0, 10000.0}, pos.data(), x.data()), moe::Error);
  EXPECT_THROW(moe::nn::rope_forward<float>(RopeArgs{3, 1, 4, 0.0}, pos.data(), x.data()), moe::Error);
}

// ---------------------------------------------------------------------------------------------
// Cross-entropy

// Targets in [0, V) with every `ignore_every`-th row ignored (-1, or -100 as in PyTorch).
std::vector<int32_t> ce_targets(int64_t n, int64_t V, int ignore_every, uint64_t seed) {
  const Rng rng(seed);
  std::vector<int32_t> t(static_cast<size_t>(n));
  for (int64_t r = 0; r < n; ++r) {
    t[r] = static_cast<int32_t>(rng.below(static_cast<uint64_t>(r), static_cast<uint64_t>(V)));
    if (ignore_every > 0 && r % ignore_every == 1) t[r] = r % 2 ? -100 : -1;
  }
  return t;
}

TEST(NnCrossEntropy, MatchesReference) {
  for (auto [n, V] : {std::pair<int64_t, int64_t>{1, 1}, {9, 7}, {33, 1000}}) {
    const std::vector<double> x = randn(n * V, 81 + V, 3.0);
    const std::vector<int32_t> t = ce_targets(n, V, 4, 82);
    const double gs = 1.0 / 7;
    std::vector<double> g_ref;
    const CrossEntropyResult r_ref = ref_ce(n, V, x, t, gs, &g_ref);
    std::vector<double> g64 = poisoned<double>(n * V);
    const CrossEntropyResult r64 = moe::nn::cross_entropy<double>(n, V, x.data(), t.data(), g64.data(), gs);
    EXPECT_EQ(r64.count, r_ref.count);
    EXPECT_NEAR(r64.loss_sum, r_ref.loss_sum, 1e-12 * std::max(1.0, std::abs(r_ref.loss_sum)));
    EXPECT_LE(rel_err(g64, g_ref), 1e-14);
    const std::vector<float> xf = cast<float>(x);
    std::vector<float> g32 = poisoned<float>(n * V);
    const CrossEntropyResult r32 = moe::nn::cross_entropy<float>(n, V, xf.data(), t.data(), g32.data(), gs);
    // The f32 loss is evaluated from float logits; compare with the reference on the same values.
    std::vector<double> g_ref32;
    const CrossEntropyResult r_ref32 = ref_ce(n, V, to_double(xf), t, gs, &g_ref32);
    EXPECT_EQ(r32.count, r_ref.count);
    EXPECT_NEAR(r32.loss_sum, r_ref32.loss_sum, f32_tol(V) * std::max(1.0, std::abs(r_ref32.loss_sum)) * 8);
    EXPECT_LE(rel_err(g32, g_ref32), f32_tol(V));
    // In place (dlogits aliases logits), and without a gradient: the same loss.
    std::vector<float> inplace = xf;
    const CrossEntropyResult r_in =
        moe::nn::cross_entropy<float>(n, V, inplace.data(), t.data(), inplace.data(), gs);
    EXPECT_EQ(r_in.loss_sum, r32.loss_sum);
    EXPECT_TRUE(same_bits(inplace, g32));
    const CrossEntropyResult r_no = moe::nn::cross_entropy<float>(n, V, xf.data(), t.data(), nullptr, gs);
    EXPECT_EQ(r_no.loss_sum, r32.loss_sum);
  }
}

TEST(NnCrossEntropy, StableForLargeLogits) {
  const int64_t n = 2, V = 3;
  const std::vector<float> x = {1000.0f, 0.0f, -1000.0f, 88.0f, 89.0f, 90.0f};
  const std::vector<int32_t> t = {1, 2};
  std::vector<float> g(6);
  const CrossEntropyResult r = moe::nn::cross_entropy<float>(n, V, x.data(), t.data(), g.data(), 1.0);
  const double row1 = std::log(std::exp(-2.0) + std::exp(-1.0) + 1.0);  // target is the max
  EXPECT_NEAR(r.loss_sum, 1000.0 + row1, 1e-3);
  for (float v : g) EXPECT_TRUE(std::isfinite(v));
  EXPECT_NEAR(g[1], -1.0f, 1e-6f);
}

TEST(NnCrossEntropy, GradientFiniteDifference) {
  const int64_t n = 6, V = 5;
  const double gs = 0.37;
  std::vector<double> x = randn(n * V, 91, 2.0);
  const std::vector<int32_t> t = {4, -1, 0, 2, -100, 3};
  auto loss = [&] {
    return gs * moe::nn::cross_entropy<double>(n, V, x.data(), t.data(), nullptr, 1.0).loss_sum;
  };
  const std::vector<double> g = numeric_grad(x, loss);
  std::vector<double> dl = poisoned<double>(n * V);
  const CrossEntropyResult r = moe::nn::cross_entropy<double>(n, V, x.data(), t.data(), dl.data(), gs);
  EXPECT_EQ(r.count, 4);
  EXPECT_LE(rel_err(dl, g), 1e-8);
  for (int64_t j = 0; j < V; ++j) EXPECT_EQ(dl[1 * V + j], 0.0);  // ignored rows get zeros
}

TEST(NnCrossEntropy, BitIdenticalAcrossThreadCounts) {
  const int64_t n = 257, V = 333;
  const std::vector<float> x = cast<float>(randn(n * V, 101, 2.0));
  const std::vector<int32_t> t = ce_targets(n, V, 5, 102);
  std::vector<std::vector<float>> grads;
  std::vector<double> losses;
  for (int threads : {1, 2, 4}) {
    ThreadCount tc(threads);
    std::vector<float> g = poisoned<float>(n * V);
    losses.push_back(moe::nn::cross_entropy<float>(n, V, x.data(), t.data(), g.data(), 1.0 / n).loss_sum);
    grads.push_back(g);
  }
  EXPECT_EQ(losses[0], losses[1]);
  EXPECT_EQ(losses[0], losses[2]);
  EXPECT_TRUE(same_bits(grads[0], grads[1]));
  EXPECT_TRUE(same_bits(grads[0], grads[2]));
}

TEST(NnCrossEntropy, EdgesAndBadTargets) {
  const CrossEntropyResult empty = moe::nn::cross_entropy<float>(0, 10, nullptr, nullptr, nullptr, 1.0);
  EXPECT_EQ(empty.count, 0);
  EXPECT_EQ(empty.loss_sum, 0.0);
  // Every row ignored: no loss, zero gradient.
  const std::vector<float> x = {1, 2, 3, 4, 5, 6};
  const std::vector<int32_t> none = {-1, -100};
  std::vector<float> g = poisoned<float>(6);
  const CrossEntropyResult r = moe::nn::cross_entropy<float>(2, 3, x.data(), none.data(), g.data(), 1.0);
  EXPECT_EQ(r.count, 0);
  EXPECT_EQ(r.loss_sum, 0.0);
  for (float v : g) EXPECT_EQ(v, 0.0f);
  // V = 1: the loss is exactly 0.
  const std::vector<int32_t> zero = {0, 0};
  EXPECT_EQ(moe::nn::cross_entropy<float>(2, 1, x.data(), zero.data(), nullptr, 1.0).loss_sum, 0.0);
  // A target >= V is an error naming the row and the value; nothing is written.
  const std::vector<int32_t> bad = {0, 3};
  std::vector<float> g2 = poisoned<float>(6);
  try {
    moe::nn::cross_entropy<float>(2, 3, x.data(), bad.data(), g2.data(), 1.0);
    FAIL() << "target 3 >= V = 3 accepted";
  } catch (const moe::Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("targets[1] = 3"), std::string::npos) << msg;
    EXPECT_NE(msg.find("V = 3"), std::string::npos) << msg;
  }
  for (float v : g2) EXPECT_TRUE(std::isnan(v));
  EXPECT_THROW(moe::nn::cross_entropy<float>(-1, 3, x.data(), bad.data(), nullptr, 1.0), moe::Error);
}

}  // namespace
}  // namespace moe::testing::nn
