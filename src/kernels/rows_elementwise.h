// Op table rows (see op_table.h): activation, activation_backward, combine, combine_backward.
#pragma once

#include "kernels/rows_core.h"

namespace moe::kernels {

namespace rows {
// Rough arithmetic per element of an activation (exp, division and products), for the perf mode.
inline double act_flops(Activation a) {
  return a == Activation::SwiGLU ? 6.0 : a == Activation::Relu ? 1.0 : 5.0;
}
}  // namespace rows

// ---------------------------------------------------------------------------------------------
template <typename T>
struct OpRow<ActivationArgs<T>> {
  using Args = ActivationArgs<T>;
  static constexpr const char* name = "activation";
  static HostFn<Args> ref() { return &ref::activation<T>; }
  static HostFn<Args> cpu() { return &cpu::activation<T>; }
  MOE_OP_ROW_CUDA_FLOAT(cuda::activation)
  static Support limits(Backend, const Args&) { return Support::yes(); }
  static bool validate(Backend, const Args& g) {
    using namespace validate;
    check_size(name, "n", g.n);
    if (g.n == 0) return false;
    check_ptr(name, "a", g.a);
    check_ptr(name, "out", g.out);
    if (g.act == Activation::SwiGLU) check_ptr(name, "b (swiglu)", g.b);
    return true;
  }
  static double flops(const Args& g) { return rows::act_flops(g.act) * static_cast<double>(g.n); }
  static double bytes(const Args& g) {
    return static_cast<double>(sizeof(T)) * g.n * (g.act == Activation::SwiGLU ? 3 : 2);
  }
};

template <typename T>
struct OpRow<ActivationBackwardArgs<T>> {
  using Args = ActivationBackwardArgs<T>;
  static constexpr const char* name = "activation_backward";
  static HostFn<Args> ref() { return &ref::activation_backward<T>; }
  static HostFn<Args> cpu() { return &cpu::activation_backward<T>; }
  MOE_OP_ROW_CUDA_FLOAT(cuda::activation_backward)
  static Support limits(Backend, const Args&) { return Support::yes(); }
  static bool validate(Backend, const Args& g) {
    using namespace validate;
    check_size(name, "n", g.n);
    if (g.n == 0) return false;
    check_ptr(name, "a", g.a);
    check_ptr(name, "dout", g.dout);
    check_ptr(name, "da", g.da);
    if (g.act == Activation::SwiGLU) check_ptr(name, "b (swiglu)", g.b);
    return true;
  }
  static double flops(const Args& g) { return 2 * rows::act_flops(g.act) * static_cast<double>(g.n); }
  static double bytes(const Args& g) {
    return static_cast<double>(sizeof(T)) * g.n * (g.act == Activation::SwiGLU ? 5 : 3);
  }
};

// ---------------------------------------------------------------------------------------------
template <typename T>
struct OpRow<CombineArgs<T>> {
  using Args = CombineArgs<T>;
  static constexpr const char* name = "combine";
  static HostFn<Args> ref() { return &ref::combine<T>; }
  static HostFn<Args> cpu() { return &cpu::combine<T>; }
  MOE_OP_ROW_CUDA_FLOAT(cuda::combine)
  static Support limits(Backend, const Args&) { return Support::yes(); }
  static bool validate(Backend b, const Args& g) {
    using namespace validate;
    check_size(name, "T", g.T_);
    check_size(name, "D", g.D);
    if (g.T_ == 0 || g.D == 0) return false;
    check_ptr(name, "tok_offsets", g.tok_offsets);
    check_ptr(name, "Y", g.Y);
    check_ptr(name, "tok_assign", g.tok_assign);
    check_ptr(name, "pos", g.pos);
    if (rows::on_host(b)) {
      check_offsets(name, "tok_offsets", g.tok_offsets, g.T_);
      check_rows(name, "tok_assign", g.tok_assign, g.tok_offsets[g.T_]);
      // X may be null only when it has no rows, i.e. every assignment is dropped.
      if (g.X == nullptr) rows::check_all_dropped(name, "X", g.pos, g.tok_assign, g.tok_offsets[g.T_]);
    } else {
      check_ptr(name, "X", g.X);
    }
    return true;
  }
  static double assignments(const Args& g) {
    return g.tok_offsets != nullptr && g.T_ > 0 ? static_cast<double>(g.tok_offsets[g.T_]) : 0.0;
  }
  static double flops(const Args& g) { return 2.0 * assignments(g) * g.D; }
  static double bytes(const Args& g) {
    const double A = assignments(g);
    return sizeof(T) * (A * g.D + (g.beta != T(0) ? 2.0 : 1.0) * g.T_ * g.D) + 4.0 * (g.T_ + 1 + 2 * A);
  }
};

template <typename T>
struct OpRow<CombineBackwardArgs<T>> {
  using Args = CombineBackwardArgs<T>;
  static constexpr const char* name = "combine_backward";
  static HostFn<Args> ref() { return &ref::combine_backward<T>; }
  static HostFn<Args> cpu() { return &cpu::combine_backward<T>; }
  MOE_OP_ROW_CUDA_FLOAT(cuda::combine_backward)
  static Support limits(Backend, const Args&) { return Support::yes(); }
  static bool validate(Backend b, const Args& g) {
    using namespace validate;
    check_size(name, "N", g.N);
    check_size(name, "D", g.D);
    if (g.N == 0) return false;
    check_ptr(name, "token", g.token);
    check_ptr(name, "pos", g.pos);
    if (g.D > 0) {
      check_ptr(name, "dY", g.dY);
      if (rows::on_host(b)) {
        // dX and X may be null only when they have no rows, i.e. every assignment is dropped.
        if (g.dX == nullptr) rows::check_all_dropped(name, "dX", g.pos, nullptr, g.N);
        if (g.dweight && g.X == nullptr)
          rows::check_all_dropped(name, "X (needed for dweight)", g.pos, nullptr, g.N);
      } else {
        check_ptr(name, "dX", g.dX);
        if (g.dweight) check_ptr(name, "X (needed for dweight)", g.X);
      }
    }
    if (rows::on_host(b)) check_rows(name, "token", g.token, g.N);
    return true;
  }
  static double flops(const Args& g) { return static_cast<double>(g.N) * g.D * (g.dweight ? 3 : 1); }
  static double bytes(const Args& g) {
    return static_cast<double>(sizeof(T)) * g.N * g.D * (g.dweight ? 3 : 2) + 8.0 * g.N;
  }
};

}  // namespace moe::kernels
