// Transformer building blocks other than the MoE layer: RMSNorm, rotary position embedding, causal
// grouped-query attention and the cross-entropy loss, forward and backward.
//
// Plain functions over contiguous row-major host buffers, T = float (training) or double (gradient
// checks and references). Threaded with moe::parallel_for; results are bit-identical for any thread
// count (every output element has one owner and a fixed reduction order; reductions across rows use
// fixed-size row blocks summed in block order). Conventions follow the Hugging Face implementations
// of Mixtral / Qwen-MoE / OLMoE so that checkpoints move between the two unchanged.
#pragma once

#include <cstdint>

#include "moe/kernels/context.h"

namespace moe::nn {

// ---------------------------------------------------------------------------------------------
// RMSNorm over the last dimension:  y = x · rstd · w,  rstd = 1 / sqrt(mean(x²) + eps).
struct RmsNormArgs {
  int64_t n = 0;  // rows
  int64_t d = 0;  // features
  double eps = 1e-6;
};
// x, y: (n, d); w: (d); rstd: (n) saved for backward (may be null when not needed). y may alias x.
template <typename T>
void rmsnorm_forward(const RmsNormArgs& a, const T* x, const T* w, T* y, T* rstd);
// dx = ∂L/∂x (overwritten; may alias dy), dw += ∂L/∂w (accumulated; may be null). rstd may be null:
// it is then recomputed from x.
template <typename T>
void rmsnorm_backward(const RmsNormArgs& a, const T* x, const T* w, const T* rstd, const T* dy, T* dx, T* dw);

// ---------------------------------------------------------------------------------------------
// Rotary position embedding, Hugging Face "rotate_half" convention, applied in place to each head:
//   inv_freq[i] = theta^(-2i/hd), i < hd/2;  angle = pos · inv_freq[i]
//   x'[i]      = x[i] cos − x[i + hd/2] sin
//   x'[i+hd/2] = x[i + hd/2] cos + x[i] sin
//
// Options for DeepSeek-V3 (all default to the plain form above):
//   inv_freq     (hd/2) frequencies to use instead of theta^(-2i/hd) (YaRN scaling)
//   mscale       multiplies cos and sin (YaRN's attention factor): x' = mscale · rotate(x)
//   ld           elements between the starts of consecutive heads (0 = hd): the rotated part may be
//                the tail of a wider head, x then points at head 0's rotated part
//   interleaved  the input pairs are (x[2i], x[2i+1]) and the output is in the half layout above,
//                as transformers' apply_rotary_pos_emb_interleave: x'[i] = x[2i] cos − x[2i+1] sin,
//                x'[i + hd/2] = x[2i+1] cos + x[2i] sin (backward maps back to the pair layout)
struct RopeArgs {
  int64_t n = 0;      // rows (tokens)
  int64_t heads = 0;  // heads per row
  int64_t hd = 0;     // head dim (even)
  double theta = 10000.0;
  const double* inv_freq = nullptr;
  double mscale = 1.0;
  int64_t ld = 0;
  bool interleaved = false;
};
// x: (n, heads, ld) in place (the first hd of each head); pos: (n) absolute positions.
template <typename T>
void rope_forward(const RopeArgs& a, const int32_t* pos, T* x);
// The transpose (inverse rotation) applied in place to a gradient.
template <typename T>
void rope_backward(const RopeArgs& a, const int32_t* pos, T* dx);

// ---------------------------------------------------------------------------------------------
// Causal grouped-query attention, softmax(q·kᵀ · scale + causal mask) · v, per batch row and head.
// Query head h reads key/value head h / (hq / hkv). Queries are the last sq positions of a sequence
// whose keys are sk long (sk ≥ sq): query i (0-based) sees keys j ≤ (sk − sq) + i. Training uses
// sq = sk; decoding with a KV cache uses sq = new tokens and sk = cached + new.
// Values may have another head dim than queries and keys (hd_v; DeepSeek's latent attention).
// The matrix products run as kernels::gemm on `backend` (a host backend: the buffers are host
// memory and the softmax is a host loop); the overloads without one use kernels::Backend::Cpu.
struct AttentionArgs {
  int64_t batch = 0;
  int64_t sq = 0;    // query positions per batch row
  int64_t sk = 0;    // key positions per batch row
  int64_t hq = 0;    // query heads
  int64_t hkv = 0;   // key/value heads (hq % hkv == 0)
  int64_t hd = 0;    // head dim of queries and keys
  double scale = 0;  // 0 means 1/sqrt(hd)
  int64_t hd_v = 0;  // head dim of values and outputs (0 = hd)
  int64_t vdim() const { return hd_v > 0 ? hd_v : hd; }
};
// q: (batch, sq, hq, hd); k: (batch, sk, hkv, hd); v: (batch, sk, hkv, hd_v); out: (batch, sq, hq, hd_v);
// lse: (batch, hq, sq) log-sum-exp of each query's scaled scores, saved for backward (may be null).
template <typename T>
void attention_forward(kernels::Backend backend, const AttentionArgs& a, const T* q, const T* k, const T* v,
                       T* out, T* lse);
template <typename T>
void attention_forward(const AttentionArgs& a, const T* q, const T* k, const T* v, T* out, T* lse) {
  attention_forward<T>(kernels::Backend::Cpu, a, q, k, v, out, lse);
}
// Gradients (overwritten, not accumulated) dq: like q; dk, dv: like k, v. Recomputes the
// probabilities from q, k and lse; out and lse (from attention_forward) are required. With sq = 0,
// dk and dv are zero.
template <typename T>
void attention_backward(kernels::Backend backend, const AttentionArgs& a, const T* q, const T* k, const T* v,
                        const T* out, const T* lse, const T* dout, T* dq, T* dk, T* dv);
template <typename T>
void attention_backward(const AttentionArgs& a, const T* q, const T* k, const T* v, const T* out,
                        const T* lse, const T* dout, T* dq, T* dk, T* dv) {
  attention_backward<T>(kernels::Backend::Cpu, a, q, k, v, out, lse, dout, dq, dk, dv);
}

// ---------------------------------------------------------------------------------------------
// Cross-entropy of logits (n, V) against integer targets (n); a target < 0 is ignored.
// Returns the SUM of −log softmax(logits)[target] over the counted rows (in double) and their count.
// When dlogits is non-null it receives grad_scale · (softmax − onehot(target)) for counted rows and
// 0 for ignored rows (dlogits may alias logits). Throws moe::Error on a target ≥ V.
struct CrossEntropyResult {
  double loss_sum = 0;
  int64_t count = 0;
};
template <typename T>
CrossEntropyResult cross_entropy(int64_t n, int64_t V, const T* logits, const int32_t* targets, T* dlogits,
                                 double grad_scale);

}  // namespace moe::nn
