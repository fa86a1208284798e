// `moe layer check-config FILE.json`: reads a layer config (docs/MOE_LAYER.md), validates it and
// prints it back normalised (every field, defaults filled in). Exit 0 when valid, 2 otherwise.
#include <fstream>
#include <iostream>
#include <memory>
#include <sstream>
#include <string>

#include "cli/common.h"
#include "moe/core/error.h"
#include "moe/moe/config.h"

namespace moe::cli {
namespace {

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  MOE_CHECK(in.good(), "cannot open '", path, "'");
  std::ostringstream ss;
  ss << in.rdbuf();
  MOE_CHECK(!in.bad(), "cannot read '", path, "'");
  return ss.str();
}

int run_check_config(const std::string& path) {
  MoEConfig cfg;
  try {
    cfg = moe_config_from_json(read_file(path));
    cfg.validate();
  } catch (const Error& e) {
    throw Error(cat(path, ": ", e.what()));
  }
  std::cout << to_json(cfg) << std::endl;
  return kExitOk;
}

}  // namespace

void register_layer(CLI::App& app, Registry& reg) {
  CLI::App* layer = app.add_subcommand("layer", "MoE layer tools");
  layer->require_subcommand(1);
  auto path = std::make_shared<std::string>();
  CLI::App* check =
      layer->add_subcommand("check-config", "Validate a layer config (JSON) and print it normalised");
  check->add_option("file", *path, "Config file (JSON, fields as in docs/MOE_LAYER.md)")->required();
  check->callback([&reg, path] { reg.action = [path] { return run_check_config(*path); }; });
}

}  // namespace moe::cli
