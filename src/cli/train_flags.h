// The flags of the training loop, shared by `moe train` and `moe distill`: sequence and batch sizes,
// steps, the learning-rate schedule, AdamW, evaluation and checkpoint cadence, seed.
#pragma once

#include <CLI/CLI.hpp>

#include "moe/train/trainer.h"

namespace moe::cli {

// Adds --seq-len, --batch-size, --grad-accum, --steps, --lr, --min-lr-ratio, --warmup,
// --weight-decay, --clip, --bf16, --seed, --log-every, --eval-every, --eval-batches,
// --checkpoint-every, --halt-after and --quiet, each writing its field of `o`.
void add_training_flags(CLI::App* c, train::TrainOptions& o);

}  // namespace moe::cli
