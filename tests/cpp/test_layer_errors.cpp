// Bad input gets a clear moe::Error that names what was wrong, and leaves the layer usable.
#include <gtest/gtest.h>

#include <cmath>

#include "layer_testutil.h"
#include "moe/moe/router.h"

namespace moe::testing {
namespace {

// Runs fn, expects moe::Error whose message contains every part of `needles`.
template <typename F>
void expect_error(F&& fn, std::initializer_list<const char*> needles) {
  try {
    fn();
    ADD_FAILURE() << "no moe::Error thrown";
  } catch (const Error& e) {
    const std::string msg = e.what();
    for (const char* n : needles)
      EXPECT_NE(msg.find(n), std::string::npos) << "message: " << msg << "\nmissing: " << n;
  }
}

TEST(LayerErrors, TopKGreaterThanExperts) {
  MoEConfig c = small_config(8, 8, 4, 5);
  expect_error([&] { MoELayer l(c); }, {"top_k", "n_experts = 4", "k = 5"});
}

TEST(LayerErrors, InvalidConfigFields) {
  MoEConfig c = small_config();
  c.router.n_groups = 3;
  expect_error([&] { c.validate(); }, {"n_groups = 3", "n_experts = 4"});
  c = small_config();
  c.router.order = TopkOrder::TopkThenSoftmax;
  c.router.score = ScoreFn::Sigmoid;
  expect_error([&] { c.validate(); }, {"topk_then_softmax"});
  c = small_config();
  c.router.capacity_factor = -1;
  expect_error([&] { c.validate(); }, {"capacity_factor"});
  c = small_config();
  c.shared_gate = true;
  expect_error([&] { c.validate(); }, {"shared_gate"});
}

TEST(LayerErrors, WrongInputShapeAndDtype) {
  MoELayer layer(small_config(8, 6, 4, 2));
  layer.init_params(1);
  expect_error([&] { layer.forward(random_tensor({5, 7}, DType::F32, 1)); }, {"'x'", "(-1, 8)", "(5, 7)"});
  expect_error([&] { layer.forward(random_tensor({5, 8}, DType::F64, 1)); }, {"'x'", "f32", "f64"});
  expect_error([&] { layer.forward(random_tensor({5}, DType::F32, 1)); }, {"'x'", "(5,)"});
  // The layer still works afterwards.
  EXPECT_NO_THROW(layer.forward(random_tensor({5, 8}, DType::F32, 1)));
}

TEST(LayerErrors, WrongGradientShape) {
  MoELayer layer(small_config(8, 6, 4, 2));
  layer.init_params(1);
  const MoEForward f = layer.forward(random_tensor({5, 8}, DType::F32, 1));
  expect_error(
      [&] {
        layer.backward(f, random_tensor({4, 8}, DType::F32, 2));
      },
      {"'dy'", "(5, 8)", "(4, 8)"});
}

TEST(LayerErrors, WrongParameterShape) {
  MoELayer layer(small_config(8, 6, 4, 2));
  layer.init_params(1);
  layer.params().w_down = Tensor::zeros({4, 6, 8}, DType::F32, "w_down");
  expect_error(
      [&] {
        layer.forward(random_tensor({5, 8}, DType::F32, 1));
      },
      {"w_down", "(4, 8, 6)", "(4, 6, 8)"});
}

TEST(LayerErrors, ZeroTokensGiveEmptyOutputs) {
  MoEConfig c = small_config(8, 6, 4, 2);
  c.n_shared_experts = 1;
  c.balance.aux_coef = 0.1;
  c.balance.z_coef = 0.1;
  MoELayer layer(c);
  layer.init_params(1);
  const MoEForward f = layer.forward(Tensor::zeros({0, 8}));
  EXPECT_EQ(f.y.shape(), (Shape{0, 8}));
  EXPECT_EQ(f.stats.total_loss(), 0.0);
  EXPECT_EQ(f.stats.imbalance, 0.0);
  const MoEGrads g = layer.backward(f, Tensor::zeros({0, 8}));
  EXPECT_EQ(g.dx.shape(), (Shape{0, 8}));
  for (int64_t i = 0; i < g.w_up.numel(); ++i) ASSERT_EQ(g.w_up.get(i), 0.0);
}

TEST(LayerErrors, NanInputIsReportedWhenChecked) {
  MoELayer layer(small_config(8, 6, 4, 2));
  layer.init_params(1);
  Tensor x = random_tensor({5, 8}, DType::F32, 1);
  x.set(13, NAN);
  ForwardOptions opt;
  opt.check_finite = true;
  expect_error([&] { layer.forward(x, opt); }, {"'x'", "non-finite", "index 13"});
  x.set(13, INFINITY);
  expect_error([&] { layer.forward(x, opt); }, {"'x'", "inf"});
}

TEST(LayerErrors, NanInputUncheckedPropagatesWithoutCrashing) {
  // Documented behaviour without checks: NaN logits never win top-k (they rank last), and the NaN
  // reaches y through the token's own expert inputs; nothing aborts.
  MoELayer layer(small_config(8, 6, 4, 2));
  layer.init_params(1);
  Tensor x = random_tensor({5, 8}, DType::F32, 1);
  x.set(8, NAN);  // token 1
  const MoEForward f = layer.forward(x);
  EXPECT_TRUE(std::isnan(f.y.get(8)));
  EXPECT_FALSE(std::isnan(f.y.get(0)));  // token 0 unaffected
}

TEST(LayerErrors, HashRoutingNeedsTokenIds) {
  MoEConfig c = small_config(8, 6, 4, 2);
  c.router.routing = RouterType::Hash;
  MoELayer layer(c);
  layer.init_params(1);
  const Tensor x = random_tensor({5, 8}, DType::F32, 1);
  expect_error([&] { layer.forward(x); }, {"token ids"});
  Tensor ids = Tensor::zeros({4}, DType::I32, "token_ids");
  ForwardOptions opt;
  opt.token_ids = &ids;
  expect_error([&] { layer.forward(x, opt); }, {"token_ids", "(5,)", "(4,)"});
  ids = Tensor::from({0, 1, -3, 2, 4}, {5}, DType::I32, "token_ids");
  expect_error([&] { layer.forward(x, opt); }, {"negative id -3"});
}

TEST(LayerErrors, SequenceLengthMustDivideTokens) {
  MoEConfig c = small_config(8, 6, 4, 2);
  c.balance.seq_aux_coef = 0.1;
  c.balance.seq_len = 4;
  MoELayer layer(c);
  layer.init_params(1);
  expect_error([&] { layer.forward(random_tensor({6, 8}, DType::F32, 1)); }, {"6", "seq_len 4"});
}

TEST(LayerErrors, ConfigJson) {
  expect_error([] { moe_config_from_json("{\"d_model\": 8, \"d_ff\": 8}"); }, {"missing 'n_experts'"});
  expect_error([] { moe_config_from_json("{\"d_model\": 8, \"d_ff\": 8, \"n_experts\": 4, \"bogus\": 1}"); },
               {"unknown key 'bogus'"});
  expect_error(
      [] {
        moe_config_from_json(
            "{\"d_model\": 8, \"d_ff\": 8, \"n_experts\": 4, \"router\": {\"score\": \"tanh\"}}");
      },
      {"score function 'tanh'", "softmax"});
  expect_error([] { moe_config_from_json("{\"d_model\": \"eight\", \"d_ff\": 8, \"n_experts\": 4}"); },
               {"d_model", "wrong type"});
  expect_error([] { moe_config_from_json("{not json"); }, {"invalid JSON"});
  expect_error([] { moe_config_from_json("{\"d_model\": 1e400}"); }, {"invalid JSON", "number overflow"});
  expect_error([] { moe_config_from_json("{\"d_model\": 1e30, \"d_ff\": 8, \"n_experts\": 4}"); },
               {"d_model", "expected an integer"});
  // Round trip.
  MoEConfig c = small_config(8, 6, 4, 2);
  c.router.routing = RouterType::Balanced;
  c.router.score = ScoreFn::Sigmoid;
  c.balance.z_coef = 0.5;
  c.n_shared_experts = 2;
  const MoEConfig back = moe_config_from_json(to_json(c));
  EXPECT_EQ(to_json(back), to_json(c));
}

}  // namespace
}  // namespace moe::testing
