// BPE tokenizer: byte-level (GPT-2 style) BPE trained here, or any of the tokenizer.json pipelines of
// the MoE checkpoints this engine runs (GPT-NeoX/OLMoE, Qwen2/Qwen3-MoE, DeepSeek-V3, Llama-2 style
// SentencePiece BPE of Mixtral/Mistral), loaded from a Hugging Face tokenizer.json and encoding to
// the same ids as the Python `tokenizers` library.
//
// encode() follows Hugging Face's order: the text is cut at added tokens that are not normalized
// (leftmost, longest; lstrip/rstrip take the whitespace beside them, single_word requires no
// word character beside them); each remaining piece is normalized (NFC, Prepend, Replace), cut at
// the normalized added tokens, pre-tokenized (Split with a known pattern, behavior Isolated;
// ByteLevel, with or without GPT-2's pattern; Metaspace), and each pre-token merged by BPE:
// starting from one token per byte (byte-level) or per character (SentencePiece style: unknown
// characters become <0xXX> byte tokens with byte_fallback, else the unk token), the adjacent pair
// with the lowest merge rank is merged until no pair has a rank. For byte-level vocabularies every byte has a
// token, so decode(encode(s)) == s for any byte string, invalid UTF-8 included.
//
// Token ids: a trained tokenizer puts the special tokens first (ids 0..k-1), then the 256 byte
// tokens in GPT-2's order (the order of their printable stand-in characters: '!'..'~', '¡'..'¬',
// '®'..'ÿ', then the remaining bytes 0x00..0x20, 0x7F..0xA0, 0xAD), then one token per merge — the
// layout the Hugging Face BPE trainer uses.
//
// Files: load() reads model BPE (merges as "a b" strings or ["a", "b"] pairs); normalizer null,
// NFC, Prepend, Replace (String pattern) or a Sequence of them; pre_tokenizer null, ByteLevel,
// Metaspace, Split (the GPT-2, Qwen2, Llama-3 and DeepSeek-V3 regexes, recognised exactly, or a
// String pattern; behavior Isolated) or a Sequence of them; post_processor null, ByteLevel,
// TemplateProcessing (its single-sequence template), RobertaProcessing, BertProcessing or a
// Sequence of them; decoder null,
// ByteLevel, Replace, ByteFallback, Fuse, Strip, Metaspace or a Sequence of them. Anything else —
// another model type, another normalizer or regex, BPE dropout, subword prefixes — is refused
// with a moe::Error naming the file and the field rather than silently encoding differently.
// save() writes the same format (the loaded pipeline sections as they were read).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace moe::text {

// One entry of "added_tokens" in tokenizer.json.
struct AddedToken {
  int32_t id = -1;
  std::string content;  // raw bytes (UTF-8), matched exactly in the text
  bool special = true;
  bool single_word = false;  // matches only with no word character (\w) right before or after it
  bool lstrip = false;       // the match takes the whitespace before it
  bool rstrip = false;       // the match takes the whitespace after it
  bool normalized = false;   // matched in the normalized text (else in the text as given)
};

struct EncodeOptions {
  // Add the tokens of the post-processor's template (e.g. <s> before the text, as
  // Hugging Face's add_special_tokens=True does); see bos_id().
  bool add_special_tokens = false;
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

// The most tokens a tokenizer may have (as the model config's vocab_size limit): a tokenizer.json
// with more is refused at load.
inline constexpr int64_t kMaxVocab = int64_t{1} << 22;

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
  // "</s>", "<|end_of_text|>", "<eos>", "<｜end▁of▁sentence｜>", "<|im_end|>",
  // or -1.
  static Tokenizer load(const std::string& path);
  // The same from the text of a tokenizer.json; `where` names it in errors (e.g. the GGUF file whose
  // metadata it was made from).
  static Tokenizer from_json(const std::string& text, const std::string& where);
  // Writes a Hugging Face tokenizer.json (to path + ".tmp", then renamed to path).
  void save(const std::string& path) const;

  // Token ids of `text`; added tokens appearing in the text map to their id (see the file comment).
  // Thread-safe (the pre-token cache lives for one call).
  std::vector<int32_t> encode(std::string_view text, const EncodeOptions& opts = {}) const;
  // The text of the tokens through the file's decoder (byte-level: the concatenated bytes; Llama
  // style: "▁" -> " ", <0xXX> -> bytes, one leading space stripped); added tokens are kept. Byte
  // runs that are not UTF-8 come out as U+FFFD only where the decoder is ByteFallback (as in
  // Hugging Face); byte-level output is the raw bytes. Throws moe::Error on an id outside
  // [0, vocab_size()).
  std::string decode(const std::vector<int32_t>& ids) const;

  // The bytes one token stands for, for streaming output: byte-level tokens' raw bytes, the content
  // of an added token, or (Llama style) the piece with "▁" as " " and <0xXX> as its byte.
  std::string token_bytes(int32_t id) const;
  int32_t vocab_size() const;  // number of ids, added tokens included
  int32_t eos_id() const;      // -1 if none
  // The first token the post-processor puts before the text (<s>, <｜begin▁of▁sentence｜>), or -1.
  int32_t bos_id() const;
  // Id of the token whose raw bytes (or added-token content) are `token`; -1 if none.
  int32_t token_id(std::string_view token) const;

  int32_t num_merges() const;
  const std::vector<AddedToken>& added_tokens() const;
  // Merge `rank` as raw bytes (left, right).
  std::pair<std::string, std::string> merge(int32_t rank) const;

  struct Impl;  // internal (src/text/tokenizer_impl.h)

 private:
  explicit Tokenizer(std::shared_ptr<const Impl> impl);
  std::shared_ptr<const Impl> impl_;  // immutable once built: copies share it
};

}  // namespace moe::text
