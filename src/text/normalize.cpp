#include "normalize.h"

#include <algorithm>
#include <cstdint>
#include <iterator>
#include <vector>

#include "pretokenize.h"

namespace moe::text::detail {

namespace {

struct CccRange {
  uint32_t lo, hi;
  uint8_t ccc;
};
struct Decomp {
  uint32_t cp;
  uint16_t offset;
  uint8_t len;
};
struct Compose {
  uint32_t first, second, composite;
};

constexpr CccRange kCcc[] = {
#define MOE_NFC_CCC
#include "unicode_nfc.inc"
#undef MOE_NFC_CCC
};
constexpr Decomp kDecomp[] = {
#define MOE_NFC_DECOMP
#include "unicode_nfc.inc"
#undef MOE_NFC_DECOMP
};
constexpr uint32_t kDecompData[] = {
#define MOE_NFC_DECOMP_DATA
#include "unicode_nfc.inc"
#undef MOE_NFC_DECOMP_DATA
};
constexpr Compose kCompose[] = {
#define MOE_NFC_COMPOSE
#include "unicode_nfc.inc"
#undef MOE_NFC_COMPOSE
};

// Hangul syllables (Unicode 3.12).
constexpr uint32_t kSBase = 0xAC00, kLBase = 0x1100, kVBase = 0x1161, kTBase = 0x11A7;
constexpr uint32_t kLCount = 19, kVCount = 21, kTCount = 28, kNCount = kVCount * kTCount,
                   kSCount = kLCount * kNCount;

constexpr uint32_t kInvalidBase = 0x80000000;  // kInvalidBase | byte: an invalid UTF-8 byte

uint8_t ccc_of(uint32_t cp) {
  if (cp < 0x300 || cp >= kInvalidBase) return 0;
  const CccRange* it = std::upper_bound(std::begin(kCcc), std::end(kCcc), cp,
                                        [](uint32_t v, const CccRange& r) { return v < r.lo; });
  if (it != std::begin(kCcc) && cp <= (it - 1)->hi) return (it - 1)->ccc;
  return 0;
}

void decompose(uint32_t cp, std::vector<uint32_t>& out) {
  if (cp >= kSBase && cp < kSBase + kSCount) {
    const uint32_t s = cp - kSBase;
    out.push_back(kLBase + s / kNCount);
    out.push_back(kVBase + (s % kNCount) / kTCount);
    if (s % kTCount) out.push_back(kTBase + s % kTCount);
    return;
  }
  const Decomp* it = std::lower_bound(std::begin(kDecomp), std::end(kDecomp), cp,
                                      [](const Decomp& d, uint32_t v) { return d.cp < v; });
  if (it != std::end(kDecomp) && it->cp == cp) {
    out.insert(out.end(), kDecompData + it->offset, kDecompData + it->offset + it->len);
    return;
  }
  out.push_back(cp);
}

// The primary composite of (a, b), or 0.
uint32_t compose(uint32_t a, uint32_t b) {
  if (a >= kLBase && a < kLBase + kLCount && b >= kVBase && b < kVBase + kVCount)
    return kSBase + ((a - kLBase) * kVCount + (b - kVBase)) * kTCount;
  if (a >= kSBase && a < kSBase + kSCount && (a - kSBase) % kTCount == 0 && b > kTBase &&
      b < kTBase + kTCount)
    return a + (b - kTBase);
  const Compose* it = std::lower_bound(std::begin(kCompose), std::end(kCompose), std::make_pair(a, b),
                                       [](const Compose& c, const std::pair<uint32_t, uint32_t>& v) {
                                         return c.first != v.first ? c.first < v.first : c.second < v.second;
                                       });
  if (it != std::end(kCompose) && it->first == a && it->second == b) return it->composite;
  return 0;
}

void append_utf8(uint32_t cp, std::string& out) {
  if (cp >= kInvalidBase) {
    out.push_back(static_cast<char>(cp & 0xFF));
  } else if (cp < 0x80) {
    out.push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out.push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out.push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

}  // namespace

std::string nfc(std::string_view s) {
  // ASCII is its own NFC, and so is every ASCII character next to it: only the non-ASCII runs (with
  // the ASCII character before each, a possible starter) need the algorithm.
  if (std::all_of(s.begin(), s.end(), [](char c) { return static_cast<unsigned char>(c) < 0x80; }))
    return std::string(s);
  std::vector<uint32_t> cps;
  cps.reserve(s.size());
  for (size_t i = 0; i < s.size();) {
    uint32_t cp;
    const int len = utf8_decode(s, i, cp);
    if (len == 0) {
      cps.push_back(kInvalidBase | static_cast<unsigned char>(s[i]));
      ++i;
      continue;
    }
    decompose(cp, cps);
    i += len;
  }
  // Canonical ordering: stable sort of each run of non-starters by combining class.
  for (size_t i = 0; i < cps.size();) {
    if (ccc_of(cps[i]) == 0) {
      ++i;
      continue;
    }
    size_t j = i;
    while (j < cps.size() && ccc_of(cps[j]) != 0) ++j;
    std::stable_sort(cps.begin() + i, cps.begin() + j,
                     [](uint32_t a, uint32_t b) { return ccc_of(a) < ccc_of(b); });
    i = j;
  }
  // Canonical composition.
  std::vector<uint32_t> out;
  out.reserve(cps.size());
  size_t starter = SIZE_MAX;  // index in `out` of the last starter
  int last_ccc = -1;          // class of the last character appended after that starter
  for (uint32_t cp : cps) {
    const uint8_t c = ccc_of(cp);
    if (starter != SIZE_MAX && cp < kInvalidBase) {
      const bool blocked = last_ccc != -1 && (last_ccc == 0 || last_ccc >= c);
      if (!blocked) {
        if (const uint32_t comp = compose(out[starter], cp)) {
          out[starter] = comp;
          continue;
        }
      }
    }
    if (c == 0) {
      starter = cp < kInvalidBase ? out.size() : SIZE_MAX;
      last_ccc = -1;
    } else {
      last_ccc = c;
    }
    out.push_back(cp);
  }
  std::string res;
  res.reserve(s.size());
  for (uint32_t cp : out) append_utf8(cp, res);
  return res;
}

std::string replace_all(std::string_view s, std::string_view from, std::string_view to) {
  std::string out;
  out.reserve(s.size());
  size_t pos = 0;
  while (true) {
    const size_t hit = s.find(from, pos);
    if (hit == std::string_view::npos) break;
    out.append(s, pos, hit - pos);
    out.append(to);
    pos = hit + from.size();
  }
  out.append(s, pos);
  return out;
}

}  // namespace moe::text::detail
