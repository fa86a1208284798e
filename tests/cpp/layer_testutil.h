// Helpers for the MoE layer tests: configs, random layers, losses and finite differences.
#pragma once

#include <cmath>
#include <functional>
#include <string>
#include <vector>

#include "moe/core/rng.h"
#include "moe/moe/layer.h"

namespace moe::testing {

inline MoEConfig small_config(int64_t d = 8, int64_t F = 6, int64_t E = 4, int k = 2) {
  MoEConfig c;
  c.d_model = d;
  c.d_ff = F;
  c.n_experts = E;
  c.router.top_k = k;
  return c;
}

inline Tensor random_tensor(const Shape& s, DType dt, uint64_t seed, double stddev = 1.0) {
  Tensor t = Tensor::empty(s, dt, "random");
  Rng(seed).fill_normal(t, 0.0, stddev);
  return t;
}

// All parameter tensors of a layer by name (defined ones only), in a fixed order.
inline std::vector<std::pair<std::string, Tensor*>> param_list(MoEParams& p) {
  std::vector<std::pair<std::string, Tensor*>> v = {{"router_w", &p.router_w},
                                                    {"w_gate", &p.w_gate},
                                                    {"w_up", &p.w_up},
                                                    {"w_down", &p.w_down},
                                                    {"shared_w_gate", &p.shared_w_gate},
                                                    {"shared_w_up", &p.shared_w_up},
                                                    {"shared_w_down", &p.shared_w_down},
                                                    {"shared_gate_w", &p.shared_gate_w}};
  std::vector<std::pair<std::string, Tensor*>> out;
  for (auto& e : v)
    if (e.second->defined()) out.push_back(e);
  return out;
}

inline Tensor* grad_of(MoEGrads& g, const std::string& name) {
  if (name == "router_w") return &g.router_w;
  if (name == "w_gate") return &g.w_gate;
  if (name == "w_up") return &g.w_up;
  if (name == "w_down") return &g.w_down;
  if (name == "shared_w_gate") return &g.shared_w_gate;
  if (name == "shared_w_up") return &g.shared_w_up;
  if (name == "shared_w_down") return &g.shared_w_down;
  if (name == "shared_gate_w") return &g.shared_gate_w;
  return nullptr;
}

// L = <dy, y> + losses.
inline double objective(const MoEForward& f, const Tensor& dy) {
  double s = 0;
  for (int64_t i = 0; i < dy.numel(); ++i) s += dy.get(i) * f.y.get(i);
  return s + f.stats.total_loss();
}

// Largest |a - b| relative to the largest |b| (scale-aware error), NaN -> infinity.
inline double rel_err(const Tensor& a, const Tensor& b) {
  double num = 0, den = 1e-30;
  for (int64_t i = 0; i < b.numel(); ++i) {
    const double x = a.get(i), y = b.get(i);
    if (std::isnan(x) || std::isnan(y)) return INFINITY;
    num = std::max(num, std::abs(x - y));
    den = std::max(den, std::abs(y));
  }
  return num / den;
}

}  // namespace moe::testing
