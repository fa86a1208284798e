// `moe init --out DIR [model flags] [--vocab N] [--context N] [--seed S] [--overwrite]`: writes a
// randomly initialised checkpoint (config.json + model.safetensors, Hugging Face layout) of the model
// the flags describe, e.g. to measure inference speed of a model size without training one:
//
//   moe init --model-config bench/configs/mixtral-1b.json --out models/mixtral-1b
//
// The weights are Hugging Face-style random (normal(0, initializer_range)); the text such a model
// generates is noise, its speed is the speed of a trained model of the same shape.
#include <filesystem>
#include <iostream>
#include <memory>

#include "cli/common.h"
#include "cli/model_flags.h"
#include "moe/core/error.h"
#include "moe/model/transformer.h"

namespace moe::cli {
namespace {

struct InitArgs {
  ModelFlags model;
  std::string out;
  int64_t vocab = 0, context = 0;
  uint64_t seed = 0;
  bool overwrite = false;
};

int run_init(const InitArgs& a) {
  namespace fs = std::filesystem;
  model::ModelConfig c = build_model(a.model, 0);
  if (a.vocab > 0) c.vocab_size = a.vocab;
  if (a.context > 0) c.max_position_embeddings = a.context;
  c.validate();
  if (fs::exists(fs::path(a.out) / "config.json") || fs::exists(fs::path(a.out) / "model.safetensors")) {
    MOE_CHECK(a.overwrite, "init: '", a.out, "' already holds a checkpoint (use --overwrite to replace it)");
  }
  model::Transformer m(c);
  m.init_params(a.seed);
  model::save_pretrained(m, a.out);
  std::cout << "init: wrote " << a.out << " (" << model::arch_name(c.arch) << ", "
            << static_cast<double>(c.n_params()) / 1e6 << "M parameters, "
            << static_cast<double>(c.n_active_params()) / 1e6 << "M active per token)\n";
  return kExitOk;
}

}  // namespace

void register_init(CLI::App& app, Registry& reg) {
  auto a = std::make_shared<InitArgs>();
  CLI::App* c = app.add_subcommand("init", "Write a randomly initialised checkpoint of a model shape");
  c->add_option("--out", a->out, "Model directory to write")->required();
  add_model_flags(c, a->model);
  c->add_option("--vocab", a->vocab, "Vocabulary size (default: the config's)")->check(at_least(1));
  c->add_option("--context", a->context, "max_position_embeddings (default: the config's)")
      ->check(at_least(1));
  add_seed_flag(c, a->seed, "the initialisation");
  c->add_flag("--overwrite", a->overwrite, "Replace a checkpoint already in --out");
  c->callback([&reg, a] { reg.action = [a] { return run_init(*a); }; });
}

}  // namespace moe::cli
