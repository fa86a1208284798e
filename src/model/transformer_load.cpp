// Inference-only models: loading a checkpoint straight into the forward's packed forms, releasing
// the f32 masters of a model already loaded, and the memory its weights take (transformer.h).
#include <set>

#include "model/hf_names.h"
#include "model/row_pack.h"
#include "moe/core/error.h"
#include "moe/kernels/weights.h"
#include "moe/model/transformer.h"

namespace moe::model {

using kernels::WeightFormat;

void Transformer::release_masters() {
  if (masters_released_) return;
  MOE_CHECK(bf16_inference_,
            "release_masters: the model is not in bf16 inference (set_bf16_inference(true) or "
            "set_inference_linear_format first), so its f32 weights are the only ones it has");
  auto drop = [&](int i) {
    NamedParam& p = params_[static_cast<size_t>(i)];
    p.value = Tensor().set_name(p.name);
    p.grad = Tensor();
  };
  for (int i : linear_params()) {
    if (!bf16_[static_cast<size_t>(i)].defined()) continue;
    if (i == index_.embed && !embed_rows_.defined()) continue;  // tied: embedding lookups read the table
    drop(i);
  }
  for (size_t l = 0; l < moe_.size(); ++l) {
    if (!moe_[l]) continue;
    moe_[l]->release_expert_masters();
    for (int j = 1; j <= 6; ++j)  // the routed and shared experts' weights, not the router or shared gate
      if (const int i = index_.layers[l].moe[j]; i >= 0) drop(i);
  }
  masters_released_ = true;
}

Transformer::WeightMemory Transformer::weight_memory() const {
  WeightMemory w;
  auto bytes = [](const Tensor& t) { return t.defined() ? static_cast<int64_t>(t.nbytes()) : int64_t{0}; };
  for (size_t i = 0; i < params_.size(); ++i) {
    const bool mapped = embed_mapped_ && static_cast<int>(i) == index_.embed;
    (mapped ? w.mapped : w.masters) += bytes(params_[i].value);
  }
  w.mapped += bytes(embed_rows_);
  for (const Tensor& t : bf16_) w.packed += bytes(t);
  for (const Tensor& t : bf16_t_) w.packed += bytes(t);
  for (const auto& l : moe_) {
    if (!l) continue;
    const Bf16ExpertWeights& e = l->bf16_expert_weights();
    for (const Tensor* t : {&e.w_in, &e.w_down, &e.shared_w_in, &e.shared_w_down}) w.packed += bytes(*t);
    for (const Bf16PackedFfn* f : {&l->bf16_routed(), &l->bf16_shared()})
      for (const Tensor* t : {&f->in_fwd, &f->down_fwd, &f->down_bwd, &f->in_bwd}) w.packed += bytes(*t);
  }
  return w;
}

Transformer Transformer::load_for_inference(ModelConfig cfg, const TensorSource& src,
                                            const InferenceLoad& opt) {
  MOE_CHECK(opt.linear_format == WeightFormat::Bf16Packed || kernels::is_int_packed(opt.linear_format),
            "inference load: linear format ", kernels::weight_format_name(opt.linear_format),
            " is not one (bf16-packed, int8-packed or int4-packed)");
  MOE_CHECK(opt.bf16 || opt.linear_format == WeightFormat::Bf16Packed,
            "inference load: integer linears (W8A8 / W4A8) run in bf16 inference; set bf16 too");
  const bool bf16 = opt.bf16;
  Transformer m(std::move(cfg), opt.external_experts, opt.ep, Unallocated{.experts = !bf16});
  const ModelConfig& c = m.cfg_;
  const size_t n = m.params_.size();
  if (bf16) {  // the state set_inference_linear_format / set_bf16_inference leave
    m.bf16_inference_ = m.bf16_compute_ = true;
    m.linear_format_ = opt.linear_format;
    m.bf16_.resize(n);
    m.bf16_t_.resize(n);
    m.bf16_fmt_.assign(n, WeightFormat::Bf16Packed);
  }
  const std::set<std::string> names(src.names.begin(), src.names.end());
  std::set<std::string> used;
  auto need = [&](const std::string& name) {
    MOE_CHECK(names.count(name), "checkpoint: missing tensor '", name, "'");
    used.insert(name);
  };
  std::vector<char> linear(n, 0), expert_ffn(n, 0);
  for (int i : m.linear_params()) linear[static_cast<size_t>(i)] = 1;
  for (const LayerIndex& P : m.index_.layers)
    for (int j = 1; j <= 6; ++j)
      if (P.moe[j] >= 0) expert_ffn[static_cast<size_t>(P.moe[j])] = 1;

  // A dense linear (out, in) packed as refresh_bf16 packs it: W8A8 / W4A8 where its input width is a
  // whole number of groups, else bf16.
  auto pack_linear = [&](int i, detail::RowReader& r) {
    const Shape& sh = m.shapes_[static_cast<size_t>(i)];
    const int64_t out = sh[0], in = shape_numel(sh) / out;
    const bool as_int = kernels::is_int_packed(m.linear_format_) && in % kLinearGroup == 0;
    const WeightFormat f = as_int ? m.linear_format_ : WeightFormat::Bf16Packed;
    const int64_t group = as_int ? kLinearGroup : 0, bytes = detail::packed_weight_bytes(f, out, in, group);
    Tensor t = as_int ? Tensor::empty({bytes}, DType::U8, "packed linear")
                      : Tensor::empty({bytes / 2}, DType::BF16, "bf16 linear");
    detail::RowPacker pk(f, out, in, group, t.raw(), m.params_[static_cast<size_t>(i)].name);
    detail::pack_rows({&r}, pk);
    m.bf16_[static_cast<size_t>(i)] = std::move(t);
    m.bf16_fmt_[static_cast<size_t>(i)] = f;
  };
  // A parameter read into its own (f32) memory.
  auto read_param = [&](size_t i, detail::RowReader& r) {
    NamedParam& p = m.params_[i];
    if (!p.value.defined()) p.value = Tensor::empty(m.shapes_[i], DType::F32, p.name);
    r.read_into(p.value.data<float>());
  };

  // The token embedding table: kept mapped from the file where it can be (bf16: any float dtype, whose
  // rows lookups widen exactly; f32: an f32 table, which is then the parameter itself).
  {
    const int i = m.index_.embed;
    NamedParam& p = m.params_[static_cast<size_t>(i)];
    need(p.name);
    const Shape& want = m.shapes_[static_cast<size_t>(i)];
    const std::string file = src.file ? src.file(p.name) : std::string();
    Tensor t = src.map ? src.map(p.name) : Tensor();
    const DType dt = t.defined() ? t.dtype() : DType::U8;
    if (t.defined() &&
        (bf16 ? dt == DType::F32 || dt == DType::BF16 || dt == DType::F16 : dt == DType::F32)) {
      detail::RowReader r(t, p.name, want, file, true);  // checks the dtype and shape
      if (bf16) {
        m.embed_rows_ = t;
        if (linear[static_cast<size_t>(i)]) pack_linear(i, r);  // tied head
      } else {
        p.value = t.set_name(p.name);
        m.embed_mapped_ = true;
      }
    } else {
      t = Tensor();
      detail::RowReader r(src, p.name, want);
      read_param(static_cast<size_t>(i), r);
      if (bf16 && linear[static_cast<size_t>(i)]) {  // tied head: packed from the table in memory
        detail::RowReader from(p.value, p.name, want, file, false);
        pack_linear(i, from);
      }
    }
  }

  // Every other parameter but the experts' weights: packed (bf16 linears) or read into place.
  for (size_t i = 0; i < n; ++i) {
    if (static_cast<int>(i) == m.index_.embed || expert_ffn[i] || m.shapes_[i].empty()) continue;
    const std::string& name = m.params_[i].name;
    need(name);
    detail::RowReader r(src, name, m.shapes_[i]);
    if (bf16 && linear[i])
      pack_linear(static_cast<int>(i), r);
    else
      read_param(i, r);
  }

  // The MoE layers: the selection bias, then each expert held here, read (f32) or packed (bf16).
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    MoELayer* L = m.moe_[static_cast<size_t>(l)].get();
    if (!L) continue;
    const LayerIndex& P = m.index_.layers[static_cast<size_t>(l)];
    MoEParams& mp = L->params();
    const MoEConfig& mc = L->config();
    const std::string pre = hf_names::moe_prefix(c, l);
    if (const std::string b = pre + hf_names::kRouterBiasSuffix; names.count(b)) {
      need(b);
      detail::RowReader r(src, b, mp.router_bias.shape());
      r.read_into(mp.router_bias.data<float>());
    }
    const bool gated = mc.activation == kernels::Activation::SwiGLU;
    const int64_t d = mc.d_model, F = mc.d_ff, Fs = mc.shared_width(), El = L->local_experts();
    const int64_t first = L->first_expert();
    Bf16ExpertWeights w;
    // One FFN's [gate | up] and down weights packed into row `e` of w_in and w_down (E experts).
    auto pack_ffn = [&](const std::string* nm, int64_t width, Tensor& w_in, Tensor& w_down, int64_t e) {
      const int64_t rows_in = (gated ? 2 : 1) * width;
      std::unique_ptr<detail::RowReader> gate;
      if (gated) gate = std::make_unique<detail::RowReader>(src, nm[0], Shape{width, d});
      {
        detail::RowReader up(src, nm[1], {width, d});
        std::vector<detail::RowReader*> parts;
        if (gate) parts.push_back(gate.get());
        parts.push_back(&up);
        detail::RowPacker pk(WeightFormat::Bf16Packed, rows_in, d, 0,
                             static_cast<uint16_t*>(w_in.raw()) + e * w_in.size(1), nm[1]);
        detail::pack_rows(parts, pk);
      }
      gate.reset();
      detail::RowReader down(src, nm[2], {d, width});
      detail::RowPacker pk(WeightFormat::Bf16Packed, d, width, 0,
                           static_cast<uint16_t*>(w_down.raw()) + e * w_down.size(1), nm[2]);
      detail::pack_rows({&down}, pk);
    };
    auto packed_stack = [&](int64_t E, int64_t N, int64_t K, const char* what) {
      return Tensor::empty({E, kernels::packed_bf16_bytes(N, K) / 2}, DType::BF16, what);
    };
    if (opt.external_experts) {  // read by the expert executor, not here
      const std::string ep = pre + ".experts.";
      for (const std::string& name : names)
        if (name.compare(0, ep.size(), ep) == 0) used.insert(name);
    } else {
      if (bf16) {
        w.w_in = packed_stack(El, (gated ? 2 : 1) * F, d, "bf16 w_in");
        w.w_down = packed_stack(El, d, F, "bf16 w_down");
      }
      for (int64_t e = 0; e < c.num_experts; ++e) {
        std::string nm[3];
        hf_names::expert_names(c, l, e, nm);
        if (e < first || e >= first + El) {  // another rank's expert (expert parallelism)
          for (const std::string& s : nm)
            if (names.count(s)) used.insert(s);
          continue;
        }
        for (int k = gated ? 0 : 1; k < 3; ++k) need(nm[k]);
        const int64_t i = e - first;  // index in this process's expert tensors
        if (bf16) {
          pack_ffn(nm, F, w.w_in, w.w_down, i);
          continue;
        }
        const Tensor* stack[3] = {&mp.w_gate, &mp.w_up, &mp.w_down};
        const Shape shape[3] = {{F, d}, {F, d}, {d, F}};
        for (int k = gated ? 0 : 1; k < 3; ++k) {
          detail::RowReader r(src, nm[k], shape[k]);
          r.read_into(stack[k]->data<float>() + i * F * d);
        }
      }
    }
    if (bf16) {
      if (Fs > 0) {
        std::string nm[3];
        for (int k = 0; k < 3; ++k)
          if (P.moe[4 + k] >= 0) nm[k] = m.params_[static_cast<size_t>(P.moe[4 + k])].name;
        for (int k = gated ? 0 : 1; k < 3; ++k) need(nm[k]);
        w.shared_w_in = packed_stack(1, (gated ? 2 : 1) * Fs, d, "bf16 shared_w_in");
        w.shared_w_down = packed_stack(1, d, Fs, "bf16 shared_w_down");
        pack_ffn(nm, Fs, w.shared_w_in, w.shared_w_down, 0);
      }
      L->set_packed_experts(std::move(w));
    } else if (Fs > 0) {
      const Tensor* shared[3] = {&mp.shared_w_gate, &mp.shared_w_up, &mp.shared_w_down};
      for (int k = gated ? 0 : 1; k < 3; ++k) {
        const size_t i = static_cast<size_t>(P.moe[4 + k]);
        need(m.params_[i].name);
        detail::RowReader r(src, m.params_[i].name, shared[k]->shape());
        r.read_into(shared[k]->data<float>());
      }
    }
  }

  // transformers drops a tied lm_head.weight on save; some writers keep it: accept an equal copy.
  if (c.tie_word_embeddings && names.count("lm_head.weight")) used.insert("lm_head.weight");
  std::string unexpected;
  int n_unexpected = 0;
  for (const std::string& name : names)
    if (!used.count(name) && n_unexpected++ < 5) unexpected += (unexpected.empty() ? "" : ", ") + name;
  MOE_CHECK(n_unexpected == 0, "checkpoint: ", n_unexpected, " unexpected tensor(s) for a ",
            arch_name(c.arch), " model of this config: ", unexpected, n_unexpected > 5 ? ", ..." : "");
  m.masters_released_ = bf16;
  tensor_cache_release();  // the load's freed blocks go back to the system, not into the peak
  return m;
}

}  // namespace moe::model
