// `moe merge --model DIR --keep K --calibration FILE.txt --out DIR [--seq-len N] [--rows N]
// [--routing-weight W] [--router pivot|average] [--align weights|none] [--shares usage|usage-sim]
// [--overwrite] [--json] [--threads N]`: measures expert usage and samples every MoE layer's inputs on
// calibration text (moe/infer/merge_calibrate.h), merges each layer's experts into K groups around the
// experts pruning would keep (moe/model/merge.h) and writes the merged checkpoint with the model's tokenizer
// files. docs/MERGING.md.
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>

#include "cli/calibration_cmd.h"
#include "cli/common.h"
#include "moe/core/error.h"
#include "moe/infer/merge_calibrate.h"
#include "moe/model/merge.h"

namespace moe::cli {
namespace {

struct MergeArgs {
  std::string model, calibration, out, router = "pivot", align = "weights", shares = "usage";
  int64_t keep = 0, seq_len = 0, rows = 2048;
  double routing_weight = 0.5;
  double refit_down = 0;  // damping of the down-projection refit; 0: off
  bool overwrite = false, json = false;
  int threads = 0;
};

int run_merge(const MergeArgs& a) {
  apply_threads(a.threads);
  const CalibrationInput in = read_calibration_input("merge", a.model, a.out, a.overwrite, a.calibration);

  model::Transformer m = model::load_pretrained(in.dir);
  const model::ModelConfig& c = m.config();
  MOE_CHECK(a.keep >= c.num_experts_per_tok && a.keep < c.num_experts, "merge: --keep ", a.keep,
            " must be in [top-k = ", c.num_experts_per_tok, ", experts = ", c.num_experts, ")");
  const int64_t S = calibration_seq_len("merge", a.seq_len, c);
  const infer::MergeCalibration cal = infer::measure_merge_calibration(m, in.tokens, S, a.rows);
  model::MergeOptions opt;
  opt.routing_weight = a.routing_weight;
  opt.router = a.router == "average" ? model::MergeRouter::Average : model::MergeRouter::Pivot;
  opt.align = a.align == "none" ? model::MergeAlign::None : model::MergeAlign::Weights;
  opt.shares = a.shares == "usage-sim" ? model::MergeShares::UsageSimilarity : model::MergeShares::Usage;
  opt.refit_damping = a.refit_down;
  const model::MergePlan plan = model::plan_merge(m, cal.usage, cal.rows, a.keep, opt);
  const model::Transformer merged = model::merge_experts(m, plan, &cal.rows);
  model::save_pretrained(merged, a.out);
  copy_tokenizer_files(in.tokenizer, a.out);
  const int64_t rows = cal.rows.empty() ? 0 : cal.rows[0].n;

  if (a.json) {
    nlohmann::json layers = nlohmann::json::array();
    for (const model::LayerMerge& l : plan.layers) {
      nlohmann::json sim = nlohmann::json::array();
      for (const auto& g : l.groups) {
        std::vector<double> s;
        for (int64_t e : g) s.push_back(round_to(l.similarity[e], 4));
        sim.push_back(s);
      }
      nlohmann::json shares = nlohmann::json::array();
      for (const auto& s : l.shares) {
        std::vector<double> r;
        for (double x : s) r.push_back(round_to(x, 4));
        shares.push_back(r);
      }
      layers.push_back({{"layer", l.layer},
                        {"groups", l.groups},
                        {"shares", shares},
                        {"similarity", sim},
                        {"pivot_weight_share", l.weight_share}});
    }
    std::cout << nlohmann::json{{"out", a.out},
                                {"experts", c.num_experts},
                                {"keep", a.keep},
                                {"calibration_tokens", cal.usage.tokens},
                                {"calibration_rows", rows},
                                {"routing_weight", a.routing_weight},
                                {"router", a.router},
                                {"align", a.align},
                                {"shares", a.shares},
                                {"refit_down", a.refit_down},
                                {"groups_reset", plan.groups_reset},
                                {"layers", layers}}
                     .dump()
              << "\n";
    return kExitOk;
  }
  std::cout << "calibration: " << cal.usage.tokens << " tokens, " << rows << " rows per MoE layer\n";
  if (plan.groups_reset)
    std::cout << "note: " << c.num_experts << " -> " << a.keep
              << " experts leaves the expert groups uneven; the merged model routes without groups "
                 "(n_group = topk_group = 1)\n";
  for (const model::LayerMerge& l : plan.layers) {
    std::cout << "layer " << l.layer << ":";
    for (size_t j = 0; j < l.groups.size(); ++j) {
      std::cout << (j ? " |" : "") << " " << j << " <-";
      for (int64_t e : l.groups[j]) std::cout << " " << e;
    }
    std::cout << "  (pivots' routing weight " << round_to(100 * l.weight_share, 2) << "%)\n";
  }
  std::cout << "wrote " << a.out << ": " << a.keep << " merged experts of " << c.num_experts
            << " per MoE layer, " << round_to(static_cast<double>(merged.config().n_params()) / 1e6, 3)
            << "M parameters (was " << round_to(static_cast<double>(c.n_params()) / 1e6, 3) << "M)\n";
  return kExitOk;
}

}  // namespace

void register_merge(CLI::App& app, Registry& reg) {
  auto a = std::make_shared<MergeArgs>();
  CLI::App* c = app.add_subcommand(
      "merge", "Merge each MoE layer's experts into fewer (grouped by similarity on calibration text)");
  add_model_flag(c, a->model);
  c->add_option("--keep", a->keep, "Merged experts per MoE layer (top-k <= K < experts)")
      ->check(in_range(1, 1 << 14))
      ->required();
  c->add_option("--calibration", a->calibration,
                "Text file (or directory) encoded with the model's tokenizer")
      ->required();
  c->add_option("--out", a->out, "Output model directory")->required();
  c->add_option("--seq-len", a->seq_len, "Calibration window length (default min(context, 512))")
      ->check(in_range(2, kMaxTokensFlag));
  c->add_option("--rows", a->rows, "Calibration rows sampled per MoE layer for the similarity")
      ->capture_default_str()
      ->check(in_range(1, 1 << 20));
  c->add_option("--routing-weight", a->routing_weight,
                "Weight of the router-logit cosine in the similarity (the rest: expert-output cosine)")
      ->capture_default_str()
      ->check(in_range(0, 1));
  c->add_option("--router", a->router, "Merged router row: the pivot's, or the usage-weighted average")
      ->capture_default_str()
      ->check(CLI::IsMember({"pivot", "average"}));
  c->add_option("--align", a->align, "Hidden-unit alignment before averaging: weight matching, or none")
      ->capture_default_str()
      ->check(CLI::IsMember({"weights", "none"}));
  c->add_option("--shares", a->shares,
                "Members' shares of a merged expert: routing weight, or routing weight x similarity")
      ->capture_default_str()
      ->check(CLI::IsMember({"usage", "usage-sim"}));
  add_threads_flag(c, a->threads);
  c->add_option("--refit-down", a->refit_down,
                "Refit each merged expert's down projection to its members' outputs on the calibration rows, "
                "pulled toward the average with this damping (e.g. 0.1; 0 = plain average; docs/MERGING.md)")
      ->check(in_range(0, 1e6))
      ->capture_default_str();
  c->add_flag("--overwrite", a->overwrite, "Replace a checkpoint already in --out");
  add_json_flag(c, a->json);
  c->callback([&reg, a] { reg.action = [a] { return run_merge(*a); }; });
}

}  // namespace moe::cli
