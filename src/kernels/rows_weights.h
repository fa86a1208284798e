// Op table rows (see op_table.h): the GEMM over stored weight formats (grouped_gemm_w,
// moe/kernels/weights.h), and the format-specific ops that call it: grouped_gemm_bf16w and gemm_bf16w
// (ops_bf16.h), gemm_qw (ops_quant.h), each building a WeightView. Ref and Cpu only so far.
#pragma once

#include <cstdint>

#include "kernels/rows_core.h"
#include "moe/kernels/weights.h"

namespace moe::kernels {

template <>
struct OpRow<GroupedGemmWArgs> {
  using Args = GroupedGemmWArgs;
  static constexpr const char* name = "grouped_gemm_w";
  static HostFn<Args> ref() { return &ref::grouped_gemm_w; }
  static HostFn<Args> cpu() { return &cpu::grouped_gemm_w; }
  static DeviceFn<Args> cuda() { return nullptr; }
  static Support limits(Backend, const Args&) { return Support::yes(); }
  static bool validate(Backend b, const Args& g) {
    check_weight_view(name, g.W);
    const int64_t rows = rows::check_grouped(b, {.op = name,
                                                 .E = g.E,
                                                 .N = g.W.N,
                                                 .K = g.W.K,
                                                 .offsets = g.offsets,
                                                 .C = g.C,
                                                 .ldc = g.ldc,
                                                 .A = g.A,
                                                 .lda = g.lda,
                                                 .a_len = rows::a_row_len(g.a_preact, g.act, g.W.K),
                                                 .W = g.W.data,
                                                 .gather = g.gather});
    if (rows == rows::kNothingToDo) return false;
    MOE_CHECK(!(g.scale || g.out_row) || g.beta == 0.0f, name,
              ": scale and out_row store rows (beta must be 0, got ", g.beta, ")");
    if (g.out_row && rows > 0) validate::check_rows(name, "out_row", g.out_row, rows);
    return rows != 0;
  }
  static double flops(const Args& g) { return 2.0 * rows::host_rows(g.offsets, g.E) * g.W.N * g.W.K; }
  static double bytes(const Args& g) {
    const double R = rows::host_rows(g.offsets, g.E);
    return 4.0 * R * rows::a_row_len(g.a_preact, g.act, g.W.K) +
           static_cast<double>(g.E) * g.W.expert_bytes() + 4.0 * (g.beta != 0.0f ? 2 : 1) * R * g.W.N;
  }
};

namespace rows {

// The bf16 ops' arguments as grouped_gemm_w's.
inline GroupedGemmWArgs as_w(const GroupedGemmBf16Args& g) {
  return {.E = g.E,
          .offsets = g.offsets,
          .A = g.A,
          .lda = g.lda,
          .gather = g.gather,
          .W = {.format = WeightFormat::Bf16, .N = g.N, .K = g.K, .trans = g.trans_w, .data = g.W},
          .C = g.C,
          .ldc = g.ldc,
          .beta = g.beta,
          .scale = g.scale,
          .out_row = g.out_row,
          .a_preact = g.a_preact,
          .act = g.act};
}

// Runs op (grouped_gemm_w on one backend) on the format-specific op's arguments.
template <HostFn<GroupedGemmWArgs> op>
void grouped_bf16_as_w(const GroupedGemmBf16Args& g) {
  op(as_w(g));
}

}  // namespace rows

template <>
struct OpRow<GroupedGemmBf16Args> {
  using Args = GroupedGemmBf16Args;
  static constexpr const char* name = "grouped_gemm_bf16w";
  static HostFn<Args> ref() { return &rows::grouped_bf16_as_w<&ref::grouped_gemm_w>; }
  static HostFn<Args> cpu() { return &rows::grouped_bf16_as_w<&cpu::grouped_gemm_w>; }
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
    MOE_CHECK(!(g.scale || g.out_row) || g.beta == 0.0f, name,
              ": scale and out_row store rows (beta must be 0, got ", g.beta, ")");
    if (g.out_row && rows > 0) validate::check_rows(name, "out_row", g.out_row, rows);
    return rows != 0;
  }
  static double flops(const Args& g) { return 2.0 * rows::host_rows(g.offsets, g.E) * g.N * g.K; }
  static double bytes(const Args& g) {
    const double R = rows::host_rows(g.offsets, g.E);
    return 4.0 * R * rows::a_row_len(g.a_preact, g.act, g.K) + 2.0 * g.E * g.N * g.K +
           4.0 * (g.beta != 0.0f ? 2 : 1) * R * g.N;
  }
};

// The dense case: one expert that owns all M rows.
template <>
struct OpRow<GemmBf16Args> {
  using Args = GemmBf16Args;
  static constexpr const char* name = "gemm_bf16w";
  template <HostFn<GroupedGemmWArgs> op>
  static void as_grouped(const Args& g) {
    const int32_t offsets[2] = {0, static_cast<int32_t>(g.M)};
    op(rows::as_w(GroupedGemmBf16Args{.E = 1,
                                      .N = g.N,
                                      .K = g.K,
                                      .offsets = offsets,
                                      .A = g.A,
                                      .lda = g.lda,
                                      .W = g.W,
                                      .trans_w = g.trans_w,
                                      .C = g.C,
                                      .ldc = g.ldc,
                                      .beta = g.beta}));
  }
  static HostFn<Args> ref() { return &as_grouped<&ref::grouped_gemm_w>; }
  static HostFn<Args> cpu() { return &as_grouped<&cpu::grouped_gemm_w>; }
  static DeviceFn<Args> cuda() { return nullptr; }
  static Support limits(Backend, const Args&) { return Support::yes(); }
  static bool validate(Backend, const Args& g) {
    using namespace validate;
    check_size(name, "M", g.M);
    check_size(name, "N", g.N);
    check_size(name, "K", g.K);
    MOE_CHECK(g.M <= INT32_MAX, name, ": M = ", g.M, " does not fit the int32 row offsets");
    if (g.M == 0 || g.N == 0) return false;
    check_ptr(name, "C", g.C);
    check_stride(name, "ldc", g.ldc, g.N);
    if (g.K > 0) {
      check_ptr(name, "A", g.A);
      check_ptr(name, "W", g.W);
      check_stride(name, "lda", g.lda, g.K);
    }
    return true;
  }
  static double flops(const Args& g) { return 2.0 * g.M * g.N * g.K; }
  static double bytes(const Args& g) {
    return 4.0 * g.M * g.K + 2.0 * g.N * g.K + 4.0 * (g.beta != 0.0f ? 2 : 1) * g.M * g.N;
  }
};

template <>
struct OpRow<GemmQuantArgs> {
  using Args = GemmQuantArgs;
  static constexpr const char* name = "gemm_qw";
  // One expert that owns all M rows.
  template <HostFn<GroupedGemmWArgs> op>
  static void as_grouped(const Args& g) {
    const int32_t offsets[2] = {0, static_cast<int32_t>(g.M)};
    const QuantWeight& W = g.W;
    op(GroupedGemmWArgs{.E = 1,
                        .offsets = offsets,
                        .A = g.A,
                        .lda = g.lda,
                        .gather = g.gather,
                        .W = {.format = W.bits == 8 ? WeightFormat::Int8 : WeightFormat::Int4,
                              .N = W.N,
                              .K = W.K,
                              .data = W.q,
                              .scales = W.scales,
                              .mins = W.bits == 8 ? nullptr : W.mins,
                              .group = W.group},
                        .C = g.C,
                        .ldc = g.ldc,
                        .beta = g.beta});
  }
  static HostFn<Args> ref() { return &as_grouped<&ref::grouped_gemm_w>; }
  static HostFn<Args> cpu() { return &as_grouped<&cpu::grouped_gemm_w>; }
  static DeviceFn<Args> cuda() { return nullptr; }
  static Support limits(Backend, const Args&) { return Support::yes(); }
  static bool validate(Backend, const Args& g) {
    using namespace validate;
    const QuantWeight& W = g.W;
    check_size(name, "M", g.M);
    MOE_CHECK(g.M <= INT32_MAX, name, ": M = ", g.M, " does not fit the int32 row offsets");
    check_size(name, "N", W.N);
    check_size(name, "K", W.K);
    MOE_CHECK(W.bits == 4 || W.bits == 8, name, ": W.bits must be 4 or 8, got ", W.bits);
    MOE_CHECK(W.group > 0 && W.group % 32 == 0, name, ": W.group must be a positive multiple of 32, got ",
              W.group);
    MOE_CHECK(W.K % W.group == 0, name, ": K = ", W.K, " is not a multiple of the group size ", W.group);
    if (g.M == 0 || W.N == 0) return false;
    check_ptr(name, "C", g.C);
    check_stride(name, "ldc", g.ldc, W.N);
    if (W.K > 0) {
      check_ptr(name, "A", g.A);
      check_stride(name, "lda", g.lda, W.K);
      check_ptr(name, "W.q", W.q);
      check_ptr(name, "W.scales", W.scales);
      if (W.bits == 4) check_ptr(name, "W.mins", W.mins);
    }
    if (g.gather) check_rows(name, "gather", g.gather, g.M);
    return true;
  }
  static double flops(const Args& g) { return 2.0 * g.M * g.W.N * g.W.K; }
  static double bytes(const Args& g) {
    const double NK = static_cast<double>(g.W.N) * g.W.K;
    const double groups = g.W.group > 0 ? NK / g.W.group : 0;
    return 4.0 * g.M * g.W.K + NK * g.W.bits / 8 + groups * (g.W.bits == 4 ? 4 : 2) +
           4.0 * (g.beta != 0.0f ? 2 : 1) * g.M * g.W.N;
  }
};

}  // namespace moe::kernels
