// Row blocks of checkpoint tensors and packing from them (src/model/row_pack.h).
#include "model/row_pack.h"

#include <algorithm>
#include <cstring>

#include "moe/core/error.h"
#include "moe/core/mapped_file.h"
#include "moe/kernels/ops_quant.h"
#include "moe/kernels/weights.h"

namespace moe::model::detail {

using kernels::kPackedPanel;
using kernels::WeightFormat;

RowReader::RowReader(const TensorSource& src, const std::string& name, const Shape& want) : name_(name) {
  const std::string file = src.file ? src.file(name) : std::string();
  Tensor t = src.map ? src.map(name) : Tensor();
  mapped_ = t.defined();
  if (!mapped_) t = src.load(name);
  t_ = std::move(t);
  check(file, want);
}

RowReader::RowReader(Tensor t, const std::string& name, const Shape& want, const std::string& file,
                     bool mapped)
    : t_(std::move(t)), mapped_(mapped), name_(name) {
  check(file, want);
}

RowReader::~RowReader() { drop_last(); }

void RowReader::check(const std::string& file, const Shape& want) {
  const std::string in = file.empty() ? std::string() : " in " + file;
  MOE_CHECK(t_.defined(), "checkpoint: tensor '", name_, "'", in, " could not be read");
  const DType t = t_.dtype();
  MOE_CHECK(t == DType::F32 || t == DType::BF16 || t == DType::F16 || t == DType::F64, "checkpoint: tensor '",
            name_, "'", in, " has dtype ", dtype_name(t), "; expected a float type");
  MOE_CHECK(t_.shape() == want, "checkpoint: tensor '", name_, "'", in, ": expected shape ", shape_str(want),
            ", got ", shape_str(t_.shape()));
  MOE_CHECK(t_.is_contiguous(), "checkpoint: tensor '", name_, "'", in, " is not contiguous");
  rows_ = want.empty() ? 1 : want[0];
  cols_ = rows_ > 0 ? shape_numel(want) / rows_ : 0;
  t_ = t_.reshape({rows_, cols_});
}

void RowReader::drop_last() {
  if (mapped_ && last_bytes_ > 0) drop_file_pages(last_, last_bytes_);
  last_ = nullptr, last_bytes_ = 0;
}

int64_t RowReader::block_rows() const {
  const int64_t per = std::max<int64_t>(1, cols_) * static_cast<int64_t>(sizeof(float));
  return std::max<int64_t>(kPackedPanel, kBlockBytes / per / kPackedPanel * kPackedPanel);
}

const float* RowReader::get(int64_t r0, int64_t n) {
  MOE_CHECK(r0 >= 0 && n >= 0 && r0 + n <= rows_, "checkpoint: tensor '", name_, "': rows [", r0, ", ",
            r0 + n, ") out of ", rows_);
  drop_last();
  const size_t elem = static_cast<size_t>(dtype_bits(t_.dtype()) / 8);
  const char* block = static_cast<const char*>(t_.raw()) + static_cast<size_t>(r0 * cols_) * elem;
  if (mapped_) last_ = block, last_bytes_ = static_cast<size_t>(n * cols_) * elem;
  if (t_.dtype() == DType::F32) return reinterpret_cast<const float*>(block);
  buf_.resize(static_cast<size_t>(n * cols_));
  Tensor out = Tensor::borrow(buf_.data(), {n, cols_}, DType::F32, nullptr, name_);
  out.copy_from(t_.slice(0, r0, r0 + n));  // the conversion of load_hf_state_dict's copy
  return buf_.data();
}

void RowReader::read_into(float* dst) {
  const int64_t b = block_rows();
  for (int64_t r = 0; r < rows_; r += b) {
    const int64_t n = std::min(b, rows_ - r);
    std::memcpy(dst + r * cols_, get(r, n), sizeof(float) * static_cast<size_t>(n * cols_));
  }
  drop_last();
}

int64_t packed_weight_bytes(WeightFormat f, int64_t N, int64_t K, int64_t group) {
  switch (f) {
    case WeightFormat::Bf16Packed:
      return kernels::packed_bf16_bytes(N, K);
    case WeightFormat::Int8Packed:
      return kernels::packed_int8_bytes(N, K, group);
    case WeightFormat::Int4Packed:
      return kernels::packed_int4_bytes(N, K, group);
    default:
      throw Error(cat("packing: format ", kernels::weight_format_name(f), " is not a packed one"));
  }
}

RowPacker::RowPacker(WeightFormat f, int64_t N, int64_t K, int64_t group, void* dst, std::string name)
    : f_(f), N_(N), K_(K), group_(group), dst_(static_cast<uint8_t*>(dst)), name_(std::move(name)) {
  (void)packed_weight_bytes(f, N, K, group);  // throws on a format that is not packed
}

void RowPacker::add(const float* rows, int64_t n) {
  MOE_CHECK(r_ % kPackedPanel == 0 && n >= 0 && r_ + n <= N_ && (n % kPackedPanel == 0 || r_ + n == N_),
            "packing '", name_, "': rows [", r_, ", ", r_ + n, ") of ", N_, " are not whole panels of ",
            kPackedPanel);
  if (n == 0) return;
  const int64_t r0 = r_;  // first row of the block: a multiple of the panel
  if (f_ == WeightFormat::Bf16Packed) {
    const int64_t offset = r0 / kPackedPanel * kernels::packed_bf16_bytes(kPackedPanel, K_);
    kernels::pack_bf16_weights({.format = WeightFormat::F32, .N = n, .K = K_, .data = rows}, 1, dst_ + offset,
                               name_.c_str());
    r_ += n;
    return;
  }
  const bool int8 = f_ == WeightFormat::Int8Packed;
  const kernels::QuantizedMatrix q = kernels::quantize_matrix(rows, n, K_, int8 ? 8 : 4, group_, name_);
  const kernels::WeightView src = kernels::weight_view(q.view());
  tmp_.resize(static_cast<size_t>(kernels::packed_int_bytes(src)));
  kernels::pack_int_weights(src, 1, tmp_.data(), name_.c_str());
  // Sections, each panel after panel: the words, then the per-panel-and-group parameter arrays of
  // equal size (int8: the scales; int4: the scales and the mins); per panel, each has a fixed size.
  const int64_t words_panel = int8 ? kernels::packed_int8_words_bytes(kPackedPanel, K_)
                                   : kernels::packed_int4_words_bytes(kPackedPanel, K_);
  const int64_t arrays = int8 ? 1 : 2;
  const int64_t params_panel = (packed_weight_bytes(f_, kPackedPanel, K_, group_) - words_panel) / arrays;
  const int64_t p0 = r0 / kPackedPanel, pn = kernels::packed_bf16_panels(n),
                pN = kernels::packed_bf16_panels(N_);
  MOE_CHECK(static_cast<int64_t>(tmp_.size()) == pn * (words_panel + arrays * params_panel), "packing '",
            name_, "': the packed block is not words plus ", arrays, " parameter arrays");
  const uint8_t* t = tmp_.data();
  std::memcpy(dst_ + p0 * words_panel, t, static_cast<size_t>(pn * words_panel));
  for (int64_t a = 0; a < arrays; ++a)
    std::memcpy(dst_ + pN * words_panel + a * pN * params_panel + p0 * params_panel,
                t + pn * words_panel + a * pn * params_panel, static_cast<size_t>(pn * params_panel));
  r_ += n;
}

void pack_rows(std::vector<RowReader*> parts, RowPacker& p, int64_t block) {
  int64_t total = 0, K = -1;
  for (RowReader* r : parts) {
    total += r->rows();
    MOE_CHECK(K < 0 || r->cols() == K, "packing: the parts of one matrix differ in width");
    K = r->cols();
  }
  if (parts.empty() || total == 0) return;
  if (block <= 0) block = parts[0]->block_rows();
  MOE_CHECK(block % kPackedPanel == 0, "packing: blocks of ", block, " rows are not whole panels");
  std::vector<float> buf;
  size_t part = 0;
  int64_t in_part = 0;  // next row of parts[part]
  for (int64_t g = 0; g < total; g += block) {
    const int64_t n = std::min(block, total - g);
    while (in_part == parts[part]->rows()) ++part, in_part = 0;
    if (parts[part]->rows() - in_part >= n) {  // within one part: no copy
      p.add(parts[part]->get(in_part, n), n);
      in_part += n;
      continue;
    }
    buf.resize(static_cast<size_t>(n * K));
    for (int64_t done = 0; done < n;) {
      while (in_part == parts[part]->rows()) ++part, in_part = 0;
      const int64_t take = std::min(n - done, parts[part]->rows() - in_part);
      std::memcpy(buf.data() + done * K, parts[part]->get(in_part, take), sizeof(float) * take * K);
      in_part += take, done += take;
    }
    p.add(buf.data(), n);
  }
}

}  // namespace moe::model::detail
