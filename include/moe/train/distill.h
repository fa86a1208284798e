// The teacher of a distillation run (TrainOptions::teacher; docs/DISTILLATION.md): where its model
// and tokenizer are, its data preparation, and the teacher model itself.
#pragma once

#include <memory>
#include <string>

#include "moe/model/model_config.h"
#include "moe/model/transformer.h"
#include "moe/train/trainer.h"

namespace moe::train::distill {

// The model directory (config.json + weights) of a teacher given as a model directory or as a run
// directory of `moe train` (then its checkpoint/, unless the run directory holds a model itself).
std::string teacher_model_dir(const std::string& teacher);
// The teacher's tokenizer.json: in the given directory, else in its model directory.
std::string teacher_tokenizer(const std::string& teacher);

// The teacher's config.json.
model::ModelConfig teacher_config(const std::string& teacher);
// Throws moe::Error naming both sizes when the student's vocabulary is not the teacher's.
void check_same_vocab(int64_t teacher_vocab, int64_t student_vocab);

// Checks the options of a distillation run (kd_weight in [0, 1], temperature > 0).
void validate_options(const TrainOptions& o);

// When `data` is a run directory of `moe train` (it holds data/train.bin and data/val.bin), copies
// its shards to train_bin / val_bin and returns true; its tokenizer.json must be the teacher's.
// Returns false for a text file or a directory of text files (tokenized by the caller).
bool copy_run_shards(const std::string& data, const std::string& teacher_tokenizer_path,
                     const std::string& train_bin, const std::string& val_bin);

// Loads the teacher (f32, inference only: no gradients are ever allocated) and checks it against
// the student: the same vocab_size (an error names both), and seq_len within its positions.
std::unique_ptr<model::Transformer> load_teacher(const TrainOptions& o, const model::ModelConfig& student);

}  // namespace moe::train::distill
