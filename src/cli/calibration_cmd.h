// What `moe prune` and `moe merge` share: the checks of --out, the calibration text encoded with the
// model's tokenizer, the calibration window, and the tokenizer files copied beside the new checkpoint.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "moe/model/model_config.h"

namespace moe::cli {

struct CalibrationInput {
  std::string dir;              // the resolved model directory
  std::string tokenizer;        // its tokenizer.json
  std::vector<int32_t> tokens;  // the calibration text, encoded
};

// Throws moe::Error, each message starting "<cmd>: ", when --out is the model directory, --out
// already holds a checkpoint without overwrite, the model has no tokenizer, or the calibration file
// is missing or gives no tokens.
CalibrationInput read_calibration_input(const std::string& cmd, const std::string& model,
                                        const std::string& out, bool overwrite,
                                        const std::string& calibration);

// --seq-len, or min(context, 512) when 0; throws when it exceeds the model's context.
int64_t calibration_seq_len(const std::string& cmd, int64_t seq_len, const model::ModelConfig& c);

// tokenizer.json, tokenizer_config.json and special_tokens_map.json from beside `tokenizer` into out.
void copy_tokenizer_files(const std::string& tokenizer, const std::string& out);

}  // namespace moe::cli
