// The HTTP layer of `moe serve` (cpp-httplib): routes, authentication, limits, and the hand-over
// of tokens from the engine thread to the HTTP worker threads.
#include "moe/infer/server.h"

#include "moe/core/energy.h"

#include <httplib.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <ctime>
#include <random>
#include <sstream>
#include <thread>

namespace moe::infer {

using nlohmann::json;
using Clock = std::chrono::steady_clock;

void ServerOptions::validate() const {
  MOE_CHECK(port >= 0 && port <= 65535, "serve: --port must be in [0, 65535], got ", port);
  MOE_CHECK(max_body_bytes >= 1 && max_body_bytes <= kMaxBodyBytes, "serve: --max-body-bytes must be in [1, ",
            kMaxBodyBytes, "], got ", max_body_bytes);
  MOE_CHECK(max_prompt_tokens >= 0, "serve: --max-prompt-tokens must be >= 0, got ", max_prompt_tokens);
  MOE_CHECK(max_tokens_limit >= 0, "serve: --max-tokens-limit must be >= 0, got ", max_tokens_limit);
  MOE_CHECK(http_threads >= 0 && http_threads <= kMaxHttpThreads, "serve: http_threads must be in [0, ",
            kMaxHttpThreads, "], got ", http_threads);
  engine.validate();
}

namespace {

// One generation request as both threads see it. The engine thread owns `text`; the rest is
// guarded by mu.
struct Live {
  std::mutex mu;
  std::condition_variable cv;
  std::string released;  // text released by the engine thread, not yet taken by the HTTP thread
  bool done = false;
  Finished fin;
  TextStream text;
};

const char* kKnownPaths[] = {"/health", "/v1/models", "/metrics", "/v1/completions", "/v1/chat/completions"};

// A request body, read as it arrives; more than max_bytes (chunked or not) is a 413 and the
// connection is closed (the rest of the body is never read).
std::string read_body(const httplib::Request& req, const httplib::ContentReader& reader, int64_t max_bytes,
                      httplib::Response& res) {
  std::string body;
  // A declared length over the limit is refused without reading (the library then skips the body).
  bool too_large = req.has_header("Content-Length") &&
                   req.get_header_value<uint64_t>("Content-Length") > static_cast<uint64_t>(max_bytes);
  if (!too_large)
    reader([&](const char* data, size_t n) {
      if (body.size() + n > static_cast<size_t>(max_bytes)) {
        too_large = true;
        return false;
      }
      body.append(data, n);
      return true;
    });
  if (too_large) {
    res.set_header("Connection", "close");
    throw ApiError(413, cat("the request body is larger than ", max_bytes, " bytes (--max-body-bytes)"),
                   "invalid_request_error", "", "payload_too_large");
  }
  return body;
}

std::string random_id(const char* prefix) {
  static const char* hex = "0123456789abcdef";
  thread_local std::mt19937_64 rng{std::random_device{}()};
  std::string s = prefix;
  uint64_t x = rng();
  for (int i = 0; i < 16; ++i, x >>= 4) s += hex[x & 15];
  return s;
}

}  // namespace

struct Server::Impl {
  const model::Transformer& model;
  text::Tokenizer tok;
  text::ChatTemplate chat;
  std::vector<int32_t> stop_ids;
  std::vector<char> hidden;  // per model token id: prints nothing (stop ids, special tokens, padding ids)
  ServerOptions opt;
  int64_t ctx = 0;
  std::unique_ptr<Engine> engine;
  httplib::Server http;
  ServerMetrics metrics;
  Clock::time_point start = Clock::now();
  std::atomic<bool> stopping{false};
  std::mutex live_mu;
  std::map<uint64_t, std::shared_ptr<Live>> live;
  std::mutex rate_mu;  // generation rate between /metrics scrapes
  Clock::time_point rate_t = Clock::now();
  int64_t rate_tokens = 0;
  double rate = 0;
  std::mutex energy_mu;  // the energy counters, read at each /metrics scrape
  EnergyMeter energy;
  // A fatal engine error (expert parallelism lost a rank): the requests in flight get their 503s,
  // then this thread stops the HTTP server so that run() returns.
  std::mutex fatal_mu;
  std::condition_variable fatal_cv;
  bool fatal = false, closing = false;  // fatal_mu
  std::thread fatal_stopper;

  Impl(const model::Transformer& m, text::Tokenizer t, text::ChatTemplate c, std::vector<int32_t> stops,
       ServerOptions o)
      : model(m), tok(std::move(t)), chat(std::move(c)), stop_ids(std::move(stops)), opt(std::move(o)) {
    opt.validate();
    ctx = model.config().max_position_embeddings;
    if (opt.served_model_name.empty()) opt.served_model_name = "moe";
    const int64_t V = model.config().vocab_size;
    hidden.assign(static_cast<size_t>(V), 0);
    for (int64_t i = tok.vocab_size(); i < V; ++i) hidden[static_cast<size_t>(i)] = 1;
    for (const text::AddedToken& a : tok.added_tokens())
      if (a.special && a.id >= 0 && a.id < V) hidden[static_cast<size_t>(a.id)] = 1;
    for (int32_t s : stop_ids)
      if (s >= 0 && s < V) hidden[static_cast<size_t>(s)] = 1;
    if (opt.engine.lockstep) {
      opt.engine.on_fatal = [this](const std::string&) {
        std::lock_guard<std::mutex> lk(fatal_mu);
        fatal = true;
        fatal_cv.notify_all();
      };
      fatal_stopper = std::thread([this] {
        std::unique_lock<std::mutex> lk(fatal_mu);
        fatal_cv.wait(lk, [&] { return fatal || closing; });
        if (closing) return;
        // Time for the HTTP threads to write the 503s of the requests that just failed.
        fatal_cv.wait_for(lk, std::chrono::milliseconds(500), [&] { return closing; });
        lk.unlock();
        stopping = true;
        http.stop();
      });
    }
    engine = std::make_unique<Engine>(model, opt.engine);
    routes();
  }
  ~Impl() {
    {
      std::lock_guard<std::mutex> lk(fatal_mu);
      closing = true;
      fatal_cv.notify_all();
    }
    if (fatal_stopper.joinable()) fatal_stopper.join();
  }

  // The status of a request that ended with an error: 503 once the engine stopped on a fatal error
  // (no later request can succeed), else 500.
  int error_status() const { return engine->fatal_error().empty() ? 500 : 503; }

  void routes();
  void authenticate(const httplib::Request& req) const;
  std::vector<int32_t> prompt_tokens(const CompletionParams& p) const;
  void generate(const httplib::Request& req, const std::string& req_body, httplib::Response& res,
                bool chat_endpoint);
  std::string metrics_text();
  std::string energy_text(const EngineStats& s);

  void forget(uint64_t id) {
    std::lock_guard<std::mutex> lock(live_mu);
    live.erase(id);
  }
};

void Server::Impl::authenticate(const httplib::Request& req) const {
  if (opt.api_key.empty()) return;
  const std::string h = req.get_header_value("Authorization");
  const std::string want = "Bearer " + opt.api_key;
  if (h.empty())
    throw ApiError(401, "missing API key: send 'Authorization: Bearer KEY'", "authentication_error", "",
                   "invalid_api_key");
  if (h != want) throw ApiError(401, "invalid API key", "authentication_error", "", "invalid_api_key");
}

std::vector<int32_t> Server::Impl::prompt_tokens(const CompletionParams& p) const {
  std::vector<int32_t> ids;
  if (p.chat) {
    std::string text;
    try {
      text = text::apply_chat_template(chat, p.messages);
    } catch (const ApiError&) {
      throw;
    } catch (const Error& e) {
      throw ApiError(400, e.what(), "invalid_request_error", "messages");
    }
    ids = tok.encode(text);
  } else if (p.prompt_is_tokens) {
    const int64_t V = model.config().vocab_size;
    for (size_t i = 0; i < p.prompt_tokens.size(); ++i)
      if (p.prompt_tokens[i] >= V)
        throw ApiError(
            400,
            cat("'prompt[", i, "]' = ", p.prompt_tokens[i], " is outside the vocabulary of ", V, " tokens"),
            "invalid_request_error", "prompt");
    ids = p.prompt_tokens;
  } else {
    text::EncodeOptions eo;
    eo.add_special_tokens = true;  // as Hugging Face tokenizers do by default: BOS for Mixtral, DeepSeek-V3
    ids = tok.encode(p.prompt, eo);
  }
  if (ids.empty()) {  // start a new document, as `moe generate` does
    if (tok.eos_id() < 0) throw ApiError(400, "the prompt is empty", "invalid_request_error", "prompt");
    ids.push_back(tok.eos_id());
  }
  return ids;
}

void Server::Impl::generate(const httplib::Request& req, const std::string& req_body, httplib::Response& res,
                            bool chat_endpoint) {
  authenticate(req);
  if (stopping) throw ApiError(503, "the server is shutting down", "server_error");
  const CompletionParams p = parse_completion_request(req_body, chat_endpoint);
  std::vector<int32_t> prompt = prompt_tokens(p);
  const int64_t n_prompt = static_cast<int64_t>(prompt.size());
  const char* prompt_param = chat_endpoint ? "messages" : "prompt";
  const int64_t max_prompt = opt.max_prompt_tokens > 0 ? std::min(opt.max_prompt_tokens, ctx - 1) : ctx - 1;
  if (n_prompt > max_prompt)
    throw ApiError(400, cat("the prompt has ", n_prompt, " tokens; at most ", max_prompt, " are accepted"),
                   "invalid_request_error", prompt_param, "context_length_exceeded");
  const int64_t limit = opt.max_tokens_limit > 0 ? opt.max_tokens_limit : ctx;
  const int64_t room = ctx - n_prompt;
  const char* max_param = "max_tokens";
  int64_t max_new = p.max_tokens;
  if (max_new >= 0) {
    if (max_new > limit)
      throw ApiError(400, cat("max_tokens = ", max_new, " is above this server's limit of ", limit),
                     "invalid_request_error", max_param);
    if (max_new > room)
      throw ApiError(400,
                     cat("the prompt (", n_prompt, " tokens) plus max_tokens (", max_new,
                         ") is more than the model's context of ", ctx, " tokens"),
                     "invalid_request_error", max_param, "context_length_exceeded");
  } else {
    max_new = std::min(limit, chat_endpoint ? room : std::min<int64_t>(16, room));
  }

  auto st = std::make_shared<Live>();
  st->text = TextStream(p.stop);
  Request r;
  r.prompt = std::move(prompt);
  r.max_new_tokens = max_new;
  r.sampling = p.sampling;
  if (!p.ignore_eos) r.stop_ids = stop_ids;
  r.on_token = [this, st](int32_t t) {
    if (t < 0 || static_cast<size_t>(t) >= hidden.size() || hidden[static_cast<size_t>(t)])
      return !st->text.stopped();
    std::string piece = st->text.push(tok.token_bytes(t));
    if (!piece.empty()) {
      std::lock_guard<std::mutex> lock(st->mu);
      st->released += piece;
      st->cv.notify_all();
    }
    return !st->text.stopped();
  };
  r.on_finish = [this, st](const Finished& f) {
    const bool ok = f.finish_reason == "stop" || f.finish_reason == "length";
    const std::string tail = ok ? st->text.flush() : "";
    if (ok) metrics.observe(f.total_s, f.ttft_s);
    metrics.count_finish(f.finish_reason);
    std::lock_guard<std::mutex> lock(st->mu);
    st->released += tail;
    st->fin = f;
    st->done = true;
    st->cv.notify_all();
  };
  std::optional<uint64_t> id;
  try {
    id = engine->submit(std::move(r));
  } catch (const EngineFailed& e) {
    throw ApiError(503, e.what(), "server_error");
  } catch (const Error& e) {
    throw ApiError(400, e.what());
  }
  if (!id) {
    res.set_header("Retry-After", "1");
    throw ApiError(429, "the server is busy: the request queue is full; retry later", "server_overloaded", "",
                   "queue_full");
  }
  {
    std::lock_guard<std::mutex> lock(live_mu);
    live[*id] = st;
  }
  if (stopping) engine->cancel(*id);

  ResponseIds ids{random_id(chat_endpoint ? "chatcmpl-" : "cmpl-"), static_cast<int64_t>(std::time(nullptr)),
                  opt.served_model_name};
  if (!p.stream) {
    std::string text;
    Finished fin;
    {
      std::unique_lock<std::mutex> lock(st->mu);
      st->cv.wait(lock, [&] { return st->done; });
      text.swap(st->released);
      fin = st->fin;
    }
    forget(*id);
    if (fin.finish_reason == "cancelled")
      throw ApiError(503, "the request was cancelled (server shutting down)", "server_error");
    if (fin.finish_reason == "error")
      throw ApiError(error_status(), "generation failed: " + fin.error, "server_error");
    const int64_t n_out = static_cast<int64_t>(fin.tokens.size());
    const json body = chat_endpoint ? chat_response(ids, text, fin.finish_reason, n_prompt, n_out)
                                    : completion_response(ids, text, fin.finish_reason, n_prompt, n_out);
    res.set_content(json_dump(body), "application/json");
    return;
  }

  // Streaming: one SSE event per released piece of text, then the finish chunk and [DONE]. A
  // failed write (the client went away) ends the provider; the releaser then cancels the request.
  res.set_header("Cache-Control", "no-cache");
  const uint64_t rid = *id;
  auto first = std::make_shared<bool>(true);
  auto idle_since = std::make_shared<Clock::time_point>(Clock::now());
  const bool chat_ep = chat_endpoint, usage = p.include_usage;
  res.set_chunked_content_provider(
      "text/event-stream",
      [this, st, ids, first, idle_since, chat_ep, usage, n_prompt](size_t, httplib::DataSink& sink) {
        std::string piece;
        bool done = false;
        Finished fin;
        {
          std::unique_lock<std::mutex> lock(st->mu);
          st->cv.wait_for(lock, std::chrono::milliseconds(500),
                          [&] { return st->done || !st->released.empty(); });
          piece.swap(st->released);
          done = st->done;
          if (done) fin = st->fin;
        }
        std::string out;
        if (chat_ep && *first) out += sse_data(chat_chunk(ids, "", true, ""));
        *first = false;
        if (!piece.empty())
          out += sse_data(chat_ep ? chat_chunk(ids, piece, false, "") : completion_chunk(ids, piece, ""));
        if (done) {
          if (fin.finish_reason == "stop" || fin.finish_reason == "length") {
            out += sse_data(chat_ep ? chat_chunk(ids, "", false, fin.finish_reason)
                                    : completion_chunk(ids, "", fin.finish_reason));
            if (usage)
              out += sse_data(usage_chunk(ids, chat_ep, n_prompt, static_cast<int64_t>(fin.tokens.size())));
          } else {
            const ApiError e(fin.finish_reason == "error" ? error_status() : 503,
                             fin.finish_reason == "error" ? "generation failed: " + fin.error
                                                          : "the request was cancelled",
                             "server_error");
            out += "data: " + error_body(e) + "\n\n";
          }
          out += sse_done();
        } else if (out.empty() && Clock::now() - *idle_since > std::chrono::seconds(2)) {
          out = ": keep-alive\n\n";  // an SSE comment: finds out whether the client is still there
        }
        if (!out.empty()) {
          *idle_since = Clock::now();
          if (!sink.write(out.data(), out.size())) return false;
        }
        if (done) sink.done();
        return true;
      },
      [this, rid](bool) {
        engine->cancel(rid);  // no-op once finished
        forget(rid);
      });
}

std::string Server::Impl::metrics_text() {
  const EngineStats s = engine->stats();
  double r;
  {
    std::lock_guard<std::mutex> lock(rate_mu);
    const Clock::time_point now = Clock::now();
    const double dt = std::chrono::duration<double>(now - rate_t).count();
    if (dt >= 1.0) {
      rate = static_cast<double>(s.generated_tokens - rate_tokens) / dt;
      rate_t = now;
      rate_tokens = s.generated_tokens;
    }
    r = rate;
  }
  std::string text = metrics.render(s, r, std::chrono::duration<double>(Clock::now() - start).count());
  if (opt.expert_store) text += ServerMetrics::render_store(opt.expert_store->stats());
  text += energy_text(s);
  return text;
}

// The machine's energy counters since the server started (a counter that wraps is followed as long
// as scrapes come at least once per wrap period, minutes for a CPU package), or that there are none.
std::string Server::Impl::energy_text(const EngineStats& s) {
  std::lock_guard<std::mutex> lock(energy_mu);
  std::ostringstream o;
  o << "# HELP moe_energy_available 1 when energy counters are readable (powercap RAPL, NVML): "
    << energy.description() << "\n# TYPE moe_energy_available gauge\nmoe_energy_available "
    << (energy.available() ? 1 : 0) << "\n";
  if (!energy.available()) return o.str();
  const double j = energy.joules();
  const int64_t tokens = s.prompt_tokens + s.generated_tokens;
  o << "# HELP moe_energy_joules_total Energy of the counted parts since the server started\n"
    << "# TYPE moe_energy_joules_total counter\nmoe_energy_joules_total " << j << "\n";
  if (tokens > 0)
    o << "# HELP moe_energy_joules_per_token Energy since start per token processed (prompt + generated)\n"
      << "# TYPE moe_energy_joules_per_token gauge\nmoe_energy_joules_per_token "
      << j / static_cast<double>(tokens) << "\n";
  return o.str();
}

void Server::Impl::routes() {
  // One HTTP thread per request in flight (running or queued) plus a few for /health and /metrics,
  // at most kDefaultHttpThreads unless set: requests beyond the pool wait for a thread.
  const int64_t wanted = opt.engine.max_running + opt.engine.max_queue + 16;
  http.new_task_queue = [n = opt.http_threads > 0 ? opt.http_threads
                                                  : std::min(wanted, kDefaultHttpThreads)] {
    return new httplib::ThreadPool(static_cast<size_t>(n));
  };
  http.set_payload_max_length(static_cast<size_t>(opt.max_body_bytes));
  http.set_tcp_nodelay(true);  // SSE chunks are small: without it each waits for the client's delayed ACK
  auto send_error = [](httplib::Response& res, const ApiError& e) {
    res.status = e.status;
    res.set_content(error_body(e), "application/json");
  };
  // Wraps a handler: ApiError -> its status; any other error -> 500, both as OpenAI error bodies.
  auto wrap = [send_error](std::function<void(const httplib::Request&, httplib::Response&)> h) {
    return [h, send_error](const httplib::Request& req, httplib::Response& res) {
      try {
        h(req, res);
      } catch (const ApiError& e) {
        send_error(res, e);
      } catch (const std::exception& e) {
        send_error(res, ApiError(500, cat("internal error: ", e.what()), "server_error"));
      }
    };
  };
  http.Get("/health", wrap([this](const httplib::Request&, httplib::Response& res) {
             const std::string f = engine->fatal_error();
             if (!f.empty()) throw ApiError(503, f, "server_error");
             res.set_content(R"({"status":"ok"})", "application/json");
           }));
  http.Get(
      "/v1/models", wrap([this](const httplib::Request& req, httplib::Response& res) {
        authenticate(req);
        const json m = {{"id", opt.served_model_name},
                        {"object", "model"},
                        {"created", static_cast<int64_t>(std::time(nullptr))},
                        {"owned_by", "moe.cpp"},
                        {"max_model_len", ctx}};
        res.set_content(json_dump(json{{"object", "list"}, {"data", json::array({m})}}), "application/json");
      }));
  http.Get("/metrics", wrap([this](const httplib::Request&, httplib::Response& res) {
             res.set_content(metrics_text(), "text/plain; version=0.0.4; charset=utf-8");
           }));
  // The completion bodies are read here, through a content reader, so a chunked body is bounded by
  // max_body_bytes as it streams (the library's own limit covers Content-Length bodies only).
  auto completion = [this, wrap](bool chat_endpoint) {
    return [this, wrap, chat_endpoint](const httplib::Request& req, httplib::Response& res,
                                       const httplib::ContentReader& reader) {
      wrap([&](const httplib::Request& r, httplib::Response& s) {
        generate(r, read_body(r, reader, opt.max_body_bytes, s), s, chat_endpoint);
      })(req, res);
    };
  };
  http.Post("/v1/completions", completion(false));
  http.Post("/v1/chat/completions", completion(true));
  // Everything else: 405 on a known path with the wrong method, else 404.
  auto fallback = wrap([](const httplib::Request& req, httplib::Response& res) {
    for (const char* p : kKnownPaths)
      if (req.path == p) {
        const bool post = req.path.rfind("/v1/c", 0) == 0;
        res.set_header("Allow", post ? "POST" : "GET, HEAD");
        throw ApiError(
            405, cat("method ", req.method, " is not allowed on ", req.path, "; use ", post ? "POST" : "GET"),
            "invalid_request_error", "", "method_not_allowed");
      }
    throw ApiError(404, cat("no such endpoint: ", req.method, " ", req.path), "invalid_request_error", "",
                   "not_found");
  });
  http.Get(".*", fallback);
  http.Post(".*", fallback);
  http.Put(".*", fallback);
  http.Patch(".*", fallback);
  http.Delete(".*", fallback);
  http.Options(".*", fallback);
  // Errors httplib answers by itself (413 body too large, 400 unreadable request, ...): same body shape.
  http.set_error_handler([send_error](const httplib::Request&, httplib::Response& res) {
    if (!res.body.empty()) return;
    const char* type = res.status >= 500 ? "server_error" : "invalid_request_error";
    std::string msg = cat("HTTP ", res.status);
    if (res.status == 413) msg = "the request body is larger than this server accepts (--max-body-bytes)";
    send_error(res, ApiError(res.status, msg, type));
  });
  http.set_exception_handler(
      [send_error](const httplib::Request&, httplib::Response& res, std::exception_ptr) {
        send_error(res, ApiError(500, "internal error", "server_error"));
      });
  http.set_logger([this](const httplib::Request& req, const httplib::Response& res) {
    std::string ep = "other";
    for (const char* p : kKnownPaths)
      if (req.path == p) ep = p;
    metrics.count_request(ep, res.status);
  });
}

Server::Server(const model::Transformer& m, text::Tokenizer tok, text::ChatTemplate chat,
               std::vector<int32_t> stop_ids, ServerOptions opt)
    : impl_(std::make_unique<Impl>(m, std::move(tok), std::move(chat), std::move(stop_ids), std::move(opt))) {
}

Server::~Server() {
  stop();
  impl_.reset();
}

int Server::bind() {
  Impl& s = *impl_;
  int port = s.opt.port;
  if (port == 0) {
    port = s.http.bind_to_any_port(s.opt.host);
    MOE_CHECK(port > 0, "serve: cannot listen on ", s.opt.host, " (any port)");
  } else {
    MOE_CHECK(s.http.bind_to_port(s.opt.host, port), "serve: cannot listen on ", s.opt.host, ":", port,
              " (address in use, or not an address of this machine)");
  }
  return port;
}

void Server::run() { impl_->http.listen_after_bind(); }

std::string Server::fatal_error() const { return impl_->engine->fatal_error(); }

void Server::stop() {
  if (!impl_) return;
  Impl& s = *impl_;
  s.stopping = true;
  std::vector<uint64_t> ids;
  {
    std::lock_guard<std::mutex> lock(s.live_mu);
    for (const auto& [id, st] : s.live) ids.push_back(id);
  }
  for (uint64_t id : ids) s.engine->cancel(id);
  s.http.stop();
}

}  // namespace moe::infer
