// Forward, backward and incremental decoding of the transformer (see transformer.h for the math).
// Parameters live in Transformer::params_ (MoE blocks share storage with their MoELayer); the
// per-layer indices in index_ say where each one is.
#include <cmath>
#include <cstring>
#include <type_traits>

#include "model/linear.h"
#include "model/mla.h"
#include "model/transformer_parts.h"
#include "moe/core/error.h"
#include "moe/core/parallel.h"
#include "moe/kernels/ops.h"
#include "moe/kernels/ops_bf16.h"
#include "moe/kernels/ops_quant.h"
#include "moe/kernels/weights.h"
#include "moe/model/distill_loss.h"
#include "moe/model/nn.h"
#include "moe/model/transformer.h"

namespace moe::model {

namespace {

using detail::axpy;
using detail::linear;
using detail::linear_backward;
using detail::LinW;

template <typename T>
T sigmoid(T g) {
  return T(1) / (T(1) + std::exp(-g));
}

// Activations one layer keeps for its backward.
struct LayerSaved {
  Tensor x_in, rstd1, h1;               // (N, d), (N), (N, d)
  Tensor q_raw, k_raw, rstd_q, rstd_k;  // before q/k norm (only with qk norm)
  Tensor q, k, v, attn, lse;            // (N, hq·hd), (N, hkv·hd) x2, (N, hq·hd), (B, hq, S)
  Tensor x_mid, rstd2, h2;              // (N, d), (N), (N, d)
  Tensor g, u, a;                       // dense FFN (N, F)
  MoEForward moe;
  detail::MlaSaved mla;  // deepseek_v3 latent attention
};

struct Saved {
  std::vector<LayerSaved> layers;
  Tensor x_final, rstd_f, hf;  // (N, d), (N), (N, d)
};

std::vector<int32_t> positions(int64_t B, int64_t S, int64_t offset) {
  std::vector<int32_t> pos(static_cast<size_t>(B * S));
  for (int64_t b = 0; b < B; ++b)
    for (int64_t s = 0; s < S; ++s) pos[b * S + s] = static_cast<int32_t>(offset + s);
  return pos;
}

}  // namespace

struct Transformer::Impl {
  template <typename T>
  static const T* W(const Transformer& m, int i) {
    return i >= 0 ? m.params_[i].value.data<T>() : nullptr;
  }
  template <typename T>
  static LinW<T> LW(const Transformer& m, int i) {
    LinW<T> r;
    const bool packed = m.bf16_compute_ && i >= 0 && m.bf16_[i].defined();
    // A released master (release_masters) leaves the packed copy alone.
    r.w = packed && !m.params_[i].value.defined() ? nullptr : W<T>(m, i);
    if (packed) {
      r.bf16_fwd = m.bf16_[i].raw();
      r.fwd_format = m.bf16_fmt_[i];
      r.fwd_group = kernels::is_int_packed(r.fwd_format) ? kLinearGroup : 0;
      if (m.bf16_t_[i].defined()) r.bf16_bwd = m.bf16_t_[i].raw();
    }
    return r;
  }
  template <typename T>
  static T* G(Transformer& m, int i) {
    return i >= 0 ? m.params_[i].grad.data<T>() : nullptr;
  }

  template <typename T>
  static Tensor embed(const Transformer& m, const int32_t* tokens, int64_t N) {
    const int64_t d = m.cfg_.hidden_size, V = m.cfg_.vocab_size;
    for (int64_t t = 0; t < N; ++t)
      MOE_CHECK(tokens[t] >= 0 && tokens[t] < V, "token id ", tokens[t], " at position ", t,
                " is outside the vocabulary [0, ", V, ")");
    Tensor x = Tensor::empty({N, d}, m.dtype_, "x");
    T* xp = x.data<T>();
    const Tensor& table = m.embed_rows_;                 // (V, d) mapped from the checkpoint, when set
    if (table.defined() && table.dtype() != m.dtype_) {  // bf16 / f16 rows, widened exactly
      const auto* rows = static_cast<const uint16_t*>(table.raw());
      const bool bf16 = table.dtype() == DType::BF16;
      parallel_for(N, 16, [&](int64_t t0, int64_t t1) {
        for (int64_t t = t0; t < t1; ++t) {
          const uint16_t* r = rows + static_cast<int64_t>(tokens[t]) * d;
          for (int64_t j = 0; j < d; ++j)
            xp[t * d + j] = static_cast<T>(bf16 ? bf16_to_f32(r[j]) : f16_to_f32(r[j]));
        }
      });
      return x;
    }
    const T* E = table.defined() ? table.data<T>() : W<T>(m, m.index_.embed);
    parallel_for(N, 16, [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t) std::memcpy(xp + t * d, E + tokens[t] * d, sizeof(T) * d);
    });
    return x;
  }

  // The attention call of a model: sq queries against sk keys per batch row, with the model's head
  // dims (queries/keys and values may differ: deepseek_v3) and softmax scale.
  static nn::AttentionArgs attention_args(const Transformer& m, int64_t B, int64_t sq, int64_t sk) {
    const ModelConfig& c = m.cfg_;
    nn::AttentionArgs a{B, sq, sk, c.num_attention_heads, c.num_key_value_heads, c.qk_head_dim(), 0.0};
    if (c.mla()) a.scale = c.attention_scale(), a.hd_v = c.v_head_dim_or_default();
    return a;
  }

  // Latent attention shapes, weights, gradients and rotary options of layer l (deepseek_v3).
  static detail::MlaShape mla_shape(const Transformer& m, int64_t N) {
    const ModelConfig& c = m.cfg_;
    detail::MlaShape sh;
    sh.N = N, sh.d = c.hidden_size, sh.heads = c.num_attention_heads, sh.q_lora = c.q_lora_rank;
    sh.kv_lora = c.kv_lora_rank, sh.nope = c.qk_nope_head_dim, sh.rope = c.qk_rope_head_dim,
    sh.vd = c.v_head_dim;
    return sh;
  }
  template <typename T>
  static detail::MlaWeights<T> mla_weights(const Transformer& m, int64_t l) {
    const LayerIndex& P = m.index_.layers[l];
    detail::MlaWeights<T> w;
    w.q = LW<T>(m, P.q_w), w.q_a = LW<T>(m, P.q_a_w), w.q_b = LW<T>(m, P.q_b_w);
    w.kv_a = LW<T>(m, P.kv_a_w), w.kv_b = LW<T>(m, P.kv_b_w);
    w.q_a_bias = W<T>(m, P.q_a_b), w.q_a_norm = W<T>(m, P.q_a_norm);
    w.kv_a_bias = W<T>(m, P.kv_a_b), w.kv_a_norm = W<T>(m, P.kv_a_norm);
    return w;
  }
  template <typename T>
  static detail::MlaGrads<T> mla_grads(Transformer& m, int64_t l) {
    const LayerIndex& P = m.index_.layers[l];
    detail::MlaGrads<T> g;
    g.q = G<T>(m, P.q_w), g.q_a = G<T>(m, P.q_a_w), g.q_b = G<T>(m, P.q_b_w), g.kv_a = G<T>(m, P.kv_a_w);
    g.kv_b = G<T>(m, P.kv_b_w), g.q_a_bias = G<T>(m, P.q_a_b), g.q_a_norm = G<T>(m, P.q_a_norm);
    g.kv_a_bias = G<T>(m, P.kv_a_b), g.kv_a_norm = G<T>(m, P.kv_a_norm);
    return g;
  }
  static detail::MlaRope mla_rope(const Transformer& m, const std::vector<double>& inv_freq) {
    detail::MlaRope r;
    r.inv_freq = inv_freq.data();
    r.mscale = m.cfg_.rope_attention_factor();
    r.interleaved = m.cfg_.rope_interleave;
    return r;
  }

  // h1 = rmsnorm(x); q, k, v projections; q/k norm; rotary embedding at `pos`.
  template <typename T>
  static void qkv(const Transformer& m, int64_t l, const Tensor& x, int64_t N, const int32_t* pos,
                  LayerSaved& s) {
    const ModelConfig& c = m.cfg_;
    const LayerIndex& P = m.index_.layers[l];
    const int64_t d = c.hidden_size, hd = c.head_dim_or_default();
    const int64_t hq = c.num_attention_heads, hkv = c.num_key_value_heads, Dq = hq * hd, Dk = hkv * hd;
    const DType dt = m.dtype_;
    s.rstd1 = Tensor::empty({N}, dt);
    s.h1 = Tensor::empty({N, d}, dt);
    nn::rmsnorm_forward<T>({N, d, c.rms_norm_eps}, x.data<T>(), W<T>(m, P.ln1), s.h1.data<T>(),
                           s.rstd1.data<T>());
    if (c.mla()) {
      const int64_t qk = c.qk_head_dim(), vd = c.v_head_dim_or_default();
      s.q = Tensor::empty({N, hq * qk}, dt), s.k = Tensor::empty({N, hq * qk}, dt),
      s.v = Tensor::empty({N, hq * vd}, dt);
      const std::vector<double> inv_freq = c.rope_inv_freq();
      detail::mla_qkv_forward<T>(m.backend_, mla_shape(m, N), mla_weights<T>(m, l), mla_rope(m, inv_freq),
                                 s.h1.data<T>(), pos, s.q.data<T>(), s.k.data<T>(), s.v.data<T>(), s.mla);
      return;
    }
    s.q = Tensor::empty({N, Dq}, dt), s.k = Tensor::empty({N, Dk}, dt), s.v = Tensor::empty({N, Dk}, dt);
    linear<T>(m.backend_, s.h1.data<T>(), N, d, LW<T>(m, P.q_w), Dq, W<T>(m, P.q_b), s.q.data<T>());
    linear<T>(m.backend_, s.h1.data<T>(), N, d, LW<T>(m, P.k_w), Dk, W<T>(m, P.k_b), s.k.data<T>());
    linear<T>(m.backend_, s.h1.data<T>(), N, d, LW<T>(m, P.v_w), Dk, W<T>(m, P.v_b), s.v.data<T>());
    const QkNorm qn = c.qk_norm();
    if (qn != QkNorm::None) {
      s.q_raw = s.q.clone(), s.k_raw = s.k.clone();
      const bool per_head = qn == QkNorm::PerHead;
      const nn::RmsNormArgs aq{per_head ? N * hq : N, per_head ? hd : Dq, c.rms_norm_eps};
      const nn::RmsNormArgs ak{per_head ? N * hkv : N, per_head ? hd : Dk, c.rms_norm_eps};
      s.rstd_q = Tensor::empty({aq.n}, dt), s.rstd_k = Tensor::empty({ak.n}, dt);
      nn::rmsnorm_forward<T>(aq, s.q_raw.data<T>(), W<T>(m, P.q_norm), s.q.data<T>(), s.rstd_q.data<T>());
      nn::rmsnorm_forward<T>(ak, s.k_raw.data<T>(), W<T>(m, P.k_norm), s.k.data<T>(), s.rstd_k.data<T>());
    }
    nn::rope_forward<T>({N, hq, hd, c.rope_theta}, pos, s.q.data<T>());
    nn::rope_forward<T>({N, hkv, hd, c.rope_theta}, pos, s.k.data<T>());
  }

  // x += o_proj(attn); x += ffn(rmsnorm(x)). With keep = false the MoE activations are dropped.
  template <typename T>
  static void out_and_ffn(const Transformer& m, int64_t l, Tensor& x, int64_t N, const Tensor* tok,
                          const StepOptions* opt, LayerSaved& s, bool keep) {
    const ModelConfig& c = m.cfg_;
    const LayerIndex& P = m.index_.layers[l];
    const int64_t d = c.hidden_size, Dv = c.num_attention_heads * c.v_head_dim_or_default();
    const DType dt = m.dtype_;
    {
      Tensor o = Tensor::empty({N, d}, dt);  // (N, d)
      linear<T>(m.backend_, s.attn.data<T>(), N, Dv, LW<T>(m, P.o_w), d, W<T>(m, P.o_b), o.data<T>());
      axpy<T>(x.data<T>(), o.data<T>(), N * d);
    }
    if (keep) s.x_mid = x.clone();
    s.rstd2 = Tensor::empty({N}, dt);
    s.h2 = Tensor::empty({N, d}, dt);
    nn::rmsnorm_forward<T>({N, d, c.rms_norm_eps}, x.data<T>(), W<T>(m, P.ln2), s.h2.data<T>(),
                           s.rstd2.data<T>());
    if (const MoELayer* moe = m.moe_[l].get()) {
      ForwardOptions fo;
      fo.training = opt && opt->training;
      fo.step = opt ? opt->step : 0;
      fo.seed = (opt ? opt->seed : 0) + static_cast<uint64_t>(l) * 0x9E3779B97F4A7C15ull;
      fo.token_ids = tok;
      s.moe = moe->forward(s.h2, fo);
      axpy<T>(x.data<T>(), s.moe.y.data<T>(), N * d);
      if (!keep) s.moe.saved.reset(), s.moe.y = Tensor();
    } else {
      const int64_t F = c.intermediate_size;
      s.g = Tensor::empty({N, F}, dt), s.u = Tensor::empty({N, F}, dt), s.a = Tensor::empty({N, F}, dt);
      linear<T>(m.backend_, s.h2.data<T>(), N, d, LW<T>(m, P.gate), F, nullptr, s.g.data<T>());
      linear<T>(m.backend_, s.h2.data<T>(), N, d, LW<T>(m, P.up), F, nullptr, s.u.data<T>());
      T* ap = s.a.data<T>();
      const T *gp = s.g.data<T>(), *up = s.u.data<T>();
      parallel_for(N * F, 1 << 14, [&](int64_t i0, int64_t i1) {
        for (int64_t i = i0; i < i1; ++i) ap[i] = gp[i] * sigmoid(gp[i]) * up[i];
      });
      Tensor y = Tensor::empty({N, d}, dt);  // (N, d)
      linear<T>(m.backend_, ap, N, F, LW<T>(m, P.down), d, nullptr, y.data<T>());
      axpy<T>(x.data<T>(), y.data<T>(), N * d);
    }
  }

  // Final norm and LM head over rows [r0, N) of x: logits (N - r0, V).
  template <typename T>
  static Tensor head(const Transformer& m, const Tensor& x, int64_t r0, int64_t N, Saved* sv) {
    const ModelConfig& c = m.cfg_;
    const int64_t d = c.hidden_size, V = c.vocab_size, n = N - r0;
    Tensor rstd = Tensor::empty({n}, m.dtype_), hf = Tensor::empty({n, d}, m.dtype_);
    nn::rmsnorm_forward<T>({n, d, c.rms_norm_eps}, x.data<T>() + r0 * d, W<T>(m, m.index_.norm), hf.data<T>(),
                           rstd.data<T>());
    Tensor logits = Tensor::empty({n, V}, m.dtype_, "logits");
    linear<T>(m.backend_, hf.data<T>(), n, d, LW<T>(m, m.index_.head), V, nullptr, logits.data<T>());
    if (sv) sv->x_final = x.clone(), sv->rstd_f = rstd, sv->hf = hf;
    return logits;
  }

  template <typename T>
  static Tensor forward(const Transformer& m, const int32_t* tokens, int64_t B, int64_t S,
                        const StepOptions* opt, Saved* sv, StepResult* res) {
    MOE_CHECK(B > 0 && S > 0, "batch and sequence length must be > 0, got B = ", B, ", S = ", S);
    MOE_CHECK(S <= m.cfg_.max_position_embeddings, "sequence length ", S,
              " exceeds max_position_embeddings = ", m.cfg_.max_position_embeddings);
    const ModelConfig& c = m.cfg_;
    const int64_t N = B * S;
    Tensor x = embed<T>(m, tokens, N);  // (N, d)
    Tensor tok = Tensor::empty({N}, DType::I32);
    std::memcpy(tok.data<int32_t>(), tokens, sizeof(int32_t) * N);
    const std::vector<int32_t> pos = positions(B, S, 0);
    if (sv) sv->layers.resize(static_cast<size_t>(c.num_hidden_layers));
    const nn::AttentionArgs aa = attention_args(m, B, S, S);
    for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
      LayerSaved tmp;
      LayerSaved& s = sv ? sv->layers[l] : tmp;
      if (sv) s.x_in = x.clone();
      qkv<T>(m, l, x, N, pos.data(), s);
      s.attn = Tensor::empty({N, c.num_attention_heads * aa.vdim()}, m.dtype_);
      s.lse = Tensor::empty({B, c.num_attention_heads, S}, m.dtype_);
      nn::attention_forward<T>(m.backend_, aa, s.q.data<T>(), s.k.data<T>(), s.v.data<T>(), s.attn.data<T>(),
                               s.lse.data<T>());
      out_and_ffn<T>(m, l, x, N, &tok, opt, s, sv != nullptr);
      if (m.moe_[l] && res) {
        res->moe_layers.push_back(l);
        res->stats.push_back(s.moe.stats);
        res->aux_loss += s.moe.stats.total_loss();
      }
      if (opt && opt->check_finite) check_finite(x, cat("hidden state after layer ", l));
    }
    return head<T>(m, x, 0, N, sv);
  }

  // Transpose of qkv() (not deepseek_v3): dq, dk, dv (used as scratch) to the projection
  // gradients and dh1 (N, d) (overwritten).
  template <typename T>
  static void qkv_backward(Transformer& m, int64_t l, LayerSaved& s, int64_t N, const int32_t* pos,
                           Tensor& dq, Tensor& dk, Tensor& dv, Tensor& dh1) {
    const ModelConfig& c = m.cfg_;
    const LayerIndex& P = m.index_.layers[l];
    const int64_t d = c.hidden_size, hd = c.head_dim_or_default();
    const int64_t hq = c.num_attention_heads, hkv = c.num_key_value_heads, Dq = hq * hd, Dk = hkv * hd;
    nn::rope_backward<T>({N, hq, hd, c.rope_theta}, pos, dq.data<T>());
    nn::rope_backward<T>({N, hkv, hd, c.rope_theta}, pos, dk.data<T>());
    const QkNorm qn = c.qk_norm();
    if (qn != QkNorm::None) {
      const bool per_head = qn == QkNorm::PerHead;
      const nn::RmsNormArgs aq{per_head ? N * hq : N, per_head ? hd : Dq, c.rms_norm_eps};
      const nn::RmsNormArgs ak{per_head ? N * hkv : N, per_head ? hd : Dk, c.rms_norm_eps};
      nn::rmsnorm_backward<T>(aq, s.q_raw.data<T>(), W<T>(m, P.q_norm), s.rstd_q.data<T>(), dq.data<T>(),
                              dq.data<T>(), G<T>(m, P.q_norm));
      nn::rmsnorm_backward<T>(ak, s.k_raw.data<T>(), W<T>(m, P.k_norm), s.rstd_k.data<T>(), dk.data<T>(),
                              dk.data<T>(), G<T>(m, P.k_norm));
    }
    const T* h1 = s.h1.data<T>();
    linear_backward<T>(m.backend_, h1, dq.data<T>(), N, d, Dq, LW<T>(m, P.q_w), G<T>(m, P.q_w),
                       G<T>(m, P.q_b), dh1.data<T>(), false);
    linear_backward<T>(m.backend_, h1, dk.data<T>(), N, d, Dk, LW<T>(m, P.k_w), G<T>(m, P.k_w),
                       G<T>(m, P.k_b), dh1.data<T>(), true);
    linear_backward<T>(m.backend_, h1, dv.data<T>(), N, d, Dk, LW<T>(m, P.v_w), G<T>(m, P.v_w),
                       G<T>(m, P.v_b), dh1.data<T>(), true);
  }

  template <typename T>
  static void layer_backward(Transformer& m, int64_t l, LayerSaved& s, Tensor& dx, int64_t B, int64_t S,
                             const int32_t* pos, const StepOptions& opt) {
    const ModelConfig& c = m.cfg_;
    const LayerIndex& P = m.index_.layers[l];
    const int64_t N = B * S, d = c.hidden_size;
    const int64_t hq = c.num_attention_heads, hkv = c.num_key_value_heads;
    const DType dt = m.dtype_;
    T* dxp = dx.data<T>();

    // --- FFN: x_out = x_mid + ffn(rmsnorm(x_mid))
    Tensor dh2 = Tensor::empty({N, d}, dt);
    if (const MoELayer* moe = m.moe_[l].get()) {
      // The layer differentiates <dy, y> + aux_scale · aux directly (aux_scale may be 0), adding
      // its parameters' gradients into the model's (views in the layer's shapes) and writing dx
      // into dh2.
      const MoEParams& mp = moe->params();
      MoEGrads g;
      Tensor* gs[8] = {&g.router_w,      &g.w_gate,      &g.w_up,          &g.w_down,
                       &g.shared_w_gate, &g.shared_w_up, &g.shared_w_down, &g.shared_gate_w};
      const Tensor* ps[8] = {&mp.router_w,      &mp.w_gate,      &mp.w_up,          &mp.w_down,
                             &mp.shared_w_gate, &mp.shared_w_up, &mp.shared_w_down, &mp.shared_gate_w};
      for (int i = 0; i < 8; ++i)  // a parameter the model does not index gets a throwaway gradient
        if (ps[i]->defined() && P.moe[i] >= 0) *gs[i] = m.params_[P.moe[i]].grad.reshape(ps[i]->shape());
      g.dx = dh2;
      moe->backward_into(s.moe, dx, g, opt.aux_scale);
      s.moe = MoEForward();
    } else {
      const int64_t F = c.intermediate_size;
      Tensor da = Tensor::empty({N, F}, dt);  // (N, F)
      linear_backward<T>(m.backend_, s.a.data<T>(), dxp, N, F, d, LW<T>(m, P.down), G<T>(m, P.down), nullptr,
                         da.data<T>(), false);
      T* dap = da.data<T>();
      T* gp = s.g.data<T>();  // reused in place as dg
      T* up = s.u.data<T>();  // reused in place as du
      parallel_for(N * F, 1 << 14, [&](int64_t i0, int64_t i1) {
        for (int64_t i = i0; i < i1; ++i) {
          const T sg = sigmoid(gp[i]), si = gp[i] * sg;
          const T dg = dap[i] * up[i] * sg * (T(1) + gp[i] * (T(1) - sg));
          up[i] = dap[i] * si;
          gp[i] = dg;
        }
      });
      linear_backward<T>(m.backend_, s.h2.data<T>(), gp, N, d, F, LW<T>(m, P.gate), G<T>(m, P.gate), nullptr,
                         dh2.data<T>(), false);
      linear_backward<T>(m.backend_, s.h2.data<T>(), up, N, d, F, LW<T>(m, P.up), G<T>(m, P.up), nullptr,
                         dh2.data<T>(), true);
    }
    Tensor tmp = Tensor::empty({N, d}, dt);
    nn::rmsnorm_backward<T>({N, d, c.rms_norm_eps}, s.x_mid.data<T>(), W<T>(m, P.ln2), s.rstd2.data<T>(),
                            dh2.data<T>(), tmp.data<T>(), G<T>(m, P.ln2));
    axpy<T>(dxp, tmp.data<T>(), N * d);

    // --- attention: x_mid = x_in + o_proj(attn(...rmsnorm(x_in)))
    const nn::AttentionArgs aa = attention_args(m, B, S, S);
    Tensor dattn = Tensor::empty({N, hq * aa.vdim()}, dt);
    linear_backward<T>(m.backend_, s.attn.data<T>(), dxp, N, hq * aa.vdim(), d, LW<T>(m, P.o_w),
                       G<T>(m, P.o_w), G<T>(m, P.o_b), dattn.data<T>(), false);
    Tensor dq = Tensor::empty({N, hq * aa.hd}, dt), dk = Tensor::empty({N, hkv * aa.hd}, dt);
    Tensor dv = Tensor::empty({N, hkv * aa.vdim()}, dt);
    nn::attention_backward<T>(m.backend_, aa, s.q.data<T>(), s.k.data<T>(), s.v.data<T>(), s.attn.data<T>(),
                              s.lse.data<T>(), dattn.data<T>(), dq.data<T>(), dk.data<T>(), dv.data<T>());
    Tensor dh1 = Tensor::empty({N, d}, dt);
    if (c.mla()) {
      const std::vector<double> inv_freq = c.rope_inv_freq();
      detail::mla_qkv_backward<T>(m.backend_, mla_shape(m, N), mla_weights<T>(m, l), mla_grads<T>(m, l),
                                  mla_rope(m, inv_freq), s.h1.data<T>(), pos, s.mla, dq.data<T>(),
                                  dk.data<T>(), dv.data<T>(), dh1.data<T>());
    } else {
      qkv_backward<T>(m, l, s, N, pos, dq, dk, dv, dh1);
    }
    nn::rmsnorm_backward<T>({N, d, c.rms_norm_eps}, s.x_in.data<T>(), W<T>(m, P.ln1), s.rstd1.data<T>(),
                            dh1.data<T>(), tmp.data<T>(), G<T>(m, P.ln1));
    axpy<T>(dxp, tmp.data<T>(), N * d);
    s = LayerSaved();  // free this layer's activations as soon as they are used
  }

  template <typename T>
  static StepResult forward_backward(Transformer& m, const int32_t* tokens, const int32_t* targets, int64_t B,
                                     int64_t S, const StepOptions& opt) {
    const ModelConfig& c = m.cfg_;
    const int64_t N = B * S, d = c.hidden_size, V = c.vocab_size;
    Saved sv;
    StepResult res;
    Tensor logits = forward<T>(m, tokens, B, S, &opt, &sv, &res);  // (N, V), becomes dlogits
    // Distillation (moe/model/distill_loss.h) when the teacher's logits are given.
    if (opt.teacher_logits != nullptr) {
      const nn::DistillArgs da{N, V, opt.kd_weight, opt.kd_temperature, opt.ce_scale};
      const nn::DistillResult kd =
          nn::distill_cross_entropy<T>(da, logits.data<T>(), opt.teacher_logits, targets, logits.data<T>());
      res.loss_sum = kd.ce_sum, res.count = kd.count, res.kd_loss_sum = kd.kd_sum;
    } else {
      const nn::CrossEntropyResult ce =
          nn::cross_entropy<T>(N, V, logits.data<T>(), targets, logits.data<T>(), opt.ce_scale);
      res.loss_sum = ce.loss_sum, res.count = ce.count;
    }
    if (!std::isfinite(res.loss_sum) || !std::isfinite(res.kd_loss_sum) || !std::isfinite(res.aux_loss))
      return res;  // the caller skips the step

    Tensor dhf = Tensor::empty({N, d}, m.dtype_);
    linear_backward<T>(m.backend_, sv.hf.data<T>(), logits.data<T>(), N, d, V, LW<T>(m, m.index_.head),
                       G<T>(m, m.index_.head), nullptr, dhf.data<T>(), false);
    logits = Tensor();
    Tensor dx = Tensor::empty({N, d}, m.dtype_);
    nn::rmsnorm_backward<T>({N, d, c.rms_norm_eps}, sv.x_final.data<T>(), W<T>(m, m.index_.norm),
                            sv.rstd_f.data<T>(), dhf.data<T>(), dx.data<T>(), G<T>(m, m.index_.norm));
    const std::vector<int32_t> pos = positions(B, S, 0);
    for (int64_t l = c.num_hidden_layers - 1; l >= 0; --l)
      layer_backward<T>(m, l, sv.layers[l], dx, B, S, pos.data(), opt);
    // Embedding rows: serial, so repeated tokens add in a fixed order.
    T* dE = G<T>(m, m.index_.embed);
    const T* dxp = dx.data<T>();
    for (int64_t t = 0; t < N; ++t) {
      T* row = dE + static_cast<int64_t>(tokens[t]) * d;
      for (int64_t j = 0; j < d; ++j) row[j] += dxp[t * d + j];
    }
    return res;
  }

  template <typename T>
  static StepResult evaluate(const Transformer& m, const int32_t* tokens, const int32_t* targets, int64_t B,
                             int64_t S) {
    StepResult res;
    StepOptions opt;
    opt.training = false;
    Tensor logits = forward<T>(m, tokens, B, S, &opt, nullptr, &res);
    const nn::CrossEntropyResult ce =
        nn::cross_entropy<T>(B * S, m.cfg_.vocab_size, logits.data<T>(), targets, nullptr, 1.0);
    res.loss_sum = ce.loss_sum, res.count = ce.count;
    return res;
  }

  template <typename T>
  static Tensor decode(const Transformer& m, KVCache& cache, const int32_t* tokens, int64_t n) {
    const ModelConfig& c = m.cfg_;
    MOE_CHECK(n > 0, "decode: no tokens given");
    MOE_CHECK(static_cast<int64_t>(cache.k.size()) == c.num_hidden_layers && cache.v.size() == cache.k.size(),
              "decode: the KV cache was not made by this model's new_cache()");
    const int64_t p0 = cache.len;
    MOE_CHECK(p0 + n <= cache.max_len, "decode: ", p0 + n, " positions exceed the KV cache length ",
              cache.max_len);
    const int64_t hq = c.num_attention_heads, hkv = c.num_key_value_heads;
    const int64_t hd = c.qk_head_dim(), hdv = c.v_head_dim_or_default();
    Tensor x = embed<T>(m, tokens, n);
    Tensor tok = Tensor::empty({n}, DType::I32);
    std::memcpy(tok.data<int32_t>(), tokens, sizeof(int32_t) * n);
    const std::vector<int32_t> pos = positions(1, n, p0);
    for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
      LayerSaved s;
      qkv<T>(m, l, x, n, pos.data(), s);
      T* kc = cache.k[l].data<T>();
      T* vc = cache.v[l].data<T>();
      std::memcpy(kc + p0 * hkv * hd, s.k.data<T>(), sizeof(T) * n * hkv * hd);
      std::memcpy(vc + p0 * hkv * hdv, s.v.data<T>(), sizeof(T) * n * hkv * hdv);
      s.attn = Tensor::empty({n, hq * hdv}, m.dtype_);
      const nn::AttentionArgs aa = attention_args(m, 1, n, p0 + n);
      nn::attention_forward<T>(m.backend_, aa, s.q.data<T>(), kc, vc, s.attn.data<T>(), nullptr);
      out_and_ffn<T>(m, l, x, n, &tok, nullptr, s, false);
    }
    cache.len = p0 + n;
    return head<T>(m, x, n - 1, n, nullptr).reshape({c.vocab_size});
  }
};

void Transformer::set_bf16_compute(bool on) {
  check_masters("set_bf16_compute");
  MOE_CHECK(!on || dtype_ == DType::F32, "bf16 compute needs an f32 model, this one is ", dtype_name(dtype_));
  bf16_compute_ = on;
  // The experts compute in bf16 too, except in bf16 inference (its own expert copies) or when their
  // weights are held outside the layers.
  for (auto& l : moe_)
    if (l && !l->external_experts()) l->set_bf16_compute(on && !bf16_inference_);
  if (on)
    refresh_bf16();
  else
    bf16_.clear(), bf16_t_.clear();
}

void Transformer::set_bf16_inference(bool on) {
  check_masters("set_bf16_inference");
  MOE_CHECK(!on || dtype_ == DType::F32, "bf16 inference needs an f32 model, this one is ",
            dtype_name(dtype_));
  bf16_inference_ = on;  // first: inference packs no copies for the backward
  if (!on) linear_format_ = kernels::WeightFormat::Bf16Packed;
  bf16_.clear(), bf16_t_.clear();
  set_bf16_compute(on);
  for (auto& l : moe_)
    if (l) l->set_bf16_expert_weights(on);
}

void Transformer::set_inference_linear_format(kernels::WeightFormat f) {
  check_masters("set_inference_linear_format");
  MOE_CHECK(f == kernels::WeightFormat::Bf16Packed || kernels::is_int_packed(f),
            "inference linear format: ", kernels::weight_format_name(f),
            " is not one (bf16-packed, int8-packed or int4-packed)");
  linear_format_ = f;
  set_bf16_inference(true);
}

bool Transformer::pack_linear_int(int i, int64_t out, int64_t in) const {
  const kernels::WeightFormat f = linear_format_;
  if (!kernels::is_int_packed(f) || in % kLinearGroup != 0) return false;  // such a linear stays bf16
  const int bits = f == kernels::WeightFormat::Int8Packed ? 8 : 4;
  const kernels::QuantizedMatrix q = kernels::quantize_matrix(
      params_[static_cast<size_t>(i)].value.data<float>(), out, in, bits, kLinearGroup, params_[i].name);
  const kernels::WeightView src = kernels::weight_view(q.view());
  Tensor t = Tensor::empty({kernels::packed_int_bytes(src)}, DType::U8, "packed linear");
  kernels::pack_int_weights(src, 1, t.raw(), params_[i].name.c_str());
  bf16_[static_cast<size_t>(i)] = std::move(t);
  bf16_fmt_[static_cast<size_t>(i)] = f;
  return true;
}

void Transformer::set_backend(kernels::Backend b) {
  MOE_CHECK(b != kernels::Backend::Cuda, "model: backend ", kernels::backend_name(b),
            " is not supported (the model's tensors are host tensors and its norms, rotary embedding and "
            "softmax run on the host; use ref or cpu)");
  backend_ = b;
  for (auto& l : moe_)
    if (l) l->set_backend(b);
}

void Transformer::set_expert_skip_threshold(double t) {
  for (auto& l : moe_)
    if (l) l->set_skip_threshold(t);
}

void Transformer::set_router_top_p(double p, int min_k) {
  for (auto& l : moe_)
    if (l) l->set_router_top_p(p, min_k);
}

std::vector<int> Transformer::linear_params() const {
  std::vector<int> linear = {index_.head};
  for (const LayerIndex& P : index_.layers)
    for (int i : {P.q_w, P.k_w, P.v_w, P.o_w, P.gate, P.up, P.down, P.q_a_w, P.q_b_w, P.kv_a_w, P.kv_b_w})
      if (i >= 0) linear.push_back(i);
  return linear;
}

Transformer::WeightTraffic Transformer::weight_bytes_per_token() const {
  const double f = dtype_bits(dtype_) / 8.0, half = bf16_inference_ ? 2.0 : f;
  std::vector<double> per(params_.size(), f);  // bytes per element of each parameter
  if (bf16_compute_)  // the packed copies are what the forward reads (bf16, or W8A8 / W4A8 with their scales)
    for (int i : linear_params())
      per[static_cast<size_t>(i)] =
          bf16_[static_cast<size_t>(i)].defined()
              ? static_cast<double>(bf16_[static_cast<size_t>(i)].nbytes()) /
                    static_cast<double>(shape_numel(shapes_[static_cast<size_t>(i)]))
              : 2.0;
  WeightTraffic t;
  std::vector<bool> routed(params_.size(), false);
  for (const LayerIndex& P : index_.layers) {
    if (P.moe[0] < 0) continue;
    for (int j : {4, 5, 6})  // shared experts: bf16 copies in bf16 inference
      if (P.moe[j] >= 0) per[static_cast<size_t>(P.moe[j])] = half;
    for (int j : {1, 2, 3}) {
      if (P.moe[j] < 0) continue;
      const Shape& shape = shapes_[static_cast<size_t>(P.moe[j])];
      routed[static_cast<size_t>(P.moe[j])] = true;
      if (shape.empty()) continue;  // no gate (not SwiGLU)
      // (E_local, rows, cols): top_k experts' worth, as a token of batch 1 reads them
      const double experts = static_cast<double>(shape[0]);
      t.routed += static_cast<double>(shape_numel(shape)) / experts *
                  static_cast<double>(cfg_.moe_layer_config().router.top_k) * half;
    }
  }
  for (size_t i = 0; i < params_.size(); ++i) {
    if (routed[i] || shapes_[i].empty()) continue;
    const int64_t numel = shape_numel(shapes_[i]);
    // The embedding table: one row per token (unless it is the head too), in the dtype lookups read.
    const bool embed = static_cast<int>(i) == index_.embed;
    const bool embed_only = embed && index_.head != index_.embed;
    const double row_bytes = embed && embed_rows_.defined() ? dtype_bits(embed_rows_.dtype()) / 8.0 : per[i];
    t.dense += embed_only ? static_cast<double>(numel / shapes_[i][0]) * row_bytes
                          : static_cast<double>(numel) * per[i];
  }
  return t;
}

void Transformer::refresh_bf16() const {
  if (!bf16_compute_ || masters_released_) return;  // released: the packed copies are the weights
  for (const auto& l : moe_)
    if (l && l->bf16_compute()) l->refresh_bf16_compute();
  const std::vector<int> linear = linear_params();
  bf16_.resize(params_.size());
  bf16_t_.resize(params_.size());
  bf16_fmt_.assign(params_.size(), kernels::WeightFormat::Bf16Packed);
  // W (out, in): the forward's op(W) = W^T (in, out) is W stored (N, K); the input gradient's op(W) = W
  // (out, in) is W stored (K, N), trans.
  for (int i : linear) {
    const int64_t out = params_[i].value.size(0), in = params_[i].value.numel() / out;
    const float* src = params_[i].value.data<float>();
    auto pack = [&](Tensor& t, int64_t N, int64_t K, bool trans) {
      if (!t.defined()) t = Tensor::empty({kernels::packed_bf16_bytes(N, K) / 2}, DType::BF16, "bf16 linear");
      kernels::pack_bf16_weights(
          {.format = kernels::WeightFormat::F32, .N = N, .K = K, .trans = trans, .data = src}, 1, t.raw(),
          params_[i].name.c_str());
    };
    if (bf16_inference_ && pack_linear_int(i, out, in)) continue;
    pack(bf16_[i], out, in, false);
    if (!bf16_inference_) pack(bf16_t_[i], in, out, true);
  }
}

StepResult Transformer::forward_backward(const int32_t* tokens, const int32_t* targets, int64_t B, int64_t S,
                                         const StepOptions& opt) {
  check_masters("forward_backward");
  MOE_CHECK(!bf16_inference_,
            "forward_backward: the model is in bf16 inference mode (set_bf16_inference(false) first)");
  ensure_grads();
  refresh_bf16();
  return dtype_ == DType::F64 ? Impl::forward_backward<double>(*this, tokens, targets, B, S, opt)
                              : Impl::forward_backward<float>(*this, tokens, targets, B, S, opt);
}

StepResult Transformer::evaluate(const int32_t* tokens, const int32_t* targets, int64_t B, int64_t S) const {
  refresh_bf16();
  return dtype_ == DType::F64 ? Impl::evaluate<double>(*this, tokens, targets, B, S)
                              : Impl::evaluate<float>(*this, tokens, targets, B, S);
}

Tensor Transformer::logits(const int32_t* tokens, int64_t B, int64_t S) const {
  StepOptions opt;
  opt.training = false;
  return dtype_ == DType::F64 ? Impl::forward<double>(*this, tokens, B, S, &opt, nullptr, nullptr)
                              : Impl::forward<float>(*this, tokens, B, S, &opt, nullptr, nullptr);
}

KVCache Transformer::new_cache(int64_t max_len) const {
  MOE_CHECK(max_len > 0 && max_len <= cfg_.max_position_embeddings, "KV cache length ", max_len,
            " must be in [1, max_position_embeddings = ", cfg_.max_position_embeddings, "]");
  KVCache c;
  c.max_len = max_len;
  const int64_t hkv = cfg_.num_key_value_heads, hd = cfg_.qk_head_dim(), hdv = cfg_.v_head_dim_or_default();
  for (int64_t l = 0; l < cfg_.num_hidden_layers; ++l) {
    c.k.push_back(Tensor::zeros({max_len, hkv, hd}, dtype_));
    c.v.push_back(Tensor::zeros({max_len, hkv, hdv}, dtype_));
  }
  return c;
}

Tensor Transformer::decode(KVCache& cache, const int32_t* tokens, int64_t n) const {
  return dtype_ == DType::F64 ? Impl::decode<double>(*this, cache, tokens, n)
                              : Impl::decode<float>(*this, cache, tokens, n);
}

// ---------------------------------------------------------------------------------------------
// Forward pieces for other forward variants (src/model/transformer_parts.h).
namespace parts {

Tensor embed(const Transformer& m, const int32_t* tokens, int64_t n) {
  return m.dtype() == DType::F64 ? Transformer::Impl::embed<double>(m, tokens, n)
                                 : Transformer::Impl::embed<float>(m, tokens, n);
}

Qkv qkv(const Transformer& m, int64_t l, const Tensor& x, const int32_t* pos) {
  LayerSaved s;
  if (m.dtype() == DType::F64)
    Transformer::Impl::qkv<double>(m, l, x, x.shape()[0], pos, s);
  else
    Transformer::Impl::qkv<float>(m, l, x, x.shape()[0], pos, s);
  return {s.q, s.k, s.v};
}

void out_and_ffn(const Transformer& m, int64_t l, Tensor& x, const Tensor& attn, const Tensor& tokens,
                 MoEStats* stats) {
  LayerSaved s;
  s.attn = attn;
  StepOptions opt;
  opt.training = false;
  if (m.dtype() == DType::F64)
    Transformer::Impl::out_and_ffn<double>(m, l, x, x.shape()[0], &tokens, &opt, s, false);
  else
    Transformer::Impl::out_and_ffn<float>(m, l, x, x.shape()[0], &tokens, &opt, s, false);
  if (stats && m.moe_layer(l)) *stats = s.moe.stats;
}

Tensor head(const Transformer& m, const Tensor& x) {
  const int64_t n = x.shape()[0];
  return m.dtype() == DType::F64 ? Transformer::Impl::head<double>(m, x, 0, n, nullptr)
                                 : Transformer::Impl::head<float>(m, x, 0, n, nullptr);
}

}  // namespace parts

}  // namespace moe::model
