// The experts of a MoE layer as a strategy: how the expert FFNs are computed on the rows a
// dispatcher hands them (docs/MOE_LAYER.md section 4). One implementation per way the weights are
// held:
//   FusedExperts      the layer's own f32/f64 weights: fused grouped GEMMs, keeps the
//                     pre-activations for backward (experts_fused.cpp)
//   Bf16Experts       bf16 copies of the weights, inference only (experts_bf16.cpp)
//   OffloadedExperts  weights held outside the layer (offloaded or quantized experts), computed by
//                     the layer's ExpertExecutor, inference only (experts_offload.cpp)
// The forward picks the routed experts' and the shared experts' strategies once from the layer's
// state (layer_forward.cpp) and keeps them for the backward. The shared experts are one FFN run
// as a single expert over all rows.
#pragma once

#include <cstdint>
#include <string>
#include <utility>

#include "moe/core/error.h"
#include "moe/kernels/ops.h"
#include "moe/kernels/weight_view.h"
#include "moe/moe/dispatcher.h"
#include "moe/moe/layer.h"

namespace moe::detail {

// The FFN each expert computes: d -> F (two projections for SwiGLU) -> d.
struct FfnShape {
  kernels::Backend backend = kernels::Backend::Cpu;
  kernels::Activation act = kernels::Activation::SwiGLU;
  int64_t d_model = 0;          // d
  int64_t d_ff = 0;             // F, the width of one expert (Fs for the shared experts)
  const char* name = "expert";  // names the buffers made for it
  bool swiglu() const { return act == kernels::Activation::SwiGLU; }
  int64_t preact_width() const { return swiglu() ? 2 * d_ff : d_ff; }  // [G | U] or U
};

// Forward over a batch: out[out_row[p]] = scale[p] · FFN_e(row p) for each row p of expert e.
template <typename T>
struct ExpertsForwardArgs {
  const ExpertBatch<T>* batch = nullptr;
  const T* scale = nullptr;          // (M) or null: 1
  const int32_t* out_row = nullptr;  // (M) distinct rows, or null: row p
  T* out = nullptr;                  // (out_rows, d)
  int64_t out_rows = 0;              // rows of out (out_row's range)
  Tensor* preact = nullptr;          // set to what backward needs, (M, 2F) [G | U] or (M, F) U, by a
                                     // strategy that trains; left as it is by the others
};

// The weight gradients of one backward, each written (beta 0) or added to (beta 1).
template <typename T>
struct ExpertsGrads {
  T* w_gate = nullptr;  // (E, F, d), SwiGLU only
  T* w_up = nullptr;    // (E, F, d)
  T* w_down = nullptr;  // (E, d, F)
  T beta_gate = 0, beta_up = 0, beta_down = 0;
};

// Backward over the batch of a forward, from the upstream gradient of each row's output.
template <typename T>
struct ExpertsBackwardArgs {
  const ExpertBatch<T>* batch = nullptr;
  const T* dY = nullptr;     // row p's upstream gradient is row gather[p] (p without gather), d long
  const T* scale = nullptr;  // (M) the forward's scale, or null
  T* preact = nullptr;       // (M, 2F) or (M, F) the forward's pre-activations; backward_down
                             // writes their gradients over them
  T* dscale = nullptr;       // (M) out: the gradient of each row's scale, or null
  ExpertsGrads<T> grads;
  Tensor* d_in = nullptr;  // (M, d) each row's input gradient: made and written when undefined,
                           // added to otherwise
};

template <typename T>
class Experts {
 public:
  virtual ~Experts() = default;
  virtual void forward(const ExpertsForwardArgs<T>& a) const = 0;
  // Whether forward keeps what backward needs.
  virtual bool trainable() const { return false; }
  // Backward in two steps, the reverse of forward (a caller may use dscale between them):
  // the down projection's (dW_down, the pre-activations' gradients, dscale), then the up
  // projections' (dW_gate, dW_up, each row's input gradient). Throw unless trainable().
  virtual void backward_down(const ExpertsBackwardArgs<T>&) const { not_trainable(); }
  virtual void backward_up(const ExpertsBackwardArgs<T>&) const { not_trainable(); }

 private:
  [[noreturn]] static void not_trainable() {
    throw Error("MoE experts: these experts keep no activations (an inference path); no backward");
  }
};

// The layer's f32/f64 expert weights (tensors, so that they live as long as the strategy).
struct FfnWeights {
  Tensor gate;  // (E, F, d), SwiGLU only
  Tensor up;    // (E, F, d)
  Tensor down;  // (E, d, F)
  // bf16 compute (float only; MoELayer::set_bf16_compute): when defined, the forward and
  // input-gradient GEMMs read these packed copies, and the weight gradients round their operands to
  // bf16 on the AMX tiles where the CPU has them (GroupedWgradArgs::bf16; fp32 elsewhere).
  Bf16PackedFfn bf16;
};

template <typename T>
class FusedExperts final : public Experts<T> {
 public:
  FusedExperts(FfnShape shape, FfnWeights w) : shape_(shape), w_(std::move(w)) {}
  // [G | U] by one fused gate/up grouped GEMM, then the down projection makes h = act(G, U) while
  // packing and scatters each scaled row to its output row in its epilogue.
  void forward(const ExpertsForwardArgs<T>& a) const override;
  bool trainable() const override { return true; }
  void backward_down(const ExpertsBackwardArgs<T>& a) const override;
  void backward_up(const ExpertsBackwardArgs<T>& a) const override;

 private:
  FfnShape shape_;
  FfnWeights w_;
};

// bf16 expert weights (uint16 bit patterns), fp32 activations rounded to bf16 inside the GEMMs.
class Bf16Experts final : public Experts<float> {
 public:
  // w_in, w_down: bf16-packed experts (Bf16ExpertWeights): op(W_in) (d, 2F) [gate | up] for SwiGLU,
  // (d, F) otherwise; op(W_down) (F, d).
  Bf16Experts(FfnShape shape, Tensor w_in, Tensor w_down)
      : shape_(shape), w_in_(std::move(w_in)), w_down_(std::move(w_down)) {}
  void forward(const ExpertsForwardArgs<float>& a) const override;

 private:
  FfnShape shape_;
  Tensor w_in_, w_down_;
};

// bf16-packed expert weights (Bf16ExpertWeights, Bf16PackedFfn): the view of t, BF16 (E, packed
// bytes / 2), as E experts of op(W) (K, N); and the forward of Bf16Experts on such copies of W_in
// and W_down, writing the pre-activations [G | U] (rows, preact width) to GU (experts_bf16.cpp).
kernels::WeightView packed_view(const Tensor& t, int64_t N, int64_t K);
void packed_forward(const FfnShape& s, const Tensor& w_in, const Tensor& w_down,
                    const ExpertsForwardArgs<float>& a, float* GU);

// Experts whose weights the layer does not hold: the executor computes each row's unweighted
// output in expert order, then the rows are weighted and moved to their output rows.
class OffloadedExperts final : public Experts<float> {
 public:
  struct Args {
    ExpertExecutor* executor = nullptr;
    FfnShape shape;
    int64_t n_experts = 0;     // E: the executor sees offsets over all E experts
    int64_t first_expert = 0;  // the batch's local expert 0 (expert parallelism: offsets over a shard)
    const float* x = nullptr;  // (T, d) the layer input the batch's gather indexes
    int64_t n_tokens = 0;      // T
  };
  explicit OffloadedExperts(const Args& a) : a_(a) {}
  void forward(const ExpertsForwardArgs<float>& a) const override;

 private:
  Args a_;
};

}  // namespace moe::detail
