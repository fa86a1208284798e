// Reading experts from checkpoint files (memory map or O_DIRECT), slot layout, one expert's FFN.
#include "expert_io.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>

#include "moe/core/error.h"
#include "moe/core/mapped_file.h"
#include "moe/core/parallel.h"
#include "moe/kernels/ops_bf16.h"
#include "moe/kernels/weights.h"

namespace moe::infer::detail {

namespace {
constexpr uint64_t kAlign = 4096;  // O_DIRECT offsets, sizes and buffers are multiples of this

uint64_t round_up(uint64_t x, uint64_t a) { return (x + a - 1) / a * a; }

// Float weight bytes per element in a compute format.
uint64_t elem_bytes(Format f) { return f == Format::F32 ? 4 : 2; }

// Converts n elements of a float tensor of dtype src into dst of format f (F32 or BF16).
void convert(const uint8_t* src, DType dt, int64_t n, Format f, uint8_t* dst) {
  auto get = [&](int64_t i) -> float {
    switch (dt) {
      case DType::F32: {
        float v;
        std::memcpy(&v, src + 4 * i, 4);
        return v;
      }
      case DType::BF16: {
        uint16_t h;
        std::memcpy(&h, src + 2 * i, 2);
        return bf16_to_f32(h);
      }
      default: {
        uint16_t h;
        std::memcpy(&h, src + 2 * i, 2);
        return f16_to_f32(h);
      }
    }
  };
  if ((f == Format::F32 && dt == DType::F32) || (f == Format::BF16 && dt == DType::BF16)) {
    std::memcpy(dst, src, static_cast<size_t>(n) * elem_bytes(f));
    return;
  }
  if (f == Format::F32) {
    float* o = reinterpret_cast<float*>(dst);
    for (int64_t i = 0; i < n; ++i) o[i] = get(i);
  } else {
    uint16_t* o = reinterpret_cast<uint16_t*>(dst);
    for (int64_t i = 0; i < n; ++i) o[i] = f32_to_bf16(get(i));
  }
}
}  // namespace

Buffer::~Buffer() { std::free(p_); }

uint8_t* Buffer::ensure(size_t bytes) {
  if (bytes <= n_) return p_;
  std::free(p_);
  n_ = round_up(std::max<size_t>(bytes, 1), kAlign);
  p_ = static_cast<uint8_t*>(std::aligned_alloc(kAlign, n_));
  if (!p_) {
    n_ = 0;
    throw Error(cat("expert store: cannot allocate ", bytes, " bytes"));
  }
  return p_;
}

uint64_t slot_bytes(const ExpertSource& s, Format fmt) {
  uint64_t b = 0;
  for (const MatrixSource& m : s.m) {
    if (m.N == 0) continue;
    if (fmt == Format::Quant)
      b += round_up(m.q.bytes, 64) + round_up(m.scales.bytes, 64) + round_up(m.mins.bytes, 64);
    else if (fmt == Format::W8A8)
      b += round_up(static_cast<uint64_t>(kernels::packed_int8_bytes(m.N, m.K, m.group)), 64);
    else if (fmt == Format::W4A8)
      b += round_up(static_cast<uint64_t>(kernels::packed_int4_bytes(m.N, m.K, m.group)), 64);
    else
      b += round_up(static_cast<uint64_t>(m.N * m.K) * elem_bytes(fmt), 64);
  }
  return b;
}

SourceFiles::SourceFiles(std::vector<std::string> paths, bool direct)
    : paths_(std::move(paths)), direct_(direct) {
  for (const std::string& p : paths_) {
    const int fd = ::open(p.c_str(), O_RDONLY | (direct ? O_DIRECT : 0));
    if (fd < 0) {
      const int err = errno;
      for (size_t i = 0; i < fds_.size(); ++i) {
        if (maps_[i]) ::munmap(maps_[i], sizes_[i]);
        ::close(fds_[i]);
      }
      throw Error(cat("expert store: cannot open '", p, "'", direct ? " with O_DIRECT" : "", ": ",
                      std::strerror(err)));
    }
    struct stat st {};
    ::fstat(fd, &st);
    const uint64_t size = static_cast<uint64_t>(st.st_size);
    uint8_t* map = nullptr;
    if (!direct && size > 0) {
      void* m = ::mmap(nullptr, size, PROT_READ, MAP_SHARED, fd, 0);
      if (m == MAP_FAILED) {
        ::close(fd);
        throw Error(cat("expert store: cannot map '", p, "': ", std::strerror(errno)));
      }
      map = static_cast<uint8_t*>(m);
    }
    fds_.push_back(fd);
    maps_.push_back(map);
    sizes_.push_back(size);
  }
}

SourceFiles::~SourceFiles() {
  for (size_t i = 0; i < fds_.size(); ++i) {
    if (maps_[i]) ::munmap(maps_[i], sizes_[i]);
    ::close(fds_[i]);
  }
}

const uint8_t* SourceFiles::mapped(const Span& s) const {
  MOE_CHECK(!direct_ && s.file >= 0 && maps_[s.file], "expert store: no mapping of the checkpoint");
  MOE_CHECK(s.offset + s.bytes <= sizes_[s.file], "expert store: '", paths_[s.file],
            "' is shorter than its header says (", sizes_[s.file], " bytes, a tensor ends at ",
            s.offset + s.bytes, ")");
  return maps_[s.file] + s.offset;
}

void SourceFiles::fetch_many(const std::vector<Span>& spans, Buffer& bounce,
                             std::vector<const uint8_t*>& ptrs) const {
  ptrs.assign(spans.size(), nullptr);
  if (!direct_) {
    for (size_t i = 0; i < spans.size(); ++i) ptrs[i] = mapped(spans[i]);
    return;
  }
  for (const Span& s : spans)
    MOE_CHECK(s.file >= 0 && s.offset + s.bytes <= sizes_[s.file], "expert store: '", paths_[s.file],
              "' is shorter than its header says (", sizes_[s.file], " bytes, a tensor ends at ",
              s.offset + s.bytes, ")");
  // Runs of spans (by file, then offset) with gaps of at most kCoalesceGap, each read with one
  // aligned pread into its own part of the bounce buffer.
  std::vector<size_t> order(spans.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    return spans[a].file != spans[b].file ? spans[a].file < spans[b].file : spans[a].offset < spans[b].offset;
  });
  struct Run {
    int file;
    uint64_t begin, end;  // aligned
    size_t first, last;   // [first, last) in order
    uint64_t at = 0;      // offset in the bounce buffer
  };
  std::vector<Run> runs;
  for (size_t j = 0; j < order.size(); ++j) {
    const Span& s = spans[order[j]];
    const uint64_t b = s.offset / kAlign * kAlign, e = round_up(s.offset + s.bytes, kAlign);
    if (!runs.empty() && runs.back().file == s.file && b <= runs.back().end + kCoalesceGap) {
      runs.back().end = std::max(runs.back().end, e);
      runs.back().last = j + 1;
    } else {
      runs.push_back({s.file, b, e, j, j + 1});
    }
  }
  uint64_t total = 0;
  for (Run& r : runs) r.at = total, total += r.end - r.begin;
  uint8_t* buf = bounce.ensure(total);
  for (const Run& run : runs) {
    uint64_t done = 0;
    const uint64_t want = run.end - run.begin;
    while (done < want) {
      const ssize_t r =
          ::pread(fds_[run.file], buf + run.at + done, want - done, static_cast<off_t>(run.begin + done));
      if (r < 0 && errno == EINTR) continue;
      MOE_CHECK(r >= 0, "expert store: reading '", paths_[run.file], "' at ", run.begin + done, ": ",
                std::strerror(errno));
      if (r == 0) break;  // end of file: the last block is short
      done += static_cast<uint64_t>(r);
    }
    for (size_t j = run.first; j < run.last; ++j) {
      const Span& s = spans[order[j]];
      MOE_CHECK(run.begin + done >= s.offset + s.bytes, "expert store: '", paths_[run.file], "' ended at ",
                run.begin + done, " bytes, before the tensor's end at ", s.offset + s.bytes);
      ptrs[order[j]] = buf + run.at + (s.offset - run.begin);
    }
  }
}

ExpertView load_expert(const SourceFiles& files, const ExpertSource& s, Format fmt, uint8_t* slot,
                       Buffer& scratch) {
  // every span of the expert fetched at once (one read per run of nearby spans with O_DIRECT)
  std::vector<Span> spans;
  for (const MatrixSource& m : s.m) {
    if (m.N == 0) continue;
    if (m.bits) {
      spans.push_back(m.q);
      spans.push_back(m.scales);
      if (m.mins.bytes) spans.push_back(m.mins);
    } else {
      spans.push_back(m.w);
    }
  }
  std::vector<const uint8_t*> src;
  files.fetch_many(spans, scratch, src);
  ExpertView v;
  v.fmt = fmt;
  uint8_t* p = slot;
  size_t next = 0;
  auto copy = [&](const Span& sp) {
    std::memcpy(p, src[next++], sp.bytes);
    const uint8_t* at = p;
    p += round_up(sp.bytes, 64);
    return at;
  };
  for (int i = 0; i < 3; ++i) {
    const MatrixSource& m = s.m[i];
    if (m.N == 0) continue;
    if (m.bits && is_int_packed(fmt)) {  // packed from the fetched integers and their f16 scales (mins)
      const int bits = fmt == Format::W8A8 ? 8 : 4;
      MOE_CHECK(m.bits == bits, "expert store: ", bits == 8 ? "w8a8" : "w4a8", " needs int", bits,
                " experts, this one is int", m.bits);
      kernels::QuantWeight& q = v.q[i];
      q.bits = bits, q.N = m.N, q.K = m.K, q.group = m.group;
      std::vector<uint16_t> scales(m.scales.bytes / 2), mins(m.mins.bytes / 2);  // aligned for the reads
      std::memcpy(scales.data(), src[next + 1], m.scales.bytes);
      if (bits == 4) std::memcpy(mins.data(), src[next + 2], m.mins.bytes);
      const kernels::WeightView from{
          .format = bits == 8 ? kernels::WeightFormat::Int8 : kernels::WeightFormat::Int4,
          .N = m.N,
          .K = m.K,
          .data = src[next],
          .scales = scales.data(),
          .mins = bits == 4 ? mins.data() : nullptr,
          .group = m.group};
      kernels::pack_int_weights(from, 1, p, "expert weights");
      next += bits == 8 ? 2 : 3;
      v.w[i] = p;
      p += round_up(static_cast<uint64_t>(kernels::packed_int_bytes(from)), 64);
      continue;
    }
    if (m.bits) {
      MOE_CHECK(fmt == Format::Quant, "expert store: a quantized expert needs the quantized compute format");
      kernels::QuantWeight& q = v.q[i];
      q.bits = m.bits;
      q.N = m.N;
      q.K = m.K;
      q.group = m.group;
      q.q = copy(m.q);
      q.scales = reinterpret_cast<const uint16_t*>(copy(m.scales));
      if (m.mins.bytes) q.mins = reinterpret_cast<const uint16_t*>(copy(m.mins));
      continue;
    }
    MOE_CHECK(fmt != Format::Quant,
              "expert store: a float expert cannot be computed in the quantized format");
    const int64_t n = m.N * m.K;
    convert(src[next++], m.w.dtype, n, fmt, p);  // a copy when the dtype is the format's
    v.w[i] = p;
    p += round_up(static_cast<uint64_t>(n) * elem_bytes(fmt), 64);
  }
  // The slot holds the expert now: the mapped pages it came from leave the resident set (they stay in
  // the page cache), so a store whose experts are all resident does not hold them twice.
  if (!files.direct())
    for (size_t i = 0; i < spans.size(); ++i) drop_file_pages(src[i], spans[i].bytes);
  return v;
}

bool view_in_place(const SourceFiles& files, const ExpertSource& s, Format fmt, ExpertView* view) {
  if (files.direct() || is_int_packed(fmt)) return false;  // W8A8 / W4A8: the checkpoint is not packed
  ExpertView v;
  v.fmt = fmt;
  for (int i = 0; i < 3; ++i) {
    const MatrixSource& m = s.m[i];
    if (m.N == 0) continue;
    if (m.bits) {
      if (fmt != Format::Quant) return false;
      kernels::QuantWeight& q = v.q[i];
      q.bits = m.bits;
      q.N = m.N;
      q.K = m.K;
      q.group = m.group;
      q.q = files.mapped(m.q);
      q.scales = reinterpret_cast<const uint16_t*>(files.mapped(m.scales));
      q.mins = m.mins.bytes ? reinterpret_cast<const uint16_t*>(files.mapped(m.mins)) : nullptr;
      // f16 scales must be 2-byte aligned in the mapping (safetensors writers align by element size)
      if ((reinterpret_cast<uintptr_t>(q.scales) | reinterpret_cast<uintptr_t>(q.mins)) & 1) return false;
    } else {
      const bool same = (fmt == Format::F32 && m.w.dtype == DType::F32) ||
                        (fmt == Format::BF16 && m.w.dtype == DType::BF16);
      if (!same) return false;
      const uint8_t* p = files.mapped(m.w);
      if (reinterpret_cast<uintptr_t>(p) % elem_bytes(fmt)) return false;
      v.w[i] = p;
    }
  }
  *view = v;
  return true;
}

namespace {
// C (m, N) = rows of A (gathered) · W^T for one weight of the expert.
void linear(kernels::Backend be, const ExpertView& w, int i, int64_t m, int64_t N, int64_t K, const float* A,
            int64_t lda, const int32_t* gather, float* C) {
  const int32_t offsets[2] = {0, static_cast<int32_t>(m)};
  // f32 and bf16 weights: one expert of the grouped GEMMs (the same kernels as the layer's own path)
  auto grouped = [&](auto args, auto W, auto run) {
    args.E = 1;
    args.N = N;
    args.K = K;
    args.offsets = offsets;
    args.A = A;
    args.lda = lda;
    args.gather = gather;
    args.W = W;
    args.C = C;
    args.ldc = N;
    run(args);
  };
  switch (w.fmt) {
    case Format::F32:
      grouped(kernels::GroupedGemmArgs<float>(), static_cast<const float*>(w.w[i]),
              [be](const kernels::GroupedGemmArgs<float>& g) { kernels::grouped_gemm(be, g); });
      break;
    case Format::BF16:
      grouped(kernels::GroupedGemmBf16Args(), static_cast<const uint16_t*>(w.w[i]),
              [be](const kernels::GroupedGemmBf16Args& g) { kernels::grouped_gemm_bf16w(be, g); });
      break;
    case Format::W8A8:
    case Format::W4A8: {
      kernels::GroupedGemmWArgs g;
      g.E = 1, g.offsets = offsets, g.A = A, g.lda = lda, g.gather = gather;
      g.W = {.format = w.fmt == Format::W8A8 ? kernels::WeightFormat::Int8Packed
                                             : kernels::WeightFormat::Int4Packed,
             .N = N,
             .K = K,
             .data = w.w[i],
             .group = w.q[i].group};
      g.C = C, g.ldc = N;
      kernels::grouped_gemm_w(be, g);
      break;
    }
    case Format::Quant: {
      kernels::GemmQuantArgs g;
      g.M = m;
      g.A = A;
      g.lda = lda;
      g.gather = gather;
      g.W = w.q[i];
      g.C = C;
      g.ldc = N;
      kernels::gemm_qw(be, g);
      break;
    }
  }
}
}  // namespace

void compute_expert(kernels::Backend be, const ExpertCall& c) {
  if (c.m == 0) return;
  const bool swiglu = c.act == kernels::Activation::SwiGLU;
  if (swiglu) linear(be, *c.w, 0, c.m, c.F, c.d, c.x, c.d, c.gather, c.G);
  linear(be, *c.w, 1, c.m, c.F, c.d, c.x, c.d, c.gather, c.U);
  kernels::ActivationArgs<float> a;  // SwiGLU: silu(G) * U; plain FFN: act(U)
  a.act = c.act;
  a.n = c.m * c.F;
  a.a = swiglu ? c.G : c.U;
  a.b = swiglu ? c.U : nullptr;
  a.out = c.H;
  kernels::activation(be, a);
  linear(be, *c.w, 2, c.m, c.d, c.F, c.H, c.F, nullptr, c.out);
}

}  // namespace moe::infer::detail
