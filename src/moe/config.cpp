#include "moe/moe/config.h"

#include <cmath>
#include <cstdint>
#include <limits>
#include <nlohmann/json.hpp>
#include <type_traits>

#include "moe/core/error.h"

namespace moe {

namespace {
template <typename E, size_t N>
E parse_enum(const std::string& s, const char* what, const std::pair<const char*, E> (&table)[N]) {
  std::string options;
  for (const auto& [name, v] : table) {
    if (s == name) return v;
    options += options.empty() ? name : cat(", ", name);
  }
  throw Error(cat("unknown ", what, " '", s, "' (expected one of: ", options, ")"));
}
template <typename E, size_t N>
const char* enum_name(E v, const std::pair<const char*, E> (&table)[N]) {
  for (const auto& [name, x] : table)
    if (x == v) return name;
  return "invalid";
}

const std::pair<const char*, RouterType> kRouting[] = {{"token_choice", RouterType::TokenChoice},
                                                       {"expert_choice", RouterType::ExpertChoice},
                                                       {"hash", RouterType::Hash},
                                                       {"balanced", RouterType::Balanced}};
const std::pair<const char*, ScoreFn> kScore[] = {{"softmax", ScoreFn::Softmax},
                                                  {"sigmoid", ScoreFn::Sigmoid}};
const std::pair<const char*, TopkOrder> kOrder[] = {{"score_then_topk", TopkOrder::ScoreThenTopk},
                                                    {"topk_then_softmax", TopkOrder::TopkThenSoftmax}};
const std::pair<const char*, GroupScore> kGroup[] = {{"max", GroupScore::Max},
                                                     {"sum_top2", GroupScore::SumTop2}};
const std::pair<const char*, DropPolicy> kDrop[] = {{"position", DropPolicy::Position},
                                                    {"probs", DropPolicy::Probs}};
}  // namespace

const char* router_type_name(RouterType r) { return enum_name(r, kRouting); }
const char* score_fn_name(ScoreFn s) { return enum_name(s, kScore); }
const char* topk_order_name(TopkOrder o) { return enum_name(o, kOrder); }
const char* group_score_name(GroupScore g) { return enum_name(g, kGroup); }
const char* drop_policy_name(DropPolicy d) { return enum_name(d, kDrop); }
RouterType router_type_from_name(const std::string& s) { return parse_enum(s, "routing", kRouting); }
ScoreFn score_fn_from_name(const std::string& s) { return parse_enum(s, "score function", kScore); }
TopkOrder topk_order_from_name(const std::string& s) { return parse_enum(s, "top-k order", kOrder); }
GroupScore group_score_from_name(const std::string& s) { return parse_enum(s, "group score", kGroup); }
DropPolicy drop_policy_from_name(const std::string& s) { return parse_enum(s, "drop policy", kDrop); }

void MoEConfig::validate() const {
  const RouterConfig& r = router;
  MOE_CHECK(d_model > 0, "config: d_model must be > 0, got ", d_model);
  MOE_CHECK(d_ff > 0, "config: d_ff must be > 0, got ", d_ff);
  MOE_CHECK(n_experts > 0, "config: n_experts must be > 0, got ", n_experts);
  MOE_CHECK(r.top_k >= 1 && r.top_k <= n_experts, "config: top_k must be in [1, n_experts = ", n_experts,
            "], got k = ", r.top_k);
  MOE_CHECK(r.n_groups >= 1 && n_experts % r.n_groups == 0, "config: n_groups = ", r.n_groups,
            " must be >= 1 and divide n_experts = ", n_experts);
  MOE_CHECK(r.topk_groups >= 1 && r.topk_groups <= r.n_groups,
            "config: topk_groups must be in [1, n_groups = ", r.n_groups, "], got ", r.topk_groups);
  MOE_CHECK(r.top_k <= r.topk_groups * (n_experts / r.n_groups), "config: top_k = ", r.top_k, " exceeds the ",
            r.topk_groups * (n_experts / r.n_groups), " experts eligible in topk_groups = ", r.topk_groups,
            " groups");
  MOE_CHECK(r.order == TopkOrder::ScoreThenTopk || r.score == ScoreFn::Softmax,
            "config: order 'topk_then_softmax' needs score 'softmax'");
  MOE_CHECK(r.routing != RouterType::ExpertChoice || r.n_groups == 1,
            "config: group-limited routing (n_groups > 1) does not apply to expert_choice routing");
  MOE_CHECK(std::isfinite(r.scaling) && r.scaling > 0, "config: scaling must be finite and > 0, got ",
            r.scaling);
  MOE_CHECK(std::isfinite(r.capacity_factor) && r.capacity_factor >= 0,
            "config: capacity_factor must be >= 0 (0 = dropless), got ", r.capacity_factor);
  MOE_CHECK(r.jitter_eps >= 0 && r.jitter_eps < 1, "config: jitter_eps must be in [0, 1), got ",
            r.jitter_eps);
  MOE_CHECK(std::isfinite(r.skip_threshold) && r.skip_threshold >= 0,
            "config: skip_threshold must be finite and >= 0 (0 = off), got ", r.skip_threshold);
  MOE_CHECK(std::isfinite(r.top_p) && r.top_p >= 0 && r.top_p <= 1,
            "config: top_p must be in [0, 1] (0 = off), got ", r.top_p);
  if (r.top_p > 0) {
    MOE_CHECK(r.routing == RouterType::TokenChoice && r.score == ScoreFn::Softmax,
              "config: top_p routing needs token_choice routing with softmax scores");
    MOE_CHECK(r.min_k >= 1 && r.min_k <= r.top_k, "config: min_k must be in [1, top_k = ", r.top_k, "], got ",
              r.min_k);
  }
  MOE_CHECK(r.sinkhorn_iters >= 0, "config: sinkhorn_iters must be >= 0, got ", r.sinkhorn_iters);
  MOE_CHECK(n_shared_experts >= 0, "config: n_shared_experts must be >= 0, got ", n_shared_experts);
  MOE_CHECK(d_ff_shared >= 0, "config: d_ff_shared must be >= 0, got ", d_ff_shared);
  MOE_CHECK(!shared_gate || n_shared_experts > 0, "config: shared_gate needs n_shared_experts > 0");
  const BalanceConfig& b = balance;
  MOE_CHECK(b.aux_coef >= 0 && b.seq_aux_coef >= 0 && b.z_coef >= 0 && b.bias_update_rate >= 0 &&
                b.entropy_coef >= 0,
            "config: balance coefficients must be >= 0");
  MOE_CHECK(b.seq_len >= 0, "config: seq_len must be >= 0, got ", b.seq_len);
}

std::string to_json(const MoEConfig& c) {
  const RouterConfig& r = c.router;
  const BalanceConfig& b = c.balance;
  nlohmann::json j = {{"d_model", c.d_model},
                      {"d_ff", c.d_ff},
                      {"n_experts", c.n_experts},
                      {"activation", kernels::activation_name(c.activation)},
                      {"n_shared_experts", c.n_shared_experts},
                      {"d_ff_shared", c.d_ff_shared},
                      {"shared_gate", c.shared_gate},
                      {"router",
                       {{"routing", router_type_name(r.routing)},
                        {"score", score_fn_name(r.score)},
                        {"order", topk_order_name(r.order)},
                        {"top_k", r.top_k},
                        {"normalize", r.normalize},
                        {"scaling", r.scaling},
                        {"n_groups", r.n_groups},
                        {"topk_groups", r.topk_groups},
                        {"group_score", group_score_name(r.group_score)},
                        {"use_bias", r.use_bias},
                        {"jitter_eps", r.jitter_eps},
                        {"capacity_factor", r.capacity_factor},
                        {"drop_policy", drop_policy_name(r.drop_policy)},
                        {"sinkhorn_iters", r.sinkhorn_iters},
                        {"hash_seed", r.hash_seed}}},
                      {"balance",
                       {{"aux_coef", b.aux_coef},
                        {"seq_aux_coef", b.seq_aux_coef},
                        {"seq_len", b.seq_len},
                        {"z_coef", b.z_coef},
                        {"bias_update_rate", b.bias_update_rate}}}};
  if (r.skip_threshold != 0.0) j["router"]["skip_threshold"] = r.skip_threshold;  // written only when on
  if (r.top_p != 0.0) j["router"]["top_p"] = r.top_p, j["router"]["min_k"] = r.min_k;
  if (b.entropy_coef != 0.0) j["balance"]["entropy_coef"] = b.entropy_coef;
  return j.dump(2);
}

namespace {
// Reads j[key] into out when present, with a clear error for a wrong type.
// An integer read from a float or a large unsigned value must be whole and fit V (converting 1e30 to
// int64_t is undefined behaviour; 2^64 - 1 would wrap to -1).
template <typename V>
void get(const nlohmann::json& j, const char* section, const char* key, V& out) {
  auto it = j.find(key);
  if (it == j.end()) return;
  if constexpr (std::is_integral_v<V> && !std::is_same_v<V, bool>) {
    const double limit = std::ldexp(1.0, std::numeric_limits<V>::digits);
    if (it->is_number_float()) {
      const double x = it->get<double>();
      MOE_CHECK(std::isfinite(x) && x == std::floor(x) &&
                    x >= (std::numeric_limits<V>::is_signed ? -limit : 0.0) && x < limit,
                "config: ", section, key, ": expected an integer, got ", it->dump());
    } else if (it->is_number_unsigned()) {
      MOE_CHECK(it->get<uint64_t>() <= static_cast<uint64_t>(std::numeric_limits<V>::max()),
                "config: ", section, key, ": ", it->dump(), " is out of range");
    }
  }
  try {
    out = it->get<V>();
  } catch (const nlohmann::json::exception& e) {
    throw Error(cat("config: ", section, key, ": wrong type (", it->type_name(), ")"));
  }
}
void reject_unknown(const nlohmann::json& j, const char* section, std::initializer_list<const char*> keys) {
  for (auto it = j.begin(); it != j.end(); ++it) {
    bool known = false;
    for (const char* k : keys) known = known || it.key() == k;
    MOE_CHECK(known, "config: unknown key '", section, it.key(), "'");
  }
}
}  // namespace

MoEConfig moe_config_from_json(const std::string& text) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {  // a syntax error, or a number out of range (1e400)
    throw Error(cat("config: invalid JSON: ", e.what()));
  }
  MOE_CHECK(j.is_object(), "config: expected a JSON object");
  reject_unknown(j, "",
                 {"d_model", "d_ff", "n_experts", "activation", "n_shared_experts", "d_ff_shared",
                  "shared_gate", "router", "balance"});
  for (const char* req : {"d_model", "d_ff", "n_experts"})
    MOE_CHECK(j.contains(req), "config: missing '", req, "'");
  MoEConfig c;
  get(j, "", "d_model", c.d_model);
  get(j, "", "d_ff", c.d_ff);
  get(j, "", "n_experts", c.n_experts);
  std::string s;
  if (j.contains("activation")) {
    get(j, "", "activation", s);
    c.activation = kernels::activation_from_name(s);
  }
  get(j, "", "n_shared_experts", c.n_shared_experts);
  get(j, "", "d_ff_shared", c.d_ff_shared);
  get(j, "", "shared_gate", c.shared_gate);
  if (j.contains("router")) {
    const auto& r = j["router"];
    MOE_CHECK(r.is_object(), "config: 'router' must be an object");
    reject_unknown(r, "router.",
                   {"routing", "score", "order", "top_k", "normalize", "scaling", "n_groups", "topk_groups",
                    "group_score", "use_bias", "jitter_eps", "capacity_factor", "drop_policy",
                    "sinkhorn_iters", "hash_seed", "skip_threshold", "top_p", "min_k"});
    RouterConfig& rc = c.router;
    if (r.contains("routing")) get(r, "router.", "routing", s), rc.routing = router_type_from_name(s);
    if (r.contains("score")) get(r, "router.", "score", s), rc.score = score_fn_from_name(s);
    if (r.contains("order")) get(r, "router.", "order", s), rc.order = topk_order_from_name(s);
    if (r.contains("group_score"))
      get(r, "router.", "group_score", s), rc.group_score = group_score_from_name(s);
    if (r.contains("drop_policy"))
      get(r, "router.", "drop_policy", s), rc.drop_policy = drop_policy_from_name(s);
    get(r, "router.", "top_k", rc.top_k);
    get(r, "router.", "normalize", rc.normalize);
    get(r, "router.", "scaling", rc.scaling);
    get(r, "router.", "n_groups", rc.n_groups);
    get(r, "router.", "topk_groups", rc.topk_groups);
    get(r, "router.", "use_bias", rc.use_bias);
    get(r, "router.", "jitter_eps", rc.jitter_eps);
    get(r, "router.", "capacity_factor", rc.capacity_factor);
    get(r, "router.", "sinkhorn_iters", rc.sinkhorn_iters);
    get(r, "router.", "hash_seed", rc.hash_seed);
    get(r, "router.", "skip_threshold", rc.skip_threshold);
    get(r, "router.", "top_p", rc.top_p);
    get(r, "router.", "min_k", rc.min_k);
  }
  if (j.contains("balance")) {
    const auto& b = j["balance"];
    MOE_CHECK(b.is_object(), "config: 'balance' must be an object");
    reject_unknown(b, "balance.",
                   {"aux_coef", "seq_aux_coef", "seq_len", "z_coef", "bias_update_rate", "entropy_coef"});
    get(b, "balance.", "aux_coef", c.balance.aux_coef);
    get(b, "balance.", "seq_aux_coef", c.balance.seq_aux_coef);
    get(b, "balance.", "seq_len", c.balance.seq_len);
    get(b, "balance.", "z_coef", c.balance.z_coef);
    get(b, "balance.", "bias_update_rate", c.balance.bias_update_rate);
    get(b, "balance.", "entropy_coef", c.balance.entropy_coef);
  }
  c.validate();
  return c;
}

}  // namespace moe
