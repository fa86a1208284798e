// Optimizer, gradient utilities and the learning-rate schedule of the trainer.
//
// Parameters and gradients are f32, contiguous, of equal shapes, passed as a list of ParamRef (the
// trainer owns the tensors; the optimizer keeps only its own state, keyed by parameter name). Every
// function validates the list first and throws moe::Error naming the parameter and the bad value.
//
// Determinism: AdamW, scale_grads and zero_grads are element-wise (each element has one owner), and
// grad_norm sums fixed-size chunks in double and adds the chunk sums in a fixed order, so every
// result is bit-identical for any thread count (moe::set_num_threads).
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "moe/core/tensor.h"

namespace moe::train {

// One trainable tensor and its gradient. Not owning: both must outlive the call.
struct ParamRef {
  std::string name;         // unique, non-empty; names the optimizer state ("adamw.m.<name>")
  Tensor* param = nullptr;  // f32, contiguous
  Tensor* grad = nullptr;   // f32, contiguous, same shape as *param
  bool decay = true;        // apply weight decay (usually false for norms, biases, router biases)
};

// Throws moe::Error when a name is empty or repeated, a pointer is null, a tensor is undefined, not
// f32 or not contiguous, or a gradient's shape differs from its parameter's.
void validate_params(const std::vector<ParamRef>& params);

// ---------------------------------------------------------------------------------------------
// AdamW with decoupled weight decay, as torch.optim.AdamW (amsgrad off, maximize off). Step t (from 1):
//   p ← p · (1 − lr·wd)                       (only where ParamRef::decay)
//   m ← β1·m + (1 − β1)·g
//   v ← β2·v + (1 − β2)·g²
//   p ← p − (lr / (1 − β1^t)) · m / (sqrt(v) / sqrt(1 − β2^t) + eps)
// m and v are f32 tensors (rounded once per step, as in PyTorch with f32 parameters); each element is
// updated in double from them and rounded to f32 once. The state of a parameter (m = v = 0) is
// created at its first step. One step count t is shared by all parameters: a parameter first seen
// at a later step (unfrozen after some steps) uses the global t for its bias correction, where
// PyTorch would count its own steps from 1. Parameters not in the list of a step keep their state
// unchanged. step() does not look for NaN in the gradients: check grad_norm() first.
struct AdamWConfig {
  double beta1 = 0.9;
  double beta2 = 0.95;
  double eps = 1e-8;
  double weight_decay = 0.1;
};

class AdamW {
 public:
  // Throws moe::Error unless 0 <= beta1, beta2 < 1, eps >= 0 and weight_decay >= 0 (all finite).
  explicit AdamW(AdamWConfig cfg = {});

  // One update of every parameter in `params` with learning rate lr (finite, >= 0).
  void step(std::vector<ParamRef>& params, double lr);

  int64_t step_count() const { return t_; }  // steps taken (0 before the first)
  const AdamWConfig& config() const { return cfg_; }
  bool has_state(const std::string& param) const { return state_.count(param) != 0; }

  // The state as tensors (copies): "adamw.step" (I64 scalar, shape ()), and for each parameter with
  // state "adamw.m.<name>" and "adamw.v.<name>" (f32, the parameter's shape). Written with
  // moe::save_safetensors and read back, it restores the optimizer bit-exactly.
  std::map<std::string, Tensor> export_state() const;

  // Replaces the state with `state` (copied), validated against `params`: "adamw.step" must be an
  // integer scalar >= 0; when it is > 0 every parameter needs "adamw.m.<name>" and "adamw.v.<name>"
  // (f32, its shape); every "adamw.m." / "adamw.v." entry must belong to a parameter of `params`,
  // and any other "adamw." name is rejected. Entries without the "adamw." prefix are ignored, so the
  // state may share a file with other tensors. On error the optimizer is left unchanged.
  void import_state(const std::map<std::string, Tensor>& state, const std::vector<ParamRef>& params);

 private:
  struct Moments {
    Tensor m;  // f32, the parameter's shape
    Tensor v;
  };
  AdamWConfig cfg_;
  int64_t t_ = 0;
  std::map<std::string, Moments> state_;
};

// ---------------------------------------------------------------------------------------------
// Gradient utilities.

// Global L2 norm of all gradients, sqrt(Σ g²), in double: each parameter is cut into chunks of a
// fixed number of elements, each chunk's sum of squares is taken in double, and the chunk sums are
// added in (parameter, chunk) order, so the result does not depend on the thread count. Squares of
// f32 values cannot overflow a double, so the result is finite exactly when every gradient element
// is: a NaN gives NaN and an infinity gives +inf. 0 for an empty list.
double grad_norm(const std::vector<ParamRef>& params);

// True when every gradient element is finite.
bool grads_finite(const std::vector<ParamRef>& params);

// g ← g · s for every gradient (computed in double, rounded to f32). s must be finite.
void scale_grads(std::vector<ParamRef>& params, double s);

// g ← 0 for every gradient.
void zero_grads(std::vector<ParamRef>& params);

// Clips the global norm: when grad_norm() > max_norm, scales every gradient by max_norm / norm (so
// the clipped norm is max_norm up to rounding); returns the norm before clipping. max_norm must be
// finite and > 0. A non-finite norm leaves the gradients untouched and is returned as is (the caller
// should skip the step). torch.nn.utils.clip_grad_norm_ scales by max_norm / (norm + 1e-6) whenever
// that is below 1: the two differ by a relative 1e-6 / norm in the clipped gradients.
double clip_grad_norm(std::vector<ParamRef>& params, double max_norm);
// The same with the norm already known (e.g. a norm over gradients sharded across ranks): scales
// by max_norm / norm when norm > max_norm (and is finite); returns norm.
double clip_grad_norm(std::vector<ParamRef>& params, double max_norm, double norm);

// ---------------------------------------------------------------------------------------------
// Learning rate: linear warmup, then cosine decay to min_lr. `step` is the 0-based index of the
// optimizer step about to be taken:
//   step < warmup_steps:               max_lr · (step + 1) / warmup_steps
//   warmup_steps <= step < total_steps: min_lr + (max_lr − min_lr) · (1 + cos(π·p)) / 2,
//                                       p = (step − warmup_steps) / (total_steps − warmup_steps)
//   step >= total_steps:               min_lr
// So lr(warmup_steps) = max_lr and the cosine reaches min_lr at total_steps. at() validates: finite
// 0 <= min_lr <= max_lr, 0 <= warmup_steps <= total_steps, total_steps >= 1, step >= 0.
struct LrSchedule {
  double max_lr = 0.0;
  double min_lr = 0.0;
  int64_t warmup_steps = 0;
  int64_t total_steps = 0;

  void validate() const;  // throws moe::Error naming the bad field
  double at(int64_t step) const;
};

}  // namespace moe::train
