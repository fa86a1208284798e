// The whole model through its backend: the same weights and batch on Backend::Ref (reference kernels,
// double accumulation) and Backend::Cpu (the fast kernels, f32 accumulation) give the same logits,
// loss, parameter gradients and generated tokens, within a bound from f32 accumulation.
//
// Tolerance. Both runs store every activation in f32 and run the same host loops (norms, rotary
// embedding, softmax); they differ only in the ops' arithmetic. A Ref product rounds once (relative
// error u = 2^-24); a Cpu product of reduction length K may be off by up to about K·u times the sum of
// its terms' magnitudes. The errors of the products on one path add up: a forward and backward of the
// tiny two-layer models runs at most about 32 dependent products (per layer: q/k/v, scores, P·V, o,
// router, up, down, and their transposes; then the head), each well conditioned at this size. So a
// tensor may differ by 32·K·u times its largest magnitude, K the longest reduction in the model.
#include <gtest/gtest.h>

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <string>
#include <vector>

#include "model_testutil.h"
#include "moe/core/error.h"
#include "moe/infer/expert_store.h"
#include "moe/infer/generate.h"
#include "moe/model/nn.h"
#include "moe/model/transformer.h"
#include "train_testutil.h"

namespace moe::model {
namespace {

using kernels::Backend;
using testing::random_tokens;
using testing::tiny_config;

constexpr double kDependentProducts = 32;
constexpr int64_t kB = 2, kS = 6;  // the batch

// The longest reduction of any product in a forward and backward of c over N tokens.
int64_t longest_reduction(const ModelConfig& c, int64_t N) {
  const int64_t heads = c.num_attention_heads * std::max<int64_t>(c.qk_head_dim(), c.v_head_dim_or_default());
  return std::max({c.hidden_size, c.intermediate_size, c.moe_intermediate_size, c.vocab_size, heads, N,
                   c.shared_expert_intermediate_size, c.num_experts});
}

double max_abs(const std::vector<double>& v) {
  double m = 0;
  for (double x : v) m = std::max(m, std::fabs(x));
  return m;
}

// Every element of got within tol of want (NaN fails); names the first that is not.
void expect_close(const std::vector<double>& want, const std::vector<double>& got, double tol,
                  const std::string& what) {
  ASSERT_EQ(want.size(), got.size()) << what;
  for (size_t i = 0; i < want.size(); ++i) {
    const double err = std::fabs(want[i] - got[i]);
    ASSERT_TRUE(err <= tol) << what << "[" << i << "]: ref " << want[i] << ", cpu " << got[i] << ", error "
                            << err << " > " << tol;
  }
}

double tolerance(const ModelConfig& c, double scale) {
  const double u = FLT_EPSILON / 2;
  return kDependentProducts * static_cast<double>(longest_reduction(c, kB * kS)) * u * std::max(scale, 1e-30);
}

struct BackendRun {
  std::vector<double> logits;  // (B·S, V)
  StepResult step;
  std::vector<std::vector<double>> grads;  // per parameter
  std::vector<double> decoded;             // logits of the prompt's last token, then of each greedy step
  std::vector<int32_t> generated;          // infer::generate, greedy
};

BackendRun run_on(Backend b, const ModelConfig& cfg, const std::vector<int32_t>& tok,
                  const std::vector<int32_t>& tgt) {
  Transformer m(cfg, DType::F32);
  m.init_params(11);
  m.set_backend(b);
  EXPECT_EQ(m.backend(), b);
  for (int64_t l = 0; l < cfg.num_hidden_layers; ++l) {
    if (const MoELayer* moe = m.moe_layer(l)) {
      EXPECT_EQ(moe->backend(), b) << "MoE layer " << l;
    }
  }
  BackendRun r;
  r.logits = m.logits(tok.data(), kB, kS).to_vector();
  StepOptions opt;
  opt.seed = 5;
  m.zero_grads();
  r.step = m.forward_backward(tok.data(), tgt.data(), kB, kS, opt);
  for (const NamedParam& p : m.parameters()) r.grads.push_back(p.grad.to_vector());
  // Inference: a prompt, then greedy steps with the KV cache.
  KVCache cache = m.new_cache(16);
  Tensor last = m.decode(cache, tok.data(), 4);
  for (int step = 0; step < 4; ++step) {
    const std::vector<double> l = last.to_vector();
    r.decoded.insert(r.decoded.end(), l.begin(), l.end());
    const int32_t next = static_cast<int32_t>(std::max_element(l.begin(), l.end()) - l.begin());
    last = m.decode(cache, &next, 1);
  }
  infer::GenerateOptions go;
  go.max_new_tokens = 5;
  go.sampling.temperature = 0;
  r.generated = infer::generate(m, std::vector<int32_t>(tok.begin(), tok.begin() + 3), go).tokens;
  return r;
}

class ModelBackend : public ::testing::TestWithParam<Arch> {};

TEST_P(ModelBackend, RefAndCpuAgreeOnLogitsLossGradientsAndGeneration) {
  const ModelConfig cfg = tiny_config(GetParam());
  const std::vector<int32_t> tok = random_tokens(kB * kS, cfg.vocab_size, 1);
  std::vector<int32_t> tgt = random_tokens(kB * kS, cfg.vocab_size, 2);
  tgt[3] = -1;  // an ignored target
  const BackendRun ref = run_on(Backend::Ref, cfg, tok, tgt);
  const BackendRun cpu = run_on(Backend::Cpu, cfg, tok, tgt);

  expect_close(ref.logits, cpu.logits, tolerance(cfg, max_abs(ref.logits)), "logits");
  EXPECT_EQ(ref.step.count, cpu.step.count);
  EXPECT_NEAR(ref.step.loss_sum, cpu.step.loss_sum, tolerance(cfg, std::fabs(ref.step.loss_sum)));
  EXPECT_NEAR(ref.step.aux_loss, cpu.step.aux_loss, tolerance(cfg, std::fabs(ref.step.aux_loss)));
  Transformer names(cfg, DType::F32);
  ASSERT_EQ(ref.grads.size(), names.parameters().size());
  for (size_t i = 0; i < ref.grads.size(); ++i)
    expect_close(ref.grads[i], cpu.grads[i], tolerance(cfg, max_abs(ref.grads[i])),
                 "gradient of " + names.parameters()[i].name);
  expect_close(ref.decoded, cpu.decoded, tolerance(cfg, max_abs(ref.decoded)), "decoded logits");
  EXPECT_EQ(ref.generated, cpu.generated);
  EXPECT_EQ(ref.generated.size(), 5u);
}

INSTANTIATE_TEST_SUITE_P(Arch, ModelBackend,
                         ::testing::Values(Arch::Mixtral, Arch::Qwen2Moe, Arch::Qwen3Moe, Arch::Olmoe,
                                           Arch::DeepseekV3),
                         [](const ::testing::TestParamInfo<Arch>& p) {
                           return std::string(arch_name(p.param));
                         });

TEST(ModelBackend, DefaultIsCpuAndCudaIsRefused) {
  Transformer m(tiny_config(Arch::Qwen2Moe), DType::F32);
  EXPECT_EQ(m.backend(), Backend::Cpu);
  try {
    m.set_backend(Backend::Cuda);
    FAIL() << "expected moe::Error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("backend cuda is not supported"), std::string::npos) << e.what();
  }
  EXPECT_EQ(m.backend(), Backend::Cpu);  // unchanged
  // The attention's products read host buffers: a device backend is refused by name.
  const nn::AttentionArgs a{1, 2, 2, 2, 1, 4, 0.0};
  std::vector<float> q(16, 0.5f), kv(8, 0.25f), out(16), lse(4);
  EXPECT_THROW(
      nn::attention_forward<float>(Backend::Cuda, a, q.data(), kv.data(), kv.data(), out.data(), lse.data()),
      Error);
  nn::attention_forward<float>(Backend::Ref, a, q.data(), kv.data(), kv.data(), out.data(), lse.data());
  EXPECT_FLOAT_EQ(out[0], 0.25f);  // equal keys: the mean of equal values
}

// The expert store's executor runs the experts on the backend of the layer it serves.
class StoreBackend : public train::testing::TempDirTest {};

TEST_F(StoreBackend, OffloadedExpertsOnRefAndCpuAgree) {
  const ModelConfig cfg = testing::offload_config();
  {
    Transformer m(cfg);
    m.init_params(7);
    save_pretrained(m, file("model"));
  }
  auto decode = [&](Backend b, const std::string& format) {
    infer::InferenceLoadOptions lo;
    lo.offload = true;
    lo.store.format = format;
    lo.store.resident_experts = 4;  // misses and loads too
    infer::InferenceModel im = infer::load_inference_model(file("model"), lo);
    im.model->set_backend(b);
    KVCache cache = im.model->new_cache(16);
    const std::vector<int32_t> prompt = random_tokens(5, cfg.vocab_size, 3);
    std::vector<double> out = im.model->decode(cache, prompt.data(), 5).to_vector();
    const int32_t next = 1;
    const std::vector<double> step = im.model->decode(cache, &next, 1).to_vector();
    out.insert(out.end(), step.begin(), step.end());
    return out;
  };
  // f32 experts: 4 layers, twice the dependent products of the two-layer bound above.
  const std::vector<double> ref = decode(Backend::Ref, "f32"), cpu = decode(Backend::Cpu, "f32");
  expect_close(ref, cpu, 2 * tolerance(cfg, max_abs(ref)), "offloaded f32 logits");
  // bf16 experts: both round the expert inputs to bf16, and an input that differs in its last f32
  // bits may round to the neighbouring bf16 value (2^-8 relative); the bf16 bound of CONTRIBUTING.md.
  const std::vector<double> ref16 = decode(Backend::Ref, "bf16"), cpu16 = decode(Backend::Cpu, "bf16");
  expect_close(ref16, cpu16, 1e-2 * std::max(1.0, max_abs(ref16)), "offloaded bf16 logits");
}

}  // namespace
}  // namespace moe::model
