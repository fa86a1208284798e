// The training report: parsing metrics.jsonl (every line type, resumes, a cut-short last line,
// malformed lines naming file and line), the summary figures, and the HTML page (its plots, escaping,
// empty and single-step runs, non-finite values, binning, determinism) and where it is written.
#include <gtest/gtest.h>

#include <cctype>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include <unistd.h>

#include "moe/core/error.h"
#include "moe/train/report.h"
#include "moe/train/svg.h"

namespace fs = std::filesystem;
using json = nlohmann::json;
using moe::train::parse_metrics;
using moe::train::report_html;
using moe::train::RunMetrics;
using moe::train::summarize;

namespace {

std::string run_line(const std::string& model_type = "mixtral") {
  const nlohmann::ordered_json j = {{"type", "run"},
                                    {"model",
                                     {{"model_type", model_type},
                                      {"num_hidden_layers", 2},
                                      {"hidden_size", 64},
                                      {"num_local_experts", 4},
                                      {"num_experts_per_tok", 2},
                                      {"vocab_size", 256},
                                      {"rope_scaling", {{"type", "linear"}, {"factor", 2.0}}}}},
                                    {"train", {{"lr", 0.001}, {"data", "shards/*.bin"}}},
                                    {"started", "2025-01-01T00:00:00Z"},
                                    {"n_params", 1000000},
                                    {"n_active_params", 400000},
                                    {"unigram_entropy", 4.5}};
  return j.dump() + "\n";
}

// A step of a model with two MoE layers (model layers 0 and 1) of four experts.
json step_json(int64_t step, double loss, double elapsed) {
  const double shift = 0.01 * static_cast<double>(step % 7);
  return {{"type", "step"},
          {"step", step},
          {"loss", loss},
          {"aux_loss", 0.01},
          {"lr", 1e-3},
          {"grad_norm", 0.5},
          {"tokens", (step + 1) * 1000},
          {"tokens_per_s", 1000.0 + static_cast<double>(step)},
          {"elapsed_s", elapsed},
          {"skipped", false},
          {"imbalance", {1.2, 1.6}},
          {"expert_load", {{0.25, 0.25, 0.25, 0.25}, {0.4 - shift, 0.2, 0.2, 0.2 + shift}}},
          {"moe_layers", {0, 1}}};
}
std::string step_line(int64_t step, double loss, double elapsed) {
  return step_json(step, loss, elapsed).dump() + "\n";
}

std::string steps(int64_t from, int64_t to, double loss = 3.0) {
  std::string s;
  for (int64_t i = from; i < to; ++i)
    s += step_line(i, loss - 0.001 * static_cast<double>(i), static_cast<double>(i + 1));
  return s;
}

std::string loss_only_step(int64_t step) {
  return json{{"type", "step"}, {"step", step}, {"loss", 2.0}}.dump() + "\n";
}

// The message of the moe::Error that `f` throws ("(no error)" when it throws none).
template <typename F>
std::string error_of(F f) {
  try {
    f();
  } catch (const moe::Error& e) {
    return e.what();
  }
  return "(no error)";
}

size_t count_of(const std::string& text, const std::string& needle) {
  size_t n = 0;
  for (size_t pos = text.find(needle); pos != std::string::npos; pos = text.find(needle, pos + 1)) ++n;
  return n;
}

// True when the page prints a non-finite number (nan, inf) anywhere, e.g. as an SVG coordinate: the
// word "nan" or "inf" (any case) not inside a longer word.
bool prints_non_finite(const std::string& html) {
  auto letter = [](char c) { return std::isalpha(static_cast<unsigned char>(c)) != 0; };
  std::string lower = html;
  for (char& c : lower) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  for (const char* word : {"nan", "inf"}) {
    for (size_t pos = lower.find(word); pos != std::string::npos; pos = lower.find(word, pos + 1)) {
      const bool starts = pos == 0 || !letter(lower[pos - 1]);
      const bool ends = pos + 3 >= lower.size() || !letter(lower[pos + 3]);
      if (starts && ends) return true;
    }
  }
  return false;
}

// ---- parsing ----

TEST(ReportParse, ReadsEveryLineType) {
  std::string text = run_line() + steps(0, 3);
  text += R"({"type":"eval","step":2,"loss":3.1,"ppl":22.2,"tokens":5000})"
          "\n";
  json skipped = step_json(3, 0, 4);
  skipped["loss"] = nullptr;
  skipped["skipped"] = true;
  text += skipped.dump() + "\n";
  text += R"({"type":"skip","step":3,"reason":"non-finite loss"})"
          "\n";
  text += R"({"type":"end","step":3,"elapsed_s":4.5,"checkpoint":"run/ckpt-3"})"
          "\n";
  const RunMetrics m = parse_metrics(text, "run/metrics.jsonl");

  ASSERT_EQ(m.runs.size(), 1u);
  EXPECT_EQ(m.runs[0].started, "2025-01-01T00:00:00Z");
  EXPECT_EQ(m.runs[0].n_params, 1000000);
  EXPECT_EQ(m.runs[0].n_active_params, 400000);
  EXPECT_DOUBLE_EQ(m.runs[0].unigram_entropy, 4.5);
  EXPECT_EQ(m.runs[0].model_summary, "mixtral · 2 layers · d_model 64 · 4 experts, top-2 · vocab 256");
  EXPECT_EQ(m.runs[0].model.front().first, "model_type");  // the config's own order
  bool nested = false;
  for (const auto& [k, v] : m.runs[0].model) nested = nested || (k == "rope_scaling.factor" && v == "2.0");
  EXPECT_TRUE(nested);
  ASSERT_EQ(m.steps.size(), 4u);
  EXPECT_EQ(m.steps[1].step, 1);
  EXPECT_DOUBLE_EQ(m.steps[1].loss, 2.999);
  EXPECT_EQ(m.steps[1].tokens, 2000);
  ASSERT_EQ(m.steps[1].expert_load.size(), 2u);
  EXPECT_EQ(m.steps[1].expert_load[1].size(), 4u);
  EXPECT_EQ(m.steps[1].moe_layers, (std::vector<int64_t>{0, 1}));
  EXPECT_TRUE(m.steps[3].skipped);
  EXPECT_TRUE(std::isnan(m.steps[3].loss));
  ASSERT_EQ(m.evals.size(), 1u);
  EXPECT_DOUBLE_EQ(m.evals[0].ppl, 22.2);
  ASSERT_EQ(m.skips.size(), 1u);
  EXPECT_EQ(m.skips[0].reason, "non-finite loss");
  ASSERT_TRUE(m.end.has_value());
  EXPECT_EQ(m.end->checkpoint, "run/ckpt-3");
  EXPECT_TRUE(m.warnings.empty());

  const auto s = summarize(m);
  EXPECT_EQ(s.logged_steps, 4);
  EXPECT_EQ(s.last_step, 3);
  EXPECT_DOUBLE_EQ(s.final_loss, 2.998);  // the last finite loss
  EXPECT_EQ(s.final_eval_step, 2);
  EXPECT_EQ(s.skipped_steps, 1);  // the step line and the skip line name the same step
  EXPECT_EQ(s.tokens, 4000);
  EXPECT_DOUBLE_EQ(s.tokens_per_s_median, 1001.5);
  EXPECT_DOUBLE_EQ(s.wall_time_s, 4.5);
  EXPECT_TRUE(s.finished);
  EXPECT_EQ(s.moe_layers, 2);
}

TEST(ReportParse, ResumeLaterLineForAStepWins) {
  // The first process logs steps 0-4 and dies; the second resumes from step 3 with a fresh clock.
  std::string text = run_line() + steps(0, 5, 3.0) + run_line();
  for (int64_t i = 3; i < 7; ++i) text += step_line(i, 2.0, static_cast<double>(i - 2));
  const RunMetrics m = parse_metrics(text, "m.jsonl");
  ASSERT_EQ(m.runs.size(), 2u);
  EXPECT_EQ(m.runs[1].line, 7u);
  EXPECT_EQ(m.runs[1].first_step, 3);
  ASSERT_EQ(m.steps.size(), 7u);
  EXPECT_DOUBLE_EQ(m.steps[2].loss, 2.998);
  EXPECT_DOUBLE_EQ(m.steps[3].loss, 2.0);
  EXPECT_DOUBLE_EQ(m.steps[4].loss, 2.0);
  const auto s = summarize(m);
  EXPECT_EQ(s.resumes, 1);
  EXPECT_DOUBLE_EQ(s.wall_time_s, 5.0 + 4.0);  // the restarted clock adds all of its time
  EXPECT_FALSE(s.finished);

  // A clock carried on across the resume counts once.
  std::string carried = run_line() + steps(0, 5, 3.0) + run_line();
  for (int64_t i = 3; i < 7; ++i) carried += step_line(i, 2.0, static_cast<double>(i + 3));
  EXPECT_DOUBLE_EQ(parse_metrics(carried, "m.jsonl").wall_time_s, 9.0);
}

TEST(ReportParse, ResumeDropsWhatTheDeadProcessLoggedPastTheCheckpoint) {
  // Logged to step 9 (an eval at 8, a skip at 7), died, resumed from the checkpoint at step 5.
  std::string text = run_line() + steps(0, 10, 3.0);
  text += R"({"type":"eval","step":8,"loss":2.5,"ppl":12.2})"
          "\n";
  text += R"({"type":"skip","step":7,"reason":"non-finite loss"})"
          "\n";
  text += R"({"type":"eval","step":4,"loss":2.7,"ppl":14.9})"
          "\n";
  text += run_line() + step_line(5, 2.0, 1.0) + step_line(6, 2.0, 2.0);
  const RunMetrics m = parse_metrics(text, "m.jsonl");
  ASSERT_EQ(m.steps.size(), 7u);
  EXPECT_EQ(m.steps.back().step, 6);
  ASSERT_EQ(m.evals.size(), 1u);
  EXPECT_EQ(m.evals[0].step, 4);
  EXPECT_TRUE(m.skips.empty());
  EXPECT_EQ(summarize(m).skipped_steps, 0);
}

TEST(ReportParse, ResumeAfterEndReopensTheRun) {
  const std::string text = run_line() + steps(0, 2) +
                           R"({"type":"end","step":1,"elapsed_s":2})"
                           "\n" +
                           run_line();
  const RunMetrics m = parse_metrics(text, "m.jsonl");
  EXPECT_FALSE(m.end.has_value());
  EXPECT_FALSE(summarize(m).finished);
}

TEST(ReportParse, CutShortLastLineIsIgnoredWithAWarning) {
  const std::string text = run_line() + steps(0, 3) + R"({"type":"step","step":3,"lo)";
  const RunMetrics m = parse_metrics(text, "run/metrics.jsonl");
  EXPECT_EQ(m.steps.size(), 3u);
  ASSERT_EQ(m.warnings.size(), 1u);
  EXPECT_NE(m.warnings[0].find("run/metrics.jsonl:5:"), std::string::npos) << m.warnings[0];
  EXPECT_NE(m.warnings[0].find("cut short"), std::string::npos) << m.warnings[0];
}

TEST(ReportParse, CompleteLastLineWithoutNewlineIsRead) {
  std::string text = run_line() + steps(0, 3);
  text.pop_back();
  const RunMetrics m = parse_metrics(text, "m.jsonl");
  EXPECT_EQ(m.steps.size(), 3u);
  EXPECT_TRUE(m.warnings.empty());
}

TEST(ReportParse, MalformedLinesNameFileAndLine) {
  const std::string head = run_line() + steps(0, 1);  // lines 1-2; the bad line is line 3
  struct Case {
    std::string line, expect;
  };
  const std::vector<Case> cases = {
      {"{\"type\":\"step\",\"step\":1,,}", "invalid JSON"},
      {"[1, 2]", "expected a JSON object"},
      {R"({"step":1})", "missing field 'type'"},
      {R"({"type":7})", "field 'type' must be a string"},
      {R"({"type":"step","loss":1})", "missing field 'step'"},
      {R"({"type":"step","step":-4})", "must be >= 0, got -4"},
      {R"({"type":"step","step":1.5})", "field 'step' must be an integer, got 1.5"},
      {R"({"type":"step","step":1,"loss":"abc"})", "field 'loss' must be a number, got \"abc\""},
      {R"({"type":"step","step":1,"skipped":"no"})", "field 'skipped' must be true or false"},
      {R"({"type":"step","step":1,"expert_load":[0.5,0.5]})", "field 'expert_load[0]' must be an array"},
      {R"({"type":"step","step":1,"expert_load":[[0.5,"x"]]})", "field 'expert_load[0][1]' must be a number"},
      {R"({"type":"step","step":1,"imbalance":[1,2],"expert_load":[[1]]})", "'imbalance' has 2 MoE layers"},
      {R"({"type":"step","step":1,"imbalance":[1],"moe_layers":[1,3]})", "'moe_layers' has 2 entries"},
      {R"({"type":"eval","loss":1})", "\"eval\" line: missing field 'step'"},
      {R"({"type":"run","model":[1]})", "field 'model' must be an object"},
      {R"({"type":"end","step":2,"checkpoint":5})", "field 'checkpoint' must be a string"},
  };
  for (const Case& c : cases) {
    for (const char* tail : {"\n", "\n{\"type\":\"eval\",\"step\":9}\n"}) {
      const std::string msg = error_of([&] { parse_metrics(head + c.line + tail, "run/metrics.jsonl"); });
      EXPECT_NE(msg.find("run/metrics.jsonl:3: "), std::string::npos) << c.line << " -> " << msg;
      EXPECT_NE(msg.find(c.expect), std::string::npos) << c.line << " -> " << msg;
    }
  }
  // A complete line that is not valid JSON but has its newline is not a cut-short write.
  EXPECT_NE(
      error_of([&] { parse_metrics(head + "{\"type\":\"st\n", "m.jsonl"); }).find("m.jsonl:3: invalid JSON"),
      std::string::npos);
  // The log starts with its "run" line.
  EXPECT_NE(error_of([&] {
              parse_metrics(steps(0, 1), "m.jsonl");
            }).find("m.jsonl:1: the first line must be a \"run\""),
            std::string::npos);
}

TEST(ReportParse, NonFiniteNumbersInEveryWriterSpelling) {
  std::string text = run_line();
  text += R"({"type":"step","step":0,"loss":NaN,"grad_norm":Infinity,"lr":-Infinity,"aux_loss":null})"
          "\n";
  text += R"({"type":"step","step":1,"loss":"NaN","grad_norm":"Infinity","lr":"-Infinity"})"
          "\n";
  text += R"({"type":"skip","step":1,"reason":"NaN Infinity \"NaN\""})"
          "\n";  // tokens inside strings stay
  const RunMetrics m = parse_metrics(text, "m.jsonl");
  ASSERT_EQ(m.steps.size(), 2u);
  for (const auto& st : m.steps) {
    EXPECT_TRUE(std::isnan(st.loss));
    EXPECT_TRUE(std::isinf(st.grad_norm) && st.grad_norm > 0);
    EXPECT_TRUE(std::isinf(st.lr) && st.lr < 0);
  }
  EXPECT_TRUE(std::isnan(m.steps[0].aux_loss));
  EXPECT_EQ(m.skips[0].reason, "NaN Infinity \"NaN\"");
  EXPECT_TRUE(std::isnan(summarize(m).final_loss));
}

TEST(ReportParse, BlankLinesCrLfAndUnknownTypes) {
  std::string text = run_line() + "\n   \n" +
                     R"({"type":"checkpoint","step":0,"path":"x"})"
                     "\r\n";
  text += R"({"type":"step","step":0,"loss":1.5})"
          "\r\n";
  const RunMetrics m = parse_metrics(text, "m.jsonl");
  ASSERT_EQ(m.steps.size(), 1u);
  EXPECT_DOUBLE_EQ(m.steps[0].loss, 1.5);
  EXPECT_TRUE(std::isnan(m.steps[0].lr));
  EXPECT_EQ(m.steps[0].tokens, -1);
}

TEST(ReportParse, EmptyLogHasNoRuns) {
  const RunMetrics m = parse_metrics("", "m.jsonl");
  EXPECT_TRUE(m.runs.empty());
  EXPECT_TRUE(m.steps.empty());
  EXPECT_EQ(summarize(m).last_step, -1);
}

// ---- the page ----

TEST(ReportHtml, HasEveryPlotAndOneHeatmapPerMoELayer) {
  std::string text = run_line() + steps(0, 50);
  text += R"({"type":"eval","step":20,"loss":3.1,"ppl":22.2,"tokens":5000})"
          "\n";
  const std::string html = report_html(parse_metrics(text, "m.jsonl"), "runs/a");
  EXPECT_EQ(html.rfind("<!DOCTYPE html>", 0), 0u);
  for (const char* id :
       {"plot-loss", "plot-tps", "plot-lr", "plot-gnorm", "plot-aux", "plot-imbalance", "heat-0", "heat-1"}) {
    EXPECT_NE(html.find(std::string("id=\"") + id + "\""), std::string::npos) << id;
  }
  EXPECT_EQ(count_of(html, "<svg"), 8u);
  EXPECT_EQ(count_of(html, "</svg>"), 8u);
  EXPECT_NE(html.find("eval loss"), std::string::npos);
  EXPECT_NE(html.find("unigram entropy"), std::string::npos);
  EXPECT_NE(html.find("Layer 1: expert load, 4 experts"), std::string::npos);
  EXPECT_NE(html.find("1/E"), std::string::npos);
  // Self-contained: no scripts, no links to anywhere.
  EXPECT_EQ(html.find("<script"), std::string::npos);
  EXPECT_EQ(html.find("http"), std::string::npos);
  EXPECT_EQ(html.find("src="), std::string::npos);
  EXPECT_FALSE(prints_non_finite(html));
  EXPECT_TRUE(prints_non_finite("<path d=\"M1 -nan\"/>"));  // the check itself
  EXPECT_TRUE(prints_non_finite("x=\"inf\""));
  EXPECT_FALSE(prints_non_finite("infinity finite Nancy"));
}

TEST(ReportHtml, EscapesEveryTextFromTheLog) {
  std::string text = run_line("<script>alert(1)</script>");
  text += step_line(0, 2.0, 1.0);
  text += R"({"type":"skip","step":0,"reason":"<b>bad</b> & \"quoted\""})"
          "\n";
  text += R"({"type":"end","step":0,"checkpoint":"ckpt/'<x>'"})"
          "\n";
  const std::string html = report_html(parse_metrics(text, "runs/<a>&b/metrics.jsonl"), "runs/<a>&b");
  EXPECT_EQ(html.find("<script"), std::string::npos);
  EXPECT_NE(html.find("&lt;script&gt;alert(1)&lt;/script&gt;"), std::string::npos);
  EXPECT_NE(html.find("&lt;b&gt;bad&lt;/b&gt; &amp; &quot;quoted&quot;"), std::string::npos);
  EXPECT_NE(html.find("ckpt/&#39;&lt;x&gt;&#39;"), std::string::npos);
  EXPECT_NE(html.find("runs/&lt;a&gt;&amp;b"), std::string::npos);
  EXPECT_EQ(html.find("<a>"), std::string::npos);
  EXPECT_EQ(html.find("<b>"), std::string::npos);
}

TEST(ReportHtml, EmptyRunSaysNoStepsYet) {
  for (const std::string& text : {run_line(), std::string()}) {
    const std::string html = report_html(parse_metrics(text, "m.jsonl"), "runs/a");
    EXPECT_NE(html.find("No steps logged yet"), std::string::npos);
    EXPECT_EQ(html.find("<svg"), std::string::npos);
    EXPECT_NE(html.find("</html>"), std::string::npos);
  }
}

TEST(ReportHtml, SingleStepRendersFinitePlots) {
  const std::string html = report_html(parse_metrics(run_line() + steps(0, 1), "m.jsonl"), "runs/a");
  EXPECT_EQ(count_of(html, "<svg"), 8u);
  EXPECT_NE(html.find("<circle"), std::string::npos);  // a lone point of a line is drawn as a dot
  EXPECT_FALSE(prints_non_finite(html));
}

TEST(ReportHtml, NonFiniteValuesAreLeftOut) {
  std::string text = run_line();
  for (int64_t i = 0; i < 60; ++i) {
    json st = step_json(i, 3.0, static_cast<double>(i));
    if (i % 10 == 3) st["loss"] = nullptr;
    if (i % 10 == 4) st["grad_norm"] = "Infinity";
    if (i == 5) st["expert_load"][1][2] = "NaN";
    text += st.dump() + "\n";
  }
  const std::string html = report_html(parse_metrics(text, "m.jsonl"), "runs/a");
  EXPECT_EQ(count_of(html, "<svg"), 8u);
  EXPECT_FALSE(prints_non_finite(html));
}

TEST(ReportHtml, FieldsNotLoggedAreSaidSo) {
  std::string text = run_line();
  for (int i = 0; i < 5; ++i) text += loss_only_step(i);
  const std::string html = report_html(parse_metrics(text, "m.jsonl"), "runs/a");
  EXPECT_EQ(count_of(html, "not logged"), 3u);  // throughput, learning rate, grad norm
  EXPECT_EQ(html.find("plot-aux"), std::string::npos);
  EXPECT_EQ(html.find("plot-imbalance"), std::string::npos);
  EXPECT_NE(html.find("No expert load statistics"), std::string::npos);
}

TEST(ReportHtml, ManyStepsAreBinnedInTheHeatmaps) {
  const std::string html = report_html(parse_metrics(run_line() + steps(0, 1000), "m.jsonl"), "runs/a");
  EXPECT_NE(html.find("Layer 0: expert load, 4 experts (5 logged steps per column)"), std::string::npos);
  EXPECT_FALSE(prints_non_finite(html));
  EXPECT_LT(html.size(), 600u * 1024);  // long runs stay a small page
}

TEST(ReportHtml, SameInputSameBytes) {
  const RunMetrics m = parse_metrics(run_line() + steps(0, 300), "m.jsonl");
  EXPECT_EQ(report_html(m, "runs/a"), report_html(m, "runs/a"));
}

TEST(ReportSvg, TickLabelsAndEscaping) {
  using moe::train::svg::tick_label;
  EXPECT_EQ(tick_label(0.0, 0.5, 3), "0");
  EXPECT_EQ(tick_label(1.5, 0.5, 3), "1.5");
  EXPECT_EQ(tick_label(300, 100, 600), "300");
  EXPECT_EQ(tick_label(3e-4, 5e-5, 3e-4), "3e-4");
  EXPECT_EQ(tick_label(1e-4, 5e-5, 3e-4), "1e-4");
  EXPECT_EQ(tick_label(2.5e-4, 5e-5, 3e-4), "2.5e-4");
  EXPECT_EQ(tick_label(25000, 5000, 60000), "25k");
  EXPECT_EQ(tick_label(1.2e6, 2e5, 1.4e6), "1.2M");
  EXPECT_EQ(moe::train::svg::esc("<a href='x'>&\""), "&lt;a href=&#39;x&#39;&gt;&amp;&quot;");
  EXPECT_EQ(moe::train::svg::viridis(0), "#440154");
  EXPECT_EQ(moe::train::svg::viridis(1), "#fde725");
}

// ---- writing the page ----

class ReportWrite : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ = fs::temp_directory_path() / ("moe_report_" + std::to_string(::getpid()) + "_" + info->name());
    fs::create_directories(dir_);
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }
  void write_log(const std::string& text) { std::ofstream(dir_ / "metrics.jsonl", std::ios::binary) << text; }
  fs::path dir_;
};

TEST_F(ReportWrite, WritesReportNextToTheLog) {
  write_log(run_line() + steps(0, 5));
  const auto r = moe::train::write_report({dir_.string(), ""});
  EXPECT_EQ(r.out_path, (dir_ / "report.html").string());
  EXPECT_EQ(r.summary.logged_steps, 5);
  std::ifstream in(r.out_path);
  std::stringstream ss;
  ss << in.rdbuf();
  EXPECT_EQ(ss.str().rfind("<!DOCTYPE html>", 0), 0u);
  EXPECT_NE(ss.str().find("</html>"), std::string::npos);
  EXPECT_FALSE(fs::exists(dir_ / "report.html.tmp"));
}

TEST_F(ReportWrite, OutPathAndErrors) {
  write_log(run_line() + steps(0, 2));
  const fs::path out = dir_ / "elsewhere.html";
  EXPECT_EQ(moe::train::write_report({dir_.string(), out.string()}).out_path, out.string());
  EXPECT_TRUE(fs::exists(out));
  EXPECT_FALSE(fs::exists(dir_ / "report.html"));

  const std::string missing = (dir_ / "nope").string();
  EXPECT_NE(error_of([&] {
              moe::train::write_report({missing, ""});
            }).find("run directory '" + missing + "' does not exist"),
            std::string::npos);
  EXPECT_NE(error_of([&] {
              moe::train::write_report({out.string(), ""});
            }).find("is not a directory"),
            std::string::npos);
  fs::create_directories(dir_ / "empty");
  EXPECT_NE(error_of([&] {
              moe::train::write_report({(dir_ / "empty").string(), ""});
            }).find("metrics.jsonl' not found"),
            std::string::npos);
  EXPECT_NE(error_of([&] {
              moe::train::write_report({dir_.string(), (dir_ / "no_dir" / "r.html").string()});
            }).find("cannot write"),
            std::string::npos);
  EXPECT_NE(error_of([&] {
              moe::train::write_report({dir_.string(), dir_.string()});
            }).find("it is a directory"),
            std::string::npos);
  EXPECT_NE(error_of([&] {
              moe::train::write_report({dir_.string(), (dir_ / "metrics.jsonl").string()});
            }).find("it is the metrics log itself"),
            std::string::npos);
  write_log(run_line() + "{oops}\n" + steps(0, 2));
  EXPECT_NE(error_of([&] {
              moe::train::write_report({dir_.string(), ""});
            }).find("metrics.jsonl:2: invalid JSON"),
            std::string::npos);
}

}  // namespace
