// Energy counters of the machine, where it exposes them: the CPU packages through Linux powercap
// (RAPL zones "intel-rapl:N", also used for AMD packages) and NVIDIA GPUs through NVML (loaded at
// run time; no build dependency). A figure is reported only when read from such a counter: where
// none is readable, available() is false and reason() says why — there is no estimate.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace moe {

class EnergyMeter {
 public:
  // Opens every readable counter. powercap_root: the powercap folder (default: $MOE_POWERCAP_ROOT
  // when set, else /sys/class/powercap); use_nvml false skips NVML (tests).
  explicit EnergyMeter(const std::string& powercap_root = "", bool use_nvml = true);
  ~EnergyMeter();
  EnergyMeter(const EnergyMeter&) = delete;
  EnergyMeter& operator=(const EnergyMeter&) = delete;

  bool available() const { return !sources_.empty(); }
  // What is counted ("package-0 package-1 (powercap); 1 GPU (NVML)"), or why nothing is.
  std::string description() const;
  const std::string& reason() const { return reason_; }

  // Joules used by the counted parts since construction. Counter wrap-around is handled as long as
  // this is called at least once per wrap period (minutes for a package counter; each call reads
  // every counter). 0 when not available.
  double joules();

 private:
  struct Zone {
    std::string name, path;  // path of energy_uj
    uint64_t last = 0, range = 0;
    double total_j = 0;
  };
  struct Nvml;
  std::vector<Zone> zones_;
  std::unique_ptr<Nvml> nvml_;
  std::vector<std::string> sources_;
  std::string reason_;
};

// Joules per token between two readings, or a negative value when the meter is not available or no
// token was counted.
inline double joules_per_token(const EnergyMeter& m, double joules, int64_t tokens) {
  return m.available() && tokens > 0 ? joules / static_cast<double>(tokens) : -1.0;
}

}  // namespace moe
