// Where a model lives, as `moe generate --model` and the Python package accept it: a Hugging Face
// model directory (config.json + *.safetensors), a run directory of `moe train`, whose checkpoint/ is
// used, or a GGUF file (FILE.gguf). The tokenizer is DIR/tokenizer.json, the run directory's, or the
// GGUF file's metadata.
#pragma once

#include <filesystem>
#include <string>

#include "moe/core/error.h"
#include "moe/model/gguf_model.h"
#include "moe/text/tokenizer.h"

namespace moe::infer {

// The model directory (or GGUF file) that `dir` names; throws moe::Error naming it when it is none.
inline std::string resolve_model_dir(const std::string& dir) {
  namespace fs = std::filesystem;
  if (model::is_gguf_path(dir)) return dir;
  MOE_CHECK(fs::is_directory(dir), "model directory '", dir, "' does not exist");
  if (fs::exists(fs::path(dir) / "config.json")) return dir;
  if (fs::exists(fs::path(dir) / "checkpoint" / "config.json"))
    return (fs::path(dir) / "checkpoint").string();
  throw Error(
      cat("'", dir, "' is neither a model directory (no config.json) nor a run directory with a checkpoint"));
}

// The tokenizer.json next to the model, the GGUF file itself when its metadata has a tokenizer, or
// "" when there is none.
inline std::string find_tokenizer(const std::string& model_dir) {
  namespace fs = std::filesystem;
  if (model::is_gguf_path(model_dir)) {
    const gguf::Reader r(model_dir);
    const std::string t = r.get_string("tokenizer.ggml.model", "none");
    return t == "none" || t == "no_vocab" ? "" : model_dir;
  }
  for (const fs::path& p :
       {fs::path(model_dir) / "tokenizer.json", fs::path(model_dir).parent_path() / "tokenizer.json"})
    if (fs::exists(p)) return p.string();
  return "";
}

// The tokenizer that find_tokenizer() found: a tokenizer.json, or a GGUF file's metadata.
inline text::Tokenizer load_tokenizer(const std::string& path) {
  if (!model::is_gguf_path(path)) return text::Tokenizer::load(path);
  const gguf::Reader r(path);
  return text::Tokenizer::from_json(model::gguf_tokenizer_json(r), cat("the tokenizer of gguf '", path, "'"));
}

}  // namespace moe::infer
