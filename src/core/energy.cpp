#include "moe/core/energy.h"

#include <dlfcn.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>

namespace moe {

namespace fs = std::filesystem;

namespace {

// One unsigned integer from a sysfs file; false when the file cannot be read (a counter that only
// root may read fails here).
bool read_u64(const std::string& path, uint64_t& v) {
  std::ifstream f(path);
  if (!f) return false;
  unsigned long long x = 0;
  if (!(f >> x)) return false;
  v = x;
  return true;
}

// "intel-rapl:N": a top-level zone (its sub-zones are "intel-rapl:N:M").
bool is_top_zone(const std::string& name) {
  const std::string prefix = "intel-rapl:";
  if (name.size() <= prefix.size() || name.compare(0, prefix.size(), prefix) != 0) return false;
  return std::all_of(name.begin() + static_cast<std::ptrdiff_t>(prefix.size()), name.end(),
                     [](char c) { return c >= '0' && c <= '9'; });
}

std::string read_line(const std::string& path) {
  std::ifstream f(path);
  std::string s;
  std::getline(f, s);
  return s;
}

}  // namespace

// NVML through dlopen: the calls this meter needs, with their C signatures (nvml.h).
struct EnergyMeter::Nvml {
  using Init = int (*)();
  using Count = int (*)(unsigned int*);
  using Handle = int (*)(unsigned int, void**);
  using Energy = int (*)(void*, unsigned long long*);  // millijoules since the driver was loaded
  using Shutdown = int (*)();
  void* lib = nullptr;
  Energy energy = nullptr;
  Shutdown shutdown = nullptr;
  std::vector<void*> devices;
  std::vector<unsigned long long> start;  // mJ at construction

  // Empty string on success, else why not.
  std::string open() {
    lib = dlopen("libnvidia-ml.so.1", RTLD_NOW | RTLD_LOCAL);
    if (lib == nullptr) return "no NVML library";
    auto init = reinterpret_cast<Init>(dlsym(lib, "nvmlInit_v2"));
    auto count = reinterpret_cast<Count>(dlsym(lib, "nvmlDeviceGetCount_v2"));
    auto handle = reinterpret_cast<Handle>(dlsym(lib, "nvmlDeviceGetHandleByIndex_v2"));
    energy = reinterpret_cast<Energy>(dlsym(lib, "nvmlDeviceGetTotalEnergyConsumption"));
    shutdown = reinterpret_cast<Shutdown>(dlsym(lib, "nvmlShutdown"));
    if (!init || !count || !handle || !energy || !shutdown) return "NVML without the energy calls";
    if (init() != 0) return "NVML did not initialise (no driver or no GPU)";
    unsigned int n = 0;
    if (count(&n) != 0 || n == 0) return "NVML sees no GPU";
    for (unsigned int i = 0; i < n; ++i) {
      void* d = nullptr;
      unsigned long long mj = 0;
      if (handle(i, &d) == 0 && energy(d, &mj) == 0) devices.push_back(d), start.push_back(mj);
    }
    return devices.empty() ? "the GPUs do not report energy (NVML)" : "";
  }
  double joules() const {
    double j = 0;
    for (size_t i = 0; i < devices.size(); ++i) {
      unsigned long long mj = 0;
      if (energy(devices[i], &mj) == 0 && mj >= start[i]) j += static_cast<double>(mj - start[i]) * 1e-3;
    }
    return j;
  }
  ~Nvml() {
    if (shutdown != nullptr && !devices.empty()) shutdown();
    if (lib != nullptr) dlclose(lib);
  }
};

EnergyMeter::EnergyMeter(const std::string& powercap_root, bool use_nvml) {
  std::string root = powercap_root;
  if (root.empty()) {
    const char* env = std::getenv("MOE_POWERCAP_ROOT");
    root = env != nullptr && *env != '\0' ? env : "/sys/class/powercap";
  }
  std::vector<std::string> why;
  // Top-level RAPL zones only ("intel-rapl:0", not the sub-zones "intel-rapl:0:0" they contain, whose
  // energy is already in the package's).
  std::error_code ec;
  std::vector<fs::path> dirs;
  if (fs::is_directory(root, ec))
    for (const fs::directory_entry& e : fs::directory_iterator(root, ec))
      if (is_top_zone(e.path().filename().string())) dirs.push_back(e.path());
  std::sort(dirs.begin(), dirs.end());
  bool unreadable = false;
  for (const fs::path& d : dirs) {
    Zone z;
    z.path = (d / "energy_uj").string();
    z.name = read_line((d / "name").string());
    if (z.name.empty()) z.name = d.filename().string();
    if (!read_u64(z.path, z.last)) {
      unreadable = true;
      continue;
    }
    if (!read_u64((d / "max_energy_range_uj").string(), z.range)) z.range = 0;
    zones_.push_back(z);
  }
  if (!zones_.empty()) {
    std::string s;
    for (const Zone& z : zones_) s += (s.empty() ? "" : " ") + z.name;
    sources_.push_back(s + " (powercap)");
  } else {
    why.push_back(dirs.empty() ? "no RAPL zone under " + root
                               : std::string("RAPL counters not readable (") +
                                     (unreadable ? "permission" : "format") + ")");
  }
  if (use_nvml) {
    auto n = std::make_unique<Nvml>();
    const std::string r = n->open();
    if (r.empty()) {
      sources_.push_back(std::to_string(n->devices.size()) + " GPU (NVML)");
      nvml_ = std::move(n);
    } else {
      why.push_back(r);
    }
  }
  for (const std::string& w : why) reason_ += (reason_.empty() ? "" : "; ") + w;
}

EnergyMeter::~EnergyMeter() = default;

std::string EnergyMeter::description() const {
  if (!available()) return "unavailable: " + reason_;
  std::string s;
  for (const std::string& x : sources_) s += (s.empty() ? "" : "; ") + x;
  return s;
}

double EnergyMeter::joules() {
  double j = 0;
  for (Zone& z : zones_) {
    uint64_t v = 0;
    if (read_u64(z.path, v)) {
      // The counter wraps at max_energy_range_uj.
      const uint64_t delta = v >= z.last ? v - z.last : (z.range > z.last ? z.range - z.last + v : v);
      z.total_j += static_cast<double>(delta) * 1e-6;
      z.last = v;
    }
    j += z.total_j;
  }
  if (nvml_) j += nvml_->joules();
  return j;
}

}  // namespace moe
