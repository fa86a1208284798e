// Token shards (write, memory-mapped read) and the batch sampler.
#include "moe/train/data.h"

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstring>
#include <utility>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "moe/core/error.h"
#include "moe/core/file_io.h"
#include "moe/core/rng.h"

namespace moe::train {

// Tokens and header fields are copied to and from memory as they are: the format is little-endian.
static_assert(std::endian::native == std::endian::little, "token shard I/O assumes a little-endian host");

namespace {

std::string where(const std::string& path) { return cat("token shard '", path, "'"); }

template <typename T>
T load(const unsigned char* p) {
  T v;
  std::memcpy(&v, p, sizeof(T));
  return v;
}

}  // namespace

void write_shard(const std::string& path, const std::vector<int32_t>& tokens, int64_t vocab_size) {
  MOE_CHECK(vocab_size >= 1 && vocab_size <= (int64_t{1} << 32) - 1, where(path), ": vocab_size ", vocab_size,
            " is outside [1, 2^32)");
  for (size_t i = 0; i < tokens.size(); ++i)
    MOE_CHECK(tokens[i] >= 0 && tokens[i] < vocab_size, where(path), ": token ", tokens[i], " at position ",
              i, " is outside the vocabulary [0, ", vocab_size, ")");
  const uint32_t dtype = vocab_size <= 65536 ? 2 : 4;
  unsigned char header[kShardHeaderBytes] = {};
  std::memcpy(header, kShardMagic, 8);
  const uint32_t version = kShardVersion, vocab = static_cast<uint32_t>(vocab_size);
  const uint64_t count = tokens.size();
  std::memcpy(header + 8, &version, 4);
  std::memcpy(header + 12, &dtype, 4);
  std::memcpy(header + 16, &count, 8);
  std::memcpy(header + 24, &vocab, 4);
  io::write_file_atomic(path, where(path), [&](std::ostream& out) {
    out.write(reinterpret_cast<const char*>(header), kShardHeaderBytes);
    if (dtype == 4) {
      out.write(reinterpret_cast<const char*>(tokens.data()),
                static_cast<std::streamsize>(tokens.size() * 4));
      return;
    }
    std::vector<uint16_t> chunk;
    constexpr size_t kChunk = 1 << 16;
    for (size_t i = 0; i < tokens.size(); i += kChunk) {
      const size_t n = std::min(kChunk, tokens.size() - i);
      chunk.resize(n);
      for (size_t k = 0; k < n; ++k) chunk[k] = static_cast<uint16_t>(tokens[i + k]);
      out.write(reinterpret_cast<const char*>(chunk.data()), static_cast<std::streamsize>(n * 2));
    }
  });
}

TokenShard::TokenShard(const std::string& path) : path_(path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  MOE_CHECK(fd >= 0, where(path), ": cannot open: ", std::strerror(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    throw Error(cat(where(path), ": not a regular file"));
  }
  const auto size = static_cast<uint64_t>(st.st_size);
  if (size < kShardHeaderBytes) {
    ::close(fd);
    throw Error(cat(where(path), ": truncated: expected at least the ", kShardHeaderBytes,
                    "-byte header, got ", size, " bytes"));
  }
  void* map = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
  const int map_errno = errno;
  ::close(fd);
  MOE_CHECK(map != MAP_FAILED, where(path), ": mmap of ", size, " bytes failed: ", std::strerror(map_errno));
  map_ = map;
  map_bytes_ = size;
  try {
    const auto* p = static_cast<const unsigned char*>(map);
    MOE_CHECK(std::memcmp(p, kShardMagic, 8) == 0, where(path),
              ": bad magic (not a token shard; expected \"MOETOK1\")");
    const auto version = load<uint32_t>(p + 8), dtype = load<uint32_t>(p + 12);
    const auto count = load<uint64_t>(p + 16);
    MOE_CHECK(version == kShardVersion, where(path), ": version ", version, " is not supported (expected ",
              kShardVersion, ")");
    MOE_CHECK(dtype == 2 || dtype == 4, where(path), ": dtype ", dtype,
              " bytes per token is not 2 (u16) or 4 (u32)");
    // Expected size, guarded against overflow from a corrupt count.
    const bool huge = count > (UINT64_MAX - kShardHeaderBytes) / dtype;
    const uint64_t expected = huge ? UINT64_MAX : kShardHeaderBytes + count * dtype;
    const std::string layout =
        cat("(", kShardHeaderBytes, "-byte header + ", count, " tokens x ", dtype, " bytes)");
    MOE_CHECK(size >= expected, where(path), ": truncated: expected ",
              huge ? std::string("more than 2^64") : std::to_string(expected), " bytes ", layout, ", got ",
              size);
    MOE_CHECK(size == expected, where(path), ": size mismatch: expected ", expected, " bytes ", layout,
              ", got ", size, " (trailing bytes)");
    data_ = p + kShardHeaderBytes;
    count_ = static_cast<int64_t>(count);
    vocab_size_ = load<uint32_t>(p + 24);
    dtype_bytes_ = static_cast<int32_t>(dtype);
  } catch (...) {
    ::munmap(map_, map_bytes_);
    map_ = nullptr;
    throw;
  }
}

TokenShard::~TokenShard() {
  if (map_) ::munmap(map_, map_bytes_);
}

TokenShard::TokenShard(TokenShard&& o) noexcept { *this = std::move(o); }

TokenShard& TokenShard::operator=(TokenShard&& o) noexcept {
  if (this != &o) {
    if (map_) ::munmap(map_, map_bytes_);
    path_ = std::move(o.path_);
    map_ = std::exchange(o.map_, nullptr);
    map_bytes_ = std::exchange(o.map_bytes_, 0);
    data_ = std::exchange(o.data_, nullptr);
    count_ = std::exchange(o.count_, 0);
    vocab_size_ = std::exchange(o.vocab_size_, 0);
    dtype_bytes_ = o.dtype_bytes_;
  }
  return *this;
}

int32_t TokenShard::operator[](int64_t i) const {
  if (dtype_bytes_ == 2) return load<uint16_t>(data_ + 2 * i);
  return static_cast<int32_t>(load<uint32_t>(data_ + 4 * i));
}

int32_t TokenShard::at(int64_t i) const {
  MOE_CHECK(i >= 0 && i < count_, where(path_), ": token index ", i, " is outside [0, ", count_, ")");
  return (*this)[i];
}

void TokenShard::read(int64_t begin, int64_t n, int32_t* dst) const {
  MOE_CHECK(begin >= 0 && n >= 0 && begin <= count_ && n <= count_ - begin, where(path_), ": token range [",
            begin, ", ", begin + n, ") is outside [0, ", count_, ")");
  if (dtype_bytes_ == 4) {
    std::memcpy(dst, data_ + 4 * begin, static_cast<size_t>(n) * 4);
    return;
  }
  for (int64_t k = 0; k < n; ++k) dst[k] = load<uint16_t>(data_ + 2 * (begin + k));
}

std::vector<int32_t> TokenShard::to_vector() const {
  std::vector<int32_t> out(static_cast<size_t>(count_));
  read(0, count_, out.data());
  return out;
}

// ---- BatchSampler ----

BatchSampler::BatchSampler(const TokenShard& shard, const SamplerOptions& opts)
    : shard_(&shard), opts_(opts) {
  const int64_t B = opts.batch_size, S = opts.seq_len, N = shard.size();
  MOE_CHECK(B >= 1, "batch sampler: batch_size must be >= 1, got ", B);
  MOE_CHECK(S >= 1, "batch sampler: seq_len must be >= 1, got ", S);
  MOE_CHECK(N >= S + 1, where(shard.path()), ": ", N,
            " tokens are too few for one window of seq_len + 1 = ", S + 1, " tokens");
  // Window k covers [off + k S, off + k S + S]; with off <= max_offset_ every window fits the shard.
  max_offset_ = opts.shuffle ? std::min(S - 1, N - 1 - S) : 0;
  windows_ = (N - 1 - S - max_offset_) / S + 1;
  MOE_CHECK(windows_ <= int64_t{UINT32_MAX}, where(shard.path()), ": ", windows_,
            " windows per epoch are more than the sampler supports (2^32 - 1); use a longer seq_len");
}

void BatchSampler::prepare_epoch(uint64_t epoch) const {
  if (perm_epoch_ == epoch) return;
  perm_.resize(static_cast<size_t>(windows_));
  for (size_t k = 0; k < perm_.size(); ++k) perm_[k] = static_cast<uint32_t>(k);
  perm_offset_ = 0;
  if (opts_.shuffle) {
    // Draw 0 is the offset, draws 1.. the Fisher-Yates swaps; all from the epoch's own stream.
    const Rng rng = Rng(opts_.seed).fork(epoch);
    perm_offset_ = static_cast<int64_t>(rng.below(0, static_cast<uint64_t>(max_offset_) + 1));
    for (size_t i = perm_.size(); i-- > 1;) std::swap(perm_[i], perm_[rng.below(i, i + 1)]);
  }
  perm_epoch_ = epoch;
}

int64_t BatchSampler::window_start(uint64_t epoch, uint64_t k) const {
  MOE_CHECK(k < static_cast<uint64_t>(windows_), "batch sampler: window ", k, " is outside [0, ", windows_,
            ")");
  prepare_epoch(epoch);
  return perm_offset_ + static_cast<int64_t>(perm_[k]) * opts_.seq_len;
}

void BatchSampler::next(int32_t* inputs, int32_t* targets) {
  const int64_t S = opts_.seq_len;
  for (int64_t b = 0; b < opts_.batch_size; ++b) {
    const int64_t start = window_start(pos_.epoch, pos_.index);
    shard_->read(start, S, inputs + b * S);
    shard_->read(start + 1, S, targets + b * S);
    if (++pos_.index == static_cast<uint64_t>(windows_)) pos_ = {pos_.epoch + 1, 0};
  }
}

void BatchSampler::next(std::vector<int32_t>& inputs, std::vector<int32_t>& targets) {
  inputs.resize(static_cast<size_t>(opts_.batch_size * opts_.seq_len));
  targets.resize(inputs.size());
  next(inputs.data(), targets.data());
}

void BatchSampler::set_position(const SamplerPosition& p) {
  MOE_CHECK(p.index < static_cast<uint64_t>(windows_), "batch sampler: position index ", p.index,
            " is outside [0, ", windows_, ") windows per epoch of ", where(shard_->path()));
  pos_ = p;
}

}  // namespace moe::train
