// Calibration for expert merging (moe/infer/merge_calibrate.h).
#include "moe/infer/merge_calibrate.h"

#include <memory>

#include "moe/core/error.h"
#include "moe/kernels/ops.h"

namespace moe::infer {

namespace {

// Computes a layer's routed experts from the layer's own f32 weights (the grouped FFN the layer
// would run) and keeps every stride-th token's input row.
class RowRecorder : public ExpertExecutor {
 public:
  RowRecorder(const MoELayer* layer, model::LayerRows* out, int64_t stride)
      : layer_(layer), out_(out), stride_(stride) {}

  void run(const ExpertRows& r) override {
    const int64_t d = r.d_model, F = r.d_ff, E = r.n_experts;
    // Sample: tokens seen_ + t with (seen_ + t) % stride_ == 0.
    for (int64_t t = (stride_ - seen_ % stride_) % stride_; t < r.n_tokens; t += stride_) {
      out_->x.insert(out_->x.end(), r.x + t * d, r.x + (t + 1) * d);
      ++out_->n;
    }
    seen_ += r.n_tokens;
    const int64_t M = r.offsets[E];
    if (M == 0) return;
    const MoEParams& p = layer_->params();
    h_.resize(static_cast<size_t>(M * F));  // (M, F)
    kernels::grouped_ffn_up<float>(kernels::Backend::Cpu,
                                   {.act = r.act,
                                    .E = E,
                                    .F = F,
                                    .K = d,
                                    .offsets = r.offsets,
                                    .A = r.x,
                                    .lda = d,
                                    .gather = r.gather,
                                    .W_gate = p.w_gate.defined() ? p.w_gate.data<float>() : nullptr,
                                    .W_up = p.w_up.data<float>(),
                                    .H = h_.data(),
                                    .ldh = F});
    kernels::grouped_gemm<float>(kernels::Backend::Cpu, {.E = E,
                                                         .N = d,
                                                         .K = F,
                                                         .offsets = r.offsets,
                                                         .A = h_.data(),
                                                         .lda = F,
                                                         .W = p.w_down.data<float>(),
                                                         .C = r.out,
                                                         .ldc = d});  // (M, d)
  }

 private:
  const MoELayer* layer_;
  model::LayerRows* out_;
  int64_t stride_, seen_ = 0;
  std::vector<float> h_;
};

// Removes the executors of the layers it attached them to, also when a forward throws.
struct DetachExecutors {
  std::vector<MoELayer*> layers;
  ~DetachExecutors() {
    for (MoELayer* l : layers) l->set_expert_executor(nullptr);
  }
};

}  // namespace

MergeCalibration measure_merge_calibration(model::Transformer& m, const std::vector<int32_t>& tokens,
                                           int64_t seq_len, int64_t max_rows) {
  MOE_CHECK(max_rows >= 1, "merge calibration: max_rows must be >= 1, got ", max_rows);
  MOE_CHECK(m.dtype() == DType::F32 && !m.external_experts(),
            "merge calibration: the model must be f32 with its ", "experts in memory, it is ",
            dtype_name(m.dtype()), m.external_experts() ? " with external experts" : "");
  const model::ModelConfig& c = m.config();
  const int64_t n = static_cast<int64_t>(tokens.size());
  const int64_t stride = std::max<int64_t>(1, (n + max_rows - 1) / max_rows);
  MergeCalibration cal;
  for (int64_t l = 0; l < c.num_hidden_layers; ++l)
    if (m.moe_layer(l)) cal.rows.push_back({.layer = l, .n = 0, .d = c.hidden_size, .x = {}});
  DetachExecutors guard;
  size_t li = 0;
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    MoELayer* ml = m.mutable_moe_layer(l);
    if (!ml) continue;
    MOE_CHECK(!ml->expert_executor(), "merge calibration: layer ", l, " already has an expert executor");
    MOE_CHECK(ml->params().w_up.defined() && ml->params().w_down.defined(), "merge calibration: layer ", l,
              " holds no expert weights");
    ml->set_expert_executor(std::make_shared<RowRecorder>(ml, &cal.rows[li++], stride));
    guard.layers.push_back(ml);
  }
  cal.usage = measure_expert_usage(m, tokens, seq_len);
  return cal;
}

}  // namespace moe::infer
