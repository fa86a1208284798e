// Internals of the byte-level BPE tokenizer shared by training, encoding and tokenizer.json I/O:
// the GPT-2 pre-tokeniser, the GPT-2 byte <-> printable-character mapping and UTF-8 decoding.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace moe::text::detail {

// Character classes of the GPT-2 pre-tokenisation pattern.
enum class CharClass : uint8_t { Letter, Number, Space, Other };

// Finer classes for the Qwen2 / Llama-3 / DeepSeek-V3 patterns: \p{L}, \p{N}, White_Space (\s),
// \p{M}, \p{P}, \p{S}, anything else. Disjoint: no White_Space character is L, N, M, P or S.
enum class CharCat : uint8_t { Letter, Number, Space, Mark, Punct, Symbol, Other };
CharCat char_cat(uint32_t cp);
// \p{No}: a number that is neither a decimal digit (Nd) nor letter-like (Nl), e.g. '²', '①'.
bool is_number_other(uint32_t cp);

// Class of one Unicode code point: \p{L} letters, \p{N} numbers, White_Space, or anything else.
// ASCII is a fixed table; beyond it a table of the non-letter ranges generated from the Unicode
// database by scripts/gen_unicode_classes.py (C++ has no Unicode category lookup), so that the
// split matches the regex engines of GPT-2 and Hugging Face `tokenizers` on every assigned code point.
CharClass char_class(uint32_t cp);

// End (exclusive byte offset) of the pre-token that starts at `pos` < text.size(). Pre-tokens cover
// the text without gaps, so iterating pos = pretoken_end(text, pos) splits it.
//
// This is GPT-2's pattern, written by hand because std::regex is slow and has no \p{L}:
//   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
// tried in order at `pos`:
//   1. an apostrophe followed by s, t, m, d, re, ve or ll (case-sensitive) is a pre-token;
//   2-4. otherwise an optional single ' ' followed by a maximal run of letters, of numbers, or of
//        "other" characters (neither space, letter nor number);
//   5-6. otherwise a run of whitespace; when non-space text follows it, its last character is left
//        out (so it can prefix the next word as " word"), unless the run is one character long.
// Text is decoded as UTF-8; each byte of an invalid sequence counts as one "other" character.
size_t pretoken_end(std::string_view text, size_t pos);

// Splits `text` into pre-tokens (see pretoken_end).
std::vector<std::string_view> pretokenize(std::string_view text);

// GPT-2's byte -> printable character map, as used in tokenizer.json vocabularies: printable
// Latin-1 bytes stand for themselves, the other 68 bytes for U+0100.. in byte order.
uint32_t byte_to_unicode(uint8_t b);
// The 256 bytes in the order of their stand-in characters (GPT-2's token order).
const std::vector<uint8_t>& bytes_in_unicode_order();
// Raw bytes -> the UTF-8 of their stand-in characters ("Ġthe" for " the").
std::string bytes_to_unicode_str(std::string_view raw);
// Inverse of bytes_to_unicode_str; false when `s` is not UTF-8 or holds a character that stands for
// no byte.
bool unicode_str_to_bytes(std::string_view s, std::string& raw);

// Decodes one UTF-8 code point at s[pos]; returns its length in bytes (1..4) and sets cp, or
// returns 0 on an invalid or truncated sequence (overlong forms and surrogates are invalid).
int utf8_decode(std::string_view s, size_t pos, uint32_t& cp);
bool valid_utf8(std::string_view s);

}  // namespace moe::text::detail
