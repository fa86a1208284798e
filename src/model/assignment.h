// Linear assignment: the permutation of an n x n cost matrix's columns with the least total cost,
// by shortest augmenting paths with row and column potentials (the Hungarian method in the
// Jonker-Volgenant form), O(n^3) time and O(n) memory beyond the matrix. Expert merging uses it to
// match one expert's hidden units to another's (moe/model/merge.h).
#pragma once

#include <cstdint>
#include <vector>

namespace moe::model {

// col (n): the column given to each row, a permutation of 0..n-1 minimising Σ_i cost[i·n + col[i]].
// cost: (n, n) row-major, every entry finite (moe::Error otherwise, and when cost.size() != n·n).
// n = 0 gives an empty result. Ties are broken deterministically (same input, same permutation).
std::vector<int64_t> solve_assignment(const std::vector<double>& cost, int64_t n);

// Σ_i cost[i·n + col[i]].
double assignment_cost(const std::vector<double>& cost, int64_t n, const std::vector<int64_t>& col);

}  // namespace moe::model
