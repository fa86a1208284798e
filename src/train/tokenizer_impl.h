// The state behind moe::train::Tokenizer, shared by training (bpe_train.cpp), encoding
// (tokenizer.cpp) and tokenizer.json I/O (tokenizer_json.cpp).
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "moe/train/tokenizer.h"

namespace moe::train {

struct Tokenizer::Impl {
  struct Merge {
    int32_t left = 0, right = 0, result = 0;  // token ids
  };
  struct MergeInfo {
    int32_t rank = 0, result = 0;
  };

  // ---- filled by the builder (train or load) ----
  std::vector<std::string> tokens;  // id -> raw bytes; added tokens hold their content
  std::vector<Merge> merges;        // by rank
  std::vector<AddedToken> added;    // in file / option order
  int32_t eos = -1;
  bool add_prefix_space = false;  // ByteLevel pre-tokenizer options (kept for save)
  bool trim_offsets = true;
  bool use_regex = true;
  bool ignore_merges = false;  // BPE option: a pre-token that is a whole token is not merged
  std::string unk_token;       // kept for save; never needed by byte-level BPE

  // ---- derived by finalize() ----
  std::unordered_map<std::string, int32_t> ids;      // raw bytes -> id (added tokens win)
  std::unordered_map<uint64_t, MergeInfo> merge_of;  // (left << 32 | right) -> rank, result
  std::array<int32_t, 256> byte_id{};                // -1 when a byte has no token
  std::array<bool, 256> added_first{};               // first bytes of added tokens
  std::vector<int32_t> added_by_length;              // indices into `added`, longest content first

  // Builds the derived maps and checks consistency; `where` prefixes error messages.
  void finalize(const std::string& where);

  static uint64_t pair_key(int32_t a, int32_t b) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
  }

  // Pre-token word -> (offset, count) of its tokens in the output of the current encode() call.
  using WordCache = std::unordered_map<std::string_view, std::pair<size_t, size_t>>;

  // Appends the BPE tokens of one pre-token word.
  void encode_word(std::string_view word, std::vector<int32_t>& out) const;
  // Appends the tokens of text that holds no added token.
  void encode_plain(std::string_view text, std::vector<int32_t>& out, WordCache& cache) const;
  int32_t byte_token(unsigned char b) const;  // throws when the byte has no token
};

}  // namespace moe::train
