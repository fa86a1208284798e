#include "moe/text/chat_template.h"

#include "moe/core/error.h"

namespace moe::text {
namespace {

struct FormatName {
  ChatFormat f;
  const char* name;
};
constexpr FormatName kFormats[] = {{ChatFormat::ChatMl, "chatml"},     {ChatFormat::Qwen2, "qwen2"},
                                   {ChatFormat::Mistral, "mistral"},   {ChatFormat::Tulu, "tulu"},
                                   {ChatFormat::DeepSeek, "deepseek"}, {ChatFormat::Plain, "plain"}};

// DeepSeek's markers: fullwidth vertical bars (U+FF5C) and lower one-eighth blocks (U+2581).
const std::string kDsBos =
    "<\xEF\xBD\x9C"
    "begin\xE2\x96\x81of\xE2\x96\x81sentence\xEF\xBD\x9C>";
const std::string kDsEos =
    "<\xEF\xBD\x9C"
    "end\xE2\x96\x81of\xE2\x96\x81sentence\xEF\xBD\x9C>";
const std::string kDsUser = "<\xEF\xBD\x9CUser\xEF\xBD\x9C>";
const std::string kDsAssistant =
    "<\xEF\xBD\x9C"
    "Assistant\xEF\xBD\x9C>";

void check_roles(const std::vector<ChatMessage>& messages) {
  MOE_CHECK(!messages.empty(), "chat template: the conversation has no messages");
  for (size_t i = 0; i < messages.size(); ++i) {
    const std::string& r = messages[i].role;
    MOE_CHECK(r == "system" || r == "user" || r == "assistant", "chat template: messages[", i, "].role is '",
              r, "'; expected system, user or assistant");
  }
}

// Qwen1.5-MoE-A2.7B-Chat's template (ChatML; a default system message when the first is not one).
// Qwen3's template gives the same text for plain messages, without the default system message.
std::string render_chatml(const std::vector<ChatMessage>& m, bool default_system) {
  std::string s;
  if (default_system && m[0].role != "system")
    s += "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n";
  for (const ChatMessage& x : m) s += "<|im_start|>" + x.role + "\n" + x.content + "<|im_end|>\n";
  return s + "<|im_start|>assistant\n";
}

// Mixtral-8x7B-Instruct-v0.1's template: an optional first system message joins the first user
// turn; then roles alternate user/assistant. The template has no generation prompt: a prompt that
// ends with [/INST] is the opening of the reply.
std::string render_mistral(const ChatTemplate& t, const std::vector<ChatMessage>& m) {
  size_t first = 0;
  const std::string* system = nullptr;
  if (m[0].role == "system") {
    system = &m[0].content;
    first = 1;
  }
  std::string s = t.bos_token;
  for (size_t i = first; i < m.size(); ++i) {
    const bool want_user = (i - first) % 2 == 0;
    MOE_CHECK(m[i].role != "system",
              "chat template (mistral): only the first message may be a system message (messages[", i, "])");
    MOE_CHECK((m[i].role == "user") == want_user,
              "chat template (mistral): after the optional system message, roles must alternate "
              "user/assistant/user/...; messages[",
              i, "] is ", m[i].role);
    if (m[i].role == "user") {
      if (i == first && system != nullptr)
        s += " [INST] " + *system + "\n\n" + m[i].content + " [/INST]";
      else
        s += " [INST] " + m[i].content + " [/INST]";
    } else {
      s += " " + m[i].content + t.eos_token;
    }
  }
  return s;
}

// OLMoE-1B-7B-0924-Instruct's template (Tulu).
std::string render_tulu(const ChatTemplate& t, const std::vector<ChatMessage>& m) {
  std::string s = t.bos_token;
  for (size_t i = 0; i < m.size(); ++i) {
    const bool last = i + 1 == m.size();
    if (m[i].role == "system") s += "<|system|>\n" + m[i].content + "\n";
    if (m[i].role == "user") s += "<|user|>\n" + m[i].content + "\n";
    if (m[i].role == "assistant") s += "<|assistant|>\n" + m[i].content + t.eos_token + (last ? "" : "\n");
  }
  return s + "<|assistant|>\n";
}

// DeepSeek-V3's template: every system message goes first (joined by a blank line), after BOS.
std::string render_deepseek(const ChatTemplate& t, const std::vector<ChatMessage>& m) {
  std::string system;
  bool first_system = true;
  for (const ChatMessage& x : m) {
    if (x.role != "system") continue;
    system += (first_system ? "" : "\n\n") + x.content;
    first_system = false;
  }
  std::string s = t.bos_token + system;
  for (const ChatMessage& x : m) {
    if (x.role == "user") s += kDsUser + x.content;
    if (x.role == "assistant") s += kDsAssistant + x.content + kDsEos;
  }
  return s + kDsAssistant;
}

// Models trained here have no chat tokens: a readable transcript, the reply after "Assistant:".
std::string render_plain(const ChatTemplate& t, const std::vector<ChatMessage>& m) {
  std::string s = t.bos_token;
  for (const ChatMessage& x : m) {
    const std::string who = x.role == "system" ? "System" : x.role == "user" ? "User" : "Assistant";
    s += who + ": " + x.content + "\n\n";
  }
  return s + "Assistant:";
}

}  // namespace

const char* chat_format_name(ChatFormat f) {
  for (const FormatName& x : kFormats)
    if (x.f == f) return x.name;
  return "?";
}

ChatFormat chat_format_from_name(const std::string& name) {
  std::string all;
  for (const FormatName& x : kFormats) {
    if (name == x.name) return x.f;
    all += std::string(all.empty() ? "" : ", ") + x.name;
  }
  throw Error(cat("unknown chat template '", name, "'; expected one of: ", all));
}

ChatTemplate default_chat_template(ChatFormat f) {
  ChatTemplate t;
  t.format = f;
  switch (f) {
    case ChatFormat::ChatMl:
    case ChatFormat::Qwen2:
      t.eos_token = "<|im_end|>";
      break;
    case ChatFormat::Mistral:
      t.bos_token = "<s>";
      t.eos_token = "</s>";
      break;
    case ChatFormat::Tulu:
      t.bos_token = t.eos_token = "<|endoftext|>";
      break;
    case ChatFormat::DeepSeek:
      t.bos_token = kDsBos;
      t.eos_token = kDsEos;
      break;
    case ChatFormat::Plain:
      t.eos_token = "<|endoftext|>";
      break;
  }
  return t;
}

std::string ChatTemplate::end_of_turn() const {
  switch (format) {
    case ChatFormat::ChatMl:
    case ChatFormat::Qwen2:
      return "<|im_end|>";
    case ChatFormat::DeepSeek:
      return kDsEos;
    default:
      return eos_token;
  }
}

bool chat_format_from_jinja(const std::string& j, ChatFormat* out) {
  auto has = [&](const std::string& s) { return j.find(s) != std::string::npos; };
  ChatFormat f;
  if (has("<|im_start|>"))
    f = has("You are a helpful assistant.") ? ChatFormat::Qwen2 : ChatFormat::ChatMl;
  else if (has("[INST]"))
    f = ChatFormat::Mistral;
  else if (has("<|assistant|>"))
    f = ChatFormat::Tulu;
  else if (has(kDsAssistant))
    f = ChatFormat::DeepSeek;
  else
    return false;
  *out = f;
  return true;
}

std::string apply_chat_template(const ChatTemplate& t, const std::vector<ChatMessage>& messages) {
  check_roles(messages);
  switch (t.format) {
    case ChatFormat::ChatMl:
      return render_chatml(messages, false);
    case ChatFormat::Qwen2:
      return render_chatml(messages, true);
    case ChatFormat::Mistral:
      return render_mistral(t, messages);
    case ChatFormat::Tulu:
      return render_tulu(t, messages);
    case ChatFormat::DeepSeek:
      return render_deepseek(t, messages);
    case ChatFormat::Plain:
      return render_plain(t, messages);
  }
  return "";
}

}  // namespace moe::text
