#include "dist/comm_util.h"

namespace moe::dist::detail {

int64_t element_bytes(DType dtype, const char* op) {
  const int bits = dtype_bits(dtype);
  if (bits % 8 != 0) {
    throw Error(cat("dist: ", op, ": dtype ", dtype_name(dtype),
                    " is packed below one byte per element; communicate it as u8 bytes"));
  }
  return bits / 8;
}

std::string describe(const Communicator& comm, const char* op) {
  return cat(op, " on communicator '", comm.name(), "' (", comm.backend(), ", rank ", comm.rank(), " of ",
             comm.size(), ")");
}

void check_count_vector(const Communicator& comm, const char* op, const char* what,
                        const std::vector<int64_t>& counts) {
  if (static_cast<int64_t>(counts.size()) != comm.size()) {
    throw Error(cat("dist: ", describe(comm, op), ": ", what, " has ", counts.size(),
                    " entries, expected one per rank (", comm.size(), ")"));
  }
  for (size_t i = 0; i < counts.size(); ++i) {
    if (counts[i] < 0) {
      throw Error(cat("dist: ", describe(comm, op), ": ", what, "[", i, "] = ", counts[i], " is negative"));
    }
  }
}

void check_buffer(const Communicator& comm, const char* op, const char* what, const void* buf, int64_t n) {
  if (n < 0) throw Error(cat("dist: ", describe(comm, op), ": element count n = ", n, " is negative"));
  if (n > 0 && buf == nullptr) {
    throw Error(cat("dist: ", describe(comm, op), ": ", what, " is null but holds ", n, " elements"));
  }
}

void check_root(const Communicator& comm, const char* op, int root) {
  if (root < 0 || root >= comm.size()) {
    throw Error(
        cat("dist: ", describe(comm, op), ": root ", root, " is not a rank (size ", comm.size(), ")"));
  }
}

std::vector<int64_t> prefix_offsets(const std::vector<int64_t>& counts) {
  std::vector<int64_t> off(counts.size() + 1, 0);
  for (size_t i = 0; i < counts.size(); ++i) off[i + 1] = off[i] + counts[i];
  return off;
}

int64_t check_alltoallv(const Communicator& comm, const void* send, const std::vector<int64_t>& send_counts,
                        const void* recv, const std::vector<int64_t>& recv_counts, DType dtype) {
  const int64_t elem = element_bytes(dtype, "alltoallv");
  check_count_vector(comm, "alltoallv", "send_counts", send_counts);
  check_count_vector(comm, "alltoallv", "recv_counts", recv_counts);
  check_buffer(comm, "alltoallv", "send", send, prefix_offsets(send_counts).back());
  check_buffer(comm, "alltoallv", "recv", recv, prefix_offsets(recv_counts).back());
  const int me = comm.rank();
  if (send_counts[me] != recv_counts[me]) {
    throw Error(cat("dist: ", describe(comm, "alltoallv"), ": this rank sends ", send_counts[me],
                    " elements to itself but expects to receive ", recv_counts[me],
                    " (recv_counts must come from exchange_counts)"));
  }
  return elem;
}

int64_t bytes_to_others(const std::vector<int64_t>& counts, int self, int64_t elem) {
  int64_t total = 0;
  for (size_t i = 0; i < counts.size(); ++i) {
    if (static_cast<int>(i) != self) total += counts[i];
  }
  return total * elem;
}

void record_alltoall(CommStats& stats, const std::vector<int64_t>& send_counts,
                     const std::vector<int64_t>& recv_counts, int self, int64_t elem, double seconds) {
  stats.alltoall_calls += 1;
  stats.alltoall_bytes_sent += bytes_to_others(send_counts, self, elem);
  stats.alltoall_bytes_received += bytes_to_others(recv_counts, self, elem);
  stats.alltoall_s += seconds;
}

}  // namespace moe::dist::detail
