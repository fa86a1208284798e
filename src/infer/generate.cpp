#include "moe/infer/generate.h"

#include <algorithm>
#include <chrono>

#include "moe/core/error.h"

namespace moe::infer {

namespace {
using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}
}  // namespace

Generator::Generator(const model::Transformer& m, std::vector<int32_t> prompt, const GenerateOptions& opt)
    : m_(m), prompt_(std::move(prompt)), opt_(opt) {
  opt_.sampling.validate();
  MOE_CHECK(!prompt_.empty(), "generate: the prompt has no tokens");
  MOE_CHECK(opt_.max_new_tokens >= 0, "generate: max_new_tokens must be >= 0, got ", opt_.max_new_tokens);
  const int64_t ctx = m.config().max_position_embeddings;
  MOE_CHECK(static_cast<int64_t>(prompt_.size()) <= ctx, "generate: the prompt has ", prompt_.size(),
            " tokens; the model's context is ", ctx);
  cache_ = m.new_cache(std::min<int64_t>(ctx, static_cast<int64_t>(prompt_.size()) + opt_.max_new_tokens));
  const auto t0 = Clock::now();
  logits_ = m.decode(cache_, prompt_.data(), static_cast<int64_t>(prompt_.size()));  // (V)
  result_.prefill_s = seconds_since(t0);
  if (opt_.max_new_tokens == 0) done_ = true, result_.finish_reason = "length";
}

std::optional<int32_t> Generator::next() {
  if (done_) return std::nullopt;
  const auto t0 = Clock::now();
  if (pending_) {
    const int32_t last = result_.tokens.back();
    logits_ = m_.decode(cache_, &last, 1);
    pending_ = false;
  }
  const Tensor lf = logits_.dtype() == DType::F32 ? logits_ : logits_.to(DType::F32);
  const TokenHistory hist{prompt_.data(), static_cast<int64_t>(prompt_.size()), result_.tokens.data(),
                          static_cast<int64_t>(result_.tokens.size())};
  const auto i = static_cast<uint64_t>(result_.tokens.size());
  const int32_t t = sample_token(lf.data<float>(), m_.config().vocab_size, opt_.sampling, i, hist);
  result_.tokens.push_back(t);
  pending_ = true;
  if (t == opt_.eos_id)
    done_ = true, result_.finish_reason = "eos";
  else if (static_cast<int64_t>(result_.tokens.size()) == opt_.max_new_tokens || cache_.len >= cache_.max_len)
    done_ = true, result_.finish_reason = "length";
  result_.decode_s += seconds_since(t0);
  return t;
}

void Generator::stop() {
  done_ = true;
  result_.finish_reason = "stopped";
}

GenerateResult generate(const model::Transformer& m, const std::vector<int32_t>& prompt,
                        const GenerateOptions& opt, const std::function<bool(int32_t)>& on_token) {
  Generator g(m, prompt, opt);
  while (const std::optional<int32_t> t = g.next())
    if (on_token && !on_token(*t)) {
      g.stop();
      break;
    }
  return g.result();
}

}  // namespace moe::infer
