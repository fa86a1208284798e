// `moe plan --serve`: predicted decode tokens/s and memory per rank of serving a model with expert
// parallelism over N ranks (include/moe/dist/plan_serve.h), for each N and concurrency asked.
#pragma once

#include <CLI/CLI.hpp>
#include <cstdint>
#include <string>
#include <vector>

#include "moe/dist/plan.h"
#include "moe/dist/plan_serve.h"

namespace moe::cli {

struct PlanServeArgs {
  bool on = false;  // --serve
  std::vector<int64_t> ranks = {1, 2, 4};
  std::vector<int64_t> concurrency = {1, 16};
  int64_t context = 160;
  std::string format = "f32";
  int64_t ranks_per_node = 0;  // 0: all ranks on one node
  dist::ServeCluster cluster;  // mem_gbps / gflops 0: measured on this machine
  // `moe bench generate --json` of one process on this machine: each concurrency it measured scales
  // the predictions at that concurrency by measured / predicted step time of one rank (the kernels'
  // efficiency at that batch, which the bandwidth model does not know).
  std::string calibrate;
  double overhead_mib = -1;  // -1: from --calibrate's peak RSS, else 0
};

// Adds --serve and its flags to `moe plan`.
void add_plan_serve_flags(CLI::App* sub, PlanServeArgs& a);
// The table (or JSON) for the model `model` and the routing of `moe plan`'s flags.
int run_plan_serve(const PlanServeArgs& a, const std::string& model, const dist::RoutingSpec& routing,
                   bool json);

}  // namespace moe::cli
