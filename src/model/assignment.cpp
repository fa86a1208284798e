// Linear assignment by shortest augmenting paths (src/model/assignment.h).
//
// Rows are added one at a time. Row potentials u and column potentials v keep every reduced cost
// cost[i][j] - u[i] - v[j] >= 0, with equality on matched pairs. Adding row r grows a Dijkstra-like
// tree from r over the reduced costs until it reaches a free column, shifting the potentials of the
// tree by the smallest slack at each step; the matching is then flipped along the path found. Each
// row costs O(n^2), so the whole is O(n^3). Indices are 1-based inside, with column 0 a virtual
// column that holds the row being added.
#include "model/assignment.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "moe/core/error.h"

namespace moe::model {

std::vector<int64_t> solve_assignment(const std::vector<double>& cost, int64_t n) {
  MOE_CHECK(n >= 0 && static_cast<int64_t>(cost.size()) == n * n, "assignment: the cost matrix has ",
            cost.size(), " entries, expected ", n, " x ", n);
  for (size_t i = 0; i < cost.size(); ++i)
    MOE_CHECK(std::isfinite(cost[i]), "assignment: cost entry (",
              static_cast<int64_t>(i) / std::max<int64_t>(n, 1), ", ",
              static_cast<int64_t>(i) % std::max<int64_t>(n, 1), ") = ", cost[i], " is not finite");
  const double inf = std::numeric_limits<double>::infinity();
  const size_t N = static_cast<size_t>(n);
  std::vector<double> u(N + 1, 0.0), v(N + 1, 0.0);  // row and column potentials
  std::vector<size_t> row_of(N + 1, 0);              // row_of[j]: the row matched to column j (0: none)
  std::vector<size_t> prev(N + 1, 0);                // the column before j on the shortest path
  std::vector<double> slack(N + 1);                  // shortest reduced distance to column j
  std::vector<char> done(N + 1);                     // column j is in the tree
  for (size_t r = 1; r <= N; ++r) {
    row_of[0] = r;
    size_t j0 = 0;  // the column whose row is expanded next
    std::fill(slack.begin(), slack.end(), inf);
    std::fill(done.begin(), done.end(), 0);
    do {
      done[j0] = 1;
      const size_t i0 = row_of[j0];
      const double* c = cost.data() + (i0 - 1) * N;
      double delta = inf;
      size_t j1 = 0;
      for (size_t j = 1; j <= N; ++j) {
        if (done[j]) continue;
        const double reduced = c[j - 1] - u[i0] - v[j];
        if (reduced < slack[j]) slack[j] = reduced, prev[j] = j0;
        if (slack[j] < delta) delta = slack[j], j1 = j;
      }
      for (size_t j = 0; j <= N; ++j) {
        if (done[j]) {
          u[row_of[j]] += delta;
          v[j] -= delta;
        } else {
          slack[j] -= delta;
        }
      }
      j0 = j1;
    } while (row_of[j0] != 0);
    // Flip the matching along the path back to the virtual column.
    while (j0 != 0) {
      const size_t j1 = prev[j0];
      row_of[j0] = row_of[j1];
      j0 = j1;
    }
  }
  std::vector<int64_t> col(N, -1);
  for (size_t j = 1; j <= N; ++j) col[row_of[j] - 1] = static_cast<int64_t>(j - 1);
  return col;
}

double assignment_cost(const std::vector<double>& cost, int64_t n, const std::vector<int64_t>& col) {
  MOE_CHECK(static_cast<int64_t>(col.size()) == n && static_cast<int64_t>(cost.size()) == n * n,
            "assignment: ", col.size(), " columns for a ", n, " x ", n, " matrix");
  double s = 0;
  for (int64_t i = 0; i < n; ++i) s += cost[static_cast<size_t>(i * n + col[static_cast<size_t>(i)])];
  return s;
}

}  // namespace moe::model
