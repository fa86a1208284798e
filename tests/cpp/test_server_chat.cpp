// Chat templates (src/text/chat_template.cpp) against the published Jinja templates rendered by
// Hugging Face transformers (tests/fixtures/chat_templates/make_expected.py -> expected.json).
#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "moe/core/error.h"
#include "moe/text/chat_template.h"
#include "moe/text/tokenizer.h"

namespace {

using moe::text::ChatFormat;
using moe::text::ChatMessage;

nlohmann::json expected() {
  std::ifstream f(std::string(MOE_TEST_FIXTURES) + "/chat_templates/expected.json");
  EXPECT_TRUE(f.good());
  return nlohmann::json::parse(f);
}

TEST(ChatTemplate, MatchesTransformersRendering) {
  const nlohmann::json e = expected();
  int checked = 0;
  for (const auto& [name, conv] : e["_conversations"].items()) {
    std::vector<ChatMessage> msgs;
    for (const auto& m : conv)
      msgs.push_back({m["role"].get<std::string>(), m["content"].get<std::string>()});
    for (const char* fmt : {"qwen2", "chatml", "mistral", "tulu", "deepseek"}) {
      moe::text::ChatTemplate t = moe::text::default_chat_template(moe::text::chat_format_from_name(fmt));
      EXPECT_EQ(t.bos_token, e[fmt]["bos_token"].get<std::string>()) << fmt;
      EXPECT_EQ(t.eos_token, e[fmt]["eos_token"].get<std::string>()) << fmt;
      EXPECT_EQ(moe::text::apply_chat_template(t, msgs), e[fmt]["conversations"][name].get<std::string>())
          << fmt << " / " << name;
      ++checked;
    }
  }
  EXPECT_EQ(checked, 15);
}

// The prompt through the family's tokenizer (tests/fixtures/tokenizers) gives the ids of Hugging
// Face's apply_chat_template(tokenize=True): the markers in the text become their added tokens.
TEST(ChatTemplate, TokenIdsMatchTransformers) {
  const nlohmann::json e = expected();
  int checked = 0;
  for (const char* fmt : {"qwen2", "chatml", "mistral", "tulu", "deepseek"}) {
    const std::string tp = std::string(MOE_TEST_FIXTURES) + "/tokenizers/" +
                           e[fmt]["tokenizer"].get<std::string>() + "/tokenizer.json";
    const moe::text::Tokenizer tok = moe::text::Tokenizer::load(tp);
    const auto t = moe::text::default_chat_template(moe::text::chat_format_from_name(fmt));
    for (const auto& [name, conv] : e["_conversations"].items()) {
      std::vector<ChatMessage> msgs;
      for (const auto& m : conv)
        msgs.push_back({m["role"].get<std::string>(), m["content"].get<std::string>()});
      EXPECT_EQ(tok.encode(moe::text::apply_chat_template(t, msgs)),
                e[fmt]["ids"][name].get<std::vector<int32_t>>())
          << fmt << " / " << name;
      ++checked;
    }
  }
  EXPECT_EQ(checked, 15);
}

TEST(ChatTemplate, PlainFormat) {
  moe::text::ChatTemplate t = moe::text::default_chat_template(ChatFormat::Plain);
  EXPECT_EQ(
      moe::text::apply_chat_template(t, {{"system", "S"}, {"user", "U"}, {"assistant", "A"}, {"user", "V"}}),
      "System: S\n\nUser: U\n\nAssistant: A\n\nUser: V\n\nAssistant:");
}

TEST(ChatTemplate, Errors) {
  const auto t = moe::text::default_chat_template(ChatFormat::Mistral);
  EXPECT_THROW(moe::text::apply_chat_template(t, {}), moe::Error);
  EXPECT_THROW(moe::text::apply_chat_template(t, {{"tool", "x"}}), moe::Error);
  // Mixtral's template refuses two user turns in a row and a system message after the first.
  EXPECT_THROW(moe::text::apply_chat_template(t, {{"user", "a"}, {"user", "b"}}), moe::Error);
  EXPECT_THROW(moe::text::apply_chat_template(t, {{"user", "a"}, {"system", "b"}}), moe::Error);
  try {
    moe::text::chat_format_from_name("llama9");
    FAIL();
  } catch (const moe::Error& e) {
    EXPECT_NE(std::string(e.what()).find("chatml"), std::string::npos);
  }
}

TEST(ChatTemplate, RecognisesJinja) {
  ChatFormat f = ChatFormat::Plain;
  EXPECT_TRUE(moe::text::chat_format_from_jinja("{{'<|im_start|>' + message['role']}}", &f));
  EXPECT_EQ(f, ChatFormat::ChatMl);
  EXPECT_TRUE(
      moe::text::chat_format_from_jinja("'<|im_start|>system\\nYou are a helpful assistant.<|im_end|>'", &f));
  EXPECT_EQ(f, ChatFormat::Qwen2);
  EXPECT_TRUE(moe::text::chat_format_from_jinja("{{ '[INST] ' + message['content'] }}", &f));
  EXPECT_EQ(f, ChatFormat::Mistral);
  EXPECT_TRUE(moe::text::chat_format_from_jinja("{{ '<|assistant|>\\n' }}", &f));
  EXPECT_EQ(f, ChatFormat::Tulu);
  EXPECT_TRUE(
      moe::text::chat_format_from_jinja("{{'<\xEF\xBD\x9C"
                                        "Assistant\xEF\xBD\x9C>'}}",
                                        &f));
  EXPECT_EQ(f, ChatFormat::DeepSeek);
  EXPECT_FALSE(moe::text::chat_format_from_jinja("{{ messages }}", &f));
}

}  // namespace
