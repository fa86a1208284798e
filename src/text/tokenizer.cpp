// Tokenizer: the derived tables and encoding. Training is in bpe_train.cpp, decoding in
// tokenizer_decode.cpp, tokenizer.json I/O in tokenizer_json.cpp and tokenizer_pipeline.cpp.
#include <algorithm>
#include <climits>
#include <cstdio>
#include <deque>

#include "moe/core/error.h"
#include "normalize.h"
#include "pretokenize.h"
#include "tokenizer_impl.h"

namespace moe::text {

namespace {

// Words up to this many symbols are merged in a small array (a rescan per merge, cheap for the
// short words of natural text); longer ones with a heap, so a huge word costs O(n log n).
constexpr size_t kShortWord = 256;

std::string hex_byte(unsigned char b) {
  char buf[8];
  std::snprintf(buf, sizeof(buf), "0x%02X", b);
  return buf;
}

// Start of the character that ends at `pos` (> 0) in UTF-8 text.
size_t prev_char_start(std::string_view s, size_t pos) {
  size_t k = pos - 1;
  while (k > 0 && pos - k < 4 && (static_cast<unsigned char>(s[k]) & 0xC0) == 0x80) --k;
  uint32_t cp;
  return detail::utf8_decode(s, k, cp) == static_cast<int>(pos - k) ? k : pos - 1;
}

detail::CharCat cat_at(std::string_view s, size_t pos, int& len) {
  uint32_t cp;
  len = detail::utf8_decode(s, pos, cp);
  if (len == 0) {
    len = 1;
    return detail::CharCat::Other;
  }
  return detail::char_cat(cp);
}

// Whether the character at `pos` is a word character of Rust's regex \w, which single_word tests
// on the neighbours of a match: letters, marks, digits and letter-like numbers (Nd, Nl; not '²'),
// connector punctuation ('_', '‿', ...) and the joiners U+200C/U+200D. (Rust's \w also counts the
// few symbols with the Alphabetic property, such as circled letters; they are not word characters here.)
bool word_char_at(std::string_view s, size_t pos) {
  uint32_t cp;
  if (detail::utf8_decode(s, pos, cp) == 0) return false;
  const detail::CharCat c = detail::char_cat(cp);
  if (c == detail::CharCat::Letter || c == detail::CharCat::Mark) return true;
  if (c == detail::CharCat::Number) return !detail::is_number_other(cp);
  return cp == '_' || cp == 0x203F || cp == 0x2040 || cp == 0x2054 || cp == 0xFE33 || cp == 0xFE34 ||
         (cp >= 0xFE4D && cp <= 0xFE4F) || cp == 0xFF3F || cp == 0x200C || cp == 0x200D;
}

}  // namespace

void Tokenizer::Impl::finalize(const std::string& where) {
  const auto n = static_cast<int32_t>(tokens.size());
  is_added.assign(tokens.size(), false);
  for (const AddedToken& a : added) {
    MOE_CHECK(a.id >= 0 && a.id < n, where, ": added token '", a.content, "' has id ", a.id,
              " outside the vocabulary [0, ", n, ")");
    MOE_CHECK(!a.content.empty(), where, ": added token with id ", a.id, " has empty content");
    MOE_CHECK(tokens[a.id] == a.content, where, ": added token id ", a.id, " is '", a.content,
              "' but the vocabulary holds another token under that id");
    is_added[a.id] = true;
  }
  ids.clear();
  ids.reserve(tokens.size() * 2);
  for (int32_t i = 0; i < n; ++i) {
    if (is_added[i]) continue;
    const bool fresh = ids.emplace(tokens[i], i).second;
    MOE_CHECK(fresh, where, ": ids ", ids[tokens[i]], " and ", i, " are the same token");
  }
  byte_id.fill(-1);
  fallback_id.fill(-1);
  char_id.clear();
  if (byte_level) {
    for (int b = 0; b < 256; ++b) {
      auto it = ids.find(std::string(1, static_cast<char>(b)));
      if (it != ids.end()) byte_id[b] = it->second;
    }
  } else {
    for (int b = 0; b < 256; ++b) {
      char name[8];
      std::snprintf(name, sizeof(name), "<0x%02X>", b);
      auto it = ids.find(name);
      if (it != ids.end()) fallback_id[b] = it->second;
    }
    for (int32_t i = 0; i < n; ++i) {
      uint32_t cp;
      const std::string& t = tokens[i];
      if (!is_added[i] && !t.empty() && detail::utf8_decode(t, 0, cp) == static_cast<int>(t.size()))
        char_id.emplace(cp, i);
    }
  }
  for (const AddedToken& a : added) ids[a.content] = a.id;
  unk_id = -1;
  if (!unk_token.empty()) {  // like Hugging Face, a missing unk token only matters when it is needed
    auto it = ids.find(unk_token);
    if (it != ids.end()) unk_id = it->second;
  }
  if (pre.empty() && byte_level) {
    PreStep b;
    b.kind = PreStep::ByteLevel;
    b.add_prefix_space = add_prefix_space;
    b.use_regex = use_regex;
    pre.push_back(b);
  }

  merge_of.clear();
  merge_of.reserve(merges.size() * 2);
  for (size_t r = 0; r < merges.size(); ++r) {
    const Merge& m = merges[r];
    MOE_CHECK(m.left >= 0 && m.left < n && m.right >= 0 && m.right < n && m.result >= 0 && m.result < n,
              where, ": merge ", r, " refers to an id outside [0, ", n, ")");
    MOE_CHECK(tokens[m.result] == tokens[m.left] + tokens[m.right], where, ": merge ", r,
              " does not produce the concatenation of its two tokens");
    merge_of.emplace(pair_key(m.left, m.right), MergeInfo{static_cast<int32_t>(r), m.result});  // first wins
  }
  added_norm.assign(added.size(), std::string());
  any_added = {false, false};
  for (auto& pass : added_at_byte)
    for (auto& v : pass) v.clear();
  for (size_t k = 0; k < added.size(); ++k) {
    const int pass = added[k].normalized ? 1 : 0;
    added_norm[k] = pass ? normalize(added[k].content) : added[k].content;
    MOE_CHECK(!added_norm[k].empty(), where, ": added token '", added[k].content, "' normalizes to nothing");
    added_at_byte[pass][static_cast<unsigned char>(added_norm[k][0])].push_back(static_cast<int32_t>(k));
    any_added[pass] = true;
  }
  for (auto& pass : added_at_byte)
    for (auto& v : pass)
      std::stable_sort(v.begin(), v.end(),
                       [&](int32_t a, int32_t b) { return added_norm[a].size() > added_norm[b].size(); });
  MOE_CHECK(eos >= -1 && eos < n, where, ": eos id ", eos, " outside the vocabulary");
  for (int32_t id : post_prefix)
    MOE_CHECK(id >= 0 && id < n, where, ": post_processor id ", id, " outside the vocabulary");
  for (int32_t id : post_suffix)
    MOE_CHECK(id >= 0 && id < n, where, ": post_processor id ", id, " outside the vocabulary");
}

int32_t Tokenizer::Impl::byte_token(unsigned char b) const {
  const int32_t id = byte_id[b];
  MOE_CHECK(id >= 0, "tokenizer: byte ", hex_byte(b),
            " of the input has no token in the vocabulary (not a complete byte-level vocabulary)");
  return id;
}

std::string Tokenizer::Impl::normalize(std::string_view text) const {
  std::string s(text);
  for (const NormStep& st : normalizer) {
    switch (st.kind) {
      case NormStep::Nfc:
        s = detail::nfc(s);
        break;
      case NormStep::Prepend:
        if (!s.empty()) s.insert(0, st.a);
        break;
      case NormStep::Replace:
        s = detail::replace_all(s, st.a, st.b);
        break;
    }
  }
  return s;
}

void Tokenizer::Impl::merge_symbols(int32_t* sym, size_t n, std::vector<int32_t>& out) const {
  auto find = [&](int32_t a, int32_t b) -> const MergeInfo* {
    auto it = merge_of.find(pair_key(a, b));
    return it == merge_of.end() ? nullptr : &it->second;
  };
  if (n <= kShortWord) {
    // sym[i] are the current tokens, rank[i] the rank of the pair (sym[i], sym[i+1]) (INT_MAX: none).
    // Each step merges the lowest-ranked pair, leftmost first, and updates its two neighbours.
    int32_t rank[kShortWord], result[kShortWord];
    size_t len = n;
    auto set_rank = [&](size_t i) {
      const MergeInfo* m = find(sym[i], sym[i + 1]);
      rank[i] = m ? m->rank : INT_MAX;
      result[i] = m ? m->result : -1;
    };
    for (size_t i = 0; i + 1 < len; ++i) set_rank(i);
    while (len > 1) {
      size_t best = 0;
      for (size_t i = 1; i + 1 < len; ++i)
        if (rank[i] < rank[best]) best = i;
      if (rank[best] == INT_MAX) break;
      sym[best] = result[best];
      for (size_t i = best + 1; i + 1 < len; ++i) {
        sym[i] = sym[i + 1];
        rank[i] = rank[i + 1];
        result[i] = result[i + 1];
      }
      --len;
      if (best > 0) set_rank(best - 1);
      if (best + 1 < len) set_rank(best);
    }
    out.insert(out.end(), sym, sym + len);
    return;
  }
  // Long word: linked list of symbols and a min-heap of candidate pairs keyed by (rank, position),
  // packed in 64 bits. pair[p] is the merge of the pair that now starts at p (rank INT_MAX: none),
  // so a popped candidate is stale when its rank is no longer pair[p].rank.
  struct Sym {
    int32_t id, prev, next;
  };
  std::vector<Sym> syms(n);
  std::vector<MergeInfo> pair(n, MergeInfo{INT_MAX, -1});
  for (size_t i = 0; i < n; ++i)
    syms[i] = {sym[i], static_cast<int32_t>(i) - 1, i + 1 < n ? static_cast<int32_t>(i + 1) : -1};
  auto key = [](int32_t rank, int32_t pos) {
    return (static_cast<uint64_t>(rank) << 32) | static_cast<uint32_t>(pos);
  };
  std::vector<uint64_t> heap;
  heap.reserve(n);
  // Sets pair[p] from the current symbols; returns whether it has a merge.
  auto set_pair = [&](int32_t p) {
    const int32_t q = syms[p].next;
    const MergeInfo* m = q < 0 ? nullptr : find(syms[p].id, syms[q].id);
    pair[p] = m ? *m : MergeInfo{INT_MAX, -1};
    return m != nullptr;
  };
  auto push = [&](int32_t p) {
    if (set_pair(p)) {
      heap.push_back(key(pair[p].rank, p));
      std::push_heap(heap.begin(), heap.end(), std::greater<>());
    }
  };
  for (size_t i = 0; i + 1 < n; ++i)
    if (set_pair(static_cast<int32_t>(i))) heap.push_back(key(pair[i].rank, static_cast<int32_t>(i)));
  std::make_heap(heap.begin(), heap.end(), std::greater<>());
  while (!heap.empty()) {
    std::pop_heap(heap.begin(), heap.end(), std::greater<>());
    const uint64_t top = heap.back();
    heap.pop_back();
    const auto p = static_cast<int32_t>(top & 0xFFFFFFFF);
    const auto rank = static_cast<int32_t>(top >> 32);
    if (syms[p].id < 0 || pair[p].rank != rank) continue;  // merged away or the pair changed
    const int32_t q = syms[p].next;
    syms[p].id = pair[p].result;
    syms[p].next = syms[q].next;
    if (syms[q].next >= 0) syms[syms[q].next].prev = p;
    syms[q].id = -1;
    pair[q].rank = INT_MAX;
    if (syms[p].prev >= 0) push(syms[p].prev);
    push(p);
  }
  for (int32_t p = 0; p >= 0; p = syms[p].next) out.push_back(syms[p].id);
}

void Tokenizer::Impl::encode_word(std::string_view word, std::vector<int32_t>& out,
                                  std::vector<int32_t>& sym) const {
  const size_t n = word.size();
  if (n == 0) return;
  if (ignore_merges) {
    auto it = ids.find(std::string(word));
    if (it != ids.end()) {
      out.push_back(it->second);
      return;
    }
  }
  sym.clear();
  if (byte_level) {
    for (size_t i = 0; i < n; ++i) sym.push_back(byte_token(static_cast<unsigned char>(word[i])));
  } else {
    // One symbol per character; an unknown one becomes its <0xXX> byte tokens (byte_fallback, when
    // all of them exist), else the unk token (consecutive ones fused with fuse_unk), else nothing.
    bool prev_unk = false;
    for (size_t i = 0; i < n;) {
      uint32_t cp;
      int len = detail::utf8_decode(word, i, cp);
      auto it = len > 0 ? char_id.find(cp) : char_id.end();
      if (len == 0) len = 1;
      if (it != char_id.end()) {
        sym.push_back(it->second);
        prev_unk = false;
      } else {
        bool all = byte_fallback;
        for (int k = 0; all && k < len; ++k) all = fallback_id[static_cast<unsigned char>(word[i + k])] >= 0;
        if (all) {
          for (int k = 0; k < len; ++k) sym.push_back(fallback_id[static_cast<unsigned char>(word[i + k])]);
          prev_unk = false;
        } else if (unk_id >= 0) {
          if (!(fuse_unk && prev_unk)) sym.push_back(unk_id);
          prev_unk = true;
        }
      }
      i += len;
    }
  }
  merge_symbols(sym.data(), sym.size(), out);
}

void Tokenizer::Impl::encode_plain(std::string_view text, bool at_start, std::vector<int32_t>& out,
                                   EncodeState& st) const {
  if (text.empty()) return;
  auto& pieces = st.pieces;
  auto& next = st.next;
  pieces.assign(1, text);
  for (const PreStep& step : pre) {
    next.clear();
    for (std::string_view p : pieces) {
      if (step.kind == PreStep::Split) {
        detail::split_isolated(step.pattern, step.literal, p, next);
        continue;
      }
      if (step.kind == PreStep::Metaspace) {
        metaspace(step, p, at_start && p.data() == text.data(), st, next);
        continue;
      }
      if (step.add_prefix_space && p[0] != ' ') {
        std::string& with_space = st.store.emplace_back();
        with_space.reserve(p.size() + 1);
        with_space.push_back(' ');
        with_space.append(p);
        p = with_space;
      }
      if (!step.use_regex) {
        next.push_back(p);
        continue;
      }
      for (size_t pos = 0; pos < p.size();) {
        const size_t end = detail::pretoken_end(p, pos);
        next.push_back(p.substr(pos, end - pos));
        pos = end;
      }
    }
    pieces.swap(next);
  }
  for (std::string_view word : pieces) {
    if (word.size() == 1 && byte_level) {
      out.push_back(byte_token(static_cast<unsigned char>(word[0])));
      continue;
    }
    auto [it, fresh] = st.cache.try_emplace(word, out.size(), 0);
    if (fresh) {
      encode_word(word, out, st.sym);
      it->second.second = out.size() - it->second.first;
    } else {
      const auto [start, count] = it->second;
      // push_back grows geometrically (a reserve of exactly size + count here would reallocate on
      // every repeated word: quadratic in the text). Each value is read before the push.
      for (size_t k = 0; k < count; ++k) {
        const int32_t v = out[start + k];
        out.push_back(v);
      }
    }
  }
}

void Tokenizer::Impl::metaspace(const PreStep& step, std::string_view p, bool first, EncodeState& st,
                                std::vector<std::string_view>& out) const {
  // Spaces become the replacement, which is put in front (scheme "always", or "first" on the piece
  // that begins the input) unless already there; with split, the text is cut before each
  // replacement, a run of them keeping all but the last as pieces of their own.
  const std::string& rep = step.literal;
  std::string& s = st.store.emplace_back(detail::replace_all(p, " ", rep));
  const bool prepend = step.prepend == PreStep::Always || (step.prepend == PreStep::First && first);
  if (prepend && s.compare(0, rep.size(), rep) != 0) s.insert(0, rep);
  const std::string_view v = s;
  if (!step.split) {
    out.push_back(v);
    return;
  }
  size_t start = 0;
  for (size_t pos = v.find(rep); pos != std::string_view::npos; pos = v.find(rep, pos + rep.size())) {
    if (pos > start) out.push_back(v.substr(start, pos - start));
    start = pos;
  }
  if (start < v.size()) out.push_back(v.substr(start));
}

template <class Gap, class Tok>
void Tokenizer::Impl::split_added(std::string_view text, int pass, Gap&& gap, Tok&& tok) const {
  if (!any_added[pass]) {
    if (!text.empty()) gap(text);
    return;
  }
  const auto& buckets = added_at_byte[pass];
  const size_t n = text.size();
  size_t done = 0;  // end of the last match (with its stripped whitespace)
  for (size_t i = 0; i < n;) {
    const AddedToken* hit = nullptr;
    size_t len = 0;
    for (int32_t k : buckets[static_cast<unsigned char>(text[i])]) {
      const std::string& c = added_norm[k];
      if (text.compare(i, c.size(), c) == 0) {
        hit = &added[k];
        len = c.size();
        break;
      }
    }
    if (!hit) {
      ++i;
      continue;
    }
    size_t start = i, stop = i + len;
    i = stop;  // matches do not overlap, even when one is dropped below
    int clen = 0;
    if (hit->single_word) {
      const bool word_before = start > 0 && word_char_at(text, prev_char_start(text, start));
      const bool word_after = stop < n && word_char_at(text, stop);
      if (word_before || word_after) continue;
    }
    if (hit->lstrip) {
      size_t s = start;
      while (s > 0) {
        const size_t p = prev_char_start(text, s);
        if (cat_at(text, p, clen) != detail::CharCat::Space) break;
        s = p;
      }
      start = std::max(s, done);
    }
    if (hit->rstrip) {
      while (stop < n && cat_at(text, stop, clen) == detail::CharCat::Space) stop += clen;
      i = stop;
    }
    if (done < start) gap(text.substr(done, start - done));
    tok(hit->id);
    done = stop;
  }
  if (done < n) gap(text.substr(done));
}

Tokenizer::Tokenizer() {
  auto impl = std::make_shared<Impl>();
  impl->finalize("tokenizer");
  impl_ = std::move(impl);
}

Tokenizer::Tokenizer(std::shared_ptr<const Impl> impl) : impl_(std::move(impl)) {}

std::vector<int32_t> Tokenizer::encode(std::string_view text, const EncodeOptions& opts) const {
  const Impl& m = *impl_;
  std::vector<int32_t> out;
  out.reserve(text.size() / 3 + 16);
  if (opts.add_special_tokens) out = m.post_prefix;
  Impl::EncodeState st;
  auto push_id = [&](int32_t id) { out.push_back(id); };
  // Pass 0: added tokens in the text as given; each piece between them is normalized, then cut at
  // the normalized added tokens (pass 1).
  m.split_added(
      text, 0,
      [&](std::string_view piece) {
        const bool seg_at_start = piece.data() == text.data();
        if (!m.normalizer.empty()) piece = st.store.emplace_back(m.normalize(piece));
        const char* const seg = piece.data();
        m.split_added(
            piece, 1,
            [&](std::string_view p) { m.encode_plain(p, seg_at_start && p.data() == seg, out, st); },
            push_id);
      },
      push_id);
  if (opts.add_special_tokens) out.insert(out.end(), m.post_suffix.begin(), m.post_suffix.end());
  return out;
}

int32_t Tokenizer::vocab_size() const { return static_cast<int32_t>(impl_->tokens.size()); }
int32_t Tokenizer::eos_id() const { return impl_->eos; }
int32_t Tokenizer::bos_id() const { return impl_->post_prefix.empty() ? -1 : impl_->post_prefix.front(); }

int32_t Tokenizer::token_id(std::string_view token) const {
  auto it = impl_->ids.find(std::string(token));
  return it == impl_->ids.end() ? -1 : it->second;
}

int32_t Tokenizer::num_merges() const { return static_cast<int32_t>(impl_->merges.size()); }
const std::vector<AddedToken>& Tokenizer::added_tokens() const { return impl_->added; }

std::pair<std::string, std::string> Tokenizer::merge(int32_t rank) const {
  MOE_CHECK(rank >= 0 && rank < num_merges(), "tokenizer: merge rank ", rank, " is outside [0, ",
            num_merges(), ")");
  const Impl::Merge& m = impl_->merges[rank];
  return {impl_->tokens[m.left], impl_->tokens[m.right]};
}

}  // namespace moe::text
