// Request bodies of /v1/completions and /v1/chat/completions -> CompletionParams, with OpenAI's
// names, types and ranges; every refusal is an ApiError 400 naming the field.
#include <cmath>
#include <limits>
#include <random>

#include "moe/infer/server.h"

namespace moe::infer {

using nlohmann::json;

ApiError::ApiError(int status_, std::string message, std::string type_, std::string param_, std::string code_)
    : Error(std::move(message)),
      status(status_),
      type(std::move(type_)),
      param(std::move(param_)),
      code(std::move(code_)) {}

std::string error_body(const ApiError& e) {
  json err = {{"message", e.what()}, {"type", e.type}, {"param", nullptr}, {"code", nullptr}};
  if (!e.param.empty()) err["param"] = e.param;
  if (!e.code.empty()) err["code"] = e.code;
  return json_dump(json{{"error", err}});
}

namespace {

const char* type_name(const json& v) {
  if (v.is_null()) return "null";
  if (v.is_boolean()) return "a boolean";
  if (v.is_number()) return "a number";
  if (v.is_string()) return "a string";
  if (v.is_array()) return "an array";
  return "an object";
}

[[noreturn]] void bad(const std::string& param, const std::string& message) {
  throw ApiError(400, message, "invalid_request_error", param);
}

[[noreturn]] void bad_type(const std::string& param, const json& v, const char* want) {
  bad(param, cat("'", param, "' must be ", want, ", got ", type_name(v)));
}

// The field, or null when absent (null and absent both mean "the default").
const json& field(const json& body, const char* name) {
  static const json kNull;
  auto it = body.find(name);
  return it == body.end() ? kNull : *it;
}

double get_number(const json& body, const char* name, double dflt) {
  const json& v = field(body, name);
  if (v.is_null()) return dflt;
  if (!v.is_number()) bad_type(name, v, "a number");
  const double x = v.get<double>();
  if (!std::isfinite(x)) bad(name, cat("'", name, "' must be finite"));
  return x;
}

// Integers may be written 16 or 16.0.
bool get_int(const json& body, const char* name, int64_t* out) {
  const json& v = field(body, name);
  if (v.is_null()) return false;
  if (v.is_number_integer()) {
    if (v.is_number_unsigned() &&
        v.get<uint64_t>() > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
      bad(name, cat("'", name, "' is too large"));
    *out = v.get<int64_t>();
    return true;
  }
  if (v.is_number_float()) {
    const double x = v.get<double>();
    if (std::isfinite(x) && x == std::floor(x) && std::fabs(x) < 9.0e15) {
      *out = static_cast<int64_t>(x);
      return true;
    }
  }
  bad_type(name, v, "an integer");
}

bool get_bool(const json& body, const char* name, bool dflt) {
  const json& v = field(body, name);
  if (v.is_null()) return dflt;
  if (!v.is_boolean()) bad_type(name, v, "a boolean");
  return v.get<bool>();
}

std::vector<std::string> parse_stop(const json& body) {
  const json& v = field(body, "stop");
  std::vector<std::string> out;
  if (v.is_null()) return out;
  if (v.is_string()) {
    out.push_back(v.get<std::string>());
  } else if (v.is_array()) {
    for (size_t i = 0; i < v.size(); ++i) {
      if (!v[i].is_string()) bad("stop", cat("'stop[", i, "]' must be a string, got ", type_name(v[i])));
      out.push_back(v[i].get<std::string>());
    }
  } else {
    bad_type("stop", v, "a string or an array of strings");
  }
  if (out.size() > 4) bad("stop", cat("'stop' may hold at most 4 strings, got ", out.size()));
  for (const std::string& s : out)
    if (s.empty()) bad("stop", "'stop' strings must not be empty");
  return out;
}

void parse_prompt(const json& body, CompletionParams& p) {
  const json& v = field(body, "prompt");
  if (v.is_null()) bad("prompt", "'prompt' is required");
  if (v.is_string()) {
    p.prompt = v.get<std::string>();
    return;
  }
  if (!v.is_array()) bad_type("prompt", v, "a string or an array of token ids");
  const json* ids = &v;
  if (!v.empty() && (v[0].is_string() || v[0].is_array())) {  // a batch of prompts: only one is served
    if (v.size() != 1) bad("prompt", cat("one prompt per request is supported, got ", v.size()));
    if (v[0].is_string()) {
      p.prompt = v[0].get<std::string>();
      return;
    }
    ids = &v[0];
  }
  if (ids->empty()) bad("prompt", "'prompt' has no tokens");
  for (size_t i = 0; i < ids->size(); ++i) {
    const json& t = (*ids)[i];
    if (!t.is_number_integer())
      bad("prompt", cat("'prompt[", i, "]' must be a token id (integer), got ", type_name(t)));
    const int64_t id = t.get<int64_t>();
    if (id < 0 || id > std::numeric_limits<int32_t>::max())
      bad("prompt", cat("'prompt[", i, "]' = ", id, " is not a token id"));
    p.prompt_tokens.push_back(static_cast<int32_t>(id));
  }
  p.prompt_is_tokens = true;
}

std::string message_content(const json& c, size_t i) {
  const std::string param = cat("messages[", i, "].content");
  if (c.is_null()) return "";
  if (c.is_string()) return c.get<std::string>();
  if (!c.is_array()) bad_type(param, c, "a string or an array of text parts");
  std::string s;
  for (size_t k = 0; k < c.size(); ++k) {  // [{"type":"text","text":"..."}]
    const json& part = c[k];
    if (!part.is_object() || part.value("type", "") != "text" || !part.contains("text") ||
        !part["text"].is_string())
      bad(param, cat("'", param, "[", k,
                     "]' must be {\"type\": \"text\", \"text\": string}; only text is supported"));
    s += part["text"].get<std::string>();
  }
  return s;
}

void parse_messages(const json& body, CompletionParams& p) {
  const json& v = field(body, "messages");
  if (v.is_null()) bad("messages", "'messages' is required");
  if (!v.is_array()) bad_type("messages", v, "an array");
  if (v.empty()) bad("messages", "'messages' must not be empty");
  for (size_t i = 0; i < v.size(); ++i) {
    const json& m = v[i];
    const std::string param = cat("messages[", i, "]");
    if (!m.is_object()) bad_type(param, m, "an object");
    const json& role = field(m, "role");
    if (!role.is_string()) bad_type(param + ".role", role, "a string");
    std::string r = role.get<std::string>();
    if (r == "developer") r = "system";  // OpenAI's newer name for the system role
    if (r != "system" && r != "user" && r != "assistant")
      bad(param + ".role", cat("'", param, ".role' is '", r, "'; supported roles: system, user, assistant"));
    p.messages.push_back({r, message_content(field(m, "content"), i)});
  }
}

}  // namespace

CompletionParams parse_completion_request(std::string_view text, bool chat) {
  json body;
  try {
    body = json::parse(text);
  } catch (const json::exception& e) {  // a syntax error, or a number out of range (1e309)
    throw ApiError(400, cat("the request body is not valid JSON: ", e.what()), "invalid_request_error", "",
                   "invalid_json");
  }
  if (!body.is_object())
    throw ApiError(400, cat("the request body must be a JSON object, got ", type_name(body)));

  CompletionParams p;
  p.chat = chat;
  if (chat)
    parse_messages(body, p);
  else
    parse_prompt(body, p);

  int64_t n = 1;
  if (get_int(body, "n", &n) && n != 1) bad("n", cat("only n = 1 is supported, got n = ", n));
  int64_t best_of = 1;
  if (get_int(body, "best_of", &best_of) && best_of != 1) bad("best_of", "only best_of = 1 is supported");
  if (!chat && get_bool(body, "echo", false)) bad("echo", "echo = true is not supported");
  const json& lp = field(body, "logprobs");
  if (!(lp.is_null() || (lp.is_boolean() && !lp.get<bool>()) ||
        (lp.is_number_integer() && lp.get<int64_t>() == 0)))
    bad("logprobs", "logprobs are not supported");
  if (!field(body, "suffix").is_null()) bad("suffix", "'suffix' is not supported");
  if (!field(body, "tools").is_null() && !(field(body, "tools").is_array() && field(body, "tools").empty()))
    bad("tools", "tools are not supported");

  const char* max_name =
      chat && !field(body, "max_completion_tokens").is_null() ? "max_completion_tokens" : "max_tokens";
  if (get_int(body, max_name, &p.max_tokens) && p.max_tokens < 0)
    bad(max_name, cat("'", max_name, "' must be >= 0, got ", p.max_tokens));

  SamplingOptions& s = p.sampling;
  s.temperature = get_number(body, "temperature", 1.0);
  if (s.temperature < 0) bad("temperature", cat("'temperature' must be >= 0, got ", s.temperature));
  s.top_p = get_number(body, "top_p", 1.0);
  if (!(s.top_p > 0 && s.top_p <= 1)) bad("top_p", cat("'top_p' must be in (0, 1], got ", s.top_p));
  int64_t top_k = 0;
  if (get_int(body, "top_k", &top_k)) {
    if (top_k < -1) bad("top_k", cat("'top_k' must be >= 0 (or -1 for all), got ", top_k));
    s.top_k = top_k < 0 ? 0 : top_k;
  }
  int64_t seed = 0;
  p.seed_given = get_int(body, "seed", &seed);
  s.seed = p.seed_given ? static_cast<uint64_t>(seed)
                        : std::random_device{}() * 0x100000001ull + std::random_device{}();
  s.repetition_penalty = get_number(body, "repetition_penalty", 1.0);
  if (!(s.repetition_penalty > 0))
    bad("repetition_penalty", cat("'repetition_penalty' must be > 0, got ", s.repetition_penalty));
  s.frequency_penalty = get_number(body, "frequency_penalty", 0.0);
  if (std::fabs(s.frequency_penalty) > 2) bad("frequency_penalty", "'frequency_penalty' must be in [-2, 2]");
  s.presence_penalty = get_number(body, "presence_penalty", 0.0);
  if (std::fabs(s.presence_penalty) > 2) bad("presence_penalty", "'presence_penalty' must be in [-2, 2]");

  p.stop = parse_stop(body);
  p.stream = get_bool(body, "stream", false);
  p.ignore_eos = get_bool(body, "ignore_eos", false);
  const json& so = field(body, "stream_options");
  if (!so.is_null()) {
    if (!so.is_object()) bad_type("stream_options", so, "an object");
    p.include_usage = get_bool(so, "include_usage", false);
  }
  return p;
}

}  // namespace moe::infer
