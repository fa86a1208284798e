// `moe prune --model DIR --keep K --calibration FILE.txt --out DIR [--seq-len N] [--usage-out FILE.json]
// [--overwrite] [--json]`: measures expert usage on calibration text (moe/infer/calibrate.h), keeps
// the K experts of each MoE layer with the largest share of routing weight (moe/model/prune.h) and
// writes the pruned checkpoint with the model's tokenizer files. docs/PRUNING.md.
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>

#include "cli/calibration_cmd.h"
#include "cli/common.h"
#include "moe/core/error.h"
#include "moe/core/parallel.h"
#include "moe/infer/calibrate.h"
#include "moe/model/prune.h"

namespace moe::cli {
namespace {

struct PruneArgs {
  std::string model, calibration, out, usage_out;
  int64_t keep = 0, seq_len = 0;
  bool overwrite = false, json = false;
  int threads = 0;
};

int run_prune(const PruneArgs& a) {
  apply_threads(a.threads);
  const CalibrationInput in = read_calibration_input("prune", a.model, a.out, a.overwrite, a.calibration);

  const model::Transformer m = model::load_pretrained(in.dir);
  const model::ModelConfig& c = m.config();
  MOE_CHECK(a.keep >= c.num_experts_per_tok && a.keep < c.num_experts, "prune: --keep ", a.keep,
            " must be in [top-k = ", c.num_experts_per_tok, ", experts = ", c.num_experts, ")");
  const int64_t S = calibration_seq_len("prune", a.seq_len, c);
  const infer::ExpertUsage usage = infer::measure_expert_usage(m, in.tokens, S);
  if (!a.usage_out.empty()) infer::save_expert_usage(usage, a.usage_out);
  const model::PrunePlan plan = model::plan_prune(c, usage, a.keep);
  const model::Transformer pruned = model::prune_experts(m, plan);
  model::save_pretrained(pruned, a.out);
  copy_tokenizer_files(in.tokenizer, a.out);

  if (a.json) {
    nlohmann::json layers = nlohmann::json::array();
    for (const model::LayerPrune& l : plan.layers)
      layers.push_back({{"layer", l.layer},
                        {"kept", l.kept},
                        {"weight_share", l.weight_share},
                        {"count_share", l.count_share}});
    std::cout << nlohmann::json{{"out", a.out},
                                {"experts", c.num_experts},
                                {"keep", a.keep},
                                {"calibration_tokens", usage.tokens},
                                {"groups_reset", plan.groups_reset},
                                {"layers", layers}}
                     .dump()
              << "\n";
    return kExitOk;
  }
  std::cout << "calibration: " << usage.tokens << " tokens\n";
  if (plan.groups_reset)
    std::cout << "note: " << c.num_experts << " -> " << a.keep
              << " experts leaves the expert groups uneven; the pruned model routes without groups "
                 "(n_group = topk_group = 1)\n";
  for (const model::LayerPrune& l : plan.layers) {
    std::cout << "layer " << l.layer << ": kept";
    for (int64_t e : l.kept) std::cout << " " << e;
    std::cout << "  routing weight kept " << round_to(100 * l.weight_share, 2) << "%  assignments kept "
              << round_to(100 * l.count_share, 2) << "%\n";
  }
  std::cout << "wrote " << a.out << ": " << a.keep << " of " << c.num_experts << " experts per MoE layer, "
            << round_to(static_cast<double>(pruned.config().n_params()) / 1e6, 3) << "M parameters (was "
            << round_to(static_cast<double>(c.n_params()) / 1e6, 3) << "M)\n";
  return kExitOk;
}

}  // namespace

void register_prune(CLI::App& app, Registry& reg) {
  auto a = std::make_shared<PruneArgs>();
  CLI::App* c = app.add_subcommand(
      "prune", "Remove each MoE layer's least-used experts (measured on calibration text)");
  add_model_flag(c, a->model);
  c->add_option("--keep", a->keep, "Experts kept per MoE layer (top-k <= K < experts)")
      ->check(in_range(1, 1 << 14))
      ->required();
  c->add_option("--calibration", a->calibration,
                "Text file (or directory) encoded with the model's tokenizer")
      ->required();
  c->add_option("--out", a->out, "Output model directory")->required();
  c->add_option("--seq-len", a->seq_len, "Calibration window length (default min(context, 512))")
      ->check(in_range(2, kMaxTokensFlag));
  c->add_option("--usage-out", a->usage_out, "Also write the measured expert usage (JSON)");
  add_threads_flag(c, a->threads);
  c->add_flag("--overwrite", a->overwrite, "Replace a checkpoint already in --out");
  add_json_flag(c, a->json);
  c->callback([&reg, a] { reg.action = [a] { return run_prune(*a); }; });
}

}  // namespace moe::cli
