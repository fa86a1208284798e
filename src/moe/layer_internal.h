// What a MoE layer's forward keeps for its backward, and the two passes (layer_forward.cpp,
// layer_backward.cpp) that MoELayer::forward and MoELayer::backward_into run.
#pragma once

#include <memory>
#include <vector>

#include "moe/experts.h"
#include "moe/layer_steps.h"
#include "moe/moe/dispatcher.h"
#include "moe/moe/layer.h"

namespace moe::detail {

// The routed experts' work on one token chunk: the whole batch, or under expert parallelism with
// chunks, one chunk per part.
template <typename T>
struct Part {
  TokenChunk chunk;                     // tokens [t0, t1) and their assignments
  std::shared_ptr<Dispatcher<T>> disp;  // local or all-to-all
  ExpertBatch<T> batch;                 // the rows this process's experts compute
  Tensor GU;                            // (M, 2F) [G | U] for SwiGLU, (M, F) U otherwise
};

// Activations kept from forward for backward.
template <typename T>
struct Saved {
  Tensor x;                                          // (T, d) contiguous input
  Tensor x_r;                                        // (T, d) router input (jittered x, or x)
  Tensor jitter;                                     // (T, d) jitter factors, undefined without jitter
  std::shared_ptr<const Experts<T>> experts;         // the routed experts' strategy
  std::shared_ptr<const Experts<T>> shared_experts;  // the shared experts' (null without them)
  std::vector<Part<T>> parts;
  ExpertBatch<T> shared;  // the shared FFN as one expert over all T rows
  Tensor GUs;             // (T, 2Fs) or (T, Fs) the shared experts' pre-activations
  Tensor g;               // (T, 1) shared gate, undefined without it
  // Backward writes the pre-activations' gradients over them (parts[].GU, GUs): one backward per
  // forward.
  mutable bool consumed = false;
};

template <typename T>
MoEForward layer_forward(const MoELayer& L, const Tensor& x, const ForwardOptions& opt);

template <typename T>
void layer_backward(const MoELayer& L, const MoEForward& fwd, const Tensor& dy, double aux_scale,
                    MoEGrads& g);

}  // namespace moe::detail
