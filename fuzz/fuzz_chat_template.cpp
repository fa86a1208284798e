// Fuzzes the chat templates: the whole input as a Jinja chat_template for chat_format_from_jinja,
// then the input as a conversation rendered by apply_chat_template. Conversation encoding: byte 0
// picks the format (the recognised one when it is 0xFF), byte 1 picks the bos/eos texts (the
// format's own, none, or pieces of the input), the rest is messages separated by 0x1E, each a role
// byte (system, user, assistant, or an unknown role named by the text up to ':') and the content.
// Only moe::Error may come out.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "moe/core/error.h"
#include "moe/text/chat_template.h"

using moe::text::ChatFormat;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  ChatFormat recognised = ChatFormat::Plain;
  const bool known = moe::text::chat_format_from_jinja(text, &recognised);
  if (size < 2) return 0;

  static constexpr ChatFormat kFormats[] = {ChatFormat::ChatMl, ChatFormat::Qwen2,    ChatFormat::Mistral,
                                            ChatFormat::Tulu,   ChatFormat::DeepSeek, ChatFormat::Plain};
  const ChatFormat f = data[0] == 0xFF && known ? recognised : kFormats[data[0] % 6];
  moe::text::ChatTemplate t = moe::text::default_chat_template(f);
  std::vector<moe::text::ChatMessage> messages;
  std::string_view rest(text);
  rest.remove_prefix(2);
  while (!rest.empty()) {
    const size_t end = rest.find('\x1e');
    std::string_view m = rest.substr(0, end);
    rest = end == std::string_view::npos ? std::string_view() : rest.substr(end + 1);
    if (m.empty()) continue;
    const uint8_t r = static_cast<uint8_t>(m[0]) % 4;
    m.remove_prefix(1);
    std::string role = r == 0 ? "system" : r == 1 ? "user" : r == 2 ? "assistant" : "";
    if (r == 3) {
      const size_t colon = m.find(':');
      role = std::string(m.substr(0, colon));
      m = colon == std::string_view::npos ? std::string_view() : m.substr(colon + 1);
    }
    messages.push_back({role, std::string(m)});
  }
  switch (data[1] % 3) {
    case 0:
      break;
    case 1:
      t.bos_token.clear();
      t.eos_token.clear();
      break;
    case 2:
      if (!messages.empty()) t.bos_token = t.eos_token = messages.back().content;
      break;
  }
  try {
    (void)moe::text::apply_chat_template(t, messages);
    (void)t.end_of_turn();
  } catch (const moe::Error&) {
  }
  return 0;
}
