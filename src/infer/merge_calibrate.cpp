// Calibration for expert merging (moe/infer/merge_calibrate.h).
#include "moe/infer/merge_calibrate.h"

#include <memory>

#include "moe/core/error.h"
#include "moe/core/parallel.h"
#include "moe/kernels/ops.h"

namespace moe::infer {

namespace {

// Computes a layer's routed experts from the layer's own f32 weights (the grouped FFN the layer
// would run) and shows each forward's rows and hidden vectors to observe() first.
class OwnWeightsExecutor : public ExpertExecutor {
 public:
  explicit OwnWeightsExecutor(const MoELayer* layer) : layer_(layer) {}

  // r: the forward's rows; h (M, F): each sorted row's hidden vector act(gate·x) ⊙ (up·x).
  virtual void observe(const ExpertRows& r, const float* h) = 0;

  void run(const ExpertRows& r) override {
    const int64_t d = r.d_model, F = r.d_ff, E = r.n_experts;
    const int64_t M = r.offsets[E];
    if (M == 0) {
      observe(r, nullptr);
      return;
    }
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
    observe(r, h_.data());
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
  std::vector<float> h_;
};

// Keeps every stride-th token's input row.
class RowRecorder : public OwnWeightsExecutor {
 public:
  RowRecorder(const MoELayer* layer, model::LayerRows* out, int64_t stride)
      : OwnWeightsExecutor(layer), out_(out), stride_(stride) {}

  void observe(const ExpertRows& r, const float*) override {
    const int64_t d = r.d_model;
    // Sample: tokens seen_ + t with (seen_ + t) % stride_ == 0.
    for (int64_t t = (stride_ - seen_ % stride_) % stride_; t < r.n_tokens; t += stride_) {
      out_->x.insert(out_->x.end(), r.x + t * d, r.x + (t + 1) * d);
      ++out_->n;
    }
    seen_ += r.n_tokens;
  }

 private:
  model::LayerRows* out_;
  int64_t stride_, seen_ = 0;
};

// Sums x·xᵀ and h·hᵀ over the rows routed to each expert (model::ExpertInputMoments), in double.
class MomentRecorder : public OwnWeightsExecutor {
 public:
  MomentRecorder(const MoELayer* layer, model::ExpertInputMoments* out, size_t li)
      : OwnWeightsExecutor(layer), out_(out), li_(li) {}

  void observe(const ExpertRows& r, const float* h) override {
    const int64_t d = r.d_model, F = r.d_ff;
    parallel_items(r.n_experts, [&](int64_t e) {
      std::vector<double>& gx = out_->gx[li_][e];
      std::vector<double>& gh = out_->gh[li_][e];
      for (int32_t p = r.offsets[e]; p < r.offsets[e + 1]; ++p) {
        const float* x = r.x + static_cast<int64_t>(r.gather ? r.gather[p] : p) * d;
        const float* hp = h + static_cast<int64_t>(p) * F;
        add_outer(gx, x, d);
        add_outer(gh, hp, F);
      }
      out_->rows[li_][e] += r.offsets[e + 1] - r.offsets[e];
    });
  }

 private:
  // g (n, n) += v·vᵀ on the lower triangle (measure_expert_moments mirrors it at the end).
  static void add_outer(std::vector<double>& g, const float* v, int64_t n) {
    for (int64_t i = 0; i < n; ++i) {
      const double vi = v[i];
      double* row = &g[i * n];
      for (int64_t j = 0; j <= i; ++j) row[j] += vi * static_cast<double>(v[j]);
    }
  }
  model::ExpertInputMoments* out_;
  size_t li_;
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

model::ExpertInputMoments measure_expert_moments(model::Transformer& m, const std::vector<int32_t>& tokens,
                                                 int64_t seq_len) {
  MOE_CHECK(m.dtype() == DType::F32 && !m.external_experts(),
            "compress calibration: the model must be f32 with its experts in memory");
  const model::ModelConfig& c = m.config();
  const MoEConfig mc = c.moe_layer_config();
  model::ExpertInputMoments mo;
  mo.d = mc.d_model, mo.F = mc.d_ff;
  const size_t E = static_cast<size_t>(mc.n_experts);
  DetachExecutors guard;
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    MoELayer* ml = m.mutable_moe_layer(l);
    if (!ml) continue;
    MOE_CHECK(!ml->expert_executor(), "compress calibration: layer ", l, " already has an expert executor");
    mo.rows.emplace_back(E, 0);
    mo.gx.emplace_back(E, std::vector<double>(static_cast<size_t>(mo.d * mo.d), 0.0));
    mo.gh.emplace_back(E, std::vector<double>(static_cast<size_t>(mo.F * mo.F), 0.0));
  }
  size_t li = 0;
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    MoELayer* ml = m.mutable_moe_layer(l);
    if (!ml) continue;
    ml->set_expert_executor(std::make_shared<MomentRecorder>(ml, &mo, li++));
    guard.layers.push_back(ml);
  }
  measure_expert_usage(m, tokens, seq_len);
  // Mirror the lower triangles.
  auto mirror = [](std::vector<double>& g, int64_t n) {
    for (int64_t i = 0; i < n; ++i)
      for (int64_t j = 0; j < i; ++j) g[j * n + i] = g[i * n + j];
  };
  for (size_t l = 0; l < mo.rows.size(); ++l)
    for (size_t e = 0; e < E; ++e) mirror(mo.gx[l][e], mo.d), mirror(mo.gh[l][e], mo.F);
  return mo;
}

}  // namespace moe::infer
