// The training loop of `moe train`: corpus -> BPE tokenizer -> token shards -> MoE transformer
// trained with AdamW; metrics to RUN_DIR/metrics.jsonl, checkpoints to RUN_DIR/checkpoint.
//
// A run directory holds:
//   train_options.json          the options of the run (a resumed run reads them back)
//   tokenizer.json              the tokenizer (Hugging Face format)
//   data/train.bin, data/val.bin  token shards
//   metrics.jsonl               one JSON object per line (see docs/TRAINING.md)
//   checkpoint/                 config.json, model.safetensors, tokenizer.json (a Hugging Face model
//                               directory) + optimizer.safetensors and trainer_state.json
// A checkpoint is written to checkpoint.tmp/ and swapped in by renames, so a kill at any moment
// leaves a whole checkpoint (checkpoint/ or, between the two renames, checkpoint.old/).
#pragma once

#include <cstdint>
#include <functional>
#include <string>

#include "moe/model/model_config.h"

namespace moe::dist {
struct ParallelGroups;
}

namespace moe::train {

struct TrainOptions {
  std::string run_dir = "runs/fortunes";
  std::string data;          // text file or directory; empty = the fortunes corpus
  std::string init_from;     // start from this model directory (its config, weights and
                             // tokenizer.json), e.g. one made by `moe upcycle`
  model::ModelConfig model;  // vocab_size is set from the tokenizer
  // Knowledge distillation (`moe distill`, docs/DISTILLATION.md): a teacher model directory (its
  // config.json, weights and tokenizer.json; or a run directory of `moe train` with one). The
  // student (model, or init_from) uses the teacher's tokenizer and vocabulary and trains on
  // (1−kd_weight)·CE + kd_weight·T²·KL(teacher/T ‖ student/T), T = temperature, with the teacher's
  // logits computed per micro-batch (the teacher holds no gradients). kd_weight 0: the teacher is
  // not run (plain training with its tokenizer). One process only.
  std::string teacher;
  double kd_weight = 0.5;
  double temperature = 2.0;
  int32_t vocab_size = 4096;  // BPE vocabulary
  int64_t seq_len = 128;
  int64_t batch_size = 16;  // sequences per micro-batch
  int64_t grad_accum = 1;   // micro-batches per optimizer step
  int64_t steps = 800;      // optimizer steps
  double lr = 3e-3;
  double min_lr_ratio = 0.1;  // min_lr = lr · ratio
  int64_t warmup_steps = 40;
  double weight_decay = 0.1;
  double beta1 = 0.9, beta2 = 0.95;
  double grad_clip = 1.0;  // 0 = off
  bool bf16 = false;       // bf16 compute of the dense linear layers (Transformer::set_bf16_compute)
  uint64_t seed = 1;
  int64_t log_every = 10;
  int64_t eval_every = 100;  // 0 = only at the end
  int64_t eval_batches = 8;
  int64_t checkpoint_every = 100;  // 0 = only at the end
  double time_limit_s = 0;         // stop (with a checkpoint) after this much training time; 0 = none
  int64_t halt_after = 0;          // stop after this many steps of THIS invocation (tests, time boxes)
  int64_t fault_nan_step = -1;     // fault injection for tests: poison this step's gradient with NaN
  int ep_chunks = 1;               // expert parallelism: token chunks per MoE layer whose exchange
                                   // overlaps another chunk's compute (ExpertParallel::chunks)
  int64_t fault_exit_step = -1;    // fault injection for tests: the last rank of a parallel run exits
                                   // at the start of this step (a crashed process)
  int64_t fault_hang_step = -1;    // ... or stops answering (sleeps) there
  bool quiet = false;              // no progress lines on stdout
  // Called on rank 0 with every record written to metrics.jsonl (its JSON text, as written) right
  // after it is written; returning false stops the run after the current step, with a checkpoint (as
  // halt_after). An exception it throws propagates out of train() / resume(). Not saved with the run.
  std::function<bool(const std::string& record)> on_metrics;
};

// The default model: a small qwen3_moe (4 layers, d 256, 8 heads / 4 KV heads, 8 experts top-2 of
// width 256, RMSNorm'd q/k) that trains on two CPU cores in minutes.
model::ModelConfig default_model_config();

std::string to_json(const TrainOptions& o);
TrainOptions train_options_from_json(const std::string& text);  // errors name the key

struct TrainSummary {
  int64_t steps_done = 0;      // optimizer steps completed in total (across resumes)
  int64_t skipped = 0;         // steps skipped for a non-finite loss or gradient (this invocation)
  double final_loss = 0;       // mean training loss of the last logged window
  double eval_loss = 0;        // last evaluation
  double unigram_entropy = 0;  // of the train shard, nats/token
  double tokens_per_s = 0;     // this invocation
  std::string checkpoint;      // path of the last checkpoint
};

// Trains a new run in opt.run_dir (which must not hold a run yet). Throws moe::Error on bad options.
//
// par: expert × data parallelism (see dist::make_groups; src/train/parallel.h), every rank of
// par->world calling with the same options. Each rank takes batch_size / world sequences of every
// global batch (batch_size must be a multiple of the world size), so the loss sequence is the one a
// single process would get up to summation order and to the balancing losses, which each rank
// takes over its own tokens (their mean is reported). Rank 0 prepares the data, prints and writes
// metrics; checkpoints are sharded Hugging Face checkpoints (model-*-of-*.safetensors + index,
// optimizer-*-of-*.safetensors, one shard per expert-parallel rank) that load with any number of
// ranks, including one. null: one process.
TrainSummary train(const TrainOptions& opt, const dist::ParallelGroups* par = nullptr);
// Continues the run in run_dir from its last checkpoint with exactly the batches, learning rates and
// optimizer state an uninterrupted run would have had. `override_steps` > 0 changes the total step
// count (and with it the schedule); halt_after / time_limit_s / quiet apply to this invocation.
TrainSummary resume(const std::string& run_dir, int64_t override_steps = 0, int64_t halt_after = 0,
                    double time_limit_s = 0, bool quiet = false, const dist::ParallelGroups* par = nullptr,
                    int ep_chunks = 1);
// The same with the options in a struct (and the metrics callback of TrainOptions::on_metrics).
struct ResumeOptions {
  int64_t override_steps = 0;
  int64_t halt_after = 0;
  double time_limit_s = 0;
  bool quiet = false;
  int ep_chunks = 1;
  std::function<bool(const std::string& record)> on_metrics;
};
TrainSummary resume(const std::string& run_dir, const ResumeOptions& ro,
                    const dist::ParallelGroups* par = nullptr);

}  // namespace moe::train
