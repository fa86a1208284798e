// Fuzzes config.json: model_config_from_json + validate, and on a config that validates, the
// derived sizes and a write/read round trip. Only moe::Error may come out.
#include <cstddef>
#include <cstdint>
#include <string>

#include "moe/core/error.h"
#include "moe/model/model_config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  try {
    moe::model::ModelConfig c = moe::model::model_config_from_json(text);
    c.validate();
    (void)c.n_params();
    (void)c.n_active_params();
    (void)c.attention_params();
    (void)c.rope_inv_freq();
    (void)c.rope_attention_factor();
    (void)c.attention_scale();
    (void)c.qk_norm();
    (void)c.moe_layer_config();
    for (int64_t l = 0; l < c.num_hidden_layers; ++l) (void)c.is_moe_layer(l);
    // What was accepted is written back and must read and validate again.
    moe::model::ModelConfig again = moe::model::model_config_from_json(moe::model::to_json(c));
    again.validate();
  } catch (const moe::Error&) {
  }
  return 0;
}
