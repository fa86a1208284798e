// `moe export --model DIR --gguf OUT.gguf [--type f32|f16|bf16|q8_0|q4_0] [--name NAME] [--json]`:
// writes the model as GGUF with llama.cpp's metadata and tensor names for its architecture (and the
// tokenizer.json next to the model as tokenizer.ggml.* metadata), so that llama.cpp runs it.
#include <filesystem>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>

#include "cli/common.h"
#include "cli/model_dir.h"
#include "moe/core/error.h"
#include "moe/core/file_io.h"
#include "moe/model/gguf_model.h"

namespace moe::cli {
namespace {

struct ExportArgs {
  std::string model, gguf, type = "f32", name;
  bool json = false;
};

int run_export(const ExportArgs& a) {
  const gguf::GgmlType type = gguf::ggml_type_from_name(a.type);
  MOE_CHECK(type != gguf::GgmlType::Q4_K && type != gguf::GgmlType::Q6_K, "export: --type ", a.type,
            " is read but not written (f32, f16, bf16, q8_0 and q4_0 are)");
  const std::string dir = resolve_model_dir(a.model);
  const model::Transformer m = model::is_gguf_path(dir) ? model::load_gguf(dir) : model::load_pretrained(dir);
  model::GgufExportOptions opt;
  opt.type = type;
  opt.name = a.name.empty() ? std::filesystem::path(a.model).filename().string() : a.name;
  const std::string tp = find_tokenizer(dir);
  if (!tp.empty())
    opt.tokenizer_json = model::is_gguf_path(tp) ? model::gguf_tokenizer_json(gguf::Reader(tp))
                                                 : io::read_file(tp, "tokenizer.json");
  const std::string note = model::export_gguf(m, a.gguf, opt);
  const auto bytes = static_cast<int64_t>(std::filesystem::file_size(a.gguf));
  if (a.json) {
    std::cout << nlohmann::json{{"out", a.gguf},
                                {"type", a.type},
                                {"architecture", model::arch_name(m.config().arch)},
                                {"tokenizer", !tp.empty()},
                                {"file_bytes", bytes},
                                {"note", note}}
                     .dump()
              << "\n";
    return kExitOk;
  }
  std::cout << "export: wrote " << a.gguf << " (" << model::arch_name(m.config().arch) << ", " << a.type
            << ", " << bytes << " bytes" << (tp.empty() ? ", no tokenizer" : "") << ")\n";
  if (!note.empty()) std::cout << "export: " << note << "\n";
  return kExitOk;
}

}  // namespace

void register_export(CLI::App& app, Registry& reg) {
  auto a = std::make_shared<ExportArgs>();
  CLI::App* c = app.add_subcommand("export", "Write a model as GGUF for llama.cpp");
  add_model_flag(c, a->model, "Model directory (Hugging Face layout), run directory or .gguf file");
  c->add_option("--gguf", a->gguf, "Output file (.gguf)")->required();
  c->add_option("--type", a->type, "Type of the matrices: f32, f16, bf16, q8_0, q4_0")->capture_default_str();
  c->add_option("--name", a->name, "general.name (default: the model folder's name)");
  add_json_flag(c, a->json);
  c->callback([&reg, a] { reg.action = [a] { return run_export(*a); }; });
}

}  // namespace moe::cli
