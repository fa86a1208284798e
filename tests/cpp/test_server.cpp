// The server's pieces without a socket: request parsing and validation, the incremental
// detokenizer with stop strings, SSE chunks and the Prometheus text.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <map>
#include <sstream>

#include "moe/infer/server.h"

namespace {

using moe::infer::ApiError;
using moe::infer::CompletionParams;
using moe::infer::TextStream;
using nlohmann::json;

CompletionParams parse(const std::string& body, bool chat = false) {
  return moe::infer::parse_completion_request(body, chat);
}

// The ApiError of a body that must be refused.
ApiError refused(const std::string& body, bool chat = false) {
  try {
    parse(body, chat);
  } catch (const ApiError& e) {
    return e;
  }
  ADD_FAILURE() << "accepted: " << body;
  return ApiError(0, "");
}

TEST(ServerRequest, CompletionFields) {
  const CompletionParams p =
      parse(R"({"model":"x","prompt":"Hello","max_tokens":7,"temperature":0.5,"top_p":0.9,
    "top_k":40,"seed":3,"stop":["\n","END"],"repetition_penalty":1.1,"frequency_penalty":0.5,"presence_penalty":-0.5,
    "stream":true,"stream_options":{"include_usage":true},"n":1,"echo":false,"user":"u","logprobs":null})");
  EXPECT_EQ(p.prompt, "Hello");
  EXPECT_FALSE(p.prompt_is_tokens);
  EXPECT_EQ(p.max_tokens, 7);
  EXPECT_EQ(p.sampling.temperature, 0.5);
  EXPECT_EQ(p.sampling.top_p, 0.9);
  EXPECT_EQ(p.sampling.top_k, 40);
  EXPECT_EQ(p.sampling.seed, 3u);
  EXPECT_TRUE(p.seed_given);
  EXPECT_EQ(p.stop, (std::vector<std::string>{"\n", "END"}));
  EXPECT_EQ(p.sampling.repetition_penalty, 1.1);
  EXPECT_EQ(p.sampling.frequency_penalty, 0.5);
  EXPECT_EQ(p.sampling.presence_penalty, -0.5);
  EXPECT_TRUE(p.stream);
  EXPECT_TRUE(p.include_usage);
}

TEST(ServerRequest, Defaults) {
  const CompletionParams p = parse(R"({"prompt":"x"})");
  EXPECT_EQ(p.max_tokens, -1);
  EXPECT_EQ(p.sampling.temperature, 1.0);
  EXPECT_EQ(p.sampling.top_p, 1.0);
  EXPECT_EQ(p.sampling.top_k, 0);
  EXPECT_FALSE(p.seed_given);
  EXPECT_FALSE(p.stream);
  EXPECT_TRUE(p.stop.empty());
  EXPECT_FALSE(p.sampling.has_penalties());
  // null means "the default"; 16.0 is an integer; top_k -1 means all; a single stop string.
  const CompletionParams q =
      parse(R"({"prompt":"x","max_tokens":16.0,"temperature":null,"top_k":-1,"stop":"##"})");
  EXPECT_EQ(q.max_tokens, 16);
  EXPECT_EQ(q.sampling.temperature, 1.0);
  EXPECT_EQ(q.sampling.top_k, 0);
  EXPECT_EQ(q.stop, std::vector<std::string>{"##"});
}

TEST(ServerRequest, TokenPrompts) {
  EXPECT_EQ(parse(R"({"prompt":[5,9,11]})").prompt_tokens, (std::vector<int32_t>{5, 9, 11}));
  EXPECT_TRUE(parse(R"({"prompt":[[1,2]]})").prompt_is_tokens);
  EXPECT_EQ(parse(R"({"prompt":["one"]})").prompt, "one");
  EXPECT_EQ(refused(R"({"prompt":["a","b"]})").param, "prompt");
  EXPECT_EQ(refused(R"({"prompt":[1,-2]})").param, "prompt");
  EXPECT_EQ(refused(R"({"prompt":[1,"x"]})").param, "prompt");
  EXPECT_EQ(refused(R"({"prompt":[]})").param, "prompt");
}

TEST(ServerRequest, Chat) {
  const CompletionParams p = parse(R"({"messages":[{"role":"system","content":"S"},{"role":"user",
    "content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]},{"role":"assistant","content":null},
    {"role":"developer","content":"D"}],"max_completion_tokens":5})",
                                   true);
  ASSERT_EQ(p.messages.size(), 4u);
  EXPECT_EQ(p.messages[1].content, "ab");
  EXPECT_EQ(p.messages[2].content, "");
  EXPECT_EQ(p.messages[3].role, "system");
  EXPECT_EQ(p.max_tokens, 5);
  EXPECT_EQ(refused(R"({"messages":[]})", true).param, "messages");
  EXPECT_EQ(refused(R"({"messages":"hi"})", true).param, "messages");
  EXPECT_EQ(refused(R"({"messages":[{"role":"tool","content":"x"}]})", true).param, "messages[0].role");
  EXPECT_EQ(refused(R"({"messages":[{"role":"user","content":5}]})", true).param, "messages[0].content");
  EXPECT_EQ(refused(R"({"messages":[{"role":"user","content":[{"type":"image_url"}]}]})", true).param,
            "messages[0].content");
  EXPECT_EQ(refused(R"({"prompt":"x"})", true).param, "messages");  // chat needs messages
}

TEST(ServerRequest, Refusals) {
  const ApiError bad_json = refused("{\"prompt\": ");
  EXPECT_EQ(bad_json.status, 400);
  EXPECT_EQ(bad_json.code, "invalid_json");
  EXPECT_EQ(refused("[1,2]").status, 400);
  EXPECT_EQ(refused("{}").param, "prompt");
  // Wrong types name the field and the type received.
  const ApiError t = refused(R"({"prompt":"x","temperature":"hot"})");
  EXPECT_EQ(t.param, "temperature");
  EXPECT_NE(std::string(t.what()).find("a string"), std::string::npos);
  EXPECT_EQ(refused(R"({"prompt":"x","max_tokens":1.5})").param, "max_tokens");
  EXPECT_EQ(refused(R"({"prompt":"x","max_tokens":-1})").param, "max_tokens");
  EXPECT_EQ(refused(R"({"prompt":"x","stream":"yes"})").param, "stream");
  EXPECT_EQ(refused(R"({"prompt":"x","temperature":-0.1})").param, "temperature");
  EXPECT_EQ(refused(R"({"prompt":"x","top_p":0})").param, "top_p");
  EXPECT_EQ(refused(R"({"prompt":"x","top_k":-2})").param, "top_k");
  EXPECT_EQ(refused(R"({"prompt":"x","stop":["a",1]})").param, "stop");
  EXPECT_EQ(refused(R"({"prompt":"x","stop":["a","b","c","d","e"]})").param, "stop");
  EXPECT_EQ(refused(R"({"prompt":"x","stop":""})").param, "stop");
  EXPECT_EQ(refused(R"({"prompt":"x","repetition_penalty":0})").param, "repetition_penalty");
  EXPECT_EQ(refused(R"({"prompt":"x","frequency_penalty":2.5})").param, "frequency_penalty");
  EXPECT_EQ(refused(R"({"prompt":"x","presence_penalty":-3})").param, "presence_penalty");
  const ApiError n = refused(R"({"prompt":"x","n":2})");
  EXPECT_EQ(n.param, "n");
  EXPECT_NE(std::string(n.what()).find("n = 1"), std::string::npos);
  EXPECT_EQ(refused(R"({"prompt":"x","echo":true})").param, "echo");
  EXPECT_EQ(refused(R"({"prompt":"x","logprobs":5})").param, "logprobs");
  EXPECT_EQ(refused(R"({"prompt":"x","best_of":3})").param, "best_of");
}

TEST(ServerRequest, ErrorBody) {
  const json j =
      json::parse(moe::infer::error_body(ApiError(400, "bad \"x\"", "invalid_request_error", "x")));
  EXPECT_EQ(j["error"]["message"], "bad \"x\"");
  EXPECT_EQ(j["error"]["type"], "invalid_request_error");
  EXPECT_EQ(j["error"]["param"], "x");
  EXPECT_TRUE(j["error"]["code"].is_null());
}

TEST(ServerText, Utf8CompletePrefix) {
  using moe::infer::utf8_complete_prefix;
  // é = C3 A9, € = E2 82 AC, 😀 = F0 9F 98 80
  EXPECT_EQ(utf8_complete_prefix("abc"), 3u);
  EXPECT_EQ(utf8_complete_prefix("a\xC3\xA9"), 3u);
  EXPECT_EQ(utf8_complete_prefix("a\xC3"), 1u);
  EXPECT_EQ(utf8_complete_prefix("a\xE2\x82"), 1u);
  EXPECT_EQ(utf8_complete_prefix("a\xF0\x9F\x98"), 1u);
  EXPECT_EQ(utf8_complete_prefix("a\xF0\x9F\x98\x80"), 5u);
  EXPECT_EQ(utf8_complete_prefix("a\x80\x80\x80\x80"), 5u);  // stray continuation bytes are released
  EXPECT_EQ(utf8_complete_prefix(""), 0u);
}

// Feeds `pieces` one by one and returns what was released at each step, then the flush.
std::vector<std::string> feed(TextStream& s, const std::vector<std::string>& pieces) {
  std::vector<std::string> out;
  for (const std::string& p : pieces) out.push_back(s.push(p));
  out.push_back(s.flush());
  return out;
}

TEST(ServerText, HoldsBackSplitCharacters) {
  TextStream s;
  // "é" split over two tokens, then an emoji split in three.
  EXPECT_EQ(feed(s, {"caf\xC3", "\xA9!", "\xF0\x9F", "\x98", "\x80"}),
            (std::vector<std::string>{"caf", "\xC3\xA9!", "", "", "\xF0\x9F\x98\x80", ""}));
  EXPECT_EQ(s.text(), "caf\xC3\xA9!\xF0\x9F\x98\x80");
  TextStream t;
  EXPECT_EQ(feed(t, {"x\xE2\x82"}), (std::vector<std::string>{"x", "\xE2\x82"}));  // flushed at the end as is
}

TEST(ServerText, StopStrings) {
  TextStream s({"STOP", "\n\n"});
  EXPECT_EQ(s.push("Hello S"), "Hello ");  // "S" could start "STOP"
  EXPECT_EQ(s.push("T"), "");
  EXPECT_EQ(s.push("ay"), "STay");  // not a stop after all
  EXPECT_EQ(s.push(" and ST"), " and ");
  EXPECT_FALSE(s.stopped());
  EXPECT_EQ(s.push("OP here"), "");
  EXPECT_TRUE(s.stopped());
  EXPECT_EQ(s.text(), "Hello STay and ");
  EXPECT_EQ(s.push("more"), "");
  EXPECT_EQ(s.flush(), "");
  // A stop string inside one token; the earliest of two wins.
  TextStream t({"b", "a"});
  EXPECT_EQ(t.push("xyzab"), "xyz");
  EXPECT_TRUE(t.stopped());
  // A partial stop string left at the end is released by flush().
  TextStream u({"<end>"});
  EXPECT_EQ(u.push("ok <en"), "ok ");
  EXPECT_EQ(u.flush(), "<en");
  EXPECT_EQ(u.text(), "ok <en");
  // Stop strings that span several tokens.
  TextStream v({"\n\n"});
  EXPECT_EQ(feed(v, {"a", "\n", "\n", "b"}), (std::vector<std::string>{"a", "", "", "", ""}));
  EXPECT_TRUE(v.stopped());
}

TEST(ServerText, Chunks) {
  const moe::infer::ResponseIds ids{"cmpl-1", 1700000000, "m"};
  const std::string sse = moe::infer::sse_data(moe::infer::completion_chunk(ids, "hi", ""));
  ASSERT_EQ(sse.rfind("data: ", 0), 0u);
  ASSERT_EQ(sse.substr(sse.size() - 2), "\n\n");
  EXPECT_EQ(sse.find('\n'), sse.size() - 2);  // one line: JSON escapes newlines
  const json c = json::parse(sse.substr(6));
  EXPECT_EQ(c["object"], "text_completion");
  EXPECT_EQ(c["choices"][0]["text"], "hi");
  EXPECT_TRUE(c["choices"][0]["finish_reason"].is_null());
  EXPECT_EQ(std::string(moe::infer::sse_done()), "data: [DONE]\n\n");

  const json first = moe::infer::chat_chunk(ids, "", true, "");
  EXPECT_EQ(first["object"], "chat.completion.chunk");
  EXPECT_EQ(first["choices"][0]["delta"], (json{{"role", "assistant"}, {"content", ""}}));
  const json last = moe::infer::chat_chunk(ids, "", false, "stop");
  EXPECT_EQ(last["choices"][0]["delta"], json::object());
  EXPECT_EQ(last["choices"][0]["finish_reason"], "stop");
  const json u = moe::infer::usage_chunk(ids, true, 3, 4);
  EXPECT_TRUE(u["choices"].empty());
  EXPECT_EQ(u["usage"]["total_tokens"], 7);

  const json r = moe::infer::chat_response(ids, "text\n", "length", 5, 2);
  EXPECT_EQ(r["object"], "chat.completion");
  EXPECT_EQ(r["choices"][0]["message"]["role"], "assistant");
  EXPECT_EQ(r["choices"][0]["message"]["content"], "text\n");
  EXPECT_EQ(r["usage"], (json{{"prompt_tokens", 5}, {"completion_tokens", 2}, {"total_tokens", 7}}));
  // Invalid UTF-8 (a token cut mid-character at the end) becomes U+FFFD, not an exception.
  const json bad =
      json::parse(moe::infer::json_dump(moe::infer::completion_response(ids, "a\xE2\x82", "stop", 1, 1)));
  EXPECT_EQ(bad["choices"][0]["text"], "a\xEF\xBF\xBD");
}

// Parses Prometheus text: every sample line is `name{labels} value`, every family has HELP and TYPE.
std::map<std::string, double> parse_prometheus(const std::string& text) {
  std::map<std::string, double> samples;
  std::map<std::string, std::string> types;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    EXPECT_FALSE(line.empty());
    if (line.rfind("# TYPE ", 0) == 0) {
      std::istringstream f(line.substr(7));
      std::string name, type;
      f >> name >> type;
      EXPECT_TRUE(type == "counter" || type == "gauge" || type == "histogram") << line;
      types[name] = type;
      continue;
    }
    if (line[0] == '#') continue;
    const size_t sp = line.rfind(' ');
    const std::string key = line.substr(0, sp);
    const std::string name = key.substr(0, key.find('{'));
    std::string family = name;
    for (const char* suffix : {"_bucket", "_sum", "_count"})
      if (!types.count(family) && family.size() > strlen(suffix) &&
          family.compare(family.size() - strlen(suffix), strlen(suffix), suffix) == 0)
        family = family.substr(0, family.size() - strlen(suffix));
    EXPECT_TRUE(types.count(family)) << "no # TYPE for " << line;
    const std::string v = line.substr(sp + 1);
    samples[key] = v == "+Inf" ? INFINITY : std::stod(v);
  }
  return samples;
}

TEST(ServerMetrics, PrometheusText) {
  moe::infer::ServerMetrics m;
  m.count_request("/v1/completions", 200);
  m.count_request("/v1/completions", 200);
  m.count_request("/v1/chat/completions", 429);
  m.observe(0.3, 0.02);
  m.observe(7.0, 0.5);
  m.observe(1000.0, 0.001);  // beyond the last bucket: only +Inf
  moe::infer::EngineStats s;
  s.queued = 3;
  s.running = 2;
  s.generated_tokens = 120;
  s.kv_blocks_total = 64;
  s.kv_blocks_used = 10;
  s.batch_tokens_last = 17;
  s.forward_passes = 4;
  s.batch_seqs_sum = 10;
  s.moe_layers = {1, 3};
  s.expert_hits = {{5, 0, 7}, {1, 2, 3}};
  const auto v = parse_prometheus(m.render(s, 42.5, 10));
  EXPECT_EQ(v.at("moe_http_requests_total{endpoint=\"/v1/completions\",status=\"200\"}"), 2);
  EXPECT_EQ(v.at("moe_http_requests_total{endpoint=\"/v1/chat/completions\",status=\"429\"}"), 1);
  EXPECT_EQ(v.at("moe_queue_length"), 3);
  EXPECT_EQ(v.at("moe_running_requests"), 2);
  EXPECT_EQ(v.at("moe_generation_tokens_total"), 120);
  EXPECT_EQ(v.at("moe_generation_tokens_per_second"), 42.5);
  EXPECT_EQ(v.at("moe_kv_blocks_used"), 10);
  EXPECT_EQ(v.at("moe_batch_tokens"), 17);
  EXPECT_EQ(v.at("moe_batch_sequences_mean"), 2.5);
  EXPECT_EQ(v.at("moe_expert_tokens_total{layer=\"1\",expert=\"2\"}"), 7);
  EXPECT_EQ(v.at("moe_expert_tokens_total{layer=\"3\",expert=\"0\"}"), 1);
  // Histogram buckets are cumulative and end with +Inf = count.
  EXPECT_EQ(v.at("moe_request_latency_seconds_bucket{le=\"0.25\"}"), 0);
  EXPECT_EQ(v.at("moe_request_latency_seconds_bucket{le=\"0.5\"}"), 1);
  EXPECT_EQ(v.at("moe_request_latency_seconds_bucket{le=\"10\"}"), 2);
  EXPECT_EQ(v.at("moe_request_latency_seconds_bucket{le=\"300\"}"), 2);
  EXPECT_EQ(v.at("moe_request_latency_seconds_bucket{le=\"+Inf\"}"), 3);
  EXPECT_EQ(v.at("moe_request_latency_seconds_count"), 3);
  EXPECT_DOUBLE_EQ(v.at("moe_request_latency_seconds_sum"), 1007.3);
  EXPECT_EQ(v.at("moe_time_to_first_token_seconds_bucket{le=\"0.005\"}"), 1);
}

}  // namespace
