// Expert-parallel inference flags shared by `moe generate`, `moe serve`, `moe eval` and `moe bench
// generate` (--expert-parallel N, --comm-timeout S), and the ranks they start: each rank holds a
// replica of the dense parts and 1/N of the routed experts; rank 0 leads (moe/infer/lockstep.h).
#pragma once

#include <CLI/CLI.hpp>
#include <functional>
#include <memory>

#include "moe/dist/comm.h"
#include "moe/infer/lockstep.h"

namespace moe::cli {

struct EpFlags {
  int n = 1;
  double timeout_s = 300;
};

void add_ep_flags(CLI::App* c, EpFlags& f);
// The ranks of --expert-parallel N: null for N = 1 outside mpirun; else the MPI world, which must
// have exactly N ranks (throws moe::Error naming the flag otherwise). Sets the threads of this rank
// to the cores over the ranks on this node unless `threads` > 0 asks for a number.
std::shared_ptr<dist::Communicator> ep_world(const EpFlags& f, int threads);
// Runs body(ranks) with ranks = ep_world(f, threads). Under expert parallelism an error on any rank
// is reported with the rank's number and brings the whole job down (no rank is left waiting for a
// peer that stopped); the exit status is kExitFailure for a communication failure, else kExitUsage.
int with_ep_ranks(const EpFlags& f, int threads,
                  const std::function<int(std::shared_ptr<dist::Communicator>)>& body);
// Runs a follower rank (rank > 0): repeats the leader's forward passes until it stops; kExitOk.
// Errors are thrown (to with_ep_ranks).
int run_follower(infer::Lockstep& ls, const model::Transformer& m);

}  // namespace moe::cli
