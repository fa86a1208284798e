// A temporary file path that no other test shares: ctest runs tests of one
// binary in parallel processes, so fixed names in /tmp race each other.
#pragma once

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <string>

namespace moe::testutil {

// temp_directory/moe_<test suite>_<test name>_<pid>_<stem>
inline std::string unique_temp_path(const std::string& stem) {
  const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
  std::string tag = "moe_";
  if (info != nullptr) tag += std::string(info->test_suite_name()) + "_" + info->name() + "_";
  for (char& c : tag)
    if (c == '/') c = '_';
  tag += std::to_string(::getpid()) + "_" + stem;
  return (std::filesystem::temp_directory_path() / tag).string();
}

}  // namespace moe::testutil
