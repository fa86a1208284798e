// Internals of the expert store: where an expert's tensors lie in the checkpoint, how they are read
// (memory map or O_DIRECT), the layout of a resident slot, and one expert's FFN on any format.
#pragma once

#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "moe/core/dtype.h"
#include "moe/kernels/ops.h"
#include "moe/kernels/ops_quant.h"

namespace moe::infer::detail {

// Quant: the checkpoint's int8/int4 as stored (fp32 activations); W8A8 / W4A8: its int8 / int4 experts
// packed for integer dot products with int8 activations (kernels::WeightFormat::Int8Packed / Int4Packed).
enum class Format { F32, BF16, Quant, W8A8, W4A8 };
inline bool is_int_packed(Format f) { return f == Format::W8A8 || f == Format::W4A8; }

// A growable 4096-byte-aligned buffer (O_DIRECT needs aligned destinations).
class Buffer {
 public:
  Buffer() = default;
  ~Buffer();
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  uint8_t* ensure(size_t bytes);  // keeps nothing of the old contents when it grows
  uint8_t* data() const { return p_; }

 private:
  uint8_t* p_ = nullptr;
  size_t n_ = 0;
};

// One tensor's bytes in a checkpoint file.
struct Span {
  int file = -1;
  uint64_t offset = 0, bytes = 0;
  DType dtype = DType::F32;
};

// One (N, K) weight of an expert: a float tensor, or a quantized one (q, scales, mins).
struct MatrixSource {
  int64_t N = 0, K = 0;  // N == 0: absent (the gate of a non-SwiGLU expert)
  Span w;                // float weight
  int bits = 0;          // 0: float; 4 or 8: quantized
  int64_t group = 0;
  Span q, scales, mins;
  uint64_t source_bytes() const { return bits ? q.bytes + scales.bytes + mins.bytes : w.bytes; }
};

struct ExpertSource {
  MatrixSource m[3];  // gate (F, d), up (F, d), down (d, F)
  uint64_t source_bytes() const { return m[0].source_bytes() + m[1].source_bytes() + m[2].source_bytes(); }
};

// Compute-ready pointers to one expert's weights (in a slot or in the mapped file).
struct ExpertView {
  Format fmt = Format::BF16;
  const void* w[3] = {nullptr, nullptr, nullptr};  // f32 or bf16 (N, K) row-major; W8A8 / W4A8: packed
  kernels::QuantWeight q[3];                       // Format::Quant; W8A8 / W4A8: N, K and group
};

// Bytes a slot needs for this expert in format fmt (each component 64-byte aligned).
uint64_t slot_bytes(const ExpertSource& s, Format fmt);

// The checkpoint files, opened once: each memory-mapped read-only (io mmap), or opened with O_DIRECT.
class SourceFiles {
 public:
  SourceFiles(std::vector<std::string> paths, bool direct);
  ~SourceFiles();
  SourceFiles(const SourceFiles&) = delete;
  SourceFiles& operator=(const SourceFiles&) = delete;
  bool direct() const { return direct_; }
  // Mapped bytes of a span (mmap only).
  const uint8_t* mapped(const Span& s) const;
  // The bytes of spans: ptrs[i] for spans[i], in the mapping (mmap), or read with aligned O_DIRECT
  // reads into `bounce`, a buffer this call grows as needed (direct). With O_DIRECT, spans of one
  // file that lie close together (gaps up to kCoalesceGap) are read with one pread per run, since a
  // read's latency costs more than reading a short gap. Pointers stay valid until bounce is used
  // again. Throws naming the file on a span past its end or a short read.
  static constexpr uint64_t kCoalesceGap = 128 * 1024;
  void fetch_many(const std::vector<Span>& spans, Buffer& bounce, std::vector<const uint8_t*>& ptrs) const;

 private:
  std::vector<std::string> paths_;
  bool direct_;
  std::vector<int> fds_;
  std::vector<uint8_t*> maps_;
  std::vector<uint64_t> sizes_;
};

// Reads expert `s` into `slot` (slot_bytes(s, fmt) bytes, 64-byte aligned), converting float weights
// to fmt; returns the view. `scratch` is a reusable buffer for conversions and O_DIRECT reads. With
// io mmap the pages read are dropped from the resident set afterwards (moe::drop_file_pages).
// Quantized sources need fmt Quant and float sources F32 or BF16 (moe::Error otherwise).
ExpertView load_expert(const SourceFiles& files, const ExpertSource& s, Format fmt, uint8_t* slot,
                       Buffer& scratch);
// A view straight into the mapping when the checkpoint holds the expert in `fmt` already (mmap io);
// false otherwise.
bool view_in_place(const SourceFiles& files, const ExpertSource& s, Format fmt, ExpertView* view);

// One expert's FFN over m rows: out (m, d) = down(act(gate(x_rows), up(x_rows))), x_rows[i] =
// x[gather ? gather[i] : i]. G, U, H are scratch of at least m·F floats each.
struct ExpertCall {
  const ExpertView* w = nullptr;
  kernels::Activation act = kernels::Activation::SwiGLU;
  int64_t m = 0, d = 0, F = 0;
  const float* x = nullptr;
  const int32_t* gather = nullptr;
  float* out = nullptr;
  float *G = nullptr, *U = nullptr, *H = nullptr;
};
// The products and the activation run as ops on backend `be` (the MoE layer's; a host backend: the
// weights are host memory or a mapped file).
void compute_expert(kernels::Backend be, const ExpertCall& c);

}  // namespace moe::infer::detail
