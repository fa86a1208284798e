// AdamW, gradient norm / clipping / scaling and the learning-rate schedule (see moe/train/optim.h).
#include "moe/train/optim.h"

#include <algorithm>
#include <cmath>
#include <numbers>
#include <set>
#include <utility>

#include "moe/core/parallel.h"

namespace moe::train {

namespace {

// Elements per parallel_for grain of the element-wise loops.
constexpr int64_t kGrain = int64_t{1} << 14;
// Elements per partial sum of grad_norm. Fixed (not derived from the thread count) so that the
// summation order, hence the result, is the same for any number of threads.
constexpr int64_t kNormChunk = int64_t{1} << 14;

const std::string kStepName = "adamw.step";
const std::string kMomentPrefix = "adamw.m.";
const std::string kVariancePrefix = "adamw.v.";

bool starts_with(const std::string& s, const std::string& prefix) { return s.rfind(prefix, 0) == 0; }

void check_f32_contiguous(const Tensor& t, const std::string& what) {
  check_defined(t, what);
  MOE_CHECK(t.dtype() == DType::F32, what, ": expected dtype f32, got ", dtype_name(t.dtype()));
  MOE_CHECK(t.is_contiguous(), what, ": expected a contiguous tensor, got shape ", shape_str(t.shape()),
            " with strides ", shape_str(t.strides()));
}

// One slice [begin, end) of one parameter's gradient: the unit of the deterministic reductions.
struct Chunk {
  const float* g = nullptr;  // (end - begin) elements
  int64_t n = 0;
};

std::vector<Chunk> grad_chunks(const std::vector<ParamRef>& params) {
  std::vector<Chunk> chunks;
  for (const ParamRef& p : params) {
    const float* g = p.grad->data<float>();  // (numel)
    const int64_t n = p.grad->numel();
    for (int64_t b = 0; b < n; b += kNormChunk) chunks.push_back({g + b, std::min(kNormChunk, n - b)});
  }
  return chunks;
}

// Σ g² of one chunk in double, with 8 interleaved accumulators (a fixed order, so still
// deterministic) to keep the loop vectorisable.
double chunk_sum_squares(const Chunk& c) {
  double acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 8 <= c.n; i += 8)
    for (int j = 0; j < 8; ++j) {
      const double x = c.g[i + j];
      acc[j] += x * x;
    }
  for (; i < c.n; ++i) {
    const double x = c.g[i];
    acc[i % 8] += x * x;
  }
  return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

// Applies fn(g, n) to every gradient, split into element ranges over the threads.
template <typename F>
void for_each_grad_range(std::vector<ParamRef>& params, F&& fn) {
  for (ParamRef& p : params) {
    float* g = p.grad->data<float>();  // (numel)
    parallel_for(p.grad->numel(), kGrain, [&](int64_t b, int64_t e) { fn(g + b, e - b); });
  }
}

void check_unit_interval(double v, const char* field) {
  MOE_CHECK(std::isfinite(v) && v >= 0.0 && v < 1.0, "AdamW: ", field, " must be in [0, 1), got ", v);
}

// The integer value of the "adamw.step" tensor.
int64_t step_value(const Tensor& t) {
  MOE_CHECK(t.defined(), "optimizer state '", kStepName, "': undefined tensor");
  MOE_CHECK(t.numel() == 1 && t.dim() <= 1, "optimizer state '", kStepName,
            "': expected a scalar, got shape ", shape_str(t.shape()));
  int64_t v = 0;
  if (t.dtype() == DType::I64) {
    v = *t.contiguous().data<int64_t>();
  } else if (t.dtype() == DType::I32) {
    v = *t.contiguous().data<int32_t>();
  } else {
    MOE_CHECK(false, "optimizer state '", kStepName, "': expected dtype i64 (or i32), got ",
              dtype_name(t.dtype()));
  }
  MOE_CHECK(v >= 0, "optimizer state '", kStepName, "': expected a step count >= 0, got ", v);
  return v;
}

}  // namespace

void validate_params(const std::vector<ParamRef>& params) {
  std::set<std::string> seen;
  for (size_t i = 0; i < params.size(); ++i) {
    const ParamRef& p = params[i];
    MOE_CHECK(!p.name.empty(), "parameter #", i, ": empty name");
    MOE_CHECK(seen.insert(p.name).second, "parameter '", p.name, "' appears twice in the parameter list");
    MOE_CHECK(p.param != nullptr, "parameter '", p.name, "': null param pointer");
    MOE_CHECK(p.grad != nullptr, "parameter '", p.name, "': null grad pointer");
    check_f32_contiguous(*p.param, "parameter '" + p.name + "'");
    check_f32_contiguous(*p.grad, "gradient of parameter '" + p.name + "'");
    MOE_CHECK(p.grad->shape() == p.param->shape(), "gradient of parameter '", p.name, "': expected shape ",
              shape_str(p.param->shape()), " (the parameter's), got ", shape_str(p.grad->shape()));
  }
}

// ---------------------------------------------------------------------------------------------
// AdamW

AdamW::AdamW(AdamWConfig cfg) : cfg_(cfg) {
  check_unit_interval(cfg_.beta1, "beta1");
  check_unit_interval(cfg_.beta2, "beta2");
  MOE_CHECK(std::isfinite(cfg_.eps) && cfg_.eps >= 0.0, "AdamW: eps must be finite and >= 0, got ", cfg_.eps);
  MOE_CHECK(std::isfinite(cfg_.weight_decay) && cfg_.weight_decay >= 0.0,
            "AdamW: weight_decay must be finite and >= 0, got ", cfg_.weight_decay);
}

void AdamW::step(std::vector<ParamRef>& params, double lr) {
  MOE_CHECK(std::isfinite(lr) && lr >= 0.0, "AdamW: learning rate must be finite and >= 0, got ", lr);
  validate_params(params);
  for (const ParamRef& p : params) {  // a parameter whose shape changed since its state was made
    auto it = state_.find(p.name);
    if (it != state_.end())
      MOE_CHECK(it->second.m.shape() == p.param->shape(), "AdamW: parameter '", p.name, "' has shape ",
                shape_str(p.param->shape()), " but its optimizer state has shape ",
                shape_str(it->second.m.shape()));
  }

  const int64_t t = ++t_;
  const double b1 = cfg_.beta1, b2 = cfg_.beta2, eps = cfg_.eps;
  const double bias_correction1 = 1.0 - std::pow(b1, static_cast<double>(t));
  const double bias_correction2_sqrt = std::sqrt(1.0 - std::pow(b2, static_cast<double>(t)));
  const double step_size = lr / bias_correction1;

  for (ParamRef& p : params) {
    auto it = state_.find(p.name);
    if (it == state_.end()) {
      Moments fresh{Tensor::zeros(p.param->shape(), DType::F32, kMomentPrefix + p.name),
                    Tensor::zeros(p.param->shape(), DType::F32, kVariancePrefix + p.name)};
      it = state_.emplace(p.name, std::move(fresh)).first;
    }
    const double shrink = p.decay ? 1.0 - lr * cfg_.weight_decay : 1.0;
    float* w = p.param->data<float>();       // (numel)
    const float* g = p.grad->data<float>();  // (numel)
    float* m = it->second.m.data<float>();   // (numel)
    float* v = it->second.v.data<float>();   // (numel)
    parallel_for(p.param->numel(), kGrain, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) {
        const double gi = g[i];
        const float mi = static_cast<float>(b1 * m[i] + (1.0 - b1) * gi);
        const float vi = static_cast<float>(b2 * v[i] + (1.0 - b2) * gi * gi);
        const double denom = std::sqrt(static_cast<double>(vi)) / bias_correction2_sqrt + eps;
        const double decayed = shrink * w[i];
        m[i] = mi;
        v[i] = vi;
        w[i] = static_cast<float>(decayed - step_size * mi / denom);
      }
    });
  }
}

std::map<std::string, Tensor> AdamW::export_state() const {
  std::map<std::string, Tensor> out;
  Tensor step = Tensor::empty({}, DType::I64, kStepName);
  *step.data<int64_t>() = t_;
  out.emplace(kStepName, std::move(step));
  for (const auto& [name, s] : state_) {
    out.emplace(kMomentPrefix + name, s.m.clone().set_name(kMomentPrefix + name));
    out.emplace(kVariancePrefix + name, s.v.clone().set_name(kVariancePrefix + name));
  }
  return out;
}

void AdamW::import_state(const std::map<std::string, Tensor>& state, const std::vector<ParamRef>& params) {
  validate_params(params);
  auto step_it = state.find(kStepName);
  MOE_CHECK(step_it != state.end(), "optimizer state: missing '", kStepName, "'");
  const int64_t t = step_value(step_it->second);

  std::map<std::string, const ParamRef*> by_name;
  for (const ParamRef& p : params) by_name.emplace(p.name, &p);
  std::map<std::string, Moments> loaded;
  for (const auto& [key, tensor] : state) {
    if (!starts_with(key, "adamw.") || key == kStepName) continue;
    const bool is_m = starts_with(key, kMomentPrefix);
    MOE_CHECK(is_m || starts_with(key, kVariancePrefix), "optimizer state '", key,
              "': unknown name (expected '", kStepName, "', '", kMomentPrefix, "<param>' or '",
              kVariancePrefix, "<param>')");
    const std::string pname = key.substr(kMomentPrefix.size());  // both prefixes have the same length
    auto p = by_name.find(pname);
    MOE_CHECK(p != by_name.end(), "optimizer state '", key, "': no parameter named '", pname, "' among the ",
              params.size(), " given");
    MOE_CHECK(t > 0, "optimizer state '", key, "': present although '", kStepName, "' is 0");
    check_defined(tensor, "optimizer state '" + key + "'");
    MOE_CHECK(tensor.dtype() == DType::F32, "optimizer state '", key, "': expected dtype f32, got ",
              dtype_name(tensor.dtype()));
    MOE_CHECK(tensor.shape() == p->second->param->shape(), "optimizer state '", key, "': expected shape ",
              shape_str(p->second->param->shape()), " (parameter '", pname, "'), got ",
              shape_str(tensor.shape()));
    Tensor copy = tensor.clone().set_name(key);  // contiguous, owned by the optimizer
    (is_m ? loaded[pname].m : loaded[pname].v) = std::move(copy);
  }
  if (t > 0) {
    for (const ParamRef& p : params) {
      auto it = loaded.find(p.name);
      MOE_CHECK(it != loaded.end() && it->second.m.defined(), "optimizer state: missing '", kMomentPrefix,
                p.name, "' (step ", t, ")");
      MOE_CHECK(it->second.v.defined(), "optimizer state: missing '", kVariancePrefix, p.name, "' (step ", t,
                ")");
    }
  }
  t_ = t;
  state_ = std::move(loaded);
}

// ---------------------------------------------------------------------------------------------
// Gradient utilities

double grad_norm(const std::vector<ParamRef>& params) {
  validate_params(params);
  const std::vector<Chunk> chunks = grad_chunks(params);
  std::vector<double> partial(chunks.size(), 0.0);  // (chunks) Σ g² per chunk
  parallel_for(static_cast<int64_t>(chunks.size()), 1, [&](int64_t b, int64_t e) {
    for (int64_t c = b; c < e; ++c) partial[c] = chunk_sum_squares(chunks[c]);
  });
  double total = 0.0;
  for (double s : partial) total += s;  // chunk order: independent of the thread count
  return std::sqrt(total);
}

bool grads_finite(const std::vector<ParamRef>& params) {
  validate_params(params);
  const std::vector<Chunk> chunks = grad_chunks(params);
  std::vector<char> ok(chunks.size(), 1);  // (chunks)
  parallel_for(static_cast<int64_t>(chunks.size()), 1, [&](int64_t b, int64_t e) {
    for (int64_t c = b; c < e; ++c) {
      bool all = true;
      for (int64_t i = 0; i < chunks[c].n; ++i) all &= std::isfinite(chunks[c].g[i]);
      ok[c] = all;
    }
  });
  for (char f : ok)
    if (!f) return false;
  return true;
}

void scale_grads(std::vector<ParamRef>& params, double s) {
  MOE_CHECK(std::isfinite(s), "scale_grads: scale must be finite, got ", s);
  validate_params(params);
  for_each_grad_range(params, [s](float* g, int64_t n) {
    for (int64_t i = 0; i < n; ++i) g[i] = static_cast<float>(s * g[i]);
  });
}

void zero_grads(std::vector<ParamRef>& params) {
  validate_params(params);
  for_each_grad_range(params, [](float* g, int64_t n) {
    for (int64_t i = 0; i < n; ++i) g[i] = 0.0f;
  });
}

double clip_grad_norm(std::vector<ParamRef>& params, double max_norm) {
  MOE_CHECK(std::isfinite(max_norm) && max_norm > 0.0,
            "clip_grad_norm: max_norm must be finite and > 0, got ", max_norm);
  return clip_grad_norm(params, max_norm, grad_norm(params));
}

double clip_grad_norm(std::vector<ParamRef>& params, double max_norm, double norm) {
  MOE_CHECK(std::isfinite(max_norm) && max_norm > 0.0,
            "clip_grad_norm: max_norm must be finite and > 0, got ", max_norm);
  if (std::isfinite(norm) && norm > max_norm) scale_grads(params, max_norm / norm);
  return norm;
}

// ---------------------------------------------------------------------------------------------
// LrSchedule

void LrSchedule::validate() const {
  MOE_CHECK(std::isfinite(max_lr) && max_lr >= 0.0, "LrSchedule: max_lr must be finite and >= 0, got ",
            max_lr);
  MOE_CHECK(std::isfinite(min_lr) && min_lr >= 0.0 && min_lr <= max_lr,
            "LrSchedule: min_lr must be in [0, max_lr = ", max_lr, "], got ", min_lr);
  MOE_CHECK(total_steps >= 1, "LrSchedule: total_steps must be >= 1, got ", total_steps);
  MOE_CHECK(warmup_steps >= 0 && warmup_steps <= total_steps, "LrSchedule: warmup_steps must be in [0, ",
            "total_steps = ", total_steps, "], got ", warmup_steps);
}

double LrSchedule::at(int64_t step) const {
  validate();
  MOE_CHECK(step >= 0, "LrSchedule: step must be >= 0, got ", step);
  if (step < warmup_steps) return max_lr * static_cast<double>(step + 1) / static_cast<double>(warmup_steps);
  if (step >= total_steps) return min_lr;
  const double progress =
      static_cast<double>(step - warmup_steps) / static_cast<double>(total_steps - warmup_steps);
  return min_lr + (max_lr - min_lr) * 0.5 * (1.0 + std::cos(std::numbers::pi * progress));
}

}  // namespace moe::train
