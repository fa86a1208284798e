// Multi-head latent attention, projection step forward and backward (src/model/mla.h).
#include "model/mla.h"

#include <cstring>
#include <vector>

#include "moe/core/parallel.h"
#include "moe/model/nn.h"

namespace moe::model::detail {

namespace {

nn::RopeArgs rope_args(const MlaShape& sh, const MlaRope& r, int64_t heads, int64_t ld) {
  nn::RopeArgs a;
  a.n = sh.N;
  a.heads = heads;
  a.hd = sh.rope;
  a.inv_freq = r.inv_freq;
  a.mscale = r.mscale;
  a.ld = ld;
  a.interleaved = r.interleaved;
  return a;
}

}  // namespace

template <typename T>
void mla_qkv_forward(kernels::Backend be, const MlaShape& sh, const MlaWeights<T>& w, const MlaRope& r,
                     const T* h, const int32_t* pos, T* q, T* k, T* v, MlaSaved& s) {
  const int64_t N = sh.N, d = sh.d, H = sh.heads, qk = sh.qk(), nope = sh.nope, rd = sh.rope, vd = sh.vd;
  const int64_t kvl = sh.kv_lora, kva_w = kvl + rd;
  const DType dt = std::is_same_v<T, double> ? DType::F64 : DType::F32;
  // --- queries
  if (sh.q_lora > 0) {
    const int64_t ql = sh.q_lora;
    s.qa = Tensor::empty({N, ql}, dt), s.qa_n = Tensor::empty({N, ql}, dt),
    s.rstd_qa = Tensor::empty({N}, dt);
    linear<T>(be, h, N, d, w.q_a, ql, w.q_a_bias, s.qa.data<T>());
    nn::rmsnorm_forward<T>({N, ql, kMlaLatentNormEps}, s.qa.data<T>(), w.q_a_norm, s.qa_n.data<T>(),
                           s.rstd_qa.data<T>());
    linear<T>(be, s.qa_n.data<T>(), N, ql, w.q_b, H * qk, nullptr, q);
  } else {
    linear<T>(be, h, N, d, w.q, H * qk, nullptr, q);
  }
  nn::rope_forward<T>(rope_args(sh, r, H, qk), pos, q + nope);
  // --- compressed kv and the shared rotary key
  std::vector<T> kva(static_cast<size_t>(N * kva_w));  // (N, kv_lora + rope)
  linear<T>(be, h, N, d, w.kv_a, kva_w, w.kv_a_bias, kva.data());
  s.c = Tensor::empty({N, kvl}, dt), s.c_n = Tensor::empty({N, kvl}, dt), s.rstd_c = Tensor::empty({N}, dt);
  std::vector<T> kr(static_cast<size_t>(N * rd));  // (N, rope)
  T* cp = s.c.data<T>();
  for (int64_t t = 0; t < N; ++t) {
    std::memcpy(cp + t * kvl, kva.data() + t * kva_w, sizeof(T) * kvl);
    std::memcpy(kr.data() + t * rd, kva.data() + t * kva_w + kvl, sizeof(T) * rd);
  }
  nn::rmsnorm_forward<T>({N, kvl, kMlaLatentNormEps}, cp, w.kv_a_norm, s.c_n.data<T>(), s.rstd_c.data<T>());
  nn::rope_forward<T>(rope_args(sh, r, 1, rd), pos, kr.data());
  // --- per-head keys and values
  std::vector<T> kvb(static_cast<size_t>(N * H * (nope + vd)));  // (N, H, nope + vd)
  linear<T>(be, s.c_n.data<T>(), N, kvl, w.kv_b, H * (nope + vd), nullptr, kvb.data());
  parallel_for(N, 16, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t)
      for (int64_t hh = 0; hh < H; ++hh) {
        const T* src = kvb.data() + (t * H + hh) * (nope + vd);
        T* kd = k + (t * H + hh) * qk;
        std::memcpy(kd, src, sizeof(T) * nope);
        std::memcpy(kd + nope, kr.data() + t * rd, sizeof(T) * rd);
        std::memcpy(v + (t * H + hh) * vd, src + nope, sizeof(T) * vd);
      }
  });
}

template <typename T>
void mla_qkv_backward(kernels::Backend be, const MlaShape& sh, const MlaWeights<T>& w, const MlaGrads<T>& g,
                      const MlaRope& r, const T* h, const int32_t* pos, const MlaSaved& s, T* dq, T* dk,
                      const T* dv, T* dh) {
  const int64_t N = sh.N, d = sh.d, H = sh.heads, qk = sh.qk(), nope = sh.nope, rd = sh.rope, vd = sh.vd;
  const int64_t kvl = sh.kv_lora, kva_w = kvl + rd;
  // --- per-head keys and values back to kv_b_proj's output; the shared rotary key sums its heads
  std::vector<T> dkvb(static_cast<size_t>(N * H * (nope + vd)));  // (N, H, nope + vd)
  std::vector<T> dkva(static_cast<size_t>(N * kva_w), T(0));      // (N, kv_lora + rope)
  parallel_for(N, 16, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      T* dkr = dkva.data() + t * kva_w + kvl;  // (rope)
      for (int64_t hh = 0; hh < H; ++hh) {
        T* dst = dkvb.data() + (t * H + hh) * (nope + vd);
        const T* dkh = dk + (t * H + hh) * qk;
        std::memcpy(dst, dkh, sizeof(T) * nope);
        std::memcpy(dst + nope, dv + (t * H + hh) * vd, sizeof(T) * vd);
        for (int64_t j = 0; j < rd; ++j) dkr[j] += dkh[nope + j];
      }
    }
  });
  nn::RopeArgs ra = rope_args(sh, r, 1, kva_w);
  nn::rope_backward<T>(ra, pos, dkva.data() + kvl);
  std::vector<T> dcn(static_cast<size_t>(N * kvl)), dc(static_cast<size_t>(N * kvl));  // (N, kv_lora) x2
  linear_backward<T>(be, s.c_n.data<T>(), dkvb.data(), N, kvl, H * (nope + vd), w.kv_b, g.kv_b, nullptr,
                     dcn.data(), false);
  nn::rmsnorm_backward<T>({N, kvl, kMlaLatentNormEps}, s.c.data<T>(), w.kv_a_norm, s.rstd_c.data<T>(),
                          dcn.data(), dc.data(), g.kv_a_norm);
  for (int64_t t = 0; t < N; ++t) std::memcpy(dkva.data() + t * kva_w, dc.data() + t * kvl, sizeof(T) * kvl);
  linear_backward<T>(be, h, dkva.data(), N, d, kva_w, w.kv_a, g.kv_a, g.kv_a_bias, dh, false);
  // --- queries
  nn::rope_backward<T>(rope_args(sh, r, H, qk), pos, dq + nope);
  if (sh.q_lora > 0) {
    const int64_t ql = sh.q_lora;
    std::vector<T> dqan(static_cast<size_t>(N * ql)), dqa(static_cast<size_t>(N * ql));  // (N, q_lora) x2
    linear_backward<T>(be, s.qa_n.data<T>(), dq, N, ql, H * qk, w.q_b, g.q_b, nullptr, dqan.data(), false);
    nn::rmsnorm_backward<T>({N, ql, kMlaLatentNormEps}, s.qa.data<T>(), w.q_a_norm, s.rstd_qa.data<T>(),
                            dqan.data(), dqa.data(), g.q_a_norm);
    linear_backward<T>(be, h, dqa.data(), N, d, ql, w.q_a, g.q_a, g.q_a_bias, dh, true);
  } else {
    linear_backward<T>(be, h, dq, N, d, H * qk, w.q, g.q, nullptr, dh, true);
  }
}

#define MOE_MLA_INSTANTIATE(T)                                                                              \
  template void mla_qkv_forward<T>(kernels::Backend, const MlaShape&, const MlaWeights<T>&, const MlaRope&, \
                                   const T*, const int32_t*, T*, T*, T*, MlaSaved&);                        \
  template void mla_qkv_backward<T>(kernels::Backend, const MlaShape&, const MlaWeights<T>&,                \
                                    const MlaGrads<T>&, const MlaRope&, const T*, const int32_t*,           \
                                    const MlaSaved&, T*, T*, const T*, T*);
MOE_MLA_INSTANTIATE(float)
MOE_MLA_INSTANTIATE(double)
#undef MOE_MLA_INSTANTIATE

}  // namespace moe::model::detail
