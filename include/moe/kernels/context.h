// Where an op runs: the backend, its stream and scratch memory, and the place where errors found
// on a device are read.
//
//   Context ctx(Backend::Cuda, stream);      // one per stream (or per thread on the host)
//   kernels::permute(ctx, args);              // enqueued on ctx's stream; no host synchronisation
//   kernels::grouped_ffn_up(ctx, up_args);
//   ctx.synchronize();                        // waits, then throws what the device found (a bad expert id)
//
// Every op also accepts a Backend (`kernels::gemm(Backend::Cpu, args)`): it runs on that backend's
// default context of the calling thread, which checks for device errors after each op, so an error
// is thrown by the call that caused it (the behaviour of code written before contexts existed).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace moe::kernels {

enum class Backend { Ref, Cpu, Cuda };
const char* backend_name(Backend b);
Backend backend_from_name(const std::string& name);  // "ref", "cpu", "cuda"; throws moe::Error
bool backend_available(Backend b);                   // Cuda: built with CUDA and a GPU is present
std::vector<Backend> available_backends();

// Scratch memory an op borrows for the length of one call: host memory for Ref and Cpu, device memory
// for Cuda. It grows to the largest request and is kept, so a steady stream of same-sized calls
// allocates once (no per-call device allocation).
class Workspace {
 public:
  explicit Workspace(Backend b = Backend::Cpu);
  ~Workspace();
  Workspace(const Workspace&) = delete;
  Workspace& operator=(const Workspace&) = delete;

  // At least `bytes` bytes, 256-byte aligned, valid until the next reserve. On Cuda a growth frees the
  // old block after the device is idle (earlier ops may still read it).
  void* reserve(size_t bytes);
  size_t capacity() const { return capacity_; }
  int64_t allocations() const { return allocations_; }  // how many times it grew

 private:
  Backend backend_;
  void* data_ = nullptr;
  size_t capacity_ = 0;
  int64_t allocations_ = 0;
};

// A device-side error record: ops that validate data on the device (expert ids in permute) write the
// first problem here instead of synchronising; Context::synchronize reads it.
struct DeviceError {
  int32_t code = 0;   // 0: none; 1: an expert id outside [0, bound)
  int32_t value = 0;  // the bad value
  int64_t index = 0;  // where it was found
  int64_t bound = 0;  // the range it had to be in
};

class Context {
 public:
  // stream: a cudaStream_t for Cuda (null: the default stream); ignored on host backends.
  explicit Context(Backend b = Backend::Cpu, void* stream = nullptr);
  ~Context();
  Context(const Context&) = delete;
  Context& operator=(const Context&) = delete;

  Backend backend() const { return backend_; }
  void* stream() const { return stream_; }
  Workspace& workspace() { return workspace_; }

  // Waits for the work enqueued on this context, then throws moe::Error naming the first error the
  // device recorded since the last synchronize (and clears it). On host backends errors are thrown by
  // the op itself and this returns at once.
  void synchronize();
  // When set, every op synchronises (and throws) before it returns: the default contexts are eager.
  bool eager_errors() const { return eager_; }
  void set_eager_errors(bool on) { eager_ = on; }

  // The device's error record (allocated on first use; Cuda only): ops pass it to their kernels.
  DeviceError* device_error();

 private:
  Backend backend_;
  void* stream_;
  Workspace workspace_;
  DeviceError* device_error_ = nullptr;
  bool eager_ = false;
};

// The calling thread's default context of backend b (eager errors, default stream).
Context& default_context(Backend b);

// What an op is given to run on: a Context, or a Backend (its default context). Op functions take an
// Exec so that both `op(ctx, args)` and `op(Backend::Cpu, args)` work.
class Exec {
 public:
  Exec(Context& ctx) : ctx_(&ctx) {}              // NOLINT(google-explicit-constructor)
  Exec(Backend b) : ctx_(&default_context(b)) {}  // NOLINT(google-explicit-constructor)
  Context& context() const { return *ctx_; }
  Backend backend() const { return ctx_->backend(); }

 private:
  Context* ctx_;
};

// Whether a backend runs an op on given arguments (ggml's supports_op): `ok`, or why not
// ("not implemented on cuda", "the cuda backend supports float only", ...). A capability of the
// implementation, independent of whether a GPU is present (backend_available says that).
struct Support {
  bool ok = true;
  std::string reason;  // empty when ok
  explicit operator bool() const { return ok; }
  static Support yes() { return {}; }
  static Support no(std::string why) { return {false, std::move(why)}; }
};

// One row of the op table as data (for listings: `moe version`, the harness).
struct OpInfo {
  std::string name;      // "grouped_gemm[f32]"
  bool backend[3] = {};  // an implementation exists for Ref, Cpu, Cuda (indexed by Backend)
};
std::vector<OpInfo> op_table();

}  // namespace moe::kernels
