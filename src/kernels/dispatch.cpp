// The one place where an op's backend is chosen. Each op validates its arguments cheaply (sizes,
// strides, null pointers; on host backends also index arrays such as expert ids and offsets) and
// throws moe::Error naming the op and the bad value, then calls the Ref, Cpu or Cuda implementation.
#include <cstdint>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

#include "kernels/cpu/cpu.h"
#include "kernels/ref/ref.h"
#include "kernels/validate.h"
#include "moe/core/error.h"
#include "moe/kernels/ops.h"
#ifdef MOE_HAVE_CUDA
#include "kernels/cuda/cuda.h"
#endif

namespace moe::kernels {

// ---------------------------------------------------------------------------------------------
// Names

const char* backend_name(Backend b) {
  switch (b) {
    case Backend::Ref:
      return "ref";
    case Backend::Cpu:
      return "cpu";
    case Backend::Cuda:
      return "cuda";
  }
  return "?";
}

Backend backend_from_name(const std::string& name) {
  if (name == "ref") return Backend::Ref;
  if (name == "cpu") return Backend::Cpu;
  if (name == "cuda") return Backend::Cuda;
  throw Error(cat("unknown backend '", name, "' (expected ref, cpu or cuda)"));
}

bool backend_available(Backend b) {
  switch (b) {
    case Backend::Ref:
    case Backend::Cpu:
      return true;
    case Backend::Cuda:
#ifdef MOE_HAVE_CUDA
      return cuda::device_count() > 0;
#else
      return false;
#endif
  }
  return false;
}

std::vector<Backend> available_backends() {
  std::vector<Backend> out;
  for (Backend b : {Backend::Ref, Backend::Cpu, Backend::Cuda}) {
    if (backend_available(b)) out.push_back(b);
  }
  return out;
}

const char* activation_name(Activation a) {
  switch (a) {
    case Activation::SwiGLU:
      return "swiglu";
    case Activation::Gelu:
      return "gelu";
    case Activation::Relu:
      return "relu";
    case Activation::Silu:
      return "silu";
  }
  return "?";
}

Activation activation_from_name(const std::string& name) {
  if (name == "swiglu") return Activation::SwiGLU;
  if (name == "gelu") return Activation::Gelu;
  if (name == "relu") return Activation::Relu;
  if (name == "silu") return Activation::Silu;
  throw Error(cat("unknown activation '", name, "' (expected swiglu, gelu, relu or silu)"));
}

// ---------------------------------------------------------------------------------------------
// Validation helpers

namespace {

using namespace validate;

constexpr int64_t kMaxIndex = std::numeric_limits<int32_t>::max();

bool on_host(Backend b) { return b != Backend::Cuda; }

// The number of sorted rows, offsets[E], after checking offsets, on host backends; -1 (unknown)
// on Cuda, where offsets live on the device.
int64_t sorted_rows(Backend b, const char* op, const int32_t* offsets, int64_t E) {
  if (!on_host(b)) return -1;
  check_offsets(op, "offsets", offsets, E);
  return offsets[E];
}

// A null row buffer is fine only when no assignment (list[i], or i when list is null) is kept.
void check_all_dropped(const char* op, const char* name, const int32_t* pos, const int32_t* list, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const int64_t a = list ? list[i] : i;
    MOE_CHECK(pos[a] < 0, op, ": ", name, " is null but assignment ", a, " is kept (pos = ", pos[a], ")");
  }
}

// Cuda runs only float, only when built with CUDA and a GPU is present.
template <typename T>
void check_cuda(const char* op) {
#ifdef MOE_HAVE_CUDA
  MOE_CHECK((std::is_same_v<T, float>), op, ": the cuda backend supports float only, not double");
  MOE_CHECK(cuda::device_count() > 0, op,
            ": the cuda backend is not available (no GPU or CUDA driver found)");
#else
  throw Error(cat(op, ": the cuda backend is not available (this build has no CUDA support)"));
#endif
}

[[noreturn]] void unknown_backend(const char* op, Backend b) {
  throw Error(cat(op, ": unknown backend ", static_cast<int>(b)));
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Ops

template <typename T>
void gemm(Backend b, const GemmArgs<T>& g) {
  const char* op = "gemm";
  check_size(op, "M", g.M);
  check_size(op, "N", g.N);
  check_size(op, "K", g.K);
  if (g.M == 0 || g.N == 0) return;
  check_ptr(op, "C", g.C);
  check_stride(op, "ldc", g.ldc, g.N);
  if (g.K > 0) {
    check_ptr(op, "A", g.A);
    check_ptr(op, "B", g.B);
    check_stride(op, "lda", g.lda, g.trans_a ? g.M : g.K);
    check_stride(op, "ldb", g.ldb, g.trans_b ? g.K : g.N);
  }
  switch (b) {
    case Backend::Ref:
      return ref::gemm(g);
    case Backend::Cpu:
      return cpu::gemm(g);
    case Backend::Cuda:
      check_cuda<T>(op);
#ifdef MOE_HAVE_CUDA
      if constexpr (std::is_same_v<T, float>) cuda::gemm(g);
#endif
      return;
  }
  unknown_backend(op, b);
}

void permute(Backend b, const PermuteArgs& g) {
  const char* op = "permute";
  check_size(op, "N", g.N);
  MOE_CHECK(g.N <= kMaxIndex, op, ": N = ", g.N, " does not fit the int32 index arrays");
  MOE_CHECK(g.E >= 1 && g.E <= kMaxIndex, op, ": E must be in [1, 2^31), got ", g.E);
  check_ptr(op, "offsets", g.offsets);
  if (g.N > 0) {
    check_ptr(op, "expert", g.expert);
    check_ptr(op, "perm", g.perm);
    check_ptr(op, "pos", g.pos);
  }
  if (on_host(b)) {
    for (int64_t a = 0; a < g.N; ++a) {
      const int32_t e = g.expert[a];
      MOE_CHECK(e >= 0 && e < g.E, op, ": expert[", a, "] = ", e, " is outside [0, E = ", g.E, ")");
    }
  }
  switch (b) {
    case Backend::Ref:
      return ref::permute(g);
    case Backend::Cpu:
      return cpu::permute(g);
    case Backend::Cuda:
      check_cuda<float>(op);
#ifdef MOE_HAVE_CUDA
      cuda::permute(g);  // checks expert ids on the device
#endif
      return;
  }
  unknown_backend(op, b);
}

template <typename T>
void grouped_gemm(Backend b, const GroupedGemmArgs<T>& g) {
  const char* op = "grouped_gemm";
  check_size(op, "E", g.E);
  check_size(op, "N", g.N);
  check_size(op, "K", g.K);
  if (g.E == 0 || g.N == 0) return;
  check_ptr(op, "offsets", g.offsets);
  const int64_t rows = sorted_rows(b, op, g.offsets, g.E);
  check_rows_ptr(op, "C", g.C, rows);
  check_stride(op, "ldc", g.ldc, g.N);
  if (g.K > 0) {
    check_rows_ptr(op, "A", g.A, rows);
    check_ptr(op, "W", g.W);
    check_stride(op, "lda", g.lda, g.K);
  }
  if (g.gather && rows > 0) check_rows(op, "gather", g.gather, rows);
  switch (b) {
    case Backend::Ref:
      return ref::grouped_gemm(g);
    case Backend::Cpu:
      return cpu::grouped_gemm(g);
    case Backend::Cuda:
      check_cuda<T>(op);
#ifdef MOE_HAVE_CUDA
      if constexpr (std::is_same_v<T, float>) cuda::grouped_gemm(g);
#endif
      return;
  }
  unknown_backend(op, b);
}

template <typename T>
void grouped_gemm_wgrad(Backend b, const GroupedWgradArgs<T>& g) {
  const char* op = "grouped_gemm_wgrad";
  check_size(op, "E", g.E);
  check_size(op, "N", g.N);
  check_size(op, "K", g.K);
  if (g.E == 0 || g.N == 0 || g.K == 0) return;
  check_ptr(op, "offsets", g.offsets);
  check_ptr(op, "dW", g.dW);
  const int64_t rows = sorted_rows(b, op, g.offsets, g.E);
  check_rows_ptr(op, "dC", g.dC, rows);
  check_rows_ptr(op, "A", g.A, rows);
  check_stride(op, "ldc", g.ldc, g.N);
  check_stride(op, "lda", g.lda, g.a_preact && g.act == Activation::SwiGLU ? 2 * g.K : g.K);
  if (g.gather && rows > 0) check_rows(op, "gather", g.gather, rows);
  if (g.dC_gather && rows > 0) check_rows(op, "dC_gather", g.dC_gather, rows);
  MOE_CHECK(!g.a_scale || g.a_preact, op, ": a_scale scales pre-activation rows (a_preact) only");
  switch (b) {
    case Backend::Ref:
      return ref::grouped_gemm_wgrad(g);
    case Backend::Cpu:
      return cpu::grouped_gemm_wgrad(g);
    case Backend::Cuda:
      check_cuda<T>(op);
      MOE_CHECK(g.dC_gather == nullptr, op, ": dC_gather is not implemented on cuda");
      MOE_CHECK(!g.a_preact && g.a_scale == nullptr, op, ": a_preact and a_scale are not implemented on cuda");
#ifdef MOE_HAVE_CUDA
      if constexpr (std::is_same_v<T, float>) cuda::grouped_gemm_wgrad(g);
#endif
      return;
  }
  unknown_backend(op, b);
}

template <typename T>
void activation(Backend b, const ActivationArgs<T>& g) {
  const char* op = "activation";
  check_size(op, "n", g.n);
  if (g.n == 0) return;
  check_ptr(op, "a", g.a);
  check_ptr(op, "out", g.out);
  if (g.act == Activation::SwiGLU) check_ptr(op, "b (swiglu)", g.b);
  switch (b) {
    case Backend::Ref:
      return ref::activation(g);
    case Backend::Cpu:
      return cpu::activation(g);
    case Backend::Cuda:
      check_cuda<T>(op);
#ifdef MOE_HAVE_CUDA
      if constexpr (std::is_same_v<T, float>) cuda::activation(g);
#endif
      return;
  }
  unknown_backend(op, b);
}

template <typename T>
void activation_backward(Backend b, const ActivationBackwardArgs<T>& g) {
  const char* op = "activation_backward";
  check_size(op, "n", g.n);
  if (g.n == 0) return;
  check_ptr(op, "a", g.a);
  check_ptr(op, "dout", g.dout);
  check_ptr(op, "da", g.da);
  if (g.act == Activation::SwiGLU) check_ptr(op, "b (swiglu)", g.b);
  switch (b) {
    case Backend::Ref:
      return ref::activation_backward(g);
    case Backend::Cpu:
      return cpu::activation_backward(g);
    case Backend::Cuda:
      check_cuda<T>(op);
#ifdef MOE_HAVE_CUDA
      if constexpr (std::is_same_v<T, float>) cuda::activation_backward(g);
#endif
      return;
  }
  unknown_backend(op, b);
}

template <typename T>
void combine(Backend b, const CombineArgs<T>& g) {
  const char* op = "combine";
  check_size(op, "T", g.T_);
  check_size(op, "D", g.D);
  if (g.T_ == 0 || g.D == 0) return;
  check_ptr(op, "tok_offsets", g.tok_offsets);
  check_ptr(op, "Y", g.Y);
  check_ptr(op, "tok_assign", g.tok_assign);
  check_ptr(op, "pos", g.pos);
  if (on_host(b)) {
    check_offsets(op, "tok_offsets", g.tok_offsets, g.T_);
    check_rows(op, "tok_assign", g.tok_assign, g.tok_offsets[g.T_]);
    // X may be null only when it has no rows, i.e. every assignment is dropped.
    if (g.X == nullptr) check_all_dropped(op, "X", g.pos, g.tok_assign, g.tok_offsets[g.T_]);
  } else {
    check_ptr(op, "X", g.X);
  }
  switch (b) {
    case Backend::Ref:
      return ref::combine(g);
    case Backend::Cpu:
      return cpu::combine(g);
    case Backend::Cuda:
      check_cuda<T>(op);
#ifdef MOE_HAVE_CUDA
      if constexpr (std::is_same_v<T, float>) cuda::combine(g);
#endif
      return;
  }
  unknown_backend(op, b);
}

template <typename T>
void combine_backward(Backend b, const CombineBackwardArgs<T>& g) {
  const char* op = "combine_backward";
  check_size(op, "N", g.N);
  check_size(op, "D", g.D);
  if (g.N == 0) return;
  check_ptr(op, "token", g.token);
  check_ptr(op, "pos", g.pos);
  if (g.D > 0) {
    check_ptr(op, "dY", g.dY);
    if (on_host(b)) {
      // dX and X may be null only when they have no rows, i.e. every assignment is dropped.
      if (g.dX == nullptr) check_all_dropped(op, "dX", g.pos, nullptr, g.N);
      if (g.dweight && g.X == nullptr) check_all_dropped(op, "X (needed for dweight)", g.pos, nullptr, g.N);
    } else {
      check_ptr(op, "dX", g.dX);
      if (g.dweight) check_ptr(op, "X (needed for dweight)", g.X);
    }
  }
  if (on_host(b)) check_rows(op, "token", g.token, g.N);
  switch (b) {
    case Backend::Ref:
      return ref::combine_backward(g);
    case Backend::Cpu:
      return cpu::combine_backward(g);
    case Backend::Cuda:
      check_cuda<T>(op);
#ifdef MOE_HAVE_CUDA
      if constexpr (std::is_same_v<T, float>) cuda::combine_backward(g);
#endif
      return;
  }
  unknown_backend(op, b);
}

// ---------------------------------------------------------------------------------------------
// Fused expert FFN ops: Ref and Cpu only.

namespace {

[[noreturn]] void not_on_cuda(const char* op) { throw Error(cat(op, ": not implemented on cuda")); }

}  // namespace

template <typename T>
void grouped_ffn_up(Backend b, const FfnUpArgs<T>& g) {
  const char* op = "grouped_ffn_up";
  check_size(op, "E", g.E);
  check_size(op, "F", g.F);
  check_size(op, "K", g.K);
  if (b == Backend::Cuda) not_on_cuda(op);
  if (g.E == 0 || g.F == 0) return;
  const bool swiglu = g.act == Activation::SwiGLU;
  check_ptr(op, "offsets", g.offsets);
  const int64_t rows = sorted_rows(b, op, g.offsets, g.E);
  if (g.H) check_stride(op, "ldh", g.ldh, g.F);
  if (g.U) check_stride(op, "ldu", g.ldu, g.F);
  if (g.G) check_stride(op, "ldg", g.ldg, g.F);
  MOE_CHECK(swiglu || g.G == nullptr, op, ": G is only produced for swiglu");
  if (g.K > 0 && rows > 0) {
    check_ptr(op, "A", g.A);
    check_stride(op, "lda", g.lda, g.K);
    check_ptr(op, "W_up", g.W_up);
    if (swiglu) check_ptr(op, "W_gate (swiglu)", g.W_gate);
  }
  if (g.gather && rows > 0) check_rows(op, "gather", g.gather, rows);
  if (b == Backend::Ref) return ref::grouped_ffn_up(g);
  if (b == Backend::Cpu) return cpu::grouped_ffn_up(g);
  unknown_backend(op, b);
}

template <typename T>
void grouped_ffn_down_backward(Backend b, const FfnDownBackwardArgs<T>& g) {
  const char* op = "grouped_ffn_down_backward";
  check_size(op, "E", g.E);
  check_size(op, "F", g.F);
  check_size(op, "D", g.D);
  if (b == Backend::Cuda) not_on_cuda(op);
  if (g.E == 0) return;
  const bool swiglu = g.act == Activation::SwiGLU;
  check_ptr(op, "offsets", g.offsets);
  const int64_t rows = sorted_rows(b, op, g.offsets, g.E);
  if (rows > 0 && g.F > 0) {
    check_ptr(op, "U", g.U);
    check_ptr(op, "dU", g.dU);
    check_stride(op, "ldu", g.ldu, g.F);
    check_stride(op, "lddu", g.lddu, g.F);
    if (swiglu) {
      check_ptr(op, "G (swiglu)", g.G);
      check_ptr(op, "dG (swiglu)", g.dG);
      check_stride(op, "ldg", g.ldg, g.F);
      check_stride(op, "lddg", g.lddg, g.F);
    }
    if (g.Hs) check_stride(op, "ldhs", g.ldhs, g.F);
    if (g.D > 0) {
      check_ptr(op, "dY", g.dY);
      check_ptr(op, "W_down", g.W_down);
      check_stride(op, "ldy", g.ldy, g.D);
    }
  }
  if (g.gather && rows > 0) check_rows(op, "gather", g.gather, rows);
  if (b == Backend::Ref) return ref::grouped_ffn_down_backward(g);
  if (b == Backend::Cpu) return cpu::grouped_ffn_down_backward(g);
  unknown_backend(op, b);
}

template <typename T>
void grouped_gemm_cat(Backend b, const GroupedGemmCatArgs<T>& g) {
  const char* op = "grouped_gemm_cat";
  check_size(op, "E", g.E);
  check_size(op, "N", g.N);
  check_size(op, "K1", g.K1);
  check_size(op, "K2", g.K2);
  if (b == Backend::Cuda) not_on_cuda(op);
  if (g.E == 0 || g.N == 0) return;
  check_ptr(op, "offsets", g.offsets);
  const int64_t rows = sorted_rows(b, op, g.offsets, g.E);
  check_rows_ptr(op, "C", g.C, rows);
  check_stride(op, "ldc", g.ldc, g.N);
  if (g.K1 + g.K2 > 0) {
    check_rows_ptr(op, "A", g.A, rows);
    check_stride(op, "lda", g.lda, g.K1 + g.K2);
    if (g.K1 > 0) check_ptr(op, "W1", g.W1);
    if (g.K2 > 0) check_ptr(op, "W2", g.W2);
  }
  if (g.gather && rows > 0) check_rows(op, "gather", g.gather, rows);
  if (b == Backend::Ref) return ref::grouped_gemm_cat(g);
  if (b == Backend::Cpu) return cpu::grouped_gemm_cat(g);
  unknown_backend(op, b);
}

template <typename T>
void grouped_gemm_scatter(Backend b, const GroupedGemmScatterArgs<T>& g) {
  const char* op = "grouped_gemm_scatter";
  check_size(op, "E", g.E);
  check_size(op, "N", g.N);
  check_size(op, "K", g.K);
  if (b == Backend::Cuda) not_on_cuda(op);
  if (g.E == 0 || g.N == 0) return;
  check_ptr(op, "offsets", g.offsets);
  const int64_t rows = sorted_rows(b, op, g.offsets, g.E);
  check_rows_ptr(op, "C", g.C, rows);
  check_stride(op, "ldc", g.ldc, g.N);
  if (g.K > 0) {
    check_rows_ptr(op, "A", g.A, rows);
    check_ptr(op, "W", g.W);
    check_stride(op, "lda", g.lda, g.a_preact && g.act == Activation::SwiGLU ? 2 * g.K : g.K);
  }
  if (g.gather && rows > 0) check_rows(op, "gather", g.gather, rows);
  if (g.out_row && rows > 0) check_rows(op, "out_row", g.out_row, rows);
  if (b == Backend::Ref) return ref::grouped_gemm_scatter(g);
  if (b == Backend::Cpu) return cpu::grouped_gemm_scatter(g);
  unknown_backend(op, b);
}

#define MOE_INSTANTIATE_OPS(T)                                                     \
  template void gemm<T>(Backend, const GemmArgs<T>&);                              \
  template void grouped_gemm<T>(Backend, const GroupedGemmArgs<T>&);               \
  template void grouped_gemm_wgrad<T>(Backend, const GroupedWgradArgs<T>&);        \
  template void activation<T>(Backend, const ActivationArgs<T>&);                  \
  template void activation_backward<T>(Backend, const ActivationBackwardArgs<T>&); \
  template void combine<T>(Backend, const CombineArgs<T>&);                        \
  template void combine_backward<T>(Backend, const CombineBackwardArgs<T>&);          \
  template void grouped_ffn_up<T>(Backend, const FfnUpArgs<T>&);                     \
  template void grouped_ffn_down_backward<T>(Backend, const FfnDownBackwardArgs<T>&); \
  template void grouped_gemm_cat<T>(Backend, const GroupedGemmCatArgs<T>&);           \
  template void grouped_gemm_scatter<T>(Backend, const GroupedGemmScatterArgs<T>&);

MOE_INSTANTIATE_OPS(float)
MOE_INSTANTIATE_OPS(double)
#undef MOE_INSTANTIATE_OPS

}  // namespace moe::kernels
