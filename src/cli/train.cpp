// `moe train`: train an MoE language model (defaults: a small qwen3_moe on the English text of
// Debian's fortunes package), or `moe train --resume RUN_DIR` to continue one.
#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <memory>

#include "cli/common.h"
#include "cli/model_flags.h"
#include "cli/train_flags.h"
#include "moe/core/error.h"
#include "moe/core/parallel.h"
#include "moe/dist/comm.h"
#include "moe/train/trainer.h"

namespace moe::cli {
namespace {

struct TrainArgs {
  train::TrainOptions opt;
  ModelFlags model;
  std::string resume;
  bool overwrite = false;
  double time_limit_min = 0;
  int threads = 0;
  int expert_parallel = 1;
  double comm_timeout_s = 300;
  bool hierarchical = false;
  int ranks_per_node = 0;
};

// The process groups of a run started by mpirun (null for one process). Every rank gets the same
// groups; errors name the flag.
std::unique_ptr<dist::ParallelGroups> make_parallel(const TrainArgs& a) {
  MOE_CHECK(a.expert_parallel >= 1, "--expert-parallel must be >= 1, got ", a.expert_parallel);
  MOE_CHECK(a.comm_timeout_s >= 0, "--comm-timeout must be >= 0 seconds (0 = wait forever)");
  if (!dist::launched_by_mpi()) {
    MOE_CHECK(
        a.expert_parallel == 1, "--expert-parallel ", a.expert_parallel,
        " needs that many processes: start it with `mpirun -np N build/moe train --expert-parallel K ...`");
    return nullptr;
  }
  std::shared_ptr<dist::Communicator> world = dist::mpi_world();
  world->set_timeout(a.comm_timeout_s);
  if (world->size() == 1 && a.expert_parallel == 1) return nullptr;
  MOE_CHECK(world->size() % a.expert_parallel == 0, "--expert-parallel ", a.expert_parallel,
            " must divide the number of processes (", world->size(), ")");
  auto g = std::make_unique<dist::ParallelGroups>(
      dist::make_groups(world, a.expert_parallel, a.hierarchical, a.ranks_per_node));
  g->ep->set_timeout(a.comm_timeout_s);
  g->dp->set_timeout(a.comm_timeout_s);
  return g;
}

train::TrainSummary run_train_ranks(TrainArgs& a, double limit_s, const dist::ParallelGroups* par) {
  train::TrainSummary s;
  if (!a.resume.empty()) {
    s = train::resume(a.resume, a.opt.steps, a.opt.halt_after, limit_s, a.opt.quiet, par, a.opt.ep_chunks);
  } else {
    a.opt.model = build_model(a.model, a.opt.seq_len);
    a.opt.model.vocab_size = a.opt.vocab_size;  // replaced by the tokenizer's size
    a.opt.time_limit_s = limit_s;
    if (a.overwrite && (!par || par->world->rank() == 0)) {
      std::error_code ec;
      std::filesystem::remove_all(a.opt.run_dir, ec);
      MOE_CHECK(!ec, "cannot remove '", a.opt.run_dir, "': ", ec.message());
    }
    if (par) par->world->barrier();
    s = train::train(a.opt, par);
  }
  return s;
}

int run_train(TrainArgs& a) {
  apply_threads(a.threads);
  const double limit_s = a.time_limit_min * 60.0;
  const std::unique_ptr<dist::ParallelGroups> par = make_parallel(a);
  train::TrainSummary s;
  try {
    s = run_train_ranks(a, limit_s, par.get());
  } catch (const std::exception& e) {
    if (!par) throw;
    // One rank's error (a peer that stopped answering, a full disk): report it and bring the whole
    // job down rather than leave the other ranks waiting in a collective.
    std::string msg = cat("moe: error: rank ", par->world->rank(), ": ", e.what());
    std::replace(msg.begin(), msg.end(), '\n', ' ');
    msg += '\n';
    std::fputs(msg.c_str(), stderr);  // one write, so that mpirun forwards the line whole
    std::fflush(stderr);
    par->world->abort_job(dynamic_cast<const dist::CommError*>(&e) ? kExitFailure : kExitUsage);
  }
  if (par && par->world->rank() != 0) return kExitOk;
  std::cout << "done: " << s.steps_done << " steps, train loss " << s.final_loss << ", val loss "
            << s.eval_loss << " (unigram entropy " << s.unigram_entropy << "), "
            << static_cast<int64_t>(s.tokens_per_s) << " tokens/s";
  if (s.skipped) std::cout << ", " << s.skipped << " steps skipped (non-finite)";
  std::cout << "\ncheckpoint: " << s.checkpoint << "\n";
  return kExitOk;
}

}  // namespace

void register_train(CLI::App& app, Registry& reg) {
  auto a = std::make_shared<TrainArgs>();
  a->opt.steps = 0;  // 0 = the default (or, with --resume, the run's own)
  CLI::App* c = app.add_subcommand("train",
                                   "Train an MoE language model (default: a small qwen3_moe on the "
                                   "fortunes corpus) or resume one");
  train::TrainOptions& o = a->opt;
  c->add_option("--out", o.run_dir, "Run directory")->capture_default_str();
  c->add_option("--data", o.data, "Text file or directory of text files (default: the fortunes package)");
  c->add_option("--resume", a->resume, "Continue the run in this directory from its last checkpoint");
  c->add_flag("--overwrite", a->overwrite, "Delete an existing run in --out first");
  c->add_option("--init", o.init_from,
                "Start from this model directory's weights and tokenizer (e.g. `moe upcycle`)");
  add_model_flags(c, a->model);
  c->add_option("--vocab-size", o.vocab_size, "BPE vocabulary size")
      ->check(in_range(300, 1 << 22))
      ->capture_default_str();
  add_training_flags(c, o);
  c->add_option("--time-limit", a->time_limit_min,
                "Stop with a checkpoint after this many minutes (0 = none)")
      ->check(in_range(0, 1e9));
  add_threads_flag(c, a->threads);
  c->add_option("--expert-parallel", a->expert_parallel,
                "Under mpirun: shard the experts over groups of this many ranks (the rest is data parallel)")
      ->check(in_range(1, 1 << 14))
      ->capture_default_str()
      ->group("Parallelism");
  c->add_option("--comm-timeout", a->comm_timeout_s,
                "Seconds a rank waits for its peers before stopping with an error (0 = forever)")
      ->check(in_range(0, 1e6))
      ->capture_default_str()
      ->group("Parallelism");
  c->add_option("--ep-chunks", o.ep_chunks,
                "Token chunks per MoE layer: one chunk's all-to-all overlaps another's expert compute")
      ->check(in_range(1, 1024))
      ->capture_default_str()
      ->group("Parallelism");
  c->add_flag("--hierarchical-a2a", a->hierarchical,
              "Two-stage all-to-all: inside each node first, then across nodes")
      ->group("Parallelism");
  c->add_option("--ranks-per-node", a->ranks_per_node,
                "Ranks per node for --hierarchical-a2a (default: detected)")
      ->check(in_range(1, 1 << 16))
      ->group("Parallelism");
  c->add_option("--fault-nan-step", o.fault_nan_step, "Testing: poison the gradient of this step with NaN")
      ->check(in_range(0, 1e12))
      ->group("Testing");
  c->add_option("--fault-exit-step", o.fault_exit_step,
                "Testing: the last rank exits at the start of this step")
      ->check(in_range(0, 1e12))
      ->group("Testing");
  c->add_option("--fault-hang-step", o.fault_hang_step, "Testing: the last rank stops answering at this step")
      ->check(in_range(0, 1e12))
      ->group("Testing");
  c->callback([&reg, a] {
    if (a->opt.steps == 0 && a->resume.empty()) a->opt.steps = train::TrainOptions{}.steps;
    reg.action = [a] { return run_train(*a); };
  });
}

}  // namespace moe::cli
