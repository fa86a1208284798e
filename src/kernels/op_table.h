// The op table: one row per op (an OpRow specialisation per Args type, in src/kernels/rows_*.h) and
// the one generic dispatch over it. A row says:
//
//   static constexpr const char* name;                  the op's name in errors and listings
//   static HostFn<Args> ref(), cpu();                   the Ref and Cpu entry points (nullptr: absent)
//   static DeviceFn<Args> cuda();                       the Cuda entry point (nullptr: absent)
//   static bool validate(Backend, const Args&);         throws moe::Error naming the bad argument;
//                                                       false when there is nothing to do
//   static Support limits(Backend, const Args&);        what a present implementation cannot do
//                                                       with these arguments (a flag it lacks)
//   static double flops(const Args&), bytes(const Args&);
//
// run() asks supports() first (an op a backend lacks is a clear error, never a crash), then
// validates, then calls the backend's entry point. Adding an op adds a row and its instantiation
// in op_table.cpp; adding a backend fills a column (an entry point per row that has one).
#pragma once

#include <type_traits>

#include "moe/core/error.h"
#include "moe/kernels/ops.h"

namespace moe::kernels {

template <class Args>
using HostFn = void (*)(const Args&);
template <class Args>
using DeviceFn = void (*)(const Args&, Context&);

template <class Args>
struct OpRow;

namespace table {

// The element type of an op templated on it (GemmArgs<double> -> double), else float.
template <class Args>
struct ElemOf {
  using type = float;
};
template <template <class> class A, class T>
struct ElemOf<A<T>> {
  using type = T;
};

// Throws unless the Cuda backend can run now (built with CUDA, a GPU present).
void require_cuda_device(const char* op);

template <class Args>
Support supports(Backend b, const Args& a) {
  using Row = OpRow<Args>;
  switch (b) {
    case Backend::Ref:
      if (Row::ref() == nullptr) return Support::no("not implemented on ref");
      break;
    case Backend::Cpu:
      if (Row::cpu() == nullptr) return Support::no("not implemented on cpu");
      break;
    case Backend::Cuda:
#ifndef MOE_HAVE_CUDA
      return Support::no(
          "not implemented on cuda: the cuda backend is not available (this build has no CUDA support)");
#else
      if (!std::is_same_v<typename ElemOf<Args>::type, float>) {
        return Support::no("not implemented on cuda: the cuda backend supports float only, not double");
      }
      if (Row::cuda() == nullptr) return Support::no("not implemented on cuda");
      break;
#endif
    default:
      return Support::no(cat("unknown backend ", static_cast<int>(b)));
  }
  return Row::limits(b, a);
}

template <class Args>
void run(Exec e, const Args& a) {
  using Row = OpRow<Args>;
  const Backend b = e.backend();
  if (const Support s = table::supports(b, a); !s) throw Error(cat(Row::name, ": ", s.reason));
  if (!Row::validate(b, a)) return;  // nothing to do
  switch (b) {
    case Backend::Ref:
      return Row::ref()(a);
    case Backend::Cpu:
      return Row::cpu()(a);
    case Backend::Cuda: {
      require_cuda_device(Row::name);
      Context& ctx = e.context();
      Row::cuda()(a, ctx);
      if (ctx.eager_errors()) ctx.synchronize();
      return;
    }
  }
}

template <class Args>
OpInfo info() {
  using Row = OpRow<Args>;
  using T = typename ElemOf<Args>::type;
  OpInfo i;
  i.name = Row::name;
  if constexpr (std::is_same_v<T, double>) i.name += "[f64]";
  i.backend[static_cast<int>(Backend::Ref)] = Row::ref() != nullptr;
  i.backend[static_cast<int>(Backend::Cpu)] = Row::cpu() != nullptr;
#ifdef MOE_HAVE_CUDA
  i.backend[static_cast<int>(Backend::Cuda)] = std::is_same_v<T, float> && Row::cuda() != nullptr;
#endif
  return i;
}

}  // namespace table

// The public generic entry points (moe/kernels/ops.h) are these, instantiated per row.
template <class Args>
void run(Exec e, const Args& args) {
  table::run(e, args);
}
template <class Args>
Support supports(Backend b, const Args& args) {
  return table::supports(b, args);
}
template <class Args>
double op_flops(const Args& args) {
  return OpRow<Args>::flops(args);
}
template <class Args>
double op_bytes(const Args& args) {
  return OpRow<Args>::bytes(args);
}

// A row's Cuda entry point for an op templated on T: fn for float when built with CUDA, else none.
#ifdef MOE_HAVE_CUDA
#define MOE_OP_ROW_CUDA_FLOAT(fn)                       \
  static DeviceFn<Args> cuda() {                        \
    if constexpr (std::is_same_v<T, float>) return &fn; \
    return nullptr;                                     \
  }
#else
#define MOE_OP_ROW_CUDA_FLOAT(fn) \
  static DeviceFn<Args> cuda() { return nullptr; }
#endif

#define MOE_OP_ROW_INSTANTIATE(...)                                    \
  template void run<__VA_ARGS__>(Exec, const __VA_ARGS__&);            \
  template Support supports<__VA_ARGS__>(Backend, const __VA_ARGS__&); \
  template double op_flops<__VA_ARGS__>(const __VA_ARGS__&);           \
  template double op_bytes<__VA_ARGS__>(const __VA_ARGS__&);

}  // namespace moe::kernels
