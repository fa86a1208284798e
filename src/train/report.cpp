// metrics.jsonl -> RunMetrics (see include/moe/train/report.h for the format), the summary figures,
// and write_report, which puts the page next to the log.
#include "moe/train/report.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "moe/core/error.h"

namespace moe::train {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::ordered_json;  // keeps config.json's key order for display

constexpr double kInf = std::numeric_limits<double>::infinity();

// Python's json module writes NaN, Infinity and -Infinity as bare tokens, which are not JSON. Outside
// string literals they become the strings "NaN", "Infinity" and "-Infinity", which number fields read.
std::string quote_nonfinite(const std::string& line) {
  if (line.find_first_of("NI") == std::string::npos) return line;
  std::string out;
  out.reserve(line.size() + 16);
  bool in_string = false, escaped = false;
  for (size_t i = 0; i < line.size();) {
    const char c = line[i];
    if (in_string) {
      out += c;
      if (escaped) {
        escaped = false;
      } else if (c == '\\') {
        escaped = true;
      } else if (c == '"') {
        in_string = false;
      }
      ++i;
      continue;
    }
    if (c == '"') {
      in_string = true;
      out += c;
      ++i;
      continue;
    }
    bool replaced = false;
    for (const char* token : {"-Infinity", "Infinity", "NaN"}) {
      const size_t n = std::char_traits<char>::length(token);
      if (line.compare(i, n, token) == 0) {
        out += cat('"', token, '"');
        i += n;
        replaced = true;
        break;
      }
    }
    if (!replaced) out += line[i++];
  }
  return out;
}

// Where a line is, for messages: "runs/a/metrics.jsonl:12: \"step\" line: ".
struct LineCtx {
  const std::string& path;
  size_t line = 0;
  std::string type;
  std::string where() const {
    return type.empty() ? cat(path, ":", line, ": ") : cat(path, ":", line, ": \"", type, "\" line: ");
  }
};

std::string short_dump(const json& v) {
  std::string text = v.dump();
  if (text.size() > 40) text = text.substr(0, 37) + "...";
  return text;
}

[[noreturn]] void bad_field(const LineCtx& c, const std::string& key, const char* expected, const json& v) {
  throw Error(cat(c.where(), "field '", key, "' must be ", expected, ", got ", short_dump(v)));
}

double num_value(const LineCtx& c, const std::string& key, const json& v) {
  if (v.is_number()) return v.get<double>();
  if (v.is_null()) return kNaN;
  if (v.is_string()) {
    const std::string& s = v.get_ref<const std::string&>();
    if (s == "NaN" || s == "nan") return kNaN;
    if (s == "Infinity" || s == "inf") return kInf;
    if (s == "-Infinity" || s == "-inf") return -kInf;
  }
  bad_field(c, key, "a number", v);
}

double get_num(const LineCtx& c, const json& j, const char* key) {
  auto it = j.find(key);
  return it == j.end() ? kNaN : num_value(c, key, *it);
}

int64_t int_value(const LineCtx& c, const std::string& key, const json& v) {
  if (v.is_number_integer() && !(v.is_number_unsigned() && v.get<uint64_t>() > INT64_MAX)) {
    return v.get<int64_t>();
  }
  if (v.is_number_float()) {
    const double d = v.get<double>();
    if (std::isfinite(d) && d == std::floor(d) && std::fabs(d) < 9e18) return static_cast<int64_t>(d);
  }
  bad_field(c, key, "an integer", v);
}

// j[key] as an integer; `fallback` when absent (or an error when `required`).
int64_t get_int(const LineCtx& c, const json& j, const char* key, bool required, int64_t fallback = -1) {
  auto it = j.find(key);
  if (it == j.end()) {
    MOE_CHECK(!required, c.where(), "missing field '", key, "'");
    return fallback;
  }
  return int_value(c, key, *it);
}

std::string get_str(const LineCtx& c, const json& j, const char* key) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return "";
  if (!it->is_string()) bad_field(c, key, "a string", *it);
  return it->get<std::string>();
}

bool get_bool(const LineCtx& c, const json& j, const char* key) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return false;
  if (!it->is_boolean()) bad_field(c, key, "true or false", *it);
  return it->get<bool>();
}

const json* get_array(const LineCtx& c, const json& j, const char* key) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return nullptr;
  if (!it->is_array()) bad_field(c, key, "an array", *it);
  return &*it;
}

std::vector<double> num_array(const LineCtx& c, const json& j, const char* key) {
  std::vector<double> out;
  if (const json* a = get_array(c, j, key)) {
    for (size_t i = 0; i < a->size(); ++i) out.push_back(num_value(c, cat(key, "[", i, "]"), (*a)[i]));
  }
  return out;
}

// Nested keys joined with '.', strings as they are, everything else as JSON text.
void flatten(const json& j, const std::string& prefix, FlatFields& out) {
  for (auto it = j.begin(); it != j.end(); ++it) {
    const std::string key = prefix.empty() ? it.key() : prefix + "." + it.key();
    if (it->is_object() && !it->empty()) {
      flatten(*it, key, out);
    } else if (it->is_string()) {
      out.emplace_back(key, it->get<std::string>());
    } else {
      std::string text = it->dump();
      if (text.size() > 200) text = text.substr(0, 197) + "...";
      out.emplace_back(key, text);
    }
  }
}

// The first of `keys` that holds a positive integer in the config, or -1.
int64_t config_int(const json& model, std::initializer_list<const char*> keys) {
  for (const char* k : keys) {
    auto it = model.find(k);
    if (it != model.end() && it->is_number_integer() && it->get<int64_t>() > 0) return it->get<int64_t>();
  }
  return -1;
}

// One line naming the model's shape from the usual config.json fields of MoE models.
std::string model_summary(const json& model) {
  std::vector<std::string> parts;
  auto type = model.find("model_type");
  if (type != model.end() && type->is_string()) parts.push_back(type->get<std::string>());
  if (int64_t v = config_int(model, {"num_hidden_layers", "n_layer", "n_layers"}); v > 0) {
    parts.push_back(cat(v, " layers"));
  }
  if (int64_t v = config_int(model, {"hidden_size", "d_model", "n_embd"}); v > 0)
    parts.push_back(cat("d_model ", v));
  const int64_t experts = config_int(model, {"num_local_experts", "num_experts", "n_routed_experts"});
  const int64_t top_k = config_int(model, {"num_experts_per_tok", "moe_top_k", "top_k"});
  if (experts > 0) {
    std::string s = cat(experts, " experts");
    if (top_k > 0) s += cat(", top-", top_k);
    if (int64_t sh = config_int(model, {"n_shared_experts", "num_shared_experts"}); sh > 0) {
      s += cat(" + ", sh, " shared");
    }
    parts.push_back(s);
  }
  if (int64_t v = config_int(model, {"moe_intermediate_size", "intermediate_size"}); v > 0) {
    parts.push_back(cat("d_ff ", v));
  }
  if (int64_t v = config_int(model, {"vocab_size"}); v > 0) parts.push_back(cat("vocab ", v));
  std::string out;
  for (const std::string& p : parts) out += (out.empty() ? "" : " · ") + p;
  return out;
}

RunStart parse_run(const LineCtx& c, const json& j) {
  RunStart r;
  r.line = c.line;
  r.started = get_str(c, j, "started");
  r.n_params = get_int(c, j, "n_params", false);
  r.n_active_params = get_int(c, j, "n_active_params", false);
  r.unigram_entropy = get_num(c, j, "unigram_entropy");
  for (const char* key : {"model", "train"}) {
    auto it = j.find(key);
    if (it == j.end() || it->is_null()) continue;
    if (!it->is_object()) bad_field(c, key, "an object", *it);
    flatten(*it, "", key[0] == 'm' ? r.model : r.train);
    if (key[0] == 'm') r.model_summary = model_summary(*it);
  }
  return r;
}

StepRecord parse_step(const LineCtx& c, const json& j) {
  StepRecord s;
  s.step = get_int(c, j, "step", true);
  s.loss = get_num(c, j, "loss");
  s.aux_loss = get_num(c, j, "aux_loss");
  s.lr = get_num(c, j, "lr");
  s.grad_norm = get_num(c, j, "grad_norm");
  s.tokens = get_int(c, j, "tokens", false);
  s.tokens_per_s = get_num(c, j, "tokens_per_s");
  s.elapsed_s = get_num(c, j, "elapsed_s");
  s.skipped = get_bool(c, j, "skipped");
  s.imbalance = num_array(c, j, "imbalance");
  s.mean_k = num_array(c, j, "mean_k");
  if (const json* load = get_array(c, j, "expert_load")) {
    for (size_t l = 0; l < load->size(); ++l) {
      const json& row = (*load)[l];
      const std::string key = cat("expert_load[", l, "]");
      if (!row.is_array()) bad_field(c, key, "an array", row);
      std::vector<double> fractions;  // (E)
      for (size_t e = 0; e < row.size(); ++e)
        fractions.push_back(num_value(c, cat(key, "[", e, "]"), row[e]));
      s.expert_load.push_back(std::move(fractions));
    }
  }
  if (const json* layers = get_array(c, j, "moe_layers")) {
    for (size_t l = 0; l < layers->size(); ++l)
      s.moe_layers.push_back(int_value(c, cat("moe_layers[", l, "]"), (*layers)[l]));
  }
  const size_t n_imb = s.imbalance.size(), n_load = s.expert_load.size(), n_idx = s.moe_layers.size();
  MOE_CHECK(n_imb == 0 || n_load == 0 || n_imb == n_load, c.where(), "'imbalance' has ", n_imb,
            " MoE layers but 'expert_load' has ", n_load);
  MOE_CHECK(n_idx == 0 || n_idx == std::max(n_imb, n_load), c.where(), "'moe_layers' has ", n_idx,
            " entries but the load statistics have ", std::max(n_imb, n_load), " MoE layers");
  return s;
}

// Elapsed seconds seen in one segment of the log (between "run" lines).
struct SegmentTime {
  double first = kNaN, last = kNaN;
  void add(double t) {
    if (!std::isfinite(t)) return;
    if (std::isnan(first)) first = t;
    last = std::isnan(last) ? t : std::max(last, t);
  }
};

// A resumed trainer may restart its clock or carry it on: a segment whose first elapsed_s is below
// the previous segment's last one restarted it (add all of it), otherwise add what it carried on.
double wall_time(const std::vector<SegmentTime>& segments) {
  double total = 0, prev_last = 0;
  bool any = false;
  for (const SegmentTime& s : segments) {
    if (std::isnan(s.last)) continue;
    total += s.first >= prev_last ? s.last - prev_last : s.last;
    prev_last = s.last;
    any = true;
  }
  return any ? total : kNaN;
}

// The parse error of nlohmann::json without its "[json.exception...] parse error at line 1, " prefix.
std::string parse_error_detail(const json::parse_error& e) {
  std::string msg = e.what();
  const size_t col = msg.find("column ");
  if (col != std::string::npos) return msg.substr(col);
  return msg;
}

}  // namespace

RunMetrics parse_metrics(const std::string& text, const std::string& path) {
  RunMetrics m;
  m.path = path;
  std::map<int64_t, StepRecord> steps;
  std::map<int64_t, EvalRecord> evals;
  std::map<int64_t, SkipRecord> skips;
  std::vector<SegmentTime> segments;
  // A resumed run rolls back to its checkpoint: at the first step it logs, what the earlier processes
  // logged from that step on is dropped (and the later line for a step wins).
  bool rewound = true;
  auto rewind = [&](int64_t from) {
    if (rewound) return;
    steps.erase(steps.lower_bound(from), steps.end());
    evals.erase(evals.lower_bound(from), evals.end());
    skips.erase(skips.lower_bound(from), skips.end());
    rewound = true;
  };
  size_t line_no = 0;
  for (size_t pos = 0; pos < text.size();) {
    const size_t nl = text.find('\n', pos);
    const bool has_newline = nl != std::string::npos;
    std::string line = text.substr(pos, has_newline ? nl - pos : std::string::npos);
    pos = has_newline ? nl + 1 : text.size();
    ++line_no;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.find_first_not_of(" \t") == std::string::npos) continue;

    LineCtx c{path, line_no, ""};
    json j;
    try {
      j = json::parse(quote_nonfinite(line));
    } catch (const json::parse_error& e) {
      if (!has_newline) {  // the last line, cut short by a kill while it was written
        m.warnings.push_back(cat(c.where(), "last line is cut short (no newline, not valid JSON); ignored"));
        break;
      }
      throw Error(cat(c.where(), "invalid JSON: ", parse_error_detail(e)));
    }
    MOE_CHECK(j.is_object(), c.where(), "expected a JSON object, got ", short_dump(j));
    auto type_it = j.find("type");
    MOE_CHECK(type_it != j.end(), c.where(), "missing field 'type'");
    if (!type_it->is_string()) bad_field(c, "type", "a string", *type_it);
    c.type = type_it->get<std::string>();
    MOE_CHECK(!m.runs.empty() || c.type == "run", path, ":", line_no,
              ": the first line must be a \"run\" line, got \"", c.type, "\"");

    if (c.type == "run") {
      m.runs.push_back(parse_run(c, j));
      segments.emplace_back();
      m.end.reset();
      rewound = m.runs.size() == 1;
    } else if (c.type == "step") {
      StepRecord s = parse_step(c, j);
      MOE_CHECK(s.step >= 0, c.where(), "field 'step' must be >= 0, got ", s.step);
      if (m.runs.back().first_step < 0) m.runs.back().first_step = s.step;
      rewind(s.step);
      segments.back().add(s.elapsed_s);
      steps[s.step] = std::move(s);
    } else if (c.type == "eval") {
      EvalRecord e;
      e.step = get_int(c, j, "step", true);
      e.loss = get_num(c, j, "loss");
      e.ppl = get_num(c, j, "ppl");
      e.tokens = get_int(c, j, "tokens", false);
      rewind(e.step);
      evals[e.step] = e;
    } else if (c.type == "skip") {
      SkipRecord s;
      s.step = get_int(c, j, "step", true);
      s.reason = get_str(c, j, "reason");
      rewind(s.step);
      skips[s.step] = s;
    } else if (c.type == "end") {
      EndRecord e;
      e.step = get_int(c, j, "step", true);
      e.elapsed_s = get_num(c, j, "elapsed_s");
      e.checkpoint = get_str(c, j, "checkpoint");
      segments.back().add(e.elapsed_s);
      m.end = e;
    }
    // Other types: written by a newer trainer; nothing here reads them.
  }
  for (auto& [step, s] : steps) m.steps.push_back(std::move(s));
  for (auto& [step, e] : evals) m.evals.push_back(e);
  for (auto& [step, s] : skips) m.skips.push_back(s);
  m.wall_time_s = wall_time(segments);
  return m;
}

RunMetrics read_metrics(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  MOE_CHECK(in.good(), "cannot open '", path, "'");
  std::ostringstream ss;
  ss << in.rdbuf();
  MOE_CHECK(!in.bad(), "cannot read '", path, "'");
  return parse_metrics(ss.str(), path);
}

ReportSummary summarize(const RunMetrics& m) {
  ReportSummary s;
  s.logged_steps = static_cast<int64_t>(m.steps.size());
  if (!m.runs.empty()) {
    const RunStart& last = m.runs.back();
    s.n_params = last.n_params;
    s.n_active_params = last.n_active_params;
    s.model_summary = last.model_summary;
    for (auto it = m.runs.rbegin(); it != m.runs.rend() && std::isnan(s.unigram_entropy); ++it) {
      s.unigram_entropy = it->unigram_entropy;
    }
    s.resumes = static_cast<int64_t>(m.runs.size()) - 1;
  }
  std::set<int64_t> skipped;
  std::vector<double> rates, recent;
  for (const StepRecord& st : m.steps) {
    if (st.skipped) skipped.insert(st.step);
    if (std::isfinite(st.loss)) s.final_loss = st.loss;
    if (std::isfinite(st.tokens_per_s)) rates.push_back(st.tokens_per_s);
    if (st.tokens >= 0) s.tokens = st.tokens;
    if (!st.imbalance.empty() || !st.expert_load.empty()) {
      s.moe_layers = static_cast<int64_t>(std::max(st.imbalance.size(), st.expert_load.size()));
    }
  }
  for (const SkipRecord& sk : m.skips) skipped.insert(sk.step);
  s.skipped_steps = static_cast<int64_t>(skipped.size());
  if (!m.steps.empty()) {
    s.first_step = m.steps.front().step;
    s.last_step = m.steps.back().step;
    const size_t from = m.steps.size() > 10 ? m.steps.size() - 10 : 0;
    double sum = 0;
    int n = 0;
    for (size_t i = from; i < m.steps.size(); ++i) {
      if (!std::isfinite(m.steps[i].loss)) continue;
      sum += m.steps[i].loss;
      ++n;
    }
    if (n > 0) s.final_loss_mean = sum / n;
  }
  if (!rates.empty()) {
    std::sort(rates.begin(), rates.end());
    const size_t n = rates.size();
    s.tokens_per_s_median = n % 2 == 1 ? rates[n / 2] : 0.5 * (rates[n / 2 - 1] + rates[n / 2]);
  }
  if (!m.evals.empty()) {
    const EvalRecord& e = m.evals.back();
    s.final_eval_step = e.step;
    s.final_eval_loss = e.loss;
    s.final_eval_ppl = e.ppl;
  }
  s.wall_time_s = m.wall_time_s;
  s.finished = m.end.has_value() && m.end->step >= s.last_step;
  return s;
}

ReportResult write_report(const ReportOptions& opt) {
  MOE_CHECK(!opt.run_dir.empty(), "report: no run directory given");
  const fs::path dir(opt.run_dir);
  std::error_code ec;
  MOE_CHECK(fs::exists(dir, ec), "run directory '", opt.run_dir, "' does not exist");
  MOE_CHECK(fs::is_directory(dir, ec), "'", opt.run_dir,
            "' is not a directory (expected a run directory of 'moe train')");
  const std::string metrics_path = (dir / "metrics.jsonl").string();
  MOE_CHECK(fs::is_regular_file(metrics_path, ec), "'", metrics_path,
            "' not found: not a run directory of 'moe train', or it has not logged yet");

  ReportResult r;
  r.metrics = read_metrics(metrics_path);
  r.summary = summarize(r.metrics);
  r.out_path = opt.out_path.empty() ? (dir / "report.html").string() : opt.out_path;
  MOE_CHECK(!fs::is_directory(r.out_path, ec), "cannot write '", r.out_path, "': it is a directory");
  MOE_CHECK(!fs::equivalent(r.out_path, metrics_path, ec), "cannot write '", r.out_path,
            "': it is the metrics log itself");
  const std::string html = report_html(r.metrics, opt.run_dir);

  const std::string tmp = r.out_path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    MOE_CHECK(out.good(), "cannot write '", r.out_path, "' (cannot create '", tmp, "')");
    out << html;
    out.close();
    MOE_CHECK(out.good(), "cannot write '", tmp, "'");
  }
  fs::rename(tmp, r.out_path, ec);
  if (ec) {
    const std::string why = ec.message();
    fs::remove(tmp, ec);
    throw Error(cat("cannot write '", r.out_path, "': ", why));
  }
  return r;
}

}  // namespace moe::train
