// Fuzzes tokenizer.json: Tokenizer::load, then on a tokenizer that loads, encode and decode of a
// short fixed text (plain words, digits, whitespace runs, non-ASCII, invalid UTF-8 and added-token
// markers), every token's bytes and the decoding of the first ids. Only moe::Error may come out.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "fuzz_input.h"
#include "moe/core/error.h"
#include "moe/text/tokenizer.h"

namespace {
const std::string kText =
    "Hello, world! It's 2024:  12345 tokens\n\n\tand   spaces "
    "na\xC3\xAFve caf\xC3\xA9 \xE4\xB8\xAD\xE6\x96\x87 \xF0\x9F\x99\x82 "
    "e\xCC\x81 \xFF\xFE bad utf-8 <s></s><|endoftext|><|im_start|>user<|im_end|> [INST]";
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static moe::fuzz::InputFile file("tokenizer.json");
  const std::string& path = file.write(data, size);
  try {
    const moe::text::Tokenizer tok = moe::text::Tokenizer::load(path);
    const int32_t n = tok.vocab_size();
    std::vector<int32_t> ids = tok.encode(kText);
    for (int32_t id : ids)
      if (id < 0 || id >= n) __builtin_trap();  // encode must give ids of the vocabulary
    (void)tok.decode(ids);
    moe::text::EncodeOptions with_special;
    with_special.add_special_tokens = true;
    (void)tok.decode(tok.encode(kText, with_special));
    std::vector<int32_t> first;
    for (int32_t id = 0; id < std::min<int32_t>(n, 512); ++id) {
      (void)tok.token_bytes(id);
      first.push_back(id);
    }
    (void)tok.decode(first);
    (void)tok.eos_id();
    (void)tok.bos_id();
    for (int32_t r = 0; r < std::min<int32_t>(tok.num_merges(), 64); ++r) (void)tok.merge(r);
  } catch (const moe::Error&) {
  }
  return 0;
}
