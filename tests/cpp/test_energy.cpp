// EnergyMeter on a stand-in powercap folder (the layout of /sys/class/powercap): package zones
// summed, sub-zones ignored, counter wrap-around, and "unavailable" with a reason when nothing is
// readable — never an estimate.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "moe/core/energy.h"
#include "temp_path.h"

namespace moe {
namespace {

namespace fs = std::filesystem;

void put(const fs::path& p, const std::string& s) {
  fs::create_directories(p.parent_path());
  std::ofstream(p) << s << "\n";
}

struct FakePowercap {
  fs::path root = moe::testutil::unique_temp_path("powercap");
  FakePowercap() {
    fs::remove_all(root);
    zone("intel-rapl:0", "package-0", 1000000, 5000000);
    zone("intel-rapl:1", "package-1", 2000000, 5000000);
    zone("intel-rapl:0:0", "core", 7000000, 5000000);  // a sub-zone: inside package-0 already
    put(root / "intel-rapl" / "enabled", "1");         // the control type folder, not a zone
  }
  ~FakePowercap() { fs::remove_all(root); }
  void zone(const std::string& dir, const std::string& name, uint64_t uj, uint64_t range) {
    put(root / dir / "name", name);
    put(root / dir / "max_energy_range_uj", std::to_string(range));
    set(dir, uj);
  }
  void set(const std::string& dir, uint64_t uj) { put(root / dir / "energy_uj", std::to_string(uj)); }
};

TEST(Energy, PackagesAreSummedAndWrapAroundIsFollowed) {
  FakePowercap pc;
  EnergyMeter m(pc.root.string(), false);
  ASSERT_TRUE(m.available()) << m.reason();
  EXPECT_EQ(m.description(), "package-0 package-1 (powercap)");
  EXPECT_DOUBLE_EQ(m.joules(), 0.0);
  pc.set("intel-rapl:0", 3000000);    // +2 J
  pc.set("intel-rapl:1", 2500000);    // +0.5 J
  pc.set("intel-rapl:0:0", 9000000);  // ignored
  EXPECT_NEAR(m.joules(), 2.5, 1e-12);
  pc.set("intel-rapl:0", 500000);  // wrapped at 5 J: +2 J +0.5 J
  EXPECT_NEAR(m.joules(), 5.0, 1e-12);
  EXPECT_NEAR(m.joules(), 5.0, 1e-12);  // no change, no energy
  EXPECT_NEAR(joules_per_token(m, 5.0, 10), 0.5, 1e-12);
  EXPECT_LT(joules_per_token(m, 5.0, 0), 0.0);
}

TEST(Energy, NothingReadableIsUnavailableWithAReason) {
  const std::string missing = moe::testutil::unique_temp_path("no_powercap");
  EnergyMeter m(missing, false);
  EXPECT_FALSE(m.available());
  EXPECT_NE(m.description().find("unavailable"), std::string::npos) << m.description();
  EXPECT_NE(m.reason().find("no RAPL zone"), std::string::npos) << m.reason();
  EXPECT_EQ(m.joules(), 0.0);
  EXPECT_LT(joules_per_token(m, 0.0, 100), 0.0);

  FakePowercap pc;  // zones whose counter is not a number (as unreadable as one root only may read)
  put(pc.root / "intel-rapl:0" / "energy_uj", "");
  put(pc.root / "intel-rapl:1" / "energy_uj", "x");
  EnergyMeter bad(pc.root.string(), false);
  EXPECT_FALSE(bad.available());
  EXPECT_NE(bad.reason().find("not readable"), std::string::npos) << bad.reason();
}

TEST(Energy, TheMachineItselfSaysWhatItHas) {
  // Whatever this machine exposes: either a description of the counters or "unavailable: why".
  EnergyMeter m;
  const std::string d = m.description();
  EXPECT_FALSE(d.empty());
  if (!m.available()) {
    EXPECT_EQ(d.rfind("unavailable: ", 0), 0u) << d;
  }
  EXPECT_GE(m.joules(), 0.0);
}

}  // namespace
}  // namespace moe
