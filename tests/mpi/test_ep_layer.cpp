// The MoE layer under expert parallelism (all-to-all dispatcher over MPI) against a single process.
// Every rank builds the full single-process layer and its expert-parallel slice from one seed,
// routes its own tokens, and compares:
//   - y and dx with the single-process layer on the same tokens: bit-identical (same rows, same
//     kernels, same per-token summation order);
//   - the router's gradient likewise (it is per rank: the trainer all-reduces it);
//   - the expert weights' gradients with the single-process layer over ALL ranks' tokens
//     concatenated: each expert sums its rows in (source rank, token) order there too.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <tuple>
#include <utility>

#include "layer_testutil.h"
#include "moe/dist/comm.h"
#include "moe/dist/plan.h"
#include "moe/moe/expert_parallel.h"
#include "moe/moe/layer.h"
#include "mpi_testutil.h"

namespace moe {
namespace {

bool bit_equal(const Tensor& a, const Tensor& b) {
  if (a.shape() != b.shape() || a.dtype() != b.dtype()) return false;
  const size_t bytes = static_cast<size_t>(a.numel()) * static_cast<size_t>(dtype_bits(a.dtype())) / 8;
  return bytes == 0 || std::memcmp(a.raw(), b.raw(), bytes) == 0;
}

// Rows [first, first + n) of (T, d) tensor t, as a contiguous copy.
Tensor rows(const Tensor& t, int64_t first, int64_t n) { return t.slice(0, first, first + n).contiguous(); }

struct Case {
  MoEConfig cfg;
  DType dtype = DType::F32;
  std::vector<int64_t> tokens_per_rank;  // empty: 7 + 3·rank
  bool favour_rank0 = false;             // selection bias sends every token to rank 0's experts
  int chunks = 1;                        // token chunks (overlap of exchange and compute)
};

MoEConfig base_config(int64_t E, int k) {
  MoEConfig c;
  c.d_model = 24;
  c.d_ff = 20;
  c.n_experts = E;
  c.router.top_k = k;
  return c;
}

class ExpertParallelLayer : public test::MpiTest {
 protected:
  void run_case(const Case& cs);
};

void ExpertParallelLayer::run_case(const Case& cs) {
  std::shared_ptr<dist::Communicator> comm = comm_ptr();
  const int R = comm->size(), me = comm->rank();
  const MoEConfig& cfg = cs.cfg;
  const int64_t d = cfg.d_model;
  if (cfg.n_experts % R != 0) GTEST_SKIP() << cfg.n_experts << " experts do not split over " << R << " ranks";

  MoELayer full(cfg, cs.dtype);
  full.init_params(11);
  MoELayer ep(cfg, cs.dtype, kernels::Backend::Cpu, false, ExpertParallel{comm, cs.chunks});
  ep.init_params(11);
  const int64_t El = ep.local_experts(), first = ep.first_expert();
  ASSERT_EQ(El, cfg.n_experts / R);
  ASSERT_EQ(first, me * El);
  if (cs.favour_rank0) {
    for (int64_t e = 0; e < cfg.n_experts; ++e) {
      const double b = e < El ? 50.0 : 0.0;
      full.params().router_bias.set(e, b);
      ep.params().router_bias.set(e, b);
    }
  }
  // The slice of the full layer's experts.
  EXPECT_TRUE(bit_equal(ep.params().w_up, rows(full.params().w_up, first, El)));
  EXPECT_TRUE(bit_equal(ep.params().w_down, rows(full.params().w_down, first, El)));
  EXPECT_TRUE(bit_equal(ep.params().router_w, full.params().router_w));

  std::vector<int64_t> n(R);
  for (int r = 0; r < R; ++r)
    n[r] = cs.tokens_per_rank.empty() ? 7 + 3 * r : cs.tokens_per_rank[r % cs.tokens_per_rank.size()];
  int64_t T = 0, start = 0;
  for (int r = 0; r < R; ++r) T += n[r], start += r < me ? n[r] : 0;
  const Tensor X = testing::random_tensor({T, d}, cs.dtype, 5);  // every rank draws all tokens
  const Tensor DY = testing::random_tensor({T, d}, cs.dtype, 6);
  const Tensor x = rows(X, start, n[me]), dy = rows(DY, start, n[me]);

  // Local tokens: outputs, input and router gradients.
  const MoEForward fe = ep.forward(x);
  const MoEForward fr = full.forward(x);
  EXPECT_TRUE(bit_equal(fe.y, fr.y)) << "rank " << me << ": y differs, max rel "
                                     << testing::rel_err(fe.y, fr.y);
  const MoEGrads ge = ep.backward(fe, dy);
  const MoEGrads gr = full.backward(fr, dy);
  EXPECT_TRUE(bit_equal(ge.dx, gr.dx))
      << "rank " << me << ": dx differs, max rel " << testing::rel_err(ge.dx, gr.dx);
  EXPECT_TRUE(bit_equal(ge.router_w, gr.router_w))
      << "router grad, max rel " << testing::rel_err(ge.router_w, gr.router_w);
  EXPECT_EQ(fe.stats.routed_per_expert, fr.stats.routed_per_expert);
  if (cfg.shared_width() > 0) {
    EXPECT_TRUE(bit_equal(ge.shared_w_up, gr.shared_w_up));
  }

  // Expert gradients: the single process over every rank's tokens. With capacity the drops depend
  // on which tokens share a batch, so there the reference is the sum of per-rank single processes.
  const bool dropless = cfg.router.capacity_factor == 0;
  MoEGrads gall;
  if (dropless) {
    const MoEForward fa = full.forward(X);
    gall = full.backward(fa, DY);
  } else {
    for (int r = 0; r < R; ++r) {
      int64_t s0 = 0;
      for (int q = 0; q < r; ++q) s0 += n[q];
      const MoEForward f = full.forward(rows(X, s0, n[r]));
      MoEGrads g = full.backward(f, rows(DY, s0, n[r]));
      if (r == 0) {
        gall = std::move(g);
      } else {
        for (auto [a, b] : {std::pair<Tensor*, Tensor*>{&gall.w_up, &g.w_up},
                            {&gall.w_down, &g.w_down},
                            {&gall.w_gate, &g.w_gate}})
          if (a->defined())
            for (int64_t i = 0; i < a->numel(); ++i) a->set(i, a->get(i) + b->get(i));
      }
    }
  }
  const double tol = cs.dtype == DType::F64 ? 1e-12 : 1e-5;
  for (auto [name, a, b] :
       {std::tuple<const char*, const Tensor*, const Tensor*>{"w_up", &ge.w_up, &gall.w_up},
        {"w_down", &ge.w_down, &gall.w_down},
        {"w_gate", &ge.w_gate, &gall.w_gate}}) {
    if (!a->defined()) continue;
    const Tensor ref = rows(*b, first, El);
    const double err = testing::rel_err(*a, ref);
    EXPECT_LE(err, tol) << "rank " << me << ": grad " << name << " max rel " << err;
    // With chunks an expert's rows are summed chunk by chunk: equal within rounding only.
    if (dropless && cs.chunks == 1) {
      EXPECT_TRUE(bit_equal(*a, ref))
          << "rank " << me << ": grad " << name << " not bit-identical (max rel " << err << ")";
    }
  }
}

TEST_F(ExpertParallelLayer, DroplessSwiGLUf32) {
  Case c;
  c.cfg = base_config(8, 2);
  run_case(c);
}

TEST_F(ExpertParallelLayer, DroplessF64WithSharedExpertAndGate) {
  Case c;
  c.cfg = base_config(8, 3);
  c.cfg.n_shared_experts = 1;
  c.cfg.shared_gate = true;
  c.dtype = DType::F64;
  run_case(c);
}

TEST_F(ExpertParallelLayer, PlainGeluFfnSigmoidRouter) {
  Case c;
  c.cfg = base_config(16, 4);
  c.cfg.activation = kernels::Activation::Gelu;
  c.cfg.router.score = ScoreFn::Sigmoid;
  run_case(c);
}

TEST_F(ExpertParallelLayer, CapacityDropsPerRank) {
  Case c;
  c.cfg = base_config(8, 2);
  c.cfg.router.capacity_factor = 1.0;
  run_case(c);
}

TEST_F(ExpertParallelLayer, EveryTokenToRankZerosExperts) {
  Case c;
  c.cfg = base_config(8, 2);
  c.cfg.router.use_bias = true;
  c.favour_rank0 = true;
  run_case(c);
}

TEST_F(ExpertParallelLayer, RanksWithoutTokens) {
  Case c;
  c.cfg = base_config(8, 2);
  c.tokens_per_rank = {9, 0};  // odd ranks have no tokens but still compute the rows sent to them
  run_case(c);
}

TEST_F(ExpertParallelLayer, NoTokensAnywhere) {
  Case c;
  c.cfg = base_config(8, 2);
  c.tokens_per_rank = {0};
  run_case(c);
}

TEST_F(ExpertParallelLayer, ChunksOverlapExchangeAndCompute) {
  Case c;
  c.cfg = base_config(8, 2);
  c.chunks = 3;
  c.tokens_per_rank = {16, 5, 2};  // chunks of unequal size, some empty
  run_case(c);
}

TEST_F(ExpertParallelLayer, ChunksWithCapacityF64) {
  Case c;
  c.cfg = base_config(8, 2);
  c.cfg.router.capacity_factor = 1.25;
  c.dtype = DType::F64;
  c.chunks = 2;
  run_case(c);
}

// The bytes a forward + backward sends to other ranks are what the cost model of `moe plan` gives
// for the same routing: token rows out (dispatch, dy) and back (combine, dx), one value per row out
// (routing weights) and back (their gradients), and the (E / ranks) row counts to every other rank.
TEST_F(ExpertParallelLayer, BytesSentMatchTheCostModel) {
  std::shared_ptr<dist::Communicator> comm = comm_ptr();
  const int R = comm->size(), me = comm->rank();
  if (R == 1) GTEST_SKIP() << "one rank sends nothing";
  MoEConfig cfg = base_config(4 * R, 3);
  MoELayer ep(cfg, DType::F32, kernels::Backend::Cpu, false, ExpertParallel{comm});
  ep.init_params(3);
  const int64_t n = 11 + 5 * me;
  const Tensor x = testing::random_tensor({n, cfg.d_model}, DType::F32, 40 + me);
  comm->reset_stats();
  const MoEForward f = ep.forward(x);
  ep.backward(f, testing::random_tensor({n, cfg.d_model}, DType::F32, 50 + me));
  const int64_t measured = comm->stats().alltoall_bytes_sent;

  std::vector<int64_t> counts(static_cast<size_t>(R * cfg.n_experts), 0);  // (source rank, expert)
  for (int64_t e = 0; e < cfg.n_experts; ++e) counts[me * cfg.n_experts + e] = f.stats.tokens_per_expert[e];
  comm->allreduce(counts.data(), static_cast<int64_t>(counts.size()), DType::I64, dist::ReduceOp::Sum);
  dist::DispatchShape rows{R, cfg.n_experts, cfg.d_model, 4}, ones{R, cfg.n_experts, 1, 4};
  const dist::DispatchBytes b = dist::dispatch_bytes(rows, counts), w = dist::dispatch_bytes(ones, counts);
  const int64_t predicted =
      2 * b.sent[me] + 2 * b.received[me] + w.sent[me] + w.received[me] + (R - 1) * (cfg.n_experts / R) * 8;
  EXPECT_EQ(measured, predicted) << "rank " << me;
  EXPECT_GT(b.sent[me] + b.received[me], 0) << "the routing sent nothing: the check says little";
}

TEST_F(ExpertParallelLayer, ExpertsMustSplitEvenly) {
  std::shared_ptr<dist::Communicator> comm = comm_ptr();
  if (comm->size() == 1) GTEST_SKIP();
  MoEConfig c = base_config(comm->size() + 1, 1);
  EXPECT_THROW(MoELayer(c, DType::F32, kernels::Backend::Cpu, false, ExpertParallel{comm}), Error);
}

}  // namespace
}  // namespace moe
