// `moe`: the command-line tool of moe.cpp.
//
//   moe train [options]              train an MoE language model (or --resume a run)
//   moe distill --teacher DIR ...    train a student on a teacher's predictions (distillation)
//   moe eval --model DIR ...         cross-entropy and perplexity on text or token ids
//   moe generate --model DIR ...     continue a prompt (KV cache)
//   moe upcycle --model DIR ...      dense checkpoint -> MoE checkpoint
//   moe init --out DIR ...           randomly initialised checkpoint of a model shape
//   moe quantize --model DIR ...     checkpoint with group-wise int8/int4 experts
//   moe prune --model DIR ...        drop each MoE layer's least-used experts (calibration text)
//   moe compress --model DIR ...     checkpoint with low-rank (truncated SVD) experts
//   moe merge --model DIR ...        merge each MoE layer's experts into fewer (calibration text)
//   moe report RUN_DIR               HTML page of a training run
//   moe serve --model DIR ...        OpenAI-compatible HTTP server (continuous batching)
//   moe plan --model M --gpus N ...  predicted step time and memory of EP x DP layouts on a GPU cluster
//   moe version                      build information and available backends
//   moe bench layer|train|generate|quant|alltoall  time one MoE layer, one training step, serving
//                                    throughput, the quantized-weight GEMMs, or the expert-parallel
//                                    all-to-all (under mpirun)
//   moe layer check-config FILE      validate a layer config (JSON) and print it normalised
//
// Exit codes: 0 success; 2 bad command line or bad input (one line `moe: error: ...` on stderr);
// 1 an unexpected failure while running. Each subcommand adds itself below with one register_* call.
#include <exception>
#include <iostream>
#include <new>
#include <string>

#include "cli/common.h"
#include "moe/core/error.h"

namespace {

using moe::cli::kExitFailure;
using moe::cli::kExitUsage;

void print_error(const std::string& msg) { std::cerr << "moe: error: " << msg << std::endl; }

// The subcommand of `app` called `name`, or null.
CLI::App* find_subcommand(CLI::App& app, const std::string& name) {
  for (CLI::App* sub : app.get_subcommands([](CLI::App*) { return true; })) {
    if (sub->check_name(name)) return sub;
  }
  return nullptr;
}

// Follows the command words of argv (`moe bench layer ...`) before CLI11 parses, so that an unknown
// or missing command gets one error line plus the usage of the group it was looked up in. Returns
// true when argv names a runnable command (or asks for help), false after printing the error.
bool check_command_words(CLI::App& app, int argc, char** argv) {
  CLI::App* group = &app;
  std::string parent;  // the command path above `group`, for its usage line
  std::string path = "moe";
  for (int i = 1; i < argc; ++i) {
    const std::string word = argv[i];
    if (word.empty() || word[0] == '-') return true;  // options: CLI11 handles them (and --help)
    if (group->get_subcommands([](CLI::App*) { return true; }).empty()) return true;  // arguments
    CLI::App* sub = find_subcommand(*group, word);
    if (sub == nullptr) {
      print_error("unknown command '" + word + "'" + (group == &app ? "" : " for '" + path + "'"));
      std::cerr << group->help(parent);
      return false;
    }
    group = sub;
    parent = path;
    path += " " + word;
  }
  if (!group->get_subcommands([](CLI::App*) { return true; }).empty()) {  // `moe`, `moe bench`
    if (group != &app) print_error("'" + path + "' needs a command");
    std::cerr << group->help(parent);
    return false;
  }
  return true;
}

// CLI11 messages sometimes span lines; the tool prints one.
std::string one_line(std::string s) {
  for (char& c : s) {
    if (c == '\n' || c == '\r') c = ' ';
  }
  while (!s.empty() && s.back() == ' ') s.pop_back();
  return s;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"moe.cpp: train and serve Mixture-of-Experts models.", "moe"};
  app.require_subcommand(1);
  app.fallthrough(false);
  app.set_version_flag("--version", std::string("moe.cpp ") + MOE_VERSION);

  moe::cli::Registry reg;
  moe::cli::register_version(app, reg);
  moe::cli::register_bench(app, reg);
  moe::cli::register_layer(app, reg);
  moe::cli::register_train(app, reg);
  moe::cli::register_distill(app, reg);
  moe::cli::register_eval(app, reg);
  moe::cli::register_generate(app, reg);
  moe::cli::register_upcycle(app, reg);
  moe::cli::register_init(app, reg);
  moe::cli::register_quantize(app, reg);
  moe::cli::register_export(app, reg);
  moe::cli::register_prune(app, reg);
  moe::cli::register_compress(app, reg);
  moe::cli::register_merge(app, reg);
  moe::cli::register_predictor(app, reg);
  moe::cli::register_report(app, reg);
  moe::cli::register_serve(app, reg);
  moe::cli::register_plan(app, reg);
  app.footer("Run 'moe COMMAND --help' for the options of a command.");  // after: not inherited

  try {
    if (!check_command_words(app, argc, argv)) return kExitUsage;
    try {
      app.parse(argc, argv);
    } catch (const CLI::CallForHelp& e) {
      return app.exit(e);
    } catch (const CLI::CallForAllHelp& e) {
      return app.exit(e);
    } catch (const CLI::CallForVersion& e) {
      return app.exit(e);
    } catch (const CLI::ParseError& e) {
      print_error(one_line(e.what()));
      return kExitUsage;
    }
    if (!reg.action) {  // a command group (e.g. `moe bench`) without its subcommand
      print_error("missing command; run 'moe --help'");
      return kExitUsage;
    }
    return reg.action();
  } catch (const moe::Error& e) {
    print_error(one_line(e.what()));
    return kExitUsage;
  } catch (const std::bad_alloc&) {
    print_error("out of memory");
    return kExitFailure;
  } catch (const std::exception& e) {
    print_error(one_line(e.what()));
    return kExitFailure;
  }
}
