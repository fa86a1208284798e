// OpenAI-compatible HTTP server on top of the continuous-batching Engine (docs/SERVING.md).
//
//   GET  /health                 {"status":"ok"}
//   GET  /v1/models              the one served model
//   POST /v1/completions         prompt (text or token ids) -> text; SSE when "stream": true
//   POST /v1/chat/completions    messages -> chat template -> text; SSE when "stream": true
//   GET  /metrics                Prometheus text: requests, tokens, queue, batch, KV blocks, expert hits
//
// Every HTTP worker thread turns one request into an Engine request; the engine thread calls back
// with each new token, which goes through an incremental detokenizer and the stop strings
// (TextStream) and is handed to the worker, which writes it (streaming) or collects it. Errors are
// OpenAI-shaped JSON bodies {"error":{"message","type","param","code"}} with the HTTP status of
// ApiError. The pieces below (request parsing, TextStream, SSE chunks, metrics text) are plain
// functions so that they are tested without a socket.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "moe/core/error.h"
#include "moe/infer/engine.h"
#include "moe/infer/expert_store.h"
#include "moe/infer/sampler.h"
#include "moe/text/chat_template.h"
#include "moe/text/tokenizer.h"

namespace moe::infer {

// A request the server refuses: HTTP status and the fields of the OpenAI error object.
class ApiError : public Error {
 public:
  ApiError(int status, std::string message, std::string type = "invalid_request_error",
           std::string param = "", std::string code = "");
  int status;
  std::string type, param, code;  // param/code "" are written as null
};

// {"error":{"message":...,"type":...,"param":...|null,"code":...|null}}
std::string error_body(const ApiError& e);

// ---- requests ----

struct CompletionParams {
  bool chat = false;
  std::string prompt;                  // /v1/completions with a text prompt
  std::vector<int32_t> prompt_tokens;  // /v1/completions with a token-id prompt
  bool prompt_is_tokens = false;
  std::vector<text::ChatMessage> messages;  // /v1/chat/completions
  int64_t max_tokens = -1;                  // -1: not given (completions: 16; chat: what the context leaves)
  SamplingOptions sampling;                 // seed: random unless seed_given
  bool seed_given = false;
  std::vector<std::string> stop;  // at most 4, none empty
  bool stream = false;
  bool include_usage = false;  // stream_options.include_usage
  bool ignore_eos = false;     // vLLM's extension: generate through end-of-text tokens
};

// Parses and validates the JSON body of /v1/completions (chat = false) or /v1/chat/completions.
// Throws ApiError 400 naming the field (param) on malformed JSON, a wrong type or a value out of
// range. Unknown fields are ignored (clients send many), as is "model" (one model is served).
CompletionParams parse_completion_request(std::string_view body, bool chat);

// ---- text out: incremental detokenization and stop strings ----

// Bytes of tokens in, text out. Text is released only up to the last complete UTF-8 character and
// never while it could still be the start of a stop string; once the text contains a stop string,
// stopped() is true and the text ends just before it (the stop string is not shown).
class TextStream {
 public:
  explicit TextStream(std::vector<std::string> stops = {});
  std::string push(std::string_view bytes);  // the text newly released (may be empty)
  std::string flush();                       // at the end: what is still held back ("" once stopped)
  bool stopped() const { return stopped_; }
  const std::string& text() const { return text_; }  // everything released so far

 private:
  std::vector<std::string> stops_;
  std::string pending_, text_;
  bool stopped_ = false;
};

// Length of the longest prefix of s that does not end inside a UTF-8 sequence (invalid bytes count
// as complete: they are released, and JSON output replaces them with U+FFFD).
size_t utf8_complete_prefix(std::string_view s);

// ---- responses ----

struct ResponseIds {
  std::string id;  // "cmpl-..." or "chatcmpl-..."
  int64_t created = 0;
  std::string model;
};

std::string json_dump(const nlohmann::json& j);  // invalid UTF-8 replaced by U+FFFD
std::string sse_data(const nlohmann::json& j);   // "data: {...}\n\n"
inline const char* sse_done() { return "data: [DONE]\n\n"; }
nlohmann::json usage_json(int64_t prompt_tokens, int64_t completion_tokens);
// One streamed piece; finish_reason "" = null. Chat chunks: role_delta adds "role":"assistant".
nlohmann::json completion_chunk(const ResponseIds& ids, const std::string& text,
                                const std::string& finish_reason);
nlohmann::json chat_chunk(const ResponseIds& ids, const std::string& content, bool role_delta,
                          const std::string& finish_reason);
// A streamed final chunk with usage and no choices (stream_options.include_usage).
nlohmann::json usage_chunk(const ResponseIds& ids, bool chat, int64_t prompt_tokens,
                           int64_t completion_tokens);
// Whole (non-streamed) responses.
nlohmann::json completion_response(const ResponseIds& ids, const std::string& text,
                                   const std::string& finish_reason, int64_t prompt_tokens,
                                   int64_t completion_tokens);
nlohmann::json chat_response(const ResponseIds& ids, const std::string& content,
                             const std::string& finish_reason, int64_t prompt_tokens,
                             int64_t completion_tokens);

// ---- metrics ----

// Request counters and latency histograms of the HTTP layer; thread-safe.
class ServerMetrics {
 public:
  static const std::vector<double>& buckets();  // histogram upper bounds in seconds (+Inf implied)
  void count_request(const std::string& endpoint, int status);
  void observe(double latency_s, double ttft_s);  // a finished generation request
  void count_finish(const std::string& reason);   // "stop", "length", "cancelled", "error"
  // Prometheus text exposition (version 0.0.4) of these counters and the engine's stats.
  // tokens_per_s: the generation rate to report (computed by the caller between scrapes).
  std::string render(const EngineStats& s, double tokens_per_s, double uptime_s) const;
  // The expert store's counters (hit rate, hits, misses, bytes moved, stall time, prefetches).
  static std::string render_store(const ExpertStoreStats& s);

 private:
  struct Histogram {
    std::vector<int64_t> counts;  // per bucket (not cumulative), + one for +Inf
    double sum = 0;
    int64_t n = 0;
  };
  mutable std::mutex mu_;
  std::map<std::pair<std::string, int>, int64_t> requests_;
  std::map<std::string, int64_t> finishes_;
  Histogram latency_, ttft_;
};

// ---- the server ----

constexpr int64_t kMaxBodyBytes = int64_t{1} << 30;
constexpr int64_t kMaxHttpThreads = 4096;
constexpr int64_t kDefaultHttpThreads = 256;

struct ServerOptions {
  std::string host = "127.0.0.1";
  int port = 8080;                   // 0 = any free port
  std::string api_key;               // "" = no authentication; else "Authorization: Bearer KEY" on /v1/*
  std::string served_model_name;     // the id in /v1/models and responses
  int64_t max_body_bytes = 1 << 20;  // larger bodies get 413
  int64_t max_prompt_tokens = 0;     // 0 = the model's context - 1
  int64_t max_tokens_limit = 0;      // largest max_tokens accepted; 0 = the model's context
  int64_t http_threads = 0;          // 0 = engine max_running + max_queue + 16, at most kDefaultHttpThreads
  EngineOptions engine;
  std::shared_ptr<const ExpertStore> expert_store;  // offloaded experts: their counters in /metrics
  void validate() const;                            // throws moe::Error naming the bad option
};

class Server {
 public:
  // The model and tokenizer must outlive the server. stop_ids: tokens that end a reply (the
  // tokenizer's end-of-text, the model's eos, the chat template's end-of-turn token).
  Server(const model::Transformer& m, text::Tokenizer tok, text::ChatTemplate chat,
         std::vector<int32_t> stop_ids, ServerOptions opt);
  ~Server();
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  int bind();   // binds host:port; returns the port (the one picked when port is 0); throws moe::Error
  void run();   // serves until stop(); call after bind()
  void stop();  // thread-safe: cancels the requests in flight and makes run() return
  // Non-empty when the engine stopped on a fatal error (expert parallelism lost a rank); run() then
  // returns by itself after the requests in flight got their 503 answers.
  std::string fatal_error() const;

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace moe::infer
