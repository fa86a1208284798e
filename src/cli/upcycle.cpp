// `moe upcycle --model DENSE_DIR --out DIR --experts E --top-k K [--split G] [--keep-dense L,..]`:
// turns a dense checkpoint into an MoE one (see include/moe/model/upcycle.h); then
// `moe train --init DIR` continues training from it.
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>

#include "cli/common.h"
#include "moe/model/upcycle.h"

namespace moe::cli {
namespace {

struct UpArgs {
  std::string src, out;
  model::UpcycleOptions opt;
  bool json = false;
};

int run_upcycle(const UpArgs& a) {
  const model::UpcycleResult r = model::upcycle(a.src, a.out, a.opt);
  const model::ModelConfig& c = r.config;
  if (a.json) {
    std::cout << nlohmann::json{{"out", a.out},
                                {"model_type", model::arch_name(c.arch)},
                                {"converted_layers", r.converted_layers},
                                {"experts", c.num_experts},
                                {"top_k", c.num_experts_per_tok},
                                {"expert_width", c.expert_width()},
                                {"n_params", c.n_params()},
                                {"n_active_params", c.n_active_params()}}
                     .dump()
              << "\n";
  } else {
    std::cout << "wrote " << a.out << ": " << model::arch_name(c.arch) << ", " << r.converted_layers
              << " layers upcycled to " << c.num_experts << " experts of width " << c.expert_width()
              << " (top-" << c.num_experts_per_tok << "), " << c.n_params() / 1e6 << "M parameters\n"
              << "continue training with: moe train --init " << a.out << " --out RUN_DIR\n";
  }
  return kExitOk;
}

}  // namespace

void register_upcycle(CLI::App& app, Registry& reg) {
  auto a = std::make_shared<UpArgs>();
  CLI::App* c =
      app.add_subcommand("upcycle", "Turn a dense checkpoint into an MoE one (experts copied from the FFN)");
  c->add_option("--model", a->src,
                "Dense model directory (llama, mistral, qwen3, or qwen MoE with dense layers)")
      ->required();
  c->add_option("--out", a->out, "Output model directory")->required();
  c->add_option("--experts", a->opt.n_experts, "Copies of the FFN")
      ->check(in_range(1, 1 << 14))
      ->capture_default_str();
  c->add_option("--top-k", a->opt.top_k, "Copies per token")
      ->check(in_range(1, 1 << 14))
      ->capture_default_str();
  c->add_option("--split", a->opt.split, "Cut each copy into this many finer experts")
      ->check(in_range(1, 1024))
      ->capture_default_str();
  c->add_option("--keep-dense", a->opt.keep_dense, "qwen: layers that stay dense")
      ->check(in_range(0, 1023))
      ->delimiter(',');
  add_seed_flag(c, a->opt.seed, "the router init");
  add_json_flag(c, a->json);
  c->callback([&reg, a] { reg.action = [a] { return run_upcycle(*a); }; });
}

}  // namespace moe::cli
