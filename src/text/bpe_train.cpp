// Byte-level BPE training.
//
// 1. The text (cut at special tokens, which are not learned from) is split into pre-tokens and
//    identical pre-tokens are counted once with their frequency: natural text has few distinct words.
// 2. Every word starts as its byte tokens; the count of an adjacent pair is the sum, over words, of
//    frequency x occurrences. A map from each pair to the words holding it is kept beside the counts.
// 3. Each step takes the most frequent pair from a max-heap (ties: smaller (left, right) ids), merges
//    it in the words that hold it, left to right, and applies the resulting count changes to the
//    neighbouring pairs only. Counts of existing pairs can only fall (new pairs all contain the new
//    token), so heap entries are refreshed lazily: a popped entry whose count is stale is pushed
//    back with the current count. Pairs that a merge creates are pushed with their count.
// This is the algorithm of the Hugging Face BPE trainer, so the merge order is the same for the same
// pre-tokens.
#include <algorithm>
#include <array>
#include <queue>
#include <unordered_map>

#include "moe/core/error.h"
#include "pretokenize.h"
#include "tokenizer_impl.h"

namespace moe::text {

namespace {

struct HeapEntry {
  int64_t count;
  uint64_t pair;
  // std::priority_queue pops the largest: higher count first, then the smaller pair key.
  bool operator<(const HeapEntry& o) const { return count != o.count ? count < o.count : pair > o.pair; }
};

int32_t left_of(uint64_t key) { return static_cast<int32_t>(key >> 32); }
int32_t right_of(uint64_t key) { return static_cast<int32_t>(key & 0xFFFFFFFFu); }

// Calls fn(piece) for the pieces of `text` between occurrences of the special tokens.
template <typename F>
void for_each_plain_segment(std::string_view text, const std::vector<std::string>& specials, F&& fn) {
  std::array<bool, 256> first{};
  for (const std::string& s : specials) first[static_cast<unsigned char>(s[0])] = true;
  size_t start = 0;
  for (size_t i = 0; i < text.size();) {
    size_t hit = 0;
    if (first[static_cast<unsigned char>(text[i])])
      for (const std::string& s : specials)
        if (s.size() > hit && text.compare(i, s.size(), s) == 0) hit = s.size();
    if (hit > 0) {
      fn(text.substr(start, i - start));
      i += hit;
      start = i;
    } else {
      ++i;
    }
  }
  fn(text.substr(start));
}

}  // namespace

Tokenizer Tokenizer::train_bpe(std::string_view text, int32_t vocab_size, const BpeTrainOptions& opts) {
  const auto n_special = static_cast<int32_t>(opts.special_tokens.size());
  MOE_CHECK(vocab_size >= 256 + n_special, "train_bpe: vocab_size ", vocab_size,
            " is below 256 byte tokens + ", n_special, " special tokens = ", 256 + n_special);
  MOE_CHECK(opts.min_frequency >= 1, "train_bpe: min_frequency must be >= 1, got ", opts.min_frequency);
  auto impl = std::make_shared<Impl>();
  std::unordered_map<std::string, int32_t> token_id;  // raw bytes -> id, for reuse of merged tokens
  for (const std::string& s : opts.special_tokens) {
    MOE_CHECK(s.size() >= 2, "train_bpe: special token ", impl->added.size(), " ('", s,
              "') must be at least two bytes long (every single byte is a token already)");
    MOE_CHECK(detail::valid_utf8(s), "train_bpe: special token '", s, "' is not valid UTF-8");
    const auto id = static_cast<int32_t>(impl->tokens.size());
    MOE_CHECK(token_id.emplace(s, id).second, "train_bpe: special token '", s, "' is given twice");
    impl->tokens.push_back(s);
    impl->added.push_back(AddedToken{id, s});
    if (s == opts.eos_token) impl->eos = id;
  }
  MOE_CHECK(opts.eos_token.empty() || impl->eos >= 0, "train_bpe: eos_token '", opts.eos_token,
            "' is not one of the special tokens");
  for (uint8_t b : detail::bytes_in_unicode_order()) {
    const std::string s(1, static_cast<char>(b));
    const auto id = static_cast<int32_t>(impl->tokens.size());
    token_id.emplace(s, id);
    impl->tokens.push_back(s);
  }
  std::array<int32_t, 256> byte_token{};
  for (int32_t id = n_special; id < n_special + 256; ++id)
    byte_token[static_cast<unsigned char>(impl->tokens[id][0])] = id;

  // 1. Distinct pre-token words with their frequencies, sorted so that the run is reproducible.
  std::unordered_map<std::string_view, int64_t> freq;
  for_each_plain_segment(text, opts.special_tokens, [&](std::string_view seg) {
    for (size_t pos = 0; pos < seg.size();) {
      const size_t end = detail::pretoken_end(seg, pos);
      ++freq[seg.substr(pos, end - pos)];
      pos = end;
    }
  });
  std::vector<std::pair<std::string_view, int64_t>> uniq(freq.begin(), freq.end());
  freq.clear();
  std::sort(uniq.begin(), uniq.end());
  std::vector<std::vector<int32_t>> words(uniq.size());
  std::vector<int64_t> counts(uniq.size());
  for (size_t w = 0; w < uniq.size(); ++w) {
    counts[w] = uniq[w].second;
    for (char c : uniq[w].first) words[w].push_back(byte_token[static_cast<unsigned char>(c)]);
  }

  // 2. Pair counts and where each pair occurs.
  std::unordered_map<uint64_t, int64_t> pair_count;
  std::unordered_map<uint64_t, std::vector<int32_t>> where;
  for (size_t w = 0; w < words.size(); ++w) {
    const auto& s = words[w];
    for (size_t i = 0; i + 1 < s.size(); ++i) {
      const uint64_t key = Impl::pair_key(s[i], s[i + 1]);
      pair_count[key] += counts[w];
      auto& list = where[key];
      if (list.empty() || list.back() != static_cast<int32_t>(w)) list.push_back(static_cast<int32_t>(w));
    }
  }
  std::priority_queue<HeapEntry> heap;
  {
    std::vector<HeapEntry> init;
    init.reserve(pair_count.size());
    for (const auto& [key, c] : pair_count) init.push_back({c, key});
    heap = std::priority_queue<HeapEntry>(std::less<HeapEntry>(), std::move(init));
  }

  // 3. Merge until the vocabulary is full.
  std::vector<uint32_t> seen(words.size(), 0);  // merge step that last processed each word (+1)
  std::vector<uint64_t> created;                // pairs whose count grew in this step
  uint32_t step = 0;
  while (static_cast<int32_t>(impl->tokens.size()) < vocab_size && !heap.empty()) {
    HeapEntry top = heap.top();
    heap.pop();
    const int64_t current = pair_count[top.pair];
    if (top.count != current) {
      if (current > 0) heap.push({current, top.pair});
      continue;
    }
    if (top.count < opts.min_frequency) break;
    ++step;
    const int32_t a = left_of(top.pair), b = right_of(top.pair);
    const std::string merged = impl->tokens[a] + impl->tokens[b];
    auto [tok_it, is_new] = token_id.emplace(merged, static_cast<int32_t>(impl->tokens.size()));
    const int32_t c = tok_it->second;
    if (is_new) impl->tokens.push_back(merged);
    impl->merges.push_back({a, b, c});

    std::vector<int32_t> holders = std::move(where[top.pair]);
    where.erase(top.pair);
    created.clear();
    auto change = [&](int32_t x, int32_t y, int64_t delta, int32_t w) {
      const uint64_t key = Impl::pair_key(x, y);
      pair_count[key] += delta;
      if (delta > 0) {
        created.push_back(key);
        auto& list = where[key];
        if (list.empty() || list.back() != w) list.push_back(w);
      }
    };
    for (int32_t w : holders) {
      if (seen[w] == step) continue;
      seen[w] = step;
      std::vector<int32_t>& s = words[w];
      const int64_t f = counts[w];
      size_t out = 0;
      for (size_t i = 0; i < s.size();) {
        if (i + 1 < s.size() && s[i] == a && s[i + 1] == b) {
          // Left neighbour is s[out - 1] (already rewritten), right neighbour s[i + 2] (not yet).
          if (out > 0) {
            change(s[out - 1], a, -f, w);
            change(s[out - 1], c, f, w);
          }
          if (i + 2 < s.size()) {
            change(b, s[i + 2], -f, w);
            change(c, s[i + 2], f, w);
          }
          pair_count[top.pair] -= f;
          s[out++] = c;
          i += 2;
        } else {
          s[out++] = s[i++];
        }
      }
      s.resize(out);
    }
    pair_count.erase(top.pair);
    std::sort(created.begin(), created.end());
    created.erase(std::unique(created.begin(), created.end()), created.end());
    for (uint64_t key : created) {
      const int64_t cnt = pair_count[key];
      if (cnt > 0) heap.push({cnt, key});
    }
  }
  impl->finalize("train_bpe");
  return Tokenizer(std::move(impl));
}

}  // namespace moe::text
