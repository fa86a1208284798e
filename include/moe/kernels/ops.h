// The op list. Each op has a parameter struct (explicit sizes and strides, raw pointers) and up to
// three implementations, one row of the op table (src/kernels/op_table.h):
//   Backend::Ref  — plain loops, double accumulation: the readable definition (src/kernels/ref)
//   Backend::Cpu  — the fast CPU path, threaded (src/kernels/cpu)
//   Backend::Cuda — CUDA kernels; pointers are device pointers (src/kernels/cuda)
// Ops are templates over the element type T = float or double (double for references and gradient
// checks). Every op is deterministic: the same inputs give bit-identical outputs for any thread count.
//
// Every op runs on an Exec: a Context (backend, stream, workspace; moe/kernels/context.h) or a bare
// Backend (its default context). `supports(backend, args)` says beforehand whether a backend runs an
// op on given arguments; `run` on an unsupported pair throws moe::Error with the same reason.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "moe/kernels/context.h"
#include "moe/kernels/weight_view.h"

namespace moe::kernels {

// ---------------------------------------------------------------------------------------------
// The op table's generic entry points, defined for the Args type of every op below (and of the
// weight-format GEMMs in ops_bf16.h / ops_quant.h):
//   run(exec, args)      validates args (moe::Error naming the op, argument and value) and runs the op
//   supports(b, args)    whether backend b runs the op on these args, and why not
//   op_flops / op_bytes  its arithmetic and memory traffic (offset arrays are read on the host)
template <class Args>
void run(Exec e, const Args& args);
template <class Args>
Support supports(Backend b, const Args& args);
template <class Args>
double op_flops(const Args& args);
template <class Args>
double op_bytes(const Args& args);

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
void gemm(Exec e, const GemmArgs<T>& args) {
  run(e, args);
}

// ---------------------------------------------------------------------------------------------
// permute: stable counting sort of N assignments by expert.
//   offsets[e] .. offsets[e+1] are the sorted positions of expert e (offsets has E+1 entries);
//   perm[p] is the assignment at sorted position p; within an expert, assignments keep index order;
//   pos[a] is the sorted position of assignment a, or -1 when it is dropped (kept[a] == 0).
//   kept may be null (all kept). Expert ids outside [0, E) are an error (moe::Error).
// Tile metadata (optional: each output may be null, and all are by default), for a grouped GEMM
// that schedules tiles of tile_m rows, none shared by two experts (c_e = kept rows of expert e):
//   tile_offsets (E + 1): expert e's rows padded to a multiple of tile_m, as an exclusive prefix sum,
//     tile_offsets[e] = Σ_{e' < e} ceil(c_e' / tile_m) · tile_m
//   tile i of n_tiles = tile_offsets[E] / tile_m, in expert order: tile_expert[i] is its expert e and
//     tile_row[i] its first sorted row; it covers the sorted rows
//     [tile_row[i], min(tile_row[i] + tile_m, offsets[e + 1])) and the padded rows [i, i + 1) · tile_m
//   n_tiles <= N / tile_m + E, so arrays of that length always suffice. A tile output needs tile_m > 0.
struct PermuteArgs {
  int64_t N = 0;
  int64_t E = 0;
  const int32_t* expert = nullptr;  // (N)
  const uint8_t* kept = nullptr;    // (N) or null
  int32_t* offsets = nullptr;       // (E + 1) out
  int32_t* perm = nullptr;          // (N) out, the first offsets[E] entries are written
  int32_t* pos = nullptr;           // (N) out
  int64_t tile_m = 0;               // rows per tile (> 0 when a tile output is wanted)
  int32_t* tile_offsets = nullptr;  // (E + 1) out or null
  int32_t* tile_expert = nullptr;   // (n_tiles) out or null
  int32_t* tile_row = nullptr;      // (n_tiles) out or null
};
inline void permute(Exec e, const PermuteArgs& args) { run(e, args); }

// Activation of an expert FFN (see the activation ops below).
enum class Activation { SwiGLU, Gelu, Relu, Silu };

// An A operand given as saved pre-activations (a_preact): row q of A is the activation h of the
// stored row, computed while the GEMM packs its operands (no H buffer): SwiGLU rows [G | U] of 2K
// values give h = silu(G) * U (K values); the other activations read K values U and give act(U).
// lda is the stride of the stored rows. Not implemented on the cuda backend (moe::Error).

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
  const int32_t* gather = nullptr;  // (offsets[E]) or null
  const T* W = nullptr;             // (E, N, K), or (E, K, N) when trans_w
  bool trans_w = false;
  T* C = nullptr;  // (offsets[E], N), row stride ldc
  int64_t ldc = 0;
  T beta = 0;
};
template <typename T>
void grouped_gemm(Exec e, const GroupedGemmArgs<T>& args) {
  run(e, args);
}

// grouped_gemm_wgrad: weight gradient of grouped_gemm (trans_w == false layout).
//   dW_e (N, K) = beta * dW_e + Σ_{p in expert e} dC[p, :]^T · A[row(p), :]
//   An expert with no rows gets beta * dW_e (zero when beta == 0).
template <typename T>
struct GroupedWgradArgs {
  int64_t E = 0, N = 0, K = 0;
  const int32_t* offsets = nullptr;  // (E + 1)
  const T* dC = nullptr;             // (offsets[E], N), row stride ldc
  int64_t ldc = 0;
  const T* A = nullptr;  // rows of length K, row stride lda
  int64_t lda = 0;
  const int32_t* gather = nullptr;  // (offsets[E]) or null
  T* dW = nullptr;                  // (E, N, K)
  T beta = 0;
  // When set, dC's row for sorted row p is dC_gather[p] (e.g. the token row of dY), else p.
  // Not implemented on the cuda backend (moe::Error).
  const int32_t* dC_gather = nullptr;  // (offsets[E]) or null
  // A as saved pre-activations (see a_preact above), its row for sorted row p scaled by a_scale[p]
  // (null: no scale): W_down's gradient Σ dY^T (scale * h) from [G | U] without an H buffer.
  bool a_preact = false;
  Activation act = Activation::SwiGLU;
  const T* a_scale = nullptr;  // (offsets[E]) or null
  // bf16 compute (float only): dC and A rounded to bf16, exact products, fp32 sums, on the CPU's AMX
  // tiles (src/kernels/cpu/wgemm/wgrad_bf16.cpp) when the bf16 family runs on amx; elsewhere (other
  // CPUs, other backends) the fp32 GEMM.
  bool bf16 = false;
};
template <typename T>
void grouped_gemm_wgrad(Exec e, const GroupedWgradArgs<T>& args) {
  run(e, args);
}

// ---------------------------------------------------------------------------------------------
// Activations (the ops below). SwiGLU: out = silu(a) * b. Gelu (exact, erf), Relu, Silu: out =
// act(a), b unused.
const char* activation_name(Activation a);
Activation activation_from_name(const std::string& name);  // "swiglu", "gelu", "relu", "silu"

template <typename T>
struct ActivationArgs {
  Activation act = Activation::SwiGLU;
  int64_t n = 0;         // elements
  const T* a = nullptr;  // (n) gate pre-activation (SwiGLU) or input
  const T* b = nullptr;  // (n) up projection (SwiGLU only)
  T* out = nullptr;      // (n)
};
template <typename T>
void activation(Exec e, const ActivationArgs<T>& args) {
  run(e, args);
}

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
void activation_backward(Exec e, const ActivationBackwardArgs<T>& args) {
  run(e, args);
}

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
void combine(Exec e, const CombineArgs<T>& args) {
  run(e, args);
}

// combine_backward: for every kept assignment a of token t = token[a]:
//   dX[pos[a], :] = weight[a] * dY[t, :]          (weight null: dY[t, :])
//   dweight[a]    = <dY[t, :], X[pos[a], :]>     (when dweight is not null; 0 for dropped a)
template <typename T>
struct CombineBackwardArgs {
  int64_t N = 0;  // assignments
  int64_t D = 0;
  const int32_t* token = nullptr;  // (N)
  const int32_t* pos = nullptr;    // (N)
  const T* weight = nullptr;       // (N) or null
  const T* dY = nullptr;           // (T, D)
  const T* X = nullptr;            // (M, D), needed for dweight
  T* dX = nullptr;                 // (M, D)
  T* dweight = nullptr;            // (N) or null
};
template <typename T>
void combine_backward(Exec e, const CombineBackwardArgs<T>& args) {
  run(e, args);
}

// ---------------------------------------------------------------------------------------------
// Fused expert FFN ops (CPU and Ref; the cuda backend throws "not implemented on cuda").
// Notation: rows p of expert e are [offsets[e], offsets[e+1]), row(p) = gather ? gather[p] : p,
// act as in `activation` (SwiGLU: h = silu(g) * u; otherwise h = act(u)).

// grouped_ffn_up: the gate and up projections of every expert in one grouped GEMM, with the
// activation applied in the epilogue (no separate pass over memory):
//   g = A[row(p)] · W_gate_e^T (SwiGLU only), u = A[row(p)] · W_up_e^T        (F each)
//   H[p] = silu(g) * u  (SwiGLU)  or  act(u);   G[p] = g, U[p] = u when G / U are not null.
//   W_gate_e, W_up_e are (F, K) (nn.Linear layout). H may be null (pre-activations only).
template <typename T>
struct FfnUpArgs {
  Activation act = Activation::SwiGLU;
  int64_t E = 0, F = 0, K = 0;
  const int32_t* offsets = nullptr;  // (E + 1)
  const T* A = nullptr;              // rows of length K, row stride lda
  int64_t lda = 0;
  const int32_t* gather = nullptr;  // (offsets[E]) or null
  const T* W_gate = nullptr;        // (E, F, K), SwiGLU only
  const T* W_up = nullptr;          // (E, F, K)
  T* H = nullptr;                   // (offsets[E], F), row stride ldh, or null
  int64_t ldh = 0;
  T* G = nullptr;  // (offsets[E], F), row stride ldg, or null (SwiGLU only)
  int64_t ldg = 0;
  T* U = nullptr;  // (offsets[E], F), row stride ldu, or null
  int64_t ldu = 0;
};
template <typename T>
void grouped_ffn_up(Exec e, const FfnUpArgs<T>& args) {
  run(e, args);
}

// grouped_ffn_down_backward: the backward of  out[p] = scale[p] * (H[p] · W_down_e^T)  where H is
// the activation of the saved pre-activations G, U (see grouped_ffn_up), as one grouped GEMM with
// the d-activation in the epilogue (no dH buffer). With q = dY[row(p)] · W_down_e (F):
//   dH = scale[p] * q;  dG[p] = dH * u * silu'(g), dU[p] = dH * silu(g)   (SwiGLU)
//                       dU[p] = dH * act'(u)                               (otherwise)
//   dscale[p] = <q, h>  (the gradient of scale[p]; when dscale is not null)
//   Hs[p]     = scale[p] * h  (when Hs is not null: the A operand of W_down's weight gradient)
//   scale null means all ones. W_down_e is (D, F). dG and dU may be G and U themselves (the same
//   rows and strides): each element is read before its gradient is written over it.
//   With W_down_w.data set (T = float; W_down then unused), q = dY[row(p)] · op(W_e) with W_e in a
//   stored weight format (moe/kernels/weight_view.h: f32, bf16 or bf16-packed; op(W_e) (D, F)) and
//   that format's rounding (bf16: dY rounded to bf16), as grouped_gemm_w computes it.
template <typename T>
struct FfnDownBackwardArgs {
  Activation act = Activation::SwiGLU;
  int64_t E = 0, F = 0, D = 0;
  const int32_t* offsets = nullptr;  // (E + 1)
  const T* dY = nullptr;             // rows of length D, row stride ldy
  int64_t ldy = 0;
  const int32_t* gather = nullptr;  // (offsets[E]) or null
  const T* scale = nullptr;         // (offsets[E]) or null
  const T* W_down = nullptr;        // (E, D, F)
  const T* G = nullptr;             // (offsets[E], F), row stride ldg (SwiGLU only)
  int64_t ldg = 0;
  const T* U = nullptr;  // (offsets[E], F), row stride ldu
  int64_t ldu = 0;
  T* dG = nullptr;  // (offsets[E], F), row stride lddg (SwiGLU only)
  int64_t lddg = 0;
  T* dU = nullptr;  // (offsets[E], F), row stride lddu
  int64_t lddu = 0;
  T* Hs = nullptr;  // (offsets[E], F), row stride ldhs, or null
  int64_t ldhs = 0;
  T* dscale = nullptr;  // (offsets[E]) or null
  WeightView W_down_w;  // or E experts' op(W) (D, F) in a weight format (float only)
};
template <typename T>
void grouped_ffn_down_backward(Exec e, const FfnDownBackwardArgs<T>& args) {
  run(e, args);
}

// grouped_gemm_cat: a grouped GEMM whose K dimension is two weight stacks one after the other
// (the input gradient [dG | dU] · [W_gate; W_up] in one pass over K = K1 + K2):
//   C[p, :] (N) = beta * C[p, :] + A[row(p), 0:K1] · W1_e + A[row(p), K1:K1+K2] · W2_e
//   W1_e = W1 + e * K1 * N is (K1, N), W2_e = W2 + e * K2 * N is (K2, N). K2 may be 0 (W2 unused).
template <typename T>
struct GroupedGemmCatArgs {
  int64_t E = 0, N = 0, K1 = 0, K2 = 0;
  const int32_t* offsets = nullptr;  // (E + 1)
  const T* A = nullptr;              // rows of length K1 + K2, row stride lda
  int64_t lda = 0;
  const int32_t* gather = nullptr;  // (offsets[E]) or null
  const T* W1 = nullptr;            // (E, K1, N)
  const T* W2 = nullptr;            // (E, K2, N)
  T* C = nullptr;                   // (offsets[E], N), row stride ldc
  int64_t ldc = 0;
  T beta = 0;
};
template <typename T>
void grouped_gemm_cat(Exec e, const GroupedGemmCatArgs<T>& args) {
  run(e, args);
}

// grouped_gemm_scatter: a grouped GEMM whose epilogue scales each row and stores it at its own
// output row (the down projection writing each assignment's weighted output in slot order):
//   C[out_row[p], :] (N) = scale[p] * (A[row(p), :] · op(W_e))      op(W_e) as in grouped_gemm
//   scale null: all ones; out_row null: p. out_row must not repeat; other rows of C are untouched.
template <typename T>
struct GroupedGemmScatterArgs {
  int64_t E = 0, N = 0, K = 0;
  const int32_t* offsets = nullptr;  // (E + 1)
  const T* A = nullptr;              // rows of length K, row stride lda
  int64_t lda = 0;
  const int32_t* gather = nullptr;  // (offsets[E]) or null
  const T* W = nullptr;             // (E, N, K), or (E, K, N) when trans_w
  bool trans_w = false;
  const T* scale = nullptr;          // (offsets[E]) or null
  const int32_t* out_row = nullptr;  // (offsets[E]) or null
  T* C = nullptr;                    // rows of length N, row stride ldc
  int64_t ldc = 0;
  // A as saved pre-activations (see a_preact above): the down projection of [G | U] without H.
  bool a_preact = false;
  Activation act = Activation::SwiGLU;
};
template <typename T>
void grouped_gemm_scatter(Exec e, const GroupedGemmScatterArgs<T>& args) {
  run(e, args);
}

}  // namespace moe::kernels
