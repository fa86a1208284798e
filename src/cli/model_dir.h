// Where `--model DIR` points: a Hugging Face model directory (config.json + *.safetensors), or a
// run directory of `moe train`, whose checkpoint/ is used. The tokenizer is DIR/tokenizer.json, or
// the run directory's.
#pragma once

#include <filesystem>
#include <string>

#include "moe/core/error.h"

namespace moe::cli {

inline std::string resolve_model_dir(const std::string& dir) {
  namespace fs = std::filesystem;
  MOE_CHECK(fs::is_directory(dir), "model directory '", dir, "' does not exist");
  if (fs::exists(fs::path(dir) / "config.json")) return dir;
  if (fs::exists(fs::path(dir) / "checkpoint" / "config.json"))
    return (fs::path(dir) / "checkpoint").string();
  throw Error(
      cat("'", dir, "' is neither a model directory (no config.json) nor a run directory with a checkpoint"));
}

// The tokenizer.json next to the model, or "" when there is none.
inline std::string find_tokenizer(const std::string& model_dir) {
  namespace fs = std::filesystem;
  for (const fs::path& p :
       {fs::path(model_dir) / "tokenizer.json", fs::path(model_dir).parent_path() / "tokenizer.json"})
    if (fs::exists(p)) return p.string();
  return "";
}

}  // namespace moe::cli
