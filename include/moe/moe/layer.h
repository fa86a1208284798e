// The MoE layer: router -> selection -> capacity -> dispatch -> experts -> combine (+ shared
// experts), forward and backward, in f32 (production) or f64 (references, gradient checks).
// docs/MOE_LAYER.md defines every formula; the PyTorch oracle in tests/oracle implements the same.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "moe/core/tensor.h"
#include "moe/kernels/ops.h"
#include "moe/moe/config.h"
#include "moe/moe/router.h"

namespace moe {

namespace dist {
class Communicator;
}

// Expert parallelism: the routed experts are split evenly over the ranks of `comm` in rank order
// (rank r of R holds experts [r·E/R, (r+1)·E/R), so E must be a multiple of R). Every rank routes
// its own tokens over all E experts; each kept assignment's row travels to the rank holding its
// expert and its weighted output comes back (all-to-all, forward and backward). The router and the
// shared experts are replicated: their gradients are per rank (the trainer all-reduces them), as
// are the balancing losses and statistics, which cover this rank's tokens. Capacity, when set, is
// applied to this rank's tokens before the exchange. The all-to-all runs the training path only
// (f32/f64, no bf16 or executor-held experts); inference uses replicated_tokens below.
struct ExpertParallel {
  std::shared_ptr<dist::Communicator> comm;  // null: every expert is here
  // Overlap: the tokens are split into this many chunks; a communication thread exchanges the rows
  // of one chunk while this thread computes the experts of another (forward and backward). 1 = no
  // split (then the results are those of ExpertParallel without chunks; with more, the expert
  // weight gradients are summed chunk by chunk, so in another order).
  int chunks = 1;
  // Inference with the tokens replicated: every rank runs the same forward on the same tokens (the
  // dense parts are replicas), so no row needs to travel. Each rank computes its own experts' rows
  // of every token, the weighted rows are summed over the ranks with one all-reduce (each row is
  // non-zero on one rank only, so the sum is that row exactly), and every token adds its k rows in
  // assignment order: the outputs equal a single process's bit for bit (up to the sign of an exact
  // zero). Every rank must run the same forwards (moe/infer/lockstep.h sees to it). Forward only, any
  // expert format (f32, bf16, executor-held); chunks must be 1.
  bool replicated_tokens = false;
};

// Parameters, all of the layer's dtype. Under expert parallelism the routed experts' tensors hold
// only this rank's El = E / R experts (E replaced by El below). Shapes with E experts, F = d_ff, Fs = shared
// width, d = d_model.
struct MoEParams {
  Tensor router_w;       // (E, d)      gate: logits = x · router_w^T
  Tensor router_bias;    // (E)         selection-only bias (aux-loss-free balancing); no gradient
  Tensor w_gate;         // (E, F, d)   SwiGLU only
  Tensor w_up;           // (E, F, d)
  Tensor w_down;         // (E, d, F)
  Tensor shared_w_gate;  // (Fs, d)     SwiGLU shared experts only
  Tensor shared_w_up;    // (Fs, d)
  Tensor shared_w_down;  // (d, Fs)
  Tensor shared_gate_w;  // (1, d)      when shared_gate
};

// Expert weights rounded to bf16 (uint16 bit patterns) for the inference forward pass.
// SwiGLU's gate and up weights are one tensor, each expert's gate rows then its up rows, so one GEMM
// computes both; other activations have w_up only.
// Each tensor holds its experts packed once in the bf16-packed format (moe/kernels/weights.h), as
// BF16 (E, packed_bf16_bytes(N, K) / 2): op(W) (K, N) of w_in is (d, 2F) [gate | up] or (d, F) up,
// of w_down (F, d); the shared experts' likewise with E = 1 and Fs.
struct Bf16ExpertWeights {
  Tensor w_in, w_down;
  Tensor shared_w_in, shared_w_down;
};

// bf16 compute in training (MoELayer::set_bf16_compute): bf16-packed copies of one expert stack for
// the forward and input-gradient GEMMs, E experts each (op(W) named (K, N)):
struct Bf16PackedFfn {
  Tensor in_fwd;    // (d, 2F) [gate | up] (SwiGLU) or (d, F) up: x · op(W) = [G | U]
  Tensor down_fwd;  // (F, d): h · op(W) = y
  Tensor down_bwd;  // (d, F): dy · op(W) = dh
  Tensor in_bwd;    // (2F, d) or (F, d): [dG | dU] · op(W) = dx
  bool defined() const { return in_fwd.defined(); }
};

// Gradients; same names and shapes as MoEParams (router_bias has none), plus dx.
struct MoEGrads {
  Tensor dx;  // (T, d)
  Tensor router_w, w_gate, w_up, w_down;
  Tensor shared_w_gate, shared_w_up, shared_w_down, shared_gate_w;
};

struct MoEStats {
  std::vector<int64_t> routed_per_expert;        // assignments chosen per expert, before capacity
  std::vector<double> routed_weight_per_expert;  // sum of the combine weights of those assignments
  std::vector<int64_t> tokens_per_expert;        // assignments computed per expert, after capacity
  int64_t dropped = 0;                           // assignments dropped by capacity
  int64_t skipped = 0;        // assignments skipped for a weight below router.skip_threshold
  double imbalance = 0.0;     // max / mean of routed_per_expert (1 = balanced)
  double aux_loss = 0.0;      // α-weighted Switch/GShard loss
  double seq_aux_loss = 0.0;  // weighted sequence-level loss
  double z_loss = 0.0;        // weighted router z-loss
  double entropy_loss = 0.0;  // weighted router entropy loss (balance.entropy_coef)
  double mean_k = 0.0;        // experts selected per token (top_k, or fewer under top-p routing)
  double total_loss() const { return aux_loss + seq_aux_loss + z_loss + entropy_loss; }
};

struct ForwardOptions {
  bool training = false;              // enables router jitter
  uint64_t step = 0;                  // picks the jitter noise stream
  uint64_t seed = 0;                  // jitter seed
  const Tensor* token_ids = nullptr;  // (T) i32; required for hash routing
  bool check_finite = false;          // throw moe::Error when x contains NaN/Inf
};

struct MoEForward {
  Tensor y;  // (T, d)
  Routing routing;
  MoEStats stats;
  std::shared_ptr<const void> saved;  // activations kept for backward (opaque)
};

// The routed experts of one forward, rows sorted by expert (inference only). Expert e's rows are
// p in [offsets[e], offsets[e+1]); row p reads x[gather[p]] (x[p] when gather is null).
struct ExpertRows {
  int64_t n_experts = 0, d_model = 0, d_ff = 0;
  kernels::Activation act = kernels::Activation::SwiGLU;
  const int32_t* offsets = nullptr;  // (E + 1)
  const float* x = nullptr;          // (n_tokens, d) the layer input (router input), contiguous
  int64_t n_tokens = 0;
  const int32_t* gather = nullptr;  // (M) token of each sorted row, or null
  float* out = nullptr;             // (M, d) expert FFN output of each sorted row (unweighted), overwritten
};

// Computes a layer's routed experts on weights the layer does not hold itself (offloaded or quantized
// experts, see moe/infer/expert_store.h). Called from the thread running the forward.
class ExpertExecutor {
 public:
  virtual ~ExpertExecutor() = default;
  virtual void run(const ExpertRows& rows) = 0;
};

class MoELayer {
 public:
  // dtype F32 or F64. Throws moe::Error on an invalid config.
  // external_experts: the routed expert weights are not allocated (see set_external_experts).
  // ep: expert parallelism (see ExpertParallel); the routed experts' parameters are this rank's slice.
  explicit MoELayer(MoEConfig cfg, DType dtype = DType::F32, kernels::Backend backend = kernels::Backend::Cpu,
                    bool external_experts = false, ExpertParallel ep = {});

  const MoEConfig& config() const { return cfg_; }
  // Dynamic expert skipping at inference (RouterConfig::skip_threshold; 0 = off). Throws when t is
  // negative or not finite.
  void set_skip_threshold(double t) {
    MoEConfig c = cfg_;
    c.router.skip_threshold = t;
    c.validate();
    cfg_ = std::move(c);
  }
  // Adaptive-k (top-p) routing at inference (RouterConfig::top_p, 0 = top_k always), with min_k;
  // top_k stays the most k. Throws when the router is not token choice with softmax scores.
  void set_router_top_p(double p, int min_k = 1) {
    MoEConfig c = cfg_;
    c.router.top_p = p;
    c.router.min_k = min_k;
    c.validate();
    cfg_ = std::move(c);
  }
  DType dtype() const { return dtype_; }
  kernels::Backend backend() const { return backend_; }
  void set_backend(kernels::Backend b) { backend_ = b; }

  // The routed experts held here: [first_expert(), first_expert() + local_experts()).
  int64_t first_expert() const { return first_expert_; }
  int64_t local_experts() const { return local_experts_; }
  const ExpertParallel& expert_parallel() const { return ep_; }

  MoEParams& params() { return params_; }
  const MoEParams& params() const { return params_; }
  // Random init from a seed (normal, std 1/sqrt(fan_in)); bias zero. Same seed, same weights; under
  // expert parallelism each rank gets the slice of the weights a single process would have.
  void init_params(uint64_t seed);
  // Checks every parameter's presence, dtype and shape; throws naming the first wrong one.
  void check_params() const;

  // x: (T, d) of the layer's dtype. T may be 0 (returns an empty y).
  MoEForward forward(const Tensor& x, const ForwardOptions& opt = {}) const;
  // dy: (T, d). Gradients of  L = <dy, y> + aux_scale · stats.total_loss()  w.r.t. x and every
  // parameter (aux_scale = 0: the balancing losses contribute nothing).
  MoEGrads backward(const MoEForward& fwd, const Tensor& dy, double aux_scale = 1.0) const;
  // The same gradients into tensors the caller keeps between steps (as a training loop keeps its
  // parameters' gradients): each parameter gradient defined in `acc` (its parameter's shape and
  // dtype, contiguous) gets this backward's gradient added to it, an undefined one is allocated
  // and set; acc.dx is overwritten (allocated when undefined or of another shape). No gradient
  // buffer is allocated or zeroed when all are given. A forward's backward runs once (either call).
  void backward_into(const MoEForward& fwd, const Tensor& dy, MoEGrads& acc, double aux_scale = 1.0) const;

  // Inference path with bf16 expert weights: rounds the current expert weights (routed and shared)
  // to bf16 and runs the forward's expert GEMMs on them with fp32 accumulation (AVX512-BF16 where
  // the CPU has it). A snapshot: call again after changing the weights; `false` drops it. Such a
  // forward keeps no activations and cannot be differentiated (backward throws). f32 layers only.
  void set_bf16_expert_weights(bool on);
  bool has_bf16_expert_weights() const { return bf16_.w_in.defined() || bf16_.shared_w_in.defined(); }
  const Bf16ExpertWeights& bf16_expert_weights() const { return bf16_; }

  // Inference only, the experts held once: drops the f32 expert weights (routed and shared; the router
  // and the shared gate stay) that set_bf16_expert_weights(true) has packed, so each expert is held in
  // its bf16-packed form alone. The forward runs as before (same weights, same outputs); what needs the
  // f32 weights throws moe::Error from then on: set_bf16_expert_weights, set_bf16_compute(true),
  // init_params, backward (params() has the dropped tensors undefined).
  void release_expert_masters();
  bool expert_masters_released() const { return masters_released_; }
  // A layer in that state from the start: its routed (unless external_experts) and shared expert
  // weights are never allocated; set_packed_experts installs them, packed as set_bf16_expert_weights
  // packs them (so a loader can pack a checkpoint's experts one by one, never holding the f32 stacks:
  // model::Transformer::load_for_inference). f32; the router and shared gate are allocated (zero).
  static std::unique_ptr<MoELayer> without_expert_weights(MoEConfig cfg, kernels::Backend backend,
                                                          bool external_experts, ExpertParallel ep = {});
  // Checks each tensor's dtype and shape (every expert held here; the shared experts when the layer
  // has them) and throws moe::Error naming the first wrong one.
  void set_packed_experts(Bf16ExpertWeights w);

  // bf16 compute for training: the experts' forward GEMMs and input-gradient GEMMs (routed and shared)
  // run on bf16-packed copies of the f32 master weights, the activations rounded to bf16 as they are
  // read and fp32 sums; the weight gradients, the router and everything else stay f32. The copies are
  // made by refresh_bf16_compute() (call it after every change of the weights, e.g. each optimizer
  // step; Transformer does). f32 layers only.
  void set_bf16_compute(bool on);
  bool bf16_compute() const { return bf16_compute_; }
  void refresh_bf16_compute();
  const Bf16PackedFfn& bf16_routed() const { return bf16_routed_; }
  const Bf16PackedFfn& bf16_shared() const { return bf16_shared_; }

  // Inference with an executor: the routed experts' FFNs are computed by `ex` instead of from
  // params().w_gate/w_up/w_down, which may then be left undefined (set_external_experts). Such a
  // forward keeps no activations; backward throws. Router and shared experts stay in the layer.
  // null removes it. f32 layers only.
  void set_expert_executor(std::shared_ptr<ExpertExecutor> ex);
  ExpertExecutor* expert_executor() const { return executor_.get(); }
  // Marks the routed expert weights as held outside the layer: check_params() and the params no
  // longer expect w_gate/w_up/w_down, and a forward without an executor throws.
  void set_external_experts(bool on);
  bool external_experts() const { return external_experts_; }

  // Aux-loss-free balancing: b_i += γ · sign(mean load − load_i) using the routed counts of `stats`.
  void update_bias(const MoEStats& stats);

  // FLOPs of the expert matmuls (routed + shared) for a forward over `stats`'s kept assignments
  // and T tokens; backward is twice this.
  double expert_flops(const MoEStats& stats, int64_t n_tokens) const;

 private:
  MoEConfig cfg_;
  DType dtype_;
  kernels::Backend backend_;
  MoEParams params_;
  // The constructor's work, with the expert weights (routed and shared) allocated or not.
  MoELayer(MoEConfig cfg, DType dtype, kernels::Backend backend, bool external_experts, ExpertParallel ep,
           bool allocate_experts);
  void check_masters(const char* what) const;  // throws when the f32 expert weights were released

  Bf16ExpertWeights bf16_;
  bool masters_released_ = false;
  bool bf16_compute_ = false;
  Bf16PackedFfn bf16_routed_, bf16_shared_;
  std::shared_ptr<ExpertExecutor> executor_;
  bool external_experts_ = false;
  ExpertParallel ep_;
  int64_t first_expert_ = 0, local_experts_ = 0;
};

}  // namespace moe
