#include "moe/infer/generate.h"

#include <algorithm>
#include <chrono>

#include "moe/core/error.h"

namespace moe::infer {

GenerateResult generate(const model::Transformer& m, const std::vector<int32_t>& prompt,
                        const GenerateOptions& opt, const std::function<bool(int32_t)>& on_token) {
  using Clock = std::chrono::steady_clock;
  opt.sampling.validate();
  MOE_CHECK(!prompt.empty(), "generate: the prompt has no tokens");
  MOE_CHECK(opt.max_new_tokens >= 0, "generate: max_new_tokens must be >= 0, got ", opt.max_new_tokens);
  const int64_t ctx = m.config().max_position_embeddings;
  MOE_CHECK(static_cast<int64_t>(prompt.size()) <= ctx, "generate: the prompt has ", prompt.size(),
            " tokens; the model's context is ", ctx);
  const int64_t V = m.config().vocab_size;
  model::KVCache cache =
      m.new_cache(std::min<int64_t>(ctx, static_cast<int64_t>(prompt.size()) + opt.max_new_tokens));
  GenerateResult r;
  r.finish_reason = "length";
  auto t0 = Clock::now();
  Tensor logits = m.decode(cache, prompt.data(), static_cast<int64_t>(prompt.size()));  // (V)
  r.prefill_s = std::chrono::duration<double>(Clock::now() - t0).count();
  t0 = Clock::now();
  for (int64_t i = 0; i < opt.max_new_tokens; ++i) {
    const Tensor lf = logits.dtype() == DType::F32 ? logits : logits.to(DType::F32);
    const TokenHistory hist{prompt.data(), static_cast<int64_t>(prompt.size()), r.tokens.data(),
                            static_cast<int64_t>(r.tokens.size())};
    const int32_t t = sample_token(lf.data<float>(), V, opt.sampling, static_cast<uint64_t>(i), hist);
    r.tokens.push_back(t);
    if (on_token && !on_token(t)) {
      r.finish_reason = "stopped";
      break;
    }
    if (t == opt.eos_id) {
      r.finish_reason = "eos";
      break;
    }
    if (i + 1 == opt.max_new_tokens || cache.len >= cache.max_len) break;
    logits = m.decode(cache, &t, 1);
  }
  r.decode_s = std::chrono::duration<double>(Clock::now() - t0).count();
  return r;
}

}  // namespace moe::infer
