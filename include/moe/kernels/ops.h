// The op list. Each op has a parameter struct (explicit sizes and strides, raw pointers) and up to
// three implementations behind one dispatch point:
//   Backend::Ref  — plain loops, double accumulation: the readable definition (src/kernels/ref)
//   Backend::Cpu  — the fast CPU path, threaded (src/kernels/cpu)
//   Backend::Cuda — CUDA kernels; pointers are device pointers (src/kernels/cuda)
// Ops are templates over the element type T = float or double (double for references and gradient
// checks). Every op is deterministic: the same inputs give bit-identical outputs for any thread count.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace moe::kernels {

enum class Backend { Ref, Cpu, Cuda };
const char* backend_name(Backend b);
Backend backend_from_name(const std::string& name);  // "ref", "cpu", "cuda"; throws moe::Error
bool backend_available(Backend b);                   // Cuda: built with CUDA and a GPU is present
std::vector<Backend> available_backends();

// ---------------------------------------------------------------------------------------------
// gemm: C (M, N) = alpha * op(A) · op(B) + beta * C
//   op(A) is (M, K): A is (M, K) with row stride lda, or (K, M) when trans_a.
//   op(B) is (K, N): B is (K, N) with row stride ldb, or (N, K) when trans_b.
//   beta == 0 overwrites C (NaN in C does not propagate).
template <typename T>
struct GemmArgs {
  int64_t M = 0, N = 0, K = 0;
  const T* A = nullptr;
  int64_t lda = 0;
  bool trans_a = false;
  const T* B = nullptr;
  int64_t ldb = 0;
  bool trans_b = false;
  T* C = nullptr;
  int64_t ldc = 0;
  T alpha = 1;
  T beta = 0;
};
template <typename T>
void gemm(Backend b, const GemmArgs<T>& args);

// ---------------------------------------------------------------------------------------------
// permute: stable counting sort of N assignments by expert.
//   offsets[e] .. offsets[e+1] are the sorted positions of expert e (offsets has E+1 entries);
//   perm[p] is the assignment at sorted position p; within an expert, assignments keep index order;
//   pos[a] is the sorted position of assignment a, or -1 when it is dropped (kept[a] == 0).
//   kept may be null (all kept). Expert ids outside [0, E) are an error (moe::Error).
struct PermuteArgs {
  int64_t N = 0;
  int64_t E = 0;
  const int32_t* expert = nullptr;  // (N)
  const uint8_t* kept = nullptr;    // (N) or null
  int32_t* offsets = nullptr;       // (E + 1) out
  int32_t* perm = nullptr;          // (N) out, the first offsets[E] entries are written
  int32_t* pos = nullptr;           // (N) out
};
void permute(Backend b, const PermuteArgs& args);

// ---------------------------------------------------------------------------------------------
// grouped_gemm: one GEMM per expert over its rows, all experts in one call.
//   For expert e and each row p in [offsets[e], offsets[e+1]):
//     C[p, :] (N) = beta * C[p, :] + A[row(p), :] (K) · op(W_e)      row(p) = gather ? gather[p] : p
//   W_e = W + e * N * K; op(W_e) = W_e^T when W_e is stored (N, K) (trans_w == false, the layout of
//   nn.Linear weights), or W_e when stored (K, N) (trans_w == true).
template <typename T>
struct GroupedGemmArgs {
  int64_t E = 0, N = 0, K = 0;
  const int32_t* offsets = nullptr;  // (E + 1)
  const T* A = nullptr;              // rows of length K, row stride lda
  int64_t lda = 0;
  const int32_t* gather = nullptr;   // (offsets[E]) or null
  const T* W = nullptr;              // (E, N, K), or (E, K, N) when trans_w
  bool trans_w = false;
  T* C = nullptr;                    // (offsets[E], N), row stride ldc
  int64_t ldc = 0;
  T beta = 0;
};
template <typename T>
void grouped_gemm(Backend b, const GroupedGemmArgs<T>& args);

// grouped_gemm_wgrad: weight gradient of grouped_gemm (trans_w == false layout).
//   dW_e (N, K) = beta * dW_e + Σ_{p in expert e} dC[p, :]^T · A[row(p), :]
//   An expert with no rows gets beta * dW_e (zero when beta == 0).
template <typename T>
struct GroupedWgradArgs {
  int64_t E = 0, N = 0, K = 0;
  const int32_t* offsets = nullptr;  // (E + 1)
  const T* dC = nullptr;             // (offsets[E], N), row stride ldc
  int64_t ldc = 0;
  const T* A = nullptr;              // rows of length K, row stride lda
  int64_t lda = 0;
  const int32_t* gather = nullptr;   // (offsets[E]) or null
  T* dW = nullptr;                   // (E, N, K)
  T beta = 0;
};
template <typename T>
void grouped_gemm_wgrad(Backend b, const GroupedWgradArgs<T>& args);

// ---------------------------------------------------------------------------------------------
// Activations. SwiGLU: out = silu(a) * b. Gelu (exact, erf), Relu, Silu: out = act(a), b unused.
enum class Activation { SwiGLU, Gelu, Relu, Silu };
const char* activation_name(Activation a);
Activation activation_from_name(const std::string& name);  // "swiglu", "gelu", "relu", "silu"

template <typename T>
struct ActivationArgs {
  Activation act = Activation::SwiGLU;
  int64_t n = 0;       // elements
  const T* a = nullptr;  // (n) gate pre-activation (SwiGLU) or input
  const T* b = nullptr;  // (n) up projection (SwiGLU only)
  T* out = nullptr;      // (n)
};
template <typename T>
void activation(Backend b, const ActivationArgs<T>& args);

// da = dout * d out/da; db = dout * d out/db (SwiGLU only; may be null otherwise).
template <typename T>
struct ActivationBackwardArgs {
  Activation act = Activation::SwiGLU;
  int64_t n = 0;
  const T* a = nullptr;
  const T* b = nullptr;
  const T* dout = nullptr;
  T* da = nullptr;
  T* db = nullptr;
};
template <typename T>
void activation_backward(Backend b, const ActivationBackwardArgs<T>& args);

// ---------------------------------------------------------------------------------------------
// combine: the weighted sum of each token's expert outputs.
//   Y[t, :] = beta * Y[t, :] + Σ_{a in token t's assignments, pos[a] >= 0} weight[a] * X[pos[a], :]
//   Token t's assignments are tok_assign[tok_offsets[t] .. tok_offsets[t+1]), summed in that order.
//   weight may be null (all ones).
template <typename T>
struct CombineArgs {
  int64_t T_ = 0;                        // tokens
  int64_t D = 0;                         // row length
  const int32_t* tok_offsets = nullptr;  // (T + 1)
  const int32_t* tok_assign = nullptr;   // (tok_offsets[T])
  const int32_t* pos = nullptr;          // (N) sorted row of each assignment, -1 when dropped
  const T* weight = nullptr;             // (N) or null
  const T* X = nullptr;                  // (M, D) rows in sorted order
  T* Y = nullptr;                        // (T, D)
  T beta = 0;
};
template <typename T>
void combine(Backend b, const CombineArgs<T>& args);

// combine_backward: for every kept assignment a of token t = token[a]:
//   dX[pos[a], :] = weight[a] * dY[t, :]          (weight null: dY[t, :])
//   dweight[a]    = <dY[t, :], X[pos[a], :]>     (when dweight is not null; 0 for dropped a)
template <typename T>
struct CombineBackwardArgs {
  int64_t N = 0;                    // assignments
  int64_t D = 0;
  const int32_t* token = nullptr;   // (N)
  const int32_t* pos = nullptr;     // (N)
  const T* weight = nullptr;        // (N) or null
  const T* dY = nullptr;            // (T, D)
  const T* X = nullptr;             // (M, D), needed for dweight
  T* dX = nullptr;                  // (M, D)
  T* dweight = nullptr;             // (N) or null
};
template <typename T>
void combine_backward(Backend b, const CombineBackwardArgs<T>& args);

}  // namespace moe::kernels
