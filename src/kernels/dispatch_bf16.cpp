// Dispatch of the bf16-weight GEMMs (moe/kernels/ops_bf16.h): validation, then the Ref or Cpu
// implementation. There is no CUDA implementation yet: Backend::Cuda throws a clear moe::Error.
#include <cstdint>
#include <string>

#include "moe/core/error.h"
#include "moe/kernels/ops_bf16.h"
#include "kernels/validate.h"

namespace moe::kernels {

// The implementations (src/kernels/ref/gemm_bf16.cpp, src/kernels/cpu/gemm_bf16.cpp).
namespace ref {
void grouped_gemm_bf16w(const GroupedGemmBf16Args& args);
}
namespace cpu {
void grouped_gemm_bf16w(const GroupedGemmBf16Args& args);
}

namespace {

using namespace validate;

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
  check_offsets(op, "offsets", g.offsets, g.E);
  const int64_t rows = g.offsets[g.E];
  check_rows_ptr(op, "C", g.C, rows);
  check_stride(op, "ldc", g.ldc, g.N);
  if (g.K > 0) {
    check_rows_ptr(op, "A", g.A, rows);
    check_ptr(op, "W", g.W);
    check_stride(op, "lda", g.lda, g.a_preact && g.act == Activation::SwiGLU ? 2 * g.K : g.K);
  }
  MOE_CHECK(!(g.scale || g.out_row) || g.beta == 0.0f, op, ": scale and out_row store rows (beta must be 0, got ",
            g.beta, ")");
  if (g.out_row && rows > 0) check_rows(op, "out_row", g.out_row, rows);
  if (g.gather) check_rows(op, "gather", g.gather, rows);
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
