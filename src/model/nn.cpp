// RMSNorm, rotary position embedding and the cross-entropy loss (include/moe/model/nn.h).
// Attention lives in nn_attention.cpp.
//
// Threads split rows; every output element has one owner. The only reduction across rows, the
// RMSNorm weight gradient, sums blocks of rows (each in row order, in double; the block size depends
// on n only: kMinRowBlock rows, more when there would be over kMaxRowBlocks blocks) and
// then the blocks in block order, so the result does not depend on the thread count.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "model/nn_math.h"
#include "moe/core/error.h"
#include "moe/core/parallel.h"
#include "moe/model/nn.h"

namespace moe::nn {

namespace {

constexpr int64_t kMinRowBlock = 32;    // rows per partial sum of the RMSNorm weight gradient ...
constexpr int64_t kMaxRowBlocks = 256;  // ... and at most this many partial sums (n_blocks · d doubles)

void check_rmsnorm(const char* op, const RmsNormArgs& a) {
  MOE_CHECK(a.n >= 0, op, ": n must be >= 0, got ", a.n);
  MOE_CHECK(a.d >= 1, op, ": d must be >= 1, got ", a.d);
  MOE_CHECK(std::isfinite(a.eps) && a.eps >= 0, op, ": eps must be finite and >= 0, got ", a.eps);
}

void check_ptr(const char* op, const char* name, const void* p) {
  MOE_CHECK(p != nullptr, op, ": ", name, " is null");
}

// 1 / sqrt(mean(x²) + eps) of one row x (d), summed in double.
template <typename T>
double row_rstd(const T* x, int64_t d, double eps) {
  double ss = 0;
  for (int64_t j = 0; j < d; ++j) ss += static_cast<double>(x[j]) * static_cast<double>(x[j]);
  return 1.0 / std::sqrt(ss / static_cast<double>(d) + eps);
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// RMSNorm

template <typename T>
void rmsnorm_forward(const RmsNormArgs& a, const T* x, const T* w, T* y, T* rstd) {
  const char* op = "rmsnorm_forward";
  check_rmsnorm(op, a);
  if (a.n == 0) return;
  check_ptr(op, "x", x);
  check_ptr(op, "w", w);
  check_ptr(op, "y", y);
  const int64_t d = a.d;
  const int64_t grain = std::max<int64_t>(1, 16384 / d);
  parallel_for(a.n, grain, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const T* xr = x + r * d;  // (d)
      T* yr = y + r * d;        // (d), may be xr
      const T rs = static_cast<T>(row_rstd(xr, d, a.eps));
      for (int64_t j = 0; j < d; ++j) yr[j] = xr[j] * rs * w[j];
      if (rstd) rstd[r] = rs;
    }
  });
}

// y_j = x_j r w_j with r = (mean(x²) + eps)^-1/2, so
//   dx_j = r w_j dy_j − x_j · r³/d · Σ_k w_k dy_k x_k,   dw_j = Σ_rows dy_j x_j r.
template <typename T>
void rmsnorm_backward(const RmsNormArgs& a, const T* x, const T* w, const T* rstd, const T* dy, T* dx,
                      T* dw) {
  const char* op = "rmsnorm_backward";
  check_rmsnorm(op, a);
  if (a.n == 0) return;
  check_ptr(op, "x", x);
  check_ptr(op, "w", w);
  check_ptr(op, "dy", dy);
  check_ptr(op, "dx", dx);
  const int64_t n = a.n, d = a.d;
  const int64_t block = std::max(kMinRowBlock, (n + kMaxRowBlocks - 1) / kMaxRowBlocks);
  const int64_t n_blocks = (n + block - 1) / block;
  // partial[blk, j] = Σ over the rows of block blk of dy_j x_j r (only when dw is wanted).
  std::vector<double> partial(dw ? static_cast<size_t>(n_blocks * d) : 0, 0.0);  // (n_blocks, d)
  parallel_for(n_blocks, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t blk = b0; blk < b1; ++blk) {
      double* part = dw ? partial.data() + blk * d : nullptr;  // (d)
      const int64_t r1 = std::min(n, (blk + 1) * block);
      for (int64_t r = blk * block; r < r1; ++r) {
        const T* xr = x + r * d;    // (d)
        const T* dyr = dy + r * d;  // (d)
        T* dxr = dx + r * d;        // (d), may be dyr
        const double rs = rstd ? static_cast<double>(rstd[r]) : row_rstd(xr, d, a.eps);
        double dot = 0;  // Σ_k w_k dy_k x_k
        for (int64_t j = 0; j < d; ++j)
          dot += static_cast<double>(w[j]) * static_cast<double>(dyr[j]) * static_cast<double>(xr[j]);
        if (part) {
          for (int64_t j = 0; j < d; ++j)
            part[j] += static_cast<double>(dyr[j]) * static_cast<double>(xr[j]) * rs;
        }
        const T r_t = static_cast<T>(rs);
        const T c = static_cast<T>(rs * rs * rs * dot / static_cast<double>(d));
        for (int64_t j = 0; j < d; ++j) dxr[j] = r_t * w[j] * dyr[j] - xr[j] * c;
      }
    }
  });
  if (!dw) return;
  parallel_for(d, 256, [&](int64_t j0, int64_t j1) {
    for (int64_t j = j0; j < j1; ++j) {
      double s = 0;
      for (int64_t blk = 0; blk < n_blocks; ++blk) s += partial[static_cast<size_t>(blk * d + j)];
      dw[j] += static_cast<T>(s);
    }
  });
}

// ---------------------------------------------------------------------------------------------
// RoPE

namespace {

void check_rope(const char* op, const RopeArgs& a) {
  MOE_CHECK(a.n >= 0, op, ": n must be >= 0, got ", a.n);
  MOE_CHECK(a.heads >= 0, op, ": heads must be >= 0, got ", a.heads);
  MOE_CHECK(a.hd >= 2 && a.hd % 2 == 0, op, ": head dim hd must be even and >= 2, got ", a.hd);
  MOE_CHECK(std::isfinite(a.theta) && a.theta > 0, op, ": theta must be finite and > 0, got ", a.theta);
  MOE_CHECK(a.ld == 0 || a.ld >= a.hd, op, ": head stride ld must be 0 or >= hd = ", a.hd, ", got ", a.ld);
  MOE_CHECK(std::isfinite(a.mscale), op, ": mscale must be finite, got ", a.mscale);
}

// Rotates every head of rows [0, n) by +angle (sign = 1, forward) or −angle (sign = −1, backward),
// scaled by mscale. Interleaved: forward reads pairs (x[2i], x[2i+1]) and writes the half layout;
// backward reads the half layout and writes pairs (the transpose).
template <typename T>
void rope_apply(const RopeArgs& a, const int32_t* pos, T* x, double sign) {
  const int64_t half = a.hd / 2, ld = a.ld > 0 ? a.ld : a.hd, row = a.heads * ld;
  std::vector<double> inv_freq(static_cast<size_t>(half));  // (hd/2)
  for (int64_t i = 0; i < half; ++i)
    inv_freq[i] = a.inv_freq
                      ? a.inv_freq[i]
                      : 1.0 / std::pow(a.theta, static_cast<double>(2 * i) / static_cast<double>(a.hd));
  const int64_t grain = std::max<int64_t>(1, 8192 / std::max<int64_t>(1, row));
  parallel_for(a.n, grain, [&](int64_t r0, int64_t r1) {
    std::vector<T> cs(static_cast<size_t>(2 * half));                   // cos (hd/2), then ±sin (hd/2)
    std::vector<T> tmp(a.interleaved ? static_cast<size_t>(a.hd) : 0);  // (hd) one head, interleaved only
    T* c = cs.data();
    T* s = cs.data() + half;
    for (int64_t r = r0; r < r1; ++r) {
      const double p = static_cast<double>(pos[r]);
      for (int64_t i = 0; i < half; ++i) {
        const double angle = p * inv_freq[i];
        c[i] = static_cast<T>(a.mscale * std::cos(angle));
        s[i] = static_cast<T>(a.mscale * sign * std::sin(angle));
      }
      for (int64_t h = 0; h < a.heads; ++h) {
        T* xh = x + r * row + h * ld;  // (hd)
        if (a.interleaved) {
          std::copy(xh, xh + a.hd, tmp.data());
          for (int64_t i = 0; i < half; ++i) {
            if (sign > 0) {
              const T u = tmp[2 * i], v = tmp[2 * i + 1];
              xh[i] = u * c[i] - v * s[i];
              xh[i + half] = v * c[i] + u * s[i];
            } else {
              const T u = tmp[i], v = tmp[i + half];
              xh[2 * i] = u * c[i] - v * s[i];
              xh[2 * i + 1] = v * c[i] + u * s[i];
            }
          }
          continue;
        }
        T* x0 = xh;         // (hd/2) first half
        T* x1 = x0 + half;  // (hd/2) second half
        for (int64_t i = 0; i < half; ++i) {
          const T u = x0[i], v = x1[i];
          x0[i] = u * c[i] - v * s[i];
          x1[i] = v * c[i] + u * s[i];
        }
      }
    }
  });
}

}  // namespace

template <typename T>
void rope_forward(const RopeArgs& a, const int32_t* pos, T* x) {
  const char* op = "rope_forward";
  check_rope(op, a);
  if (a.n == 0 || a.heads == 0) return;
  check_ptr(op, "pos", pos);
  check_ptr(op, "x", x);
  rope_apply(a, pos, x, 1.0);
}

template <typename T>
void rope_backward(const RopeArgs& a, const int32_t* pos, T* dx) {
  const char* op = "rope_backward";
  check_rope(op, a);
  if (a.n == 0 || a.heads == 0) return;
  check_ptr(op, "pos", pos);
  check_ptr(op, "dx", dx);
  rope_apply(a, pos, dx, -1.0);
}

// ---------------------------------------------------------------------------------------------
// Cross-entropy

template <typename T>
CrossEntropyResult cross_entropy(int64_t n, int64_t V, const T* logits, const int32_t* targets, T* dlogits,
                                 double grad_scale) {
  const char* op = "cross_entropy";
  MOE_CHECK(n >= 0, op, ": n must be >= 0, got ", n);
  MOE_CHECK(V >= 0, op, ": vocabulary size V must be >= 0, got ", V);
  CrossEntropyResult res;
  if (n == 0) return res;
  check_ptr(op, "targets", targets);
  // Every target is checked before anything is written.
  for (int64_t r = 0; r < n; ++r) {
    MOE_CHECK(targets[r] < V, op, ": targets[", r, "] = ", targets[r], " is out of range for V = ", V);
  }
  if (V > 0) check_ptr(op, "logits", logits);
  std::vector<double> row_loss(static_cast<size_t>(n), 0.0);  // (n), 0 for ignored rows
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(1, V));
  parallel_for(n, grain, [&](int64_t r0, int64_t r1) {
    std::vector<T> scratch(dlogits ? 0 : static_cast<size_t>(V));  // (V) when there is no dlogits
    for (int64_t r = r0; r < r1; ++r) {
      const T* xr = logits + r * V;                 // (V)
      T* gr = dlogits ? dlogits + r * V : nullptr;  // (V), may be xr
      const int32_t t = targets[r];
      if (t < 0) {
        if (gr) std::fill(gr, gr + V, T(0));
        continue;
      }
      const T m = detail::row_max(xr, V);
      const double x_t = static_cast<double>(xr[t]);  // read before gr may overwrite it
      T* e = gr ? gr : scratch.data();                // (V) exp(x − m)
      if (e != xr) std::copy(xr, xr + V, e);
      detail::exp_shifted(e, V, m);
      const double sum = detail::row_sum(e, V);
      const double lse = static_cast<double>(m) + std::log(sum);
      row_loss[static_cast<size_t>(r)] = lse - x_t;
      if (gr) {
        const T f = static_cast<T>(grad_scale / sum);
        for (int64_t j = 0; j < V; ++j) gr[j] *= f;
        gr[t] -= static_cast<T>(grad_scale);
      }
    }
  });
  for (int64_t r = 0; r < n; ++r) {
    if (targets[r] < 0) continue;
    res.loss_sum += row_loss[static_cast<size_t>(r)];
    ++res.count;
  }
  return res;
}

#define MOE_NN_INSTANTIATE(T)                                                                            \
  template void rmsnorm_forward<T>(const RmsNormArgs&, const T*, const T*, T*, T*);                      \
  template void rmsnorm_backward<T>(const RmsNormArgs&, const T*, const T*, const T*, const T*, T*, T*); \
  template void rope_forward<T>(const RopeArgs&, const int32_t*, T*);                                    \
  template void rope_backward<T>(const RopeArgs&, const int32_t*, T*);                                   \
  template CrossEntropyResult cross_entropy<T>(int64_t, int64_t, const T*, const int32_t*, T*, double);
MOE_NN_INSTANTIATE(float)
MOE_NN_INSTANTIATE(double)
#undef MOE_NN_INSTANTIATE

}  // namespace moe::nn
