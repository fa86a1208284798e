// The training loop: see trainer.h for the run directory and docs/TRAINING.md for the metrics.
#include "moe/train/trainer.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <limits>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>
#include <thread>

#include "moe/core/error.h"
#include "moe/model/safetensors.h"
#include "moe/model/transformer.h"
#include "moe/text/tokenizer.h"
#include "moe/train/data.h"
#include "moe/train/distill.h"
#include "moe/train/optim.h"
#include "train/parallel.h"

namespace moe::train {

namespace fs = std::filesystem;
using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

namespace {

std::string read_file(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  MOE_CHECK(f.good(), "cannot open '", p.string(), "'");
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

void write_file_atomic(const fs::path& p, const std::string& text) {
  const fs::path tmp = p.string() + ".tmp";
  {
    std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
    MOE_CHECK(f.good(), "cannot write '", tmp.string(), "'");
    f << text;
    f.close();
    MOE_CHECK(f.good(), "error writing '", tmp.string(), "'");
  }
  fs::rename(tmp, p);
}

std::string iso_now() {
  const std::time_t t = std::time(nullptr);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&t));
  return buf;
}

std::string fmt_duration(double s) {
  if (!std::isfinite(s) || s < 0) return "?";
  const int64_t t = static_cast<int64_t>(s + 0.5);
  char buf[32];
  if (t >= 3600)
    std::snprintf(buf, sizeof buf, "%lldh%02lldm", (long long)(t / 3600), (long long)(t % 3600 / 60));
  else
    std::snprintf(buf, sizeof buf, "%lldm%02llds", (long long)(t / 60), (long long)(t % 60));
  return buf;
}

void validate(const TrainOptions& o) {
  MOE_CHECK(!o.run_dir.empty(), "train: the run directory must not be empty");
  MOE_CHECK(o.vocab_size >= 300, "train: --vocab-size must be >= 300 (256 bytes + specials + merges), got ",
            o.vocab_size);
  MOE_CHECK(o.seq_len >= 2, "train: --seq-len must be >= 2, got ", o.seq_len);
  MOE_CHECK(o.seq_len <= o.model.max_position_embeddings, "train: --seq-len ", o.seq_len,
            " exceeds the model's max_position_embeddings ", o.model.max_position_embeddings);
  MOE_CHECK(o.batch_size >= 1 && o.grad_accum >= 1, "train: --batch-size and --grad-accum must be >= 1");
  MOE_CHECK(o.steps >= 1, "train: --steps must be >= 1, got ", o.steps);
  MOE_CHECK(std::isfinite(o.lr) && o.lr > 0, "train: --lr must be > 0, got ", o.lr);
  MOE_CHECK(o.min_lr_ratio >= 0 && o.min_lr_ratio <= 1, "train: min_lr_ratio must be in [0, 1]");
  MOE_CHECK(o.warmup_steps >= 0, "train: --warmup must be >= 0");
  MOE_CHECK(o.grad_clip >= 0, "train: --clip must be >= 0 (0 = off)");
  MOE_CHECK(o.ep_chunks >= 1, "train: --ep-chunks must be >= 1, got ", o.ep_chunks);
  MOE_CHECK(o.log_every >= 1 && o.eval_batches >= 1, "train: --log-every and --eval-batches must be >= 1");
  MOE_CHECK(o.eval_every >= 0 && o.checkpoint_every >= 0,
            "train: --eval-every and --checkpoint-every must be >= 0");
  if (!o.teacher.empty()) distill::validate_options(o);
}

// Everything a run holds in memory.
struct Run {
  const dist::ParallelGroups* par = nullptr;  // null or one rank: a single process
  int world = 1, wrank = 0;                   // ranks, this rank
  TrainOptions opt;
  fs::path dir;
  text::Tokenizer tok;
  TokenShard train_shard, val_shard;
  std::unique_ptr<model::Transformer> model;
  std::unique_ptr<model::Transformer> teacher;  // distillation: frozen, inference only
  std::unique_ptr<AdamW> adam;
  std::unique_ptr<BatchSampler> sampler;
  int64_t step = 0;
  int64_t tokens = 0;
  double elapsed_s = 0;  // training time over all invocations
  double unigram = 0, unigram_val = 0;
  std::ofstream metrics;
  bool stop_requested = false;  // opt.on_metrics returned false
};

std::vector<ParamRef> param_refs(model::Transformer& m) {
  std::vector<ParamRef> refs;
  m.ensure_grads();
  for (model::NamedParam& p : m.parameters()) refs.push_back({p.name, &p.value, &p.grad, p.decay});
  return refs;
}

// Opens metrics.jsonl for appending; a last line cut short by a kill is ended first, so the new
// lines stay parseable (readers skip the cut line).
void open_metrics(Run& r) {
  const fs::path p = r.dir / "metrics.jsonl";
  bool cut = false;
  if (fs::exists(p) && fs::file_size(p) > 0) {
    std::ifstream f(p, std::ios::binary);
    f.seekg(-1, std::ios::end);
    cut = f.get() != '\n';
  }
  r.metrics.open(p, std::ios::app | std::ios::binary);
  MOE_CHECK(r.metrics.good(), "cannot write '", p.string(), "'");
  if (cut) r.metrics << "\n";
}

void emit(Run& r, const json& j) {
  if (!r.metrics.is_open()) return;  // ranks other than 0 write no metrics
  const std::string line = j.dump();
  r.metrics << line << "\n";
  r.metrics.flush();
  if (r.opt.on_metrics && !r.opt.on_metrics(line)) r.stop_requested = true;
}

// Mean loss over the first `eval_batches · B` windows of the validation shard (in order). In
// parallel runs every rank evaluates its share of each batch (the window count is rounded down to a
// multiple of the world size, so no rank's share is empty) and the sums are all-reduced.
double evaluate(Run& r) {
  const int64_t S = r.opt.seq_len, B = r.opt.batch_size, W = r.world;
  int64_t windows = std::min<int64_t>((r.val_shard.size() - 1) / S, r.opt.eval_batches * B);
  windows -= windows % W;
  double loss = 0;
  int64_t count = 0;
  std::vector<int32_t> buf(static_cast<size_t>(S + 1)), in, tgt;
  for (int64_t w0 = 0; w0 < windows; w0 += B) {
    const int64_t nb = std::min(B, windows - w0);
    const int64_t lo = w0 + r.wrank * nb / W, n = nb / W;  // this rank's windows
    in.resize(static_cast<size_t>(n * S)), tgt.resize(static_cast<size_t>(n * S));
    for (int64_t b = 0; b < n; ++b) {
      r.val_shard.read((lo + b) * S, S + 1, buf.data());
      std::copy(buf.begin(), buf.begin() + S, in.begin() + b * S);
      std::copy(buf.begin() + 1, buf.end(), tgt.begin() + b * S);
    }
    const model::StepResult res = r.model->evaluate(in.data(), tgt.data(), n, S);
    loss += res.loss_sum, count += res.count;
  }
  if (par::active(r.par)) {
    double v[2] = {loss, static_cast<double>(count)};
    r.par->world->allreduce(v, 2, DType::F64, dist::ReduceOp::Sum);
    loss = v[0], count = static_cast<int64_t>(v[1]);
  }
  return count > 0 ? loss / static_cast<double>(count) : std::numeric_limits<double>::quiet_NaN();
}

// Parallel runs: rank 0 prepares checkpoint.tmp, every expert-parallel rank writes its shards, and
// rank 0 swaps the directory in only when all shards are written (a rank that fails or dies leaves
// the previous checkpoint in place).
void save_checkpoint(Run& r) {
  const fs::path ck = r.dir / "checkpoint", tmp = r.dir / "checkpoint.tmp", old = r.dir / "checkpoint.old";
  const bool parallel = par::active(r.par);
  if (parallel) {
    par::on_root(r.par, "preparing the checkpoint", [&] {
      fs::remove_all(tmp);
      fs::create_directories(tmp);
    });
    par::save_sharded(*r.par, *r.model, *r.adam, tmp.string());
  }
  par::on_root(r.par, "writing the checkpoint", [&] {
    if (!parallel) {
      fs::remove_all(tmp);
      model::save_pretrained(*r.model, tmp.string());
      save_safetensors((tmp / "optimizer.safetensors").string(), r.adam->export_state());
    }
    r.tok.save((tmp / "tokenizer.json").string());
    const SamplerPosition pos = r.sampler->position();
    const json state = {{"step", r.step},
                        {"tokens", r.tokens},
                        {"elapsed_s", r.elapsed_s},
                        {"sampler", {{"epoch", pos.epoch}, {"index", pos.index}}},
                        {"saved", iso_now()}};
    write_file_atomic(tmp / "trainer_state.json", state.dump(2) + "\n");
    // Swap: checkpoint -> checkpoint.old, checkpoint.tmp -> checkpoint, drop checkpoint.old.
    fs::remove_all(old);
    if (fs::exists(ck)) fs::rename(ck, old);
    fs::rename(tmp, ck);
    fs::remove_all(old);
  });
}

void open_data(Run& r) {
  r.train_shard = TokenShard((r.dir / "data" / "train.bin").string());
  r.val_shard = TokenShard((r.dir / "data" / "val.bin").string());
  const int64_t need = r.opt.batch_size * r.opt.seq_len + 1;
  MOE_CHECK(r.train_shard.size() >= need, "train: the corpus has ", r.train_shard.size(),
            " training tokens; one batch needs ", need,
            " (reduce --batch-size or --seq-len, or use more text)");
  MOE_CHECK(r.val_shard.size() >= r.opt.seq_len + 1, "train: the validation split has ", r.val_shard.size(),
            " tokens; it needs at least seq_len + 1 = ", r.opt.seq_len + 1);
  SamplerOptions so;
  so.batch_size = r.opt.batch_size, so.seq_len = r.opt.seq_len, so.seed = r.opt.seed, so.shuffle = true;
  r.sampler = std::make_unique<BatchSampler>(r.train_shard, so);
  r.unigram = unigram_entropy(r.train_shard);
  r.unigram_val = unigram_cross_entropy(r.train_shard, r.val_shard, r.tok.vocab_size());
}

void write_run_line(Run& r, bool resumed) {
  json j = {{"type", "run"},
            {"model", json::parse(model::to_json(r.model->config()))},
            {"train", json::parse(to_json(r.opt))},
            {"started", iso_now()},
            {"resumed_at_step", resumed ? r.step : 0},
            {"n_params", r.model->config().n_params()},
            {"n_active_params", r.model->config().n_active_params()},
            {"train_tokens", r.train_shard.size()},
            {"val_tokens", r.val_shard.size()},
            {"unigram_entropy", r.unigram},
            {"unigram_val_loss", r.unigram_val}};
  emit(r, j);
}

TrainSummary loop(Run& r, int64_t halt_after, double time_limit_s) {
  const TrainOptions& o = r.opt;
  const int64_t B = o.batch_size, S = o.seq_len, A = o.grad_accum;
  const int64_t W = r.world, Bl = B / W;  // sequences of each batch this rank computes
  const bool parallel = par::active(r.par);
  LrSchedule sched{o.lr, o.lr * o.min_lr_ratio, std::min(o.warmup_steps, o.steps), o.steps};
  sched.validate();
  std::vector<ParamRef> refs = param_refs(*r.model);
  std::vector<int32_t> in, tgt;
  TrainSummary sum;
  const bool root = par::is_root(r.par);
  const auto t_start = Clock::now();
  double win_loss = 0, win_aux = 0, win_kd = 0;
  int64_t win_n = 0, done = 0;
  const bool kd = r.teacher != nullptr && o.kd_weight > 0;  // the teacher runs only when it counts
  auto print = [&](const std::string& s) {
    if (!o.quiet && root) std::printf("%s\n", s.c_str()), std::fflush(stdout);
  };
  while (r.step < o.steps) {
    const double run_time = std::chrono::duration<double>(Clock::now() - t_start).count();
    double stop = (halt_after > 0 && done >= halt_after) || (time_limit_s > 0 && run_time >= time_limit_s) ||
                  r.stop_requested;
    if (parallel) r.par->world->allreduce(&stop, 1, DType::F64, dist::ReduceOp::Max);  // all stop together
    if (stop > 0) break;
    if (parallel && r.wrank == W - 1) {  // fault injection (tests)
      if (o.fault_exit_step == r.step) std::_Exit(3);
      if (o.fault_hang_step == r.step) std::this_thread::sleep_for(std::chrono::hours(1));
    }
    const auto t0 = Clock::now();
    if (parallel)
      for (dist::Communicator* c : {r.par->world.get(), r.par->ep.get(), r.par->dp.get()}) c->reset_stats();
    r.model->zero_grads();
    double loss_sum = 0, aux = 0, kd_sum = 0;
    int64_t count = 0;
    bool finite = true;
    model::StepResult acc;  // per-MoE-layer routed counts summed over the micro-batches
    for (int64_t a = 0; a < A; ++a) {
      r.sampler->next(in, tgt);
      model::StepOptions so;
      so.ce_scale = 1.0 / static_cast<double>(B * S * A);  // the global batch's token count
      so.aux_scale = 1.0 / static_cast<double>(A * W);
      so.training = true;
      so.step = static_cast<uint64_t>(r.step * A + a);
      so.seed = o.seed;
      const int64_t off = r.wrank * Bl * S;  // this rank's sequences of the global batch
      Tensor teacher_logits;                 // (Bl·S, V)
      if (kd) {
        teacher_logits = r.teacher->logits(in.data() + off, Bl, S);
        so.teacher_logits = &teacher_logits, so.kd_weight = o.kd_weight, so.kd_temperature = o.temperature;
      }
      const model::StepResult res = r.model->forward_backward(in.data() + off, tgt.data() + off, Bl, S, so);
      loss_sum += res.loss_sum, count += res.count, aux += res.aux_loss / static_cast<double>(A);
      kd_sum += res.kd_loss_sum;
      finite = finite && std::isfinite(res.loss_sum) && std::isfinite(res.kd_loss_sum) &&
               std::isfinite(res.aux_loss);
      if (!finite && !parallel) break;  // ranks keep in step: every one runs every micro-batch
      if (acc.stats.empty())
        acc = res;
      else
        for (size_t i = 0; i < acc.stats.size(); ++i)
          for (size_t e = 0; e < acc.stats[i].routed_per_expert.size(); ++e)
            acc.stats[i].routed_per_expert[e] += res.stats[i].routed_per_expert[e];
    }
    if (o.fault_nan_step == r.step && !refs.empty())
      refs[0].grad->set(0, std::numeric_limits<double>::quiet_NaN());
    if (parallel) {
      double bad = finite ? 0.0 : 1.0;
      r.par->world->allreduce(&bad, 1, DType::F64, dist::ReduceOp::Max);
      finite = bad == 0.0;
      par::allreduce_step(*r.par, loss_sum, count, aux, acc.stats);
      par::allreduce_grads(*r.par, refs);
    }
    const double gnorm = !finite    ? std::numeric_limits<double>::quiet_NaN()
                         : parallel ? par::global_grad_norm(*r.par, refs)
                                    : grad_norm(refs);
    const double lr = sched.at(r.step);
    if (!finite || !std::isfinite(gnorm)) {
      const char* reason = !finite ? "non-finite loss" : "non-finite gradient";
      emit(r, {{"type", "skip"}, {"step", r.step}, {"reason", reason}});
      print(cat("step ", r.step + 1, ": skipped (", reason, "); the weights were not changed"));
      ++sum.skipped;
      ++r.step, ++done;
      r.tokens += B * S * A;
      continue;
    }
    if (o.grad_clip > 0) clip_grad_norm(refs, o.grad_clip, gnorm);
    r.adam->step(refs, lr);
    r.model->update_router_biases(acc);
    const double dt = std::chrono::duration<double>(Clock::now() - t0).count();
    r.elapsed_s += dt;
    // Communication of this step: the slowest rank's all-to-all and all-reduce time, the bytes
    // all ranks sent to others (all-to-all) and reduced.
    double comm[4] = {0, 0, 0, 0};
    if (parallel) {
      for (dist::Communicator* c : {r.par->world.get(), r.par->ep.get(), r.par->dp.get()}) {
        const dist::CommStats& cs = c->stats();
        comm[0] += cs.alltoall_s, comm[1] += static_cast<double>(cs.alltoall_bytes_sent);
        comm[2] += cs.allreduce_s, comm[3] += static_cast<double>(cs.allreduce_bytes);
      }
      double mx[2] = {comm[0], comm[2]}, sm[2] = {comm[1], comm[3]};
      r.par->world->allreduce(mx, 2, DType::F64, dist::ReduceOp::Max);
      r.par->world->allreduce(sm, 2, DType::F64, dist::ReduceOp::Sum);
      comm[0] = mx[0], comm[2] = mx[1], comm[1] = sm[0], comm[3] = sm[1];
    }
    r.tokens += B * S * A;
    ++r.step, ++done;
    const double loss = loss_sum / static_cast<double>(std::max<int64_t>(count, 1));
    const double kd_loss = kd_sum / static_cast<double>(std::max<int64_t>(count, 1));
    win_loss += loss, win_aux += aux, win_kd += kd_loss, ++win_n;
    // Per-layer expert load of this step.
    json load = json::array(), imb = json::array(), mean_k = json::array();
    double imb_max = 0, k_sum = 0;
    const double step_tokens = static_cast<double>(B * S * A);
    for (const MoEStats& st : acc.stats) {
      double tot = 0, mx = 0;
      for (int64_t c : st.routed_per_expert)
        tot += static_cast<double>(c), mx = std::max(mx, static_cast<double>(c));
      json row = json::array();
      for (int64_t c : st.routed_per_expert) row.push_back(tot > 0 ? static_cast<double>(c) / tot : 0.0);
      const double ib = tot > 0 ? mx * static_cast<double>(st.routed_per_expert.size()) / tot : 0.0;
      load.push_back(row), imb.push_back(ib), mean_k.push_back(tot / step_tokens);
      k_sum += tot / step_tokens;
      imb_max = std::max(imb_max, ib);
    }
    const double tps = static_cast<double>(B * S * A) / dt;
    json step_rec = json::object({{"type", "step"},
                                  {"step", r.step},
                                  {"loss", loss},
                                  {"aux_loss", aux},
                                  {"lr", lr},
                                  {"grad_norm", gnorm},
                                  {"tokens", r.tokens},
                                  {"tokens_per_s", tps},
                                  {"step_s", dt},
                                  {"elapsed_s", r.elapsed_s},
                                  {"skipped", false},
                                  {"moe_layers", acc.moe_layers},
                                  {"imbalance", imb},
                                  {"mean_k", mean_k},
                                  {"expert_load", load}});
    if (kd) step_rec["kd_loss"] = kd_loss;  // mean T²·KL(teacher ‖ student) per token
    emit(r, step_rec);
    if (parallel)
      emit(r, {{"type", "comm"},
               {"step", r.step},
               {"ranks", W},
               {"expert_parallel", r.par->ep->size()},
               {"alltoall_s", comm[0]},
               {"alltoall_bytes", comm[1]},
               {"allreduce_s", comm[2]},
               {"allreduce_bytes", comm[3]}});
    const double run_s = std::chrono::duration<double>(Clock::now() - t_start).count();
    const double eta = run_s / static_cast<double>(done) * static_cast<double>(o.steps - r.step);
    if (r.step % o.log_every == 0 || r.step == o.steps) {
      char line[256];
      std::snprintf(
          line, sizeof line,
          "step %5lld/%lld | loss %.4f | aux %.4f | lr %.2e | %6.0f tok/s | imbalance %.2f | eta %s",
          (long long)r.step, (long long)o.steps, win_loss / win_n, win_aux / win_n, lr,
          static_cast<double>(r.tokens) / std::max(r.elapsed_s, 1e-9), imb_max, fmt_duration(eta).c_str());
      std::string msg = line;
      if (kd) {
        std::snprintf(line, sizeof line, " | kd %.4f", win_kd / win_n);
        msg += line;
      }
      if (r.model->config().router_extra.top_p > 0 && !acc.stats.empty()) {
        std::snprintf(line, sizeof line, " | mean k %.2f", k_sum / static_cast<double>(acc.stats.size()));
        msg += line;
      }
      print(msg);
      sum.final_loss = win_loss / win_n;
      win_loss = win_aux = win_kd = 0, win_n = 0;
    }
    const bool last = r.step == o.steps;
    if ((o.eval_every > 0 && r.step % o.eval_every == 0) || last) {
      const double el = evaluate(r);
      sum.eval_loss = el;
      emit(r,
           {{"type", "eval"}, {"step", r.step}, {"loss", el}, {"ppl", std::exp(el)}, {"tokens", r.tokens}});
      print(cat("eval  step ", r.step, " | val loss ", el, " | ppl ", std::exp(el), " | unigram ",
                r.unigram_val));
    }
    if ((o.checkpoint_every > 0 && r.step % o.checkpoint_every == 0) || last) save_checkpoint(r);
  }
  if (win_n > 0) sum.final_loss = win_loss / win_n;
  // Stopped early (halt_after / time limit): keep the progress.
  if (r.step < o.steps && done > 0) save_checkpoint(r);
  const double run_s = std::chrono::duration<double>(Clock::now() - t_start).count();
  sum.steps_done = r.step;
  sum.unigram_entropy = r.unigram;
  sum.tokens_per_s = run_s > 0 ? static_cast<double>(done * B * S * A) / run_s : 0;
  sum.checkpoint = (r.dir / "checkpoint").string();
  emit(r, {{"type", "end"}, {"step", r.step}, {"elapsed_s", r.elapsed_s}, {"checkpoint", sum.checkpoint}});
  return sum;
}

}  // namespace

namespace {

void set_parallel(Run& r, const dist::ParallelGroups* par) {
  r.par = par::active(par) ? par : nullptr;
  r.world = r.par ? r.par->world->size() : 1;
  r.wrank = r.par ? r.par->world->rank() : 0;
  MOE_CHECK(r.opt.batch_size % r.world == 0, "train: --batch-size ", r.opt.batch_size,
            " must be a multiple of the number of ranks (", r.world, "): each rank computes an equal share");
  MOE_CHECK(r.opt.teacher.empty() || r.world == 1, "distill: runs in one process (got ", r.world, " ranks)");
}

// Expert parallelism of the model: its MoE layers hold this rank's experts.
ExpertParallel expert_parallel(const Run& r) {
  ExpertParallel ep;
  if (r.par && r.par->ep->size() > 1) ep.comm = r.par->ep;
  ep.chunks = r.opt.ep_chunks;
  return ep;
}

}  // namespace

TrainSummary train(const TrainOptions& opt_in, const dist::ParallelGroups* par) {
  Run r;
  r.opt = opt_in;
  validate(r.opt);
  if (!r.opt.teacher.empty()) r.opt.teacher = fs::absolute(r.opt.teacher).string();  // resumable anywhere
  set_parallel(r, par);
  r.dir = r.opt.run_dir;
  // Rank 0 prepares the run directory (tokenizer, token shards, options); the others read them.
  par::on_root(r.par, "preparing the run", [&] {
    MOE_CHECK(!fs::exists(r.dir / "metrics.jsonl") && !fs::exists(r.dir / "checkpoint"), "train: '",
              r.opt.run_dir,
              "' already holds a run (use --resume to continue it, or --overwrite to start again)");
    fs::create_directories(r.dir / "data");

    // Distillation: the teacher's tokenizer, and --data may be a run directory's token shards.
    const bool distilling = !r.opt.teacher.empty();
    const std::string teacher_tok = distilling ? distill::teacher_tokenizer(r.opt.teacher) : std::string();
    const bool have_shards = distilling && distill::copy_run_shards(r.opt.data, teacher_tok,
                                                                    (r.dir / "data" / "train.bin").string(),
                                                                    (r.dir / "data" / "val.bin").string());
    const std::string text = have_shards          ? std::string()
                             : r.opt.data.empty() ? fortunes_corpus()
                                                  : read_text_corpus(r.opt.data);
    MOE_CHECK(have_shards || !text.empty(), "train: the corpus '", r.opt.data, "' is empty");
    if (!r.opt.init_from.empty()) {
      // Continue from an existing model (e.g. an upcycled one): its tokenizer, config and weights.
      const fs::path tp = distilling ? fs::path(teacher_tok) : fs::path(r.opt.init_from) / "tokenizer.json";
      MOE_CHECK(fs::exists(tp), "train: --init ", r.opt.init_from, " has no tokenizer.json");
      r.tok = text::Tokenizer::load(tp.string());
      r.opt.model = model::load_model_config((fs::path(r.opt.init_from) / "config.json").string());
      r.opt.vocab_size = r.tok.vocab_size();
      MOE_CHECK(r.tok.vocab_size() <= r.opt.model.vocab_size, "train: --init tokenizer has ",
                r.tok.vocab_size(), " tokens, the model's vocabulary ", r.opt.model.vocab_size);
    } else if (distilling) {
      r.tok = text::Tokenizer::load(teacher_tok);
      r.opt.vocab_size = r.tok.vocab_size();
    } else {
      r.tok = text::Tokenizer::train_bpe(text, r.opt.vocab_size);
    }
    r.tok.save((r.dir / "tokenizer.json").string());
    PrepareOptions po;
    po.val_every = 50;  // 2% of the documents, spread over the whole corpus
    if (!have_shards)
      prepare_shards(text, r.tok, (r.dir / "data" / "train.bin").string(),
                     (r.dir / "data" / "val.bin").string(), po);
    if (r.opt.init_from.empty()) {
      // A student keeps its vocab_size (the teacher's, checked when the teacher is loaded).
      if (!distilling) r.opt.model.vocab_size = r.tok.vocab_size();
      r.opt.model.eos_token_id = r.tok.eos_id();
      r.opt.model.bos_token_id = -1;
    }
    validate(r.opt);
    write_file_atomic(r.dir / "train_options.json", to_json(r.opt) + "\n");
  });
  if (!par::is_root(r.par)) {
    r.opt = train_options_from_json(read_file(r.dir / "train_options.json"));
    r.opt.run_dir = opt_in.run_dir;
    // What is not saved with the run: this invocation's own settings.
    r.opt.quiet = opt_in.quiet;
    r.opt.ep_chunks = opt_in.ep_chunks;
    r.opt.fault_nan_step = opt_in.fault_nan_step;
    r.opt.fault_exit_step = opt_in.fault_exit_step;
    r.opt.fault_hang_step = opt_in.fault_hang_step;
    r.tok = text::Tokenizer::load((r.dir / "tokenizer.json").string());
  }
  open_data(r);

  if (!r.opt.init_from.empty()) {
    r.model = std::make_unique<model::Transformer>(
        model::load_pretrained(r.opt.init_from, DType::F32, false, expert_parallel(r)));
  } else {
    r.model = std::make_unique<model::Transformer>(r.opt.model, DType::F32, false, expert_parallel(r));
    r.model->init_params(r.opt.seed);
  }
  r.model->set_bf16_compute(r.opt.bf16);
  if (!r.opt.teacher.empty()) r.teacher = distill::load_teacher(r.opt, r.model->config());
  r.adam = std::make_unique<AdamW>(AdamWConfig{r.opt.beta1, r.opt.beta2, 1e-8, r.opt.weight_decay});
  if (par::is_root(r.par)) {
    open_metrics(r);
    write_run_line(r, false);
  }
  if (!r.opt.quiet && par::is_root(r.par))
    std::printf(
        "model %s: %.2fM parameters (%.2fM active per token), %lld train tokens, unigram entropy %.3f\n",
        model::arch_name(r.opt.model.arch), r.opt.model.n_params() / 1e6, r.opt.model.n_active_params() / 1e6,
        (long long)r.train_shard.size(), r.unigram);
  if (!r.opt.quiet && r.teacher)
    std::printf("teacher %s: %.2fM parameters (%.2fM active per token), kd weight %g, temperature %g\n",
                r.opt.teacher.c_str(), r.teacher->config().n_params() / 1e6,
                r.teacher->config().n_active_params() / 1e6, r.opt.kd_weight, r.opt.temperature);
  TrainSummary s = loop(r, r.opt.halt_after, r.opt.time_limit_s);
  return s;
}

TrainSummary resume(const std::string& run_dir, int64_t override_steps, int64_t halt_after,
                    double time_limit_s, bool quiet, const dist::ParallelGroups* par, int ep_chunks) {
  ResumeOptions ro;
  ro.override_steps = override_steps, ro.halt_after = halt_after, ro.time_limit_s = time_limit_s;
  ro.quiet = quiet, ro.ep_chunks = ep_chunks;
  return resume(run_dir, ro, par);
}

TrainSummary resume(const std::string& run_dir, const ResumeOptions& ro, const dist::ParallelGroups* par) {
  const int64_t override_steps = ro.override_steps, halt_after = ro.halt_after;
  const double time_limit_s = ro.time_limit_s;
  const bool quiet = ro.quiet;
  const int ep_chunks = ro.ep_chunks;
  Run r;
  r.dir = run_dir;
  MOE_CHECK(fs::exists(r.dir / "train_options.json"), "resume: '", run_dir, "' is not a run directory (no ",
            "train_options.json)");
  r.opt = train_options_from_json(read_file(r.dir / "train_options.json"));
  r.opt.run_dir = run_dir;
  r.opt.quiet = quiet;
  r.opt.ep_chunks = ep_chunks;
  r.opt.on_metrics = ro.on_metrics;
  if (override_steps > 0) r.opt.steps = override_steps;
  validate(r.opt);
  set_parallel(r, par);
  fs::path ck = r.dir / "checkpoint";
  if (!fs::exists(ck / "trainer_state.json") && fs::exists(r.dir / "checkpoint.old" / "trainer_state.json"))
    ck = r.dir / "checkpoint.old";  // killed between the two renames of a save
  MOE_CHECK(fs::exists(ck / "trainer_state.json"), "resume: '", run_dir, "' has no checkpoint yet");
  r.tok = text::Tokenizer::load((r.dir / "tokenizer.json").string());
  open_data(r);
  // Any checkpoint loads with any number of ranks: each reads its experts' weights and moments.
  r.model = std::make_unique<model::Transformer>(
      model::load_pretrained(ck.string(), DType::F32, false, expert_parallel(r)));
  r.model->set_bf16_compute(r.opt.bf16);
  if (!r.opt.teacher.empty()) r.teacher = distill::load_teacher(r.opt, r.model->config());
  r.adam = std::make_unique<AdamW>(AdamWConfig{r.opt.beta1, r.opt.beta2, 1e-8, r.opt.weight_decay});
  std::vector<ParamRef> refs = param_refs(*r.model);
  r.adam->import_state(par::load_optimizer_state(ck.string(), *r.model), refs);
  json st;
  try {
    st = json::parse(read_file(ck / "trainer_state.json"));
    r.step = st.at("step").get<int64_t>();
    r.tokens = st.at("tokens").get<int64_t>();
    r.elapsed_s = st.at("elapsed_s").get<double>();
    r.sampler->set_position(
        {st.at("sampler").at("epoch").get<uint64_t>(), st.at("sampler").at("index").get<uint64_t>()});
  } catch (const json::exception& e) {
    throw Error(cat("resume: ", (ck / "trainer_state.json").string(), " is malformed: ", e.what()));
  }
  // Every rank has read the run's files before rank 0 writes any.
  if (r.par) r.par->world->barrier();
  if (par::is_root(r.par)) {
    if (override_steps > 0) write_file_atomic(r.dir / "train_options.json", to_json(r.opt) + "\n");
    open_metrics(r);
    write_run_line(r, true);
  }
  if (!quiet && par::is_root(r.par))
    std::printf("resumed %s at step %lld of %lld\n", run_dir.c_str(), (long long)r.step,
                (long long)r.opt.steps);
  return loop(r, halt_after, time_limit_s);
}

}  // namespace moe::train
