// Internals of the MPI communicator that other dist files (and the MPI tests) use.
#pragma once

#include <cstdint>

#include "moe/dist/comm.h"

namespace moe::dist::detail {

// Ranks per node of an MPI communicator laid out node-major (rank = node · L + local), found with
// MPI_Comm_split_type(MPI_COMM_TYPE_SHARED). Collective over `comm`. Returns 0 when `comm` is not
// an MPI communicator; throws moe::Error (on every rank alike) when the nodes hold different numbers
// of ranks or the ranks are not node-major.
int mpi_ranks_per_node(Communicator& comm);

// The largest count the MPI calls are given in one piece (INT_MAX: Open MPI 4.1 has no large-count
// MPI_*_c calls). Larger transfers go in pieces. Tests lower it to run the piecewise paths on small
// buffers; `limit` <= 0 restores INT_MAX. Not thread-safe: set it before communicating.
void set_mpi_count_limit(int64_t limit);
int64_t mpi_count_limit();

}  // namespace moe::dist::detail
