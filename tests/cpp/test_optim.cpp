// train/optim: AdamW against hand-computed steps, state export/import (bit-exact resume through a
// safetensors file), gradient norm / clipping determinism, the learning-rate schedule, and the errors
// on bad input. The PyTorch comparison lives in tests/oracle/test_optim_oracle.py.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <limits>
#include <string>
#include <vector>

#include <unistd.h>

#include "moe/core/parallel.h"
#include "moe/core/rng.h"
#include "moe/model/safetensors.h"
#include "moe/train/optim.h"

namespace moe::train {
namespace {

// Owns parameters and gradients and hands out ParamRefs to them.
struct Params {
  std::vector<std::string> names;
  std::vector<Tensor> p, g;
  std::vector<bool> decay;

  void add(const std::string& name, Tensor param, Tensor grad, bool dec = true) {
    names.push_back(name);
    p.push_back(std::move(param));
    g.push_back(std::move(grad));
    decay.push_back(dec);
  }
  std::vector<ParamRef> refs() {
    std::vector<ParamRef> r;
    for (size_t i = 0; i < p.size(); ++i) r.push_back({names[i], &p[i], &g[i], decay[i]});
    return r;
  }
  Params clone() const {
    Params c = *this;
    for (auto& t : c.p) t = t.clone();
    for (auto& t : c.g) t = t.clone();
    return c;
  }
};

Tensor vec(const std::vector<double>& v) { return Tensor::from(v, {static_cast<int64_t>(v.size())}); }

Tensor randn(const Shape& s, uint64_t seed, double stddev = 1.0) {
  Tensor t = Tensor::empty(s);
  Rng(seed).fill_normal(t, 0.0, stddev);
  return t;
}

// Shapes that cover one element, odd sizes and more than one parallel grain / norm chunk (2^14).
Params random_params(uint64_t seed) {
  Params ps;
  const std::vector<Shape> shapes = {{1}, {7, 3}, {40001}, {3, 5, 1093}};
  for (size_t i = 0; i < shapes.size(); ++i) {
    std::string name = "w";  // (not "w" + to_string: GCC 12 -Wrestrict false positive)
    name += std::to_string(i);
    ps.add(name, randn(shapes[i], seed + 2 * i), randn(shapes[i], seed + 2 * i + 1, 0.1), i % 2 == 0);
  }
  return ps;
}

void new_grads(Params& ps, uint64_t seed) {
  for (size_t i = 0; i < ps.g.size(); ++i) Rng(seed + i).fill_normal(ps.g[i], 0.0, 0.1);
}

bool same_bits(const Tensor& a, const Tensor& b) {
  return a.shape() == b.shape() && a.dtype() == b.dtype() && std::memcmp(a.raw(), b.raw(), a.nbytes()) == 0;
}

// Within `ulps` units in the last place of f32 at `want`.
void expect_f32_near(double got, double want, double ulps = 2.0) {
  const double ulp = std::ldexp(std::max(std::fabs(want), 1e-30), -23);
  EXPECT_NEAR(got, want, ulps * ulp);
}

// Expects moe::Error whose message contains every string in `parts`.
template <typename F>
void expect_error(F&& fn, const std::vector<std::string>& parts) {
  try {
    fn();
    ADD_FAILURE() << "expected moe::Error mentioning " << (parts.empty() ? "" : parts[0]);
  } catch (const Error& e) {
    const std::string msg = e.what();
    for (const auto& p : parts)
      EXPECT_NE(msg.find(p), std::string::npos) << "message lacks '" << p << "': " << msg;
  }
}

class ThreadGuard {
 public:
  ThreadGuard() : saved_(num_threads()) {}
  ~ThreadGuard() { set_num_threads(saved_); }

 private:
  int saved_;
};

// ---------------------------------------------------------------------------------------------
// AdamW, by hand. Defaults: β1 = 0.9, β2 = 0.95, eps = 1e-8, wd = 0.1.

TEST(OptimAdamW, OneStepHandComputed) {
  // Step 1: m = 0.1 g, v = 0.05 g², bias corrections 0.1 and 0.05, so m̂ = g, v̂ = g² and the update is
  // lr · g / (|g| + eps) ≈ lr · sign(g), after the decay p ← p (1 − lr·wd) = 0.99 p (lr = 0.1).
  Params ps;
  ps.add("w", vec({1.0, -2.0, 0.5, 0.0}), vec({0.5, -1.0, 0.0, 2.0}));
  auto refs = ps.refs();
  AdamW opt;
  opt.step(refs, 0.1);
  EXPECT_EQ(opt.step_count(), 1);
  expect_f32_near(ps.p[0].get(0), 0.99 - 0.1 * 0.5 / (0.5 + 1e-8));   // 0.89
  expect_f32_near(ps.p[0].get(1), -1.98 + 0.1 * 1.0 / (1.0 + 1e-8));  // -1.88
  EXPECT_EQ(ps.p[0].get(2), static_cast<double>(0.495f));             // g = 0: m = v = 0, update 0 / eps = 0
  expect_f32_near(ps.p[0].get(3), -0.1 * 2.0 / (2.0 + 1e-8));         // -0.1
  const auto st = opt.export_state();
  for (int i = 0; i < 4; ++i) {
    const double g = std::vector<double>{0.5, -1.0, 0.0, 2.0}[i];
    expect_f32_near(st.at("adamw.m.w").get(i), 0.1 * g, 1.0);
    expect_f32_near(st.at("adamw.v.w").get(i), 0.05 * g * g, 1.0);
  }
  // The gradient is not modified.
  EXPECT_EQ(ps.g[0].to_vector(), (std::vector<double>{0.5, -1.0, 0.0, 2.0}));
}

TEST(OptimAdamW, TwoStepsHandComputed) {
  Params ps;
  ps.add("w", vec({1.0, -2.0, 0.5, 0.0}), vec({0.5, -1.0, 0.0, 2.0}));
  auto refs = ps.refs();
  AdamW opt;
  opt.step(refs, 0.1);
  ps.g[0].copy_from(vec({-0.5, 0.5, 1.0, 2.0}));
  opt.step(refs, 0.05);
  // Step 2 (lr = 0.05): bias corrections 1 − 0.9² = 0.19 and 1 − 0.95² = 0.0975, decay 0.995.
  //   w0: m = 0.9·0.05 − 0.05 = −0.005, v = 0.95·0.0125 + 0.05·0.25 = 0.024375, v̂ = 0.25
  //       p = 0.89·0.995 + 0.05·(0.005/0.19)/0.5 = 0.8881815...
  //   w1: m = −0.09 + 0.05 = −0.04, v = 0.0475 + 0.0125 = 0.06
  //       p = −1.88·0.995 + 0.05·(0.04/0.19)/sqrt(0.06/0.0975) = −1.8571815...
  //   w2: m = 0.1, v = 0.05;  p = 0.495·0.995 − 0.05·(0.1/0.19)/sqrt(0.05/0.0975) = 0.4557770...
  //   w3: m = 0.18 + 0.2 = 0.38, v = 0.19 + 0.2 = 0.39, m̂ = 2, v̂ = 4
  //       p = −0.1·0.995 − 0.05·2/2 = −0.1495
  // (the digits below carry the f32 rounding of step 1's results and of m, v)
  expect_f32_near(ps.p[0].get(0), 0.888181579787);
  expect_f32_near(ps.p[0].get(1), -1.85718152734);
  expect_f32_near(ps.p[0].get(2), 0.455777000124);
  expect_f32_near(ps.p[0].get(3), -0.149499998373);
  const auto st = opt.export_state();
  EXPECT_EQ(*st.at("adamw.step").data<int64_t>(), 2);
  const std::vector<double> m = {-0.005, -0.04, 0.1, 0.38}, v = {0.024375, 0.06, 0.05, 0.39};
  for (int i = 0; i < 4; ++i) {
    expect_f32_near(st.at("adamw.m.w").get(i), m[i], 4.0);
    expect_f32_near(st.at("adamw.v.w").get(i), v[i], 4.0);
  }
}

TEST(OptimAdamW, EpsIsAddedOutsideTheSquareRoot) {
  // |g| = eps: the first update is lr · g / (|g| + eps) = lr / 2 (eps inside the root would give
  // lr · g / sqrt(g² + eps) ≈ lr · 1e-4).
  Params ps;
  ps.add("w", vec({0.0, 0.0}), vec({1e-6, -1e-6}), false);
  auto refs = ps.refs();
  AdamW opt(AdamWConfig{.eps = 1e-6});
  opt.step(refs, 0.1);
  expect_f32_near(ps.p[0].get(0), -0.05, 4.0);
  expect_f32_near(ps.p[0].get(1), 0.05, 4.0);
}

TEST(OptimAdamW, DecayOnlyWhereFlagged) {
  Params ps;
  ps.add("decayed", vec({1.0, -3.0}), vec({0.5, 0.25}), true);
  ps.add("plain", vec({1.0, -3.0}), vec({0.5, 0.25}), false);
  auto refs = ps.refs();
  AdamW opt;
  opt.step(refs, 0.1);
  expect_f32_near(ps.p[0].get(0), 0.99 - 0.1 * 0.5 / (0.5 + 1e-8));
  expect_f32_near(ps.p[1].get(0), 1.0 - 0.1 * 0.5 / (0.5 + 1e-8));
  expect_f32_near(ps.p[0].get(1), -2.97 - 0.1 * 0.25 / (0.25 + 1e-8));
  expect_f32_near(ps.p[1].get(1), -3.0 - 0.1 * 0.25 / (0.25 + 1e-8));

  // decay = false is bit-identical to weight_decay = 0.
  Params a = random_params(11), b = a.clone();
  for (size_t i = 0; i < b.decay.size(); ++i) a.decay[i] = false;
  auto ra = a.refs(), rb = b.refs();
  AdamW no_flag, no_wd(AdamWConfig{.weight_decay = 0.0});
  for (int s = 0; s < 3; ++s) {
    no_flag.step(ra, 1e-2);
    no_wd.step(rb, 1e-2);
    new_grads(a, 100 + s);
    new_grads(b, 100 + s);
  }
  for (size_t i = 0; i < a.p.size(); ++i) EXPECT_TRUE(same_bits(a.p[i], b.p[i])) << a.names[i];
}

TEST(OptimAdamW, BitIdenticalForAnyThreadCount) {
  ThreadGuard guard;
  std::vector<Params> runs;
  for (int threads : {1, 2, 4}) {
    set_num_threads(threads);
    Params ps = random_params(5);
    auto refs = ps.refs();
    AdamW opt;
    for (int s = 0; s < 3; ++s) {
      opt.step(refs, 3e-3);
      new_grads(ps, 50 + 10 * s);
    }
    runs.push_back(std::move(ps));
  }
  for (size_t r = 1; r < runs.size(); ++r)
    for (size_t i = 0; i < runs[0].p.size(); ++i)
      EXPECT_TRUE(same_bits(runs[0].p[i], runs[r].p[i])) << runs[0].names[i] << " run " << r;
}

TEST(OptimAdamW, ExportImportThroughSafetensorsContinuesBitIdentically) {
  const LrSchedule sched{.max_lr = 1e-2, .min_lr = 1e-3, .warmup_steps = 2, .total_steps = 8};
  Params straight = random_params(21), resumed = straight.clone();
  AdamW a;
  auto ra = straight.refs();
  for (int s = 0; s < 6; ++s) {
    new_grads(straight, 1000 + 10 * s);
    a.step(ra, sched.at(s));
  }

  auto rb = resumed.refs();
  std::map<std::string, Tensor> saved;
  {
    AdamW first;
    for (int s = 0; s < 3; ++s) {
      new_grads(resumed, 1000 + 10 * s);
      first.step(rb, sched.at(s));
    }
    saved = first.export_state();
  }
  EXPECT_EQ(saved.size(), 1u + 2u * resumed.p.size());
  const std::string path =
      (std::filesystem::temp_directory_path() / ("moe_optim_" + std::to_string(::getpid()) + ".safetensors"))
          .string();
  save_safetensors(path, saved);
  const auto loaded = load_safetensors(path);
  std::filesystem::remove(path);
  AdamW b;
  b.import_state(loaded, rb);
  EXPECT_EQ(b.step_count(), 3);
  for (int s = 3; s < 6; ++s) {
    new_grads(resumed, 1000 + 10 * s);
    b.step(rb, sched.at(s));
  }
  for (size_t i = 0; i < straight.p.size(); ++i)
    EXPECT_TRUE(same_bits(straight.p[i], resumed.p[i])) << straight.names[i];
  const auto sa = a.export_state(), sb = b.export_state();
  ASSERT_EQ(sa.size(), sb.size());
  for (const auto& [name, t] : sa) EXPECT_TRUE(same_bits(t, sb.at(name))) << name;
}

TEST(OptimAdamW, StateIsCreatedPerNameWhenFirstStepped) {
  Params ps;
  ps.add("a", vec({1.0}), vec({1.0}));
  ps.add("b", vec({2.0, 3.0}), vec({1.0, -1.0}));
  std::vector<ParamRef> all = ps.refs(), only_a = {all[0]};
  AdamW opt;
  opt.step(only_a, 0.1);
  EXPECT_TRUE(opt.has_state("a"));
  EXPECT_FALSE(opt.has_state("b"));
  EXPECT_EQ(opt.export_state().count("adamw.m.b"), 0u);
  const float b_before = ps.p[1].data<float>()[0];
  EXPECT_EQ(b_before, 2.0f);
  opt.step(all, 0.1);
  EXPECT_TRUE(opt.has_state("b"));
  EXPECT_EQ(opt.step_count(), 2);
  // b's first update uses the global t = 2: m̂ = 0.1 g / 0.19, v̂ = 0.05 g² / 0.0975.
  const double upd = 0.1 * (0.1 / 0.19) / (std::sqrt(0.05 / 0.0975) + 1e-8);
  expect_f32_near(ps.p[1].get(0), 2.0 * 0.99 - upd);
  expect_f32_near(ps.p[1].get(1), 3.0 * 0.99 + upd);
}

TEST(OptimAdamW, BadParametersAreErrors) {
  AdamW opt;
  {
    Params ps;
    ps.add("w_up", Tensor::zeros({4, 8}), Tensor::zeros({4, 7}));
    auto r = ps.refs();
    expect_error([&] { opt.step(r, 0.1); }, {"w_up", "(4, 8)", "(4, 7)"});
    expect_error([&] { grad_norm(r); }, {"w_up", "(4, 7)"});
  }
  {
    Params ps;
    ps.add("w", Tensor::zeros({3}, DType::F64), Tensor::zeros({3}, DType::F64));
    auto r = ps.refs();
    expect_error([&] { opt.step(r, 0.1); }, {"'w'", "f32"});
  }
  {
    Params ps;
    ps.add("w", Tensor::zeros({3, 4}).transpose(0, 1), Tensor::zeros({4, 3}));
    auto r = ps.refs();
    expect_error([&] { opt.step(r, 0.1); }, {"'w'", "contiguous"});
  }
  {
    Params ps;
    ps.add("w", Tensor::zeros({2}), Tensor::zeros({2}));
    ps.add("w", Tensor::zeros({2}), Tensor::zeros({2}));
    auto r = ps.refs();
    expect_error([&] { opt.step(r, 0.1); }, {"'w'", "twice"});
  }
  {
    Tensor p = Tensor::zeros({2});
    std::vector<ParamRef> r = {{"w", &p, nullptr, true}};
    expect_error([&] { zero_grads(r); }, {"'w'", "null"});
    Tensor undefined;
    r[0].grad = &undefined;
    expect_error([&] { zero_grads(r); }, {"'w'"});
    r = {{"", &p, &p, true}};
    expect_error([&] { zero_grads(r); }, {"empty name"});
  }
  EXPECT_EQ(opt.step_count(), 0);  // failed steps do not count
  {
    Params ps;
    ps.add("w", Tensor::zeros({2}), Tensor::zeros({2}));
    auto r = ps.refs();
    expect_error([&] { opt.step(r, -1.0); }, {"learning rate", "-1"});
    expect_error([&] { opt.step(r, std::nan("")); }, {"learning rate"});
    opt.step(r, 0.1);
    ps.p[0] = Tensor::zeros({3});  // the parameter changed shape since its state was made
    ps.g[0] = Tensor::zeros({3});
    r = ps.refs();
    expect_error([&] { opt.step(r, 0.1); }, {"'w'", "(3,)", "(2,)"});
  }
  expect_error([] { AdamW(AdamWConfig{.beta1 = 1.0}); }, {"beta1"});
  expect_error([] { AdamW(AdamWConfig{.beta2 = -0.1}); }, {"beta2"});
  expect_error([] { AdamW(AdamWConfig{.eps = -1e-8}); }, {"eps"});
  expect_error([] { AdamW(AdamWConfig{.weight_decay = std::nan("")}); }, {"weight_decay"});
}

TEST(OptimAdamW, ImportValidatesNamesShapesAndStep) {
  Params ps;
  ps.add("w", vec({1.0, 2.0}), vec({0.1, 0.2}));
  ps.add("b", vec({0.5}), vec({-0.1}), false);
  auto r = ps.refs();
  AdamW src;
  src.step(r, 0.1);
  const auto good = src.export_state();

  AdamW dst;
  dst.step(r, 0.2);  // some state that a failed import must leave untouched
  const auto before = dst.export_state();
  auto expect_bad = [&](std::map<std::string, Tensor> st, const std::vector<std::string>& parts) {
    expect_error([&] { dst.import_state(st, r); }, parts);
    const auto after = dst.export_state();
    ASSERT_EQ(after.size(), before.size());
    for (const auto& [n, t] : before) EXPECT_TRUE(same_bits(t, after.at(n))) << n;
  };
  auto without = [&](const std::string& name) {
    auto st = good;
    st.erase(name);
    return st;
  };
  auto with = [&](const std::string& name, Tensor t) {
    auto st = good;
    st[name] = std::move(t);
    return st;
  };
  expect_bad(without("adamw.step"), {"adamw.step", "missing"});
  expect_bad(without("adamw.m.b"), {"adamw.m.b", "missing"});
  expect_bad(without("adamw.v.w"), {"adamw.v.w", "missing"});
  expect_bad(with("adamw.m.nope", Tensor::zeros({2})), {"adamw.m.nope", "'nope'"});
  expect_bad(with("adamw.v.w", Tensor::zeros({3})), {"adamw.v.w", "(2,)", "(3,)"});
  expect_bad(with("adamw.m.w", Tensor::zeros({2}, DType::F64)), {"adamw.m.w", "f32"});
  expect_bad(with("adamw.step", Tensor::zeros({}, DType::F32)), {"adamw.step", "i64"});
  expect_bad(with("adamw.step", Tensor::zeros({2}, DType::I64)), {"adamw.step", "scalar"});
  expect_bad(with("adamw.mu.w", Tensor::zeros({2})), {"adamw.mu.w", "unknown"});
  Tensor zero_step = Tensor::zeros({}, DType::I64);
  expect_bad(with("adamw.step", zero_step), {"adamw.m.", "0"});

  // Tensors outside the "adamw." namespace are ignored; a good state imports.
  auto shared_file = with("model.embed", Tensor::zeros({5}));
  dst.import_state(shared_file, r);
  EXPECT_EQ(dst.step_count(), 1);
  for (const auto& [n, t] : good) EXPECT_TRUE(same_bits(t, dst.export_state().at(n))) << n;
  // A fresh state (step 0) needs no moments.
  AdamW fresh;
  fresh.import_state({{"adamw.step", zero_step}}, r);
  EXPECT_EQ(fresh.step_count(), 0);
  EXPECT_FALSE(fresh.has_state("w"));
}

// ---------------------------------------------------------------------------------------------
// Gradient norm, scaling, clipping.

TEST(OptimGradNorm, BitIdenticalForAnyThreadCountAndMatchesDoubleReference) {
  ThreadGuard guard;
  Params ps = random_params(77);
  auto r = ps.refs();
  long double ref = 0;
  for (const Tensor& g : ps.g)
    for (int64_t i = 0; i < g.numel(); ++i) ref += static_cast<long double>(g.get(i)) * g.get(i);
  std::vector<double> norms;
  for (int threads : {1, 2, 4}) {
    set_num_threads(threads);
    norms.push_back(grad_norm(r));
  }
  EXPECT_EQ(std::memcmp(&norms[0], &norms[1], sizeof(double)), 0);
  EXPECT_EQ(std::memcmp(&norms[0], &norms[2], sizeof(double)), 0);
  EXPECT_NEAR(norms[0], std::sqrt(static_cast<double>(ref)), 1e-13 * norms[0]);

  // Integer-valued gradients: every partial sum is exact in double, so the norm is exact.
  Params ints;
  ints.add("a", Tensor::zeros({3}), vec({3.0, 0.0, 4.0}));
  Tensor big = Tensor::empty({50000});
  double sum = 25.0;
  for (int64_t i = 0; i < big.numel(); ++i) {
    const double v = static_cast<double>(i % 7) - 3.0;
    big.set(i, v);
    sum += v * v;
  }
  ints.add("b", Tensor::zeros({50000}), big);
  auto ri = ints.refs();
  for (int threads : {1, 3}) {
    set_num_threads(threads);
    EXPECT_EQ(grad_norm(ri), std::sqrt(sum));
  }
  std::vector<ParamRef> none;
  EXPECT_EQ(grad_norm(none), 0.0);
}

TEST(OptimGradNorm, NonFiniteGradientsAreDetected) {
  Params ps = random_params(3);
  auto r = ps.refs();
  EXPECT_TRUE(grads_finite(r));
  EXPECT_TRUE(std::isfinite(grad_norm(r)));
  ps.g[2].data<float>()[30000] = std::numeric_limits<float>::quiet_NaN();
  EXPECT_FALSE(grads_finite(r));
  EXPECT_TRUE(std::isnan(grad_norm(r)));
  ps.g[2].data<float>()[30000] = std::numeric_limits<float>::infinity();
  EXPECT_FALSE(grads_finite(r));
  EXPECT_EQ(grad_norm(r), std::numeric_limits<double>::infinity());
  ps.g[2].data<float>()[30000] = -std::numeric_limits<float>::infinity();
  EXPECT_EQ(grad_norm(r), std::numeric_limits<double>::infinity());
  // The largest f32 values do not overflow the double sum of squares.
  ps.g[2].data<float>()[30000] = std::numeric_limits<float>::max();
  EXPECT_TRUE(grads_finite(r));
  EXPECT_TRUE(std::isfinite(grad_norm(r)));
}

TEST(OptimClip, ScalesToMaxNormOnlyWhenAbove) {
  Params ps;
  ps.add("a", Tensor::zeros({2}), vec({3.0, 0.0}));
  ps.add("b", Tensor::zeros({1}), vec({-4.0}));
  auto r = ps.refs();
  // Norm 5 <= 5 and <= 10: untouched.
  EXPECT_EQ(clip_grad_norm(r, 10.0), 5.0);
  EXPECT_EQ(clip_grad_norm(r, 5.0), 5.0);
  EXPECT_EQ(ps.g[0].to_vector(), (std::vector<double>{3.0, 0.0}));
  EXPECT_EQ(ps.g[1].to_vector(), (std::vector<double>{-4.0}));
  // Norm 5 > 1: scaled by 1/5; returns the norm before clipping.
  EXPECT_EQ(clip_grad_norm(r, 1.0), 5.0);
  EXPECT_EQ(ps.g[0].get(0), static_cast<double>(0.6f));
  EXPECT_EQ(ps.g[1].get(0), static_cast<double>(-0.8f));
  EXPECT_NEAR(grad_norm(r), 1.0, 1e-7);

  Params rnd = random_params(9);
  auto rr = rnd.refs();
  const double before = grad_norm(rr);
  EXPECT_EQ(clip_grad_norm(rr, 0.5 * before), before);
  EXPECT_NEAR(grad_norm(rr), 0.5 * before, 1e-6 * before);

  // Non-finite norm: returned, gradients untouched.
  ps.g[1].data<float>()[0] = std::numeric_limits<float>::quiet_NaN();
  EXPECT_TRUE(std::isnan(clip_grad_norm(r, 1.0)));
  EXPECT_EQ(ps.g[0].get(0), static_cast<double>(0.6f));
  expect_error([&] { clip_grad_norm(r, 0.0); }, {"max_norm"});
  expect_error([&] { clip_grad_norm(r, std::numeric_limits<double>::infinity()); }, {"max_norm"});
}

TEST(OptimGradNorm, ScaleAndZero) {
  Params ps;
  ps.add("a", Tensor::zeros({3}), vec({1.0, -2.0, 0.5}));
  auto r = ps.refs();
  scale_grads(r, -0.5);
  EXPECT_EQ(ps.g[0].to_vector(), (std::vector<double>{-0.5, 1.0, -0.25}));
  zero_grads(r);
  EXPECT_EQ(ps.g[0].to_vector(), (std::vector<double>{0.0, 0.0, 0.0}));
  expect_error([&] { scale_grads(r, std::nan("")); }, {"scale"});
}

// ---------------------------------------------------------------------------------------------
// Learning-rate schedule.

TEST(LrSchedule, WarmupCosineAndFloor) {
  const LrSchedule s{.max_lr = 1e-3, .min_lr = 1e-4, .warmup_steps = 10, .total_steps = 110};
  EXPECT_DOUBLE_EQ(s.at(0), 1e-4);  // max_lr · 1/10
  EXPECT_DOUBLE_EQ(s.at(4), 5e-4);
  EXPECT_DOUBLE_EQ(s.at(9), 1e-3);
  EXPECT_DOUBLE_EQ(s.at(10), 1e-3);                                        // start of the cosine: cos(0) = 1
  EXPECT_DOUBLE_EQ(s.at(60), 5.5e-4);                                      // half way: (max + min) / 2
  EXPECT_DOUBLE_EQ(s.at(35), 1e-4 + 9e-4 * 0.5 * (1.0 + std::sqrt(0.5)));  // a quarter: cos(π/4)
  EXPECT_DOUBLE_EQ(s.at(110), 1e-4);
  EXPECT_DOUBLE_EQ(s.at(100000), 1e-4);
  for (int64_t t = 10; t < 110; ++t) EXPECT_LT(s.at(t + 1), s.at(t)) << t;
  EXPECT_GT(s.at(109), 1e-4);

  const LrSchedule no_warmup{.max_lr = 2.0, .min_lr = 0.0, .warmup_steps = 0, .total_steps = 4};
  EXPECT_EQ(no_warmup.at(0), 2.0);
  EXPECT_DOUBLE_EQ(no_warmup.at(2), 1.0);
  EXPECT_EQ(no_warmup.at(4), 0.0);
  const LrSchedule only_warmup{.max_lr = 1.0, .min_lr = 0.1, .warmup_steps = 4, .total_steps = 4};
  EXPECT_EQ(only_warmup.at(3), 1.0);
  EXPECT_EQ(only_warmup.at(4), 0.1);
  const LrSchedule constant{.max_lr = 0.5, .min_lr = 0.5, .warmup_steps = 0, .total_steps = 1};
  EXPECT_EQ(constant.at(0), 0.5);
  EXPECT_EQ(constant.at(7), 0.5);
}

TEST(LrSchedule, BadArgumentsAreErrors) {
  auto at0 = [](LrSchedule s) { return [s] { s.at(0); }; };
  expect_error(at0({.max_lr = 1.0, .min_lr = 0.0, .warmup_steps = 11, .total_steps = 10}),
               {"warmup_steps", "11", "10"});
  expect_error(at0({.max_lr = 1.0, .min_lr = 2.0, .warmup_steps = 0, .total_steps = 10}), {"min_lr", "2"});
  expect_error(at0({.max_lr = -1.0, .min_lr = 0.0, .warmup_steps = 0, .total_steps = 10}), {"max_lr"});
  expect_error(at0({.max_lr = std::nan(""), .min_lr = 0.0, .warmup_steps = 0, .total_steps = 10}),
               {"max_lr"});
  expect_error(at0({.max_lr = 1.0, .min_lr = 0.0, .warmup_steps = -1, .total_steps = 10}), {"warmup_steps"});
  expect_error(at0({.max_lr = 1.0, .min_lr = 0.0, .warmup_steps = 0, .total_steps = 0}), {"total_steps"});
  const LrSchedule ok{.max_lr = 1.0, .min_lr = 0.0, .warmup_steps = 1, .total_steps = 10};
  expect_error([&] { ok.at(-1); }, {"step", "-1"});
}

}  // namespace
}  // namespace moe::train
