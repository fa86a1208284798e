// optim_oracle_run: runs several steps of moe::train::AdamW (with optional global-norm clipping) on
// parameters and per-step gradients from a safetensors file and writes what the PyTorch oracle checks
// (tests/oracle/test_optim_oracle.py, README.md).
//
//   optim_oracle_run --inputs IN.safetensors --out OUT.safetensors [--threads N] [--resume-at K]
//
// Inputs: "hyper" (4) f64 = beta1, beta2, eps, weight_decay; "lr" (S) f64, the learning rate of each
// of the S steps; "max_norm" () f64, clip before each step when > 0 (optional); for each parameter P
// "param.P" f32 (its initial value), "decay.P" () u8 (1: weight decay applies) and "grad.<s>.P" f32
// for every step s < S. Each step s: the gradients are set to grad.<s>.*, clipped when max_norm > 0,
// then AdamW steps with lr[s].
// Outputs: "norm" (S) f64, the gradient norm before clipping at each step; "clipped.<s>.P", the
// gradients after clipping (only with max_norm); "param.<s>.P", the parameters after step s; and the
// final optimizer state ("adamw.step", "adamw.m.P", "adamw.v.P").
// --resume-at K: after K steps, export the optimizer state to OUT.state.safetensors, drop the
// optimizer and continue with a fresh one that imports the file (must not change any output).
// Exit codes: 0 success, 1 bad command line, 2 moe::Error (one line on stderr).
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "moe/core/parallel.h"
#include "moe/core/tensor.h"
#include "moe/model/safetensors.h"
#include "moe/train/optim.h"

#include "oracle_tool.h"

namespace {

struct Args {
  std::string inputs, out;
  int threads = 0;     // 0: leave the library default
  int resume_at = -1;  // < 0: no resume
};

const char* kUsage =
    "usage: optim_oracle_run --inputs IN.safetensors --out OUT.safetensors [--threads N] [--resume-at K]\n";

bool parse_int(const std::string& v, const char* flag, int lo, int& out) {
  char* end = nullptr;
  const long x = std::strtol(v.c_str(), &end, 10);
  if (v.empty() || *end != '\0' || x < lo) {
    std::fprintf(stderr, "optim_oracle_run: %s needs an integer >= %d, got '%s'\n", flag, lo, v.c_str());
    return false;
  }
  out = static_cast<int>(x);
  return true;
}

bool parse_args(int argc, char** argv, Args& a) {
  for (int i = 1; i < argc; ++i) {
    const std::string k = argv[i];
    if (k == "-h" || k == "--help") return false;
    if (i + 1 >= argc) {
      std::fprintf(stderr, "optim_oracle_run: option %s needs a value\n", k.c_str());
      return false;
    }
    const std::string v = argv[++i];
    if (k == "--inputs") {
      a.inputs = v;
    } else if (k == "--out") {
      a.out = v;
    } else if (k == "--threads") {
      if (!parse_int(v, "--threads", 1, a.threads)) return false;
    } else if (k == "--resume-at") {
      if (!parse_int(v, "--resume-at", 0, a.resume_at)) return false;
    } else {
      std::fprintf(stderr, "optim_oracle_run: unknown option %s\n", k.c_str());
      return false;
    }
  }
  if (a.inputs.empty() || a.out.empty()) {
    std::fprintf(stderr, "optim_oracle_run: --inputs and --out are required\n");
    return false;
  }
  return true;
}

const moe::Tensor& take(const std::map<std::string, moe::Tensor>& m, const std::string& name,
                        const std::string& file) {
  auto it = m.find(name);
  MOE_CHECK(it != m.end(), "inputs file '", file, "': no tensor '", name, "'");
  return it->second;
}

int run(const Args& a) {
  if (a.threads > 0) moe::set_num_threads(a.threads);
  const auto in = moe::load_safetensors(a.inputs);
  const moe::Tensor hyper = take(in, "hyper", a.inputs).to(moe::DType::F64);
  MOE_CHECK(hyper.numel() == 4, "inputs file '", a.inputs, "': 'hyper' needs 4 values, got ", hyper.numel());
  const moe::train::AdamWConfig cfg{hyper.get(0), hyper.get(1), hyper.get(2), hyper.get(3)};
  const std::vector<double> lr = take(in, "lr", a.inputs).to_vector();
  const int64_t steps = static_cast<int64_t>(lr.size());
  double max_norm = 0.0;
  if (auto it = in.find("max_norm"); it != in.end()) max_norm = it->second.get(0);

  // Parameters: every "param.P"; gradients are filled from "grad.<s>.P" before each step.
  std::vector<std::string> names;
  std::map<std::string, moe::Tensor> param, grad;
  std::vector<moe::train::ParamRef> refs;
  for (const auto& [key, t] : in)
    if (key.rfind("param.", 0) == 0) names.push_back(key.substr(6));
  for (const std::string& n : names) {
    param[n] = take(in, "param." + n, a.inputs).clone().set_name(n);
    grad[n] = moe::Tensor::zeros(param[n].shape(), param[n].dtype(), "grad of " + n);
  }
  for (const std::string& n : names)
    refs.push_back({n, &param[n], &grad[n], take(in, "decay." + n, a.inputs).get(0) != 0.0});

  std::map<std::string, moe::Tensor> out;
  moe::Tensor norms = moe::Tensor::zeros({steps}, moe::DType::F64, "norm");
  auto opt = std::make_unique<moe::train::AdamW>(cfg);
  for (int64_t s = 0; s < steps; ++s) {
    if (s == a.resume_at) {
      const std::string state_path = a.out + ".state.safetensors";
      moe::save_safetensors(state_path, opt->export_state());
      opt = std::make_unique<moe::train::AdamW>(cfg);
      opt->import_state(moe::load_safetensors(state_path), refs);
    }
    const std::string prefix = std::to_string(s) + ".";
    for (const std::string& n : names) {
      const moe::Tensor& g = take(in, "grad." + prefix + n, a.inputs);
      grad[n] = g.clone().set_name("grad." + prefix + n);  // as given: the optimizer checks shape, dtype
    }
    if (max_norm > 0.0) {
      norms.set(s, moe::train::clip_grad_norm(refs, max_norm));
      for (const std::string& n : names) out["clipped." + prefix + n] = grad[n].clone();
    } else {
      norms.set(s, moe::train::grad_norm(refs));
    }
    opt->step(refs, lr[s]);
    for (const std::string& n : names) out["param." + prefix + n] = param[n].clone();
  }
  out["norm"] = norms;
  for (auto& [k, t] : opt->export_state()) out[k] = t;
  moe::save_safetensors(a.out, out);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  return oracle_tool::tool_main<Args>("optim_oracle_run", kUsage, argc, argv, parse_args, run);
}
