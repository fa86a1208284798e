// `moe eval --compare` math: KL(base || model), cross-entropies and top-1 agreement against values
// computed by hand, a model against itself (KL 0, agreement 1) and against a perturbed copy.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "model_testutil.h"
#include "moe/core/error.h"
#include "moe/infer/compare.h"
#include "moe/model/transformer.h"

using namespace moe;
using namespace moe::model;

namespace {

TEST(Compare, AccumulatorMatchesHandComputedValues) {
  // Two rows over V = 3. Row 0: base (0, ln 2, 0) -> p = (1/4, 1/2, 1/4); model uniform q = 1/3.
  // Row 1: base uniform, model (ln 2, 0, 0) -> q = (1/2, 1/4, 1/4).
  const double l2 = std::log(2.0);
  const std::vector<double> base = {0, l2, 0, 5, 5, 5}, model = {1, 1, 1, l2, 0, 0};
  const std::vector<int32_t> tgt = {1, 2};
  infer::CompareAccumulator acc(3);
  acc.add(base.data(), model.data(), tgt.data(), 2);
  const infer::CompareResult r = acc.result();
  const double kl0 = 0.25 * std::log(0.25 * 3) * 2 + 0.5 * std::log(0.5 * 3);
  const double kl1 = (std::log((1.0 / 3) / 0.5) + 2 * std::log((1.0 / 3) / 0.25)) / 3;
  EXPECT_EQ(r.tokens, 2);
  EXPECT_NEAR(r.kl_mean, 0.5 * (kl0 + kl1), 1e-15);
  EXPECT_NEAR(r.kl_max, std::max(kl0, kl1), 1e-15);
  EXPECT_NEAR(r.base_loss, 0.5 * (-std::log(0.5) - std::log(1.0 / 3)), 1e-15);
  EXPECT_NEAR(r.loss, 0.5 * (-std::log(1.0 / 3) - std::log(0.25)), 1e-15);
  // argmax: row 0 base 1, model 0 (tie -> lowest index); row 1 base 0, model 0.
  EXPECT_DOUBLE_EQ(r.top1_agreement, 0.5);
}

TEST(Compare, IgnoredTargetsAndErrors) {
  infer::CompareAccumulator acc(2);
  EXPECT_THROW(acc.result(), Error);  // nothing added
  const std::vector<double> a = {0, 1}, nan = {0, std::numeric_limits<double>::quiet_NaN()};
  const std::vector<int32_t> ignored = {-1}, bad = {2};
  EXPECT_THROW(acc.add(a.data(), nan.data(), ignored.data(), 1), Error);
  EXPECT_THROW(acc.add(a.data(), a.data(), bad.data(), 1), Error);
  infer::CompareAccumulator ok(2);
  ok.add(a.data(), a.data(), ignored.data(), 1);
  const infer::CompareResult r = ok.result();
  EXPECT_EQ(r.tokens, 1);
  EXPECT_EQ(r.loss, 0.0);  // no counted target
  EXPECT_EQ(r.kl_mean, 0.0);
}

TEST(Compare, ModelAgainstItselfAndAPerturbedCopy) {
  const ModelConfig c = moe::model::testing::tiny_config(Arch::Qwen3Moe);
  Transformer m(c);
  m.init_params(61);
  const std::vector<int32_t> tok = moe::model::testing::random_tokens(40, c.vocab_size, 62);
  const infer::CompareResult same = infer::compare_models(m, m, tok, 8, 2);
  EXPECT_EQ(same.tokens, 39);
  EXPECT_EQ(same.kl_mean, 0.0);  // identical logits: every term is p · 0
  EXPECT_EQ(same.kl_max, 0.0);
  EXPECT_EQ(same.top1_agreement, 1.0);
  EXPECT_EQ(same.loss, same.base_loss);
  // The cross-entropy is the one Transformer::evaluate computes on the same windows.
  double loss = 0;
  int64_t count = 0;
  for (int64_t pos = 0; pos + 1 < 40; pos += 8) {
    const int64_t len = std::min<int64_t>(8, 39 - pos);
    const StepResult r = m.evaluate(tok.data() + pos, tok.data() + pos + 1, 1, len);
    loss += r.loss_sum, count += r.count;
  }
  EXPECT_EQ(count, 39);
  EXPECT_NEAR(same.loss, loss / count, 1e-5 * loss / count);  // f32 logits vs f32 cross-entropy

  Transformer p(c);
  p.load_hf_state_dict(m.hf_state_dict());
  Tensor& w = p.param("model.layers.1.mlp.gate.weight").value;  // the MoE layer's router
  for (int64_t i = 0; i < w.numel(); ++i) w.data<float>()[i] *= 1.5f;
  const infer::CompareResult diff = infer::compare_models(m, p, tok, 8, 2);
  EXPECT_EQ(diff.tokens, 39);
  EXPECT_GT(diff.kl_mean, 0.0);
  EXPECT_GE(diff.kl_max, diff.kl_mean);
  EXPECT_EQ(diff.base_loss, same.base_loss);
  EXPECT_NE(diff.loss, diff.base_loss);

  Transformer other_vocab = [&] {
    ModelConfig o = c;
    o.vocab_size = c.vocab_size + 1;
    Transformer t(o);
    t.init_params(1);
    return t;
  }();
  EXPECT_THROW(infer::compare_models(m, other_vocab, tok, 8, 1), Error);
  EXPECT_THROW(infer::compare_models(m, m, {1}, 8, 1), Error);
  EXPECT_THROW(infer::compare_models(m, m, {1, static_cast<int32_t>(c.vocab_size)}, 8, 1), Error);
}

}  // namespace
