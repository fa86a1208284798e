// Hugging Face tokenizer.json: load and save of byte-level BPE tokenizers.
//
// Vocabulary keys and merges are written in GPT-2's printable form of the bytes ("Ġthe" for " the");
// added tokens appear in the vocabulary under their raw content, as the Hugging Face trainer
// writes them.
#include <algorithm>
#include <unordered_map>
#include <unordered_set>

#include <nlohmann/json.hpp>

#include "moe/core/error.h"
#include "moe/core/file_io.h"
#include "pretokenize.h"
#include "tokenizer_impl.h"
#include "tokenizer_pipeline.h"

namespace moe::text {

namespace {

using json = nlohmann::json;
using ordered_json = nlohmann::ordered_json;
using detail::get_bool;
using detail::type_of;

// Known end-of-text tokens, in order of preference (tokenizer.json does not name the EOS token).
const char* const kEosNames[] = {"<|endoftext|>",         "</s>",      "<|end_of_text|>", "<eos>",
                                 "<｜end▁of▁sentence｜>", "<|im_end|>"};

std::vector<AddedToken> read_added_tokens(const json& root, const std::string& where) {
  std::vector<AddedToken> out;
  if (!root.contains("added_tokens") || root["added_tokens"].is_null()) return out;
  const json& arr = root["added_tokens"];
  MOE_CHECK(arr.is_array(), where, ": 'added_tokens' is not an array");
  for (size_t i = 0; i < arr.size(); ++i) {
    const json& t = arr[i];
    const std::string w = cat(where, ": added_tokens[", i, "]");
    MOE_CHECK(t.is_object(), w, " is not an object");
    MOE_CHECK(t.contains("id") && t["id"].is_number_unsigned() && t["id"].get<uint64_t>() < INT32_MAX, w,
              ": 'id' is missing or not a non-negative 32-bit integer");
    MOE_CHECK(t.contains("content") && t["content"].is_string(), w, ": 'content' is missing or not a string");
    AddedToken a;
    a.id = static_cast<int32_t>(t["id"].get<uint64_t>());
    a.content = t["content"].get<std::string>();
    MOE_CHECK(!a.content.empty(), w, ": 'content' is empty");
    a.special = get_bool(t, "special", false, w);
    a.single_word = get_bool(t, "single_word", false, w);
    a.lstrip = get_bool(t, "lstrip", false, w);
    a.rstrip = get_bool(t, "rstrip", false, w);
    a.normalized = get_bool(t, "normalized", false, w);
    out.push_back(std::move(a));
  }
  return out;
}

// Checks the BPE options that change how text is encoded and that this tokenizer does not do.
void check_model_options(const json& model, Tokenizer::Impl& m, const std::string& where) {
  if (model.contains("type")) {
    MOE_CHECK(model["type"].is_string(), where, ": model.type is not a string");
    const std::string t = model["type"].get<std::string>();
    MOE_CHECK(t == "BPE", where, ": model.type '", t, "' is not supported (only 'BPE')");
  }
  for (const char* key : {"vocab", "merges"})
    MOE_CHECK(model.contains(key), where, ": model has no '", key, "'");
  if (model.contains("dropout") && !model["dropout"].is_null())
    MOE_CHECK(model["dropout"].is_number() && model["dropout"].get<double>() == 0.0, where,
              ": model.dropout ", model["dropout"].dump(), " is not supported (only null or 0)");
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"})
    if (model.contains(key) && !model[key].is_null())
      MOE_CHECK(model[key].is_string() && model[key].get<std::string>().empty(), where, ": model.", key, " ",
                model[key].dump(), " is not supported by byte-level BPE (only null or \"\")");
  m.byte_fallback = get_bool(model, "byte_fallback", false, where + ": model");
  m.fuse_unk = get_bool(model, "fuse_unk", false, where + ": model");
  m.ignore_merges = get_bool(model, "ignore_merges", false, where + ": model");
  if (model.contains("unk_token") && !model["unk_token"].is_null()) {
    MOE_CHECK(model["unk_token"].is_string(), where, ": model.unk_token is not a string");
    m.unk_token = model["unk_token"].get<std::string>();
  }
}

// One entry of model.merges: "a b" or ["a", "b"].
std::pair<std::string, std::string> parse_merge(const json& v, size_t i, const std::string& where) {
  if (v.is_string()) {
    const std::string s = v.get<std::string>();
    const size_t sp = s.find(' ');
    MOE_CHECK(
        sp != std::string::npos && sp > 0 && sp + 1 < s.size() && s.find(' ', sp + 1) == std::string::npos,
        where, ": model.merges[", i, "] '", s, "' is not two tokens separated by one space");
    return {s.substr(0, sp), s.substr(sp + 1)};
  }
  MOE_CHECK(v.is_array() && v.size() == 2 && v[0].is_string() && v[1].is_string(), where, ": model.merges[",
            i, "] ", v.dump(), " is neither \"a b\" nor a pair [\"a\", \"b\"]");
  return {v[0].get<std::string>(), v[1].get<std::string>()};
}

}  // namespace

Tokenizer Tokenizer::load(const std::string& path) {
  const std::string where = cat("tokenizer.json '", path, "'");
  return from_json(io::read_file(path, where), where);
}

Tokenizer Tokenizer::from_json(const std::string& text, const std::string& where) {
  json root;
  try {
    root = json::parse(text);
  } catch (const json::exception& ex) {
    throw Error(cat(where, ": not valid JSON: ", ex.what()));
  }
  MOE_CHECK(root.is_object(), where, ": the top level is not a JSON object");
  MOE_CHECK(root.contains("model") && root["model"].is_object(), where, ": no 'model' object");
  const json& model = root["model"];
  auto impl = std::make_shared<Impl>();
  Impl& m = *impl;
  check_model_options(model, m, where);
  detail::read_normalizer(root, m, where);
  detail::read_pre_tokenizer(root, m, where);
  detail::read_decoder(root, m, where);
  detail::read_post_processor(root, m, where);
  // The byte-level pipeline that save() writes by default (ByteLevel pre-tokenizer, decoder and
  // post-processor, no normalizer): save() writes it again in its usual key order.
  auto is_byte_level = [&](const char* key) {
    return !root.contains(key) || root[key].is_null() || type_of(root[key]) == "ByteLevel";
  };
  if (m.normalizer.empty() && m.pre.size() == 1 && m.byte_level &&
      type_of(root["pre_tokenizer"]) == "ByteLevel" && is_byte_level("decoder") &&
      is_byte_level("post_processor")) {
    m.json_pre_tokenizer.clear();
    m.json_decoder.clear();
    m.json_post_processor.clear();
  }
  MOE_CHECK(!(m.byte_level && m.byte_fallback), where,
            ": model.byte_fallback true is not supported with a ByteLevel pre-tokenizer");
  m.added = read_added_tokens(root, where);

  // Vocabulary: keys in printable form, except added tokens, which appear under their content.
  const json& vocab = model["vocab"];
  MOE_CHECK(vocab.is_object(), where, ": model.vocab is not an object");
  std::unordered_map<std::string, int32_t> key_id;  // vocabulary key -> id
  std::unordered_map<int32_t, const AddedToken*> added_at;
  int64_t n = 0;
  for (const AddedToken& a : m.added) {
    added_at[a.id] = &a;
    n = std::max<int64_t>(n, a.id + 1);
  }
  for (const auto& [key, v] : vocab.items()) {
    MOE_CHECK(v.is_number_unsigned() && v.get<uint64_t>() < INT32_MAX, where, ": model.vocab['", key,
              "'] = ", v.dump(), " is not a non-negative 32-bit integer id");
    const auto id = static_cast<int32_t>(v.get<uint64_t>());
    key_id[key] = id;
    n = std::max<int64_t>(n, id + 1);
  }
  // Ids must cover 0..n-1, so n is at most the number of entries: checked before the table of n
  // tokens is allocated (an id of 10^8 among a few tokens would otherwise ask for gigabytes).
  const int64_t entries = static_cast<int64_t>(key_id.size() + m.added.size());
  if (n > entries) {  // name the first missing id (from the sorted ids, not a table of n)
    std::vector<int32_t> ids;
    ids.reserve(static_cast<size_t>(entries));
    for (const auto& kv : key_id) ids.push_back(kv.second);
    for (const AddedToken& a : m.added) ids.push_back(a.id);
    std::sort(ids.begin(), ids.end());
    int64_t missing = 0;
    for (int32_t id : ids)
      if (id == missing)
        ++missing;
      else if (id > missing)
        break;
    throw Error(cat(where, ": no token has id ", missing, " (ids must cover 0..", n - 1, ")"));
  }
  MOE_CHECK(n <= kMaxVocab, where, ": ", n, " tokens is more than this engine's limit ", kMaxVocab);
  m.tokens.assign(static_cast<size_t>(n), std::string());
  std::vector<bool> filled(static_cast<size_t>(n), false);
  std::string raw;
  for (const auto& [key, id] : key_id) {
    MOE_CHECK(!filled[id], where, ": model.vocab gives id ", id, " to two tokens (one is '", key, "')");
    auto ad = added_at.find(id);
    if (!m.byte_level || (ad != added_at.end() && ad->second->content == key)) {
      raw = key;
    } else {
      MOE_CHECK(detail::unicode_str_to_bytes(key, raw) && !raw.empty(), where, ": model.vocab token '", key,
                "' (id ", id, ") is not in the byte-level alphabet (GPT-2 byte-to-unicode characters)");
    }
    m.tokens[id] = raw;
    filled[id] = true;
  }
  for (const AddedToken& a : m.added) {
    MOE_CHECK(!filled[a.id] || m.tokens[a.id] == a.content, where, ": added token '", a.content, "' has id ",
              a.id, ", which model.vocab gives to another token");
    m.tokens[a.id] = a.content;
    filled[a.id] = true;
  }
  for (int64_t id = 0; id < n; ++id)
    MOE_CHECK(filled[id], where, ": no token has id ", id, " (ids must cover 0..", n - 1, ")");

  const json& merges = model["merges"];
  MOE_CHECK(merges.is_array(), where, ": model.merges is not an array");
  m.merges.reserve(merges.size());
  for (size_t i = 0; i < merges.size(); ++i) {
    const auto [a, b] = parse_merge(merges[i], i, where);
    auto ia = key_id.find(a), ib = key_id.find(b), ic = key_id.find(a + b);
    MOE_CHECK(ia != key_id.end(), where, ": model.merges[", i, "]: token '", a, "' is not in model.vocab");
    MOE_CHECK(ib != key_id.end(), where, ": model.merges[", i, "]: token '", b, "' is not in model.vocab");
    MOE_CHECK(ic != key_id.end(), where, ": model.merges[", i, "]: the merged token '", a + b,
              "' is not in model.vocab");
    m.merges.push_back({ia->second, ib->second, ic->second});
  }
  for (const char* name : kEosNames) {
    for (const AddedToken& a : m.added)
      if (a.content == name) m.eos = a.id;
    if (m.eos >= 0) break;
  }
  m.finalize(where);
  return Tokenizer(std::move(impl));
}

void Tokenizer::save(const std::string& path) const {
  const std::string where = cat("tokenizer.json '", path, "'");
  const Impl& m = *impl_;
  std::vector<const AddedToken*> added_at(m.tokens.size(), nullptr);
  ordered_json added = ordered_json::array();
  for (const AddedToken& a : m.added) {
    added_at[a.id] = &a;
    added.push_back({{"id", a.id},
                     {"content", a.content},
                     {"single_word", a.single_word},
                     {"lstrip", a.lstrip},
                     {"rstrip", a.rstrip},
                     {"normalized", a.normalized},
                     {"special", a.special}});
  }
  std::vector<std::string> keys(m.tokens.size());
  ordered_json vocab = ordered_json::object();
  std::unordered_set<std::string> used;
  for (size_t id = 0; id < m.tokens.size(); ++id) {
    keys[id] = added_at[id] || !m.byte_level ? m.tokens[id] : detail::bytes_to_unicode_str(m.tokens[id]);
    MOE_CHECK(used.insert(keys[id]).second, where, ": cannot be written: token id ", id,
              " has the vocabulary key '", keys[id], "' of another token");
    vocab[keys[id]] = id;
  }
  ordered_json merges = ordered_json::array();
  for (size_t r = 0; r < m.merges.size(); ++r) {
    const std::string& a = keys[m.merges[r].left];
    const std::string& b = keys[m.merges[r].right];
    MOE_CHECK(a.find(' ') == std::string::npos && b.find(' ') == std::string::npos, where,
              ": cannot be written: merge ", r, " has a token with a space ('", a, "', '", b, "')");
    merges.push_back(a + " " + b);
  }
  ordered_json model = {
      {"type", "BPE"},
      {"dropout", nullptr},
      {"unk_token", m.unk_token.empty() ? ordered_json(nullptr) : ordered_json(m.unk_token)},
      {"continuing_subword_prefix", nullptr},
      {"end_of_word_suffix", nullptr},
      {"fuse_unk", m.fuse_unk},
      {"byte_fallback", m.byte_fallback}};
  if (m.ignore_merges) model["ignore_merges"] = true;
  model["vocab"] = std::move(vocab);
  model["merges"] = std::move(merges);
  const ordered_json byte_level = {{"type", "ByteLevel"},
                                   {"add_prefix_space", m.add_prefix_space},
                                   {"trim_offsets", m.trim_offsets},
                                   {"use_regex", m.use_regex}};
  ordered_json root = {{"version", "1.0"}, {"truncation", nullptr}, {"padding", nullptr}};
  root["added_tokens"] = std::move(added);
  // A loaded tokenizer writes its pipeline sections back as they were read; a trained one writes
  // the byte-level defaults.
  const bool loaded = !m.json_pre_tokenizer.empty() || !m.byte_level;
  auto section = [&](const std::string& saved, ordered_json fallback) {
    if (loaded) return saved.empty() ? ordered_json(nullptr) : ordered_json::parse(saved);
    return fallback;
  };
  root["normalizer"] =
      loaded && !m.json_normalizer.empty() ? ordered_json::parse(m.json_normalizer) : nullptr;
  root["pre_tokenizer"] = section(m.json_pre_tokenizer, byte_level);
  root["post_processor"] = section(
      m.json_post_processor,
      {{"type", "ByteLevel"}, {"add_prefix_space", true}, {"trim_offsets", false}, {"use_regex", true}});
  root["decoder"] = section(
      m.json_decoder,
      {{"type", "ByteLevel"}, {"add_prefix_space", true}, {"trim_offsets", true}, {"use_regex", true}});
  root["model"] = std::move(model);
  std::string text;
  try {
    text = root.dump(2);
  } catch (const ordered_json::exception& ex) {
    throw Error(cat(where, ": cannot be written: ", ex.what()));
  }
  io::write_file_atomic(path, where, [&](std::ostream& out) { out << text << '\n'; });
}

}  // namespace moe::text
