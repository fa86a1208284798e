// `moe distill`: train a student model on a teacher's softened predictions (knowledge distillation,
// docs/DISTILLATION.md), or `moe distill --resume RUN_DIR` to continue such a run.
//
//   moe distill --teacher DIR (--student-config FILE.json | --student DIR | model flags) --data FILE|DIR
//               --out RUN_DIR [--kd-weight A] [--temperature T] [training flags]
#include <filesystem>
#include <iostream>
#include <memory>

#include "cli/common.h"
#include "cli/model_flags.h"
#include "cli/train_flags.h"
#include "moe/core/error.h"
#include "moe/train/distill.h"
#include "moe/train/trainer.h"

namespace moe::cli {
namespace {

namespace fs = std::filesystem;

struct DistillArgs {
  train::TrainOptions opt;
  ModelFlags model;
  std::string student_config;  // --student-config (the student's config.json)
  std::string resume;
  bool overwrite = false;
  double time_limit_min = 0;
  int threads = 0;
};

// The student's config: --student DIR's own, else --student-config / the model flags with the
// teacher's vocabulary. A config that states another vocabulary than the teacher's is an error.
void set_student(DistillArgs& a) {
  const model::ModelConfig teacher = train::distill::teacher_config(a.opt.teacher);
  if (!a.opt.init_from.empty()) {
    const fs::path cfg = fs::path(a.opt.init_from) / "config.json";
    MOE_CHECK(fs::exists(cfg), "distill: --student ", a.opt.init_from, " has no config.json");
    train::distill::check_same_vocab(teacher.vocab_size, model::load_model_config(cfg.string()).vocab_size);
    return;
  }
  MOE_CHECK(a.student_config.empty() || a.model.model_config.empty(),
            "distill: give --student-config or --model-config, not both");
  if (!a.student_config.empty()) a.model.model_config = a.student_config;
  a.opt.model = build_model(a.model, a.opt.seq_len);
  if (a.model.model_config.empty())
    a.opt.model.vocab_size = teacher.vocab_size;  // flags only: the teacher's vocabulary
  else
    train::distill::check_same_vocab(teacher.vocab_size, a.opt.model.vocab_size);
  a.opt.model.bos_token_id = teacher.bos_token_id, a.opt.model.eos_token_id = teacher.eos_token_id;
}

int run_distill(DistillArgs& a) {
  apply_threads(a.threads);
  const double limit_s = a.time_limit_min * 60.0;
  train::TrainSummary s;
  if (!a.resume.empty()) {
    s = train::resume(a.resume, a.opt.steps, a.opt.halt_after, limit_s, a.opt.quiet);
  } else {
    MOE_CHECK(!a.opt.teacher.empty(), "distill: --teacher is required (or --resume RUN_DIR)");
    MOE_CHECK(!a.opt.data.empty(),
              "distill: --data is required (a text file, a directory of text files, or "
              "a `moe train` run directory whose token shards to reuse)");
    set_student(a);
    a.opt.time_limit_s = limit_s;
    if (a.overwrite) {
      std::error_code ec;
      fs::remove_all(a.opt.run_dir, ec);
      MOE_CHECK(!ec, "cannot remove '", a.opt.run_dir, "': ", ec.message());
    }
    s = train::train(a.opt);
  }
  std::cout << "done: " << s.steps_done << " steps, train loss " << s.final_loss << ", val loss "
            << s.eval_loss << ", " << static_cast<int64_t>(s.tokens_per_s) << " tokens/s";
  if (s.skipped) std::cout << ", " << s.skipped << " steps skipped (non-finite)";
  std::cout << "\ncheckpoint: " << s.checkpoint << "\n";
  return kExitOk;
}

}  // namespace

void register_distill(CLI::App& app, Registry& reg) {
  auto a = std::make_shared<DistillArgs>();
  a->opt.steps = 0;  // 0 = the default (or, with --resume, the run's own)
  a->opt.run_dir = "runs/distill";
  CLI::App* c = app.add_subcommand(
      "distill", "Train a student model on a teacher's predictions (knowledge distillation) or resume one");
  train::TrainOptions& o = a->opt;
  c->add_option("--teacher", o.teacher,
                "Teacher model directory (or `moe train` run directory); the student uses its tokenizer");
  c->add_option("--student-config", a->student_config,
                "The student's config.json (default: the model flags, with the teacher's vocabulary)");
  c->add_option("--student", o.init_from,
                "Start the student from this model directory (e.g. a pruned model)");
  c->add_option("--data", o.data,
                "Text file, directory of text files, or a `moe train` run directory (its token shards, "
                "made with the teacher's tokenizer)");
  c->add_option("--out", o.run_dir, "Run directory")->capture_default_str();
  c->add_option("--resume", a->resume,
                "Continue the distillation run in this directory (reloads the teacher)");
  c->add_flag("--overwrite", a->overwrite, "Delete an existing run in --out first");
  c->add_option("--kd-weight", o.kd_weight,
                "A: loss = (1-A)·CE + A·T²·KL(teacher/T || student/T); 0 = no teacher (plain training)")
      ->check(in_range(0, 1))
      ->capture_default_str();
  c->add_option("--temperature", o.temperature, "T: the softmax temperature of the KD term")
      ->check(above_at_most(0, 1e3))
      ->capture_default_str();
  add_model_flags(c, a->model);
  add_training_flags(c, o);
  c->add_option("--time-limit", a->time_limit_min,
                "Stop with a checkpoint after this many minutes (0 = none)")
      ->check(in_range(0, 1e9));
  add_threads_flag(c, a->threads);
  c->callback([&reg, a] {
    if (a->opt.steps == 0 && a->resume.empty()) a->opt.steps = train::TrainOptions{}.steps;
    reg.action = [a] { return run_distill(*a); };
  });
}

}  // namespace moe::cli
