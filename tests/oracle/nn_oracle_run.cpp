// nn_oracle_run: runs one transformer building block of moe/model/nn.h (RMSNorm, RoPE, attention or
// cross-entropy), forward and backward, on inputs from a safetensors file and writes the outputs the
// PyTorch oracle checks (tests/oracle/test_nn_oracle.py, README.md).
//
//   nn_oracle_run --config CFG.json --inputs IN.safetensors --out OUT.safetensors
//                 [--dtype f64|f32] [--threads N]
//
// CFG.json: {"op": "rmsnorm" | "rope" | "attention" | "cross_entropy", plus the op's scalars:
// "eps", "theta", "scale", "grad_scale"}. Sizes come from the input shapes:
//   rmsnorm        x (n, d), w (d), dy (n, d)              -> y, rstd, dx, dw
//   rope           x (n, heads, hd), pos (n) i32, dy       -> y (rotated x), dx (rope_backward of dy)
//   attention      q (B, sq, hq, hd), k, v (B, sk, hkv, hd), dout (B, sq, hq, hd)
//                                                          -> out, lse (B, hq, sq), dq, dk, dv
//   cross_entropy  logits (n, V), targets (n) i32          -> loss_sum (f64), count (i64), dlogits
// Exit codes: 0 success, 1 bad command line, 2 moe::Error (one line on stderr).
#include <nlohmann/json.hpp>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <fstream>
#include <map>
#include <sstream>
#include <string>

#include "moe/core/error.h"
#include "moe/core/parallel.h"
#include "moe/core/tensor.h"
#include "moe/model/nn.h"
#include "moe/model/safetensors.h"

#include "oracle_tool.h"

namespace {

struct Args {
  std::string config, inputs, out;
  moe::DType dtype = moe::DType::F64;
  int threads = 0;  // 0: leave the library default
};

const char* kUsage =
    "usage: nn_oracle_run --config CFG.json --inputs IN.safetensors --out OUT.safetensors "
    "[--dtype f64|f32] [--threads N]\n";

bool parse_args(int argc, char** argv, Args& a) {
  for (int i = 1; i < argc; ++i) {
    const std::string k = argv[i];
    if (k == "-h" || k == "--help" || i + 1 >= argc) return false;
    const std::string v = argv[++i];
    if (k == "--config") {
      a.config = v;
    } else if (k == "--inputs") {
      a.inputs = v;
    } else if (k == "--out") {
      a.out = v;
    } else if (k == "--dtype") {
      a.dtype = moe::dtype_from_name(v);
      MOE_CHECK(a.dtype == moe::DType::F32 || a.dtype == moe::DType::F64, "--dtype must be f32 or f64, got '",
                v, "'");
    } else if (k == "--threads") {
      char* end = nullptr;
      a.threads = static_cast<int>(std::strtol(v.c_str(), &end, 10));
      if (*end != '\0' || a.threads < 1) return false;
    } else {
      std::fprintf(stderr, "nn_oracle_run: unknown option %s\n", k.c_str());
      return false;
    }
  }
  return !a.config.empty() && !a.inputs.empty() && !a.out.empty();
}

using TensorMap = std::map<std::string, moe::Tensor>;

// Tensor `name` of the inputs, converted to dtype, with the expected number of dimensions.
moe::Tensor take(const TensorMap& in, const std::string& name, moe::DType dtype, int dims) {
  auto it = in.find(name);
  MOE_CHECK(it != in.end(), "inputs: no tensor '", name, "'");
  MOE_CHECK(it->second.dim() == dims, "inputs: tensor '", name, "' must have ", dims, " dimensions, got ",
            it->second.dim());
  return it->second.to(dtype).contiguous().set_name(name);
}

template <typename T>
void run_rmsnorm(const nlohmann::json& cfg, const TensorMap& in, moe::DType dt, TensorMap& out) {
  const moe::Tensor x = take(in, "x", dt, 2), w = take(in, "w", dt, 1), dy = take(in, "dy", dt, 2);
  moe::nn::RmsNormArgs a;
  a.n = x.size(0);
  a.d = x.size(1);
  a.eps = cfg.value("eps", 1e-6);
  MOE_CHECK(w.size(0) == a.d && dy.shape() == x.shape(), "rmsnorm: w must be (d) and dy like x");
  moe::Tensor y = moe::Tensor::empty(x.shape(), dt), rstd = moe::Tensor::empty({a.n}, dt);
  moe::Tensor dx = moe::Tensor::empty(x.shape(), dt), dw = moe::Tensor::zeros({a.d}, dt);
  moe::nn::rmsnorm_forward<T>(a, x.data<T>(), w.data<T>(), y.data<T>(), rstd.data<T>());
  moe::nn::rmsnorm_backward<T>(a, x.data<T>(), w.data<T>(), rstd.data<T>(), dy.data<T>(), dx.data<T>(),
                               dw.data<T>());
  out = {{"y", y}, {"rstd", rstd}, {"dx", dx}, {"dw", dw}};
}

template <typename T>
void run_rope(const nlohmann::json& cfg, const TensorMap& in, moe::DType dt, TensorMap& out) {
  moe::Tensor y = take(in, "x", dt, 3).clone(), dx = take(in, "dy", dt, 3).clone();
  const moe::Tensor pos = take(in, "pos", moe::DType::I32, 1);
  moe::nn::RopeArgs a;
  a.n = y.size(0);
  a.heads = y.size(1);
  a.hd = y.size(2);
  a.theta = cfg.value("theta", 10000.0);
  MOE_CHECK(pos.size(0) == a.n && dx.shape() == y.shape(), "rope: pos must be (n) and dy like x");
  moe::nn::rope_forward<T>(a, pos.data<int32_t>(), y.data<T>());
  moe::nn::rope_backward<T>(a, pos.data<int32_t>(), dx.data<T>());
  out = {{"y", y}, {"dx", dx}};
}

template <typename T>
void run_attention(const nlohmann::json& cfg, const TensorMap& in, moe::DType dt, TensorMap& out) {
  const moe::Tensor q = take(in, "q", dt, 4), k = take(in, "k", dt, 4), v = take(in, "v", dt, 4);
  const moe::Tensor dout = take(in, "dout", dt, 4);
  moe::nn::AttentionArgs a;
  a.batch = q.size(0);
  a.sq = q.size(1);
  a.hq = q.size(2);
  a.hd = q.size(3);
  a.sk = k.size(1);
  a.hkv = k.size(2);
  a.scale = cfg.value("scale", 0.0);
  MOE_CHECK(k.size(0) == a.batch && k.size(3) == a.hd && v.shape() == k.shape() && dout.shape() == q.shape(),
            "attention: k, v must be (batch, sk, hkv, hd) and dout like q");
  moe::Tensor o = moe::Tensor::empty(q.shape(), dt), lse = moe::Tensor::empty({a.batch, a.hq, a.sq}, dt);
  moe::Tensor dq = moe::Tensor::empty(q.shape(), dt), dk = moe::Tensor::empty(k.shape(), dt),
              dv = moe::Tensor::empty(k.shape(), dt);
  moe::nn::attention_forward<T>(a, q.data<T>(), k.data<T>(), v.data<T>(), o.data<T>(), lse.data<T>());
  moe::nn::attention_backward<T>(a, q.data<T>(), k.data<T>(), v.data<T>(), o.data<T>(), lse.data<T>(),
                                 dout.data<T>(), dq.data<T>(), dk.data<T>(), dv.data<T>());
  out = {{"out", o}, {"lse", lse}, {"dq", dq}, {"dk", dk}, {"dv", dv}};
}

template <typename T>
void run_cross_entropy(const nlohmann::json& cfg, const TensorMap& in, moe::DType dt, TensorMap& out) {
  const moe::Tensor logits = take(in, "logits", dt, 2), targets = take(in, "targets", moe::DType::I32, 1);
  const int64_t n = logits.size(0), V = logits.size(1);
  MOE_CHECK(targets.size(0) == n, "cross_entropy: targets must be (n) = (", n, "), got (", targets.size(0),
            ")");
  moe::Tensor dl = moe::Tensor::empty(logits.shape(), dt);
  const moe::nn::CrossEntropyResult r = moe::nn::cross_entropy<T>(
      n, V, logits.data<T>(), targets.data<int32_t>(), dl.data<T>(), cfg.value("grad_scale", 1.0));
  moe::Tensor count = moe::Tensor::empty({}, moe::DType::I64);
  *count.data<int64_t>() = r.count;
  out = {
      {"loss_sum", moe::Tensor::from({r.loss_sum}, {}, moe::DType::F64)}, {"count", count}, {"dlogits", dl}};
}

template <typename T>
void run_op(const nlohmann::json& cfg, const TensorMap& in, moe::DType dt, TensorMap& out) {
  const std::string op = cfg.value("op", "");
  if (op == "rmsnorm") return run_rmsnorm<T>(cfg, in, dt, out);
  if (op == "rope") return run_rope<T>(cfg, in, dt, out);
  if (op == "attention") return run_attention<T>(cfg, in, dt, out);
  if (op == "cross_entropy") return run_cross_entropy<T>(cfg, in, dt, out);
  throw moe::Error(moe::cat("config: unknown op '", op, "' (rmsnorm, rope, attention, cross_entropy)"));
}

int run(const Args& a) {
  if (a.threads > 0) moe::set_num_threads(a.threads);
  std::ifstream f(a.config);
  MOE_CHECK(f.is_open(), "cannot open config file '", a.config, "'");
  std::ostringstream text;
  text << f.rdbuf();
  const nlohmann::json cfg = nlohmann::json::parse(text.str());
  const TensorMap in = moe::load_safetensors(a.inputs);
  TensorMap out;
  if (a.dtype == moe::DType::F32) {
    run_op<float>(cfg, in, a.dtype, out);
  } else {
    run_op<double>(cfg, in, a.dtype, out);
  }
  moe::save_safetensors(a.out, out, {{"dtype", moe::dtype_name(a.dtype)}});
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  return oracle_tool::tool_main<Args>("nn_oracle_run", kUsage, argc, argv, parse_args, run);
}
