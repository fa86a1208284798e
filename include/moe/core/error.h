// Errors are values the caller can read: the library throws moe::Error with a message that names
// the tensor, the expected and the actual value. It never exits or aborts on bad input.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

namespace moe {

class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Concatenates any streamable values into one string: cat("k = ", k, " > E = ", E).
template <typename... Args>
std::string cat(Args&&... args) {
  std::ostringstream os;
  (os << ... << std::forward<Args>(args));
  return os.str();
}

}  // namespace moe

// MOE_CHECK(cond, parts...) throws moe::Error(cat(parts...)) when cond is false.
#define MOE_CHECK(cond, ...)                                  \
  do {                                                        \
    if (!(cond)) throw ::moe::Error(::moe::cat(__VA_ARGS__)); \
  } while (0)
