// Tensors over memory-mapped files, and dropping the pages of a mapping from the resident set.
//
// A mapped tensor reads the file's bytes in place (no copy): a page costs memory only once it is
// touched, and only while it stays mapped and resident, so a table of which a run reads a few rows
// (a token embedding) costs those rows, as in llama.cpp. The mapping is private and writable: a
// write makes a private copy of its page and never reaches the file. It lives as long as any tensor
// shares its storage. Truncating the file while it is mapped makes later reads fault (SIGBUS); the
// checkpoint writers of this project replace files by rename, which leaves a mapping intact.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "moe/core/tensor.h"

namespace moe {

// The tensor of `shape` and `dtype` whose bytes start `offset` bytes into the file at `path` (the
// mapping covers just them, page-aligned). Throws moe::Error naming `path` and `name` when the file
// cannot be opened or mapped or is shorter than offset + the tensor's bytes.
Tensor map_file_tensor(const std::string& path, uint64_t offset, const Shape& shape, DType dtype,
                       std::string name);

// Drops the pages covering [p, p + bytes) from this process's resident set (madvise MADV_DONTNEED;
// whole pages, rounded outwards). Only for clean, unwritten pages of a file mapping, such as a mapped
// tensor that was only read: a later read maps them again from the file (the page cache), so nothing
// is lost. Does nothing for bytes == 0 or where madvise is not available.
void drop_file_pages(const void* p, size_t bytes);

}  // namespace moe
