// Text corpora, their preparation into train / validation shards, and unigram baselines.
#include <algorithm>
#include <cmath>
#include <filesystem>
#include <system_error>

#include "moe/core/error.h"
#include "moe/core/file_io.h"
#include "moe/train/data.h"

namespace moe::train {

namespace fs = std::filesystem;

namespace {

// Regular files directly in `dir`, sorted by name.
std::vector<fs::path> sorted_files(const std::string& dir) {
  std::vector<fs::path> files;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec))
    if (e.is_regular_file(ec)) files.push_back(e.path());
  MOE_CHECK(!ec, "corpus directory '", dir, "': cannot list: ", ec.message());
  std::sort(files.begin(), files.end(), [](const fs::path& a, const fs::path& b) {
    return a.filename().string() < b.filename().string();
  });
  return files;
}

// The fortunes package holds some 45 files; fortunes-min alone holds one.
constexpr size_t kMinFortuneFiles = 10;

std::string install_hint() {
  return "install Debian's `fortunes` package (sudo apt-get install fortunes, or scripts/install-deps.sh)";
}

std::vector<int64_t> token_counts(const TokenShard& shard, int64_t vocab_size) {
  std::vector<int64_t> counts(static_cast<size_t>(std::max<int64_t>(vocab_size, 0)), 0);
  for (int64_t i = 0; i < shard.size(); ++i) {
    const int32_t t = shard[i];
    if (static_cast<size_t>(t) >= counts.size()) counts.resize(static_cast<size_t>(t) + 1, 0);
    ++counts[t];
  }
  return counts;
}

}  // namespace

std::string read_text_corpus(const std::string& path) {
  std::error_code ec;
  if (!fs::is_directory(path, ec)) return io::read_file(path, cat("corpus file '", path, "'"));
  const std::vector<fs::path> files = sorted_files(path);
  MOE_CHECK(!files.empty(), "corpus directory '", path, "' holds no regular files");
  std::string text;
  for (const fs::path& f : files) {
    text += io::read_file(f.string(), cat("corpus file '", f.string(), "'"));
    if (!text.empty() && text.back() != '\n') text.push_back('\n');
  }
  return text;
}

std::string fortunes_corpus(const std::string& dir) {
  std::error_code ec;
  MOE_CHECK(fs::is_directory(dir, ec), "default corpus: directory '", dir, "' not found: ", install_hint());
  std::vector<fs::path> files;
  for (const fs::path& f : sorted_files(dir)) {
    const std::string name = f.filename().string(), ext = f.extension().string();
    if (ext == ".dat" || ext == ".u8" || name == "art" || name == "ascii-art") continue;
    files.push_back(f);
  }
  MOE_CHECK(files.size() >= kMinFortuneFiles, "default corpus: only ", files.size(), " fortune files in '",
            dir, "' (expected the ~45 of the full package): ", install_hint());
  std::string text;
  for (const fs::path& f : files) {
    const std::string body = io::read_file(f.string(), cat("fortune file '", f.string(), "'"));
    // Copy line by line; a line that is exactly "%" (the separator) becomes an empty line.
    for (size_t pos = 0; pos < body.size();) {
      size_t end = body.find('\n', pos);
      if (end == std::string::npos) end = body.size();
      const std::string_view line(body.data() + pos, end - pos);
      if (line != "%") text.append(line);
      text.push_back('\n');
      pos = end + 1;
    }
  }
  return text;
}

size_t validation_split(std::string_view text, double val_fraction) {
  MOE_CHECK(val_fraction >= 0.0 && val_fraction < 1.0, "prepare: val_fraction must be in [0, 1), got ",
            val_fraction);
  const size_t n = text.size();
  const auto keep = static_cast<size_t>(std::ceil(static_cast<double>(n) * val_fraction));
  if (keep == 0) return n;
  const size_t target = n - keep;
  // First paragraph start at or after target, else first line start, else target itself.
  const size_t para = text.find("\n\n", target >= 2 ? target - 2 : 0);
  if (para != std::string_view::npos && para + 2 < n) return std::max(para + 2, target);
  const size_t line = text.find('\n', target >= 1 ? target - 1 : 0);
  if (line != std::string_view::npos && line + 1 < n) return std::max(line + 1, target);
  return target;
}

PrepareResult prepare_shards(std::string_view text, const text::Tokenizer& tok, const std::string& train_path,
                             const std::string& val_path, const PrepareOptions& opts) {
  std::string train_text, val_text;
  if (opts.val_every > 0) {
    // Documents end after a blank line; each keeps its trailing blank line.
    size_t pos = 0;
    for (int64_t doc = 0; pos < text.size(); ++doc) {
      size_t end = text.find("\n\n", pos);
      end = end == std::string_view::npos ? text.size() : end + 2;
      while (end < text.size() && text[end] == '\n') ++end;
      (doc % opts.val_every == opts.val_every - 1 ? val_text : train_text)
          .append(text.substr(pos, end - pos));
      pos = end;
    }
  }
  // Too few documents for that (text without blank lines): fall back to the fraction split.
  if (opts.val_every > 0 && static_cast<double>(val_text.size()) < 0.25 * static_cast<double>(text.size()) /
                                                                       static_cast<double>(opts.val_every)) {
    train_text.clear(), val_text.clear();
  }
  if (train_text.empty() && val_text.empty()) {
    const size_t split = validation_split(text, opts.val_fraction);
    train_text = text.substr(0, split), val_text = text.substr(split);
  }
  const std::vector<int32_t> train = tok.encode(train_text);
  const std::vector<int32_t> val = tok.encode(val_text);
  write_shard(train_path, train, tok.vocab_size());
  write_shard(val_path, val, tok.vocab_size());
  PrepareResult r;
  r.train_bytes = static_cast<int64_t>(train_text.size());
  r.val_bytes = static_cast<int64_t>(val_text.size());
  r.train_tokens = static_cast<int64_t>(train.size());
  r.val_tokens = static_cast<int64_t>(val.size());
  return r;
}

double unigram_entropy(const TokenShard& shard) {
  MOE_CHECK(shard.size() > 0, "unigram entropy: token shard '", shard.path(), "' is empty");
  const std::vector<int64_t> counts = token_counts(shard, shard.vocab_size());
  const auto total = static_cast<double>(shard.size());
  double h = 0.0;
  for (int64_t c : counts)
    if (c > 0) {
      const double p = static_cast<double>(c) / total;
      h -= p * std::log(p);
    }
  return h;
}

double unigram_cross_entropy(const TokenShard& fit, const TokenShard& eval, int64_t vocab_size,
                             double alpha) {
  MOE_CHECK(vocab_size >= 1, "unigram cross-entropy: vocab_size must be >= 1, got ", vocab_size);
  MOE_CHECK(alpha > 0.0, "unigram cross-entropy: alpha must be > 0, got ", alpha);
  MOE_CHECK(eval.size() > 0, "unigram cross-entropy: token shard '", eval.path(), "' is empty");
  const std::vector<int64_t> fit_counts = token_counts(fit, vocab_size);
  const std::vector<int64_t> eval_counts = token_counts(eval, vocab_size);
  MOE_CHECK(static_cast<int64_t>(fit_counts.size()) == vocab_size, "unigram cross-entropy: token shard '",
            fit.path(), "' holds token ", fit_counts.size() - 1, " >= vocab_size ", vocab_size);
  MOE_CHECK(static_cast<int64_t>(eval_counts.size()) == vocab_size, "unigram cross-entropy: token shard '",
            eval.path(), "' holds token ", eval_counts.size() - 1, " >= vocab_size ", vocab_size);
  const double denom = static_cast<double>(fit.size()) + alpha * static_cast<double>(vocab_size);
  double nll = 0.0;
  for (int64_t t = 0; t < vocab_size; ++t)
    if (eval_counts[t] > 0)
      nll -= static_cast<double>(eval_counts[t]) *
             std::log((static_cast<double>(fit_counts[t]) + alpha) / denom);
  return nll / static_cast<double>(eval.size());
}

}  // namespace moe::train
