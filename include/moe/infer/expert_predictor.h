// Predicting which experts the next MoE layers will route to, for prefetching offloaded experts
// (moe/infer/expert_store.h).
//
// Two predictors score the E experts of MoE layer li + dl from what is known when layer li routes:
// its router input x (the RMSNorm-ed hidden state, d floats) and the experts it chose.
//
//   PreGating         applies layer li + dl's router to x rescaled by the ratio of the two layers'
//                     RMSNorm weights (the hidden state is assumed to change little between layers,
//                     as pre-gated MoE does). Needs nothing but the model.
//   ExpertPredictor   a linear map learned on calibration text (`moe predictor`): scores =
//                     [x, onehot(chosen), 1] · W, W of (d + E + 1, E) per (li, dl), fitted as a
//                     softmax regression of the experts layer li + dl chose, starting from
//                     pre-gating's map: it learns what the layers in between do to the hidden state
//                     and which experts follow which.
//
// Either way the prediction only decides what to load early: outputs never depend on it.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "moe/model/transformer.h"

namespace moe::infer {

// What the MoE layers of a model routed, token by token: per MoE layer li (model order), the router
// input of each token and the top-k experts it chose. The rows of every layer are the same tokens in
// the same order (each forward runs every layer once).
struct RoutingSamples {
  int64_t d = 0, E = 0, top_k = 0;
  std::vector<std::vector<float>> x;          // [li] (N, d)
  std::vector<std::vector<int32_t>> experts;  // [li] (N, top_k)
  int64_t tokens() const { return x.empty() ? 0 : static_cast<int64_t>(x[0].size()) / std::max<int64_t>(1, d); }
};

// Scores of the experts of MoE layer li + dl (higher: more likely chosen).
class ExpertScorer {
 public:
  virtual ~ExpertScorer() = default;
  // x: (d) router input of layer li; chosen: the n experts layer li chose for that token; out: (E).
  // Returns false when it has nothing for (li, dl).
  virtual bool score(int64_t li, int64_t dl, const float* x, const int32_t* chosen, int64_t n, float* out) const = 0;
};

class PreGating : public ExpertScorer {
 public:
  // From the routers and post-attention RMSNorm weights of `m`'s MoE layers (pointers into the
  // model: it must outlive this), for distances 1 .. depth.
  PreGating(const model::Transformer& m, int64_t depth);
  bool score(int64_t li, int64_t dl, const float* x, const int32_t* chosen, int64_t n, float* out) const override;
  // The linear part of score(li, dl) in ExpertPredictor's layout: rows 0..d-1 of W (d + E + 1, E)
  // get the rescaled router, the last row its selection bias (softmax routers only); the rows of
  // the chosen experts are left as they are. False when there is no such pair.
  bool linear_map(int64_t li, int64_t dl, float* W) const;

 private:
  struct Gate {
    const float* w = nullptr;     // (E, d)
    const float* bias = nullptr;  // (E) selection bias, or null
    bool sigmoid = false;
  };
  int64_t d_ = 0, E_ = 0, depth_ = 0;
  std::vector<Gate> gates_;                          // (L)
  std::vector<std::vector<std::vector<float>>> ratio_;  // [li][dl - 1] (d)
};

class ExpertPredictor : public ExpertScorer {
 public:
  int64_t d = 0, E = 0, top_k = 0, depth = 0, calibration_tokens = 0;
  std::vector<int64_t> layers;  // transformer index of each MoE layer
  // W[li][dl - 1]: (d + E + 1, E) row-major, for li + dl < layers.size(); empty: no weights for the
  // pair (score returns false and the store pre-gates it)
  std::vector<std::vector<std::vector<float>>> W;

  bool score(int64_t li, int64_t dl, const float* x, const int32_t* chosen, int64_t n, float* out) const override;
  // Throws moe::Error unless it was fitted for this model (same MoE layers, d, E, top-k).
  void check_matches(const model::Transformer& m, const std::string& what) const;
};

// Fits each (li, li + dl) pair, dl = 1 .. depth, on all the samples' tokens in order (minibatch
// Adam on the softmax cross-entropy against the chosen set, each chosen expert 1/n of the target),
// starting from init's linear map when given, else from zero. Deterministic. Throws when there are
// no samples, shapes disagree, an input is not finite or the fit diverges.
struct PredictorFitOptions {
  int64_t epochs = 4, batch = 256;
  double lr = 3e-3, weight_decay = 1e-5;
};
ExpertPredictor fit_expert_predictor(const RoutingSamples& s, const std::vector<int64_t>& layers, int64_t depth,
                                     const PredictorFitOptions& opt = {}, const PreGating* init = nullptr);

// Held-out quality: for each (li, dl), the share of the experts layer li + dl chose that are among
// the scorer's `k` best (recall at k).
struct PredictorRecall {
  int64_t li = 0, dl = 0;
  double recall = 0;
};
std::vector<PredictorRecall> predictor_recall(const ExpertScorer& p, const RoutingSamples& s, int64_t depth,
                                              int64_t k);

// File: safetensors, tensors "predictor.<li>.<dl>" F32 (d + E + 1, E) (absent: a pair left to
// pre-gating), metadata "format"
// ("moe-expert-predictor"), "d", "experts", "top_k", "depth", "moe_layers" (comma-separated
// transformer indices), "calibration_tokens". The default name in a model directory:
inline constexpr const char* kExpertPredictorFile = "expert_predictor.safetensors";
void save_expert_predictor(const ExpertPredictor& p, const std::string& path);
// Throws moe::Error naming the file on a malformed, truncated or inconsistent file.
ExpertPredictor load_expert_predictor(const std::string& path);

}  // namespace moe::infer
