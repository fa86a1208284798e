// Where `--model DIR` points: a Hugging Face model directory, a run directory of `moe train` or a GGUF
// file, and its tokenizer. The functions live in the infer library (moe/infer/model_dir.h), which the
// Python package uses too.
#pragma once

#include "moe/infer/model_dir.h"

namespace moe::cli {

using infer::find_tokenizer;
using infer::load_tokenizer;
using infer::resolve_model_dir;

}  // namespace moe::cli
