// Text out of the server: incremental detokenization with stop strings, and the JSON of responses
// and SSE chunks in OpenAI's shapes.
#include <algorithm>

#include "moe/infer/server.h"

namespace moe::infer {

using nlohmann::json;

size_t utf8_complete_prefix(std::string_view s) {
  // Look back at most 3 bytes for the lead byte of the last sequence.
  const size_t n = s.size();
  for (size_t back = 1; back <= std::min<size_t>(4, n); ++back) {
    const unsigned char c = static_cast<unsigned char>(s[n - back]);
    if ((c & 0xC0) == 0x80) continue;  // a continuation byte: keep looking
    size_t len = 1;
    if ((c & 0xE0) == 0xC0)
      len = 2;
    else if ((c & 0xF0) == 0xE0)
      len = 3;
    else if ((c & 0xF8) == 0xF0)
      len = 4;
    return len > back ? n - back : n;  // the sequence is cut short: hold it back
  }
  return n;  // only continuation bytes (invalid): release them
}

TextStream::TextStream(std::vector<std::string> stops) : stops_(std::move(stops)) {
  stops_.erase(std::remove(stops_.begin(), stops_.end(), std::string()), stops_.end());
}

std::string TextStream::push(std::string_view bytes) {
  if (stopped_) return "";
  pending_.append(bytes);
  // A complete stop string: release the text before the earliest one and stop.
  size_t cut = std::string::npos;
  for (const std::string& s : stops_) cut = std::min(cut, pending_.find(s));
  if (cut != std::string::npos) {
    std::string out = pending_.substr(0, cut);
    pending_.clear();
    stopped_ = true;
    text_ += out;
    return out;
  }
  // Hold back the longest tail that could still grow into a stop string ...
  size_t hold = 0;
  for (const std::string& s : stops_)
    for (size_t k = std::min(s.size() - 1, pending_.size()); k > hold; --k)
      if (pending_.compare(pending_.size() - k, k, s, 0, k) == 0) {
        hold = k;
        break;
      }
  // ... and a UTF-8 character cut short.
  const size_t release = utf8_complete_prefix(std::string_view(pending_).substr(0, pending_.size() - hold));
  std::string out = pending_.substr(0, release);
  pending_.erase(0, release);
  text_ += out;
  return out;
}

std::string TextStream::flush() {
  if (stopped_) return "";
  std::string out;
  out.swap(pending_);
  text_ += out;
  return out;
}

std::string json_dump(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

std::string sse_data(const json& j) { return "data: " + json_dump(j) + "\n\n"; }

json usage_json(int64_t prompt_tokens, int64_t completion_tokens) {
  return {{"prompt_tokens", prompt_tokens},
          {"completion_tokens", completion_tokens},
          {"total_tokens", prompt_tokens + completion_tokens}};
}

namespace {

json reason(const std::string& r) { return r.empty() ? json(nullptr) : json(r); }

json head(const ResponseIds& ids, const char* object) {
  return {{"id", ids.id}, {"object", object}, {"created", ids.created}, {"model", ids.model}};
}

}  // namespace

json completion_chunk(const ResponseIds& ids, const std::string& text, const std::string& finish_reason) {
  json j = head(ids, "text_completion");
  j["choices"] = json::array(
      {{{"index", 0}, {"text", text}, {"logprobs", nullptr}, {"finish_reason", reason(finish_reason)}}});
  return j;
}

json chat_chunk(const ResponseIds& ids, const std::string& content, bool role_delta,
                const std::string& finish_reason) {
  json delta = json::object();
  if (role_delta) delta["role"] = "assistant";
  if (role_delta || !content.empty()) delta["content"] = content;
  json j = head(ids, "chat.completion.chunk");
  j["choices"] = json::array(
      {{{"index", 0}, {"delta", delta}, {"logprobs", nullptr}, {"finish_reason", reason(finish_reason)}}});
  return j;
}

json usage_chunk(const ResponseIds& ids, bool chat, int64_t prompt_tokens, int64_t completion_tokens) {
  json j = head(ids, chat ? "chat.completion.chunk" : "text_completion");
  j["choices"] = json::array();
  j["usage"] = usage_json(prompt_tokens, completion_tokens);
  return j;
}

json completion_response(const ResponseIds& ids, const std::string& text, const std::string& finish_reason,
                         int64_t prompt_tokens, int64_t completion_tokens) {
  json j = head(ids, "text_completion");
  j["choices"] = json::array(
      {{{"index", 0}, {"text", text}, {"logprobs", nullptr}, {"finish_reason", reason(finish_reason)}}});
  j["usage"] = usage_json(prompt_tokens, completion_tokens);
  return j;
}

json chat_response(const ResponseIds& ids, const std::string& content, const std::string& finish_reason,
                   int64_t prompt_tokens, int64_t completion_tokens) {
  json j = head(ids, "chat.completion");
  j["choices"] = json::array({{{"index", 0},
                               {"message", {{"role", "assistant"}, {"content", content}}},
                               {"logprobs", nullptr},
                               {"finish_reason", reason(finish_reason)}}});
  j["usage"] = usage_json(prompt_tokens, completion_tokens);
  return j;
}

}  // namespace moe::infer
