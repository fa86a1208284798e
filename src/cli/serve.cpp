// `moe serve --model DIR [--host H] [--port P] ...`: an OpenAI-compatible HTTP server (docs/SERVING.md).
// Prints one line "listening on http://HOST:PORT" once it accepts connections; SIGINT/SIGTERM stop it
// (requests in flight are cancelled) and it exits 0.
#include <pthread.h>
#include <signal.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>
#include <thread>

#include "cli/common.h"
#include "cli/ep_flags.h"
#include "cli/model_dir.h"
#include "cli/offload_flags.h"
#include "moe/core/error.h"
#include "moe/core/parallel.h"
#include "moe/infer/server.h"
#include "moe/text/tokenizer.h"

namespace moe::cli {
namespace {

struct ServeArgs {
  std::string model, chat_template;
  infer::ServerOptions opt;
  int threads = 0;
  bool bf16 = false;
  OffloadFlags offload;
  InferenceRouting routing;  // --skip-threshold, --router-top-p
  EpFlags ep;
};

// tokenizer_config.json's token fields are a string or {"content": string}.
std::string token_text(const nlohmann::json& v) {
  if (v.is_string()) return v.get<std::string>();
  if (v.is_object() && v.contains("content") && v["content"].is_string())
    return v["content"].get<std::string>();
  return "";
}

// The chat template: --chat-template, else tokenizer_config.json's chat_template, else the
// model family's when the tokenizer has its tokens, else plain.
text::ChatTemplate choose_template(const std::string& name, const std::string& tokenizer_path,
                                   const model::ModelConfig& cfg, const text::Tokenizer& tok) {
  namespace fs = std::filesystem;
  nlohmann::json tc;
  const fs::path tc_path = fs::path(tokenizer_path).parent_path() / "tokenizer_config.json";
  if (fs::exists(tc_path)) {
    std::ifstream f(tc_path);
    try {
      tc = nlohmann::json::parse(f);
    } catch (const nlohmann::json::exception& e) {
      throw Error(cat(tc_path.string(), ": invalid JSON: ", e.what()));
    }
  }
  text::ChatFormat fmt = text::ChatFormat::Plain;
  bool known = false;
  if (!name.empty()) {
    fmt = text::chat_format_from_name(name);
    known = true;
  }
  if (!known && tc.is_object() && tc.contains("chat_template")) {
    std::string jinja;
    const nlohmann::json& ct = tc["chat_template"];
    if (ct.is_string()) jinja = ct.get<std::string>();
    if (ct.is_array())  // [{"name": "default", "template": "..."}, ...]
      for (const auto& x : ct)
        if (x.is_object() && x.value("name", "") == "default" && x.contains("template") &&
            x["template"].is_string())
          jinja = x["template"].get<std::string>();
    known = text::chat_format_from_jinja(jinja, &fmt);
  }
  if (!known) {
    text::ChatFormat family = text::ChatFormat::Plain;
    switch (cfg.arch) {
      case model::Arch::Qwen2Moe:
        family = text::ChatFormat::Qwen2;
        break;
      case model::Arch::Qwen3Moe:
        family = text::ChatFormat::ChatMl;
        break;
      case model::Arch::Mixtral:
        family = text::ChatFormat::Mistral;
        break;
      case model::Arch::Olmoe:
        family = text::ChatFormat::Tulu;
        break;
      case model::Arch::DeepseekV3:
        family = text::ChatFormat::DeepSeek;
        break;
    }
    // Models trained here are qwen3_moe without chat tokens: those get the plain format.
    const text::ChatTemplate t = text::default_chat_template(family);
    if (family != text::ChatFormat::Plain && tok.token_id(t.end_of_turn()) >= 0) fmt = family;
  }
  text::ChatTemplate t = text::default_chat_template(fmt);
  if (tc.is_object()) {
    if (tc.contains("bos_token") && !tc["bos_token"].is_null()) t.bos_token = token_text(tc["bos_token"]);
    if (tc.contains("eos_token") && !tc["eos_token"].is_null()) t.eos_token = token_text(tc["eos_token"]);
  }
  if (fmt == text::ChatFormat::Plain && tok.eos_id() >= 0) t.eos_token = tok.token_bytes(tok.eos_id());
  return t;
}

sigset_t stop_signals() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  return set;
}

int run_serve(ServeArgs& a, std::shared_ptr<dist::Communicator> ep) {
  if (a.opt.api_key.empty())
    if (const char* k = std::getenv("MOE_API_KEY")) a.opt.api_key = k;
  a.opt.validate();
  if (!a.chat_template.empty()) text::chat_format_from_name(a.chat_template);  // a bad name fails first
  const std::string dir = resolve_model_dir(a.model);
  const std::string tp = find_tokenizer(dir);
  MOE_CHECK(!tp.empty(), "serve: no tokenizer.json next to the model in '", dir, "'");
  text::Tokenizer tok = load_tokenizer(tp);
  infer::InferenceModel im = load_for_inference(dir, a.bf16, a.offload, ep);
  model::Transformer& m = *im.model;
  apply_inference_routing(m, a.routing);
  if (ep) {  // rank 0 serves; the others repeat its forward passes
    a.opt.engine.lockstep = std::make_shared<infer::Lockstep>(ep);
    if (!a.opt.engine.lockstep->leader()) {
      const sigset_t set = stop_signals();  // a follower ends on the signals mpirun forwards
      pthread_sigmask(SIG_UNBLOCK, &set, nullptr);
      return run_follower(*a.opt.engine.lockstep, m);
    }
  }
  a.opt.expert_store = im.store;
  if (im.store) std::cerr << "serve: " << im.store->describe() << "\n";
  const model::ModelConfig& cfg = m.config();
  MOE_CHECK(tok.vocab_size() <= cfg.vocab_size, "serve: the tokenizer has ", tok.vocab_size(),
            " tokens but the model only ", cfg.vocab_size);
  const text::ChatTemplate chat = choose_template(a.chat_template, tp, cfg, tok);
  std::vector<int32_t> stop_ids;
  auto add_stop = [&](int64_t id) {
    if (id >= 0 && id < cfg.vocab_size && std::find(stop_ids.begin(), stop_ids.end(), id) == stop_ids.end())
      stop_ids.push_back(static_cast<int32_t>(id));
  };
  add_stop(tok.eos_id());
  add_stop(cfg.eos_token_id);
  add_stop(tok.token_id(chat.end_of_turn()));
  if (a.opt.served_model_name.empty())
    a.opt.served_model_name = std::filesystem::path(a.model).filename().string();

  // SIGINT/SIGTERM are blocked in every thread since the start (register_serve) and taken by one
  // watcher thread, which stops the server. Writes to a closed socket must not kill the process.
  signal(SIGPIPE, SIG_IGN);
  const sigset_t set = stop_signals();
  std::string fatal;
  {  // the server (and its engine thread, which leads the other ranks) ends with this block
    infer::Server server(m, tok, chat, stop_ids, a.opt);
    const int port = server.bind();
    std::thread watcher([&server, set] {
      int sig = 0;
      sigwait(&set, &sig);
      server.stop();
    });
    std::cerr << "moe serve: " << model::arch_name(cfg.arch) << " model '" << a.opt.served_model_name
              << "', context " << cfg.max_position_embeddings << ", chat template "
              << text::chat_format_name(chat.format) << ", " << num_threads() << " threads"
              << (ep ? cat(", experts over ", ep->size(), " ranks") : std::string())
              << (a.opt.api_key.empty() ? "" : ", API key required") << "\n";
    std::cout << "listening on http://" << a.opt.host << ":" << port << std::endl;
    server.run();
    server.stop();
    pthread_kill(watcher.native_handle(), SIGTERM);  // wakes the watcher when run() ended by itself
    watcher.join();
    fatal = server.fatal_error();
  }
  if (!fatal.empty()) throw dist::CommError(cat("serve: ", fatal));  // with_ep_ranks ends the job
  if (ep) a.opt.engine.lockstep->announce_stop();
  std::cerr << "moe serve: stopped\n";
  return kExitOk;
}

}  // namespace

void register_serve(CLI::App& app, Registry& reg) {
  auto a = std::make_shared<ServeArgs>();
  infer::ServerOptions& o = a->opt;
  CLI::App* c = app.add_subcommand("serve", "OpenAI-compatible HTTP server (continuous batching)");
  add_model_flag(c, a->model);
  c->add_option("--host", o.host, "Address to listen on")->capture_default_str();
  c->add_option("--port", o.port, "Port (0 = any free port)")
      ->check(in_range(0, 65535))
      ->capture_default_str();
  c->add_option("--api-key", o.api_key,
                "Require 'Authorization: Bearer KEY' on /v1/* (default: env MOE_API_KEY)");
  add_threads_flag(c, a->threads);
  c->add_flag("--bf16", a->bf16, "bf16 weights (fp32 accumulation): half the bytes read per token");
  add_offload_flags(c, a->offload);
  add_ep_flags(c, a->ep);
  add_inference_routing_flags(
      c, a->routing, "Skip routed experts whose routing weight is below this (0 = off; docs/PRUNING.md)");
  c->add_option("--max-batch-tokens", o.engine.max_batch_tokens, "Tokens in one forward pass")
      ->check(in_range(1, infer::kMaxBatchTokens))
      ->capture_default_str();
  c->add_option("--max-running", o.engine.max_running, "Requests decoded at once")
      ->check(in_range(1, infer::kMaxRunning))
      ->capture_default_str();
  c->add_option("--max-queue", o.engine.max_queue, "Requests waiting at most (beyond: 429)")
      ->check(in_range(0, infer::kMaxQueue))
      ->capture_default_str();
  c->add_option("--max-body-bytes", o.max_body_bytes, "Largest request body (beyond: 413)")
      ->check(in_range(1, infer::kMaxBodyBytes))
      ->capture_default_str();
  c->add_option("--max-prompt-tokens", o.max_prompt_tokens, "Longest prompt accepted (0 = the context - 1)")
      ->check(in_range(0, kMaxTokensFlag))
      ->capture_default_str();
  c->add_option("--max-tokens-limit", o.max_tokens_limit, "Largest max_tokens accepted (0 = the context)")
      ->check(in_range(0, kMaxTokensFlag))
      ->capture_default_str();
  c->add_option(
      "--chat-template", a->chat_template,
      "chatml, qwen2, mistral, tulu, deepseek or plain (default: from tokenizer_config.json / the model)");
  c->add_option("--served-model-name", o.served_model_name,
                "Model id in the API (default: the directory name)");
  c->callback([&reg, a] {
    reg.action = [a] {
      // Blocked before any thread starts (the library's, OpenMP's, MPI's): every thread inherits it,
      // so the signals reach only the watcher of run_serve.
      const sigset_t set = stop_signals();
      pthread_sigmask(SIG_BLOCK, &set, nullptr);
      return with_ep_ranks(a->ep, a->threads, [&](auto ep) { return run_serve(*a, std::move(ep)); });
    };
  });
}

}  // namespace moe::cli
