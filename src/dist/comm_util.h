// Checks and helpers shared by the communicator implementations (self, mpi, nccl, hierarchical).
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

#include "moe/dist/comm.h"

namespace moe::dist::detail {

// Bytes of one element of `dtype`; throws for dtypes that are not whole bytes (packed int4).
int64_t element_bytes(DType dtype, const char* op);

// "alltoallv on communicator 'ep' (mpi, rank 1 of 4)": the subject of every message.
std::string describe(const Communicator& comm, const char* op);

// Validates alltoallv arguments: counts of length size(), none negative, buffers present when
// something is sent or received. Returns the element size.
int64_t check_alltoallv(const Communicator& comm, const void* send, const std::vector<int64_t>& send_counts,
                        const void* recv, const std::vector<int64_t>& recv_counts, DType dtype);
void check_count_vector(const Communicator& comm, const char* op, const char* what,
                        const std::vector<int64_t>& counts);
void check_buffer(const Communicator& comm, const char* op, const char* what, const void* buf, int64_t n);
void check_root(const Communicator& comm, const char* op, int root);

// Payload bytes to / from other ranks (the self block excluded), for CommStats.
int64_t bytes_to_others(const std::vector<int64_t>& counts, int self, int64_t elem);

// Adds one alltoallv to `stats`: a call, its payload to and from other ranks, the seconds it took.
void record_alltoall(CommStats& stats, const std::vector<int64_t>& send_counts,
                     const std::vector<int64_t>& recv_counts, int self, int64_t elem, double seconds);

// Seconds since `t0` on the steady clock.
inline double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// out[i] = sum of counts[0..i) (size + 1 entries).
std::vector<int64_t> prefix_offsets(const std::vector<int64_t>& counts);

}  // namespace moe::dist::detail
