// Chat templates: a conversation (system / user / assistant messages) -> the prompt text a chat
// model was fine-tuned on. Built in, no Jinja: each format reproduces its model family's published
// tokenizer_config.json template for conversations of plain text messages (docs/SERVING.md lists
// the exact output of each).
//
//   chatml    Qwen1.5/Qwen2-MoE, Qwen3-MoE:  <|im_start|>ROLE\nCONTENT<|im_end|>\n ...
//   <|im_start|>assistant\n
//             (qwen2 adds Qwen1.5's default system message "You are a helpful assistant." when the
//             conversation has none; chatml does not, as Qwen3's template.)
//   mistral   Mixtral-8x7B-Instruct: <s> [INST] SYSTEM\n\nUSER [/INST] ASSISTANT</s> [INST] USER [/INST]
//   tulu      OLMoE-Instruct: BOS<|system|>\nS\n<|user|>\nU\n<|assistant|>\nA
//   EOS\n<|user|>\nU\n<|assistant|>\n deepseek  DeepSeek-V3 (deepseek_v3):
//   <｜begin▁of▁sentence｜>SYSTEM<｜User｜>U<｜Assistant｜>A<｜end▁of▁sentence｜>...<｜Assistant｜> plain
//   models trained here (no chat tokens): "System: S\n\nUser: U\n\nAssistant: A\n\n...Assistant:"
#pragma once

#include <string>
#include <vector>

namespace moe::text {

struct ChatMessage {
  std::string role;  // "system", "user" or "assistant"
  std::string content;
};

enum class ChatFormat { ChatMl, Qwen2, Mistral, Tulu, DeepSeek, Plain };

struct ChatTemplate {
  ChatFormat format = ChatFormat::Plain;
  std::string bos_token;  // text put where the template says {{ bos_token }} ("" = none)
  std::string eos_token;  // text put where the template says {{ eos_token }}
  // The text that ends an assistant turn ("<|im_end|>", "</s>", ...): generation stops on its token.
  std::string end_of_turn() const;
};

const char* chat_format_name(ChatFormat f);
// "chatml", "qwen2", "mistral", "tulu", "deepseek", "plain"; throws moe::Error listing them.
ChatFormat chat_format_from_name(const std::string& name);

// The format's own default bos/eos texts (Qwen: none and <|im_end|>; Mixtral: <s> and </s>;
// OLMoE: <|endoftext|> both; DeepSeek-V3: <｜begin▁of▁sentence｜> and <｜end▁of▁sentence｜>).
ChatTemplate default_chat_template(ChatFormat f);

// Recognises a Hugging Face chat_template (Jinja text from tokenizer_config.json) by its markers;
// false when none is recognised.
bool chat_format_from_jinja(const std::string& jinja, ChatFormat* out);

// Renders the conversation followed by the opening of the assistant's reply
// (add_generation_prompt = true). Throws moe::Error on an unknown role, an empty conversation, or
// an order the model's template refuses (mistral: after an optional first system message, roles
// must alternate user/assistant starting with user).
std::string apply_chat_template(const ChatTemplate& t, const std::vector<ChatMessage>& messages);

}  // namespace moe::text
