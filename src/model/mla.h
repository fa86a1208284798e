// Multi-head latent attention (DeepSeek-V2/V3), the projection step: from the normed hidden state
// h (N, d) to per-head queries, keys and values for nn::attention_forward, and back. As
// transformers' DeepseekV3Attention:
//
//   q  = q_b_proj(rmsnorm(q_a_proj h, q_a_layernorm))   or q_proj h         (N, H, nope + rope)
//   kv = kv_a_proj_with_mqa h = [c (kv_lora), k_rot (rope)]                  (N, kv_lora + rope)
//   [k_nope, v] = kv_b_proj(rmsnorm(c, kv_a_layernorm)) per head             (N, H, nope + v_dim)
//   q[..., nope:] = rope(q[..., nope:]),  k_rot = rope(k_rot)                (shared by all heads)
//   k = [k_nope, k_rot]                                                      (N, H, nope + rope)
//
// The two latent RMSNorms use eps 1e-6 whatever rms_norm_eps is (transformers builds them with
// their default eps). RoPE is nn::rope_forward with the model's (possibly YaRN) frequencies, its
// attention factor on cos and sin, and the interleaved pair layout when rope_interleave is set.
// Internal to src/model.
#pragma once

#include <cstdint>

#include "model/linear.h"
#include "moe/core/tensor.h"

namespace moe::model::detail {

constexpr double kMlaLatentNormEps = 1e-6;

struct MlaShape {
  int64_t N = 0;  // tokens
  int64_t d = 0;  // hidden size
  int64_t heads = 0;
  int64_t q_lora = 0;  // 0: plain q_proj
  int64_t kv_lora = 0;
  int64_t nope = 0;  // qk_nope_head_dim
  int64_t rope = 0;  // qk_rope_head_dim
  int64_t vd = 0;    // v_head_dim
  int64_t qk() const { return nope + rope; }
};

struct MlaRope {
  const double* inv_freq = nullptr;  // (rope / 2)
  double mscale = 1.0;               // YaRN attention factor on cos and sin
  bool interleaved = true;
};

template <typename T>
struct MlaWeights {
  LinW<T> q, q_a, q_b, kv_a,
      kv_b;                      // q_proj (H·qk, d) | q_a_proj (q_lora, d), q_b_proj (H·qk, q_lora);
                                 // kv_a_proj_with_mqa (kv_lora + rope, d), kv_b_proj (H·(nope+vd), kv_lora)
  const T* q_a_bias = nullptr;   // (q_lora), attention_bias only
  const T* q_a_norm = nullptr;   // (q_lora)
  const T* kv_a_bias = nullptr;  // (kv_lora + rope), attention_bias only
  const T* kv_a_norm = nullptr;  // (kv_lora)
};

// Gradients, accumulated (+=); null where the model has no such tensor.
template <typename T>
struct MlaGrads {
  T *q = nullptr, *q_a = nullptr, *q_b = nullptr, *kv_a = nullptr, *kv_b = nullptr;
  T *q_a_bias = nullptr, *q_a_norm = nullptr, *kv_a_bias = nullptr, *kv_a_norm = nullptr;
};

// Activations kept for the backward.
struct MlaSaved {
  Tensor qa, qa_n, rstd_qa;  // (N, q_lora) x2, (N)
  Tensor c, c_n, rstd_c;     // (N, kv_lora) x2, (N)
};

// h (N, d) -> q (N, H·qk), k (N, H·qk), v (N, H·vd); pos (N) absolute positions. The projections run
// on backend `be` (the model's).
template <typename T>
void mla_qkv_forward(kernels::Backend be, const MlaShape& sh, const MlaWeights<T>& w, const MlaRope& r,
                     const T* h, const int32_t* pos, T* q, T* k, T* v, MlaSaved& s);

// The transpose: from dq, dk (N, H·qk) and dv (N, H·vd) (dq and dk are used as scratch) to the
// weight gradients (accumulated) and dh (N, d) (overwritten).
template <typename T>
void mla_qkv_backward(kernels::Backend be, const MlaShape& sh, const MlaWeights<T>& w, const MlaGrads<T>& g,
                      const MlaRope& r, const T* h, const int32_t* pos, const MlaSaved& s, T* dq, T* dk,
                      const T* dv, T* dh);

}  // namespace moe::model::detail
