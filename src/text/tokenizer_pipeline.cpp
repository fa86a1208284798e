#include "tokenizer_pipeline.h"

#include "moe/core/error.h"

namespace moe::text::detail {

namespace {

using json = nlohmann::json;
using Impl = Tokenizer::Impl;

const json* section(const json& root, const char* key) {
  if (!root.contains(key) || root[key].is_null()) return nullptr;
  return &root[key];
}

std::string get_string(const json& obj, const char* key, const std::string& where) {
  MOE_CHECK(obj.is_object() && obj.contains(key) && obj[key].is_string(), where, ": '", key,
            "' is missing or not a string");
  return obj[key].get<std::string>();
}

int get_int(const json& obj, const char* key, const std::string& where) {
  MOE_CHECK(obj.contains(key) && obj[key].is_number_integer() && obj[key].get<int64_t>() >= 0 &&
                obj[key].get<int64_t>() < 1000000,
            where, ": '", key, "' is missing or not a small non-negative integer");
  return static_cast<int>(obj[key].get<int64_t>());
}

// A {"String": s} pattern (Replace, Split); `regex_ok` lets {"Regex": r} through (returned in *regex).
std::string string_pattern(const json& step, const std::string& where, std::string* regex = nullptr) {
  MOE_CHECK(step.contains("pattern") && step["pattern"].is_object(), where,
            ": 'pattern' is missing or not an object");
  const json& p = step["pattern"];
  if (p.contains("String") && p["String"].is_string()) return p["String"].get<std::string>();
  if (regex && p.contains("Regex") && p["Regex"].is_string()) {
    *regex = p["Regex"].get<std::string>();
    return std::string();
  }
  throw Error(cat(where, ": pattern ", p.dump(), " is not supported (",
                  regex ? "a String or one of the known Regex patterns" : "only a String pattern", ")"));
}

// The steps of a Sequence (under `list_key`) or the one step itself.
std::vector<std::pair<const json*, std::string>> steps_of(const json& v, const char* list_key,
                                                          const std::string& where) {
  std::vector<std::pair<const json*, std::string>> out;
  if (type_of(v) == "Sequence") {
    MOE_CHECK(v.contains(list_key) && v[list_key].is_array(), where, ": Sequence has no '", list_key,
              "' array");
    for (size_t i = 0; i < v[list_key].size(); ++i) {
      const json& s = v[list_key][i];
      const std::string w = cat(where, ".", list_key, "[", i, "]");
      MOE_CHECK(type_of(s) != "Sequence", w, ": nested Sequence is not supported");
      out.emplace_back(&s, w);
    }
  } else {
    out.emplace_back(&v, where);
  }
  return out;
}

}  // namespace

std::string type_of(const json& v) {
  if (v.is_object() && v.contains("type") && v["type"].is_string()) return v["type"].get<std::string>();
  return v.is_object() ? std::string("<no type>") : std::string(v.type_name());
}

bool get_bool(const json& obj, const char* key, bool fallback, const std::string& where) {
  if (!obj.contains(key) || obj[key].is_null()) return fallback;
  MOE_CHECK(obj[key].is_boolean(), where, ": '", key, "' is not a boolean: ", obj[key].dump());
  return obj[key].get<bool>();
}

void read_normalizer(const json& root, Impl& m, const std::string& where) {
  const json* sec = section(root, "normalizer");
  if (!sec) return;
  m.json_normalizer = sec->dump();
  for (const auto& [s, w] : steps_of(*sec, "normalizers", cat(where, ": normalizer"))) {
    const std::string t = type_of(*s);
    Impl::NormStep st;
    if (t == "NFC") {
      st.kind = Impl::NormStep::Nfc;
    } else if (t == "Prepend") {
      st.kind = Impl::NormStep::Prepend;
      st.a = get_string(*s, "prepend", w);
    } else if (t == "Replace") {
      st.kind = Impl::NormStep::Replace;
      st.a = string_pattern(*s, w);
      st.b = get_string(*s, "content", w);
      MOE_CHECK(!st.a.empty(), w, ": Replace with an empty pattern is not supported");
    } else {
      throw Error(cat(w, ": type '", t, "' is not supported (NFC, Prepend, Replace or a Sequence of them)"));
    }
    m.normalizer.push_back(std::move(st));
  }
}

void read_pre_tokenizer(const json& root, Impl& m, const std::string& where) {
  const json* sec = section(root, "pre_tokenizer");
  m.byte_level = false;
  if (!sec) return;
  m.json_pre_tokenizer = sec->dump();
  for (const auto& [s, w] : steps_of(*sec, "pretokenizers", cat(where, ": pre_tokenizer"))) {
    const std::string t = type_of(*s);
    Impl::PreStep st;
    if (t == "ByteLevel") {
      MOE_CHECK(!m.byte_level, w, ": a second ByteLevel step is not supported");
      st.kind = Impl::PreStep::ByteLevel;
      st.add_prefix_space = m.add_prefix_space = get_bool(*s, "add_prefix_space", false, w);
      m.trim_offsets = get_bool(*s, "trim_offsets", true, w);
      st.use_regex = m.use_regex = get_bool(*s, "use_regex", true, w);
      m.byte_level = true;
    } else if (t == "Split") {
      MOE_CHECK(!m.byte_level, w, ": a Split after the ByteLevel step is not supported");
      st.kind = Impl::PreStep::Split;
      const std::string behavior = get_string(*s, "behavior", w);
      MOE_CHECK(behavior == "Isolated", w, ": behavior '", behavior, "' is not supported (only Isolated)");
      MOE_CHECK(!get_bool(*s, "invert", false, w), w, ": invert true is not supported");
      std::string regex;
      st.literal = string_pattern(*s, w, &regex);
      if (st.literal.empty()) {
        MOE_CHECK(find_split_pattern(regex, st.pattern), w, ": Regex pattern '", regex,
                  "' is not supported; the known patterns are:\n", known_split_patterns());
      } else {
        st.pattern = SplitPattern::Literal;
      }
    } else if (t == "Metaspace") {
      MOE_CHECK(!m.byte_level, w, ": a Metaspace step after the ByteLevel step is not supported");
      st.kind = Impl::PreStep::Metaspace;
      st.literal = get_string(*s, "replacement", w);
      MOE_CHECK(!st.literal.empty(), w, ": 'replacement' is empty");
      if (s->contains("prepend_scheme")) {
        const std::string scheme = get_string(*s, "prepend_scheme", w);
        MOE_CHECK(scheme == "always" || scheme == "first" || scheme == "never", w, ": prepend_scheme '",
                  scheme, "' is not one of always, first, never");
        st.prepend = scheme == "always"  ? Impl::PreStep::Always
                     : scheme == "first" ? Impl::PreStep::First
                                         : Impl::PreStep::Never;
      } else {
        st.prepend = get_bool(*s, "add_prefix_space", true, w) ? Impl::PreStep::Always : Impl::PreStep::Never;
      }
      st.split = get_bool(*s, "split", true, w);
    } else {
      throw Error(
          cat(w, ": type '", t, "' is not supported (ByteLevel, Split, Metaspace or a Sequence of them)"));
    }
    m.pre.push_back(std::move(st));
  }
}

void read_decoder(const json& root, Impl& m, const std::string& where) {
  const json* sec = section(root, "decoder");
  if (!sec) return;
  m.json_decoder = sec->dump();
  for (const auto& [s, w] : steps_of(*sec, "decoders", cat(where, ": decoder"))) {
    const std::string t = type_of(*s);
    Impl::DecStep st;
    if (t == "ByteLevel") {
      st.kind = Impl::DecStep::ByteLevel;
    } else if (t == "Replace") {
      st.kind = Impl::DecStep::Replace;
      st.a = string_pattern(*s, w);
      st.b = get_string(*s, "content", w);
      MOE_CHECK(!st.a.empty(), w, ": Replace with an empty pattern is not supported");
    } else if (t == "ByteFallback") {
      st.kind = Impl::DecStep::ByteFallback;
    } else if (t == "Fuse") {
      st.kind = Impl::DecStep::Fuse;
    } else if (t == "Strip") {
      st.kind = Impl::DecStep::Strip;
      st.a = get_string(*s, "content", w);
      st.start = get_int(*s, "start", w);
      st.stop = get_int(*s, "stop", w);
    } else if (t == "Metaspace") {
      st.kind = Impl::DecStep::Metaspace;
      st.a = get_string(*s, "replacement", w);
      if (s->contains("prepend_scheme")) {
        const std::string scheme = get_string(*s, "prepend_scheme", w);
        MOE_CHECK(scheme == "always" || scheme == "first" || scheme == "never", w, ": prepend_scheme '",
                  scheme, "' is not one of always, first, never");
        st.prepend = scheme != "never";
      } else {
        st.prepend = get_bool(*s, "add_prefix_space", true, w);
      }
    } else {
      throw Error(
          cat(w, ": type '", t,
              "' is not supported (ByteLevel, Replace, ByteFallback, Fuse, Strip, Metaspace or a Sequence)"));
    }
    m.decoder.push_back(std::move(st));
  }
}

void read_post_processor(const json& root, Impl& m, const std::string& where) {
  const json* sec = section(root, "post_processor");
  if (!sec) return;
  m.json_post_processor = sec->dump();
  for (const auto& [s, w] : steps_of(*sec, "processors", cat(where, ": post_processor"))) {
    const std::string t = type_of(*s);
    if (t == "ByteLevel") continue;                           // offsets only
    if (t == "RobertaProcessing" || t == "BertProcessing") {  // cls A sep
      for (const char* key : {"cls", "sep"}) {
        MOE_CHECK(s->contains(key) && (*s)[key].is_array() && (*s)[key].size() == 2 &&
                      (*s)[key][1].is_number_unsigned() && (*s)[key][1].get<uint64_t>() < INT32_MAX,
                  w, ": '", key, "' is not a [token, id] pair");
        (key[0] == 'c' ? m.post_prefix : m.post_suffix)
            .push_back(static_cast<int32_t>((*s)[key][1].get<uint64_t>()));
      }
      continue;
    }
    MOE_CHECK(
        t == "TemplateProcessing", w, ": type '", t,
        "' is not supported (ByteLevel, TemplateProcessing, RobertaProcessing, BertProcessing or a Sequence "
        "of them)");
    MOE_CHECK(s->contains("single") && (*s)["single"].is_array(), w, ": 'single' is missing or not an array");
    const json& specials = s->contains("special_tokens") ? (*s)["special_tokens"] : json::object();
    MOE_CHECK(specials.is_object(), w, ": 'special_tokens' is not an object");
    bool seen_a = false;
    const json& single = (*s)["single"];
    for (size_t i = 0; i < single.size(); ++i) {
      const json& piece = single[i];
      const std::string wi = cat(w, ".single[", i, "]");
      if (piece.contains("Sequence")) {
        MOE_CHECK(!seen_a, wi, ": a second sequence in the single template");
        seen_a = true;
        continue;
      }
      MOE_CHECK(piece.contains("SpecialToken") && piece["SpecialToken"].is_object(), wi,
                ": neither a SpecialToken nor a Sequence: ", piece.dump());
      const std::string name = get_string(piece["SpecialToken"], "id", wi + ".SpecialToken");
      MOE_CHECK(specials.contains(name) && specials[name].contains("ids") && specials[name]["ids"].is_array(),
                w, ": special_tokens has no ids for '", name, "'");
      for (const json& id : specials[name]["ids"]) {
        MOE_CHECK(id.is_number_unsigned() && id.get<uint64_t>() < INT32_MAX, w, ": special_tokens['", name,
                  "'].ids holds ", id.dump(), ", not an id");
        (seen_a ? m.post_suffix : m.post_prefix).push_back(static_cast<int32_t>(id.get<uint64_t>()));
      }
    }
    MOE_CHECK(seen_a, w, ": the single template has no Sequence");
  }
}

}  // namespace moe::text::detail
