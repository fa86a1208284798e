// Tokenizer: encoding, decoding and lookups. Training is in bpe_train.cpp, tokenizer.json I/O in
// tokenizer_json.cpp.
#include <algorithm>
#include <climits>
#include <cstdio>
#include <deque>

#include "moe/core/error.h"
#include "pretokenize.h"
#include "tokenizer_impl.h"

namespace moe::train {

namespace {

// Words up to this many bytes are merged in a small array (a rescan per merge, cheap for the
// short words of natural text); longer ones with a heap, so a huge word costs O(n log n).
constexpr size_t kShortWord = 256;

std::string hex_byte(unsigned char b) {
  char buf[8];
  std::snprintf(buf, sizeof(buf), "0x%02X", b);
  return buf;
}

}  // namespace

void Tokenizer::Impl::finalize(const std::string& where) {
  const auto n = static_cast<int32_t>(tokens.size());
  std::vector<bool> is_added(tokens.size(), false);
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
  for (int b = 0; b < 256; ++b) {
    auto it = ids.find(std::string(1, static_cast<char>(b)));
    if (it != ids.end()) byte_id[b] = it->second;
  }
  for (const AddedToken& a : added) ids[a.content] = a.id;

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
  added_first.fill(false);
  added_by_length.clear();
  for (size_t k = 0; k < added.size(); ++k) {
    added_first[static_cast<unsigned char>(added[k].content[0])] = true;
    added_by_length.push_back(static_cast<int32_t>(k));
  }
  std::stable_sort(added_by_length.begin(), added_by_length.end(),
                   [&](int32_t a, int32_t b) { return added[a].content.size() > added[b].content.size(); });
  MOE_CHECK(eos >= -1 && eos < n, where, ": eos id ", eos, " outside the vocabulary");
}

int32_t Tokenizer::Impl::byte_token(unsigned char b) const {
  const int32_t id = byte_id[b];
  MOE_CHECK(id >= 0, "tokenizer: byte ", hex_byte(b),
            " of the input has no token in the vocabulary (not a complete byte-level vocabulary)");
  return id;
}

void Tokenizer::Impl::encode_word(std::string_view word, std::vector<int32_t>& out) const {
  const size_t n = word.size();
  if (n == 0) return;
  if (n == 1) {
    out.push_back(byte_token(static_cast<unsigned char>(word[0])));
    return;
  }
  if (ignore_merges) {
    auto it = ids.find(std::string(word));
    if (it != ids.end()) {
      out.push_back(it->second);
      return;
    }
  }
  auto find = [&](int32_t a, int32_t b) -> const MergeInfo* {
    auto it = merge_of.find(pair_key(a, b));
    return it == merge_of.end() ? nullptr : &it->second;
  };
  if (n <= kShortWord) {
    // sym[i] are the current tokens, rank[i] the rank of the pair (sym[i], sym[i+1]) (INT_MAX: none).
    // Each step merges the lowest-ranked pair, leftmost first, and updates its two neighbours.
    int32_t sym[kShortWord], rank[kShortWord], result[kShortWord];
    size_t len = n;
    for (size_t i = 0; i < n; ++i) sym[i] = byte_token(static_cast<unsigned char>(word[i]));
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
  // Long word: linked list of symbols and a min-heap of candidate pairs ordered by (rank, position).
  // A popped candidate is stale when its left symbol was merged away or its right neighbour changed.
  struct Sym {
    int32_t id, prev, next;
  };
  struct Cand {
    int32_t rank, pos, left, right;
    bool operator>(const Cand& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
  };
  std::vector<Sym> syms(n);
  for (size_t i = 0; i < n; ++i)
    syms[i] = {byte_token(static_cast<unsigned char>(word[i])), static_cast<int32_t>(i) - 1,
               i + 1 < n ? static_cast<int32_t>(i + 1) : -1};
  std::vector<Cand> heap;
  auto push = [&](int32_t p) {
    const int32_t q = syms[p].next;
    if (q < 0) return;
    if (const MergeInfo* m = find(syms[p].id, syms[q].id)) {
      heap.push_back({m->rank, p, syms[p].id, syms[q].id});
      std::push_heap(heap.begin(), heap.end(), std::greater<>());
    }
  };
  for (size_t i = 0; i + 1 < n; ++i) push(static_cast<int32_t>(i));
  while (!heap.empty()) {
    std::pop_heap(heap.begin(), heap.end(), std::greater<>());
    const Cand c = heap.back();
    heap.pop_back();
    const int32_t q = syms[c.pos].next;
    if (syms[c.pos].id != c.left || q < 0 || syms[q].id != c.right) continue;
    syms[c.pos].id = merges[c.rank].result;
    syms[c.pos].next = syms[q].next;
    if (syms[q].next >= 0) syms[syms[q].next].prev = c.pos;
    syms[q].id = -1;
    if (syms[c.pos].prev >= 0) push(syms[c.pos].prev);
    push(c.pos);
  }
  for (int32_t p = 0; p >= 0; p = syms[p].next) out.push_back(syms[p].id);
}

void Tokenizer::Impl::encode_plain(std::string_view text, std::vector<int32_t>& out, WordCache& cache) const {
  if (!use_regex) {
    encode_word(text, out);
    return;
  }
  for (size_t pos = 0; pos < text.size();) {
    const size_t end = detail::pretoken_end(text, pos);
    const std::string_view word = text.substr(pos, end - pos);
    pos = end;
    if (word.size() == 1) {
      out.push_back(byte_token(static_cast<unsigned char>(word[0])));
      continue;
    }
    auto [it, fresh] = cache.try_emplace(word, out.size(), 0);
    if (fresh) {
      encode_word(word, out);
      it->second.second = out.size() - it->second.first;
    } else {
      const auto [start, count] = it->second;
      out.reserve(out.size() + count);
      for (size_t k = 0; k < count; ++k) {
        const int32_t v = out[start + k];
        out.push_back(v);
      }
    }
  }
}

Tokenizer::Tokenizer() {
  auto impl = std::make_shared<Impl>();
  impl->finalize("tokenizer");
  impl_ = std::move(impl);
}

Tokenizer::Tokenizer(std::shared_ptr<const Impl> impl) : impl_(std::move(impl)) {}

std::vector<int32_t> Tokenizer::encode(std::string_view text) const {
  const Impl& m = *impl_;
  std::vector<int32_t> out;
  out.reserve(text.size() / 3 + 16);
  Impl::WordCache cache;
  std::deque<std::string> prefixed;  // segments with the ByteLevel prefix space (cache keys point in)
  auto plain = [&](std::string_view seg) {
    if (seg.empty()) return;
    if (m.add_prefix_space && seg[0] != ' ') {
      std::string& with_space = prefixed.emplace_back();
      with_space.reserve(seg.size() + 1);
      with_space.push_back(' ');
      with_space.append(seg);
      seg = with_space;
    }
    m.encode_plain(seg, out, cache);
  };
  if (m.added.empty()) {
    plain(text);
    return out;
  }
  size_t seg_start = 0;
  for (size_t i = 0; i < text.size();) {
    if (m.added_first[static_cast<unsigned char>(text[i])]) {
      const AddedToken* hit = nullptr;
      for (int32_t k : m.added_by_length) {
        const std::string& c = m.added[k].content;
        if (text.compare(i, c.size(), c) == 0) {
          hit = &m.added[k];
          break;
        }
      }
      if (hit) {
        plain(text.substr(seg_start, i - seg_start));
        out.push_back(hit->id);
        i += hit->content.size();
        seg_start = i;
        continue;
      }
    }
    ++i;
  }
  plain(text.substr(seg_start));
  return out;
}

std::string Tokenizer::decode(const std::vector<int32_t>& ids) const {
  const auto& tokens = impl_->tokens;
  size_t bytes = 0;
  for (size_t i = 0; i < ids.size(); ++i) {
    MOE_CHECK(ids[i] >= 0 && ids[i] < static_cast<int32_t>(tokens.size()), "tokenizer: decode: id ", ids[i],
              " at position ", i, " is outside the vocabulary [0, ", tokens.size(), ")");
    bytes += tokens[ids[i]].size();
  }
  std::string out;
  out.reserve(bytes);
  for (int32_t id : ids) out += tokens[id];
  return out;
}

std::string Tokenizer::token_bytes(int32_t id) const {
  MOE_CHECK(id >= 0 && id < vocab_size(), "tokenizer: token id ", id, " is outside the vocabulary [0, ",
            vocab_size(), ")");
  return impl_->tokens[id];
}

int32_t Tokenizer::vocab_size() const { return static_cast<int32_t>(impl_->tokens.size()); }
int32_t Tokenizer::eos_id() const { return impl_->eos; }

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

}  // namespace moe::train
