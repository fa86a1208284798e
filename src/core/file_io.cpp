#include "moe/core/file_io.h"

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <system_error>

#include "moe/core/error.h"

namespace moe::io {

std::string read_file(const std::string& path, const std::string& what) {
  std::error_code ec;
  MOE_CHECK(std::filesystem::is_regular_file(path, ec), what,
            ": cannot open: ", std::filesystem::exists(path, ec) ? "not a regular file" : "no such file");
  std::ifstream in(path, std::ios::binary);
  MOE_CHECK(in.is_open(), what, ": cannot open: ", std::strerror(errno));
  std::ostringstream ss;
  ss << in.rdbuf();
  MOE_CHECK(!in.bad(), what, ": read failed");
  return std::move(ss).str();
}

void write_file_atomic(const std::string& path, const std::string& what,
                       const std::function<void(std::ostream&)>& write) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    MOE_CHECK(out.is_open(), what, ": cannot create '", tmp, "': ", std::strerror(errno));
    try {
      write(out);
    } catch (...) {
      out.close();
      std::error_code ec;
      std::filesystem::remove(tmp, ec);
      throw;
    }
    out.flush();
    const bool ok = out.good();
    out.close();
    if (!ok || out.fail()) {
      std::error_code ec;
      std::filesystem::remove(tmp, ec);
      throw Error(cat(what, ": writing '", tmp, "' failed (disk full?)"));
    }
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec) {
    std::error_code ec2;
    std::filesystem::remove(tmp, ec2);
    throw Error(cat(what, ": cannot rename '", tmp, "' to '", path, "': ", ec.message()));
  }
}

}  // namespace moe::io
