// Training data: token shards on disk, a deterministic resumable batch sampler, text corpora
// (the default one is the English text of Debian's `fortunes` package) and their preparation into
// train / validation shards.
//
// Shard file layout (little-endian), 32-byte header then the tokens:
//   offset  0  char[8]  magic "MOETOK1\0"
//           8  u32      version (1)
//          12  u32      dtype: bytes per token, 2 (u16) or 4 (u32)
//          16  u64      count: number of tokens
//          24  u32      vocab_size (0: unknown); every token is < vocab_size when it is set
//          28  u32      reserved (0)
//          32  count x dtype token ids
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "moe/text/tokenizer.h"

namespace moe::train {

inline constexpr char kShardMagic[8] = {'M', 'O', 'E', 'T', 'O', 'K', '1', '\0'};
inline constexpr uint32_t kShardVersion = 1;
inline constexpr uint64_t kShardHeaderBytes = 32;

// Writes `tokens` as a shard (to path + ".tmp", then renamed). Tokens are stored as u16 when
// vocab_size <= 65536, else u32. Throws when a token is negative or >= vocab_size (vocab_size >= 1).
void write_shard(const std::string& path, const std::vector<int32_t>& tokens, int64_t vocab_size);

// A shard mapped read-only into memory. Opening validates the magic, version, dtype and that the
// file size is exactly header + count x dtype (a truncated file is an error naming the path and both
// sizes). Move-only; the mapping lives as long as the object.
class TokenShard {
 public:
  TokenShard() = default;
  explicit TokenShard(const std::string& path);
  ~TokenShard();
  TokenShard(TokenShard&& o) noexcept;
  TokenShard& operator=(TokenShard&& o) noexcept;
  TokenShard(const TokenShard&) = delete;
  TokenShard& operator=(const TokenShard&) = delete;

  const std::string& path() const { return path_; }
  int64_t size() const { return count_; }                   // tokens
  int64_t vocab_size() const { return vocab_size_; }        // 0 when unknown
  int32_t dtype_bytes() const { return dtype_bytes_; }      // 2 or 4
  int32_t operator[](int64_t i) const;                      // no bounds check
  int32_t at(int64_t i) const;                              // bounds-checked
  void read(int64_t begin, int64_t n, int32_t* dst) const;  // tokens [begin, begin + n), checked
  std::vector<int32_t> to_vector() const;

 private:
  std::string path_;
  void* map_ = nullptr;
  size_t map_bytes_ = 0;
  const unsigned char* data_ = nullptr;  // first token
  int64_t count_ = 0;
  int64_t vocab_size_ = 0;
  int32_t dtype_bytes_ = 2;
};

struct SamplerOptions {
  int64_t batch_size = 8;  // B
  int64_t seq_len = 256;   // S
  uint64_t seed = 0;
  // true: each epoch visits the windows in a fresh random order and shifts all window starts by a
  // random offset in [0, S); false: windows in order from token 0 (e.g. for validation).
  bool shuffle = true;
};

// Where a sampler stands: `index` windows of epoch `epoch` have been handed out.
struct SamplerPosition {
  uint64_t epoch = 0;
  uint64_t index = 0;
  bool operator==(const SamplerPosition&) const = default;
};

// Cuts a shard into windows of S + 1 consecutive tokens that start S apart (so each token is a
// target once per epoch) and hands out B windows per batch: inputs are tokens [s, s + S) of a window
// and targets [s + 1, s + S + 1). Epoch e's window order and offset come only from (seed, e), so a
// sampler set to a saved position() gives exactly the batches that followed it. A batch that runs
// past the end of an epoch continues with the next one. The shard must outlive the sampler; one
// sampler is not to be used from several threads at once.
class BatchSampler {
 public:
  BatchSampler(const TokenShard& shard, const SamplerOptions& opts);

  // inputs, targets: (B, S) row-major int32.
  void next(int32_t* inputs, int32_t* targets);
  void next(std::vector<int32_t>& inputs, std::vector<int32_t>& targets);  // resized to B * S

  SamplerPosition position() const { return pos_; }
  void set_position(const SamplerPosition& p);  // index must be < windows_per_epoch()
  int64_t windows_per_epoch() const { return windows_; }
  // First token of window `k` of epoch `epoch` (the k-th window handed out in that epoch).
  int64_t window_start(uint64_t epoch, uint64_t k) const;

 private:
  void prepare_epoch(uint64_t epoch) const;

  const TokenShard* shard_;
  SamplerOptions opts_;
  int64_t windows_ = 0;     // per epoch
  int64_t max_offset_ = 0;  // epoch offsets are drawn from [0, max_offset_]
  SamplerPosition pos_;
  mutable uint64_t perm_epoch_ = UINT64_MAX;  // epoch whose order is in perm_
  mutable int64_t perm_offset_ = 0;
  mutable std::vector<uint32_t> perm_;
};

// ---- corpora ----

// The contents of a text file, or of every regular file of a directory in sorted name order (a
// newline is added after a file that does not end with one).
std::string read_text_corpus(const std::string& path);

inline constexpr const char* kFortunesDir = "/usr/share/games/fortunes";

// The default corpus: the English text of Debian's `fortunes` package. Every regular file of `dir`
// in sorted name order, except the .dat / .u8 index files and the "art" and "ascii-art" files;
// the '%' lines that separate fortunes become blank lines. Throws a moe::Error that tells the user
// to install the `fortunes` package when the files are missing.
std::string fortunes_corpus(const std::string& dir = kFortunesDir);

struct PrepareOptions {
  double val_fraction = 0.02;  // share of the text (by bytes) kept for validation
  // When > 0, the validation text is instead every val_every-th document (documents are separated
  // by blank lines), so that it samples the whole corpus rather than its last file. Text with too
  // few documents for that (the validation part under a quarter of 1/val_every of the text) falls
  // back to val_fraction.
  int64_t val_every = 0;
};

struct PrepareResult {
  int64_t train_bytes = 0, val_bytes = 0;
  int64_t train_tokens = 0, val_tokens = 0;
};

// Byte offset where the validation part of `text` begins: the start of the first paragraph (the
// text after a blank line) at or after byte (1 - val_fraction) x size, so no document is cut in two;
// failing that the start of the next line, failing that that byte. text.size() if val_fraction is 0.
size_t validation_split(std::string_view text, double val_fraction);

// Encodes text[0, split) into a train shard and text[split, end) into a validation shard, where
// split = validation_split(text, opts.val_fraction); or, with opts.val_every = n > 0, documents
// n-1, 2n-1, ... into the validation shard and the others into the train shard. Deterministic.
PrepareResult prepare_shards(std::string_view text, const text::Tokenizer& tok, const std::string& train_path,
                             const std::string& val_path, const PrepareOptions& opts = {});

// Entropy in nats per token of the shard's token frequencies, -sum p log p: the loss of the best
// model that ignores context. A language model should get well below it.
double unigram_entropy(const TokenShard& shard);
// Cross-entropy in nats per token of `eval` under the add-alpha smoothed unigram distribution of
// `fit` over vocab_size tokens (the loss of a context-free model fitted on the train shard).
double unigram_cross_entropy(const TokenShard& fit, const TokenShard& eval, int64_t vocab_size,
                             double alpha = 1.0);

}  // namespace moe::train
