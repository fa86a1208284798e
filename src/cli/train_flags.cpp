// The training-loop flags shared by `moe train` and `moe distill` (cli/train_flags.h).
#include "cli/train_flags.h"

#include "cli/common.h"

namespace moe::cli {

void add_training_flags(CLI::App* c, train::TrainOptions& o) {
  c->add_option("--seq-len", o.seq_len, "Tokens per sequence")
      ->check(in_range(2, kMaxTokensFlag))
      ->capture_default_str();
  c->add_option("--batch-size", o.batch_size, "Sequences per micro-batch")
      ->check(in_range(1, 1 << 20))
      ->capture_default_str();
  c->add_option("--grad-accum", o.grad_accum, "Micro-batches per optimizer step")
      ->check(in_range(1, 1 << 20))
      ->capture_default_str();
  c->add_option("--steps", o.steps, "Optimizer steps (default 800)")->check(in_range(1, 1e12));
  c->add_option("--lr", o.lr, "Peak learning rate")->check(above_at_most(0, 1e3))->capture_default_str();
  c->add_option("--min-lr-ratio", o.min_lr_ratio, "Final learning rate / peak")
      ->check(in_range(0, 1))
      ->capture_default_str();
  c->add_option("--warmup", o.warmup_steps, "Warmup steps")->check(in_range(0, 1e12))->capture_default_str();
  c->add_option("--weight-decay", o.weight_decay, "AdamW weight decay")
      ->check(in_range(0, 1e3))
      ->capture_default_str();
  c->add_option("--clip", o.grad_clip, "Gradient clipping max norm (0 = off)")
      ->check(in_range(0, 1e12))
      ->capture_default_str();
  c->add_flag(
      "--bf16", o.bf16,
      "bf16 compute for the dense linears and the experts (forward and input-gradient GEMMs; f32 master "
      "weights, weight gradients and optimizer)");
  add_seed_flag(c, o.seed, "init, data order and router jitter");
  c->add_option("--log-every", o.log_every, "Progress line every N steps")
      ->check(in_range(1, 1e12))
      ->capture_default_str();
  c->add_option("--eval-every", o.eval_every, "Validation loss every N steps (0 = at the end)")
      ->check(in_range(0, 1e12))
      ->capture_default_str();
  c->add_option("--eval-batches", o.eval_batches, "Validation batches per evaluation")
      ->check(in_range(1, 1 << 20))
      ->capture_default_str();
  c->add_option("--checkpoint-every", o.checkpoint_every, "Checkpoint every N steps (0 = at the end)")
      ->check(in_range(0, 1e12))
      ->capture_default_str();
  c->add_option("--halt-after", o.halt_after, "Stop with a checkpoint after N steps of this invocation")
      ->check(in_range(1, 1e12));
  c->add_flag("--quiet", o.quiet, "No progress lines");
}

}  // namespace moe::cli
