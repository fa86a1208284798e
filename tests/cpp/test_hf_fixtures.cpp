// Checkpoints written by Hugging Face transformers (tests/fixtures/hf, made by make_fixtures.py):
// the engine loads them, its logits match transformers' within f32 rounding, and its greedy
// continuation (KV cache) is token for token the same. Fixtures: mixtral, qwen2_moe, olmoe (made by
// transformers 4.46.3), qwen3_moe and two deepseek_v3 models (transformers 5.23.0; README.md).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <iomanip>
#include <sstream>
#include <string>

#include "moe/infer/generate.h"
#include "moe/model/safetensors.h"
#include "moe/model/transformer.h"

using namespace moe;

class HfFixture : public ::testing::TestWithParam<std::string> {};

TEST_P(HfFixture, LogitsAndGreedyTokensMatchTransformers) {
  const std::string dir = std::string(MOE_TEST_FIXTURES) + "/hf/" + GetParam();
  const model::Transformer m = model::load_pretrained(dir);
  const auto exp = load_safetensors(dir + "/expected.safetensors");
  const Tensor ids64 = exp.at("input_ids"), ref = exp.at("logits"), greedy = exp.at("greedy_ids");
  std::vector<int32_t> ids;
  for (double v : ids64.to_vector()) ids.push_back(static_cast<int32_t>(v));
  const int64_t S = static_cast<int64_t>(ids.size());
  const std::vector<double> got = m.logits(ids.data(), 1, S).to_vector(), want = ref.to_vector();
  ASSERT_EQ(got.size(), want.size());
  double scale = 0, err = 0;
  for (size_t i = 0; i < want.size(); ++i) scale = std::max(scale, std::abs(want[i]));
  for (size_t i = 0; i < want.size(); ++i) err = std::max(err, std::abs(got[i] - want[i]));
  // Two f32 implementations of the same function: a few hundred roundings deep, ~1e-6 relative.
  EXPECT_LT(err, 2e-5 * scale) << "max |logit| " << scale;
  std::ostringstream rel;
  rel << std::scientific << std::setprecision(2) << err / scale;
  RecordProperty("relative_logit_error", rel.str());
  infer::GenerateOptions o;
  o.max_new_tokens = greedy.numel();
  o.sampling.temperature = 0;
  const infer::GenerateResult r = infer::generate(m, ids, o);
  std::vector<int32_t> want_tokens;
  for (double v : greedy.to_vector()) want_tokens.push_back(static_cast<int32_t>(v));
  EXPECT_EQ(r.tokens, want_tokens);
}

INSTANTIATE_TEST_SUITE_P(Transformers, HfFixture,
                         ::testing::Values("mixtral", "qwen2_moe", "olmoe", "qwen3_moe", "deepseek_v3",
                                           "deepseek_v3_qproj"),
                         [](const ::testing::TestParamInfo<std::string>& p) { return p.param; });
