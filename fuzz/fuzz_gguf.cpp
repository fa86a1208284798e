// Fuzzes the GGUF reader: any bytes as a .gguf file. The reader must refuse a bad file with
// moe::Error (counts and lengths are checked against the file size before anything is allocated);
// on a header it accepts, every tensor must load (its bytes were checked to lie in the file) and
// the model config and tokenizer are read from the metadata as `--model FILE.gguf` reads them.
#include <cstddef>
#include <cstdint>

#include "fuzz_input.h"
#include "moe/core/error.h"
#include "moe/model/gguf_model.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static moe::fuzz::InputFile file("model.gguf");
  const std::string& path = file.write(data, size);
  try {
    const moe::gguf::Reader r(path);
    for (const moe::gguf::TensorInfo& t : r.tensors()) {
      if (t.offset < r.data_start() || t.bytes == 0) __builtin_trap();
      const moe::Tensor v = r.load_f32(t.name);
      if (v.numel() != t.numel()) __builtin_trap();
    }
    try {
      (void)moe::model::gguf_model_config(r);
    } catch (const moe::Error&) {
    }
    (void)moe::model::gguf_tokenizer_json(r);
  } catch (const moe::Error&) {
    // refused with a message: the expected outcome for a malformed file
  }
  return 0;
}
