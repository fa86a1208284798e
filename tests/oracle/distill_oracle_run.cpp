// distill_oracle_run: the distillation loss of moe/model/distill_loss.h on inputs from a safetensors
// file, with the plain cross-entropy of the same logits beside it, for the PyTorch oracle
// (tests/oracle/test_distill_oracle.py).
//
//   distill_oracle_run --inputs IN.safetensors --out OUT.safetensors --kd-weight A --temperature T
//                      [--grad-scale G] [--dtype f64|f32] [--threads N]
//
// Inputs: logits (n, V), teacher (n, V), targets (n) i32.
// Outputs: ce_sum, kd_sum (f64), count (i64), dlogits (n, V) of the distillation loss; and
// plain_loss_sum, plain_dlogits of nn::cross_entropy with the same grad scale (so A = 0 can be checked
// for bit-identity with the path without a teacher).
// Exit codes: 0 success, 1 bad command line, 2 moe::Error (one line on stderr).
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <string>

#include "moe/core/error.h"
#include "moe/core/parallel.h"
#include "moe/core/tensor.h"
#include "moe/model/distill_loss.h"
#include "moe/model/nn.h"
#include "moe/model/safetensors.h"

#include "oracle_tool.h"

namespace {

struct Args {
  std::string inputs, out;
  double kd_weight = 0, temperature = 1, grad_scale = 1;
  moe::DType dtype = moe::DType::F64;
  int threads = 0;
};

const char* kUsage =
    "usage: distill_oracle_run --inputs IN.safetensors --out OUT.safetensors --kd-weight A --temperature T "
    "[--grad-scale G] [--dtype f64|f32] [--threads N]\n";

bool parse_args(int argc, char** argv, Args& a) {
  for (int i = 1; i < argc; ++i) {
    const std::string k = argv[i];
    if (k == "-h" || k == "--help" || i + 1 >= argc) return false;
    const std::string v = argv[++i];
    char* end = nullptr;
    if (k == "--inputs") {
      a.inputs = v;
    } else if (k == "--out") {
      a.out = v;
    } else if (k == "--kd-weight" || k == "--temperature" || k == "--grad-scale") {
      const double x = std::strtod(v.c_str(), &end);
      if (*end != '\0') return false;
      (k == "--kd-weight" ? a.kd_weight : k == "--temperature" ? a.temperature : a.grad_scale) = x;
    } else if (k == "--dtype") {
      a.dtype = moe::dtype_from_name(v);
      MOE_CHECK(a.dtype == moe::DType::F32 || a.dtype == moe::DType::F64, "--dtype must be f32 or f64");
    } else if (k == "--threads") {
      a.threads = static_cast<int>(std::strtol(v.c_str(), &end, 10));
      if (*end != '\0' || a.threads < 1) return false;
    } else {
      std::fprintf(stderr, "distill_oracle_run: unknown option %s\n", k.c_str());
      return false;
    }
  }
  return !a.inputs.empty() && !a.out.empty();
}

using TensorMap = std::map<std::string, moe::Tensor>;

moe::Tensor take(const TensorMap& in, const std::string& name, moe::DType dtype) {
  auto it = in.find(name);
  MOE_CHECK(it != in.end(), "inputs: no tensor '", name, "'");
  return it->second.dtype() == dtype ? it->second : it->second.to(dtype);
}

template <typename T>
TensorMap run_loss(const Args& a, const TensorMap& in) {
  const moe::DType dt = a.dtype;
  const moe::Tensor logits = take(in, "logits", dt), teacher = take(in, "teacher", dt);
  const moe::Tensor targets = take(in, "targets", moe::DType::I32);
  MOE_CHECK(logits.dim() == 2, "inputs: logits must be (n, V)");
  const int64_t n = logits.size(0), V = logits.size(1);
  MOE_CHECK(targets.numel() == n, "inputs: targets must be (n) = (", n, ")");
  moe::Tensor dl = moe::Tensor::empty({n, V}, dt), plain = moe::Tensor::empty({n, V}, dt);
  const moe::nn::DistillArgs da{n, V, a.kd_weight, a.temperature, a.grad_scale};
  const moe::nn::DistillResult r = moe::nn::distill_cross_entropy<T>(da, logits.data<T>(), &teacher,
                                                                     targets.data<int32_t>(), dl.data<T>());
  const moe::nn::CrossEntropyResult ce = moe::nn::cross_entropy<T>(
      n, V, logits.data<T>(), targets.data<int32_t>(), plain.data<T>(), a.grad_scale);
  return {{"ce_sum", oracle_tool::f64_scalar(r.ce_sum)},
          {"kd_sum", oracle_tool::f64_scalar(r.kd_sum)},
          {"count", oracle_tool::i64_scalar(r.count)},
          {"dlogits", dl},
          {"plain_loss_sum", oracle_tool::f64_scalar(ce.loss_sum)},
          {"plain_dlogits", plain}};
}

int run(const Args& a) {
  if (a.threads > 0) moe::set_num_threads(a.threads);
  const TensorMap in = moe::load_safetensors(a.inputs);
  const TensorMap out = a.dtype == moe::DType::F32 ? run_loss<float>(a, in) : run_loss<double>(a, in);
  moe::save_safetensors(a.out, out, {{"dtype", moe::dtype_name(a.dtype)}});
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  return oracle_tool::tool_main<Args>("distill_oracle_run", kUsage, argc, argv, parse_args, run);
}
