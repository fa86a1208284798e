// Tokenizer: decoding through the tokenizer.json decoder chain, and single-token bytes.
#include <algorithm>

#include "moe/core/error.h"
#include "normalize.h"
#include "pretokenize.h"
#include "tokenizer_impl.h"

namespace moe::text {

namespace {

using DecStep = Tokenizer::Impl::DecStep;

// The byte of a "<0xXX>" token (hex digits of either case), or -1.
int byte_of_fallback_token(std::string_view t) {
  if (t.size() != 6 || t.compare(0, 3, "<0x") != 0 || t[5] != '>') return -1;
  int v = 0;
  for (int k = 3; k < 5; ++k) {
    const char c = t[k];
    int d;
    if (c >= '0' && c <= '9')
      d = c - '0';
    else if (c >= 'a' && c <= 'f')
      d = c - 'a' + 10;
    else if (c >= 'A' && c <= 'F')
      d = c - 'A' + 10;
    else
      return -1;
    v = v * 16 + d;
  }
  return v;
}

// The characters of UTF-8 text (invalid bytes one each).
std::vector<std::string_view> chars_of(std::string_view s) {
  std::vector<std::string_view> out;
  uint32_t cp;
  for (size_t i = 0; i < s.size();) {
    int len = detail::utf8_decode(s, i, cp);
    if (len == 0) len = 1;
    out.push_back(s.substr(i, len));
    i += len;
  }
  return out;
}

// Hugging Face's ByteFallback decoder: runs of <0xXX> tokens become their bytes when those are
// UTF-8, else one U+FFFD per byte.
std::vector<std::string> byte_fallback(std::vector<std::string> toks) {
  std::vector<std::string> out;
  std::string run;
  size_t run_len = 0;
  auto flush = [&] {
    if (run_len == 0) return;
    if (detail::valid_utf8(run)) {
      out.push_back(run);
    } else {
      for (size_t k = 0; k < run_len; ++k) out.emplace_back("\xEF\xBF\xBD");
    }
    run.clear();
    run_len = 0;
  };
  for (std::string& t : toks) {
    const int b = byte_of_fallback_token(t);
    if (b >= 0) {
      run.push_back(static_cast<char>(b));
      ++run_len;
    } else {
      flush();
      out.push_back(std::move(t));
    }
  }
  flush();
  return out;
}

std::string strip(const std::string& t, const std::string& c, int start, int stop) {
  const std::vector<std::string_view> ch = chars_of(t);
  size_t b = 0, e = ch.size();
  for (int k = 0; k < start && b < ch.size() && ch[b] == c; ++k) ++b;
  for (int k = 0; k < stop && e > b && ch[e - 1] == c; ++k) --e;
  std::string out;
  for (size_t k = b; k < e; ++k) out += ch[k];
  return out;
}

std::string metaspace(const std::string& t, const std::string& rep, bool drop) {
  std::string out;
  for (std::string_view c : chars_of(t)) {
    if (c == rep) {
      if (!drop) out.push_back(' ');
    } else {
      out += c;
    }
  }
  return out;
}

bool has_step(const std::vector<DecStep>& d, DecStep::Kind k) {
  return std::any_of(d.begin(), d.end(), [&](const DecStep& s) { return s.kind == k; });
}

}  // namespace

std::string Tokenizer::Impl::decoder_input(int32_t id) const {
  const std::string& t = tokens[id];
  if (!is_added[id]) return t;
  // An added token goes through the ByteLevel decoder as characters: when each stands for a byte,
  // it decodes to those bytes (Hugging Face's rule), else to itself.
  std::string raw;
  if (has_step(decoder, DecStep::ByteLevel) && detail::unicode_str_to_bytes(t, raw)) return raw;
  return t;
}

std::string Tokenizer::decode(const std::vector<int32_t>& ids) const {
  const Impl& m = *impl_;
  const auto n = static_cast<int32_t>(m.tokens.size());
  for (size_t i = 0; i < ids.size(); ++i)
    MOE_CHECK(ids[i] >= 0 && ids[i] < n, "tokenizer: decode: id ", ids[i], " at position ", i,
              " is outside the vocabulary [0, ", n, ")");
  std::vector<std::string> toks;
  toks.reserve(ids.size());
  for (int32_t id : ids) toks.push_back(m.decoder_input(id));
  for (const DecStep& st : m.decoder) {
    switch (st.kind) {
      case DecStep::ByteLevel:
        if (!m.byte_level) {  // vocabulary strings: their characters stand for bytes where they all do
          std::string raw;
          for (std::string& t : toks)
            if (detail::unicode_str_to_bytes(t, raw)) t = raw;
        }
        break;  // byte-level vocabularies are held as bytes already
      case DecStep::Replace:
        for (std::string& t : toks) t = detail::replace_all(t, st.a, st.b);
        break;
      case DecStep::ByteFallback:
        toks = byte_fallback(std::move(toks));
        break;
      case DecStep::Fuse: {
        std::string all;
        for (const std::string& t : toks) all += t;
        toks.assign(1, std::move(all));
        break;
      }
      case DecStep::Strip:
        for (std::string& t : toks) t = strip(t, st.a, st.start, st.stop);
        break;
      case DecStep::Metaspace:
        for (size_t i = 0; i < toks.size(); ++i) toks[i] = metaspace(toks[i], st.a, i == 0 && st.prepend);
        break;
    }
  }
  std::string out;
  for (const std::string& t : toks) out += t;
  return out;
}

std::string Tokenizer::token_bytes(int32_t id) const {
  MOE_CHECK(id >= 0 && id < vocab_size(), "tokenizer: token id ", id, " is outside the vocabulary [0, ",
            vocab_size(), ")");
  const Impl& m = *impl_;
  if (m.byte_level || m.is_added[id]) return m.tokens[id];
  std::string t = m.tokens[id];
  const int b = byte_of_fallback_token(t);
  if (b >= 0 && has_step(m.decoder, DecStep::ByteFallback)) return std::string(1, static_cast<char>(b));
  for (const DecStep& st : m.decoder) {
    if (st.kind == DecStep::Replace) t = detail::replace_all(t, st.a, st.b);
    if (st.kind == DecStep::Metaspace) t = metaspace(t, st.a, false);
  }
  return t;
}

}  // namespace moe::text
