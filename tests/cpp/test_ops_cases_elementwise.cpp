// Activation and combine test cases (tolerance principles: see test_ops_cases.cpp).
#include <algorithm>
#include <cmath>
#include <memory>
#include <string>

#include "moe/core/error.h"
#include "op_cases.h"

namespace moe::ops_test {

namespace {

using kernels::Activation;

template <typename T>
class Typed : public OpCase {
 public:
  bool is_double() const override { return std::is_same_v<T, double>; }
  std::string name() const override {
    return op() + "[" + (std::is_same_v<T, float> ? "f32" : "f64") + "](" + params() + ")";
  }
  virtual std::string params() const = 0;
};

// Elementwise transcendental chains: 16 u relative to the largest intermediate term.
template <typename T>
double elementwise_tol(double magnitude) {
  return 16.0 * unit_roundoff<T>() * magnitude;
}

// Per-element floating-point operations, for rates only.
double act_flops(Activation a) {
  switch (a) {
    case Activation::SwiGLU:
      return 6;
    case Activation::Silu:
      return 5;
    case Activation::Gelu:
      return 6;
    case Activation::Relu:
      return 1;
  }
  return 1;
}

// ---------------------------------------------------------------------------------------------
// activation and activation_backward

template <typename T>
class ActivationCase : public Typed<T> {
 public:
  // backward: activation_backward; with_db: SwiGLU's db is requested (else null).
  ActivationCase(Activation act, int64_t n, bool backward, bool with_db = true)
      : act_(act), n_(n), backward_(backward), with_db_(with_db) {}
  std::string op() const override { return backward_ ? "activation_backward" : "activation"; }
  std::string params() const override {
    return cat(kernels::activation_name(act_), ",n=", n_,
               backward_ && swiglu() && !with_db_ ? ",db=null" : "");
  }
  bool swiglu() const { return act_ == Activation::SwiGLU; }
  Buffers make(uint64_t seed) const override {
    const Rng rng(seed);
    Buffers b;
    b.add<T>("a", n_);
    b.add<T>("b", swiglu() ? n_ : 0);
    b.add<T>("dout", backward_ ? n_ : 0);
    b.add<T>(backward_ ? "da" : "out", n_, Role::Out);
    b.add<T>("db", backward_ && swiglu() && with_db_ ? n_ : 0, Role::Out);
    // a ~ 3 N(0, 1): covers the flat tails of the sigmoid and erf as well as the middle.
    T* a = b.host<T>(kA);
    fill_values(rng.fork(0), a, n_);
    for (int64_t i = 0; i < n_; ++i) a[i] *= T(3);
    fill_values(rng.fork(1), b.host<T>(kB), b[kB].count);
    fill_values(rng.fork(2), b.host<T>(kDout), b[kDout].count);
    return b;
  }
  template <class F>
  decltype(auto) with_args(Buffers& b, F&& f) const {
    if (!backward_) {
      kernels::ActivationArgs<T> g;
      g.act = act_;
      g.n = n_;
      g.a = b.arg<T>(kA);
      g.b = b.arg<T>(kB);
      g.out = b.arg<T>(kOut);
      return f(g);
    }
    kernels::ActivationBackwardArgs<T> g;
    g.act = act_;
    g.n = n_;
    g.a = b.arg<T>(kA);
    g.b = b.arg<T>(kB);
    g.dout = b.arg<T>(kDout);
    g.da = b.arg<T>(kOut);
    g.db = b.arg<T>(kDb);
    return f(g);
  }
  MOE_OP_CASE_ARGS
  std::vector<double> tolerance(const Buffers& in, int id) const override {
    std::vector<double> tol(static_cast<size_t>(in[id].count), 0.0);
    if (act_ == Activation::Relu) return tol;  // max and a select: exact
    for (int64_t i = 0; i < in[id].count; ++i) {
      const double a = std::fabs(in[kA].get(i));
      const double bv = swiglu() ? std::fabs(in[kB].get(i)) : 1.0;
      double mag = a * bv;  // forward: |a| (|b|)
      if (backward_) {
        const double dout = std::fabs(in[kDout].get(i));
        mag = id == kDb ? dout * a : dout * bv * (1.0 + a);
      }
      tol[static_cast<size_t>(i)] = elementwise_tol<T>(mag);
    }
    return tol;
  }
  double flops() const override { return act_flops(act_) * static_cast<double>(n_) * (backward_ ? 2 : 1); }
  double bytes() const override {
    const int streams = 2 + (swiglu() ? 1 : 0) + (backward_ ? 1 + (swiglu() ? 1 : 0) : 0);
    return static_cast<double>(sizeof(T)) * static_cast<double>(n_) * streams;
  }

 private:
  enum { kA, kB, kDout, kOut, kDb };
  Activation act_;
  int64_t n_;
  bool backward_;
  bool with_db_;
};

// ---------------------------------------------------------------------------------------------
// combine and combine_backward

struct CombineShape {
  int64_t T, E, k, D;
  Pattern pattern = Pattern::Random;
  double drop = 0;
  bool weight = true;
  double beta = 0;      // combine only
  bool dweight = true;  // combine_backward only
};

// Assignment lists per token: tok_offsets[t] = t k, and token t's assignments in a shuffled order
// (the op must follow the list, not assume a = t k + j).
struct TokenLists {
  std::vector<int32_t> tok_offsets, tok_assign;
};
TokenLists token_lists(const Rng& rng, int64_t T, int64_t k) {
  TokenLists l;
  for (int64_t t = 0; t <= T; ++t) l.tok_offsets.push_back(static_cast<int32_t>(t * k));
  for (int64_t t = 0; t < T; ++t) {
    const size_t first = l.tok_assign.size();
    for (int64_t j = 0; j < k; ++j) l.tok_assign.push_back(static_cast<int32_t>(t * k + j));
    for (int64_t j = k - 1; j > 0; --j) {
      std::swap(
          l.tok_assign[first + static_cast<size_t>(j)],
          l.tok_assign[first + static_cast<size_t>(rng.below(static_cast<uint64_t>(t * k + j), j + 1))]);
    }
  }
  return l;
}

template <typename T>
class CombineCase : public Typed<T> {
 public:
  CombineCase(CombineShape s, bool backward) : s_(s), backward_(backward) {}
  std::string op() const override { return backward_ ? "combine_backward" : "combine"; }
  std::string params() const override {
    return cat("T=", s_.T, ",E=", s_.E, ",k=", s_.k, ",D=", s_.D, ",", pattern_name(s_.pattern),
               s_.drop > 0 ? cat(",drop=", s_.drop) : "", s_.weight ? "" : ",weight=null",
               backward_ ? (s_.dweight ? "" : ",dweight=null") : cat(",beta=", s_.beta));
  }
  Buffers make(uint64_t seed) const override {
    const Rng rng(seed);
    const Routing rt = make_routing(rng.fork(20), s_.T, s_.E, s_.k, s_.pattern, s_.drop);
    const TokenLists lists = token_lists(rng.fork(21), s_.T, s_.k);
    const int64_t n = s_.T * s_.k, rows = rt.rows();
    Buffers b;
    b.add<int32_t>("tok_offsets", s_.T + 1);
    b.add<int32_t>("tok_assign", n);
    b.add<int32_t>("token", n);
    b.add<int32_t>("pos", n);
    b.add<T>("weight", s_.weight ? n : 0);
    b.add<T>("X", rows * s_.D);  // (rows, D)
    b.add<T>("dY", backward_ ? s_.T * s_.D : 0);
    b.add<T>("Y", backward_ ? 0 : s_.T * s_.D, s_.beta == 0 ? Role::Out : Role::InOut);
    b.add<T>("dX", backward_ ? rows * s_.D : 0, Role::Out);
    b.add<T>("dweight", backward_ && s_.dweight ? n : 0, Role::Out);
    std::copy(lists.tok_offsets.begin(), lists.tok_offsets.end(), b.host<int32_t>(kTokOffsets));
    std::copy(lists.tok_assign.begin(), lists.tok_assign.end(), b.host<int32_t>(kTokAssign));
    for (int64_t a = 0; a < n; ++a) b.host<int32_t>(kToken)[a] = static_cast<int32_t>(a / s_.k);
    std::copy(rt.pos.begin(), rt.pos.end(), b.host<int32_t>(kPos));
    fill_values(rng.fork(22), b.host<T>(kWeight), b[kWeight].count);
    fill_values(rng.fork(23), b.host<T>(kX), b[kX].count);
    fill_values(rng.fork(24), b.host<T>(kDY), b[kDY].count);
    if (s_.beta != 0) fill_values(rng.fork(25), b.host<T>(kY), b[kY].count);
    return b;
  }
  template <class F>
  decltype(auto) with_args(Buffers& b, F&& f) const {
    if (!backward_) {
      kernels::CombineArgs<T> g;
      g.T_ = s_.T;
      g.D = s_.D;
      g.tok_offsets = b.arg<int32_t>(kTokOffsets);
      g.tok_assign = b.arg<int32_t>(kTokAssign);
      g.pos = b.arg<int32_t>(kPos);
      g.weight = b.arg<T>(kWeight);
      g.X = b.arg<T>(kX);
      g.Y = b.arg<T>(kY);
      g.beta = static_cast<T>(s_.beta);
      return f(g);
    }
    kernels::CombineBackwardArgs<T> g;
    g.N = s_.T * s_.k;
    g.D = s_.D;
    g.token = b.arg<int32_t>(kToken);
    g.pos = b.arg<int32_t>(kPos);
    g.weight = b.arg<T>(kWeight);
    g.dY = b.arg<T>(kDY);
    g.X = b.arg<T>(kX);
    g.dX = b.arg<T>(kDX);
    g.dweight = b.arg<T>(kDweight);
    return f(g);
  }
  MOE_OP_CASE_ARGS
  std::vector<double> tolerance(const Buffers& in, int id) const override {
    std::vector<double> tol(static_cast<size_t>(in[id].count), 0.0);
    if (in[id].count == 0) return tol;
    auto w = [&](int64_t a) { return s_.weight ? in[kWeight].get(a) : 1.0; };
    const int32_t* pos = in.host<int32_t>(kPos);
    if (id == kY) {  // beta Y + sum of k weighted rows
      for (int64_t t = 0; t < s_.T; ++t) {
        for (int64_t d = 0; d < s_.D; ++d) {
          double mag = s_.beta != 0 ? std::fabs(s_.beta * in[kY].get(t * s_.D + d)) : 0.0;
          for (int64_t a = t * s_.k; a < (t + 1) * s_.k; ++a) {
            if (pos[a] >= 0) mag += std::fabs(w(a) * in[kX].get(pos[a] * s_.D + d));
          }
          tol[static_cast<size_t>(t * s_.D + d)] = static_cast<double>(s_.k + 4) * unit_roundoff<T>() * mag;
        }
      }
    } else if (id == kDweight) {  // a dot product of length D
      for (int64_t a = 0; a < s_.T * s_.k; ++a) {
        if (pos[a] < 0) continue;  // exactly 0
        double mag = 0;
        for (int64_t d = 0; d < s_.D; ++d) {
          mag += std::fabs(in[kDY].get(a / s_.k * s_.D + d) * in[kX].get(pos[a] * s_.D + d));
        }
        tol[static_cast<size_t>(a)] = static_cast<double>(s_.D + 4) * unit_roundoff<T>() * mag;
      }
    }
    return tol;  // dX = w * dY: one correctly rounded product, exact
  }
  double flops() const override { return 2.0 * s_.T * s_.k * s_.D * (backward_ && s_.dweight ? 2 : 1); }
  double bytes() const override {
    return static_cast<double>(sizeof(T)) * (s_.T * s_.k * s_.D * 2 + s_.T * s_.D);
  }

 private:
  enum { kTokOffsets, kTokAssign, kToken, kPos, kWeight, kX, kDY, kY, kDX, kDweight };
  CombineShape s_;
  bool backward_;
};

template <typename T>
void add_activation(CaseList& out) {
  for (Activation act : {Activation::SwiGLU, Activation::Gelu, Activation::Relu, Activation::Silu}) {
    for (int64_t n : {1, 1000, 100003}) {
      out.push_back(std::make_unique<ActivationCase<T>>(act, n, false));
      out.push_back(std::make_unique<ActivationCase<T>>(act, n, true));
    }
  }
  out.push_back(std::make_unique<ActivationCase<T>>(Activation::SwiGLU, 777, true, false));
}

template <typename T>
void add_combine(CaseList& out) {
  const std::vector<CombineShape> shapes = {
      {17, 4, 2, 24},
      {17, 4, 2, 24, Pattern::Random, 0.25, false},
      {17, 4, 2, 24, Pattern::Random, 0.25, true, 0.5, false},
      {33, 8, 1, 7},                                       // k = 1, odd row length
      {9, 4, 4, 16, Pattern::Random, 0.1},                 // k = E
      {40, 8, 1, 12, Pattern::AllToOne},                   // one expert has every row
      {25, 16, 2, 10, Pattern::EvenOnly},                  // experts with no rows
      {30, 128, 8, 20, Pattern::Random, 0.1},              // E = 128
      {10, 4, 2, 8, Pattern::Random, 1.0},                 // every assignment dropped
      {2000, 8, 2, 64, Pattern::Random, 0.05, true, 1.0},  // several chunks per thread
  };
  for (const CombineShape& s : shapes) {
    out.push_back(std::make_unique<CombineCase<T>>(s, false));
    out.push_back(std::make_unique<CombineCase<T>>(s, true));
  }
}

}  // namespace

void add_activation_cases(CaseList& out) {
  add_activation<float>(out);
  add_activation<double>(out);
}

void add_combine_cases(CaseList& out) {
  add_combine<float>(out);
  add_combine<double>(out);
}

void add_activation_perf_cases(CaseList& out) {
  for (Activation act : {Activation::SwiGLU, Activation::Gelu}) {
    out.push_back(std::make_unique<ActivationCase<float>>(act, 1 << 22, false));
    out.push_back(std::make_unique<ActivationCase<float>>(act, 1 << 22, true));
  }
}

void add_combine_perf_cases(CaseList& out) {
  out.push_back(std::make_unique<CombineCase<float>>(CombineShape{4096, 8, 2, 1024}, false));
  out.push_back(std::make_unique<CombineCase<float>>(CombineShape{4096, 8, 2, 1024}, true));
}

}  // namespace moe::ops_test
