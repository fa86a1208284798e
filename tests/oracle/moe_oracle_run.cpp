// moe_oracle_run: runs one MoE layer forward and backward on inputs from a safetensors file and writes
// every output the PyTorch oracle checks (tests/oracle/test_oracle.py, README.md).
//
//   moe_oracle_run --config CFG.json --inputs IN.safetensors --out OUT.safetensors
//                  [--dtype f64|f32] [--backend ref|cpu] [--threads N]
//
// Inputs: the parameters under their MoEParams names (router_w, router_bias, w_gate, w_up, w_down,
// shared_w_gate, shared_w_up, shared_w_down, shared_gate_w; converted to the layer dtype), x and dy
// (T, d), and token_ids (T) i32 when given. Exit codes: 0 success, 1 bad command line, 2 moe::Error
// (one line on stderr).
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "moe/core/parallel.h"
#include "moe/core/tensor.h"
#include "moe/model/safetensors.h"
#include "moe/moe/config.h"
#include "moe/moe/layer.h"

#include "oracle_tool.h"

namespace {

using oracle_tool::f64_scalar;
using oracle_tool::i64_scalar;
using oracle_tool::i64_vector;

struct Args {
  std::string config, inputs, out;
  moe::DType dtype = moe::DType::F64;
  moe::kernels::Backend backend = moe::kernels::Backend::Ref;
  int threads = 0;  // 0: leave the library default
};

const char* kUsage =
    "usage: moe_oracle_run --config CFG.json --inputs IN.safetensors --out OUT.safetensors "
    "[--dtype f64|f32] [--backend ref|cpu] [--threads N]\n";

bool parse_args(int argc, char** argv, Args& a) {
  for (int i = 1; i < argc; ++i) {
    const std::string k = argv[i];
    if (k == "-h" || k == "--help") return false;
    if (i + 1 >= argc) {
      std::fprintf(stderr, "moe_oracle_run: option %s needs a value\n", k.c_str());
      return false;
    }
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
    } else if (k == "--backend") {
      a.backend = moe::kernels::backend_from_name(v);
    } else if (k == "--threads") {
      char* end = nullptr;
      a.threads = static_cast<int>(std::strtol(v.c_str(), &end, 10));
      if (*end != '\0' || a.threads < 1) {
        std::fprintf(stderr, "moe_oracle_run: --threads needs a positive integer, got '%s'\n", v.c_str());
        return false;
      }
    } else {
      std::fprintf(stderr, "moe_oracle_run: unknown option %s\n", k.c_str());
      return false;
    }
  }
  if (a.config.empty() || a.inputs.empty() || a.out.empty()) {
    std::fprintf(stderr, "moe_oracle_run: --config, --inputs and --out are required\n");
    return false;
  }
  return true;
}

std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  MOE_CHECK(in.is_open(), "cannot open config file '", path, "'");
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

moe::Tensor take(const std::map<std::string, moe::Tensor>& m, const std::string& name,
                 const std::string& file) {
  auto it = m.find(name);
  MOE_CHECK(it != m.end(), "inputs file '", file, "': no tensor '", name, "'");
  return it->second;
}

int run(const Args& a) {
  if (a.threads > 0) moe::set_num_threads(a.threads);
  const moe::MoEConfig cfg = moe::moe_config_from_json(read_text(a.config));
  moe::MoELayer layer(cfg, a.dtype, a.backend);

  const auto in = moe::load_safetensors(a.inputs);
  // Only what the file holds: a parameter it lacks stays undefined and the layer must reject it.
  moe::MoEParams& p = layer.params();
  p = moe::MoEParams{};
  const std::pair<const char*, moe::Tensor*> slots[] = {{"router_w", &p.router_w},
                                                        {"router_bias", &p.router_bias},
                                                        {"w_gate", &p.w_gate},
                                                        {"w_up", &p.w_up},
                                                        {"w_down", &p.w_down},
                                                        {"shared_w_gate", &p.shared_w_gate},
                                                        {"shared_w_up", &p.shared_w_up},
                                                        {"shared_w_down", &p.shared_w_down},
                                                        {"shared_gate_w", &p.shared_gate_w}};
  for (const auto& [name, slot] : slots) {
    auto it = in.find(name);
    if (it != in.end()) *slot = it->second.to(a.dtype).set_name(name);
  }
  const moe::Tensor x = take(in, "x", a.inputs).to(a.dtype).set_name("x");
  const moe::Tensor dy = take(in, "dy", a.inputs).to(a.dtype).set_name("dy");
  moe::Tensor ids;
  moe::ForwardOptions opt;
  if (auto it = in.find("token_ids"); it != in.end()) {
    ids = it->second.to(moe::DType::I32).set_name("token_ids");
    opt.token_ids = &ids;
  }
  opt.check_finite = true;

  const moe::MoEForward fwd = layer.forward(x, opt);
  const moe::MoEGrads g = layer.backward(fwd, dy);

  std::map<std::string, moe::Tensor> out;
  auto put = [&](const std::string& name, const moe::Tensor& t) {
    if (t.defined()) out[name] = t;
  };
  put("y", fwd.y);
  put("dx", g.dx);
  put("d_router_w", g.router_w);
  put("d_w_gate", g.w_gate);
  put("d_w_up", g.w_up);
  put("d_w_down", g.w_down);
  put("d_shared_w_gate", g.shared_w_gate);
  put("d_shared_w_up", g.shared_w_up);
  put("d_shared_w_down", g.shared_w_down);
  put("d_shared_gate_w", g.shared_gate_w);
  const moe::Routing& r = fwd.routing;
  put("token", r.token.to(moe::DType::I32));
  put("expert", r.expert.to(moe::DType::I32));
  put("kept", r.kept.to(moe::DType::I32));
  put("weight", r.weight.to(moe::DType::F64));
  put("logits", r.logits);
  put("scores", r.scores);
  put("capacity", i64_scalar(r.capacity));
  const moe::MoEStats& s = fwd.stats;
  put("aux_loss", f64_scalar(s.aux_loss));
  put("seq_aux_loss", f64_scalar(s.seq_aux_loss));
  put("z_loss", f64_scalar(s.z_loss));
  put("entropy_loss", f64_scalar(s.entropy_loss));
  put("imbalance", f64_scalar(s.imbalance));
  put("dropped", i64_scalar(s.dropped));
  put("routed_per_expert", i64_vector(s.routed_per_expert));
  put("tokens_per_expert", i64_vector(s.tokens_per_expert));
  moe::save_safetensors(
      a.out, out, {{"dtype", moe::dtype_name(a.dtype)}, {"backend", moe::kernels::backend_name(a.backend)}});
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  return oracle_tool::tool_main<Args>("moe_oracle_run", kUsage, argc, argv, parse_args, run);
}
