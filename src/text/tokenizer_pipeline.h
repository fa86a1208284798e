// tokenizer.json: reading the normalizer, pre_tokenizer, decoder and post_processor sections into
// Tokenizer::Impl. Each refuses what it cannot reproduce with a moe::Error naming the file (`where`)
// and the field.
#pragma once

#include <string>

#include <nlohmann/json.hpp>

#include "tokenizer_impl.h"

namespace moe::text::detail {

// The "type" of a section, or a description of what it is instead.
std::string type_of(const nlohmann::json& v);
bool get_bool(const nlohmann::json& obj, const char* key, bool fallback, const std::string& where);

void read_normalizer(const nlohmann::json& root, Tokenizer::Impl& m, const std::string& where);
// Also sets m.byte_level (a ByteLevel step is present) and the ByteLevel options.
void read_pre_tokenizer(const nlohmann::json& root, Tokenizer::Impl& m, const std::string& where);
void read_decoder(const nlohmann::json& root, Tokenizer::Impl& m, const std::string& where);
void read_post_processor(const nlohmann::json& root, Tokenizer::Impl& m, const std::string& where);

}  // namespace moe::text::detail
