// kvevict — KV-cache eviction policies for LLM inference.
// SPDX-License-Identifier: Apache-2.0
#pragma once

/// \file
/// \brief The one softmax of the library (max-subtracted, fp32, rows of −inf handled) and the one
/// fp32 dot product of the decode path.

#include <Eigen/Core>
#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <span>

#include "../error.hpp"

namespace kvevict {

namespace detail {

/// exp(x) for x ≤ 0 in fp32, to ~2e-7 relative: Cody–Waite reduction x = k·ln2 + r with
/// |r| ≤ ln2/2, a degree-6 Taylor polynomial for exp(r), and 2^k built from exponent bits.
/// x ≤ −87 (and −inf, masked keys) gives exactly 0. The clamp and the zeroing are integer
/// operations on the bits (for x ≤ 0 a larger bit pattern is a more negative number): float
/// selects would not vectorise under the default -ftrapping-math, these do with any SIMD the
/// engine compiles for (at -O3). Several times faster than a libm call or Eigen's `exp` here.
/// A NaN input gives an unspecified value (the caller has already rejected non-finite logits).
///
/// Decided and kept (issue 14): torch's fp32 `exp` returns denormals for −103.9 < x ≤ −87.3
/// where this returns 0. A probability that small (< 1.2e-38 of the row's largest) differs from
/// 0 by less than any score a policy can act on, so where one key dominates by more than 87
/// logits the others tie at 0 and the tie rule (the more recent wins) orders them, while torch
/// would order them by denormals no fp32 sum can see. Supporting denormals would cost the
/// branch-free vector form (most SIMD units flush or trap on them); no selection compared with
/// kvpress on real or generated attention has differed because of it.
inline float exp_nonpositive(float x) noexcept {
  constexpr std::uint32_t lowest = 0xC2AE0000u;  // the bits of −87.0f
  const auto u = std::bit_cast<std::uint32_t>(x);
  const float xc = std::bit_cast<float>(u < lowest ? u : lowest);
  const float shifted = xc * 1.44269504088896341f + 12582912.0f;  // 1.5·2^23: round to integer
  const float k = shifted - 12582912.0f;
  const float r = (xc - k * 0.693145751953125f) - k * 1.428606765330187e-06f;  // ln2 hi + lo
  float p = 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const std::int32_t ki = std::bit_cast<std::int32_t>(shifted) - 0x4b400000;  // k in [−126, 0]
  const float v = p * std::bit_cast<float>((ki + 127) << 23);
  const std::uint32_t keep = 0u - static_cast<std::uint32_t>(u < lowest);
  return std::bit_cast<float>(std::bit_cast<std::uint32_t>(v) & keep);
}

}  // namespace detail

namespace kernels {
/// q · k over `n` fp32 elements (Eigen's vectorised dot: one fixed summation order per build,
/// so two callers computing the same logit get the same bits).
inline float dot(const float* q, const float* k, index_t n) noexcept {
  return Eigen::Map<const Eigen::VectorXf>(q, n).dot(Eigen::Map<const Eigen::VectorXf>(k, n));
}

/// Replaces `x` by softmax(x) in place. Max-subtracted, so large logits do not overflow; −inf
/// entries (masked keys) get probability 0; a row that is entirely −inf becomes all zeros (a
/// query that may see nothing attends to nothing) instead of NaN. Returns false when the row
/// holds a NaN or +inf (the caller reports which input was not finite). O(n), every pass
/// vectorised (Eigen reductions, `exp_nonpositive`); the normaliser is summed in double; no
/// allocation.
inline bool softmax_inplace(std::span<float> x) noexcept {
  if (x.empty()) return true;
  Eigen::Map<Eigen::ArrayXf> a(x.data(), static_cast<Eigen::Index>(x.size()));
  const float max = a.maxCoeff();
  if (!(max < std::numeric_limits<float>::infinity()) || a.isNaN().any()) return false;
  if (max == -std::numeric_limits<float>::infinity()) {
    a.setZero();
    return true;
  }
  for (float& v : x) v = detail::exp_nonpositive(v - max);
  const double sum = a.cast<double>().sum();  // rows of 10^5 terms keep fp32-level accuracy
  a *= static_cast<float>(1.0 / sum);
  return true;
}

}  // namespace kernels
}  // namespace kvevict
