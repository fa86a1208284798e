// Op table rows (see op_table.h): the fused expert FFN ops (grouped_ffn_up,
// grouped_ffn_down_backward, grouped_gemm_cat, grouped_gemm_scatter). Ref and Cpu only so far.
#pragma once

#include <type_traits>

#include "kernels/rows_core.h"
#include "moe/kernels/weight_view.h"

namespace moe::kernels {

// ---------------------------------------------------------------------------------------------
template <typename T>
struct OpRow<FfnUpArgs<T>> {
  using Args = FfnUpArgs<T>;
  static constexpr const char* name = "grouped_ffn_up";
  static HostFn<Args> ref() { return &ref::grouped_ffn_up<T>; }
  static HostFn<Args> cpu() { return &cpu::grouped_ffn_up<T>; }
  static DeviceFn<Args> cuda() { return nullptr; }
  static Support limits(Backend, const Args&) { return Support::yes(); }
  static bool validate(Backend b, const Args& g) {
    using namespace validate;
    check_size(name, "E", g.E);
    check_size(name, "F", g.F);
    check_size(name, "K", g.K);
    if (g.E == 0 || g.F == 0) return false;
    const bool swiglu = g.act == Activation::SwiGLU;
    check_ptr(name, "offsets", g.offsets);
    const int64_t rows = rows::sorted_rows(b, name, g.offsets, g.E);
    if (g.H) check_stride(name, "ldh", g.ldh, g.F);
    if (g.U) check_stride(name, "ldu", g.ldu, g.F);
    if (g.G) check_stride(name, "ldg", g.ldg, g.F);
    MOE_CHECK(swiglu || g.G == nullptr, name, ": G is only produced for swiglu");
    if (g.K > 0 && rows > 0) {
      check_ptr(name, "A", g.A);
      check_stride(name, "lda", g.lda, g.K);
      check_ptr(name, "W_up", g.W_up);
      if (swiglu) check_ptr(name, "W_gate (swiglu)", g.W_gate);
    }
    if (g.gather && rows > 0) check_rows(name, "gather", g.gather, rows);
    return true;
  }
  static double flops(const Args& g) {
    const int mats = g.act == Activation::SwiGLU ? 2 : 1;
    return 2.0 * mats * rows::host_rows(g.offsets, g.E) * g.F * g.K;
  }
  static double bytes(const Args& g) {
    const double R = rows::host_rows(g.offsets, g.E);
    const int mats = g.act == Activation::SwiGLU ? 2 : 1;
    const int outs = (g.H ? 1 : 0) + (g.G ? 1 : 0) + (g.U ? 1 : 0);
    return sizeof(T) * (R * g.K + mats * static_cast<double>(g.E) * g.F * g.K + outs * R * g.F);
  }
};

// ---------------------------------------------------------------------------------------------
template <typename T>
struct OpRow<FfnDownBackwardArgs<T>> {
  using Args = FfnDownBackwardArgs<T>;
  static constexpr const char* name = "grouped_ffn_down_backward";
  static HostFn<Args> ref() { return &ref::grouped_ffn_down_backward<T>; }
  static HostFn<Args> cpu() { return &cpu::grouped_ffn_down_backward<T>; }
  static DeviceFn<Args> cuda() { return nullptr; }
  static Support limits(Backend, const Args&) { return Support::yes(); }
  static bool validate(Backend b, const Args& g) {
    using namespace validate;
    check_size(name, "E", g.E);
    check_size(name, "F", g.F);
    check_size(name, "D", g.D);
    if (g.E == 0) return false;
    const bool swiglu = g.act == Activation::SwiGLU;
    check_ptr(name, "offsets", g.offsets);
    const int64_t rows = rows::sorted_rows(b, name, g.offsets, g.E);
    if (rows > 0 && g.F > 0) {
      check_ptr(name, "U", g.U);
      check_ptr(name, "dU", g.dU);
      check_stride(name, "ldu", g.ldu, g.F);
      check_stride(name, "lddu", g.lddu, g.F);
      if (swiglu) {
        check_ptr(name, "G (swiglu)", g.G);
        check_ptr(name, "dG (swiglu)", g.dG);
        check_stride(name, "ldg", g.ldg, g.F);
        check_stride(name, "lddg", g.lddg, g.F);
      }
      if (g.Hs) check_stride(name, "ldhs", g.ldhs, g.F);
      if (g.D > 0) {
        check_ptr(name, "dY", g.dY);
        if (!g.W_down_w.data) check_ptr(name, "W_down", g.W_down);
        check_stride(name, "ldy", g.ldy, g.D);
      }
    }
    if (g.W_down_w.data) check_weights(g);
    if (g.gather && rows > 0) check_rows(name, "gather", g.gather, rows);
    return true;
  }
  // W_down_w: float only, a format without activation quantization, op(W) (D, F).
  static void check_weights(const Args& g) {
    const WeightView& w = g.W_down_w;
    check_weight_view(name, w);
    MOE_CHECK((std::is_same_v<T, float>), name, ": W_down_w needs float rows");
    MOE_CHECK(w.format == WeightFormat::F32 || is_bf16(w.format), name, ": W_down_w is ",
              weight_format_name(w.format), " (f32, bf16 or bf16-packed)");
    MOE_CHECK(w.K == g.D && w.N == g.F, name, ": W_down_w's op(W) is (", w.K, ", ", w.N,
              "), expected (D, F) = (", g.D, ", ", g.F, ")");
  }
  static double flops(const Args& g) { return 2.0 * rows::host_rows(g.offsets, g.E) * g.D * g.F; }
  static double bytes(const Args& g) {
    const double R = rows::host_rows(g.offsets, g.E);
    const int per_row = (g.act == Activation::SwiGLU ? 4 : 2) + (g.Hs ? 1 : 0);
    return sizeof(T) * (R * g.D + static_cast<double>(g.E) * g.D * g.F + per_row * R * g.F);
  }
};

// ---------------------------------------------------------------------------------------------
template <typename T>
struct OpRow<GroupedGemmCatArgs<T>> {
  using Args = GroupedGemmCatArgs<T>;
  static constexpr const char* name = "grouped_gemm_cat";
  static HostFn<Args> ref() { return &ref::grouped_gemm_cat<T>; }
  static HostFn<Args> cpu() { return &cpu::grouped_gemm_cat<T>; }
  static DeviceFn<Args> cuda() { return nullptr; }
  static Support limits(Backend, const Args&) { return Support::yes(); }
  static bool validate(Backend b, const Args& g) {
    using namespace validate;
    check_size(name, "E", g.E);
    check_size(name, "N", g.N);
    check_size(name, "K1", g.K1);
    check_size(name, "K2", g.K2);
    if (g.E == 0 || g.N == 0) return false;
    check_ptr(name, "offsets", g.offsets);
    const int64_t rows = rows::sorted_rows(b, name, g.offsets, g.E);
    check_rows_ptr(name, "C", g.C, rows);
    check_stride(name, "ldc", g.ldc, g.N);
    if (g.K1 + g.K2 > 0) {
      check_rows_ptr(name, "A", g.A, rows);
      check_stride(name, "lda", g.lda, g.K1 + g.K2);
      if (g.K1 > 0) check_ptr(name, "W1", g.W1);
      if (g.K2 > 0) check_ptr(name, "W2", g.W2);
    }
    if (g.gather && rows > 0) check_rows(name, "gather", g.gather, rows);
    return true;
  }
  static double flops(const Args& g) { return 2.0 * rows::host_rows(g.offsets, g.E) * g.N * (g.K1 + g.K2); }
  static double bytes(const Args& g) {
    const double R = rows::host_rows(g.offsets, g.E), K = static_cast<double>(g.K1 + g.K2);
    return sizeof(T) * (R * K + g.E * K * g.N + (g.beta != T(0) ? 2.0 : 1.0) * R * g.N);
  }
};

// ---------------------------------------------------------------------------------------------
template <typename T>
struct OpRow<GroupedGemmScatterArgs<T>> {
  using Args = GroupedGemmScatterArgs<T>;
  static constexpr const char* name = "grouped_gemm_scatter";
  static HostFn<Args> ref() { return &ref::grouped_gemm_scatter<T>; }
  static HostFn<Args> cpu() { return &cpu::grouped_gemm_scatter<T>; }
  static DeviceFn<Args> cuda() { return nullptr; }
  static Support limits(Backend, const Args&) { return Support::yes(); }
  static bool validate(Backend b, const Args& g) {
    const int64_t rows = rows::check_grouped(b, {.op = name,
                                                 .E = g.E,
                                                 .N = g.N,
                                                 .K = g.K,
                                                 .offsets = g.offsets,
                                                 .C = g.C,
                                                 .ldc = g.ldc,
                                                 .A = g.A,
                                                 .lda = g.lda,
                                                 .a_len = rows::a_row_len(g.a_preact, g.act, g.K),
                                                 .W = g.W,
                                                 .gather = g.gather});
    if (rows == rows::kNothingToDo) return false;
    if (g.out_row && rows > 0) validate::check_rows(name, "out_row", g.out_row, rows);
    return true;
  }
  static double flops(const Args& g) { return 2.0 * rows::host_rows(g.offsets, g.E) * g.N * g.K; }
  static double bytes(const Args& g) {
    const double R = rows::host_rows(g.offsets, g.E);
    return sizeof(T) *
           (R * rows::a_row_len(g.a_preact, g.act, g.K) + static_cast<double>(g.E) * g.N * g.K + R * g.N);
  }
};

}  // namespace moe::kernels
