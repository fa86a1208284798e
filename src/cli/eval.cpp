// `moe eval --model DIR (--data FILE | --tokens 1,2,3) [--compare BASE_DIR] [--skip-threshold X] [--json]`:
// mean next-token cross-entropy, perplexity and token count. The tokens are cut into windows of
// --seq-len + 1 tokens that overlap by one, so every token but the first is predicted exactly once
// (context restarts per window). With --compare, both models run on the same tokens and the KL
// divergence KL(base || model) of their next-token distributions and their top-1 agreement are
// reported too (moe/infer/compare.h, docs/PRUNING.md); --skip-threshold applies to --model only.
#include <cmath>
#include <fstream>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>

#include "cli/common.h"
#include "cli/ep_flags.h"
#include "cli/model_dir.h"
#include "cli/offload_flags.h"
#include "moe/core/error.h"
#include "moe/core/parallel.h"
#include "moe/infer/compare.h"
#include "moe/infer/evaluate.h"
#include "moe/model/transformer.h"
#include "moe/text/tokenizer.h"
#include "moe/train/data.h"

namespace moe::cli {
namespace {

struct EvalArgs {
  std::string model, data, compare;
  std::vector<int64_t> tokens;
  int64_t seq_len = 0, batch = 8;
  InferenceRouting routing;  // --skip-threshold, --router-top-p
  bool json = false;
  int threads = 0;
  OffloadFlags offload;
  EpFlags ep;
};

// --compare: both models on the same tokens.
int run_compare(const EvalArgs& a, const model::Transformer& m, const std::string& dir,
                const std::string& base_dir, const std::vector<int32_t>& toks, int64_t S) {
  const infer::InferenceModel base_im =
      load_for_inference(base_dir, false, OffloadFlags());  // quantized bases too
  const model::Transformer& base = *base_im.model;
  MOE_CHECK(base.config().vocab_size == m.config().vocab_size, "eval: --compare: the base model has ",
            base.config().vocab_size, " tokens in its vocabulary, the model ", m.config().vocab_size);
  MOE_CHECK(S <= base.config().max_position_embeddings, "eval: --seq-len ", S,
            " exceeds the base model's context ", base.config().max_position_embeddings);
  const infer::CompareResult r = infer::compare_models(base, m, toks, S, a.batch);
  if (a.json) {
    std::cout << nlohmann::json{{"model", dir},
                                {"base", base_dir},
                                {"tokens", r.tokens},
                                {"loss", r.loss},
                                {"ppl", std::exp(r.loss)},
                                {"base_loss", r.base_loss},
                                {"base_ppl", std::exp(r.base_loss)},
                                {"kl_mean", r.kl_mean},
                                {"kl_max", r.kl_max},
                                {"top1_agreement", r.top1_agreement}}
                     .dump()
              << "\n";
  } else {
    std::cout << "model ppl " << std::exp(r.loss) << "  base ppl " << std::exp(r.base_loss)
              << "  KL(base||model) mean " << r.kl_mean << " max " << r.kl_max << "  top-1 agreement "
              << r.top1_agreement << "  tokens " << r.tokens << "\n";
  }
  return kExitOk;
}

// Whether path starts with the magic of a token shard (moe/train/data.h).
bool is_token_shard(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  char magic[8] = {};
  f.read(magic, 8);
  return f.gcount() == 8 && std::string(magic, 7) == "MOETOK1";
}

// Under expert parallelism every rank runs the same evaluation on the same tokens (the MoE layers'
// all-reduce keeps them in step and gives every rank the same results); rank 0 prints.
int run_eval(const EvalArgs& a, std::shared_ptr<dist::Communicator> ep) {
  MOE_CHECK(a.data.empty() != a.tokens.empty(), "eval: give exactly one of --data FILE and --tokens LIST");
  MOE_CHECK(!ep || a.compare.empty(), "eval: --compare runs in one process (the base model is not sharded)");
  const std::string dir = resolve_model_dir(a.model);
  const std::string base_dir = a.compare.empty() ? std::string() : resolve_model_dir(a.compare);
  infer::InferenceModel im = load_for_inference(dir, false, a.offload, ep);
  model::Transformer& m = *im.model;
  apply_inference_routing(m, a.routing);
  const int64_t V = m.config().vocab_size;
  std::vector<int32_t> toks;
  if (!a.data.empty() && is_token_shard(a.data)) {
    // A token shard of `moe train` (RUN/data/val.bin): ids as they are, checked against the vocabulary.
    toks = train::TokenShard(a.data).to_vector();
    for (size_t i = 0; i < toks.size(); ++i)
      MOE_CHECK(toks[i] >= 0 && toks[i] < V, "eval: token ", i, " = ", toks[i], " of '", a.data,
                "' is outside the model's vocabulary [0, ", V, ")");
  } else if (!a.data.empty()) {
    const std::string tp = find_tokenizer(dir);
    MOE_CHECK(!tp.empty(), "eval: --data needs a tokenizer.json next to the model in '", dir,
              "'; use --tokens");
    const std::string text = train::read_text_corpus(a.data);
    toks = load_tokenizer(tp).encode(text);
    if (!base_dir.empty()) {
      const std::string btp = find_tokenizer(base_dir);
      MOE_CHECK(!btp.empty(), "eval: --compare: no tokenizer.json next to the base model in '", base_dir,
                "'");
      MOE_CHECK(load_tokenizer(btp).encode(text) == toks, "eval: --compare: the tokenizers '", tp, "' and '",
                btp, "' encode --data differently; the models must share a tokenizer");
    }
  } else {
    for (size_t i = 0; i < a.tokens.size(); ++i) {
      MOE_CHECK(a.tokens[i] >= 0 && a.tokens[i] < V, "eval: --tokens entry ", i, " = ", a.tokens[i],
                " is outside the vocabulary [0, ", V, ")");
      toks.push_back(static_cast<int32_t>(a.tokens[i]));
    }
  }
  MOE_CHECK(toks.size() >= 2, "eval: need at least 2 tokens, got ", toks.size());
  const int64_t S = a.seq_len > 0 ? a.seq_len : std::min<int64_t>(m.config().max_position_embeddings, 512);
  MOE_CHECK(S <= m.config().max_position_embeddings, "eval: --seq-len ", S, " exceeds the model's context ",
            m.config().max_position_embeddings);
  MOE_CHECK(a.batch >= 1, "eval: --batch must be >= 1");
  if (!base_dir.empty()) return run_compare(a, m, dir, base_dir, toks, S);
  const infer::EvalResult r = infer::evaluate_tokens(m, toks, S, a.batch);
  if (ep && ep->rank() != 0) return kExitOk;
  const int64_t count = r.tokens, skipped = r.skipped, routed = r.routed;
  const double mean = r.loss();
  if (a.json) {
    nlohmann::json j = {{"loss", mean}, {"ppl", std::exp(mean)}, {"tokens", count}, {"model", dir}};
    if (ep) j["expert_parallel"] = ep->size();
    if (a.routing.skip_threshold > 0)
      j["skipped_share"] = static_cast<double>(skipped) / static_cast<double>(std::max<int64_t>(routed, 1));
    if (!r.routed_per_layer.empty()) {
      j["mean_k"] = r.mean_k();
      std::vector<double> per_layer;
      for (size_t l = 0; l < r.routed_per_layer.size(); ++l) per_layer.push_back(r.mean_k(l));
      j["mean_k_per_layer"] = per_layer;
    }
    std::cout << j.dump() << "\n";
  } else {
    std::cout << "loss " << mean << "  ppl " << std::exp(mean) << "  tokens " << count;
    if (a.routing.skip_threshold > 0)
      std::cout << "  experts skipped "
                << 100.0 * static_cast<double>(skipped) / static_cast<double>(std::max<int64_t>(routed, 1))
                << "%";
    if (!r.routed_per_layer.empty()) std::cout << "  mean k " << r.mean_k();
    std::cout << "\n";
  }
  return kExitOk;
}

}  // namespace

void register_eval(CLI::App& app, Registry& reg) {
  auto a = std::make_shared<EvalArgs>();
  CLI::App* c = app.add_subcommand("eval", "Cross-entropy and perplexity of a model on text or tokens");
  add_model_flag(c, a->model);
  c->add_option(
      "--data", a->data,
      "Text file (or directory) encoded with the model's tokenizer.json, or a token shard of `moe train` "
      "(RUN/data/val.bin)");
  c->add_option("--tokens", a->tokens, "Comma-separated token ids")
      ->check(in_range(0, 1 << 22))
      ->delimiter(',');
  c->add_option("--seq-len", a->seq_len, "Window length (default min(context, 512))")
      ->check(in_range(2, kMaxTokensFlag));
  c->add_option("--batch", a->batch, "Windows per forward pass")
      ->check(in_range(1, 1 << 16))
      ->capture_default_str();
  add_threads_flag(c, a->threads);
  c->add_option("--compare", a->compare,
                "Base model directory: also report its perplexity, KL(base || model) and top-1 agreement");
  add_inference_routing_flags(c, a->routing,
                              "Skip routed experts of --model whose routing weight is below this (0 = off)");
  add_json_flag(c, a->json);
  add_offload_flags(c, a->offload);
  add_ep_flags(c, a->ep);
  c->callback([&reg, a] {
    reg.action = [a] {
      return with_ep_ranks(a->ep, a->threads, [&](auto ep) { return run_eval(*a, std::move(ep)); });
    };
  });
}

}  // namespace moe::cli
