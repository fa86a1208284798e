// Op table rows (see op_table.h): gemm, permute, grouped_gemm, grouped_gemm_wgrad.
#pragma once

#include <cstdint>
#include <limits>

#include "kernels/cpu/cpu.h"
#include "kernels/op_table.h"
#include "kernels/ref/ref.h"
#include "kernels/validate.h"
#ifdef MOE_HAVE_CUDA
#include "kernels/cuda/cuda.h"
#endif

namespace moe::kernels {

namespace rows {

using namespace validate;

constexpr int64_t kMaxIndex = std::numeric_limits<int32_t>::max();

inline bool on_host(Backend b) { return b != Backend::Cuda; }

// The number of sorted rows, offsets[E], after checking offsets, on host backends; -1 (unknown)
// on Cuda, where offsets live on the device.
inline int64_t sorted_rows(Backend b, const char* op, const int32_t* offsets, int64_t E) {
  if (!on_host(b)) return -1;
  check_offsets(op, "offsets", offsets, E);
  return offsets[E];
}

// The sorted rows of a grouped op for its cost (offsets read on the host; 0 when absent).
inline double host_rows(const int32_t* offsets, int64_t E) {
  return offsets != nullptr && E > 0 ? static_cast<double>(offsets[E]) : 0.0;
}

// Length of a stored A row when A is given as pre-activations (SwiGLU keeps [G | U]).
inline int64_t a_row_len(bool a_preact, Activation act, int64_t K) {
  return a_preact && act == Activation::SwiGLU ? 2 * K : K;
}

// The checks every grouped GEMM over (E, N, K) shares: the sizes, offsets, C (rows, N), A (rows of
// at least a_len values) and the weights W when K > 0, and the gather. Returns the number of sorted
// rows (-1 on Cuda, where offsets live on the device), or -2 when there is nothing to do (E or N 0).
struct GroupedCheck {
  const char* op = "";
  int64_t E = 0, N = 0, K = 0;
  const int32_t* offsets = nullptr;
  const void* C = nullptr;
  int64_t ldc = 0;
  const void* A = nullptr;
  int64_t lda = 0, a_len = 0;
  const void* W = nullptr;
  const int32_t* gather = nullptr;
};
constexpr int64_t kNothingToDo = -2;

inline int64_t check_grouped(Backend b, const GroupedCheck& c) {
  check_size(c.op, "E", c.E);
  check_size(c.op, "N", c.N);
  check_size(c.op, "K", c.K);
  if (c.E == 0 || c.N == 0) return kNothingToDo;
  check_ptr(c.op, "offsets", c.offsets);
  const int64_t rows = sorted_rows(b, c.op, c.offsets, c.E);
  check_rows_ptr(c.op, "C", c.C, rows);
  check_stride(c.op, "ldc", c.ldc, c.N);
  if (c.K > 0) {
    check_rows_ptr(c.op, "A", c.A, rows);
    check_ptr(c.op, "W", c.W);
    check_stride(c.op, "lda", c.lda, c.a_len);
  }
  if (c.gather && rows > 0) check_rows(c.op, "gather", c.gather, rows);
  return rows;
}

// A null row buffer is fine only when no assignment (list[i], or i when list is null) is kept.
inline void check_all_dropped(const char* op, const char* name, const int32_t* pos, const int32_t* list,
                              int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const int64_t a = list ? list[i] : i;
    MOE_CHECK(pos[a] < 0, op, ": ", name, " is null but assignment ", a, " is kept (pos = ", pos[a], ")");
  }
}

}  // namespace rows

// ---------------------------------------------------------------------------------------------
template <typename T>
struct OpRow<GemmArgs<T>> {
  using Args = GemmArgs<T>;
  static constexpr const char* name = "gemm";
  static HostFn<Args> ref() { return &ref::gemm<T>; }
  static HostFn<Args> cpu() { return &cpu::gemm<T>; }
  MOE_OP_ROW_CUDA_FLOAT(cuda::gemm)
  static Support limits(Backend, const Args&) { return Support::yes(); }
  static bool validate(Backend, const Args& g) {
    using namespace validate;
    check_size(name, "M", g.M);
    check_size(name, "N", g.N);
    check_size(name, "K", g.K);
    if (g.M == 0 || g.N == 0) return false;
    check_ptr(name, "C", g.C);
    check_stride(name, "ldc", g.ldc, g.N);
    if (g.K > 0) {
      check_ptr(name, "A", g.A);
      check_ptr(name, "B", g.B);
      check_stride(name, "lda", g.lda, g.trans_a ? g.M : g.K);
      check_stride(name, "ldb", g.ldb, g.trans_b ? g.K : g.N);
    }
    return true;
  }
  static double flops(const Args& g) { return 2.0 * g.M * g.N * g.K; }
  static double bytes(const Args& g) {
    return static_cast<double>(sizeof(T)) * (g.M * g.K + g.K * g.N + (g.beta != T(0) ? 2 : 1) * g.M * g.N);
  }
};

// ---------------------------------------------------------------------------------------------
template <>
struct OpRow<PermuteArgs> {
  using Args = PermuteArgs;
  static constexpr const char* name = "permute";
  static HostFn<Args> ref() { return &ref::permute; }
  static HostFn<Args> cpu() { return &cpu::permute; }
#ifdef MOE_HAVE_CUDA
  static DeviceFn<Args> cuda() { return &cuda::permute; }  // checks expert ids on the device
#else
  static DeviceFn<Args> cuda() { return nullptr; }
#endif
  static Support limits(Backend, const Args&) { return Support::yes(); }
  static bool validate(Backend b, const Args& g) {
    using namespace validate;
    check_size(name, "N", g.N);
    MOE_CHECK(g.N <= rows::kMaxIndex, name, ": N = ", g.N, " does not fit the int32 index arrays");
    MOE_CHECK(g.E >= 1 && g.E <= rows::kMaxIndex, name, ": E must be in [1, 2^31), got ", g.E);
    check_ptr(name, "offsets", g.offsets);
    if (g.N > 0) {
      check_ptr(name, "expert", g.expert);
      check_ptr(name, "perm", g.perm);
      check_ptr(name, "pos", g.pos);
    }
    if (rows::on_host(b)) {
      for (int64_t a = 0; a < g.N; ++a) {
        const int32_t e = g.expert[a];
        MOE_CHECK(e >= 0 && e < g.E, name, ": expert[", a, "] = ", e, " is outside [0, E = ", g.E, ")");
      }
    }
    check_tiles(g);
    return true;
  }
  // The tile outputs need tile_m > 0, and the padded rows (at most N + E · (tile_m - 1)) must fit int32.
  static void check_tiles(const Args& g) {
    using namespace validate;
    check_size(name, "tile_m", g.tile_m);
    const bool wanted = g.tile_offsets || g.tile_expert || g.tile_row;
    MOE_CHECK(!wanted || g.tile_m > 0, name, ": tile_offsets, tile_expert and tile_row need tile_m > 0, got ",
              g.tile_m);
    if (!wanted) return;
    MOE_CHECK(g.tile_m <= rows::kMaxIndex && g.N + g.E * (g.tile_m - 1) <= rows::kMaxIndex, name,
              ": tile_m = ", g.tile_m, " pads N = ", g.N, " rows of E = ", g.E,
              " experts past the int32 tile offsets");
  }
  static double flops(const Args&) { return 0; }
  static double bytes(const Args& g) {
    const double tiles = g.tile_m > 0 ? static_cast<double>(g.N) / g.tile_m + g.E : 0.0;
    return static_cast<double>(g.N) * (4 + (g.kept ? 1 : 0) + 8) + 4.0 * static_cast<double>(g.E + 1) +
           (g.tile_offsets ? 4.0 * (g.E + 1) : 0) + (g.tile_expert ? 4 * tiles : 0) +
           (g.tile_row ? 4 * tiles : 0);
  }
};

// ---------------------------------------------------------------------------------------------
template <typename T>
struct OpRow<GroupedGemmArgs<T>> {
  using Args = GroupedGemmArgs<T>;
  static constexpr const char* name = "grouped_gemm";
  static HostFn<Args> ref() { return &ref::grouped_gemm<T>; }
  static HostFn<Args> cpu() { return &cpu::grouped_gemm<T>; }
  MOE_OP_ROW_CUDA_FLOAT(cuda::grouped_gemm)
  static Support limits(Backend, const Args&) { return Support::yes(); }
  static bool validate(Backend b, const Args& g) {
    return rows::check_grouped(b, {.op = name,
                                   .E = g.E,
                                   .N = g.N,
                                   .K = g.K,
                                   .offsets = g.offsets,
                                   .C = g.C,
                                   .ldc = g.ldc,
                                   .A = g.A,
                                   .lda = g.lda,
                                   .a_len = g.K,
                                   .W = g.W,
                                   .gather = g.gather}) != rows::kNothingToDo;
  }
  static double flops(const Args& g) { return 2.0 * rows::host_rows(g.offsets, g.E) * g.N * g.K; }
  static double bytes(const Args& g) {
    const double R = rows::host_rows(g.offsets, g.E);
    return sizeof(T) * (R * g.K + static_cast<double>(g.E) * g.N * g.K + (g.beta != T(0) ? 2 : 1) * R * g.N) +
           (g.gather ? 4 * R : 0);
  }
};

// ---------------------------------------------------------------------------------------------
template <typename T>
struct OpRow<GroupedWgradArgs<T>> {
  using Args = GroupedWgradArgs<T>;
  static constexpr const char* name = "grouped_gemm_wgrad";
  static HostFn<Args> ref() { return &ref::grouped_gemm_wgrad<T>; }
  static HostFn<Args> cpu() { return &cpu::grouped_gemm_wgrad<T>; }
  MOE_OP_ROW_CUDA_FLOAT(cuda::grouped_gemm_wgrad)
  static Support limits(Backend b, const Args& g) {
    if (b == Backend::Cuda && g.dC_gather != nullptr)
      return Support::no("dC_gather is not implemented on cuda");
    if (b == Backend::Cuda && (g.a_preact || g.a_scale != nullptr)) {
      return Support::no("a_preact and a_scale are not implemented on cuda");
    }
    return Support::yes();
  }
  static bool validate(Backend b, const Args& g) {
    using namespace validate;
    check_size(name, "E", g.E);
    check_size(name, "N", g.N);
    check_size(name, "K", g.K);
    if (g.E == 0 || g.N == 0 || g.K == 0) return false;
    check_ptr(name, "offsets", g.offsets);
    check_ptr(name, "dW", g.dW);
    const int64_t rows = rows::sorted_rows(b, name, g.offsets, g.E);
    check_rows_ptr(name, "dC", g.dC, rows);
    check_rows_ptr(name, "A", g.A, rows);
    check_stride(name, "ldc", g.ldc, g.N);
    check_stride(name, "lda", g.lda, rows::a_row_len(g.a_preact, g.act, g.K));
    if (g.gather && rows > 0) check_rows(name, "gather", g.gather, rows);
    if (g.dC_gather && rows > 0) check_rows(name, "dC_gather", g.dC_gather, rows);
    MOE_CHECK(!g.a_scale || g.a_preact, name, ": a_scale scales pre-activation rows (a_preact) only");
    return true;
  }
  static double flops(const Args& g) { return 2.0 * rows::host_rows(g.offsets, g.E) * g.N * g.K; }
  static double bytes(const Args& g) {
    const double R = rows::host_rows(g.offsets, g.E);
    const double a_len = static_cast<double>(rows::a_row_len(g.a_preact, g.act, g.K));
    return sizeof(T) * (R * g.N + R * a_len + (g.beta != T(0) ? 2.0 : 1.0) * g.E * g.N * g.K);
  }
};

}  // namespace moe::kernels
