// Dispatch of the bf16-weight GEMMs (moe/kernels/ops_bf16.h): validation, then the Ref or Cpu
// implementation. There is no CUDA implementation yet: Backend::Cuda throws a clear moe::Error.
#include <cstdint>
#include <string>

#include "moe/core/error.h"
#include "moe/kernels/ops_bf16.h"

namespace moe::kernels {

// The implementations (src/kernels/ref/gemm_bf16.cpp, src/kernels/cpu/gemm_bf16.cpp).
namespace ref {
void grouped_gemm_bf16w(const GroupedGemmBf16Args& args);
}
namespace cpu {
void grouped_gemm_bf16w(const GroupedGemmBf16Args& args);
}

namespace {

void check_size(const char* op, const char* name, int64_t v) {
  MOE_CHECK(v >= 0, op, ": ", name, " must be >= 0, got ", v);
}

void check_ptr(const char* op, const char* name, const void* p) {
  MOE_CHECK(p != nullptr, op, ": ", name, " is null");
}

void check_stride(const char* op, const char* name, int64_t ld, int64_t min_ld) {
  MOE_CHECK(ld >= min_ld, op, ": ", name, " = ", ld, " is smaller than the row length ", min_ld);
}

// A row buffer may be null only when it has no rows.
void check_rows_ptr(const char* op, const char* name, const void* p, int64_t rows) {
  MOE_CHECK(p != nullptr || rows == 0, op, ": ", name, " is null but there are ", rows, " rows");
}

void check_backend(const char* op, Backend b) {
  switch (b) {
    case Backend::Ref:
    case Backend::Cpu:
      return;
    case Backend::Cuda:
      throw Error(cat(op, ": not implemented on cuda (bf16-weight GEMMs run on the ref and cpu backends)"));
  }
  throw Error(cat(op, ": unknown backend ", static_cast<int>(b)));
}

}  // namespace

void grouped_gemm_bf16w(Backend b, const GroupedGemmBf16Args& g) {
  const char* op = "grouped_gemm_bf16w";
  check_backend(op, b);
  check_size(op, "E", g.E);
  check_size(op, "N", g.N);
  check_size(op, "K", g.K);
  if (g.E == 0 || g.N == 0) return;
  check_ptr(op, "offsets", g.offsets);
  MOE_CHECK(g.offsets[0] == 0, op, ": offsets[0] must be 0, got ", g.offsets[0]);
  for (int64_t e = 0; e < g.E; ++e) {
    MOE_CHECK(g.offsets[e + 1] >= g.offsets[e], op, ": offsets must not decrease, but offsets[", e + 1,
              "] = ", g.offsets[e + 1], " < offsets[", e, "] = ", g.offsets[e]);
  }
  const int64_t rows = g.offsets[g.E];
  check_rows_ptr(op, "C", g.C, rows);
  check_stride(op, "ldc", g.ldc, g.N);
  if (g.K > 0) {
    check_rows_ptr(op, "A", g.A, rows);
    check_ptr(op, "W", g.W);
    check_stride(op, "lda", g.lda, g.K);
  }
  if (g.gather) {
    for (int64_t p = 0; p < rows; ++p) {
      MOE_CHECK(g.gather[p] >= 0, op, ": gather[", p, "] = ", g.gather[p], " is negative");
    }
  }
  if (rows == 0) return;
  if (b == Backend::Ref) return ref::grouped_gemm_bf16w(g);
  return cpu::grouped_gemm_bf16w(g);
}

void gemm_bf16w(Backend b, const GemmBf16Args& g) {
  const char* op = "gemm_bf16w";
  check_backend(op, b);
  check_size(op, "M", g.M);
  check_size(op, "N", g.N);
  check_size(op, "K", g.K);
  MOE_CHECK(g.M <= INT32_MAX, op, ": M = ", g.M, " does not fit the int32 row offsets");
  if (g.M == 0 || g.N == 0) return;
  check_ptr(op, "C", g.C);
  check_stride(op, "ldc", g.ldc, g.N);
  if (g.K > 0) {
    check_ptr(op, "A", g.A);
    check_ptr(op, "W", g.W);
    check_stride(op, "lda", g.lda, g.K);
  }
  // One expert that owns all M rows.
  const int32_t offsets[2] = {0, static_cast<int32_t>(g.M)};
  GroupedGemmBf16Args gg;
  gg.E = 1, gg.N = g.N, gg.K = g.K, gg.offsets = offsets, gg.A = g.A, gg.lda = g.lda, gg.gather = nullptr;
  gg.W = g.W, gg.trans_w = g.trans_w, gg.C = g.C, gg.ldc = g.ldc, gg.beta = g.beta;
  if (b == Backend::Ref) return ref::grouped_gemm_bf16w(gg);
  return cpu::grouped_gemm_bf16w(gg);
}

}  // namespace moe::kernels
