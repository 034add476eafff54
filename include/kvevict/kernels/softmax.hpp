// kvevict — KV-cache eviction policies for LLM inference.
// SPDX-License-Identifier: Apache-2.0
#pragma once

/// \file
/// \brief The one softmax of the library: max-subtracted, fp32, rows of −inf handled.

#include <cmath>
#include <limits>
#include <span>

namespace kvevict {

/// Replaces `x` by softmax(x) in place. Max-subtracted, so large logits do not overflow; −inf
/// entries (masked keys) get probability 0; a row that is entirely −inf becomes all zeros (a
/// query that may see nothing attends to nothing) instead of NaN. Returns false when the row
/// holds a NaN or +inf (the caller reports which input was not finite). O(n); no allocation.
inline bool softmax_inplace(std::span<float> x) noexcept {
  const float ninf = -std::numeric_limits<float>::infinity();
  float max = ninf;
  bool finite = true;
  for (float v : x) {
    finite &= !(std::isnan(v) || v == std::numeric_limits<float>::infinity());
    max = v > max ? v : max;
  }
  if (!finite) return false;
  if (max == ninf) {
    for (float& v : x) v = 0.0f;
    return true;
  }
  double sum = 0.0;  // double: rows of 10^5 terms keep fp32-level relative accuracy
  for (float& v : x) {
    v = std::exp(v - max);
    sum += v;
  }
  const auto inv = static_cast<float>(1.0 / sum);
  for (float& v : x) v *= inv;
  return true;
}

}  // namespace kvevict
