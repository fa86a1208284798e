#include "pretok_patterns.h"

#include "pretokenize.h"

namespace moe::text::detail {

namespace {

constexpr uint32_t kInvalid = 0xFFFFFFFF;  // an invalid UTF-8 byte

struct U {
  uint32_t cp;
  int len;
  CharCat cat;
};

inline U at(std::string_view s, size_t pos) {
  const auto b = static_cast<unsigned char>(s[pos]);
  if (b < 0x80) return {b, 1, char_cat(b)};
  uint32_t cp = 0;
  const int len = utf8_decode(s, pos, cp);
  if (len == 0) return {kInvalid, 1, CharCat::Other};
  return {cp, len, char_cat(cp)};
}

inline bool is_crlf(uint32_t cp) { return cp == '\r' || cp == '\n'; }

template <class Pred>
size_t run(std::string_view s, size_t pos, Pred pred, size_t max_chars = SIZE_MAX) {
  size_t k = pos, count = 0;
  while (k < s.size() && count < max_chars) {
    const U c = at(s, k);
    if (c.cp == kInvalid || !pred(c)) break;
    k += c.len;
    ++count;
  }
  return k;
}

// \s*[\r\n]+|\s+(?!\S)|\s+ at a whitespace character (with_newline_rule: the first alternative).
size_t whitespace_end(std::string_view s, size_t pos, bool with_newline_rule) {
  size_t k = pos, last_start = pos, after_newline = 0;
  while (k < s.size()) {
    const U c = at(s, k);
    if (c.cat != CharCat::Space) break;
    last_start = k;
    k += c.len;
    if (is_crlf(c.cp)) after_newline = k;
  }
  if (with_newline_rule && after_newline > 0) return after_newline;
  if (k == s.size() || last_start == pos) return k;
  return last_start;
}

char ascii_lower(char c) { return c >= 'A' && c <= 'Z' ? static_cast<char>(c + 32) : c; }

// (?i:'s|'t|'re|'ve|'m|'ll|'d) at an apostrophe; 0 when none.
size_t contraction_end(std::string_view s, size_t pos, bool ignore_case) {
  const size_t n = s.size();
  if (s[pos] != '\'' || pos + 1 >= n) return 0;
  auto lo = [&](char c) { return ignore_case ? ascii_lower(c) : c; };
  const char a = lo(s[pos + 1]);
  if (a == 's' || a == 't' || a == 'm' || a == 'd') return pos + 2;
  // U+017F LATIN SMALL LETTER LONG S case-folds to 's'.
  if (ignore_case && s.substr(pos + 1, 2) == "\xC5\xBF") return pos + 3;
  if (pos + 2 < n) {
    const char b = lo(s[pos + 2]);
    if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) return pos + 3;
  }
  return 0;
}

bool letter(const U& c) { return c.cat == CharCat::Letter; }
bool number(const U& c) { return c.cat == CharCat::Number; }
bool not_space_letter_number(const U& c) {
  return c.cat != CharCat::Space && c.cat != CharCat::Letter && c.cat != CharCat::Number;
}
bool letter_or_mark(const U& c) { return c.cat == CharCat::Letter || c.cat == CharCat::Mark; }
bool punct_or_symbol(const U& c) { return c.cat == CharCat::Punct || c.cat == CharCat::Symbol; }
bool ascii_letter(const U& c) { return (c.cp | 0x20) >= 'a' && (c.cp | 0x20) <= 'z' && c.cp < 0x80; }

// Qwen2 (max_digits 1) and Llama-3 (max_digits 3).
size_t qwen2_end(std::string_view s, size_t pos, size_t max_digits) {
  const size_t n = s.size();
  if (size_t e = contraction_end(s, pos, true)) return e;
  const U c0 = at(s, pos);
  // [^\r\n\p{L}\p{N}]?\p{L}+
  if (c0.cat == CharCat::Letter) return run(s, pos, letter);
  if (!is_crlf(c0.cp) && c0.cat != CharCat::Number && pos + c0.len < n && letter(at(s, pos + c0.len)))
    return run(s, pos + c0.len, letter);
  // \p{N} or \p{N}{1,3}
  if (c0.cat == CharCat::Number) return run(s, pos, number, max_digits);
  //  ?[^\s\p{L}\p{N}]+[\r\n]*
  size_t k = pos;
  if (s[pos] == ' ' && pos + 1 < n && not_space_letter_number(at(s, pos + 1))) k = pos + 1;
  if (not_space_letter_number(at(s, k))) {
    k = k + at(s, k).len;
    while (k < n && not_space_letter_number(at(s, k))) k += at(s, k).len;
    while (k < n && (s[k] == '\r' || s[k] == '\n')) ++k;
    return k;
  }
  return whitespace_end(s, pos, true);  // c0 is whitespace
}

bool ascii_punct(unsigned char b) {
  return (b >= 0x21 && b <= 0x2F) || (b >= 0x3A && b <= 0x40) || (b >= 0x5B && b <= 0x60) ||
         (b >= 0x7B && b <= 0x7E);
}

size_t deepseek_words_end(std::string_view s, size_t pos) {
  const size_t n = s.size();
  const U c0 = at(s, pos);
  // [!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+
  if (ascii_punct(static_cast<unsigned char>(s[pos])) && pos + 1 < n && ascii_letter(at(s, pos + 1)))
    return run(s, pos + 1, ascii_letter);
  // [^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+
  if (!is_crlf(c0.cp) && c0.cat != CharCat::Letter && !punct_or_symbol(c0) && pos + c0.len < n &&
      letter_or_mark(at(s, pos + c0.len)))
    return run(s, pos + c0.len, letter_or_mark);
  if (letter_or_mark(c0)) return run(s, pos, letter_or_mark);
  //  ?[\p{P}\p{S}]+[\r\n]*
  size_t k = pos;
  if (s[pos] == ' ' && pos + 1 < n && punct_or_symbol(at(s, pos + 1))) k = pos + 1;
  if (punct_or_symbol(at(s, k))) {
    k = run(s, k, punct_or_symbol);
    while (k < n && (s[k] == '\r' || s[k] == '\n')) ++k;
    return k;
  }
  if (c0.cat == CharCat::Space) return whitespace_end(s, pos, true);
  return pos;  // numbers, controls, invalid bytes: no alternative matches here
}

bool deepseek_cjk(const U& c) {
  return (c.cp >= 0x4E00 && c.cp <= 0x9FA5) || (c.cp >= 0x3040 && c.cp <= 0x30FF);
}

// The regex sources; "\r" and "\n" as two-character escapes.
struct Known {
  const char* regex;
  SplitPattern p;
};
const Known kKnown[] = {
    {R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)", SplitPattern::Gpt2},
    {R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)",
     SplitPattern::Qwen2},
    {R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)",
     SplitPattern::Llama3},
    {R"(\p{N}{1,3})", SplitPattern::DeepSeekDigits},
    {"[\u4E00-\u9FA5\u3040-\u309F\u30A0-\u30FF]+", SplitPattern::DeepSeekCjk},
    {R"([!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)",
     SplitPattern::DeepSeekWords},
};

}  // namespace

bool find_split_pattern(std::string_view regex, SplitPattern& out) {
  std::string canon;
  canon.reserve(regex.size());
  for (char c : regex) {
    if (c == '\r')
      canon += "\\r";
    else if (c == '\n')
      canon += "\\n";
    else
      canon += c;
  }
  for (const Known& k : kKnown)
    if (canon == k.regex) {
      out = k.p;
      return true;
    }
  return false;
}

std::string known_split_patterns() {
  std::string out;
  for (const Known& k : kKnown) (out += "  ") += std::string(k.regex) + "\n";
  return out;
}

size_t split_match_end(SplitPattern p, std::string_view literal, std::string_view s, size_t pos) {
  switch (p) {
    case SplitPattern::Gpt2:
      return pretoken_end(s, pos);
    case SplitPattern::Qwen2:
      return qwen2_end(s, pos, 1);
    case SplitPattern::Llama3:
      return qwen2_end(s, pos, 3);
    case SplitPattern::DeepSeekDigits:
      return run(s, pos, number, 3);
    case SplitPattern::DeepSeekCjk:
      return run(s, pos, deepseek_cjk);
    case SplitPattern::DeepSeekWords:
      return deepseek_words_end(s, pos);
    case SplitPattern::Literal:
      return !literal.empty() && s.compare(pos, literal.size(), literal) == 0 ? pos + literal.size() : pos;
  }
  return pos;
}

void split_isolated(SplitPattern p, std::string_view literal, std::string_view piece,
                    std::vector<std::string_view>& out) {
  size_t gap = 0, pos = 0;
  while (pos < piece.size()) {
    const size_t end = split_match_end(p, literal, piece, pos);
    if (end > pos) {
      if (gap < pos) out.push_back(piece.substr(gap, pos - gap));
      out.push_back(piece.substr(pos, end - pos));
      pos = gap = end;
    } else {
      pos += at(piece, pos).len;
    }
  }
  if (gap < piece.size()) out.push_back(piece.substr(gap));
}

}  // namespace moe::text::detail
