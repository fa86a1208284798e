// Knowledge distillation (docs/DISTILLATION.md): the KD term of forward_backward. A = 0 is exactly the
// plain cross-entropy path, the whole model's gradient with the KD term matches finite differences in
// f64 (an MoE and a dense student), and a teacher of another vocabulary is a clear error.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <string>
#include <vector>

#include "model_testutil.h"
#include "moe/core/error.h"
#include "moe/model/distill_loss.h"
#include "moe/model/transformer.h"
#include "moe/train/distill.h"
#include "temp_path.h"

using namespace moe;
using namespace moe::model;

namespace {

using moe::model::testing::random_tokens;
using moe::model::testing::tiny_config;

// A teacher of another shape than the students (a mixtral, tied head) with their vocabulary.
Tensor teacher_logits(const ModelConfig& student, const std::vector<int32_t>& tok, int64_t B, int64_t S,
                      DType dtype) {
  ModelConfig tc = tiny_config(Arch::Mixtral);
  tc.vocab_size = student.vocab_size;
  Transformer t(tc, dtype);
  t.init_params(99);
  return t.logits(tok.data(), B, S);  // (B·S, V)
}

// The loss as differentiated: ce_scale · Σ [(1−A)·CE + A·T²·KL] + aux_scale · Σ aux.
double total_loss(const Transformer& m, const std::vector<int32_t>& tok, const std::vector<int32_t>& tgt,
                  int64_t B, int64_t S, const StepOptions& o) {
  const StepResult r = m.evaluate(tok.data(), tgt.data(), B, S);  // CE and aux (no jitter)
  const Tensor z = m.logits(tok.data(), B, S);                    // (B·S, V)
  const nn::DistillArgs a{B * S, m.config().vocab_size, o.kd_weight, o.kd_temperature, 1.0};
  const nn::DistillResult d =
      nn::distill_cross_entropy<double>(a, z.data<double>(), o.teacher_logits, tgt.data(), nullptr);
  EXPECT_NEAR(d.ce_sum, r.loss_sum, 1e-9 * std::abs(r.loss_sum));
  return o.ce_scale * ((1 - o.kd_weight) * d.ce_sum + o.kd_weight * d.kd_sum) + o.aux_scale * r.aux_loss;
}

struct GradCase {
  const char* name;
  bool dense;  // a student with no MoE layer
  double A, T;
};

class DistillGrad : public ::testing::TestWithParam<GradCase> {};

}  // namespace

TEST(Distill, WeightZeroIsBitIdenticalToPlainCrossEntropy) {
  const ModelConfig cfg = tiny_config(Arch::Qwen3Moe);
  const int64_t B = 3, S = 6;
  const std::vector<int32_t> tok = random_tokens(B * S, cfg.vocab_size, 1);
  std::vector<int32_t> tgt = random_tokens(B * S, cfg.vocab_size, 2);
  tgt[4] = -1;
  const Tensor t = teacher_logits(cfg, tok, B, S, DType::F32);
  Transformer plain(cfg, DType::F32), kd(cfg, DType::F32);
  plain.init_params(5), kd.init_params(5);
  StepOptions o;
  o.ce_scale = 1.0 / 17;
  plain.zero_grads();
  const StepResult rp = plain.forward_backward(tok.data(), tgt.data(), B, S, o);
  o.teacher_logits = &t, o.kd_weight = 0, o.kd_temperature = 2;
  kd.zero_grads();
  const StepResult rk = kd.forward_backward(tok.data(), tgt.data(), B, S, o);
  EXPECT_EQ(rp.loss_sum, rk.loss_sum);
  EXPECT_EQ(rp.count, rk.count);
  EXPECT_EQ(rp.aux_loss, rk.aux_loss);
  EXPECT_GT(rk.kd_loss_sum, 0);  // measured even when it does not count
  EXPECT_EQ(rp.kd_loss_sum, 0);
  for (size_t i = 0; i < plain.parameters().size(); ++i)
    EXPECT_EQ(plain.parameters()[i].grad.to_vector(), kd.parameters()[i].grad.to_vector())
        << plain.parameters()[i].name;
}

TEST(Distill, KdLossIsZeroForTheTeacherItselfAndGrowsAway) {
  const int64_t n = 4, V = 7;
  std::vector<double> z(n * V);
  for (size_t i = 0; i < z.size(); ++i) z[i] = std::sin(0.7 * static_cast<double>(i));
  const Tensor same = Tensor::from(z, {n, V}, DType::F64);
  const std::vector<int32_t> tgt = {1, -1, 6, 0};
  const nn::DistillArgs a{n, V, 0.5, 2.0, 1.0};
  std::vector<double> g(n * V);
  const nn::DistillResult r = nn::distill_cross_entropy<double>(a, z.data(), &same, tgt.data(), g.data());
  EXPECT_EQ(r.count, 3);
  EXPECT_NEAR(r.kd_sum, 0.0, 1e-12);
  for (int64_t j = 0; j < V; ++j) EXPECT_EQ(g[V + j], 0.0);  // the ignored row
  std::vector<double> t = z;
  t[2] += 1.0;
  const Tensor other = Tensor::from(t, {n, V}, DType::F64);
  EXPECT_GT(nn::distill_cross_entropy<double>(a, z.data(), &other, tgt.data(), nullptr).kd_sum, 1e-3);
}

TEST_P(DistillGrad, FiniteDifferencesMatchBackward) {
  const GradCase gc = GetParam();
  ModelConfig cfg = tiny_config(Arch::Qwen3Moe);
  if (gc.dense) cfg.mlp_only_layers = {0, 1};
  Transformer m(cfg, DType::F64);
  m.init_params(7);
  const int64_t B = 2, S = 5;
  const std::vector<int32_t> tok = random_tokens(B * S, cfg.vocab_size, 1);
  std::vector<int32_t> tgt = random_tokens(B * S, cfg.vocab_size, 2);
  tgt[3] = -1;  // an ignored target
  const Tensor t = teacher_logits(cfg, tok, B, S, DType::F64);
  StepOptions o;
  o.ce_scale = 1.0 / 9.0;
  o.aux_scale = 0.5;
  o.training = false;
  o.teacher_logits = &t, o.kd_weight = gc.A, o.kd_temperature = gc.T;
  m.zero_grads();
  const StepResult r = m.forward_backward(tok.data(), tgt.data(), B, S, o);
  EXPECT_EQ(r.stats.empty(), gc.dense);
  EXPECT_GT(r.kd_loss_sum, 0);
  const double eps = 1e-6;
  int checked = 0;
  for (NamedParam& p : m.parameters()) {
    const int64_t n = p.value.numel();
    for (int64_t j = 0; j < std::min<int64_t>(n, 6); ++j) {
      const int64_t i = (j * 7919 + 13) % n;
      const double v = p.value.get(i);
      p.value.set(i, v + eps);
      const double lp = total_loss(m, tok, tgt, B, S, o);
      p.value.set(i, v - eps);
      const double lm = total_loss(m, tok, tgt, B, S, o);
      p.value.set(i, v);
      const double fd = (lp - lm) / (2 * eps), an = p.grad.get(i);
      EXPECT_NEAR(an, fd, 1e-6 + 1e-5 * std::abs(fd)) << p.name << "[" << i << "]";
      ++checked;
    }
  }
  EXPECT_GT(checked, 40);
}

INSTANTIATE_TEST_SUITE_P(Distill, DistillGrad,
                         ::testing::Values(GradCase{"moe_half", false, 0.5, 2.0},
                                           GradCase{"moe_kd_only", false, 1.0, 0.7},
                                           GradCase{"dense", true, 0.3, 3.0}),
                         [](const ::testing::TestParamInfo<GradCase>& p) {
                           return std::string(p.param.name);
                         });

TEST(Distill, VocabMismatchIsAClearError) {
  const std::string dir = moe::testutil::unique_temp_path("teacher");
  ModelConfig tc = tiny_config(Arch::Mixtral);
  Transformer teacher(tc, DType::F32);
  teacher.init_params(3);
  save_pretrained(teacher, dir);
  train::TrainOptions o;
  o.teacher = dir;
  o.seq_len = 8;
  ModelConfig student = tiny_config(Arch::Qwen3Moe);
  student.vocab_size = 13;
  try {
    train::distill::load_teacher(o, student);
    FAIL() << "no error";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("vocab_size is 11"), std::string::npos) << msg;
    EXPECT_NE(msg.find("student's is 13"), std::string::npos) << msg;
  }
  student.vocab_size = 11;
  EXPECT_NE(train::distill::load_teacher(o, student), nullptr);
  std::filesystem::remove_all(dir);
}

TEST(Distill, BadArgumentsAreClearErrors) {
  const int64_t n = 2, V = 5;
  std::vector<float> z(n * V, 0.f);
  const std::vector<int32_t> tgt = {0, 1};
  const Tensor t = Tensor::zeros({n, V}, DType::F32), wrong = Tensor::zeros({n, V + 1}, DType::F32);
  auto call = [&](double A, double T, const Tensor* teacher) {
    return nn::distill_cross_entropy<float>({n, V, A, T, 1.0}, z.data(), teacher, tgt.data(), nullptr);
  };
  EXPECT_THROW(call(1.5, 2, &t), Error);
  EXPECT_THROW(call(-0.1, 2, &t), Error);
  EXPECT_THROW(call(0.5, 0, &t), Error);
  EXPECT_THROW(call(0.5, 2, nullptr), Error);  // a KD weight without a teacher
  try {
    call(0.5, 2, &wrong);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("(2, 6)"), std::string::npos) << e.what();
  }
  EXPECT_NO_THROW(call(0.0, 2, nullptr));  // plain cross-entropy
  train::TrainOptions o;
  o.kd_weight = 2;
  EXPECT_THROW(train::distill::validate_options(o), Error);
  o.kd_weight = 0.5, o.temperature = -1;
  EXPECT_THROW(train::distill::validate_options(o), Error);
}
