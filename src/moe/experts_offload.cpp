// OffloadedExperts: experts whose weights the layer does not hold (offloaded or quantized experts,
// moe/infer/expert_store.h), computed by the layer's ExpertExecutor on the thread running the
// forward.
#include "moe/experts.h"
#include "moe/layer_steps.h"

namespace moe::detail {

// The executor writes each row's unweighted output in expert order; the rows are then weighted and
// moved to their output rows.
void OffloadedExperts::forward(const ExpertsForwardArgs<float>& a) const {
  const ExpertBatch<float>& b = *a.batch;
  const int64_t M = b.rows, d = a_.shape.d_model;
  if (M == 0) return;  // no rows here (expert parallelism: another rank's experts took them all)
  Tensor rows_out = Tensor::empty({M, d}, DType::F32, "expert out");  // (M, d) in expert order
  ExpertRows rows;
  rows.n_experts = a_.n_experts;
  rows.d_model = d;
  rows.d_ff = a_.shape.d_ff;
  rows.act = a_.shape.act;
  // Under expert parallelism the batch covers a shard of the experts: the executor gets offsets over
  // all E, empty outside the shard.
  std::vector<int32_t> global;
  const int64_t El = static_cast<int64_t>(b.offsets.size()) - 1;
  if (El != a_.n_experts) {
    MOE_CHECK(a_.first_expert >= 0 && a_.first_expert + El <= a_.n_experts, "offloaded experts: experts [",
              a_.first_expert, ", ", a_.first_expert + El, ") outside the layer's ", a_.n_experts);
    global.assign(static_cast<size_t>(a_.n_experts + 1), static_cast<int32_t>(M));
    for (int64_t e = 0; e <= a_.first_expert; ++e) global[e] = 0;
    for (int64_t e = 0; e <= El; ++e) global[a_.first_expert + e] = b.offsets[e];
  }
  rows.offsets = global.empty() ? b.offsets.data() : global.data();
  rows.x = a_.x;
  rows.n_tokens = a_.n_tokens;
  rows.gather = b.gather.empty() ? nullptr : b.gather.data();
  rows.out = rows_out.data<float>();
  a_.executor->run(rows);
  MOE_CHECK(a.scale && a.out_row, "offloaded experts: a forward needs each row's scale and output row");
  kernels::scale_scatter_rows<float>(a_.shape.backend, {.M = M,
                                                        .d = d,
                                                        .dst_rows = a.out_rows,
                                                        .src = rows_out.data<float>(),
                                                        .scale = a.scale,
                                                        .out_row = a.out_row,
                                                        .dst = a.out});
}

}  // namespace moe::detail
