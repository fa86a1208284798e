// Shared pieces of the oracle test tools (*_oracle_run.cpp): scalar tensors for their output files
// and the main() that maps errors to exit codes (1 usage, 2 moe::Error on one line, 3 internal).
#pragma once

#include <cstdint>
#include <cstdio>
#include <exception>
#include <string>
#include <vector>

#include "moe/core/error.h"
#include "moe/core/tensor.h"

namespace oracle_tool {

inline moe::Tensor f64_scalar(double v) { return moe::Tensor::from({v}, {}, moe::DType::F64); }

inline moe::Tensor i64_scalar(int64_t v) {
  moe::Tensor t = moe::Tensor::empty({}, moe::DType::I64);
  *t.data<int64_t>() = v;
  return t;
}

inline moe::Tensor i64_vector(const std::vector<int64_t>& v) {
  moe::Tensor t = moe::Tensor::empty({static_cast<int64_t>(v.size())}, moe::DType::I64);
  for (size_t i = 0; i < v.size(); ++i) t.data<int64_t>()[i] = v[i];
  return t;
}

// parse(argc, argv, args) -> bool (false: print usage, exit 1); run(args) -> exit code.
template <typename Args, typename Parse, typename Run>
int tool_main(const char* name, const char* usage, int argc, char** argv, Parse parse, Run run) {
  try {
    Args a;
    if (!parse(argc, argv, a)) {
      std::fputs(usage, stderr);
      return 1;
    }
    return run(a);
  } catch (const moe::Error& e) {
    std::string msg = e.what();
    for (char& c : msg)
      if (c == '\n') c = ' ';
    std::fprintf(stderr, "%s: error: %s\n", name, msg.c_str());
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s: internal error: %s\n", name, e.what());
    return 3;
  }
}

}  // namespace oracle_tool
