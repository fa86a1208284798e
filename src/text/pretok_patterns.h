// The Split pre-tokenizer patterns of real tokenizer.json files, matched by hand (no regex engine):
// each known pattern string is recognised exactly and has its own matcher; any other is refused.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace moe::text::detail {

enum class SplitPattern : uint8_t {
  Gpt2,            // 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
  Qwen2,           // (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|
                   // ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
  Llama3,          // the same with \p{N}{1,3} in place of \p{N}
  DeepSeekDigits,  // \p{N}{1,3}
  DeepSeekCjk,     // [一-龥぀-ゟ゠-ヿ]+
  DeepSeekWords,   // [!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+|
                   //   ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
  Literal,         // a {"String": ...} pattern: the exact bytes
};

// The pattern whose regex source is `regex` (as tokenizer.json holds it, after JSON unescaping;
// "\r"/"\n" may be written as escapes or as the characters). False when it is none of the above.
bool find_split_pattern(std::string_view regex, SplitPattern& out);
// The known regex sources, one per line, for error messages.
std::string known_split_patterns();

// End (exclusive) of the match of `p` that starts at `pos` in `s`, or `pos` when none starts there.
// Like the regex engines, the match only sees `s` (lookahead stops at its end). Invalid UTF-8 bytes
// count as one character each of no class (\p{..} never matches them; [^...] does).
size_t split_match_end(SplitPattern p, std::string_view literal, std::string_view s, size_t pos);

// Split with behavior Isolated: the leftmost non-overlapping matches of `p` in `piece` and the
// (non-empty) text between them, in order, appended to `out`.
void split_isolated(SplitPattern p, std::string_view literal, std::string_view piece,
                    std::vector<std::string_view>& out);

}  // namespace moe::text::detail
