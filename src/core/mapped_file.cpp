// Tensors over memory-mapped files (moe/core/mapped_file.h).
#include "moe/core/mapped_file.h"

#include <cerrno>
#include <cstring>
#include <memory>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

namespace moe {

namespace {

size_t page_size() {
  static const size_t p = [] {
    const long s = ::sysconf(_SC_PAGESIZE);
    return s > 0 ? static_cast<size_t>(s) : size_t{4096};
  }();
  return p;
}

// One mapping, unmapped when the last tensor over it goes.
struct Mapping {
  void* base = nullptr;
  size_t bytes = 0;
  ~Mapping() {
    if (base) ::munmap(base, bytes);
  }
};

}  // namespace

Tensor map_file_tensor(const std::string& path, uint64_t offset, const Shape& shape, DType dtype,
                       std::string name) {
  const uint64_t bytes = static_cast<uint64_t>(
      dtype == DType::I4 ? (shape_numel(shape) + 1) / 2 : shape_numel(shape) * (dtype_bits(dtype) / 8));
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  MOE_CHECK(fd >= 0, "cannot open '", path, "' to map tensor '", name, "': ", std::strerror(errno));
  struct stat st {};
  const bool stat_ok = ::fstat(fd, &st) == 0;
  const uint64_t size = stat_ok ? static_cast<uint64_t>(st.st_size) : 0;
  if (!stat_ok || offset > size || bytes > size - offset) {
    ::close(fd);
    throw Error(cat("'", path, "': tensor '", name, "' (", bytes, " bytes at offset ", offset,
                    ") lies beyond the end of the file (", size, " bytes)"));
  }
  if (bytes == 0) {
    ::close(fd);
    return Tensor::empty(shape, dtype, std::move(name));
  }
  const uint64_t start = offset / page_size() * page_size(), skip = offset - start;
  auto m = std::make_shared<Mapping>();
  m->bytes = static_cast<size_t>(skip + bytes);
  void* p = ::mmap(nullptr, m->bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, static_cast<off_t>(start));
  const int err = errno;
  ::close(fd);
  MOE_CHECK(p != MAP_FAILED, "cannot map tensor '", name, "' of '", path, "' (", bytes, " bytes at offset ",
            offset, "): ", std::strerror(err));
  m->base = p;
  void* data = static_cast<char*>(p) + skip;
  return Tensor::borrow(data, shape, dtype, std::move(m), std::move(name));
}

void drop_file_pages(const void* p, size_t bytes) {
#ifdef MADV_DONTNEED
  if (bytes == 0 || p == nullptr) return;
  const uintptr_t a = reinterpret_cast<uintptr_t>(p), ps = page_size();
  const uintptr_t lo = a / ps * ps, hi = (a + bytes + ps - 1) / ps * ps;
  (void)::madvise(reinterpret_cast<void*>(lo), hi - lo, MADV_DONTNEED);
#else
  (void)p, (void)bytes;
#endif
}

}  // namespace moe
