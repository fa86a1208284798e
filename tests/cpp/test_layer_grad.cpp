// Whole-layer correctness: finite-difference gradient checks in double, the f32 CPU path against
// the f64 reference path, and bit-identical results across thread counts.
#include <gtest/gtest.h>

#include <cstring>
#include <functional>

#include "kernels/cpu/gemm_engine.h"
#include "layer_testutil.h"
#include "moe/core/parallel.h"

namespace moe::testing {
namespace {

struct Case {
  std::string name;
  std::function<void(MoEConfig&)> edit;
  int64_t T = 9;
  bool training = false;
};

void PrintTo(const Case& c, std::ostream* os) { *os << c.name; }

std::vector<Case> cases() {
  return {
      {"softmax_top2", [](MoEConfig&) {}},
      {"softmax_normalize_scaled",
       [](MoEConfig& c) {
         c.router.normalize = true;
         c.router.scaling = 2.5;
       }},
      {"topk_then_softmax", [](MoEConfig& c) { c.router.order = TopkOrder::TopkThenSoftmax; }},
      {"sigmoid_groups_bias_shared",
       [](MoEConfig& c) {
         c.n_experts = 8;
         c.router.score = ScoreFn::Sigmoid;
         c.router.normalize = true;
         c.router.scaling = 2.5;
         c.router.n_groups = 4;
         c.router.topk_groups = 2;
         c.router.use_bias = true;
         c.n_shared_experts = 1;
       }},
      {"softmax_groups_max",
       [](MoEConfig& c) {
         c.n_experts = 8;
         c.router.n_groups = 4;
         c.router.topk_groups = 2;
         c.router.group_score = GroupScore::Max;
       }},
      {"k1", [](MoEConfig& c) { c.router.top_k = 1; }},
      {"k_equals_E",
       [](MoEConfig& c) {
         c.router.top_k = 4;
         c.router.normalize = true;
       }},
      {"capacity_position", [](MoEConfig& c) { c.router.capacity_factor = 0.5; }},
      {"capacity_probs",
       [](MoEConfig& c) {
         c.router.capacity_factor = 0.75;
         c.router.drop_policy = DropPolicy::Probs;
       }},
      {"expert_choice", [](MoEConfig& c) { c.router.routing = RouterType::ExpertChoice; }},
      {"hash",
       [](MoEConfig& c) {
         c.router.routing = RouterType::Hash;
         c.router.normalize = true;
       }},
      {"balanced", [](MoEConfig& c) { c.router.routing = RouterType::Balanced; }},
      {"gelu_experts", [](MoEConfig& c) { c.activation = kernels::Activation::Gelu; }},
      {"relu_experts", [](MoEConfig& c) { c.activation = kernels::Activation::Relu; }},
      {"silu_experts_shared",
       [](MoEConfig& c) {
         c.activation = kernels::Activation::Silu;
         c.n_shared_experts = 2;
         c.d_ff_shared = 3;
       }},
      {"shared_gate",
       [](MoEConfig& c) {
         c.n_shared_experts = 1;
         c.d_ff_shared = 5;
         c.shared_gate = true;
       }},
      {"losses_softmax",
       [](MoEConfig& c) {
         c.balance.aux_coef = 0.3;
         c.balance.seq_aux_coef = 0.2;
         c.balance.seq_len = 3;
         c.balance.z_coef = 0.05;
       }},
      {"losses_sigmoid",
       [](MoEConfig& c) {
         c.router.score = ScoreFn::Sigmoid;
         c.balance.aux_coef = 0.3;
         c.balance.seq_aux_coef = 0.2;
         c.balance.z_coef = 0.05;
       }},
      {"jitter_training", [](MoEConfig& c) { c.router.jitter_eps = 0.1; }, 9, true},
      // Adaptive-k (top-p) routing: renormalised over the selected experts, with every balancing
      // loss (k of the losses = the batch's mean k) and the entropy loss; plain; topk_then_softmax
      // with min_k; with capacity.
      {"top_p_normalize_losses",
       [](MoEConfig& c) {
         c.n_experts = 8;
         c.router.top_k = 5;
         c.router.top_p = 0.45;
         c.router.normalize = true;
         c.balance.aux_coef = 0.3;
         c.balance.seq_aux_coef = 0.2;
         c.balance.seq_len = 3;
         c.balance.z_coef = 0.05;
         c.balance.entropy_coef = 0.1;
       }},
      {"top_p_plain",
       [](MoEConfig& c) {
         c.router.top_k = 3;
         c.router.top_p = 0.4;
       }},
      {"top_p_topk_then_softmax_min_k",
       [](MoEConfig& c) {
         c.router.order = TopkOrder::TopkThenSoftmax;
         c.router.top_k = 4;
         c.router.top_p = 0.6;
         c.router.min_k = 2;
       }},
      {"top_p_capacity",
       [](MoEConfig& c) {
         c.router.top_k = 3;
         c.router.top_p = 0.4;
         c.router.normalize = true;
         c.router.capacity_factor = 0.6;
       }},
      {"one_token", [](MoEConfig&) {}, 1},
      {"experts_128_top8",
       [](MoEConfig& c) {
         c.n_experts = 128;
         c.router.top_k = 8;
         c.router.normalize = true;
         c.balance.aux_coef = 0.1;
       }},
  };
}

struct LayerSetup {
  MoELayer layer;
  Tensor x, dy, ids;
  ForwardOptions opt;
};

LayerSetup make(const Case& cs, DType dt, kernels::Backend be, int64_t T_override = 0, uint64_t seed = 11) {
  MoEConfig c = small_config();
  cs.edit(c);
  const int64_t T = T_override ? T_override : cs.T;
  LayerSetup s{MoELayer(c, dt, be), {}, {}, {}, {}};
  s.layer.init_params(seed);
  if (c.router.use_bias) Rng(seed + 1).fill_normal(s.layer.params().router_bias, 0.0, 0.3);
  s.x = random_tensor({T, c.d_model}, dt, seed + 2);
  s.dy = random_tensor({T, c.d_model}, dt, seed + 3);
  s.ids = Tensor::empty({T}, DType::I32, "token_ids");
  for (int64_t t = 0; t < T; ++t) s.ids.set(t, static_cast<double>((t * 7919) % 50));
  s.opt.token_ids = &s.ids;
  s.opt.training = cs.training;
  s.opt.step = 3;
  s.opt.seed = 5;
  return s;
}

bool same_routing(const Routing& a, const Routing& b) {
  if (a.n_assign != b.n_assign) return false;
  for (int64_t i = 0; i < a.n_assign; ++i) {
    if (a.expert.data<int32_t>()[i] != b.expert.data<int32_t>()[i]) return false;
    if (a.token.data<int32_t>()[i] != b.token.data<int32_t>()[i]) return false;
    if (a.kept.data<uint8_t>()[i] != b.kept.data<uint8_t>()[i]) return false;
  }
  return true;
}

class LayerGrad : public ::testing::TestWithParam<Case> {};

// Central differences in double: error ≈ h²·|L'''|/6 + ε·|L|/h ≈ 1e-10 + 1e-11 for h = 1e-5 and
// O(1) values, so 1e-6 relative to the largest gradient entry leaves a wide margin while any
// wrong term (O(1) relative) fails. Entries whose ±h perturbation changes the routing are skipped
// (the objective is piecewise smooth).
TEST_P(LayerGrad, FiniteDifferencesF64) {
  const Case& cs = GetParam();
  LayerSetup s = make(cs, DType::F64, kernels::Backend::Ref);
  const MoEForward base = s.layer.forward(s.x, s.opt);
  MoEGrads g = s.layer.backward(base, s.dy);
  const double h = 1e-5;
  int checked = 0;

  auto check_tensor = [&](const std::string& name, Tensor& param, const Tensor& grad) {
    double scale = 1e-3;
    for (int64_t i = 0; i < grad.numel(); ++i) scale = std::max(scale, std::abs(grad.get(i)));
    const int64_t n = param.numel();
    const int64_t step = std::max<int64_t>(1, n / 16);
    for (int64_t i = 0; i < n; i += step) {
      const double orig = param.get(i);
      param.set(i, orig + h);
      const MoEForward fp = s.layer.forward(s.x, s.opt);
      param.set(i, orig - h);
      const MoEForward fm = s.layer.forward(s.x, s.opt);
      param.set(i, orig);
      if (!same_routing(fp.routing, base.routing) || !same_routing(fm.routing, base.routing)) continue;
      const double fd = (objective(fp, s.dy) - objective(fm, s.dy)) / (2 * h);
      EXPECT_NEAR(grad.get(i), fd, 1e-6 * scale) << cs.name << ": d" << name << "[" << i << "]";
      ++checked;
    }
  };
  check_tensor("x", s.x, g.dx);
  for (auto& [name, t] : param_list(s.layer.params())) check_tensor(name, *t, *grad_of(g, name));
  EXPECT_GT(checked, 20) << "too few entries checked";
}

// f32 CPU path against the f64 reference path on the same parameters and inputs. Each output is
// a chain of at most three dot products of length K <= 64 plus the router; a rounding error of
// about sqrt(K)·2^-24 per stage stays far below 1e-4 of the output's scale, while an indexing or
// formula error is O(1). Routing must match exactly (no near-ties with these seeds).
TEST_P(LayerGrad, F32CpuMatchesF64Ref) {
  const Case& cs = GetParam();
  const int64_t T = cs.T == 1 ? 1 : 39;  // odd, and a multiple of the seq_len used above
  LayerSetup ref = make(cs, DType::F64, kernels::Backend::Ref, T);
  LayerSetup cpu = make(cs, DType::F32, kernels::Backend::Cpu, T);
  // Same values: the f32 setup converts the f64 draws.
  cpu.x = ref.x.to(DType::F32);
  cpu.dy = ref.dy.to(DType::F32);
  auto rp = param_list(ref.layer.params());
  auto cp = param_list(cpu.layer.params());
  for (size_t i = 0; i < rp.size(); ++i) cp[i].second->copy_from(*rp[i].second);
  cpu.layer.params().router_bias.copy_from(ref.layer.params().router_bias);
  const MoEForward fr = ref.layer.forward(ref.x, ref.opt);
  const MoEForward fc = cpu.layer.forward(cpu.x, cpu.opt);
  ASSERT_TRUE(same_routing(fr.routing, fc.routing)) << cs.name;
  EXPECT_LT(rel_err(fc.y, fr.y), 1e-4) << cs.name << ": y";
  EXPECT_NEAR(fc.stats.total_loss(), fr.stats.total_loss(), 1e-5 * (1 + std::abs(fr.stats.total_loss())));
  MoEGrads gr = ref.layer.backward(fr, ref.dy);
  MoEGrads gc = cpu.layer.backward(fc, cpu.dy);
  EXPECT_LT(rel_err(gc.dx, gr.dx), 1e-4) << cs.name << ": dx";
  for (auto& [name, t] : rp) {
    (void)t;
    EXPECT_LT(rel_err(*grad_of(gc, name), *grad_of(gr, name)), 1e-4) << cs.name << ": d" << name;
  }
}

INSTANTIATE_TEST_SUITE_P(Configs, LayerGrad, ::testing::ValuesIn(cases()),
                         [](const ::testing::TestParamInfo<Case>& i) { return i.param.name; });

bool bit_equal(const Tensor& a, const Tensor& b) {
  return a.shape() == b.shape() && std::memcmp(a.raw(), b.raw(), a.nbytes()) == 0;
}

// Runs forward and backward of `c` on x, dy (T, d) with 1, 2 and 4 threads (each = 1 thread, or 2,
// or 4, after `at_threads` ran) and expects the output and every gradient bit-identical.
void expect_same_for_1_2_4_threads(const MoEConfig& c, uint64_t seed, int64_t T,
                                   const std::function<void(int)>& at_threads = nullptr) {
  const int saved = num_threads();
  MoELayer layer(c, DType::F32, kernels::Backend::Cpu);
  layer.init_params(seed);
  const Tensor x = random_tensor({T, c.d_model}, DType::F32, seed + 1);
  const Tensor dy = random_tensor({T, c.d_model}, DType::F32, seed + 2);
  std::vector<MoEForward> fw;
  std::vector<MoEGrads> gs;
  for (int nt : {1, 2, 4}) {
    set_num_threads(nt);
    if (at_threads) at_threads(nt);
    fw.push_back(layer.forward(x));
    gs.push_back(layer.backward(fw.back(), dy));
  }
  set_num_threads(saved);
  for (size_t i = 1; i < fw.size(); ++i) {
    EXPECT_TRUE(bit_equal(fw[i].y, fw[0].y)) << "y differs at thread setting " << i;
    EXPECT_TRUE(bit_equal(gs[i].dx, gs[0].dx));
    EXPECT_TRUE(bit_equal(gs[i].w_gate, gs[0].w_gate));
    EXPECT_TRUE(bit_equal(gs[i].w_up, gs[0].w_up));
    EXPECT_TRUE(bit_equal(gs[i].w_down, gs[0].w_down));
    EXPECT_TRUE(bit_equal(gs[i].router_w, gs[0].router_w));
    EXPECT_TRUE(bit_equal(gs[i].shared_w_up, gs[0].shared_w_up));
    EXPECT_TRUE(bit_equal(gs[i].shared_w_down, gs[0].shared_w_down));
  }
}

// The same inputs give bit-identical outputs and gradients for 1, 2 and 4 threads.
TEST(LayerDeterminism, BitIdenticalAcrossThreadCounts) {
  MoEConfig c = small_config(32, 48, 16, 4);
  c.n_shared_experts = 1;
  c.balance.aux_coef = 0.01;
  c.balance.z_coef = 0.001;
  expect_same_for_1_2_4_threads(c, 3, 203);
}

// Widths over 256 columns: the grouped GEMMs' tiles are as wide as the thread count allows
// (kernels::cpu::tile_width: one 768-column tile per expert with 1 thread, 256 with 4 here), which
// must change no result, the routing weights' gradient (summed per 256 columns) included.
TEST(LayerDeterminism, BitIdenticalAcrossTileWidths) {
  MoEConfig c = small_config(640, 576, 4, 2);
  c.n_shared_experts = 1;
  expect_same_for_1_2_4_threads(c, 7, 300, [](int nt) {
    // ~150 rows per expert: 4 row tiles.
    if (nt == 1) {
      EXPECT_EQ(kernels::cpu::tile_width(4, 640), 768);
    } else if (nt == 4) {
      EXPECT_EQ(kernels::cpu::tile_width(4, 640), kernels::cpu::kNC);
    }
  });
}

}  // namespace
}  // namespace moe::testing
