// Op table rows (see op_table.h): dispatch_rows, scale_scatter_rows, add_gated_rows, scatter_values
// (moe/kernels/ops_moves.h). Ref and Cpu only: the cuda column is empty, so supports(Cuda, ...)
// says "not implemented on cuda".
#pragma once

#include "kernels/rows_core.h"
#include "kernels/rows_routing.h"
#include "moe/kernels/ops_moves.h"

namespace moe::kernels {

// ---------------------------------------------------------------------------------------------
template <typename T>
struct OpRow<DispatchRowsArgs<T>> {
  using Args = DispatchRowsArgs<T>;
  static constexpr const char* name = "dispatch_rows";
  static HostFn<Args> ref() { return &ref::dispatch_rows<T>; }
  static HostFn<Args> cpu() { return &cpu::dispatch_rows<T>; }
  static DeviceFn<Args> cuda() { return nullptr; }
  static Support limits(Backend, const Args&) { return Support::yes(); }
  static bool validate(Backend b, const Args& g) {
    using namespace validate;
    check_size(name, "M", g.M);
    check_size(name, "N", g.N);
    check_size(name, "n_tokens", g.n_tokens);
    MOE_CHECK(g.N <= rows::kMaxIndex && g.n_tokens <= rows::kMaxIndex, name,
              ": N and n_tokens must be < 2^31");
    if (g.M == 0) return false;
    check_ptr(name, "perm", g.perm);
    check_ptr(name, "token", g.token);
    check_ptr(name, "weight", g.weight);
    check_ptr(name, "gather", g.gather);
    check_ptr(name, "row_weight", g.row_weight);
    if (rows::on_host(b)) {
      rows::check_ids(name, "perm", g.perm, g.M, "N", g.N);
      for (int64_t p = 0; p < g.M; ++p) {
        const int32_t t = g.token[g.perm[p]];
        MOE_CHECK(t >= 0 && t < g.n_tokens, name, ": token[", g.perm[p], "] = ", t,
                  " is outside [0, n_tokens = ", g.n_tokens, ")");
      }
    }
    return true;
  }
  static double flops(const Args&) { return 0.0; }
  static double bytes(const Args& g) { return static_cast<double>(g.M) * (12.0 + 2.0 * sizeof(T)); }
};

// ---------------------------------------------------------------------------------------------
template <typename T>
struct OpRow<ScaleScatterRowsArgs<T>> {
  using Args = ScaleScatterRowsArgs<T>;
  static constexpr const char* name = "scale_scatter_rows";
  static HostFn<Args> ref() { return &ref::scale_scatter_rows<T>; }
  static HostFn<Args> cpu() { return &cpu::scale_scatter_rows<T>; }
  static DeviceFn<Args> cuda() { return nullptr; }
  static Support limits(Backend, const Args&) { return Support::yes(); }
  static bool validate(Backend b, const Args& g) {
    using namespace validate;
    check_size(name, "M", g.M);
    check_size(name, "d", g.d);
    check_size(name, "dst_rows", g.dst_rows);
    MOE_CHECK(g.dst_rows <= rows::kMaxIndex, name, ": dst_rows must be < 2^31, got ", g.dst_rows);
    if (g.M == 0 || g.d == 0) return false;
    check_ptr(name, "src", g.src);
    check_ptr(name, "scale", g.scale);
    check_ptr(name, "out_row", g.out_row);
    check_ptr(name, "dst", g.dst);
    if (rows::on_host(b)) rows::check_ids(name, "out_row", g.out_row, g.M, "dst_rows", g.dst_rows);
    return true;
  }
  static double flops(const Args& g) { return static_cast<double>(g.M) * g.d; }
  static double bytes(const Args& g) {
    return static_cast<double>(g.M) * (2.0 * g.d + 1) * sizeof(T) + 4.0 * g.M;
  }
};

// ---------------------------------------------------------------------------------------------
template <typename T>
struct OpRow<AddGatedRowsArgs<T>> {
  using Args = AddGatedRowsArgs<T>;
  static constexpr const char* name = "add_gated_rows";
  static HostFn<Args> ref() { return &ref::add_gated_rows<T>; }
  static HostFn<Args> cpu() { return &cpu::add_gated_rows<T>; }
  static DeviceFn<Args> cuda() { return nullptr; }
  static Support limits(Backend, const Args&) { return Support::yes(); }
  static bool validate(Backend, const Args& g) {
    using namespace validate;
    check_size(name, "rows", g.rows);
    check_size(name, "d", g.d);
    if (g.rows == 0 || g.d == 0) return false;
    check_ptr(name, "src", g.src);
    check_ptr(name, "y", g.y);
    return true;
  }
  static double flops(const Args& g) { return static_cast<double>(g.rows) * g.d * (g.gate ? 2 : 1); }
  static double bytes(const Args& g) { return 3.0 * static_cast<double>(g.rows) * g.d * sizeof(T); }
};

// ---------------------------------------------------------------------------------------------
template <typename T>
struct OpRow<ScatterValuesArgs<T>> {
  using Args = ScatterValuesArgs<T>;
  static constexpr const char* name = "scatter_values";
  static HostFn<Args> ref() { return &ref::scatter_values<T>; }
  static HostFn<Args> cpu() { return &cpu::scatter_values<T>; }
  static DeviceFn<Args> cuda() { return nullptr; }
  static Support limits(Backend, const Args&) { return Support::yes(); }
  static bool validate(Backend b, const Args& g) {
    using namespace validate;
    check_size(name, "n", g.n);
    check_size(name, "dst_n", g.dst_n);
    MOE_CHECK(g.dst_n <= rows::kMaxIndex, name, ": dst_n must be < 2^31, got ", g.dst_n);
    if (g.n == 0) return false;
    check_ptr(name, "index", g.index);
    check_ptr(name, "src", g.src);
    check_ptr(name, "dst", g.dst);
    if (rows::on_host(b)) rows::check_ids(name, "index", g.index, g.n, "dst_n", g.dst_n);
    return true;
  }
  static double flops(const Args&) { return 0.0; }
  static double bytes(const Args& g) { return static_cast<double>(g.n) * (4.0 + 2.0 * sizeof(T)); }
};

}  // namespace moe::kernels
