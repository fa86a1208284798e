// Memory measurement for the benchmarks: the resident set of this process as Linux reports it in
// /proc/self/status (VmRSS now, VmHWM its peak), a reset of that peak (/proc/self/clear_refs), and
// glibc's mmap threshold fixed low so that freed large buffers go back to the OS at once and the
// resident set follows the memory that is live.
#pragma once

#include <cstddef>

namespace moe::cli {

// Fixes glibc's mmap threshold (mallopt M_MMAP_THRESHOLD; this also turns off glibc's dynamic
// raising of the threshold): every allocation of at least `bytes` gets its own mapping, returned
// to the OS on free. Returns false where this is not glibc or mallopt refuses.
bool fix_mmap_threshold(size_t bytes);

// The threshold fix_mmap_threshold is called with by `moe bench layer` (and the one the PyTorch
// comparison sets through MALLOC_MMAP_THRESHOLD_): 128 KiB.
inline constexpr size_t kBenchMmapThreshold = 128 * 1024;

// Current resident set (VmRSS) and its peak (VmHWM) in MiB; a negative value when unreadable.
double current_rss_mib();
double peak_rss_hwm_mib();

// Resets VmHWM to the current resident set (writes "5" to /proc/self/clear_refs, Linux >= 4.0).
// Returns false when that is not permitted or not supported; VmHWM then keeps the process peak.
bool reset_peak_rss();

}  // namespace moe::cli
