// model_oracle_run: one forward + backward of a whole moe::model::Transformer loaded from a Hugging Face
// model directory, on a batch from a safetensors file; writes the loss and every parameter gradient under
// its Hugging Face name for the PyTorch oracle (tests/oracle/test_model_oracle.py, README.md).
//
//   model_oracle_run --model DIR --inputs BATCH.safetensors --out OUT.safetensors
//                    [--dtype f64|f32] [--threads N] [--ce-scale X] [--aux-scale X] [--logits] [--save DIR2]
//
// DIR: config.json + model.safetensors (or a sharded index), read with moe::model::load_pretrained.
// BATCH: "tokens" and "targets", i32 (B, S); a target < 0 is ignored.
// OUT: "loss_sum", "aux_loss" (f64 scalars), "count" (i64 scalar); per MoE layer l
// "moe.<l>.routed_per_expert" (i64 (E)) and "moe.<l>.loss" (f64, the layer's aux + seq_aux + z); and the
// gradient of  ce_scale · Σ CE + aux_scale · Σ aux  for every parameter, in the model's dtype, under the
// names of model.safetensors: the stacked expert gradients (E, F, d) / (E, d, F) are split into one tensor
// per expert (block_sparse_moe.experts.E.w1/w3/w2 for mixtral, mlp.experts.E.gate_proj/up_proj/down_proj
// otherwise). --logits adds "logits" (B·S, V) from Transformer::logits (a separate forward). --save writes
// the loaded model back with moe::model::save_pretrained (a checkpoint written by the engine).
// The forward runs with training off (no router jitter). Exit codes: 0 success, 1 bad command line,
// 2 moe::Error (one line on stderr).
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <map>
#include <string>

#include "moe/core/error.h"
#include "moe/core/parallel.h"
#include "moe/core/tensor.h"
#include "moe/model/safetensors.h"
#include "moe/model/transformer.h"

#include "oracle_tool.h"

namespace {

using oracle_tool::f64_scalar;
using oracle_tool::i64_scalar;
using oracle_tool::i64_vector;

struct Args {
  std::string model, inputs, out, save;
  moe::DType dtype = moe::DType::F64;
  int threads = 0;  // 0: leave the library default
  double ce_scale = 1.0, aux_scale = 1.0;
  bool logits = false;
};

const char* kUsage =
    "usage: model_oracle_run --model DIR --inputs BATCH.safetensors --out OUT.safetensors "
    "[--dtype f64|f32] [--threads N] [--ce-scale X] [--aux-scale X] [--logits] [--save DIR]\n";

bool parse_double(const std::string& flag, const std::string& v, double& out) {
  char* end = nullptr;
  out = std::strtod(v.c_str(), &end);
  if (v.empty() || *end != '\0') {
    std::fprintf(stderr, "model_oracle_run: %s needs a number, got '%s'\n", flag.c_str(), v.c_str());
    return false;
  }
  return true;
}

bool parse_args(int argc, char** argv, Args& a) {
  for (int i = 1; i < argc; ++i) {
    const std::string k = argv[i];
    if (k == "-h" || k == "--help") return false;
    if (k == "--logits") {
      a.logits = true;
      continue;
    }
    if (i + 1 >= argc) {
      std::fprintf(stderr, "model_oracle_run: option %s needs a value\n", k.c_str());
      return false;
    }
    const std::string v = argv[++i];
    if (k == "--model") {
      a.model = v;
    } else if (k == "--inputs") {
      a.inputs = v;
    } else if (k == "--out") {
      a.out = v;
    } else if (k == "--save") {
      a.save = v;
    } else if (k == "--dtype") {
      a.dtype = moe::dtype_from_name(v);
      MOE_CHECK(a.dtype == moe::DType::F32 || a.dtype == moe::DType::F64, "--dtype must be f32 or f64, got '",
                v, "'");
    } else if (k == "--threads") {
      char* end = nullptr;
      a.threads = static_cast<int>(std::strtol(v.c_str(), &end, 10));
      if (*end != '\0' || a.threads < 1) {
        std::fprintf(stderr, "model_oracle_run: --threads needs a positive integer, got '%s'\n", v.c_str());
        return false;
      }
    } else if (k == "--ce-scale") {
      if (!parse_double(k, v, a.ce_scale)) return false;
    } else if (k == "--aux-scale") {
      if (!parse_double(k, v, a.aux_scale)) return false;
    } else {
      std::fprintf(stderr, "model_oracle_run: unknown option %s\n", k.c_str());
      return false;
    }
  }
  if (a.model.empty() || a.inputs.empty() || a.out.empty()) {
    std::fprintf(stderr, "model_oracle_run: --model, --inputs and --out are required\n");
    return false;
  }
  return true;
}

// Tensor `name` of the batch file: i32, two dimensions.
moe::Tensor batch_tensor(const std::map<std::string, moe::Tensor>& in, const std::string& name,
                         const std::string& file) {
  auto it = in.find(name);
  MOE_CHECK(it != in.end(), "inputs file '", file, "': no tensor '", name, "'");
  const moe::Tensor& t = it->second;
  MOE_CHECK(t.dtype() == moe::DType::I32, "inputs file '", file, "': tensor '", name, "' must be i32, got ",
            moe::dtype_name(t.dtype()));
  MOE_CHECK(t.dim() == 2, "inputs file '", file, "': tensor '", name, "' must be (B, S), got shape ",
            moe::shape_str(t.shape()));
  return t.contiguous();
}

// Gradients by Hugging Face name: stacked expert gradients "<prefix>.experts.w_gate|w_up|w_down"
// become one tensor per expert, named as in model.safetensors.
void add_gradients(const moe::model::Transformer& m, std::map<std::string, moe::Tensor>& out) {
  const bool mixtral = m.config().arch == moe::model::Arch::Mixtral;
  const std::pair<const char*, const char*> kExpert[] = {{".experts.w_gate", mixtral ? "w1" : "gate_proj"},
                                                         {".experts.w_up", mixtral ? "w3" : "up_proj"},
                                                         {".experts.w_down", mixtral ? "w2" : "down_proj"}};
  for (const moe::model::NamedParam& p : m.parameters()) {
    bool split = false;
    for (const auto& [suffix, hf] : kExpert) {
      const std::string suf = suffix;
      if (p.name.size() < suf.size() || p.name.compare(p.name.size() - suf.size(), suf.size(), suf) != 0)
        continue;
      const std::string prefix = p.name.substr(0, p.name.size() - suf.size());
      const moe::Tensor& g = p.grad;  // (E, F, d) or (E, d, F)
      for (int64_t e = 0; e < g.size(0); ++e)
        out[moe::cat(prefix, ".experts.", e, ".", hf, ".weight")] =
            g.slice(0, e, e + 1).reshape({g.size(1), g.size(2)});
      split = true;
    }
    if (!split) out[p.name] = p.grad;
  }
}

int run(const Args& a) {
  if (a.threads > 0) moe::set_num_threads(a.threads);
  moe::model::Transformer m = moe::model::load_pretrained(a.model, a.dtype);
  if (!a.save.empty()) moe::model::save_pretrained(m, a.save);

  const auto in = moe::load_safetensors(a.inputs);
  const moe::Tensor tokens = batch_tensor(in, "tokens", a.inputs),
                    targets = batch_tensor(in, "targets", a.inputs);
  MOE_CHECK(targets.shape() == tokens.shape(), "inputs file '", a.inputs, "': 'targets' has shape ",
            moe::shape_str(targets.shape()), ", expected the shape of 'tokens' ",
            moe::shape_str(tokens.shape()));
  const int64_t B = tokens.size(0), S = tokens.size(1);

  moe::model::StepOptions opt;
  opt.ce_scale = a.ce_scale;
  opt.aux_scale = a.aux_scale;
  opt.training = false;
  m.zero_grads();
  const moe::model::StepResult r =
      m.forward_backward(tokens.data<int32_t>(), targets.data<int32_t>(), B, S, opt);

  std::map<std::string, moe::Tensor> out = {{"loss_sum", f64_scalar(r.loss_sum)},
                                            {"count", i64_scalar(r.count)},
                                            {"aux_loss", f64_scalar(r.aux_loss)}};
  for (size_t i = 0; i < r.moe_layers.size(); ++i) {
    const std::vector<int64_t>& routed = r.stats[i].routed_per_expert;
    moe::Tensor t = moe::Tensor::empty({static_cast<int64_t>(routed.size())}, moe::DType::I64);
    for (size_t e = 0; e < routed.size(); ++e) t.data<int64_t>()[e] = routed[e];
    out[moe::cat("moe.", r.moe_layers[i], ".routed_per_expert")] = t;
    out[moe::cat("moe.", r.moe_layers[i], ".loss")] = f64_scalar(r.stats[i].total_loss());
  }
  add_gradients(m, out);
  if (a.logits) out["logits"] = m.logits(tokens.data<int32_t>(), B, S);
  moe::save_safetensors(a.out, out, {{"dtype", moe::dtype_name(a.dtype)}});
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  return oracle_tool::tool_main<Args>("model_oracle_run", kUsage, argc, argv, parse_args, run);
}
