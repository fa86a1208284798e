// `moe bench alltoall [--sizes 8,1K,64K,1M,4M] [--iters 20] [--warmup 3] [--hierarchical]
//  [--ranks-per-node K] [--timeout S] [--json]`: all-to-all bandwidth and latency of the expert-parallel
// communicator, under mpirun (without it: a world of one rank, which measures a memcpy).
//
// Every rank sends one block of each size to every rank (itself included), as the expert-parallel
// dispatch does with balanced routing. Per size the ranks run a barrier, then time one alltoallv
// (exchange_counts not included; its latency has its own row "counts"), `iters` times after `warmup`
// untimed calls. Reported: the median over iterations of the slowest rank's time, and per-rank GB/s =
// bytes this rank sends to the other ranks / that time (the self block is a local copy and not
// counted). With --hierarchical the two-stage all-to-all (dist::hierarchical) is timed in the same
// iterations, alternating with the flat one, so both see the same machine state. The received data is
// checked after the last iteration.
#include <chrono>
#include <cstdio>
#include <cstring>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "cli/common.h"
#include "moe/core/error.h"
#include "moe/dist/comm.h"

namespace moe::cli {
namespace {

struct BenchAlltoallOptions {
  std::vector<std::string> sizes{"8", "1K", "64K", "1M", "4M"};
  int iters = 20;
  int warmup = 3;
  bool hierarchical = false;
  int ranks_per_node = 0;
  double timeout = 60;
  bool json = false;
};

struct Row {
  std::string variant;  // "counts", "flat", "hierarchical"
  int64_t block_bytes = 0;
  int64_t bytes_to_others = 0;  // per rank per call
  double us = 0;                // median over iterations of the slowest rank
  double gbps = 0;
};

int64_t parse_size(const std::string& s) {
  int64_t mult = 1;
  std::string num = s;
  if (!num.empty() && (num.back() == 'K' || num.back() == 'k'))
    mult = 1024, num.pop_back();
  else if (!num.empty() && (num.back() == 'M' || num.back() == 'm'))
    mult = 1024 * 1024, num.pop_back();
  else if (!num.empty() && (num.back() == 'G' || num.back() == 'g'))
    mult = 1024 * 1024 * 1024, num.pop_back();
  int64_t v = -1;
  size_t used = 0;
  try {
    v = std::stoll(num, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  MOE_CHECK(used == num.size() && !num.empty() && v >= 1, "bench alltoall: --sizes: '", s,
            "' is not a byte count >= 1 (e.g. 64K, 1M)");
  return v * mult;
}

// Median over iterations of the slowest rank: max over ranks of each iteration's time, then median.
double slowest_median(dist::Communicator& world, std::vector<double> times) {
  world.allreduce(times.data(), static_cast<int64_t>(times.size()), DType::F64, dist::ReduceOp::Max);
  return median(times);
}

// Block (src -> dst) of `block` bytes: byte i is (src · 31 + dst · 7 + i) mod 251.
void fill(std::vector<unsigned char>& send, int me, int p, int64_t block) {
  for (int d = 0; d < p; ++d) {
    for (int64_t i = 0; i < block; ++i)
      send[d * block + i] = static_cast<unsigned char>((me * 31 + d * 7 + i) % 251);
  }
}
void verify(const std::vector<unsigned char>& recv, int me, int p, int64_t block, const char* variant) {
  for (int s = 0; s < p; ++s) {
    for (int64_t i = 0; i < block; ++i) {
      MOE_CHECK(recv[s * block + i] == static_cast<unsigned char>((s * 31 + me * 7 + i) % 251),
                "bench alltoall: ", variant, " all-to-all delivered a wrong byte ", i, " from rank ", s,
                " to rank ", me);
    }
  }
}

std::vector<Row> bench_size(dist::Communicator& world, dist::Communicator* two_stage, int64_t block,
                            const BenchAlltoallOptions& o) {
  const int p = world.size(), me = world.rank();
  const std::vector<int64_t> counts(static_cast<size_t>(p), block);
  std::vector<unsigned char> send(static_cast<size_t>(block * p)), recv(send.size());
  fill(send, me, p, block);
  std::vector<double> t_flat, t_two;
  dist::Communicator* variants[2] = {&world, two_stage};
  for (int it = 0; it < o.warmup + o.iters; ++it) {
    for (int v = 0; v < 2; ++v) {
      if (variants[v] == nullptr) continue;
      std::memset(recv.data(), 0xff, recv.size());
      world.barrier();
      const auto t0 = std::chrono::steady_clock::now();
      variants[v]->alltoallv(send.data(), counts, recv.data(), counts, DType::U8);
      const double us = ms_since(t0) * 1e3;
      if (it >= o.warmup) (v == 0 ? t_flat : t_two).push_back(us);
      if (it == o.warmup + o.iters - 1) verify(recv, me, p, block, v == 0 ? "flat" : "hierarchical");
    }
  }
  std::vector<Row> rows;
  for (int v = 0; v < 2; ++v) {
    if (variants[v] == nullptr) continue;
    Row r;
    r.variant = v == 0 ? "flat" : "hierarchical";
    r.block_bytes = block;
    r.bytes_to_others = block * (p - 1);
    r.us = slowest_median(world, v == 0 ? t_flat : t_two);
    r.gbps = static_cast<double>(r.bytes_to_others) / (r.us * 1e3);
    rows.push_back(r);
  }
  return rows;
}

Row bench_counts(dist::Communicator& world, const BenchAlltoallOptions& o) {
  const std::vector<int64_t> counts(static_cast<size_t>(world.size()), 1);
  std::vector<double> t;
  for (int it = 0; it < o.warmup + o.iters; ++it) {
    world.barrier();
    const auto t0 = std::chrono::steady_clock::now();
    world.exchange_counts(counts);
    if (it >= o.warmup) t.push_back(ms_since(t0) * 1e3);
  }
  Row r;
  r.variant = "counts";
  r.block_bytes = 8;
  r.bytes_to_others = 8 * (world.size() - 1);
  r.us = slowest_median(world, t);
  r.gbps = static_cast<double>(r.bytes_to_others) / (r.us * 1e3);
  return r;
}

int run(const BenchAlltoallOptions& o) {
  MOE_CHECK(o.iters >= 1, "bench alltoall: --iters must be >= 1, got ", o.iters);
  MOE_CHECK(o.warmup >= 0, "bench alltoall: --warmup must be >= 0, got ", o.warmup);
  MOE_CHECK(o.ranks_per_node >= 0, "bench alltoall: --ranks-per-node must be >= 0, got ", o.ranks_per_node);
  MOE_CHECK(o.timeout >= 0, "bench alltoall: --timeout must be >= 0, got ", o.timeout);
  std::vector<int64_t> sizes;
  for (const std::string& s : o.sizes) sizes.push_back(parse_size(s));
  std::shared_ptr<dist::Communicator> world =
      dist::launched_by_mpi() && dist::mpi_compiled()
          ? dist::mpi_world()
          : std::shared_ptr<dist::Communicator>(dist::self_communicator());
  world->set_timeout(o.timeout);
  std::unique_ptr<dist::Communicator> two_stage;
  if (o.hierarchical) {
    two_stage = dist::hierarchical(world, o.ranks_per_node);
    two_stage->set_timeout(o.timeout);
  }
  std::vector<Row> rows;
  try {
    rows.push_back(bench_counts(*world, o));
    for (int64_t b : sizes) {
      const std::vector<Row> r = bench_size(*world, two_stage.get(), b, o);
      rows.insert(rows.end(), r.begin(), r.end());
    }
  } catch (const dist::CommError& e) {
    std::cerr << "moe: error: rank " << world->rank() << ": " << e.what() << std::endl;
    world->abort_job(kExitFailure);
  }
  if (world->rank() != 0) return kExitOk;
  if (o.json) {
    nlohmann::json j;
    j["ranks"] = world->size();
    j["backend"] = world->backend();
    j["hierarchical"] = two_stage ? two_stage->backend() : "";
    j["iters"] = o.iters;
    j["results"] = nlohmann::json::array();
    for (const Row& r : rows) {
      j["results"].push_back({{"variant", r.variant},
                              {"block_bytes", r.block_bytes},
                              {"bytes_to_others", r.bytes_to_others},
                              {"us", round_sig(r.us, 4)},
                              {"gbps", round_sig(r.gbps, 4)}});
    }
    std::cout << j.dump() << "\n";
    return kExitOk;
  }
  std::printf("bench alltoall: %d ranks (%s)%s, median of %d of the slowest rank\n", world->size(),
              world->backend().c_str(), two_stage ? cat(", two-stage: ", two_stage->backend()).c_str() : "",
              o.iters);
  std::printf("%-13s %12s %14s %12s %10s\n", "variant", "block B", "B to others", "us", "GB/s");
  for (const Row& r : rows) {
    std::printf("%-13s %12lld %14lld %12.2f %10.3f\n", r.variant.c_str(),
                static_cast<long long>(r.block_bytes), static_cast<long long>(r.bytes_to_others), r.us,
                r.gbps);
  }
  return kExitOk;
}

}  // namespace

void add_bench_alltoall(CLI::App& bench, Registry& reg) {
  auto o = std::make_shared<BenchAlltoallOptions>();
  CLI::App* c = bench.add_subcommand(
      "alltoall", "All-to-all bandwidth and latency of the expert-parallel communicator (run under mpirun)");
  c->add_option("--sizes", o->sizes, "Bytes per block (one block to every rank); K, M, G suffixes")
      ->delimiter(',')
      ->capture_default_str();
  c->add_option("--iters", o->iters, "Timed calls per size; the median is reported")
      ->check(in_range(1, kMaxRepsFlag))
      ->capture_default_str();
  c->add_option("--warmup", o->warmup, "Untimed calls first")
      ->check(in_range(0, kMaxRepsFlag))
      ->capture_default_str();
  c->add_flag("--hierarchical", o->hierarchical,
              "Also time the two-stage all-to-all (intra-node, then inter-node)");
  c->add_option("--ranks-per-node", o->ranks_per_node,
                "Ranks per node of the two-stage all-to-all (0 = detect ranks sharing memory)")
      ->check(in_range(0, 1 << 16))
      ->capture_default_str();
  c->add_option("--timeout", o->timeout, "Seconds a collective may wait for the other ranks (0 = forever)")
      ->check(in_range(0, 1e6))
      ->capture_default_str();
  add_json_flag(c, o->json, "Print one JSON object (rank 0)");
  c->footer(
      "Run under mpirun, e.g. mpirun -np 4 build/moe bench alltoall --hierarchical --ranks-per-node 2.\n"
      "GB/s per rank = bytes sent to the other ranks / time of the slowest rank. Row 'counts': "
      "exchange_counts\n"
      "(one int64 to every rank), the latency a dispatch pays before its all-to-all.");
  c->callback([&reg, o] { reg.action = [o] { return run(*o); }; });
}

}  // namespace moe::cli
