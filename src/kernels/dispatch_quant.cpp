// Dispatch of the quantized-weight GEMM (moe/kernels/ops_quant.h): validation, then the Ref or Cpu
// implementation. There is no CUDA implementation yet: Backend::Cuda throws a clear moe::Error.
#include <cstdint>
#include <string>

#include "kernels/validate.h"
#include "moe/core/error.h"
#include "moe/kernels/ops_quant.h"

namespace moe::kernels {

// The implementations (src/kernels/ref/gemm_quant.cpp, src/kernels/cpu/gemm_quant.cpp).
namespace ref {
void gemm_qw(const GemmQuantArgs& args);
}
namespace cpu {
void gemm_qw(const GemmQuantArgs& args);
}

void gemm_qw(Backend b, const GemmQuantArgs& g) {
  using namespace validate;
  const char* op = "gemm_qw";
  MOE_CHECK(b != Backend::Cuda, op,
            ": not implemented on cuda (quantized-weight GEMMs run on the ref and cpu backends)");
  MOE_CHECK(b == Backend::Ref || b == Backend::Cpu, op, ": unknown backend ", static_cast<int>(b));
  const QuantWeight& W = g.W;
  check_size(op, "M", g.M);
  check_size(op, "N", W.N);
  check_size(op, "K", W.K);
  MOE_CHECK(W.bits == 4 || W.bits == 8, op, ": W.bits must be 4 or 8, got ", W.bits);
  MOE_CHECK(W.group > 0 && W.group % 32 == 0, op, ": W.group must be a positive multiple of 32, got ",
            W.group);
  MOE_CHECK(W.K % W.group == 0, op, ": K = ", W.K, " is not a multiple of the group size ", W.group);
  if (g.M == 0 || W.N == 0) return;
  check_ptr(op, "C", g.C);
  check_stride(op, "ldc", g.ldc, W.N);
  if (W.K > 0) {
    check_ptr(op, "A", g.A);
    check_stride(op, "lda", g.lda, W.K);
    check_ptr(op, "W.q", W.q);
    check_ptr(op, "W.scales", W.scales);
    if (W.bits == 4) check_ptr(op, "W.mins", W.mins);
  }
  if (g.gather) check_rows(op, "gather", g.gather, g.M);
  if (b == Backend::Ref) return ref::gemm_qw(g);
  return cpu::gemm_qw(g);
}

}  // namespace moe::kernels
