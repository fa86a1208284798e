#include "moe/moe/balance.h"

#include <algorithm>
#include <cmath>

#include "moe/core/error.h"

namespace moe {

std::vector<int64_t> routed_counts(const Routing& r, int64_t E) {
  std::vector<int64_t> c(static_cast<size_t>(E), 0);
  const int32_t* ex = r.n_assign ? r.expert.data<int32_t>() : nullptr;
  for (int64_t a = 0; a < r.n_assign; ++a)
    if (assignment_active(r, a)) ++c[ex[a]];
  return c;
}

BalanceLosses balance_losses(const MoEConfig& cfg, const Routing& r, double* dl) {
  const BalanceConfig& bc = cfg.balance;
  BalanceLosses out;
  const int64_t T = r.n_tokens, E = cfg.n_experts;
  if (T == 0 || (bc.aux_coef == 0 && bc.seq_aux_coef == 0 && bc.z_coef == 0 && bc.entropy_coef == 0))
    return out;
  // k of the loss scales: top_k, or under top-p routing the batch's mean k
  const double k = r.active.defined() ? static_cast<double>(r.n_active) / static_cast<double>(T)
                                      : static_cast<double>(cfg.router.top_k);
  const std::vector<double> l = r.logits.to(DType::F64).to_vector();  // (T, E)
  const std::vector<double> s = r.scores.to(DType::F64).to_vector();  // (T, E)
  const bool sig = cfg.router.score == ScoreFn::Sigmoid;

  // p: softmax(l), or the sigmoid scores normalised per token.
  std::vector<double> p(s.size());
  std::vector<double> p_sum(static_cast<size_t>(T), 1.0);
  if (sig) {
    for (int64_t t = 0; t < T; ++t) {
      double z = 0;
      for (int64_t e = 0; e < E; ++e) z += s[t * E + e];
      p_sum[t] = z;
      for (int64_t e = 0; e < E; ++e) p[t * E + e] = s[t * E + e] / z;
    }
  } else {
    p = s;
  }
  std::vector<double> dp(s.size(), 0.0);  // d loss / d p

  if (bc.aux_coef != 0) {
    const std::vector<int64_t> c = routed_counts(r, E);
    double sum = 0;
    for (int64_t e = 0; e < E; ++e) {
      double P = 0;
      for (int64_t t = 0; t < T; ++t) P += p[t * E + e];
      sum += static_cast<double>(c[e]) * P / static_cast<double>(T);
    }
    const double scale = bc.aux_coef * static_cast<double>(E) / (k * static_cast<double>(T));
    out.aux = scale * sum;
    for (int64_t t = 0; t < T; ++t)
      for (int64_t e = 0; e < E; ++e)
        dp[t * E + e] += scale * static_cast<double>(c[e]) / static_cast<double>(T);
  }

  if (bc.seq_aux_coef != 0) {
    const int64_t L = bc.seq_len > 0 ? bc.seq_len : T;
    MOE_CHECK(T % L == 0, "sequence-level aux loss: token count ", T, " is not a multiple of seq_len ", L);
    const int64_t Q = T / L;
    const int32_t* tok = r.token.data<int32_t>();
    const int32_t* ex = r.expert.data<int32_t>();
    std::vector<double> f(static_cast<size_t>(Q * E), 0.0);  // (Q, E) counts per sequence
    for (int64_t a = 0; a < r.n_assign; ++a)
      if (assignment_active(r, a)) f[(tok[a] / L) * E + ex[a]] += 1.0;
    const double fscale = static_cast<double>(E) / (k * static_cast<double>(L));
    double total = 0;
    for (int64_t q = 0; q < Q; ++q) {
      for (int64_t e = 0; e < E; ++e) {
        double P = 0;
        for (int64_t t = q * L; t < (q + 1) * L; ++t) P += p[t * E + e];
        const double fe = fscale * f[q * E + e];
        total += fe * P / static_cast<double>(L);
        for (int64_t t = q * L; t < (q + 1) * L; ++t)
          dp[t * E + e] += bc.seq_aux_coef * fe / (static_cast<double>(L) * static_cast<double>(Q));
      }
    }
    out.seq_aux = bc.seq_aux_coef * total / static_cast<double>(Q);
  }

  if (bc.entropy_coef != 0) {
    // H_t = -Σ_e p log p (0 log 0 = 0); dH/dp_e = -(log p_e + 1) where p_e > 0
    double sum = 0;
    const double g = bc.entropy_coef / static_cast<double>(T);
    for (int64_t i = 0; i < T * E; ++i) {
      if (p[i] <= 0) continue;
      const double lp = std::log(p[i]);
      sum -= p[i] * lp;
      dp[i] -= g * (lp + 1.0);
    }
    out.entropy = bc.entropy_coef * sum / static_cast<double>(T);
  }

  if (dl) {
    for (int64_t t = 0; t < T; ++t) {
      const double* pt = &p[t * E];
      const double* dpt = &dp[t * E];
      double* dlt = &dl[t * E];
      double dot = 0;
      for (int64_t e = 0; e < E; ++e) dot += pt[e] * dpt[e];
      if (sig) {
        // p = s / S: ds_e = (dp_e - Σ p dp) / S; then through the sigmoid.
        for (int64_t e = 0; e < E; ++e) {
          const double se = s[t * E + e];
          dlt[e] += (dpt[e] - dot) / p_sum[t] * se * (1.0 - se);
        }
      } else {
        for (int64_t e = 0; e < E; ++e) dlt[e] += pt[e] * (dpt[e] - dot);
      }
    }
  }

  if (bc.z_coef != 0) {
    double sum = 0;
    for (int64_t t = 0; t < T; ++t) {
      const double* lt = &l[t * E];
      const double mx = *std::max_element(lt, lt + E);
      double z = 0;
      for (int64_t e = 0; e < E; ++e) z += std::exp(lt[e] - mx);
      const double lse = mx + std::log(z);
      sum += lse * lse;
      if (dl) {
        const double g = bc.z_coef * 2.0 * lse / static_cast<double>(T);
        for (int64_t e = 0; e < E; ++e) dl[t * E + e] += g * std::exp(lt[e] - lse);
      }
    }
    out.z = bc.z_coef * sum / static_cast<double>(T);
  }
  return out;
}

void update_bias(Tensor& bias, const std::vector<int64_t>& routed, double rate) {
  const int64_t E = static_cast<int64_t>(routed.size());
  check_shape(bias, {E}, "router_bias");
  if (E == 0) return;
  double mean = 0;
  for (int64_t c : routed) mean += static_cast<double>(c);
  mean /= static_cast<double>(E);
  for (int64_t e = 0; e < E; ++e) {
    const double diff = mean - static_cast<double>(routed[e]);
    const double sign = diff > 0 ? 1.0 : (diff < 0 ? -1.0 : 0.0);
    bias.set(e, bias.get(e) + rate * sign);
  }
}

}  // namespace moe
