// Byte-level BPE tokenizer (GPT-2 style), trained here or loaded from a Hugging Face tokenizer.json.
//
// Text is first cut at added (special) tokens such as "<|endoftext|>", which map to their own ids.
// Every other piece is split into pre-tokens with GPT-2's rule (contractions, letters with an
// optional leading space, digits, punctuation runs, whitespace), and each pre-token's bytes are
// merged by BPE: starting from one token per byte, the adjacent pair with the lowest merge rank is
// merged until no pair has a rank. Because every byte has a token, decode(encode(s)) == s for any
// byte string, invalid UTF-8 included.
//
// Token ids: a trained tokenizer puts the special tokens first (ids 0..k-1), then the 256 byte
// tokens in GPT-2's order (the order of their printable stand-in characters: '!'..'~', '¡'..'¬',
// '®'..'ÿ', then the remaining bytes 0x00..0x20, 0x7F..0xA0, 0xAD), then one token per merge — the
// layout the Hugging Face BPE trainer uses.
//
// Files: load() reads a Hugging Face tokenizer.json whose model is BPE with a ByteLevel
// pre-tokenizer (GPT-2, RoBERTa, GPT-NeoX style files); merges may be "a b" strings or ["a", "b"]
// pairs. save() writes the same format (merges as "a b" strings, which every version of the Python
// `tokenizers` library reads). Anything the tokenizer cannot reproduce faithfully — another model
// type, a normalizer, a non-ByteLevel pre-tokenizer, BPE dropout, subword prefixes — is refused
// with a moe::Error naming the file and the field rather than silently encoding differently.
// Added-token flags (lstrip, rstrip, single_word) are kept and written back but not applied: added
// tokens match their exact content. Post-processors (BOS/EOS templates) are ignored.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace moe::train {

// One entry of "added_tokens" in tokenizer.json.
struct AddedToken {
  int32_t id = -1;
  std::string content;  // raw bytes (UTF-8), matched exactly in the text
  bool special = true;
  bool single_word = false;  // kept for save(); not applied
  bool lstrip = false;       // kept for save(); not applied
  bool rstrip = false;       // kept for save(); not applied
  bool normalized = false;   // kept for save(); not applied
};

struct BpeTrainOptions {
  // Added tokens (each at least two bytes), given ids 0..k-1 in this order; in the training text
  // they are cut out (never learned from) and in encode() they map to their own id.
  std::vector<std::string> special_tokens = {"<|endoftext|>"};
  // The token eos_id() returns; empty for none. Must be one of special_tokens.
  std::string eos_token = "<|endoftext|>";
  // Training stops early when the most frequent pair occurs fewer times than this.
  int64_t min_frequency = 2;
};

class Tokenizer {
 public:
  Tokenizer();  // empty: no tokens; encode() of non-empty text throws

  // Learns merges from `text` until the vocabulary (special tokens + 256 bytes + merges) has
  // vocab_size tokens, or until no pair occurs min_frequency times. Each step merges the most
  // frequent adjacent pair over all pre-token words (counted with multiplicity); ties go to the
  // pair with the smaller (left id, right id). If the merged bytes already are a token, the merge
  // is recorded and reuses that id. Deterministic: the same text and options give the same tokenizer.
  // This is the Hugging Face BpeTrainer's algorithm (ByteLevel pre-tokenizer and alphabet): on the
  // same text and options it learns the same merges in the same order.
  static Tokenizer train_bpe(std::string_view text, int32_t vocab_size, const BpeTrainOptions& opts = {});

  // Reads a Hugging Face tokenizer.json (see the file comment for what is accepted). tokenizer.json
  // does not say which token ends a text: eos_id() is the first added token among "<|endoftext|>",
  // "</s>", "<|end_of_text|>", "<eos>", "<|im_end|>", or -1.
  static Tokenizer load(const std::string& path);
  // Writes a Hugging Face tokenizer.json (to path + ".tmp", then renamed to path).
  void save(const std::string& path) const;

  // Token ids of `text`; added tokens appearing in the text map to their id (longest match first).
  // Thread-safe (the pre-token cache lives for one call).
  std::vector<int32_t> encode(std::string_view text) const;
  // Concatenated bytes of the tokens; throws moe::Error on an id outside [0, vocab_size()).
  std::string decode(const std::vector<int32_t>& ids) const;

  std::string token_bytes(int32_t id) const;  // raw bytes of one token (content of an added token)
  int32_t vocab_size() const;                 // number of ids, added tokens included
  int32_t eos_id() const;                     // -1 if none
  // Id of the token whose raw bytes (or added-token content) are `token`; -1 if none.
  int32_t token_id(std::string_view token) const;

  int32_t num_merges() const;
  const std::vector<AddedToken>& added_tokens() const;
  // Merge `rank` as raw bytes (left, right).
  std::pair<std::string, std::string> merge(int32_t rank) const;

  struct Impl;  // internal (src/train/tokenizer_impl.h)

 private:
  explicit Tokenizer(std::shared_ptr<const Impl> impl);
  std::shared_ptr<const Impl> impl_;  // immutable once built: copies share it
};

}  // namespace moe::train
