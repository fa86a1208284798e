// Helpers shared by the subcommands (see common.h).
#include "cli/common.h"

#include <sys/resource.h>

namespace moe::cli {

double peak_rss_mb() {
  struct rusage ru {};
  if (getrusage(RUSAGE_SELF, &ru) != 0) return 0.0;
  return static_cast<double>(ru.ru_maxrss) / 1024.0;  // Linux reports KiB
}

}  // namespace moe::cli
