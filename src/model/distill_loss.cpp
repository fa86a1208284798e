// The distillation loss and its logits gradient (include/moe/model/distill_loss.h).
//
// Each row is independent: threads split rows. The cross-entropy part repeats nn::cross_entropy's
// arithmetic step for step (same helpers, same order), so with A = 0 the gradient is bit-identical to
// it; the KD part is computed in double from the row's logits before the gradient overwrites them.
#include "moe/model/distill_loss.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "model/nn_math.h"
#include "moe/core/error.h"
#include "moe/core/parallel.h"

namespace moe::nn {

namespace {

// T² · KL(softmax(t/T) ‖ softmax(z/T)) of one row; when grad is non-null it receives
// coef · (softmax(z/T) − softmax(t/T)) (V). es and et are scratch (V): the student's and the teacher's
// logits over T, then their exp(· − max); d receives log p − log q up to a row constant. Two exps per
// element, in T (vectorised for f32), with the sums and the KL accumulated in double.
template <typename T, typename U>
double kd_row(const T* z, const U* t, int64_t V, double temp, double coef, std::vector<T>& es,
              std::vector<T>& et, std::vector<double>& d, double* grad) {
  const T inv = static_cast<T>(1.0 / temp);
  for (int64_t j = 0; j < V; ++j) es[j] = z[j] * inv, et[j] = static_cast<T>(t[j]) * inv;  // z/T, t/T
  const T ms = detail::row_max(es.data(), V), mt = detail::row_max(et.data(), V);
  // log p_j − log q_j = (t_j/T − mt − log st) − (z_j/T − ms − log ss) = d_j + log ss − log st, with d
  // taken before the exps overwrite es and et.
  double kl = 0;
  for (int64_t j = 0; j < V; ++j)
    d[j] = (static_cast<double>(et[j]) - static_cast<double>(mt)) -
           (static_cast<double>(es[j]) - static_cast<double>(ms));
  detail::exp_shifted(es.data(), V, ms);
  detail::exp_shifted(et.data(), V, mt);
  const double ss = detail::row_sum(es.data(), V), st = detail::row_sum(et.data(), V);
  const double shift = std::log(ss) - std::log(st);  // log p − log q = d + shift
  const double inv_ss = 1.0 / ss, inv_st = 1.0 / st;
  for (int64_t j = 0; j < V; ++j) {
    const double p = static_cast<double>(et[j]) * inv_st;
    kl += p * (d[j] + shift);
    if (grad) grad[j] = coef * (static_cast<double>(es[j]) * inv_ss - p);
  }
  return temp * temp * kl;
}

template <typename T, typename U>
DistillResult run(const DistillArgs& a, const T* logits, const U* teacher, const int32_t* targets,
                  T* dlogits) {
  const int64_t n = a.n, V = a.V;
  const double A = a.kd_weight, temp = a.temperature;
  const double ce_scale = a.grad_scale * (1.0 - A);  // the CE part (== grad_scale when A = 0)
  const double kd_coef = a.grad_scale * A * temp;    // the KD part
  const bool kd_grad = dlogits != nullptr && teacher != nullptr && A > 0;
  std::vector<double> row_ce(static_cast<size_t>(n), 0.0), row_kd(static_cast<size_t>(n), 0.0);
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(1, V));
  parallel_for(n, grain, [&](int64_t r0, int64_t r1) {
    std::vector<T> scratch(dlogits ? 0 : static_cast<size_t>(V));            // (V) when there is no dlogits
    std::vector<T> es(teacher ? static_cast<size_t>(V) : 0), et(es.size());  // (V)
    std::vector<double> d(es.size());                                        // (V)
    std::vector<double> g(kd_grad ? static_cast<size_t>(V) : 0);             // (V) KD gradient
    for (int64_t r = r0; r < r1; ++r) {
      const T* xr = logits + r * V;                 // (V)
      T* gr = dlogits ? dlogits + r * V : nullptr;  // (V), may be xr
      const int32_t t = targets[r];
      if (t < 0) {
        if (gr) std::fill(gr, gr + V, T(0));
        continue;
      }
      // The KD term first: it reads xr, which the CE gradient below may overwrite.
      if (teacher)
        row_kd[static_cast<size_t>(r)] =
            kd_row(xr, teacher + r * V, V, temp, kd_coef, es, et, d, kd_grad ? g.data() : nullptr);
      // Cross-entropy, as nn::cross_entropy computes it.
      const T m = detail::row_max(xr, V);
      const double x_t = static_cast<double>(xr[t]);
      T* e = gr ? gr : scratch.data();  // (V) exp(x − m)
      if (e != xr) std::copy(xr, xr + V, e);
      detail::exp_shifted(e, V, m);
      const double sum = detail::row_sum(e, V);
      const double lse = static_cast<double>(m) + std::log(sum);
      row_ce[static_cast<size_t>(r)] = lse - x_t;
      if (gr) {
        const T f = static_cast<T>(ce_scale / sum);
        for (int64_t j = 0; j < V; ++j) gr[j] *= f;
        gr[t] -= static_cast<T>(ce_scale);
        if (kd_grad)
          for (int64_t j = 0; j < V; ++j) gr[j] += static_cast<T>(g[j]);
      }
    }
  });
  DistillResult res;
  for (int64_t r = 0; r < n; ++r) {
    if (targets[r] < 0) continue;
    res.ce_sum += row_ce[static_cast<size_t>(r)];
    res.kd_sum += row_kd[static_cast<size_t>(r)];
    ++res.count;
  }
  return res;
}

}  // namespace

template <typename T>
DistillResult distill_cross_entropy(const DistillArgs& a, const T* logits, const Tensor* teacher,
                                    const int32_t* targets, T* dlogits) {
  const char* op = "distill_cross_entropy";
  MOE_CHECK(a.n >= 0, op, ": n must be >= 0, got ", a.n);
  MOE_CHECK(a.V >= 1, op, ": vocabulary size V must be >= 1, got ", a.V);
  MOE_CHECK(std::isfinite(a.kd_weight) && a.kd_weight >= 0 && a.kd_weight <= 1, op,
            ": the KD weight must be in [0, 1], got ", a.kd_weight);
  MOE_CHECK(std::isfinite(a.temperature) && a.temperature > 0, op, ": the temperature must be > 0, got ",
            a.temperature);
  MOE_CHECK(teacher != nullptr || a.kd_weight == 0, op, ": a KD weight of ", a.kd_weight,
            " needs the teacher's logits");
  if (teacher) {
    MOE_CHECK(teacher->dtype() == DType::F32 || teacher->dtype() == DType::F64, op,
              ": the teacher's logits must be f32 or f64, got ", dtype_name(teacher->dtype()));
    MOE_CHECK(teacher->shape() == Shape({a.n, a.V}), op, ": the teacher's logits have shape ",
              shape_str(teacher->shape()), ", expected (", a.n, ", ", a.V,
              ") (is the teacher's vocabulary the student's?)");
  }
  if (a.n == 0) return {};
  MOE_CHECK(logits != nullptr && targets != nullptr, op, ": logits or targets is null");
  for (int64_t r = 0; r < a.n; ++r)
    MOE_CHECK(targets[r] < a.V, op, ": targets[", r, "] = ", targets[r], " is out of range for V = ", a.V);
  if (teacher == nullptr) return run<T, T>(a, logits, static_cast<const T*>(nullptr), targets, dlogits);
  if (teacher->dtype() == DType::F64)
    return run<T, double>(a, logits, teacher->data<double>(), targets, dlogits);
  return run<T, float>(a, logits, teacher->data<float>(), targets, dlogits);
}

template DistillResult distill_cross_entropy<float>(const DistillArgs&, const float*, const Tensor*,
                                                    const int32_t*, float*);
template DistillResult distill_cross_entropy<double>(const DistillArgs&, const double*, const Tensor*,
                                                     const int32_t*, double*);

}  // namespace moe::nn
