// Expert-parallel inference: the leader announces every forward pass, the followers repeat it
// (moe/infer/lockstep.h).
#include "moe/infer/lockstep.h"

#include <array>
#include <limits>

#include "moe/core/error.h"

namespace moe::infer {

namespace {

enum Kind : int64_t { kStop = 1, kPool = 2, kBatch = 3 };
constexpr int64_t kHeader = 4;  // kind, then three counts

// Restores a communicator's timeout when a scope ends.
struct TimeoutScope {
  dist::Communicator& c;
  double saved;
  TimeoutScope(dist::Communicator& comm, double t) : c(comm), saved(comm.timeout_s()) { c.set_timeout(t); }
  ~TimeoutScope() { c.set_timeout(saved); }
};

}  // namespace

Lockstep::Lockstep(std::shared_ptr<dist::Communicator> comm) : comm_(std::move(comm)) {
  MOE_CHECK(comm_, "lockstep: no communicator");
}

void Lockstep::announce_pool(int64_t block_size, int64_t n_blocks) {
  MOE_CHECK(leader(), "lockstep: only rank 0 announces");
  std::array<int64_t, kHeader> h{kPool, block_size, n_blocks, 0};
  comm_->broadcast(h.data(), kHeader, DType::I64, 0);
}

void Lockstep::announce_batch(const std::vector<model::BatchSeq>& seqs) {
  MOE_CHECK(leader(), "lockstep: only rank 0 announces");
  int64_t n_tok = 0, n_tab = 0;
  for (const model::BatchSeq& s : seqs) {
    n_tok += s.n;
    n_tab += s.block_table ? static_cast<int64_t>(s.block_table->size()) : 0;
  }
  std::array<int64_t, kHeader> h{kBatch, static_cast<int64_t>(seqs.size()), n_tok, n_tab};
  std::vector<int64_t> p;
  p.reserve(3 * seqs.size() + static_cast<size_t>(n_tok + n_tab));
  for (const model::BatchSeq& s : seqs)
    p.insert(p.end(), {s.n, s.start, s.block_table ? static_cast<int64_t>(s.block_table->size()) : 0});
  for (const model::BatchSeq& s : seqs) p.insert(p.end(), s.tokens, s.tokens + s.n);
  for (const model::BatchSeq& s : seqs)
    if (s.block_table) p.insert(p.end(), s.block_table->begin(), s.block_table->end());
  try {
    comm_->broadcast(h.data(), kHeader, DType::I64, 0);
    comm_->broadcast(p.data(), static_cast<int64_t>(p.size()), DType::I64, 0);
  } catch (const dist::CommError&) {
    failed_ = true;
    throw;
  }
  ++batches_;
}

void Lockstep::announce_stop() {
  if (!leader() || stopped_ || failed_) return;
  stopped_ = true;
  std::array<int64_t, kHeader> h{kStop, 0, 0, 0};
  comm_->broadcast(h.data(), kHeader, DType::I64, 0);
}

void Lockstep::follow(const model::Transformer& m) {
  MOE_CHECK(!leader(), "lockstep: rank 0 leads, it does not follow");
  const int64_t i32max = std::numeric_limits<int32_t>::max();
  model::PagedKVCache kv;
  for (;;) {
    std::array<int64_t, kHeader> h{};
    {
      const TimeoutScope idle(*comm_, 0);  // an idle server announces nothing for as long as it likes
      comm_->broadcast(h.data(), kHeader, DType::I64, 0);
    }
    if (h[0] == kStop) return;
    if (h[0] == kPool) {
      kv = model::PagedKVCache(model::kv_dims(m.config()), m.dtype(), h[1], h[2]);
      continue;
    }
    MOE_CHECK(h[0] == kBatch, "lockstep: unknown message kind ", h[0]);
    const int64_t n_seq = h[1], n_tok = h[2], n_tab = h[3];
    MOE_CHECK(n_seq >= 1 && n_tok >= 1 && n_tab >= 0 && n_seq <= i32max && n_tok <= i32max && n_tab <= i32max,
              "lockstep: malformed batch header (", n_seq, " sequences, ", n_tok, " tokens, ", n_tab,
              " table entries)");
    MOE_CHECK(kv.n_blocks() > 0, "lockstep: a batch before the KV pool was announced");
    std::vector<int64_t> p(static_cast<size_t>(3 * n_seq + n_tok + n_tab));
    comm_->broadcast(p.data(), static_cast<int64_t>(p.size()), DType::I64, 0);
    std::vector<int32_t> tokens(static_cast<size_t>(n_tok));
    std::vector<std::vector<int32_t>> tables(static_cast<size_t>(n_seq));
    std::vector<model::BatchSeq> seqs(static_cast<size_t>(n_seq));
    int64_t tok = 3 * n_seq, tab = 3 * n_seq + n_tok, tok_used = 0, tab_used = 0;
    for (int64_t i = 0; i < n_seq; ++i) {
      const int64_t n = p[3 * i], start = p[3 * i + 1], len = p[3 * i + 2];
      MOE_CHECK(n >= 1 && start >= 0 && len >= 0 && tok_used + n <= n_tok && tab_used + len <= n_tab,
                "lockstep: malformed batch (sequence ", i, ")");
      for (int64_t j = 0; j < n; ++j) tokens[tok_used + j] = static_cast<int32_t>(p[tok + tok_used + j]);
      std::vector<int32_t>& t = tables[i];
      t.resize(static_cast<size_t>(len));
      for (int64_t j = 0; j < len; ++j) {
        const int64_t b = p[tab + tab_used + j];
        MOE_CHECK(b >= 0 && b < kv.n_blocks(), "lockstep: block ", b, " outside the pool of ", kv.n_blocks());
        t[j] = static_cast<int32_t>(b);
      }
      seqs[i].n = n;
      seqs[i].start = start;
      seqs[i].block_table = &t;
      seqs[i].want_logits = false;  // the leader samples
      tok_used += n, tab_used += len;
    }
    tok_used = 0;
    for (model::BatchSeq& s : seqs) s.tokens = tokens.data() + tok_used, tok_used += s.n;
    model::forward_batch(m, kv, seqs);
    ++batches_;
  }
}

}  // namespace moe::infer
