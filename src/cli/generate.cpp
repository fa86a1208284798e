// `moe generate --model DIR --prompt TEXT [--max-tokens N --temperature T --top-p P --top-k K
// --seed S] [--bf16] [--skip-threshold X] [--json] [--expert-parallel N]`: continues the prompt with
// a KV cache, printing the text as it is made. Under `mpirun -np N ... --expert-parallel N` the
// experts are sharded over the ranks and rank 0 prints (the engine's path: moe/infer/lockstep.h).
#include <cmath>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>

#include "cli/common.h"
#include "cli/ep_flags.h"
#include "cli/model_dir.h"
#include "cli/offload_flags.h"
#include "moe/core/error.h"
#include "moe/core/parallel.h"
#include "moe/infer/engine.h"
#include "moe/infer/generate.h"
#include "moe/text/tokenizer.h"

namespace moe::cli {
namespace {

struct GenArgs {
  std::string model, prompt;
  infer::GenerateOptions opt;
  bool json = false;
  bool bf16 = false;
  InferenceRouting routing;  // --skip-threshold, --router-top-p
  int threads = 0;
  OffloadFlags offload;
  EpFlags ep;
};

// generate() through the engine, leading the expert-parallel ranks: the same tokens (the engine's
// greedy outputs equal generate()'s), timings from the request's first token.
infer::GenerateResult generate_lockstep(const model::Transformer& m, const std::vector<int32_t>& prompt,
                                        const infer::GenerateOptions& opt,
                                        const std::function<bool(int32_t)>& on_token,
                                        std::shared_ptr<infer::Lockstep> ls) {
  infer::EngineOptions eo;
  eo.max_running = 1;
  eo.max_queue = 1;
  eo.max_batch_tokens = std::max<int64_t>(1, static_cast<int64_t>(prompt.size()));  // one prefill pass
  eo.lockstep = ls;
  infer::Request r;
  r.prompt = prompt;
  const int64_t room = m.config().max_position_embeddings - static_cast<int64_t>(prompt.size());
  MOE_CHECK(room >= 0, "generate: the prompt (", prompt.size(),
            " tokens) is longer than the model's context of ", m.config().max_position_embeddings);
  r.max_new_tokens = std::min(opt.max_new_tokens, room);
  r.sampling = opt.sampling;
  if (opt.eos_id >= 0) r.stop_ids = {opt.eos_id};
  r.on_token = on_token;
  infer::Finished f;
  {
    infer::Engine eng(m, eo);
    f = eng.run_all({std::move(r)}).at(0);
  }
  MOE_CHECK(f.finish_reason != "error", "generate: ", f.error);
  infer::GenerateResult g;
  g.tokens = f.tokens;
  const bool eos = !g.tokens.empty() && g.tokens.back() == opt.eos_id;
  g.finish_reason = f.finish_reason == "length" ? "length" : eos ? "eos" : "stopped";
  g.prefill_s = f.ttft_s;
  g.decode_s = f.total_s - f.ttft_s;
  return g;
}

int run_generate(GenArgs& a, std::shared_ptr<dist::Communicator> ep) {
  a.opt.sampling.validate();
  const std::string dir = resolve_model_dir(a.model);
  const std::string tp = find_tokenizer(dir);
  MOE_CHECK(!tp.empty(), "generate: no tokenizer.json next to the model in '", dir, "'");
  const text::Tokenizer tok = load_tokenizer(tp);
  infer::InferenceModel im = load_for_inference(dir, a.bf16, a.offload, ep);
  model::Transformer& m = *im.model;
  apply_inference_routing(m, a.routing);
  std::shared_ptr<infer::Lockstep> ls = ep ? std::make_shared<infer::Lockstep>(ep) : nullptr;
  if (ls && !ls->leader()) return run_follower(*ls, m);
  MOE_CHECK(tok.vocab_size() <= m.config().vocab_size, "generate: the tokenizer has ", tok.vocab_size(),
            " tokens but the model only ", m.config().vocab_size);
  // The special tokens of the file's post-processor (<s> for Llama-style files), as transformers adds them.
  std::vector<int32_t> prompt = tok.encode(a.prompt, {.add_special_tokens = true});
  if (prompt.empty()) {
    MOE_CHECK(tok.eos_id() >= 0,
              "generate: empty prompt and the tokenizer has no end-of-text token to start from");
    prompt.push_back(tok.eos_id());  // start a new document
  }
  a.opt.eos_id = tok.eos_id();
  if (!a.json) std::cout << a.prompt << std::flush;
  auto on_token = [&](int32_t t) {
    // A model may have more ids than its tokenizer (vocabulary padding): those print nothing.
    if (!a.json && t != tok.eos_id() && t < tok.vocab_size()) std::cout << tok.token_bytes(t) << std::flush;
    return true;
  };
  infer::GenerateResult r;
  if (ls) {
    try {
      r = generate_lockstep(m, prompt, a.opt, on_token, ls);
    } catch (...) {
      if (!ls->failed()) ls->announce_stop();
      throw;
    }
    ls->announce_stop();
  } else {
    r = infer::generate(m, prompt, a.opt, on_token);
  }
  std::vector<int32_t> shown;
  for (int32_t t : r.tokens)
    if (t != tok.eos_id() && t < tok.vocab_size()) shown.push_back(t);
  const double tps = r.decode_s > 0 ? static_cast<double>(r.tokens.size()) / r.decode_s : 0;
  if (a.json) {
    nlohmann::json j = {{"prompt", a.prompt},
                        {"text", tok.decode(shown)},
                        {"tokens", r.tokens},
                        {"prompt_tokens", prompt.size()},
                        {"finish_reason", r.finish_reason},
                        {"prefill_s", r.prefill_s},
                        {"decode_tokens_per_s", tps}};
    if (im.store) j["experts"] = store_json(im.store->stats());
    if (ep) j["expert_parallel"] = ep->size();
    std::cout << j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) << "\n";
  } else {
    std::cout << "\n";
    std::cerr << "[" << r.tokens.size() << " tokens, " << static_cast<int64_t>(tps) << " tokens/s, "
              << r.finish_reason << "]\n";
    if (im.store)
      std::cerr << "[" << im.store->describe() << "; " << store_summary(im.store->stats()) << "]\n";
  }
  return kExitOk;
}

}  // namespace

void register_generate(CLI::App& app, Registry& reg) {
  auto a = std::make_shared<GenArgs>();
  CLI::App* c =
      app.add_subcommand("generate", "Continue a prompt with a model (KV cache; greedy at temperature 0)");
  add_model_flag(c, a->model);
  c->add_option("--prompt", a->prompt, "Text to continue")->required();
  c->add_option("--max-tokens", a->opt.max_new_tokens, "New tokens at most")
      ->check(in_range(0, kMaxTokensFlag))
      ->capture_default_str();
  c->add_option("--temperature", a->opt.sampling.temperature, "0 = greedy")
      ->check(in_range(0, 1e6))
      ->capture_default_str();
  c->add_option("--top-p", a->opt.sampling.top_p, "Nucleus sampling mass")
      ->check(above_at_most(0, 1))
      ->capture_default_str();
  c->add_option("--top-k", a->opt.sampling.top_k, "Sample among the k most likely (0 = all)")
      ->check(in_range(0, 1 << 22))
      ->capture_default_str();
  add_seed_flag(c, a->opt.sampling.seed, "the sampling");
  c->add_option("--repetition-penalty", a->opt.sampling.repetition_penalty,
                "Divide positive (multiply negative) logits of tokens already seen (1 = off)")
      ->check(above_at_most(0, 1e6))
      ->capture_default_str();
  c->add_option("--frequency-penalty", a->opt.sampling.frequency_penalty,
                "Subtract this times each token's count in the output, in [-2, 2]")
      ->check(in_range(-2, 2))
      ->capture_default_str();
  c->add_option("--presence-penalty", a->opt.sampling.presence_penalty,
                "Subtract this from tokens present in the output, in [-2, 2]")
      ->check(in_range(-2, 2))
      ->capture_default_str();
  add_threads_flag(c, a->threads);
  c->add_flag("--bf16", a->bf16, "bf16 weights (fp32 accumulation): half the bytes read per token");
  add_inference_routing_flags(
      c, a->routing, "Skip routed experts whose routing weight is below this (0 = off; docs/PRUNING.md)");
  add_json_flag(c, a->json, "Print one JSON object instead of streaming text");
  add_offload_flags(c, a->offload);
  add_ep_flags(c, a->ep);
  c->callback([&reg, a] {
    reg.action = [a] {
      return with_ep_ranks(a->ep, a->threads, [&](auto ep) { return run_generate(*a, std::move(ep)); });
    };
  });
}

}  // namespace moe::cli
