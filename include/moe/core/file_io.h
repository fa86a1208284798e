// File helpers: whole-file reads and atomic writes (temp file + rename), for the layers that read
// and write text files (tokenizer.json, corpora, shards, checkpoint indexes).
#pragma once

#include <functional>
#include <ostream>
#include <string>

namespace moe::io {

// Contents of a regular file; `what` names it in errors ("tokenizer.json 'x.json'").
std::string read_file(const std::string& path, const std::string& what);

// Streams the file through `write` into path + ".tmp", flushes and closes it, then renames it to
// `path`, so a reader never sees a half-written file. The temp file is removed on failure.
void write_file_atomic(const std::string& path, const std::string& what,
                       const std::function<void(std::ostream&)>& write);

}  // namespace moe::io
