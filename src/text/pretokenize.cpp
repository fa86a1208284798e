#include "pretokenize.h"

#include <algorithm>
#include <array>

namespace moe::text::detail {

namespace {

struct Range {
  uint32_t lo, hi;  // inclusive
  CharCat cat;
};

// Non-letter code points (generated from the Unicode database; see the .inc file).
constexpr CharCat S = CharCat::Space, N = CharCat::Number, M = CharCat::Mark, P = CharCat::Punct,
                  Y = CharCat::Symbol, O = CharCat::Other;
constexpr Range kRanges[] = {
#include "unicode_classes.inc"
};

constexpr std::array<CharClass, 128> make_ascii_classes() {
  std::array<CharClass, 128> t{};
  for (int c = 0; c < 128; ++c) {
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'))
      t[c] = CharClass::Letter;
    else if (c >= '0' && c <= '9')
      t[c] = CharClass::Number;
    else if (c == ' ' || (c >= '\t' && c <= '\r'))  // \t \n \v \f \r
      t[c] = CharClass::Space;
    else
      t[c] = CharClass::Other;
  }
  return t;
}
constexpr std::array<CharClass, 128> kAscii = make_ascii_classes();

struct Char {
  int len;  // bytes
  CharClass cls;
};

inline Char char_at(std::string_view s, size_t pos) {
  const auto b = static_cast<unsigned char>(s[pos]);
  if (b < 0x80) return {1, kAscii[b]};
  uint32_t cp = 0;
  const int len = utf8_decode(s, pos, cp);
  if (len == 0) return {1, CharClass::Other};  // one byte of invalid UTF-8
  return {len, char_class(cp)};
}

}  // namespace

namespace {
struct NoRange {
  uint32_t lo, hi;
};
constexpr NoRange kNumberOther[] = {
#define MOE_NUMBER_OTHER
#include "unicode_classes.inc"
#undef MOE_NUMBER_OTHER
};
}  // namespace

bool is_number_other(uint32_t cp) {
  const NoRange* it = std::upper_bound(std::begin(kNumberOther), std::end(kNumberOther), cp,
                                       [](uint32_t v, const NoRange& r) { return v < r.lo; });
  return it != std::begin(kNumberOther) && cp <= (it - 1)->hi;
}

CharCat char_cat(uint32_t cp) {
  // Last range with lo <= cp.
  const Range* end = std::end(kRanges);
  const Range* it =
      std::upper_bound(std::begin(kRanges), end, cp, [](uint32_t v, const Range& r) { return v < r.lo; });
  if (it != std::begin(kRanges) && cp <= (it - 1)->hi) return (it - 1)->cat;
  return CharCat::Letter;
}

CharClass char_class(uint32_t cp) {
  if (cp < 0x80) return kAscii[cp];
  switch (char_cat(cp)) {
    case CharCat::Letter:
      return CharClass::Letter;
    case CharCat::Number:
      return CharClass::Number;
    case CharCat::Space:
      return CharClass::Space;
    default:
      return CharClass::Other;
  }
}

int utf8_decode(std::string_view s, size_t pos, uint32_t& cp) {
  const size_t n = s.size();
  const auto b0 = static_cast<unsigned char>(s[pos]);
  if (b0 < 0x80) {
    cp = b0;
    return 1;
  }
  int len;
  uint32_t min;
  if ((b0 & 0xE0) == 0xC0) {
    len = 2, min = 0x80, cp = b0 & 0x1F;
  } else if ((b0 & 0xF0) == 0xE0) {
    len = 3, min = 0x800, cp = b0 & 0x0F;
  } else if ((b0 & 0xF8) == 0xF0) {
    len = 4, min = 0x10000, cp = b0 & 0x07;
  } else {
    return 0;
  }
  if (pos + len > n) return 0;
  for (int k = 1; k < len; ++k) {
    const auto b = static_cast<unsigned char>(s[pos + k]);
    if ((b & 0xC0) != 0x80) return 0;
    cp = (cp << 6) | (b & 0x3F);
  }
  if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return 0;
  return len;
}

bool valid_utf8(std::string_view s) {
  uint32_t cp;
  for (size_t i = 0; i < s.size();) {
    const int len = utf8_decode(s, i, cp);
    if (len == 0) return false;
    i += len;
  }
  return true;
}

size_t pretoken_end(std::string_view text, size_t pos) {
  const size_t n = text.size();
  const char c0 = text[pos];
  // 1. Contractions.
  if (c0 == '\'' && pos + 1 < n) {
    const char a = text[pos + 1];
    if (a == 's' || a == 't' || a == 'm' || a == 'd') return pos + 2;
    if (pos + 2 < n) {
      const char b = text[pos + 2];
      if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) return pos + 3;
    }
  }
  const Char first = char_at(text, pos);
  // 2-4. ' ?' then a run of letters, numbers or others.
  size_t run_start = pos;
  Char run = first;
  if (c0 == ' ' && pos + 1 < n) {
    const Char next = char_at(text, pos + 1);
    if (next.cls != CharClass::Space) run_start = pos + 1, run = next;
  }
  if (run.cls != CharClass::Space) {
    size_t k = run_start + run.len;
    while (k < n) {
      const Char c = char_at(text, k);
      if (c.cls != run.cls) break;
      k += c.len;
    }
    return k;
  }
  // 5-6. Whitespace: \s+(?!\S) keeps the last character back when non-space text follows; a single
  // whitespace character before non-space text is matched by \s+.
  size_t k = pos, last = pos;
  while (k < n) {
    const Char c = char_at(text, k);
    if (c.cls != CharClass::Space) break;
    last = k;
    k += c.len;
  }
  if (k == n || last == pos) return k;
  return last;
}

std::vector<std::string_view> pretokenize(std::string_view text) {
  std::vector<std::string_view> out;
  for (size_t pos = 0; pos < text.size();) {
    const size_t end = pretoken_end(text, pos);
    out.push_back(text.substr(pos, end - pos));
    pos = end;
  }
  return out;
}

namespace {
struct ByteMap {
  std::array<uint32_t, 256> to_cp{};
  std::array<int16_t, 324> from_cp{};  // code point (< 256 + 68) -> byte, -1 for none
  std::vector<uint8_t> order;          // bytes sorted by their code point
  ByteMap() {
    from_cp.fill(-1);
    uint32_t extra = 0;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
      to_cp[b] = printable ? static_cast<uint32_t>(b) : 256 + extra++;
      from_cp[to_cp[b]] = static_cast<int16_t>(b);
    }
    for (uint32_t cp = 0; cp < from_cp.size(); ++cp)
      if (from_cp[cp] >= 0) order.push_back(static_cast<uint8_t>(from_cp[cp]));
  }
};
const ByteMap& byte_map() {
  static const ByteMap m;
  return m;
}
}  // namespace

uint32_t byte_to_unicode(uint8_t b) { return byte_map().to_cp[b]; }

const std::vector<uint8_t>& bytes_in_unicode_order() { return byte_map().order; }

std::string bytes_to_unicode_str(std::string_view raw) {
  const ByteMap& m = byte_map();
  std::string out;
  out.reserve(raw.size() * 2);
  for (char ch : raw) {
    const uint32_t cp = m.to_cp[static_cast<unsigned char>(ch)];
    if (cp < 0x80) {
      out.push_back(static_cast<char>(cp));
    } else {  // every stand-in is < U+0800: two UTF-8 bytes
      out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
      out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    }
  }
  return out;
}

bool unicode_str_to_bytes(std::string_view s, std::string& raw) {
  const ByteMap& m = byte_map();
  raw.clear();
  uint32_t cp;
  for (size_t i = 0; i < s.size();) {
    const int len = utf8_decode(s, i, cp);
    if (len == 0 || cp >= m.from_cp.size() || m.from_cp[cp] < 0) return false;
    raw.push_back(static_cast<char>(m.from_cp[cp]));
    i += len;
  }
  return true;
}

}  // namespace moe::text::detail
