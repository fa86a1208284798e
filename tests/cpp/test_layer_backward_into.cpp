// MoELayer::backward_into: gradients added into tensors the caller keeps (as a training loop keeps
// its parameters' gradients), and the one-backward-per-forward rule (backward writes the saved
// pre-activations' gradients over them).
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "layer_testutil.h"

namespace moe::testing {
namespace {

std::vector<std::pair<std::string, Tensor*>> grad_list(MoEGrads& g) {
  return {{"dx", &g.dx},
          {"router_w", &g.router_w},
          {"w_gate", &g.w_gate},
          {"w_up", &g.w_up},
          {"w_down", &g.w_down},
          {"shared_w_gate", &g.shared_w_gate},
          {"shared_w_up", &g.shared_w_up},
          {"shared_w_down", &g.shared_w_down},
          {"shared_gate_w", &g.shared_gate_w}};
}

MoEConfig full_config() {
  MoEConfig c = small_config(16, 12, 6, 2);
  c.n_shared_experts = 1;
  c.shared_gate = true;
  c.balance.z_coef = 1e-2;
  c.balance.aux_coef = 1e-2;
  return c;
}

// backward_into on zeros gives backward's gradients bit for bit; on values A it gives A + grad
// (to rounding: the GEMMs add their K blocks to A one by one); dx is overwritten either way.
TEST(LayerBackwardInto, AddsToGivenGradientsAndEqualsBackward) {
  for (DType dt : {DType::F32, DType::F64}) {
    MoELayer layer(full_config(), dt);
    layer.init_params(3);
    const Tensor x = random_tensor({37, 16}, dt, 4), dy = random_tensor({37, 16}, dt, 5);
    MoEGrads ref = layer.backward(layer.forward(x), dy);

    MoEGrads zero, acc;
    for (auto& [name, t] : grad_list(ref)) {
      if (!t->defined()) continue;
      for (auto& [n2, z] : grad_list(zero))
        if (n2 == name) *z = Tensor::zeros(t->shape(), dt);
      for (auto& [n2, a] : grad_list(acc))
        if (n2 == name) *a = random_tensor(t->shape(), dt, 77);  // dx too: it must be overwritten
    }
    MoEGrads before;  // copies of acc's starting values
    for (auto& [name, a] : grad_list(acc))
      for (auto& [n2, b] : grad_list(before))
        if (n2 == name && a->defined()) *b = a->clone();
    layer.backward_into(layer.forward(x), dy, zero);
    layer.backward_into(layer.forward(x), dy, acc);

    auto r = grad_list(ref), z = grad_list(zero), a = grad_list(acc), b = grad_list(before);
    for (size_t i = 0; i < r.size(); ++i) {
      if (!r[i].second->defined()) continue;
      SCOPED_TRACE(r[i].first + (dt == DType::F32 ? " f32" : " f64"));
      const int64_t n = r[i].second->numel();
      const bool is_dx = r[i].first == "dx";
      const double tol = dt == DType::F32 ? 1e-5 : 1e-13;
      for (int64_t j = 0; j < n; ++j) {
        const double g = r[i].second->get(j);
        ASSERT_EQ(z[i].second->get(j), g) << j;
        const double want = is_dx ? g : b[i].second->get(j) + g;
        ASSERT_NEAR(a[i].second->get(j), want, tol * (1 + std::fabs(want))) << j;
      }
    }
  }
}

TEST(LayerBackwardInto, SecondBackwardOfOneForwardIsAnError) {
  MoELayer layer(small_config(8, 6, 4, 2));
  layer.init_params(1);
  const Tensor x = random_tensor({5, 8}, DType::F32, 1), dy = random_tensor({5, 8}, DType::F32, 2);
  const MoEForward f = layer.forward(x);
  // A failed call (bad dy, bad gradient target) leaves the forward usable.
  EXPECT_THROW(layer.backward(f, random_tensor({4, 8}, DType::F32, 2)), Error);
  MoEGrads bad;
  bad.w_up = Tensor::zeros({4, 6, 7});
  try {
    layer.backward_into(f, dy, bad);
    ADD_FAILURE() << "no error for a wrong gradient shape";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("d w_up"), std::string::npos) << e.what();
  }
  EXPECT_NO_THROW(layer.backward(f, dy));
  try {
    layer.backward(f, dy);
    ADD_FAILURE() << "no error for a second backward";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("already run"), std::string::npos) << e.what();
  }
  EXPECT_NO_THROW(layer.backward(layer.forward(x), dy));  // a new forward is fine
  MoEGrads other;  // dx of another batch's shape is replaced, not an error
  other.dx = Tensor::zeros({9, 8});
  layer.backward_into(layer.forward(x), dy, other);
  EXPECT_EQ(other.dx.shape(), (Shape{5, 8}));
}

// No tokens: new gradients are zeros, given ones keep their values.
TEST(LayerBackwardInto, NoTokens) {
  MoELayer layer(full_config());
  layer.init_params(2);
  const Tensor x = Tensor::empty({0, 16}), dy = Tensor::empty({0, 16});
  MoEGrads fresh = layer.backward(layer.forward(x), dy);
  for (auto& [name, t] : grad_list(fresh)) {
    if (!t->defined()) continue;
    for (int64_t j = 0; j < t->numel(); ++j) ASSERT_EQ(t->get(j), 0.0) << name;
  }
  MoEGrads kept;
  kept.w_down = Tensor::full({6, 16, 12}, 2.5);
  layer.backward_into(layer.forward(x), dy, kept);
  for (int64_t j = 0; j < kept.w_down.numel(); ++j) ASSERT_EQ(kept.w_down.get(j), 2.5);
}

}  // namespace
}  // namespace moe::testing
