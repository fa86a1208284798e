// The state behind moe::text::Tokenizer, shared by training (bpe_train.cpp), encoding
// (tokenizer.cpp) and tokenizer.json I/O (tokenizer_json.cpp).
#pragma once

#include <array>
#include <cstdint>
#include <deque>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "moe/text/tokenizer.h"
#include "pretok_patterns.h"

namespace moe::text {

struct Tokenizer::Impl {
  struct Merge {
    int32_t left = 0, right = 0, result = 0;  // token ids
  };
  struct MergeInfo {
    int32_t rank = 0, result = 0;
  };
  // One step of the normalizer (applied in order).
  struct NormStep {
    enum Kind { Nfc, Prepend, Replace } kind = Nfc;
    std::string a, b;  // Prepend: a; Replace: a -> b
  };
  // One step of the pre-tokenizer (each step splits every piece of the previous one).
  struct PreStep {
    enum Kind { Split, ByteLevel, Metaspace } kind = ByteLevel;
    detail::SplitPattern pattern = detail::SplitPattern::Gpt2;  // Split (behavior Isolated)
    std::string literal;                              // Split with a String pattern; Metaspace replacement
    bool add_prefix_space = false, use_regex = true;  // ByteLevel
    enum Prepend { Always, First, Never } prepend = Always;  // Metaspace
    bool split = false;                                      // Metaspace
  };
  // One step of the decoder, over the list of token strings.
  struct DecStep {
    enum Kind { ByteLevel, Replace, ByteFallback, Fuse, Strip, Metaspace } kind = ByteLevel;
    std::string a, b;         // Replace: a -> b; Strip: a is the character; Metaspace: a is the replacement
    int start = 0, stop = 0;  // Strip
    bool prepend = true;      // Metaspace: prepend_scheme is not "never"
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
  std::string unk_token;       // BPE unk token ("" for none)

  // ---- the tokenizer.json pipeline (load); a trained tokenizer has the defaults ----
  // true: vocabulary tokens are bytes written with GPT-2's byte-to-unicode characters (a ByteLevel
  // pre-tokenizer); false: they are UTF-8 strings merged from characters (SentencePiece-style BPE).
  bool byte_level = true;
  bool byte_fallback = false;  // unknown characters become <0xXX> byte tokens (not byte_level)
  bool fuse_unk = false;       // consecutive unknown characters give one unk token
  std::vector<NormStep> normalizer;
  std::vector<PreStep> pre;                       // empty: ByteLevel(add_prefix_space, use_regex) above
  std::vector<DecStep> decoder;                   // empty: concatenate the tokens' bytes
  std::vector<int32_t> post_prefix, post_suffix;  // added around the ids by encode(add_special_tokens)
  // The original JSON of these sections, written back by save() ("" when built here).
  std::string json_normalizer, json_pre_tokenizer, json_post_processor, json_decoder;

  // ---- derived by finalize() ----
  std::unordered_map<std::string, int32_t> ids;      // raw bytes -> id (added tokens win)
  std::unordered_map<uint64_t, MergeInfo> merge_of;  // (left << 32 | right) -> rank, result
  std::array<int32_t, 256> byte_id{};                // -1 when a byte has no token
  // Added tokens to find in the text, per first byte, longest first (indices into `added`): raw
  // [0] matches in the text before normalization (normalized == false), [1] after it (matched
  // against `added_norm`, the normalized content).
  std::array<std::array<std::vector<int32_t>, 256>, 2> added_at_byte;
  std::array<bool, 2> any_added{};
  std::vector<std::string> added_norm;  // per added token: its content as it is matched
  int32_t unk_id = -1;

  // Builds the derived maps and checks consistency; `where` prefixes error messages.
  void finalize(const std::string& where);

  static uint64_t pair_key(int32_t a, int32_t b) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
  }

  std::vector<bool> is_added;                     // per id
  std::unordered_map<uint32_t, int32_t> char_id;  // not byte_level: one-character tokens
  std::array<int32_t, 256> fallback_id{};         // not byte_level: <0xXX> tokens, -1 if none

  // The state of one encode() call: pre-token word -> (offset, count) of its tokens in the output,
  // and the strings the words point into.
  struct EncodeState {
    std::unordered_map<std::string_view, std::pair<size_t, size_t>> cache;
    std::deque<std::string> store;
    std::vector<int32_t> sym;  // scratch
    std::vector<std::string_view> pieces, next;
  };

  // Applies the merges to the symbols sym[0..n) (lowest rank first, leftmost on ties); appends
  // the result. `sym` is scratch.
  void merge_symbols(int32_t* sym, size_t n, std::vector<int32_t>& out) const;
  // Appends the BPE tokens of one pre-token word.
  void encode_word(std::string_view word, std::vector<int32_t>& out, std::vector<int32_t>& sym) const;
  // Appends the tokens of text that holds no added token (after normalization).
  // at_start: the text begins the input (Metaspace's prepend_scheme "first").
  void encode_plain(std::string_view text, bool at_start, std::vector<int32_t>& out, EncodeState& st) const;
  int32_t byte_token(unsigned char b) const;  // throws when the byte has no token
  // The Metaspace pre-tokenizer on piece p (first: p begins the input); pieces appended to `out`.
  void metaspace(const PreStep& step, std::string_view p, bool first, EncodeState& st,
                 std::vector<std::string_view>& out) const;
  std::string normalize(std::string_view text) const;
  // Splits `text` at the added tokens of pass `pass` (see added_at_byte): calls gap(piece) for the
  // text between them and tok(id) for each, with lstrip/rstrip/single_word applied as HF does.
  template <class Gap, class Tok>
  void split_added(std::string_view text, int pass, Gap&& gap, Tok&& tok) const;
  // The decoder's per-token strings: the token as the decoder chain first sees it.
  std::string decoder_input(int32_t id) const;
};

}  // namespace moe::text
