// quant_oracle_run: quantizes a weight matrix with moe::kernels::quantize_matrix and multiplies it with
// gemm_qw on the Ref and Cpu backends, for the PyTorch oracle (tests/oracle/test_quant_oracle.py).
//
//   quant_oracle_run --inputs IN.safetensors --out OUT.safetensors --bits 4|8 --group G [--threads N]
//
// IN: w (N, K) f32, a (M, K) f32. OUT: qweight (I8 (N, K) or U8 (N, K / 2)), scales F16 (N, K / G),
// mins F16 (int4), deq (N, K) f32 = dequantize_matrix, c_ref and c_cpu (M, N) f32 = a · deq^T.
// Exit codes: 0 success, 1 bad command line, 2 moe::Error (one line on stderr).
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "moe/core/error.h"
#include "moe/core/parallel.h"
#include "moe/core/tensor.h"
#include "moe/kernels/ops_quant.h"
#include "moe/model/safetensors.h"

#include "oracle_tool.h"

namespace {

struct Args {
  std::string inputs, out;
  int bits = 4;
  int64_t group = 64;
  int threads = 0;
};

const char* kUsage =
    "usage: quant_oracle_run --inputs IN.safetensors --out OUT.safetensors --bits 4|8 --group G [--threads "
    "N]\n";

bool parse_args(int argc, char** argv, Args& a) {
  for (int i = 1; i < argc; ++i) {
    const std::string k = argv[i];
    if (k == "-h" || k == "--help" || i + 1 >= argc) return false;
    const std::string v = argv[++i];
    if (k == "--inputs") {
      a.inputs = v;
    } else if (k == "--out") {
      a.out = v;
    } else if (k == "--bits") {
      a.bits = std::stoi(v);
    } else if (k == "--group") {
      a.group = std::stoll(v);
    } else if (k == "--threads") {
      a.threads = std::stoi(v);
    } else {
      return false;
    }
  }
  return !a.inputs.empty() && !a.out.empty();
}

int run(const Args& a) {
  using namespace moe;
  if (a.threads > 0) set_num_threads(a.threads);
  auto in = load_safetensors(a.inputs);
  MOE_CHECK(in.count("w") && in.count("a"), a.inputs, ": needs tensors 'w' and 'a'");
  const Tensor w = in["w"].to(DType::F32).contiguous(), x = in["a"].to(DType::F32).contiguous();
  MOE_CHECK(w.dim() == 2 && x.dim() == 2 && x.size(1) == w.size(1), a.inputs,
            ": w (N, K) and a (M, K) expected, got ", shape_str(w.shape()), " and ", shape_str(x.shape()));
  const int64_t N = w.size(0), K = w.size(1), M = x.size(0);
  const kernels::QuantizedMatrix q = kernels::quantize_matrix(w.data<float>(), N, K, a.bits, a.group, "w");
  std::map<std::string, Tensor> out;
  out["qweight"] = q.q;
  out["scales"] = q.scales;
  if (q.mins.defined()) out["mins"] = q.mins;
  Tensor deq = Tensor::empty({N, K});
  kernels::dequantize_matrix(q.view(), deq.data<float>());
  out["deq"] = deq;
  for (const auto b : {kernels::Backend::Ref, kernels::Backend::Cpu}) {
    Tensor c = Tensor::full({M, N}, 0.0);
    kernels::GemmQuantArgs g;
    g.M = M, g.A = x.data<float>(), g.lda = K, g.W = q.view(), g.C = c.data<float>(), g.ldc = N;
    kernels::gemm_qw(b, g);
    out[b == kernels::Backend::Ref ? "c_ref" : "c_cpu"] = c;
  }
  save_safetensors(a.out, out);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  return oracle_tool::tool_main<Args>("quant_oracle_run", kUsage, argc, argv, parse_args, run);
}
