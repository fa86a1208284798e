// Tokenizers in GGUF metadata (tokenizer.ggml.*) <-> Hugging Face tokenizer.json, so that the text
// layer's tokenizer.json pipelines serve GGUF files too.
//
//   gpt2   byte-level BPE: tokens (byte-level strings, added tokens by content), merges ("a b"),
//          token_type (1 normal, 3 control, 4 user-defined), pre (the pre-tokenizer's name in
//          llama.cpp: gpt-2/default, olmo, qwen2, llama-bpe, deepseek-v3).
//   llama  SentencePiece-style BPE with byte fallback: tokens ("▁" for spaces, <0xXX> bytes),
//          scores and token_type (2 unknown, 3 control, 6 byte). GGUF holds no merges: a merge
//          (a, b) exists for every token a + b whose parts are tokens, ranked by the score of a + b
//          (higher first; ties by the ids of a and b), which is how llama.cpp's tokenizer merges.
#include <algorithm>
#include <functional>
#include <nlohmann/json.hpp>
#include <string_view>
#include <unordered_map>

#include "moe/core/error.h"
#include "moe/model/gguf_model.h"

namespace moe::model {

namespace {

using json = nlohmann::ordered_json;

constexpr int kNormal = 1, kUnknown = 2, kControl = 3, kUserDefined = 4, kUnused = 5, kByte = 6;

const char* const kQwen2Regex =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
const char* const kLlama3Regex =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
const char* const kDeepSeekV3Pre =
    R"({"type":"Sequence","pretokenizers":[{"type":"Split","pattern":{"Regex":"\\p{N}{1,3}"},"behavior":"Isolated","invert":false},{"type":"Split","pattern":{"Regex":"[一-龥぀-ゟ゠-ヿ]+"},"behavior":"Isolated","invert":false},{"type":"Split","pattern":{"Regex":"[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\r\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+| ?[\\p{P}\\p{S}]+[\r\n]*|\\s*[\r\n]+|\\s+(?!\\S)|\\s+"},"behavior":"Isolated","invert":false},{"type":"ByteLevel","add_prefix_space":false,"trim_offsets":true,"use_regex":false}]})";

json byte_level(bool use_regex) {
  return {
      {"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", use_regex}};
}

json split_then_bytes(const char* regex) {
  json split = {
      {"type", "Split"}, {"pattern", {{"Regex", regex}}}, {"behavior", "Isolated"}, {"invert", false}};
  return {{"type", "Sequence"}, {"pretokenizers", json::array({split, byte_level(false)})}};
}

json bos_template(const std::string& bos, int64_t id) {
  json tok = {{"SpecialToken", {{"id", bos}, {"type_id", 0}}}};
  json seq = {{"Sequence", {{"id", "A"}, {"type_id", 0}}}};
  return {
      {"type", "TemplateProcessing"},
      {"single", json::array({tok, seq})},
      {"pair", json::array({tok, seq, tok, {{"Sequence", {{"id", "B"}, {"type_id", 1}}}}})},
      {"special_tokens", {{bos, {{"id", bos}, {"ids", json::array({id})}, {"tokens", json::array({bos})}}}}}};
}

// The id of a special token named by metadata key `key`, or -1 when absent or out of range.
int64_t special_id(const gguf::Reader& r, const std::string& key, size_t n) {
  const int64_t id = r.has(key) && r.find(key)->is_int() ? r.get_int(key) : -1;
  return id >= 0 && static_cast<size_t>(id) < n ? id : -1;
}

// "a b" merges of a SentencePiece vocabulary, from the scores (see the file comment).
std::vector<std::string> merges_from_scores(const std::vector<std::string>& tokens,
                                            const std::vector<double>& scores,
                                            const std::vector<int64_t>& types) {
  std::unordered_map<std::string, int64_t> id;
  for (size_t i = 0; i < tokens.size(); ++i)
    if (types[i] == kNormal) id.emplace(tokens[i], static_cast<int64_t>(i));
  struct Cand {
    double score;
    int64_t a, b;
  };
  std::vector<Cand> cands;
  for (size_t t = 0; t < tokens.size(); ++t) {
    if (types[t] != kNormal) continue;
    const std::string& s = tokens[t];
    for (size_t cut = 1; cut < s.size(); ++cut) {
      if ((static_cast<unsigned char>(s[cut]) & 0xC0) == 0x80) continue;  // inside a UTF-8 character
      auto a = id.find(s.substr(0, cut)), b = id.find(s.substr(cut));
      if (a != id.end() && b != id.end()) cands.push_back({scores[t], a->second, b->second});
    }
  }
  std::stable_sort(cands.begin(), cands.end(), [](const Cand& x, const Cand& y) {
    if (x.score != y.score) return x.score > y.score;
    return x.a != y.a ? x.a < y.a : x.b < y.b;
  });
  std::vector<std::string> out;
  out.reserve(cands.size());
  for (const Cand& c : cands) out.push_back(tokens[c.a] + " " + tokens[c.b]);
  return out;
}

}  // namespace

std::string gguf_tokenizer_json(const gguf::Reader& r) {
  const std::string model = r.get_string("tokenizer.ggml.model", "");
  if (model.empty() || model == "none" || model == "no_vocab") return "";
  const std::string where = cat("gguf '", r.path(), "': tokenizer");
  MOE_CHECK(model == "gpt2" || model == "llama", where, ": tokenizer.ggml.model '", model,
            "' is not supported (gpt2 and llama are)");
  const gguf::Value* tv = r.find("tokenizer.ggml.tokens");
  MOE_CHECK(tv && tv->is_array() && tv->elem == gguf::ValueType::STRING, where,
            ": tokenizer.ggml.tokens is missing or not an array of strings");
  const std::vector<std::string>& tokens = tv->strings;
  size_t n = tokens.size();
  std::vector<int64_t> types(n, kNormal);
  if (const gguf::Value* t = r.find("tokenizer.ggml.token_type")) {
    MOE_CHECK(t->is_array() && t->ints.size() == n, where, ": tokenizer.ggml.token_type has ", t->count,
              " entries for ", n, " tokens");
    types = t->ints;
  }
  // Unused tokens at the end pad the list to the embedding's rows: the tokenizer stops before them
  // (as Hugging Face's does), so that they decode to nothing.
  while (n > 0 && types[n - 1] == kUnused) --n;
  // A repeated token keeps its last id (as a Python dict would) at its first position. Built without
  // the ordered object's lookups, which are linear: a 150k-token vocabulary stays linear here.
  std::unordered_map<std::string_view, size_t> last;
  last.reserve(n);
  for (size_t i = 0; i < n; ++i) last[tokens[i]] = i;
  json vocab = json::object();
  json::object_t& entries = vocab.get_ref<json::object_t&>();
  entries.reserve(last.size());
  std::unordered_map<std::string_view, bool> placed;
  placed.reserve(n);
  for (size_t i = 0; i < n; ++i)
    if (placed.emplace(tokens[i], true).second) entries.emplace_back(tokens[i], last[tokens[i]]);
  json added = json::array();
  for (size_t i = 0; i < n; ++i) {
    const int64_t ty = types[i];
    if (ty != kControl && ty != kUserDefined && ty != kUnknown) continue;
    added.push_back({{"id", i},
                     {"content", tokens[i]},
                     {"single_word", false},
                     {"lstrip", false},
                     {"rstrip", false},
                     {"normalized", ty == kUserDefined},
                     {"special", ty != kUserDefined}});
  }
  const int64_t bos = special_id(r, "tokenizer.ggml.bos_token_id", n);
  json root = {{"version", "1.0"}, {"truncation", nullptr}, {"padding", nullptr}, {"added_tokens", added}};
  json m = {{"type", "BPE"},
            {"dropout", nullptr},
            {"unk_token", nullptr},
            {"continuing_subword_prefix", nullptr},
            {"end_of_word_suffix", nullptr},
            {"fuse_unk", false},
            {"byte_fallback", false},
            {"ignore_merges", false},
            {"vocab", vocab}};
  if (model == "gpt2") {
    const bool add_bos =
        r.has("tokenizer.ggml.add_bos_token") && r.get_int("tokenizer.ggml.add_bos_token") != 0;
    const gguf::Value* mv = r.find("tokenizer.ggml.merges");
    MOE_CHECK(mv && mv->is_array() && mv->elem == gguf::ValueType::STRING, where,
              ": tokenizer.ggml.merges is missing or not an array of strings");
    m["merges"] = mv->strings;
    const std::string pre = r.get_string("tokenizer.ggml.pre", "default");
    root["normalizer"] = nullptr;
    if (pre == "gpt-2" || pre == "default" || pre == "gpt2") {
      root["pre_tokenizer"] = byte_level(true);
    } else if (pre == "olmo") {
      root["normalizer"] = {{"type", "NFC"}};
      root["pre_tokenizer"] = byte_level(true);
    } else if (pre == "qwen2") {
      root["normalizer"] = {{"type", "NFC"}};
      root["pre_tokenizer"] = split_then_bytes(kQwen2Regex);
    } else if (pre == "llama-bpe" || pre == "llama3") {
      root["pre_tokenizer"] = split_then_bytes(kLlama3Regex);
    } else if (pre == "deepseek-v3") {
      root["pre_tokenizer"] = json::parse(kDeepSeekV3Pre);
    } else {
      throw Error(cat(where, ": tokenizer.ggml.pre '", pre,
                      "' is not supported (gpt-2, default, olmo, qwen2, llama-bpe and deepseek-v3 are)"));
    }
    root["post_processor"] = add_bos && bos >= 0 ? bos_template(tokens[bos], bos) : byte_level(true);
    root["decoder"] = byte_level(true);
  } else {
    const gguf::Value* sv = r.find("tokenizer.ggml.scores");
    MOE_CHECK(sv && sv->is_array() && sv->floats.size() == tokens.size(), where,
              ": tokenizer.ggml.scores is missing or does not have one score per token");
    m["merges"] = merges_from_scores({tokens.begin(), tokens.begin() + static_cast<std::ptrdiff_t>(n)},
                                     sv->floats, types);
    m["byte_fallback"] = true;
    m["fuse_unk"] = true;
    const int64_t unk = special_id(r, "tokenizer.ggml.unknown_token_id", n);
    if (unk >= 0) m["unk_token"] = tokens[unk];
    const bool prefix =
        !r.has("tokenizer.ggml.add_space_prefix") || r.get_int("tokenizer.ggml.add_space_prefix") != 0;
    json replace = {{"type", "Replace"}, {"pattern", {{"String", " "}}}, {"content", "\u2581"}};
    root["normalizer"] =
        prefix ? json{{"type", "Sequence"},
                      {"normalizers", json::array({{{"type", "Prepend"}, {"prepend", "\u2581"}}, replace})}}
               : replace;
    root["pre_tokenizer"] = nullptr;
    const bool add_bos =
        !r.has("tokenizer.ggml.add_bos_token") || r.get_int("tokenizer.ggml.add_bos_token") != 0;
    root["post_processor"] = add_bos && bos >= 0 ? bos_template(tokens[bos], bos) : json(nullptr);
    json dec = json::array({{{"type", "Replace"}, {"pattern", {{"String", "\u2581"}}}, {"content", " "}},
                            {{"type", "ByteFallback"}},
                            {{"type", "Fuse"}}});
    if (prefix) dec.push_back({{"type", "Strip"}, {"content", " "}, {"start", 1}, {"stop", 0}});
    root["decoder"] = {{"type", "Sequence"}, {"decoders", dec}};
  }
  root["model"] = m;
  try {
    return root.dump();
  } catch (const nlohmann::json::exception& e) {  // a token or merge that is not UTF-8
    throw Error(cat(where, ": a token or merge is not valid UTF-8 (", e.what(), ")"));
  }
}

std::vector<std::pair<std::string, gguf::Value>> gguf_tokenizer_metadata(const std::string& text,
                                                                         const ModelConfig& c) {
  json root;
  try {
    root = json::parse(text);
  } catch (const json::exception& e) {
    throw Error(cat("export: tokenizer.json: not valid JSON: ", e.what()));
  }
  MOE_CHECK(root.is_object() && root.contains("model") && root["model"].is_object() &&
                root["model"].value("type", "") == "BPE" && root["model"]["vocab"].is_object() &&
                root["model"]["merges"].is_array(),
            "export: tokenizer.json: only BPE models with a vocab and merges are written to GGUF");
  const json& model = root["model"];
  // Tokens by id, added tokens included.
  std::vector<std::string> tokens;
  std::vector<int64_t> types;
  auto put = [&](int64_t id, const std::string& s, int64_t type) {
    MOE_CHECK(id >= 0 && id < (int64_t{1} << 24), "export: tokenizer.json: token id ", id, " out of range");
    if (static_cast<size_t>(id) >= tokens.size())
      tokens.resize(static_cast<size_t>(id) + 1), types.resize(tokens.size(), 0);
    tokens[id] = s;
    types[id] = type;
  };
  const bool spm = model.value("byte_fallback", false);
  for (const auto& [key, v] : model["vocab"].items()) {
    const bool is_byte = spm && key.size() == 6 && key.compare(0, 3, "<0x") == 0 && key.back() == '>';
    put(v.get<int64_t>(), key, is_byte ? kByte : kNormal);
  }
  int64_t bos = c.bos_token_id, eos = c.eos_token_id, unk = -1;
  if (root.contains("added_tokens") && root["added_tokens"].is_array())
    for (const json& a : root["added_tokens"]) {
      const std::string content = a.value("content", "");
      const int64_t id = a.value("id", int64_t{-1});
      put(id, content, a.value("special", false) ? kControl : kUserDefined);
      if (model.contains("unk_token") && model["unk_token"].is_string() && model["unk_token"] == content)
        unk = id, types[id] = kUnknown;
      for (const char* b : {"<s>", "<|begin_of_text|>", "<｜begin▁of▁sentence｜>"})
        if (bos < 0 && content == b) bos = id;
      for (const char* e :
           {"</s>", "<|endoftext|>", "<|im_end|>", "<|end_of_text|>", "<｜end▁of▁sentence｜>"})
        if (eos < 0 && content == e) eos = id;
    }
  for (size_t i = 0; i < tokens.size(); ++i)
    MOE_CHECK(types[i] != 0, "export: tokenizer.json: no token has id ", i);
  MOE_CHECK(c.vocab_size == 0 || static_cast<int64_t>(tokens.size()) <= c.vocab_size,
            "export: the tokenizer has ", tokens.size(), " tokens but the model only ", c.vocab_size);
  // llama.cpp wants one token per embedding row: pad as the converter does ("[PADi]", unused).
  for (auto i = static_cast<int64_t>(tokens.size()); i < c.vocab_size; ++i) {
    tokens.push_back(cat("[PAD", i, "]"));
    types.push_back(kUnused);
  }
  std::vector<std::string> merges;
  for (const json& mg : model["merges"])
    merges.push_back(mg.is_string() ? mg.get<std::string>()
                                    : mg[0].get<std::string>() + " " + mg[1].get<std::string>());
  const bool add_bos = root.contains("post_processor") && root["post_processor"].is_object() &&
                       root["post_processor"].value("type", "") == "TemplateProcessing";
  std::vector<std::pair<std::string, gguf::Value>> kv;
  if (spm) {
    // Scores: a token made by merge r scores -r (the first merge that makes it), others -1e9.
    std::unordered_map<std::string, int64_t> id;
    for (size_t i = 0; i < tokens.size(); ++i) id.emplace(tokens[i], static_cast<int64_t>(i));
    std::vector<double> scores(tokens.size(), -1e9);
    for (size_t r = merges.size(); r-- > 0;) {
      const size_t sp = merges[r].find(' ');
      auto it = id.find(merges[r].substr(0, sp) + merges[r].substr(sp + 1));
      if (it != id.end()) scores[it->second] = -static_cast<double>(r);
    }
    kv.emplace_back("tokenizer.ggml.model", gguf::str_value("llama"));
    kv.emplace_back("tokenizer.ggml.tokens", gguf::str_array(tokens));
    kv.emplace_back("tokenizer.ggml.scores", gguf::f32_array(scores));
    kv.emplace_back("tokenizer.ggml.token_type", gguf::i32_array(types));
    if (unk >= 0)
      kv.emplace_back("tokenizer.ggml.unknown_token_id", gguf::u32_value(static_cast<uint32_t>(unk)));
  } else {
    std::vector<std::string> regexes;  // of the Split pre-tokenizers, in order
    std::function<void(const json&)> walk = [&](const json& p) {
      if (!p.is_object()) return;
      if (p.value("type", "") == "Sequence" && p.contains("pretokenizers"))
        for (const json& q : p["pretokenizers"]) walk(q);
      if (p.value("type", "") == "Split" && p.contains("pattern") && p["pattern"].contains("Regex"))
        regexes.push_back(p["pattern"]["Regex"].get<std::string>());
    };
    if (root.contains("pre_tokenizer")) walk(root["pre_tokenizer"]);
    std::string pre;
    if (regexes.empty())
      pre = root.contains("normalizer") && root["normalizer"].is_object() &&
                    root["normalizer"].value("type", "") == "NFC"
                ? "olmo"
                : "gpt-2";
    else if (regexes.size() == 1 && regexes[0] == kQwen2Regex)
      pre = "qwen2";
    else if (regexes.size() == 1 && regexes[0] == kLlama3Regex)
      pre = "llama-bpe";
    else if (regexes.size() == 3 && regexes[0] == "\\p{N}{1,3}")
      pre = "deepseek-v3";
    MOE_CHECK(!pre.empty(), "export: tokenizer.json: its pre-tokenizer has no llama.cpp name (GPT-2, Qwen2, ",
              "Llama-3 and DeepSeek-V3 pre-tokenizers do)");
    kv.emplace_back("tokenizer.ggml.model", gguf::str_value("gpt2"));
    kv.emplace_back("tokenizer.ggml.pre", gguf::str_value(pre));
    kv.emplace_back("tokenizer.ggml.tokens", gguf::str_array(tokens));
    kv.emplace_back("tokenizer.ggml.token_type", gguf::i32_array(types));
    kv.emplace_back("tokenizer.ggml.merges", gguf::str_array(merges));
  }
  if (bos >= 0) kv.emplace_back("tokenizer.ggml.bos_token_id", gguf::u32_value(static_cast<uint32_t>(bos)));
  if (eos >= 0) kv.emplace_back("tokenizer.ggml.eos_token_id", gguf::u32_value(static_cast<uint32_t>(eos)));
  kv.emplace_back("tokenizer.ggml.add_bos_token", gguf::bool_value(add_bos));
  return kv;
}

}  // namespace moe::model
