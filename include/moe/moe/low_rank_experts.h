// Low-rank routed experts at inference: each expert matrix W_e (N, K) held as factors A_e (N, R) ·
// B_e (R, K), optionally on top of a base W̄ (N, K) shared by the layer's experts (W_e = W̄ + A_e·B_e).
// The checkpoint format and the decomposition are moe/model/low_rank.h; this is the runner, an
// ExpertExecutor (moe/moe/layer.h) that computes the experts without materialising W_e:
//
//   per expert e, its rows X (M_e, d):   T = X · B_eᵀ (M_e, R),  Y = T · A_eᵀ (M_e, N)
//
// which costs R·(N + K) multiply-adds per row instead of N·K. With a base, gate and up add X · W̄ᵀ,
// computed once per token (the layer input) and gathered to the token's rows; the down projection's
// base term h · W̄_downᵀ depends on the expert's activation, so it is computed per row.
// All products are grouped GEMMs over every expert at once (kernels::grouped_gemm).
#pragma once

#include <cstdint>

#include "moe/core/tensor.h"
#include "moe/kernels/context.h"
#include "moe/moe/config.h"
#include "moe/moe/layer.h"

namespace moe {

// One matrix kind (gate, up or down) of a layer's E experts, all f32 contiguous.
struct LowRankMatrix {
  Tensor a;     // (E, N, R)
  Tensor b;     // (E, R, K)
  Tensor base;  // (N, K), or undefined without a shared base
  bool defined() const { return a.defined(); }
};

// A layer's routed experts: gate and up (F, d), down (d, F); gate only for SwiGLU.
struct LowRankExperts {
  int64_t rank = 0;
  LowRankMatrix gate, up, down;
};

// Multiply-adds per routed row of the factored experts (the per-token base products of gate and up
// spread over the top_k rows of a token), and of the same experts materialised (N·K per matrix).
double low_rank_flops_per_row(const MoEConfig& c, int64_t rank, bool shared_base);
double dense_flops_per_row(const MoEConfig& c);

class LowRankExecutor : public ExpertExecutor {
 public:
  // Checks every factor's shape against c (E experts, d_model, d_ff) and `w.rank`; throws moe::Error
  // naming `what` (e.g. "layer 3") and the tensor.
  LowRankExecutor(LowRankExperts w, const MoEConfig& c, const std::string& what,
                  kernels::Backend backend = kernels::Backend::Cpu);
  void run(const ExpertRows& rows) override;
  const LowRankExperts& weights() const { return w_; }

 private:
  // Below this many rows per thread a forward runs one expert per work item (see run()).
  static constexpr int64_t kRowsPerThread = 64;
  LowRankExperts w_;
  int64_t E_, d_, F_;
  kernels::Activation act_;
  kernels::Backend backend_;
  // Scratch, grown as needed (an executor serves one forward at a time).
  std::vector<float> t_, g_, u_, h_, base_;
};

}  // namespace moe
