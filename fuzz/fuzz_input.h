// Shared by the fuzz targets: the parsers that take a path get the input through a file.
#pragma once

#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

namespace moe::fuzz {

// A file of this process (in /dev/shm when it exists, else $TMPDIR or /tmp) that holds the input
// of the current run; rewritten on every call and removed when the process exits.
class InputFile {
 public:
  explicit InputFile(const char* name) {
    const char* dir = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : std::getenv("TMPDIR");
    if (dir == nullptr || *dir == '\0') dir = "/tmp";
    path_ = std::string(dir) + "/moe-fuzz-" + std::to_string(getpid()) + "-" + name;
  }
  ~InputFile() { std::remove(path_.c_str()); }
  InputFile(const InputFile&) = delete;
  InputFile& operator=(const InputFile&) = delete;

  // Writes the bytes; returns the path (aborts when the file cannot be written: a broken setup,
  // not a finding).
  const std::string& write(const uint8_t* data, size_t size) {
    FILE* f = std::fopen(path_.c_str(), "wb");
    if (f == nullptr || (size > 0 && std::fwrite(data, 1, size, f) != size) || std::fclose(f) != 0) {
      std::perror(path_.c_str());
      std::abort();
    }
    return path_;
  }

 private:
  std::string path_;
};

}  // namespace moe::fuzz
