// Reading a checkpoint tensor's rows a block at a time, and packing a weight from row blocks, so
// that an inference load (Transformer::load_for_inference) never holds a whole f32 weight it packs.
// Internal to src/model.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "moe/core/tensor.h"
#include "moe/kernels/weight_view.h"
#include "moe/model/transformer.h"

namespace moe::model::detail {

// The f32 rows of one tensor of a TensorSource. Where the source maps the tensor (or a mapped tensor is
// given), rows are read from the mapping (an f32 tensor's in place, other float dtypes converted into a
// block buffer as Tensor::copy_from converts them), and the pages of each block are dropped from the
// resident set when the next block is asked for and when the reader goes (drop_file_pages), so reading
// a tensor holds one block of it at most. Otherwise the tensor is loaded whole (TensorSource::load).
// The tensor is viewed as (rows, cols): rows its first dimension (1 for a scalar).
class RowReader {
 public:
  // Throws moe::Error, as Transformer::load_hf_state_dict does, naming the tensor and its file: a
  // tensor not in the source, a dtype other than f32/bf16/f16/f64, a shape other than `want`.
  RowReader(const TensorSource& src, const std::string& name, const Shape& want);
  // Over a tensor already mapped (or in memory); the same checks.
  RowReader(Tensor t, const std::string& name, const Shape& want, const std::string& file, bool mapped);
  ~RowReader();
  RowReader(const RowReader&) = delete;
  RowReader& operator=(const RowReader&) = delete;

  int64_t rows() const { return rows_; }
  int64_t cols() const { return cols_; }
  // Rows [r0, r0 + n) as f32 (n, cols), valid until the next call.
  const float* get(int64_t r0, int64_t n);
  // Every row into dst (contiguous f32 of this tensor's numel), block by block.
  void read_into(float* dst);
  // Rows per block: about kBlockBytes of f32, a multiple of kPackedPanel (at least one panel).
  int64_t block_rows() const;
  static constexpr int64_t kBlockBytes = int64_t{4} << 20;

 private:
  void check(const std::string& file, const Shape& want);
  void drop_last();
  Tensor t_;  // (rows, cols) in the stored dtype
  bool mapped_ = false;
  std::string name_;
  int64_t rows_ = 0, cols_ = 0;
  std::vector<float> buf_;
  const void* last_ = nullptr;  // the block handed out last (mapped): its pages go at the next call
  size_t last_bytes_ = 0;
};

// Bytes of an (N, K) weight packed in format f: Bf16Packed, or Int8Packed / Int4Packed with `group`.
int64_t packed_weight_bytes(kernels::WeightFormat f, int64_t N, int64_t K, int64_t group);

// Packs an (N, K) f32 matrix given block of rows by block of rows into format f at dst
// (packed_weight_bytes of it): the same bytes as packing the matrix whole (bf16-packed:
// pack_bf16_weights; int8- / int4-packed: quantize_matrix then pack_int_weights), since both formats
// lay out panels of kPackedPanel rows independently of one another (moe/kernels/weight_view.h) and
// quantization is per row. Blocks come in order; each starts at a multiple of kPackedPanel and all but
// the last are a multiple of it long.
class RowPacker {
 public:
  RowPacker(kernels::WeightFormat f, int64_t N, int64_t K, int64_t group, void* dst, std::string name);
  void add(const float* rows, int64_t n);  // the next n rows (n, K)
  int64_t done() const { return r_; }

 private:
  kernels::WeightFormat f_;
  int64_t N_, K_, group_;
  uint8_t* dst_;
  std::string name_;
  int64_t r_ = 0;
  std::vector<uint8_t> tmp_;  // one block packed (integer formats)
};

// Packs the matrix made of the rows of `parts` one after the other (e.g. an expert's gate rows then its
// up rows: [gate | up]) into a RowPacker, a block at a time: `block` rows (a multiple of kPackedPanel;
// 0: the first part's block_rows()).
void pack_rows(std::vector<RowReader*> parts, RowPacker& p, int64_t block = 0);

}  // namespace moe::model::detail
