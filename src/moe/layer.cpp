// MoELayer: construction, parameters and the public API. The passes are in layer_forward.cpp and
// layer_backward.cpp, the expert strategies in experts_*.cpp.
#include "moe/moe/layer.h"

#include <algorithm>
#include <cmath>
#include <initializer_list>
#include <vector>

#include "moe/core/error.h"
#include "moe/core/rng.h"
#include "moe/kernels/weights.h"
#include "moe/layer_internal.h"
#include "moe/moe/balance.h"
#include "moe/moe/expert_parallel.h"

namespace moe {

namespace {

bool is_swiglu(const MoEConfig& c) { return c.activation == kernels::Activation::SwiGLU; }

}  // namespace

MoELayer::MoELayer(MoEConfig cfg, DType dtype, kernels::Backend backend, bool external_experts,
                   ExpertParallel ep)
    : MoELayer(std::move(cfg), dtype, backend, external_experts, std::move(ep), true) {}

MoELayer::MoELayer(MoEConfig cfg, DType dtype, kernels::Backend backend, bool external_experts,
                   ExpertParallel ep, bool allocate_experts)
    : cfg_(std::move(cfg)),
      dtype_(dtype),
      backend_(backend),
      external_experts_(external_experts),
      ep_(std::move(ep)) {
  cfg_.validate();
  MOE_CHECK(dtype == DType::F32 || dtype == DType::F64, "MoE layer: dtype must be f32 or f64, got ",
            dtype_name(dtype));
  const int64_t E = cfg_.n_experts, d = cfg_.d_model, F = cfg_.d_ff, Fs = cfg_.shared_width();
  local_experts_ = E;
  MOE_CHECK(ep_.chunks >= 1, "MoE layer: expert parallelism needs chunks >= 1, got ", ep_.chunks);
  MOE_CHECK(!ep_.replicated_tokens || ep_.chunks == 1,
            "MoE layer: expert parallelism with replicated tokens runs one chunk (it exchanges no rows to "
            "overlap), got chunks = ",
            ep_.chunks);
  if (ep_.comm) {
    const ExpertShard sh = expert_shard(E, *ep_.comm);
    first_expert_ = sh.first;
    local_experts_ = sh.count;
  }
  const int64_t El = local_experts_;
  params_.router_w = Tensor::zeros({E, d}, dtype, "router_w");
  params_.router_bias = Tensor::zeros({E}, dtype, "router_bias");
  masters_released_ = !allocate_experts;
  // Without allocation the expert tensors stay undefined, named for errors.
  auto expert = [&](const Shape& shape, const char* name) {
    return allocate_experts ? Tensor::zeros(shape, dtype, name) : Tensor().set_name(name);
  };
  if (!external_experts_) {
    if (is_swiglu(cfg_)) params_.w_gate = expert({El, F, d}, "w_gate");
    params_.w_up = expert({El, F, d}, "w_up");
    params_.w_down = expert({El, d, F}, "w_down");
  }
  if (Fs > 0) {
    if (is_swiglu(cfg_)) params_.shared_w_gate = expert({Fs, d}, "shared_w_gate");
    params_.shared_w_up = expert({Fs, d}, "shared_w_up");
    params_.shared_w_down = expert({d, Fs}, "shared_w_down");
    if (cfg_.shared_gate) params_.shared_gate_w = Tensor::zeros({1, d}, dtype, "shared_gate_w");
  }
}

std::unique_ptr<MoELayer> MoELayer::without_expert_weights(MoEConfig cfg, kernels::Backend backend,
                                                           bool external_experts, ExpertParallel ep) {
  return std::unique_ptr<MoELayer>(
      new MoELayer(std::move(cfg), DType::F32, backend, external_experts, std::move(ep), false));
}

void MoELayer::check_masters(const char* what) const {
  MOE_CHECK(!masters_released_, what,
            ": this MoE layer's f32 expert weights were released once packed to bf16 (a model loaded for "
            "inference only holds each weight once); load the model again (model::load_pretrained) for "
            "training, saving or another precision");
}

void MoELayer::release_expert_masters() {
  if (masters_released_) return;
  MOE_CHECK(dtype_ == DType::F32 && (external_experts_ || bf16_.w_in.defined()) &&
                (cfg_.shared_width() == 0 || bf16_.shared_w_in.defined()),
            "MoE layer: release_expert_masters needs the bf16 expert weights (set_bf16_expert_weights(true)) "
            "first");
  for (Tensor* t : {&params_.w_gate, &params_.w_up, &params_.w_down, &params_.shared_w_gate,
                    &params_.shared_w_up, &params_.shared_w_down})
    if (t->defined()) *t = Tensor().set_name(t->name());
  bf16_compute_ = false;
  bf16_routed_ = Bf16PackedFfn(), bf16_shared_ = Bf16PackedFfn();
  masters_released_ = true;
}

void MoELayer::set_packed_experts(Bf16ExpertWeights w) {
  MOE_CHECK(masters_released_ && !has_bf16_expert_weights(),
            "MoE layer: set_packed_experts needs a layer made by without_expert_weights() whose experts are "
            "not set yet");
  const int64_t d = cfg_.d_model, F = cfg_.d_ff, Fs = cfg_.shared_width();
  const int64_t in = is_swiglu(cfg_) ? 2 : 1;
  auto check = [&](const Tensor& t, int64_t E, int64_t N, int64_t K, const char* name) {
    check_shape(t, {E, kernels::packed_bf16_bytes(N, K) / 2}, name);
    t.check_dtype(DType::BF16, name);
  };
  if (!external_experts_) {
    check(w.w_in, local_experts_, in * F, d, "packed w_in");
    check(w.w_down, local_experts_, d, F, "packed w_down");
  } else {
    MOE_CHECK(!w.w_in.defined() && !w.w_down.defined(),
              "MoE layer: packed routed experts given to a layer whose experts are external");
  }
  if (Fs > 0) {
    check(w.shared_w_in, 1, in * Fs, d, "packed shared_w_in");
    check(w.shared_w_down, 1, d, Fs, "packed shared_w_down");
  }
  bf16_ = std::move(w);
}

void MoELayer::init_params(uint64_t seed) {
  check_masters("MoELayer::init_params");
  const Rng rng(seed);
  const double d = static_cast<double>(cfg_.d_model), F = static_cast<double>(cfg_.d_ff);
  const double Fs = static_cast<double>(std::max<int64_t>(cfg_.shared_width(), 1));
  auto init = [&](Tensor& t, uint64_t stream, double fan_in, uint64_t offset = 0) {
    if (t.defined()) rng.fork(stream).fill_normal(t, 0.0, 1.0 / std::sqrt(fan_in), offset);
  };
  // Expert tensors: this rank's slice of the (E, ., .) tensor a single process would draw.
  const uint64_t expert_offset = static_cast<uint64_t>(first_expert_ * cfg_.d_model * cfg_.d_ff);
  init(params_.router_w, 1, d);
  init(params_.w_gate, 2, d, expert_offset);
  init(params_.w_up, 3, d, expert_offset);
  init(params_.w_down, 4, F, expert_offset);
  init(params_.shared_w_gate, 5, d);
  init(params_.shared_w_up, 6, d);
  init(params_.shared_w_down, 7, Fs);
  init(params_.shared_gate_w, 8, d);
  params_.router_bias.fill(0.0);
}

void MoELayer::check_params() const {
  const int64_t E = cfg_.n_experts, El = local_experts_, d = cfg_.d_model, F = cfg_.d_ff,
                Fs = cfg_.shared_width();
  auto check = [&](const Tensor& t, const Shape& s, const char* name) {
    check_shape(t, s, name);
    t.check_dtype(dtype_, name);
    MOE_CHECK(t.is_contiguous(), "parameter '", name, "' must be contiguous");
  };
  check(params_.router_w, {E, d}, "router_w");
  check(params_.router_bias, {E}, "router_bias");
  if (masters_released_) {  // the experts are the bf16-packed ones (set_packed_experts checked them)
    MOE_CHECK((external_experts_ || bf16_.w_in.defined()) && (Fs == 0 || bf16_.shared_w_in.defined()),
              "MoE layer: its expert weights are not set (set_packed_experts)");
    if (cfg_.shared_gate && Fs > 0) check(params_.shared_gate_w, {1, d}, "shared_gate_w");
    return;
  }
  if (!external_experts_) {
    if (is_swiglu(cfg_)) check(params_.w_gate, {El, F, d}, "w_gate");
    check(params_.w_up, {El, F, d}, "w_up");
    check(params_.w_down, {El, d, F}, "w_down");
  }
  if (Fs > 0) {
    if (is_swiglu(cfg_)) check(params_.shared_w_gate, {Fs, d}, "shared_w_gate");
    check(params_.shared_w_up, {Fs, d}, "shared_w_up");
    check(params_.shared_w_down, {d, Fs}, "shared_w_down");
    if (cfg_.shared_gate) check(params_.shared_gate_w, {1, d}, "shared_gate_w");
  }
}

MoEForward MoELayer::forward(const Tensor& x, const ForwardOptions& opt) const {
  check_params();
  if (dtype_ == DType::F64) return detail::layer_forward<double>(*this, x, opt);
  return detail::layer_forward<float>(*this, x, opt);
}

MoEGrads MoELayer::backward(const MoEForward& fwd, const Tensor& dy, double aux_scale) const {
  MoEGrads g;
  backward_into(fwd, dy, g, aux_scale);
  return g;
}

void MoELayer::backward_into(const MoEForward& fwd, const Tensor& dy, MoEGrads& acc, double aux_scale) const {
  check_masters("MoELayer::backward");
  check_params();
  MOE_CHECK(std::isfinite(aux_scale), "MoELayer::backward: aux_scale must be finite, got ", aux_scale);
  if (dtype_ == DType::F64) return detail::layer_backward<double>(*this, fwd, dy, aux_scale, acc);
  detail::layer_backward<float>(*this, fwd, dy, aux_scale, acc);
}

namespace {

// n experts' (E = max(n, 1)) f32 matrices, each the rows of `parts` stacked (rows_each rows of `cols`
// per part), packed bf16: op(W) is the stack transposed (N = rows, K = cols), or with trans the stack
// itself (K = rows, N = cols).
// into: a packed tensor of an earlier call to fill again in place when it has the shape (a training
// step refreshes four copies of every expert stack: fresh ones each step cost their page faults).
Tensor pack_stack(std::initializer_list<const Tensor*> parts, int64_t n, int64_t rows_each, int64_t cols,
                  bool trans, const char* what, const Tensor& into = Tensor()) {
  std::vector<const Tensor*> ts;
  for (const Tensor* t : parts)
    if (t->defined()) ts.push_back(t);
  if (ts.empty()) return Tensor();
  const int64_t R = rows_each * static_cast<int64_t>(ts.size()), E = std::max<int64_t>(n, 1);
  const int64_t N = trans ? cols : R, K = trans ? R : cols;
  std::vector<float> w(static_cast<size_t>(R * cols));  // one expert's stack (R, cols)
  const int64_t words = kernels::packed_bf16_bytes(N, K) / 2;
  Tensor out = into.defined() && into.dim() == 2 && into.size(0) == E && into.size(1) == words
                   ? into
                   : Tensor::empty({E, words}, DType::BF16, what);
  for (int64_t e = 0; e < E; ++e) {
    for (size_t i = 0; i < ts.size(); ++i)
      std::copy_n(ts[i]->data<float>() + e * rows_each * cols, rows_each * cols,
                  w.data() + i * rows_each * cols);
    kernels::pack_bf16_weights(
        {.format = kernels::WeightFormat::F32, .N = N, .K = K, .trans = trans, .data = w.data()}, 1,
        static_cast<uint16_t*>(out.raw()) + e * out.size(1), what);
  }
  return out;
}

}  // namespace

void MoELayer::set_bf16_expert_weights(bool on) {
  check_masters("MoELayer::set_bf16_expert_weights");
  bf16_ = Bf16ExpertWeights();
  if (!on) return;
  MOE_CHECK(dtype_ == DType::F32, "bf16 expert weights need an f32 layer, this one is ", dtype_name(dtype_));
  check_params();
  const int64_t d = cfg_.d_model, F = cfg_.d_ff, Fs = cfg_.shared_width(), n = local_experts_;
  if (params_.w_up.defined()) {
    bf16_.w_in = pack_stack({&params_.w_gate, &params_.w_up}, n, F, d, false, "bf16 w_in");
    bf16_.w_down = pack_stack({&params_.w_down}, n, d, F, false, "bf16 w_down");
  }
  if (params_.shared_w_up.defined()) {
    bf16_.shared_w_in =
        pack_stack({&params_.shared_w_gate, &params_.shared_w_up}, 0, Fs, d, false, "bf16 shared_w_in");
    bf16_.shared_w_down = pack_stack({&params_.shared_w_down}, 0, d, Fs, false, "bf16 shared_w_down");
  }
}

void MoELayer::set_bf16_compute(bool on) {
  MOE_CHECK(!on || dtype_ == DType::F32, "bf16 compute needs an f32 layer, this one is ", dtype_name(dtype_));
  if (on) check_masters("MoELayer::set_bf16_compute");
  bf16_compute_ = on;
  if (on) {
    refresh_bf16_compute();
  } else {
    bf16_routed_ = Bf16PackedFfn(), bf16_shared_ = Bf16PackedFfn();
  }
}

void MoELayer::refresh_bf16_compute() {
  if (!bf16_compute_) return;
  check_params();
  const int64_t d = cfg_.d_model;
  auto pack = [&](const Tensor& gate, const Tensor& up, const Tensor& down, int64_t n, int64_t F,
                  const Bf16PackedFfn& old) {
    Bf16PackedFfn p;
    if (!up.defined()) return p;
    p.in_fwd = pack_stack({&gate, &up}, n, F, d, false, "bf16 compute w_in", old.in_fwd);
    p.in_bwd = pack_stack({&gate, &up}, n, F, d, true, "bf16 compute w_in (backward)", old.in_bwd);
    p.down_fwd = pack_stack({&down}, n, d, F, false, "bf16 compute w_down", old.down_fwd);
    p.down_bwd = pack_stack({&down}, n, d, F, true, "bf16 compute w_down (backward)", old.down_bwd);
    return p;
  };
  bf16_routed_ = pack(params_.w_gate, params_.w_up, params_.w_down, local_experts_, cfg_.d_ff, bf16_routed_);
  bf16_shared_ = pack(params_.shared_w_gate, params_.shared_w_up, params_.shared_w_down, 0,
                      cfg_.shared_width(), bf16_shared_);
}

void MoELayer::set_expert_executor(std::shared_ptr<ExpertExecutor> ex) {
  MOE_CHECK(!ex || dtype_ == DType::F32, "an expert executor needs an f32 layer, this one is ",
            dtype_name(dtype_));
  executor_ = std::move(ex);
}

void MoELayer::set_external_experts(bool on) {
  external_experts_ = on;
  if (on) {
    params_.w_gate = Tensor();
    params_.w_up = Tensor();
    params_.w_down = Tensor();
    bf16_.w_in = Tensor();
    bf16_.w_down = Tensor();
  } else {
    const int64_t El = local_experts_, d = cfg_.d_model, F = cfg_.d_ff;
    if (is_swiglu(cfg_)) params_.w_gate = Tensor::zeros({El, F, d}, dtype_, "w_gate");
    params_.w_up = Tensor::zeros({El, F, d}, dtype_, "w_up");
    params_.w_down = Tensor::zeros({El, d, F}, dtype_, "w_down");
  }
}

void MoELayer::update_bias(const MoEStats& stats) {
  MOE_CHECK(static_cast<int64_t>(stats.routed_per_expert.size()) == cfg_.n_experts,
            "update_bias: stats hold ", stats.routed_per_expert.size(), " expert counts, expected ",
            cfg_.n_experts);
  ::moe::update_bias(params_.router_bias, stats.routed_per_expert, cfg_.balance.bias_update_rate);
}

double MoELayer::expert_flops(const MoEStats& stats, int64_t n_tokens) const {
  const double mats = is_swiglu(cfg_) ? 3.0 : 2.0;
  double rows = 0;
  for (int64_t c : stats.tokens_per_expert) rows += static_cast<double>(c);
  const double per_row = 2.0 * static_cast<double>(cfg_.d_model) * mats;
  return rows * per_row * static_cast<double>(cfg_.d_ff) +
         static_cast<double>(n_tokens) * per_row * static_cast<double>(cfg_.shared_width());
}

}  // namespace moe
