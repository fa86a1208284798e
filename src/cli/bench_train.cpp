// `moe bench train`: times one full training step of a transformer (forward and backward of every
// layer, gradient clipping, AdamW) on random tokens, for comparison with PyTorch eager
// (bench/torch_train_step.py, bench/compare_train_torch.py).
#include <chrono>
#include <cstdio>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>

#include "cli/common.h"
#include "cli/model_flags.h"
#include "moe/core/energy.h"
#include "moe/core/error.h"
#include "moe/core/parallel.h"
#include "moe/core/rng.h"
#include "moe/model/transformer.h"
#include "moe/train/optim.h"

namespace moe::cli {
namespace {

struct BenchTrainArgs {
  ModelFlags model;
  int64_t vocab = 4096;
  int64_t seq_len = 128, batch = 16;
  int iters = 5, warmup = 1, threads = 0;
  uint64_t seed = 1;
  bool json = false;
  bool bf16 = false;
};

// Matmul FLOPs of one forward per token: 2 · (attention projections + active experts + router +
// head) + the causal attention scores and values (2 · 2 · hd · hq · S/2 on average).
double forward_flops_per_token(const model::ModelConfig& c, int64_t S) {
  const double d = static_cast<double>(c.hidden_size), hd = static_cast<double>(c.head_dim_or_default());
  const double hq = static_cast<double>(c.num_attention_heads),
               hkv = static_cast<double>(c.num_key_value_heads);
  double per_layer_attn =
      2 * (d * hq * hd * 2 + d * hkv * hd * 2) + 2 * 2 * hd * hq * static_cast<double>(S) / 2;
  double total = 2 * d * static_cast<double>(c.vocab_size);
  const MoEConfig m = c.moe_layer_config();
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    total += per_layer_attn;
    if (c.is_moe_layer(l))
      total += 2 * (static_cast<double>(m.router.top_k) * 3 * d * static_cast<double>(m.d_ff) +
                    3 * d * static_cast<double>(m.shared_width()) + d * static_cast<double>(m.n_experts));
    else
      total += 2 * 3 * d * static_cast<double>(c.intermediate_size);
  }
  return total;
}

int run_bench_train(const BenchTrainArgs& a) {
  apply_threads(a.threads);
  MOE_CHECK(a.iters >= 1 && a.warmup >= 0, "bench train: --iters must be >= 1 and --warmup >= 0");
  MOE_CHECK(a.seq_len >= 1 && a.batch >= 1, "bench train: --seq-len and --batch-size must be >= 1");
  model::ModelConfig c = build_model(a.model, a.seq_len);
  c.vocab_size = a.vocab;
  c.validate();
  model::Transformer m(c);
  m.init_params(a.seed);
  m.set_bf16_compute(a.bf16);
  std::vector<train::ParamRef> refs;
  m.ensure_grads();
  for (model::NamedParam& p : m.parameters()) refs.push_back({p.name, &p.value, &p.grad, p.decay});
  train::AdamW adam;
  const int64_t n = a.batch * a.seq_len;
  std::vector<int32_t> tok(static_cast<size_t>(n)), tgt(static_cast<size_t>(n));
  const Rng rng(a.seed);
  for (int64_t i = 0; i < n; ++i) {
    tok[i] =
        static_cast<int32_t>(rng.below(static_cast<uint64_t>(2 * i), static_cast<uint64_t>(c.vocab_size)));
    tgt[i] = static_cast<int32_t>(
        rng.below(static_cast<uint64_t>(2 * i + 1), static_cast<uint64_t>(c.vocab_size)));
  }
  std::vector<double> ms;
  double loss = 0;
  EnergyMeter energy;
  double joules = 0;  // over the timed steps
  for (int it = 0; it < a.warmup + a.iters; ++it) {
    const double j0 = energy.joules();
    const auto t0 = std::chrono::steady_clock::now();
    m.zero_grads();
    model::StepOptions so;
    so.ce_scale = 1.0 / static_cast<double>(n);
    const model::StepResult r = m.forward_backward(tok.data(), tgt.data(), a.batch, a.seq_len, so);
    train::clip_grad_norm(refs, 1.0);
    adam.step(refs, 1e-3);
    if (it >= a.warmup) ms.push_back(ms_since(t0)), joules += energy.joules() - j0;
    loss = r.mean_loss();
  }
  const double jpt = joules_per_token(energy, joules, n * a.iters);
  const double step_ms = median(ms);
  const double flops = 3 * forward_flops_per_token(c, a.seq_len) * static_cast<double>(n);
  const double tps = static_cast<double>(n) / (step_ms / 1e3);
  if (a.json) {
    std::cout << nlohmann::json{{"arch", model::arch_name(c.arch)},
                                {"n_params", c.n_params()},
                                {"n_active_params", c.n_active_params()},
                                {"batch", a.batch},
                                {"seq_len", a.seq_len},
                                {"threads", num_threads()},
                                {"bf16", a.bf16},
                                {"step_ms", step_ms},
                                {"tokens_per_s", tps},
                                {"gflops", flops / (step_ms / 1e3) / 1e9},
                                {"loss", loss},
                                {"energy", energy.description()},
                                {"joules_per_token",
                                 jpt >= 0 ? nlohmann::json(jpt) : nlohmann::json(nullptr)},
                                {"peak_rss_mb", peak_rss_mb()}}
                     .dump()
              << "\n";
  } else {
    std::printf("%s: %.2fM parameters (%.2fM active), batch %lld x %lld tokens, %d threads\n",
                model::arch_name(c.arch), c.n_params() / 1e6, c.n_active_params() / 1e6, (long long)a.batch,
                (long long)a.seq_len, num_threads());
    std::printf("training step %.1f ms (median of %d) | %.0f tokens/s | %.1f GFLOP/s | peak RSS %.0f MiB\n",
                step_ms, a.iters, tps, flops / (step_ms / 1e3) / 1e9, peak_rss_mb());
    if (jpt >= 0)
      std::printf("energy %.4g J per token (%s)\n", jpt, energy.description().c_str());
    else
      std::printf("energy per token: %s\n", energy.description().c_str());
  }
  return kExitOk;
}

}  // namespace

void add_bench_train(CLI::App& bench, Registry& reg) {
  auto a = std::make_shared<BenchTrainArgs>();
  CLI::App* c =
      bench.add_subcommand("train", "Time one training step (forward, backward, AdamW) of a transformer");
  add_model_flags(c, a->model);
  c->add_option("--vocab", a->vocab, "Vocabulary size")->check(in_range(2, 1 << 22))->capture_default_str();
  c->add_option("--seq-len", a->seq_len, "Tokens per sequence")
      ->check(in_range(2, kMaxTokensFlag))
      ->capture_default_str();
  c->add_option("--batch-size", a->batch, "Sequences per step")
      ->check(in_range(1, 1 << 20))
      ->capture_default_str();
  c->add_option("--iters", a->iters, "Timed steps (the median is reported)")
      ->check(in_range(1, kMaxRepsFlag))
      ->capture_default_str();
  c->add_option("--warmup", a->warmup, "Untimed steps first")
      ->check(in_range(0, kMaxRepsFlag))
      ->capture_default_str();
  add_threads_flag(c, a->threads);
  add_seed_flag(c, a->seed, "the parameters and the data order");
  c->add_flag("--bf16", a->bf16,
              "bf16 compute: the dense linears' and the experts' forward and input-gradient GEMMs");
  add_json_flag(c, a->json);
  c->callback([&reg, a] { reg.action = [a] { return run_bench_train(*a); }; });
}

}  // namespace moe::cli
