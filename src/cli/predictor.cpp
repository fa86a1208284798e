// `moe predictor --model DIR --calibration FILE.txt [--depth 2] [--holdout 0.2] [--out FILE]
// [--seq-len N] [--generate N] [--no-next-token] [--max-tokens N] [--epochs N] [--lr X] [--json]`: records
// the routing of every MoE layer on calibration text (all experts resident), fits the expert predictor of
// moe/infer/expert_predictor.h on the first part, reports its recall on the held-out rest beside
// pre-gating's, leaves to pre-gating the layer pairs where it does better, and writes the predictor (by
// default into the model directory, where the expert store finds it: --expert-predictor auto).
#include <algorithm>
#include <filesystem>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>

#include "cli/common.h"
#include "cli/model_dir.h"
#include "moe/core/error.h"
#include "moe/core/parallel.h"
#include "moe/infer/expert_predictor.h"
#include "moe/infer/expert_store.h"
#include "moe/text/tokenizer.h"
#include "moe/train/data.h"

namespace moe::cli {
namespace {

namespace fs = std::filesystem;

struct PredictorArgs {
  std::string model, calibration, out;
  int64_t depth = 2, seq_len = 0, max_tokens = 0, generate = 32;
  bool no_next_token = false;
  double holdout = 0.2;
  infer::PredictorFitOptions fit;
  bool json = false;
  int threads = 0;
};

// Runs `tokens` through the model in windows of seq_len with routing recorded: each window is a
// sequence, prefilled, then continued by `generate` greedily decoded tokens (what the pairs into the
// next token learn from).
infer::RoutingSamples record(infer::InferenceModel& im, const int32_t* tokens, int64_t n, int64_t seq_len,
                             int64_t generate) {
  infer::RoutingSamples all;
  im.store->take_routing();
  const int64_t ctx = im.model->config().max_position_embeddings;
  for (int64_t pos = 0; pos < n; pos += seq_len) {
    const int64_t len = std::min(seq_len, n - pos),
                  more = std::max<int64_t>(0, std::min(generate, ctx - len));
    model::KVCache cache = im.model->new_cache(len + more);
    im.store->record_routing(true);
    Tensor logits = im.model->decode(cache, tokens + pos, len);
    all.append(im.store->take_routing(), true, false);
    for (int64_t i = 0; i < more; ++i) {
      const float* l = logits.data<float>();
      const int32_t next = static_cast<int32_t>(std::max_element(l, l + logits.numel()) - l);
      logits = im.model->decode(cache, &next, 1);
      all.append(im.store->take_routing(), false, true);
    }
    im.store->record_routing(false);
  }
  return all;
}

int run_predictor(const PredictorArgs& a) {
  apply_threads(a.threads);
  const std::string dir = resolve_model_dir(a.model);
  MOE_CHECK(a.depth >= 1 && a.depth <= 8, "predictor: --depth must be in [1, 8], got ", a.depth);
  MOE_CHECK(a.holdout >= 0 && a.holdout < 1, "predictor: --holdout must be in [0, 1), got ", a.holdout);
  MOE_CHECK(a.max_tokens >= 0, "predictor: --max-tokens must be >= 0, got ", a.max_tokens);
  MOE_CHECK(a.generate >= 0, "predictor: --generate must be >= 0, got ", a.generate);
  const std::string tp = find_tokenizer(dir);
  MOE_CHECK(!tp.empty(), "predictor: no tokenizer.json next to the model in '", dir, "'");
  MOE_CHECK(fs::exists(a.calibration), "predictor: calibration file '", a.calibration, "' does not exist");
  std::vector<int32_t> toks = text::Tokenizer::load(tp).encode(train::read_text_corpus(a.calibration));
  const model::ModelConfig mc = model::load_model_config(dir + "/config.json");
  int64_t n_moe = 0;
  for (int64_t l = 0; l < mc.num_hidden_layers; ++l) n_moe += mc.is_moe_layer(l) ? 1 : 0;
  // The recorded router inputs are held in memory (n_moe · d floats a token): by default at most
  // 65,536 tokens of text and 2 GiB of them (the generated tokens add generate / seq_len more).
  const int64_t per_token = std::max<int64_t>(1, n_moe * mc.hidden_size * 4);
  const int64_t cap =
      a.max_tokens > 0 ? a.max_tokens : std::min<int64_t>(65536, (int64_t{2} << 30) / per_token);
  if (static_cast<int64_t>(toks.size()) > cap) toks.resize(static_cast<size_t>(cap));
  const int64_t n = static_cast<int64_t>(toks.size());
  const int64_t n_eval = static_cast<int64_t>(a.holdout * static_cast<double>(n));
  MOE_CHECK(n - n_eval >= 16, "predictor: ", n, " calibration tokens (from '", a.calibration,
            "', at most --max-tokens) leave ", n - n_eval,
            " to fit after the held-out share; at least 16 are needed");

  infer::InferenceLoadOptions lo;
  lo.offload = true;  // every expert resident, in a store that records the routing
  lo.store.resident_experts = -1;
  lo.store.prefetch = false;
  lo.store.predictor = "pregate";
  infer::InferenceModel im = infer::load_inference_model(dir, lo);
  const model::ModelConfig& c = im.model->config();
  const int64_t S = a.seq_len > 0 ? a.seq_len : std::min<int64_t>(c.max_position_embeddings, 256);
  MOE_CHECK(S <= c.max_position_embeddings, "predictor: --seq-len ", S, " exceeds the model's context ",
            c.max_position_embeddings);
  std::vector<int64_t> layers;
  for (int64_t l = 0; l < c.num_hidden_layers; ++l)
    if (im.model->moe_layer(l)) layers.push_back(l);

  const infer::RoutingSamples fit_s = record(im, toks.data(), n - n_eval, S, a.generate);
  const infer::PreGating pg(*im.model, a.depth);
  infer::PredictorFitOptions fo = a.fit;
  fo.next_token = !a.no_next_token;
  infer::ExpertPredictor p = infer::fit_expert_predictor(fit_s, layers, a.depth, fo, &pg);
  const std::string out = a.out.empty() ? (fs::path(dir) / infer::kExpertPredictorFile).string() : a.out;

  // recall on the held-out tokens (or on the fitted ones when there are none)
  const infer::RoutingSamples eval_s =
      n_eval > 0 ? record(im, toks.data() + (n - n_eval), n_eval, S, a.generate) : fit_s;
  const int64_t k = c.num_experts_per_tok;
  const int64_t k2 = std::min<int64_t>(2 * k, c.num_experts);
  const auto learned_k = infer::predictor_recall(p, eval_s, a.depth, k);
  const auto learned_2k = infer::predictor_recall(p, eval_s, a.depth, k2);
  const auto pregate_k = infer::predictor_recall(pg, eval_s, a.depth, k);
  const auto pregate_2k = infer::predictor_recall(pg, eval_s, a.depth, k2);
  const int64_t L = static_cast<int64_t>(layers.size());
  // pre-gating's recall of a pair, or -1 where it predicts nothing (the next token's layers)
  auto find = [](const std::vector<infer::PredictorRecall>& v, const infer::PredictorRecall& r) {
    for (const infer::PredictorRecall& x : v)
      if (x.li == r.li && x.dl == r.dl) return x.recall;
    return -1.0;
  };
  // A pair whose learned recall@k is below pre-gating's is left to pre-gating (its weights dropped).
  // Means are over the pairs within a token (where both predict) and over those into the next token.
  double mean_l = 0, mean_p = 0, mean_next = 0;
  int64_t n_within = 0, n_next = 0;
  std::vector<bool> kept(learned_k.size(), true);
  for (size_t i = 0; i < learned_k.size(); ++i) {
    const double pk = find(pregate_k, learned_k[i]);
    kept[i] = learned_k[i].recall >= pk;
    if (!kept[i]) p.W[learned_k[i].li][learned_k[i].dl - 1].clear();
    if (pk < 0) {
      mean_next += learned_k[i].recall, ++n_next;
    } else {
      mean_l += std::max(learned_k[i].recall, pk), mean_p += pk, ++n_within;
    }
  }
  infer::save_expert_predictor(p, out);
  if (n_within > 0) mean_l /= static_cast<double>(n_within), mean_p /= static_cast<double>(n_within);
  if (n_next > 0) mean_next /= static_cast<double>(n_next);
  auto to_layer = [&](const infer::PredictorRecall& r) {
    return layers[static_cast<size_t>(infer::predicted_layer(r.li, r.dl, L))];
  };
  auto next_token = [&](const infer::PredictorRecall& r) {
    return infer::predicted_token_offset(r.li, r.dl, L) > 0;
  };

  if (a.json) {
    auto opt = [](double v) { return v < 0 ? nlohmann::json() : nlohmann::json(v); };
    nlohmann::json pairs = nlohmann::json::array();
    for (size_t i = 0; i < learned_k.size(); ++i)
      pairs.push_back({{"from_layer", layers[learned_k[i].li]},
                       {"to_layer", to_layer(learned_k[i])},
                       {"next_token", next_token(learned_k[i])},
                       {"ahead", learned_k[i].dl},
                       {"uses", kept[i] ? "learned" : "pregate"},
                       {"learned_recall_at_k", learned_k[i].recall},
                       {"learned_recall_at_2k", learned_2k[i].recall},
                       {"pregate_recall_at_k", opt(find(pregate_k, learned_k[i]))},
                       {"pregate_recall_at_2k", opt(find(pregate_2k, learned_k[i]))}});
    std::cout << nlohmann::json{{"out", out},
                                {"fit_text_tokens", n - n_eval},
                                {"fit_tokens", fit_s.tokens()},
                                {"heldout_text_tokens", n_eval},
                                {"heldout_tokens", n_eval > 0 ? eval_s.tokens() : 0},
                                {"depth", a.depth},
                                {"k", k},
                                {"mean_recall_at_k", mean_l},
                                {"mean_pregate_recall_at_k", mean_p},
                                {"mean_next_token_recall_at_k", opt(n_next > 0 ? mean_next : -1.0)},
                                {"pairs", pairs}}
                     .dump()
              << "\n";
    return kExitOk;
  }
  std::cout << "fitted on " << fit_s.tokens() << " tokens (" << n - n_eval
            << " of text, the rest generated); recall on " << eval_s.tokens()
            << (n_eval > 0 ? " held-out" : " fitted (no held-out share)")
            << " tokens: the share of the experts a layer chose that are among the " << k << " (or " << k2
            << ") predicted\n";
  std::printf("%-14s %-6s %12s %12s %12s %12s %9s\n", "layers", "ahead", "learned@k", "pregate@k",
              "learned@2k", "pregate@2k", "uses");
  auto pct = [](double v) { return v < 0 ? std::string("-") : cat(round_to(100 * v, 1), "%"); };
  for (size_t i = 0; i < learned_k.size(); ++i) {
    const infer::PredictorRecall& r = learned_k[i];
    const std::string pair = cat(layers[r.li], "->", to_layer(r), next_token(r) ? " next" : "");
    std::printf("%-14s %-6lld %11.1f%% %12s %11.1f%% %12s %9s\n", pair.c_str(), (long long)r.dl,
                100 * r.recall, pct(find(pregate_k, r)).c_str(), 100 * learned_2k[i].recall,
                pct(find(pregate_2k, r)).c_str(), kept[i] ? "learned" : "pregate");
  }
  if (n_next > 0)
    std::printf("mean recall@%lld into the next token's layers (pre-gating has none): %.1f%%\n", (long long)k,
                100 * mean_next);
  if (n_within > 0)
    std::printf("mean recall@%lld within a token: with this predictor %.1f%%, pre-gating alone %.1f%%\n",
                (long long)k, 100 * mean_l, 100 * mean_p);
  std::printf("wrote %s\n", out.c_str());
  return kExitOk;
}

}  // namespace

void register_predictor(CLI::App& app, Registry& reg) {
  auto a = std::make_shared<PredictorArgs>();
  CLI::App* c = app.add_subcommand(
      "predictor",
      "Fit the expert predictor that prefetching uses (on calibration text) and report its recall");
  add_model_flag(c, a->model);
  c->add_option("--calibration", a->calibration,
                "Text file (or directory) encoded with the model's tokenizer")
      ->required();
  c->add_option("--depth", a->depth, "MoE layers ahead to predict")
      ->check(in_range(1, 1024))
      ->capture_default_str();
  c->add_option("--holdout", a->holdout,
                "Share of the calibration tokens (the last ones) kept out of the fit to "
                "measure recall")
      ->check(in_range(0, 1))
      ->capture_default_str();
  c->add_option("--out", a->out,
                "Predictor file (default: expert_predictor.safetensors in the model directory)");
  c->add_option("--seq-len", a->seq_len, "Calibration window length (default min(context, 256))")
      ->check(in_range(2, kMaxTokensFlag));
  c->add_option("--generate", a->generate,
                "Tokens decoded greedily after each calibration window (the pairs into the next token learn "
                "from them)")
      ->check(in_range(0, kMaxTokensFlag))
      ->capture_default_str();
  c->add_flag("--no-next-token", a->no_next_token,
              "Predict within a token only (no pairs into the next token's first layers)");
  c->add_option(
       "--max-tokens", a->max_tokens,
       "Calibration tokens used at most (0: 65,536, fewer when their router inputs would pass 2 GiB)")
      ->check(in_range(0, 1 << 30))
      ->capture_default_str();
  c->add_option("--epochs", a->fit.epochs, "Passes over the calibration tokens")
      ->check(in_range(1, kMaxRepsFlag))
      ->capture_default_str();
  c->add_option("--lr", a->fit.lr, "Adam learning rate of the fit")
      ->check(above_at_most(0, 1e3))
      ->capture_default_str();
  add_threads_flag(c, a->threads);
  add_json_flag(c, a->json);
  c->callback([&reg, a] { reg.action = [a] { return run_predictor(*a); }; });
}

}  // namespace moe::cli
