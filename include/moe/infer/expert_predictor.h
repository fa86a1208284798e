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
// the same order (each forward runs every layer once); consecutive tokens belong to one sequence
// unless seq_start marks the later one as the start of another.
struct RoutingSamples {
  int64_t d = 0, E = 0, top_k = 0;
  std::vector<std::vector<float>> x;          // [li] (N, d)
  std::vector<std::vector<int32_t>> experts;  // [li] (N, top_k)
  std::vector<uint8_t> seq_start;             // (N) 1 where a sequence starts; empty: one sequence
  std::vector<uint8_t> generated;             // (N) 1 where the model chose the token (greedy); empty: none
  int64_t tokens() const {
    return x.empty() ? 0 : static_cast<int64_t>(x[0].size()) / std::max<int64_t>(1, d);
  }
  // True when token t + 1 exists and follows token t in its sequence.
  bool continues(int64_t t) const {
    return t + 1 < tokens() && (seq_start.empty() || !seq_start[static_cast<size_t>(t + 1)]);
  }
  // Whether t -> t + 1 is a sample for the pairs into the next token: the sequence goes on and, when
  // the samples hold generated tokens, token t + 1 is one of them. (When decoding, the next token
  // comes from the model's own logits, which a text's next token often is not.)
  bool next_token_sample(int64_t t) const;
  // Appends the tokens of `o` (the same model), as a new sequence or continuing the last one, and
  // marked as generated or not.
  void append(RoutingSamples&& o, bool new_sequence, bool generated_tokens);
};

// A pair (li, dl) predicts MoE layer (li + dl) mod L: of the same token when li + dl < L, of the next
// token when L <= li + dl < 2L (the first layers of the next decode step, predicted from the last
// ones of this one), where L is the number of MoE layers. Pairs with li + dl >= 2L do not exist.
inline int64_t predicted_layer(int64_t li, int64_t dl, int64_t L) { return (li + dl) % L; }
inline int64_t predicted_token_offset(int64_t li, int64_t dl, int64_t L) { return (li + dl) / L; }

// Scores of the experts of the MoE layer a pair predicts (higher: more likely chosen).
class ExpertScorer {
 public:
  virtual ~ExpertScorer() = default;
  // x: (d) router input of layer li; chosen: the n experts layer li chose for that token; out: (E).
  // Returns false when it has nothing for (li, dl).
  virtual bool score(int64_t li, int64_t dl, const float* x, const int32_t* chosen, int64_t n,
                     float* out) const = 0;
};

class PreGating : public ExpertScorer {
 public:
  // From the routers and post-attention RMSNorm weights of `m`'s MoE layers (pointers into the
  // model: it must outlive this), for distances 1 .. depth within a token (it has nothing for the
  // next token's layers).
  PreGating(const model::Transformer& m, int64_t depth);
  bool score(int64_t li, int64_t dl, const float* x, const int32_t* chosen, int64_t n,
             float* out) const override;
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
  int64_t d_ = 0, E_ = 0;
  std::vector<Gate> gates_;                             // (L)
  std::vector<std::vector<std::vector<float>>> ratio_;  // [li][dl - 1] (d)
};

class ExpertPredictor : public ExpertScorer {
 public:
  int64_t d = 0, E = 0, top_k = 0, depth = 0, calibration_tokens = 0;
  std::vector<int64_t> layers;  // transformer index of each MoE layer
  // W[li][dl - 1]: (d + E + 1, E) row-major, dl = 1 .. min(depth, 2L - 1 - li) (pairs into the next
  // token included); empty: no weights for the pair (score returns false and the store pre-gates
  // it, or for the next token's layers predicts nothing)
  std::vector<std::vector<std::vector<float>>> W;

  bool score(int64_t li, int64_t dl, const float* x, const int32_t* chosen, int64_t n,
             float* out) const override;
  bool has(int64_t li, int64_t dl) const {
    return li >= 0 && dl >= 1 && li < static_cast<int64_t>(W.size()) &&
           dl <= static_cast<int64_t>(W[li].size()) && !W[li][dl - 1].empty();
  }
  // Throws moe::Error unless it was fitted for this model (same MoE layers, d, E, top-k).
  void check_matches(const model::Transformer& m, const std::string& what) const;
};

// Fits each pair (li, dl), dl = 1 .. depth, on all the samples' tokens in order (a pair into the
// next token: on the tokens whose sequence goes on) (minibatch
// Adam on the softmax cross-entropy against the chosen set, each chosen expert 1/n of the target),
// starting from init's linear map when given, else from zero. Deterministic. Throws when there are
// no samples, shapes disagree, an input is not finite or the fit diverges.
struct PredictorFitOptions {
  int64_t epochs = 4, batch = 256;
  double lr = 3e-3, weight_decay = 1e-5;
  bool next_token = true;  // false: no pairs into the next token (left empty)
};
ExpertPredictor fit_expert_predictor(const RoutingSamples& s, const std::vector<int64_t>& layers,
                                     int64_t depth, const PredictorFitOptions& opt = {},
                                     const PreGating* init = nullptr);

// Held-out quality: for each pair (li, dl) the scorer has, the share of the experts the predicted
// layer chose that are among the scorer's `k` best (recall at k).
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
