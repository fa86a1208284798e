// Fuzzes the request bodies of the HTTP server: parse_completion_request as /v1/completions and
// as /v1/chat/completions; a chat request that parses is rendered with each chat format, as the
// server does next. Only moe::Error (ApiError is one) may come out, and error_body must format it.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "moe/core/error.h"
#include "moe/infer/server.h"
#include "moe/text/chat_template.h"

using moe::text::ChatFormat;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view body(reinterpret_cast<const char*>(data), size);
  for (bool chat : {false, true}) {
    try {
      moe::infer::CompletionParams p = moe::infer::parse_completion_request(body, chat);
      if (chat) {
        for (ChatFormat f : {ChatFormat::ChatMl, ChatFormat::Qwen2, ChatFormat::Mistral, ChatFormat::Tulu,
                             ChatFormat::DeepSeek, ChatFormat::Plain}) {
          try {
            (void)moe::text::apply_chat_template(moe::text::default_chat_template(f), p.messages);
          } catch (const moe::Error&) {
          }
        }
      }
    } catch (const moe::infer::ApiError& e) {
      (void)moe::infer::error_body(e);  // the message (any bytes of the body) must make valid JSON
    } catch (const moe::Error&) {
    }
  }
  return 0;
}
