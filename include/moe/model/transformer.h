// A decoder-only MoE transformer (Mixtral / Qwen2-MoE / Qwen3-MoE / OLMoE / DeepSeek-V3), forward
// and backward. DeepSeek-V3's latent attention replaces the q/k/v projections (docs/MODELS.md).
//
//   x = embed[tokens]                                                   (N = B·S, d)
//   per layer:  x += o_proj( attention( rope(qk_norm(q_proj h)), rope(qk_norm(k_proj h)), v_proj h ) ),
//               h = rmsnorm(x, input_layernorm)
//               x += ffn( rmsnorm(x, post_attention_layernorm) )      ffn = MoE layer or dense SwiGLU
//   logits = rmsnorm(x, norm) · lm_headᵀ                                (N, V)
//
// Training loss of one micro-batch:  ce_scale · Σ_t CE(logits_t, target_t) + aux_scale · Σ_layers aux,
// where aux is the MoE layer's balancing loss (docs/MOE_LAYER.md). Gradients ACCUMULATE into the
// parameters' grad tensors until zero_grads(), so gradient accumulation is repeated calls.
// dtype F32 (training, inference) or F64 (gradient checks).
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "moe/core/tensor.h"
#include "moe/kernels/context.h"
#include "moe/kernels/weight_view.h"
#include "moe/model/model_config.h"
#include "moe/moe/layer.h"

namespace moe::model {

// One trainable tensor: its name (the Hugging Face name where the layout is the same; stacked
// expert tensors are "<prefix>.experts.w_gate|w_up|w_down" of shape (E, F, d) / (E, d, F)), its
// value, its gradient (same shape; allocated by the first zero_grads(), ensure_grads() or
// forward_backward(), so a model used only for inference holds no gradient memory), and whether
// weight decay applies (not to norms and biases).
struct NamedParam {
  std::string name;
  Tensor value;
  Tensor grad;
  bool decay = true;
};

struct StepOptions {
  double ce_scale = 1.0;   // multiplies the summed cross-entropy in the gradient
  double aux_scale = 1.0;  // multiplies the summed balancing losses in the gradient
  bool training = true;    // router jitter
  uint64_t step = 0;       // jitter stream
  uint64_t seed = 0;
  bool check_finite = false;
  // Knowledge distillation (docs/DISTILLATION.md): with teacher_logits (N = B·S, V), F32 or F64, the
  // loss of each counted position is (1−kd_weight)·CE + kd_weight·T²·KL(softmax(t/T) ‖ softmax(z/T)),
  // T = kd_temperature, and its logits gradient (1−A)·(softmax(z) − onehot) + A·T·(softmax(z/T) −
  // softmax(t/T)), times ce_scale. Null: plain cross-entropy (the path without distillation).
  const Tensor* teacher_logits = nullptr;
  double kd_weight = 0.0;       // A in [0, 1]
  double kd_temperature = 1.0;  // T > 0
};

struct StepResult {
  double loss_sum = 0;              // Σ CE over counted targets
  int64_t count = 0;                // counted targets (target >= 0)
  double aux_loss = 0;              // Σ over MoE layers of their balancing loss (unscaled)
  double kd_loss_sum = 0;           // Σ T²·KL over counted targets (with StepOptions::teacher_logits)
  std::vector<int64_t> moe_layers;  // layer index of each entry of stats
  std::vector<MoEStats> stats;      // per MoE layer
  double mean_loss() const { return count > 0 ? loss_sum / static_cast<double>(count) : 0.0; }
};

// Keys and values of every layer for incremental decoding of ONE sequence. Keys have the head dim
// of queries (ModelConfig::qk_head_dim), values their own (v_head_dim_or_default); deepseek_v3
// caches the decompressed per-head keys and values.
struct KVCache {
  int64_t max_len = 0;
  int64_t len = 0;           // positions filled
  std::vector<Tensor> k, v;  // per layer (max_len, hkv, hd_k), (max_len, hkv, hd_v)
};

// Named tensors read on demand: a checkpoint's files (checkpoint_source) or a map in memory.
struct TensorSource {
  std::vector<std::string> names;                       // every tensor the source holds
  std::function<Tensor(const std::string&)> load;       // reads one; throws moe::Error naming file and tensor
  std::function<std::string(const std::string&)> file;  // the file holding a tensor, for errors (optional)
  // Optional: the tensor over the memory-mapped file in its stored dtype, no copy (SafetensorsReader::
  // map); an undefined tensor where this one cannot be mapped (then `load` reads it).
  std::function<Tensor(const std::string&)> map;
};

class Transformer {
 public:
  // external_experts: the routed experts' weights are not held here (they are not allocated, not in
  // parameters(), not read from checkpoints): an expert executor attached to every MoE layer
  // (MoELayer::set_expert_executor, e.g. infer::ExpertStore) computes them. Inference only.
  // ep: expert parallelism (MoELayer's ExpertParallel): every MoE layer holds only this rank's slice
  // of the routed experts; parameters(), init_params(), hf_state_dict() and load_hf_state_dict()
  // cover that slice (with the experts' global names and the values a single process would have).
  explicit Transformer(ModelConfig cfg, DType dtype = DType::F32, bool external_experts = false,
                       ExpertParallel ep = {});
  bool external_experts() const { return external_experts_; }
  const ExpertParallel& expert_parallel() const { return ep_; }
  // True for the stacked routed-expert tensors ("<prefix>.experts.w_gate|w_up|w_down"), which
  // expert parallelism shards.
  static bool is_expert_param(const std::string& name);
  int64_t first_expert() const;  // the first routed expert held here (0 without expert parallelism)
  MoELayer* mutable_moe_layer(int64_t layer);  // null for dense layers
  const ModelConfig& config() const { return cfg_; }
  DType dtype() const { return dtype_; }

  // Where the model's ops run: the dense linears' and the attention's matrix products and every MoE
  // layer (MoELayer::set_backend); Cpu unless set. The model's tensors live on the host and its
  // norms, rotary embedding and softmax are host loops, so only host backends (Ref, Cpu) are
  // accepted; Cuda throws moe::Error. Ref runs the reference kernels (double accumulation): the
  // whole model as the definition a fast backend is tested against.
  void set_backend(kernels::Backend b);
  kernels::Backend backend() const { return backend_; }

  // Hugging Face-style init: normal(0, initializer_range) for matrices, ones for norms, zero biases.
  void init_params(uint64_t seed);
  std::vector<NamedParam>& parameters() { return params_; }
  const std::vector<NamedParam>& parameters() const { return params_; }
  NamedParam& param(const std::string& name);  // throws when absent
  void zero_grads();                           // allocates the gradients first when needed
  void ensure_grads();                         // allocates zero gradients for parameters that have none yet

  // Forward and backward of a micro-batch; tokens and targets (B, S) i32 (target < 0 = ignored).
  StepResult forward_backward(const int32_t* tokens, const int32_t* targets, int64_t B, int64_t S,
                              const StepOptions& opt);
  // Forward only: loss of targets (no gradients, no jitter).
  StepResult evaluate(const int32_t* tokens, const int32_t* targets, int64_t B, int64_t S) const;
  // Logits (B·S, V) of a batch, no cache.
  Tensor logits(const int32_t* tokens, int64_t B, int64_t S) const;

  // Incremental decoding: appends n tokens at positions cache.len.. and returns the logits of the
  // last one (V). The cache must come from new_cache().
  KVCache new_cache(int64_t max_len) const;
  Tensor decode(KVCache& cache, const int32_t* tokens, int64_t n) const;

  // bf16 compute: the dense linear layers (attention projections, dense FFNs, the output head) run
  // their forward and input-gradient GEMMs on bf16 copies of the f32 master weights, with the
  // activations rounded to bf16 as they are read and f32 accumulation (AVX512-BF16 where present);
  // weight gradients, the optimizer and everything else stay f32. The copies are refreshed at the
  // start of every forward_backward() and evaluate(), and by refresh_bf16(). The MoE layers' experts
  // compute in bf16 too (MoELayer::set_bf16_compute: forward and input-gradient GEMMs; their weight
  // gradients stay f32). f32 models only.
  void set_bf16_compute(bool on);
  bool bf16_compute() const { return bf16_compute_; }
  void refresh_bf16() const;
  // bf16 inference: bf16 compute for the dense linears (above) and bf16 copies of every MoE layer's
  // expert weights (MoELayer::set_bf16_expert_weights), so a forward reads half the bytes of f32
  // weights. A snapshot of the current weights; forward_backward() throws while it is on.
  void set_bf16_inference(bool on);
  bool bf16_inference() const { return bf16_inference_; }
  // bf16 inference with the dense linears' forward copies in an integer format instead: Int8Packed
  // (W8A8) or Int4Packed (W4A8), quantized from the current f32 weights in groups of kLinearGroup inputs
  // (int8 symmetric, int4 asymmetric, as `moe quantize` does), their activations quantized to int8 per
  // row (moe/kernels/weights.h); a linear whose input width is not a multiple of the group stays bf16.
  // Bf16Packed is plain bf16 inference; set_bf16_inference(false) turns either off. Throws moe::Error
  // on another format.
  static constexpr int64_t kLinearGroup = 32;
  void set_inference_linear_format(kernels::WeightFormat f);
  kernels::WeightFormat inference_linear_format() const { return linear_format_; }

  // Inference-only models hold each weight once. release_masters(), in bf16 inference, drops the f32
  // master weights of everything that has a packed copy: the dense linears and the output head (bf16
  // or W8A8 / W4A8) and the MoE layers' routed and shared experts (MoELayer::release_expert_masters).
  // The forward is unchanged (it reads the packed copies); the norms, routers and biases stay f32, and
  // so does the embedding table (its rows are what a lookup copies; with tied embeddings the head's
  // packed copy is made from it). The dropped parameters stay in parameters() with undefined values,
  // and what needs them throws moe::Error naming the reason: set_bf16_inference,
  // set_inference_linear_format, set_bf16_compute(true), forward_backward, zero_grads, ensure_grads,
  // init_params, hf_state_dict (saving), load_hf_state_dict. Throws outside bf16 inference.
  void release_masters();
  bool masters_released() const { return masters_released_; }

  // Inference-only loading (infer::load_inference_model: moe generate, serve, eval, bench generate):
  // the model of `cfg` with the tensors of `src`, checked as load_hf_state_dict checks them, in the
  // precision `opt` asks for, the way a load followed by set_inference_linear_format / set_bf16_inference
  // and release_masters() would leave it (the same packed weights bit for bit, so the same outputs;
  // only the embedding table is held differently, below),
  // but read tensor by tensor and row block by row block: each linear and each expert is packed as it is
  // read, so the f32 weights of what is packed are never held and the load's peak memory stays close to
  // the model's. Where the source can map a tensor (checkpoint_source), rows are read from the mapped
  // file and their pages dropped once read. The token embedding table is then kept mapped from the file
  // in its stored dtype (f32, bf16 or f16), its rows converted to f32 as they are looked up (exact):
  // only the rows a run reads become resident. With opt.bf16 false the model is an ordinary f32 model
  // (trainable, savable), its parameters read straight into place and its embedding table the mapped
  // tensor itself when the file stores it in f32 (private: writes never reach the file).
  struct InferenceLoad {
    bool bf16 = false;  // bf16 inference (set_bf16_inference(true)), the masters released
    kernels::WeightFormat linear_format = kernels::WeightFormat::Bf16Packed;  // with bf16: the linears'
    bool external_experts = false;                                            // see the constructor
    ExpertParallel ep;
  };
  static Transformer load_for_inference(ModelConfig cfg, const TensorSource& src, const InferenceLoad& opt);

  // Bytes of weights the model holds in memory: f32 (or f64) parameters with memory of their own, packed
  // copies (bf16 / W8A8 / W4A8 linears, bf16 experts, bf16-compute copies), and parameters mapped from
  // the checkpoint file (the embedding table of load_for_inference: resident only as far as its pages
  // are read). Expert weights held outside the model (an expert store) are not counted.
  struct WeightMemory {
    int64_t masters = 0;
    int64_t packed = 0;
    int64_t mapped = 0;
  };
  WeightMemory weight_memory() const;

  // Bytes of weights that the forward of one token reads alone (batch 1) in the current mode: the
  // dense linears, norms, routers and head in full (bf16 inference: the linears at 2 bytes), one
  // embedding row, the shared experts, and top_k of the routed experts held here per MoE layer (at
  // 2 bytes in bf16 inference). External experts are not counted: the expert store adds its own.
  struct WeightTraffic {
    double dense = 0;   // everything but the routed experts
    double routed = 0;  // the top_k routed experts per MoE layer
    double total() const { return dense + routed; }
  };
  WeightTraffic weight_bytes_per_token() const;

  // Dynamic expert skipping at inference: sets RouterConfig::skip_threshold of every MoE layer
  // (0 = off; see MoELayer::set_skip_threshold). Forwards with training on are not affected.
  void set_expert_skip_threshold(double t);
  // Adaptive-k (top-p) routing in every MoE layer (MoELayer::set_router_top_p): experts by score
  // until their mass reaches p, at least min_k, at most the model's top_k (p = 0: top_k always).
  void set_router_top_p(double p, int min_k = 1);

  // Aux-loss-free balancing: updates each MoE layer's selection bias from that layer's stats.
  void update_router_biases(const StepResult& r);
  const MoELayer* moe_layer(int64_t layer) const;  // null for dense layers

  // Checkpoints in the Hugging Face layout (one tensor per expert). Loading validates every name,
  // shape and dtype (f32/bf16/f16 accepted) and reports missing and unexpected tensors. Under
  // expert parallelism the state dict holds this rank's experts only, and loading reads only them
  // (other experts' tensors in the source are expected, not read).
  std::map<std::string, Tensor> hf_state_dict() const;
  void load_hf_state_dict(const std::map<std::string, Tensor>& sd);
  // The same from tensors read one at a time (each is copied into place and dropped), so loading
  // a checkpoint never holds more than the model plus one tensor.
  void load_hf_state_dict(const TensorSource& src);

  struct Impl;

 private:
  // Indices into params_ (-1 when the architecture has no such tensor).
  struct LayerIndex {
    int ln1 = -1, ln2 = -1;
    int q_w = -1, q_b = -1, k_w = -1, k_b = -1, v_w = -1, v_b = -1, o_w = -1, q_norm = -1, k_norm = -1;
    int o_b = -1;  // o_proj bias (deepseek_v3 attention_bias)
    // deepseek_v3 latent attention (q_w is q_proj when q_lora_rank is null)
    int q_a_w = -1, q_a_b = -1, q_a_norm = -1, q_b_w = -1, kv_a_w = -1, kv_a_b = -1, kv_a_norm = -1,
        kv_b_w = -1;
    int gate = -1, up = -1, down = -1;  // dense FFN
    // MoE block: router_w, w_gate, w_up, w_down, shared_w_gate, shared_w_up, shared_w_down, shared_gate_w
    int moe[8] = {-1, -1, -1, -1, -1, -1, -1, -1};
  };
  struct Index {
    int embed = -1, norm = -1, head = -1;
    std::vector<LayerIndex> layers;
  };
  // The parameters' names and shapes; their memory too with allocate_ (else only the norms, biases,
  // routers and shared gates are allocated, the rest waits for load_for_inference).
  void build_params();
  void build_mla_params(int64_t layer);
  std::vector<int> linear_params() const;  // the weights that bf16 compute packs
  int add_param(const std::string& name, Tensor value, bool decay, Shape shape);
  int add_matrix(const std::string& name, int64_t rows, int64_t cols);  // zeros, or unallocated
  void check_masters(const char* what) const;  // throws when release_masters() dropped them
  // The linears and the embedding table unallocated (f32), the experts too unless `experts`.
  struct Unallocated {
    bool experts = false;
  };
  Transformer(ModelConfig cfg, bool external_experts, ExpertParallel ep, Unallocated u);

  ModelConfig cfg_;
  DType dtype_;
  kernels::Backend backend_ = kernels::Backend::Cpu;
  std::vector<NamedParam> params_;
  std::vector<std::unique_ptr<MoELayer>> moe_;  // per layer; null for dense layers
  Index index_;
  bool external_experts_ = false;
  ExpertParallel ep_;
  bool bf16_compute_ = false;
  bool bf16_inference_ = false;
  // Per parameter: bf16-packed copies of a linear weight (the forward's, and the input gradient's
  // unless in bf16 inference), else undefined.
  mutable std::vector<Tensor> bf16_, bf16_t_;
  mutable std::vector<kernels::WeightFormat> bf16_fmt_;  // the format of each bf16_ entry
  kernels::WeightFormat linear_format_ = kernels::WeightFormat::Bf16Packed;
  bool pack_linear_int(int i, int64_t out, int64_t in) const;  // bf16_[i] in linear_format_, if it can be
  std::vector<Shape> shapes_;     // per parameter (its value may be undefined: released or not loaded)
  bool allocate_ = true;          // the linears and the embedding table (build_params)
  bool allocate_experts_ = true;  // the MoE layers' routed and shared experts (build_params)
  bool masters_released_ = false;
  // The token embedding table as embedding lookups read it when it is not the f32 parameter: mapped
  // from the checkpoint in its stored dtype (F32, BF16 or F16). Undefined: the parameter.
  Tensor embed_rows_;
  bool embed_mapped_ = false;  // the parameter's value is the mapped file tensor (f32 load_for_inference)
};

// config.json + model.safetensors in `dir` (created if needed; files written atomically).
void save_pretrained(const Transformer& m, const std::string& dir);
// Every tensor of the checkpoint in `dir`: model.safetensors, or the shards named by
// model.safetensors.index.json.
std::map<std::string, Tensor> load_hf_tensors(const std::string& dir);
// The tensors of the checkpoint in `dir` (model.safetensors or the shards of its index), read on
// demand; only the headers are read here (and validated).
TensorSource checkpoint_source(const std::string& dir);
// Where each tensor of the checkpoint in `dir` lies: its file and absolute byte range (for readers
// that map or read the bytes themselves, such as the expert store).
struct TensorLocation {
  std::string file;
  DType dtype = DType::F32;
  Shape shape;
  uint64_t offset = 0;  // from the start of the file
  uint64_t bytes = 0;
};
std::map<std::string, TensorLocation> checkpoint_locations(const std::string& dir);
// Checks, from the headers only and before a model of `cfg` is allocated, that the checkpoint in
// `dir` is one of that shape: its token embedding is (vocab_size, hidden_size), every layer
// 0..num_hidden_layers-1 has tensors and each MoE layer's router has num_experts rows. A config.json that
// claims more than its checkpoint holds is refused here instead of allocating the model it describes.
void check_checkpoint_shape(const ModelConfig& cfg, const std::string& dir);
// Reads config.json and model.safetensors (or a sharded model.safetensors.index.json) from `dir`.
// external_experts: see the Transformer constructor (the checkpoint's expert tensors are not read).
// ep: expert parallelism (only this rank's experts are read).
Transformer load_pretrained(const std::string& dir, DType dtype = DType::F32, bool external_experts = false,
                            ExpertParallel ep = {});

// Hugging Face tensor-name prefix of layer l's MoE block ("model.layers.3.block_sparse_moe" for
// mixtral, "model.layers.3.mlp" otherwise) and the names of expert e's gate, up and down weights.
std::string moe_block_prefix(const ModelConfig& c, int64_t layer);
std::array<std::string, 3> expert_weight_names(const ModelConfig& c, int64_t layer, int64_t expert);

}  // namespace moe::model
