// Fuzzes the safetensors reader: any bytes as a .safetensors file. The reader must refuse a bad
// file with moe::Error; a header it accepts must load every tensor (the entries were checked
// against the file size, so loading reads within the file).
#include <cstddef>
#include <cstdint>

#include "fuzz_input.h"
#include "moe/core/error.h"
#include "moe/model/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static moe::fuzz::InputFile file("model.safetensors");
  const std::string& path = file.write(data, size);
  try {
    moe::SafetensorsReader reader(path);
    for (const std::string& name : reader.names()) {
      const moe::SafetensorsEntry& e = reader.entry(name);
      if (e.end < e.begin) __builtin_trap();
    }
    (void)reader.metadata();
    (void)reader.load_all();
  } catch (const moe::Error&) {
    // refused with a message: the expected outcome for a malformed file
  }
  return 0;
}
