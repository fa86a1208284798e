// `moe version`: the version, how this binary was built and which backends it can run.
#include <iostream>
#include <string>

#include "cli/common.h"
#include "moe/core/parallel.h"
#include "moe/dist/comm.h"
#include "moe/kernels/isa.h"
#include "moe/kernels/ops.h"

namespace moe::cli {
namespace {

std::string compiler_string() {
#if defined(__clang__)
  return std::string("clang ") + __clang_version__;
#elif defined(__GNUC__)
  return std::string("gcc ") + __VERSION__;
#else
  return "unknown";
#endif
}

// The op table: one line per op with the backends that implement it (whether or not present here).
void print_ops() {
  std::cout << "ops (implemented on):\n";
  for (const kernels::OpInfo& op : kernels::op_table()) {
    std::cout << "  " << op.name;
    for (int b = 0; b < 3; ++b) {
      if (op.backend[b]) std::cout << " " << kernels::backend_name(static_cast<kernels::Backend>(b));
    }
    std::cout << "\n";
  }
}

bool g_ops = false;

int run_version() {
  std::cout << "moe.cpp " << MOE_VERSION << "\n";
  std::cout << "compiler: " << compiler_string() << "\n";
#if defined(MOE_HAVE_CUDA)
  std::cout << "cuda: built\n";
#else
  std::cout << "cuda: not built\n";
#endif
  std::cout << "backends:";
  for (kernels::Backend b : kernels::available_backends()) std::cout << " " << kernels::backend_name(b);
  std::cout << "\n";
  std::cout << "communicators: self";
  if (dist::mpi_compiled()) std::cout << " mpi";
  if (dist::nccl_compiled()) std::cout << " nccl";
  std::cout << "\n";
  std::cout << "threads: " << num_threads() << "\n";
  std::cout << "cpu instruction sets: " << kernels::cpu_isa_summary() << "\n";
  if (g_ops) print_ops();
  return kExitOk;
}

}  // namespace

void register_version(CLI::App& app, Registry& reg) {
  CLI::App* sub = app.add_subcommand("version", "Print the version, build and available backends");
  sub->add_flag("--ops", g_ops, "Also list every op of the op table with the backends that implement it");
  sub->callback([&reg] { reg.action = run_version; });
}

}  // namespace moe::cli
