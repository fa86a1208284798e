// Models in GGUF files, as llama.cpp's converter (convert_hf_to_gguf.py) writes them and llama.cpp
// reads them: the model config from the metadata, the tensors under the engine's (Hugging Face)
// names, and the way back (export).
//
// Architectures (general.architecture -> the engine's):
//   llama with {arch}.expert_count > 0 -> mixtral
//   qwen2moe (shared expert and its sigmoid gate) -> qwen2_moe
//   qwen3moe (per-head q/k norms)                  -> qwen3_moe
//   olmoe    (q/k norms over the whole projection) -> olmoe
// Layers without a router (blk.N.ffn_gate_inp) are dense (mlp_only_layers; llama.cpp itself
// requires a router in every layer of these architectures).
//
// Tensor names: token_embd, output_norm, output (absent = tied embeddings), blk.N.attn_norm,
// attn_q/k/v (+ .bias), attn_output, attn_q_norm/attn_k_norm, ffn_norm, ffn_gate_inp,
// ffn_gate_exps/ffn_up_exps/ffn_down_exps (the experts stacked: ne {d, F, E} and {F, d, E}),
// ffn_gate_shexp/ffn_up_shexp/ffn_down_shexp/ffn_gate_inp_shexp, ffn_gate/ffn_up/ffn_down (dense).
// For `llama` the converter permutes the rows of attn_q and attn_k from Hugging Face's half-split
// rotary layout to the interleaved one (LlamaModel.permute); loading undoes it and export applies it.
// Every tensor is dequantized to f32 as it is read (the engine's own formats are made from f32).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "moe/model/gguf.h"
#include "moe/model/model_config.h"
#include "moe/model/transformer.h"

namespace moe::model {

bool is_gguf_path(const std::string& path);  // a regular file whose name ends in ".gguf"

// The model config that the metadata describes (shapes checked against the tensor infos).
ModelConfig gguf_model_config(const gguf::Reader& r);

// The file's tensors under the engine's Hugging Face names, dequantized to f32 as they are read
// (per-expert names are slices of the stacked tensors, each expert's bytes read alone, so loading
// holds the model plus one tensor). Unknown tensors are listed under their GGUF names, so that loading
// reports them.
TensorSource gguf_tensor_source(std::shared_ptr<const gguf::Reader> r, const ModelConfig& c);

// Tensor count per ggml type ("q4_K": 12, ...), for the one-line summary of what was converted.
std::string gguf_type_summary(const gguf::Reader& r);

// Reads the model in a .gguf file (config, then every tensor, checked as load_pretrained does).
Transformer load_gguf(const std::string& path, DType dtype = DType::F32);

struct GgufExportOptions {
  gguf::GgmlType type = gguf::GgmlType::F32;  // of the matrices; norms, biases and routers stay f32
  std::string tokenizer_json;                 // a tokenizer.json's text to embed ("" = none)
  std::string name;                           // general.name
};
// Writes the model as GGUF with the metadata and tensor names llama.cpp expects for its
// architecture. Returns a note ("" when none): matrices whose rows are not a whole number of the
// type's blocks (written as f16), and what llama.cpp cannot reproduce (top-k renormalisation other
// than its fixed one per architecture, dense layers, olmoe with grouped-query attention).
std::string export_gguf(const Transformer& m, const std::string& path, const GgufExportOptions& opt);

// Tokenizer metadata: a tokenizer.json (text) from the file's tokenizer.ggml.* keys ("" when the
// file has none), and tokenizer.ggml.* key/values from a tokenizer.json (byte-level BPE files as
// "gpt2", SentencePiece-style BPE files as "llama").
std::string gguf_tokenizer_json(const gguf::Reader& r);
std::vector<std::pair<std::string, gguf::Value>> gguf_tokenizer_metadata(const std::string& tokenizer_json,
                                                                         const ModelConfig& c);

}  // namespace moe::model
