// Fuzzes the encoder on hostile text (a prompt is any bytes a client sends): byte 0 picks one of
// the tokenizer.json fixtures of the supported families (tests/fixtures/tokenizers), the rest is
// the text, encoded with and without the special tokens and decoded again. Only moe::Error may
// come out; every id must be in the vocabulary.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "moe/core/error.h"
#include "moe/text/tokenizer.h"

namespace {
const std::vector<moe::text::Tokenizer>& tokenizers() {
  static const std::vector<moe::text::Tokenizer> all = [] {
    std::vector<moe::text::Tokenizer> v;
    for (const char* name : {"olmoe", "qwen2", "deepseek_v3", "mixtral", "mistral_metaspace"})
      v.push_back(
          moe::text::Tokenizer::load(std::string(MOE_FUZZ_TOKENIZERS) + "/" + name + "/tokenizer.json"));
    return v;
  }();
  return all;
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const moe::text::Tokenizer& tok = tokenizers()[data[0] % tokenizers().size()];
  const std::string_view text(reinterpret_cast<const char*>(data) + 1, size - 1);
  try {
    for (bool special : {false, true}) {
      moe::text::EncodeOptions opts;
      opts.add_special_tokens = special;
      const std::vector<int32_t> ids = tok.encode(text, opts);
      for (int32_t id : ids)
        if (id < 0 || id >= tok.vocab_size()) __builtin_trap();
      (void)tok.decode(ids);
    }
  } catch (const moe::Error&) {
  }
  return 0;
}
