// Row-move op cases: dispatch_rows, scale_scatter_rows, add_gated_rows, scatter_values
// (moe/kernels/ops_moves.h). Tolerance principle: the index moves are exact; a scaled copy is one
// product in T on both paths (exact); the gated add is one product and one sum, which the reference
// rounds once from double and the Cpu path may round twice: |error| <= 2u (|y| + |g · src|).
#include <algorithm>
#include <cmath>
#include <memory>
#include <numeric>
#include <string>

#include "moe/core/error.h"
#include "moe/kernels/ops_moves.h"
#include "op_cases.h"

namespace moe::ops_test {

namespace {

template <typename T>
class MoveCase : public OpCase {
 public:
  bool is_double() const override { return std::is_same_v<T, double>; }
  std::string name() const override {
    return op() + "[" + (std::is_same_v<T, float> ? "f32" : "f64") + "](" + params() + ")";
  }
  virtual std::string params() const = 0;
};

// A permutation of [0, n) from a seed (Fisher-Yates on the counter-based stream).
std::vector<int32_t> shuffled(const Rng& rng, int64_t n) {
  std::vector<int32_t> v(static_cast<size_t>(n));
  std::iota(v.begin(), v.end(), 0);
  for (int64_t i = n - 1; i > 0; --i)
    std::swap(v[static_cast<size_t>(i)],
              v[rng.below(static_cast<uint64_t>(i), static_cast<uint64_t>(i + 1))]);
  return v;
}

// ---------------------------------------------------------------------------------------------
// dispatch_rows: M of N assignments (a random subset, as when some are dropped), tokens of T.
template <typename T>
class DispatchRowsCase : public MoveCase<T> {
 public:
  DispatchRowsCase(int64_t M, int64_t N, int64_t n_tokens) : M_(M), N_(N), T_(n_tokens) {}
  std::string op() const override { return "dispatch_rows"; }
  std::string params() const override { return cat("M=", M_, ",N=", N_, ",T=", T_); }
  Buffers make(uint64_t seed) const override {
    const Rng rng(seed);
    Buffers b;
    b.add<int32_t>("perm", M_);
    b.add<int32_t>("token", N_);
    b.add<T>("weight", N_);
    b.add<int32_t>("gather", M_, Role::Out);
    b.add<T>("row_weight", M_, Role::Out);
    const std::vector<int32_t> p = shuffled(rng.fork(1), N_);
    std::copy(p.begin(), p.begin() + M_, b.host<int32_t>(kPerm));
    for (int64_t a = 0; a < N_; ++a)
      b.host<int32_t>(kToken)[a] = static_cast<int32_t>(rng.fork(2).below(static_cast<uint64_t>(a), T_));
    fill_values(rng.fork(3), b.host<T>(kWeight), N_);
    return b;
  }
  template <class F>
  decltype(auto) with_args(Buffers& b, F&& f) const {
    const kernels::DispatchRowsArgs<T> a{.M = M_,
                                         .N = N_,
                                         .n_tokens = T_,
                                         .perm = b.arg<int32_t>(kPerm),
                                         .token = b.arg<int32_t>(kToken),
                                         .weight = b.arg<T>(kWeight),
                                         .gather = b.arg<int32_t>(kGather),
                                         .row_weight = b.arg<T>(kRowWeight)};
    return f(a);
  }
  MOE_OP_CASE_ARGS
  double flops() const override { return 0.0; }
  double bytes() const override { return static_cast<double>(M_) * (12.0 + 2.0 * sizeof(T)); }

 private:
  enum { kPerm, kToken, kWeight, kGather, kRowWeight };
  int64_t M_, N_, T_;
};

// ---------------------------------------------------------------------------------------------
// scale_scatter_rows: M rows to distinct rows of an output of dst_rows (the others keep their
// values, so dst is InOut).
template <typename T>
class ScaleScatterCase : public MoveCase<T> {
 public:
  ScaleScatterCase(int64_t M, int64_t d, int64_t dst_rows) : M_(M), d_(d), R_(dst_rows) {}
  std::string op() const override { return "scale_scatter_rows"; }
  std::string params() const override { return cat("M=", M_, ",d=", d_, ",dst_rows=", R_); }
  Buffers make(uint64_t seed) const override {
    const Rng rng(seed);
    Buffers b;
    b.add<T>("src", M_ * d_);
    b.add<T>("scale", M_);
    b.add<int32_t>("out_row", M_);
    b.add<T>("dst", R_ * d_, Role::InOut);
    fill_values(rng.fork(1), b.host<T>(kSrc), M_ * d_);
    fill_values(rng.fork(2), b.host<T>(kScale), M_);
    fill_values(rng.fork(3), b.host<T>(kDst), R_ * d_);
    const std::vector<int32_t> rows = shuffled(rng.fork(4), R_);
    std::copy(rows.begin(), rows.begin() + M_, b.host<int32_t>(kOutRow));
    return b;
  }
  template <class F>
  decltype(auto) with_args(Buffers& b, F&& f) const {
    const kernels::ScaleScatterRowsArgs<T> a{.M = M_,
                                             .d = d_,
                                             .dst_rows = R_,
                                             .src = b.arg<T>(kSrc),
                                             .scale = b.arg<T>(kScale),
                                             .out_row = b.arg<int32_t>(kOutRow),
                                             .dst = b.arg<T>(kDst)};
    return f(a);
  }
  MOE_OP_CASE_ARGS
  double flops() const override { return static_cast<double>(M_) * d_; }
  double bytes() const override { return 2.0 * M_ * d_ * sizeof(T); }

 private:
  enum { kSrc, kScale, kOutRow, kDst };
  int64_t M_, d_, R_;
};

// ---------------------------------------------------------------------------------------------
template <typename T>
class AddGatedCase : public MoveCase<T> {
 public:
  AddGatedCase(int64_t rows, int64_t d, bool gate) : rows_(rows), d_(d), gate_(gate) {}
  std::string op() const override { return "add_gated_rows"; }
  std::string params() const override { return cat("rows=", rows_, ",d=", d_, gate_ ? ",gate" : ""); }
  Buffers make(uint64_t seed) const override {
    const Rng rng(seed);
    Buffers b;
    b.add<T>("gate", gate_ ? rows_ : 0);
    b.add<T>("src", rows_ * d_);
    b.add<T>("y", rows_ * d_, Role::InOut);
    fill_values(rng.fork(1), b.host<T>(kGate), gate_ ? rows_ : 0);
    fill_values(rng.fork(2), b.host<T>(kSrc), rows_ * d_);
    fill_values(rng.fork(3), b.host<T>(kY), rows_ * d_);
    return b;
  }
  template <class F>
  decltype(auto) with_args(Buffers& b, F&& f) const {
    const kernels::AddGatedRowsArgs<T> a{.rows = rows_,
                                         .d = d_,
                                         .gate = gate_ ? b.arg<T>(kGate) : nullptr,
                                         .src = b.arg<T>(kSrc),
                                         .y = b.arg<T>(kY)};
    return f(a);
  }
  MOE_OP_CASE_ARGS
  std::vector<double> tolerance(const Buffers& in, int id) const override {
    std::vector<double> tol(static_cast<size_t>(in[id].count), 0.0);
    if (id != kY) return tol;
    for (int64_t t = 0; t < rows_; ++t) {
      const double g = gate_ ? std::fabs(in.host<T>(kGate)[t]) : 1.0;
      for (int64_t i = 0; i < d_; ++i) {
        const int64_t j = t * d_ + i;
        tol[static_cast<size_t>(j)] =
            2 * unit_roundoff<T>() * (std::fabs(in.host<T>(kY)[j]) + g * std::fabs(in.host<T>(kSrc)[j]));
      }
    }
    return tol;
  }
  double flops() const override { return 2.0 * rows_ * d_; }
  double bytes() const override { return 3.0 * rows_ * d_ * sizeof(T); }

 private:
  enum { kGate, kSrc, kY };
  int64_t rows_, d_;
  bool gate_;
};

// ---------------------------------------------------------------------------------------------
template <typename T>
class ScatterValuesCase : public MoveCase<T> {
 public:
  ScatterValuesCase(int64_t n, int64_t dst_n) : n_(n), dst_n_(dst_n) {}
  std::string op() const override { return "scatter_values"; }
  std::string params() const override { return cat("n=", n_, ",dst_n=", dst_n_); }
  Buffers make(uint64_t seed) const override {
    const Rng rng(seed);
    Buffers b;
    b.add<int32_t>("index", n_);
    b.add<T>("src", n_);
    b.add<T>("dst", dst_n_, Role::InOut);
    const std::vector<int32_t> idx = shuffled(rng.fork(1), dst_n_);
    std::copy(idx.begin(), idx.begin() + n_, b.host<int32_t>(kIndex));
    fill_values(rng.fork(2), b.host<T>(kSrc), n_);
    fill_values(rng.fork(3), b.host<T>(kDst), dst_n_);
    return b;
  }
  template <class F>
  decltype(auto) with_args(Buffers& b, F&& f) const {
    const kernels::ScatterValuesArgs<T> a{.n = n_,
                                          .dst_n = dst_n_,
                                          .index = b.arg<int32_t>(kIndex),
                                          .src = b.arg<T>(kSrc),
                                          .dst = b.arg<T>(kDst)};
    return f(a);
  }
  MOE_OP_CASE_ARGS
  double flops() const override { return 0.0; }
  double bytes() const override { return static_cast<double>(n_) * (4.0 + 2.0 * sizeof(T)); }

 private:
  enum { kIndex, kSrc, kDst };
  int64_t n_, dst_n_;
};

template <typename T>
void add_typed(CaseList& out) {
  for (auto [M, N, nT] : {std::tuple{0, 8, 4}, {1, 1, 1}, {37, 64, 16}, {64, 64, 32}, {20000, 40000, 5000}})
    out.push_back(std::make_unique<DispatchRowsCase<T>>(M, N, nT));
  for (auto [M, d, R] :
       {std::tuple{0, 8, 4}, {5, 0, 5}, {1, 1, 1}, {33, 17, 40}, {64, 256, 64}, {300, 96, 512}})
    out.push_back(std::make_unique<ScaleScatterCase<T>>(M, d, R));
  for (bool gate : {false, true})
    for (auto [rows, d] : {std::pair{0, 8}, {1, 1}, {33, 17}, {257, 128}})
      out.push_back(std::make_unique<AddGatedCase<T>>(rows, d, gate));
  for (auto [n, dst] : {std::pair{0, 4}, {1, 1}, {50, 64}, {30000, 40000}})
    out.push_back(std::make_unique<ScatterValuesCase<T>>(n, dst));
}

}  // namespace

void add_moves_cases(CaseList& out) {
  add_typed<float>(out);
  add_typed<double>(out);
}

}  // namespace moe::ops_test
