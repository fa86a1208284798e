// Argument checks shared by the op dispatchers: each throws moe::Error naming the op, the argument
// and the bad value.
#pragma once

#include <cstdint>
#include <string>

#include "moe/core/error.h"

namespace moe::kernels::validate {

inline void check_size(const char* op, const char* name, int64_t v) {
  MOE_CHECK(v >= 0, op, ": ", name, " must be >= 0, got ", v);
}

inline void check_ptr(const char* op, const char* name, const void* p) {
  MOE_CHECK(p != nullptr, op, ": ", name, " is null");
}

inline void check_stride(const char* op, const char* name, int64_t ld, int64_t min_ld) {
  MOE_CHECK(ld >= min_ld, op, ": ", name, " = ", ld, " is smaller than the row length ", min_ld);
}

// offsets (n + 1) must start at 0 and never decrease.
inline void check_offsets(const char* op, const char* name, const int32_t* offsets, int64_t n) {
  MOE_CHECK(offsets[0] == 0, op, ": ", name, "[0] must be 0, got ", offsets[0]);
  for (int64_t i = 0; i < n; ++i) {
    MOE_CHECK(offsets[i + 1] >= offsets[i], op, ": ", name, " must not decrease, but ", name, "[", i + 1,
              "] = ", offsets[i + 1], " < ", name, "[", i, "] = ", offsets[i]);
  }
}

inline void check_rows(const char* op, const char* name, const int32_t* rows, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    MOE_CHECK(rows[i] >= 0, op, ": ", name, "[", i, "] = ", rows[i], " is negative");
  }
}

// A row buffer may be null only when it has no rows (rows == 0; unknown rows: -1).
inline void check_rows_ptr(const char* op, const char* name, const void* p, int64_t rows) {
  MOE_CHECK(p != nullptr || rows == 0, op, ": ", name, " is null",
            rows > 0 ? cat(" but there are ", rows, " rows") : std::string());
}

}  // namespace moe::kernels::validate
