// moe_mpi_fault MODE [TIMEOUT_S]: a job where one rank misbehaves, to check that the others neither
// hang nor pass silently (tests/mpi/check_fault.py runs it under mpirun and times the whole job).
//
//   hang  rank 1 never calls the barrier (it sleeps); the others must throw dist::CommError within
//         TIMEOUT_S (default 2), print it and bring the job down with abort_job.
//   die   rank 1 exits with code 3 before the barrier, without MPI_Finalize; mpirun must end the job
//         (or, failing that, the others time out as in `hang`).
//   ok    every rank calls the barrier: exits 0 (the control case).
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>

#include "moe/dist/comm.h"

int main(int argc, char** argv) {
  const std::string mode = argc > 1 ? argv[1] : "";
  if (mode != "hang" && mode != "die" && mode != "ok") {
    std::fprintf(stderr, "usage: moe_mpi_fault hang|die|ok [TIMEOUT_S]\n");
    return 2;
  }
  const double timeout = argc > 2 ? std::atof(argv[2]) : 2.0;
  auto world = moe::dist::mpi_world();
  world->set_timeout(timeout);
  world->barrier();  // everyone is up
  if (world->rank() == 1 && mode == "hang") {
    std::this_thread::sleep_for(std::chrono::seconds(120));
    return 0;
  }
  if (world->rank() == 1 && mode == "die") {
    std::fflush(nullptr);
    _exit(3);
  }
  try {
    world->barrier();
  } catch (const moe::dist::CommError& e) {
    std::fprintf(stderr, "moe_mpi_fault: rank %d: %s\n", world->rank(), e.what());
    world->abort_job(5);
  }
  if (mode != "ok") {
    std::fprintf(stderr, "moe_mpi_fault: rank %d: the barrier returned although rank 1 never called it\n",
                 world->rank());
    return 1;
  }
  std::printf("moe_mpi_fault: rank %d: ok\n", world->rank());
  return 0;
}
