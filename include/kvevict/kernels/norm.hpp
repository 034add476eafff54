// kvevict — KV-cache eviction policies for LLM inference.
// SPDX-License-Identifier: Apache-2.0
#pragma once

/// \file
/// \brief `squared_norm`: Σ x² of a row in double, the one sum of squares of the library (KNorm's
/// key norms, KeyDiff's unit keys, ExpectedAttention's and CriticalKV-style value norms,
/// Cascade's logit bounds).

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include <cstddef>
#include <span>

namespace kvevict::kernels {

/// Σ x² of `x`, accumulated in double over partial sums (eight AVX-512 lanes of doubles where
/// the target has them, four otherwise): the result may differ from a sequential sum in the
/// double's last bits, the same for the same build. Finite exactly when every x is. O(n).
inline double squared_norm(std::span<const float> x) noexcept {
  std::size_t i = 0;
#if defined(__AVX512F__)
  __m512d acc = _mm512_setzero_pd();
  for (; i + 8 <= x.size(); i += 8) {
    const __m512d v = _mm512_cvtps_pd(_mm256_loadu_ps(x.data() + i));
    acc = _mm512_fmadd_pd(v, v, acc);
  }
  if (i < x.size()) {
    const auto m = static_cast<__mmask8>((1u << (x.size() - i)) - 1u);
    const __m512d v = _mm512_cvtps_pd(_mm256_maskz_loadu_ps(m, x.data() + i));
    acc = _mm512_fmadd_pd(v, v, acc);
  }
  // not _mm512_reduce_add_pd: GCC 12's header trips -Werror=uninitialized in it
  alignas(64) double lane[8];
  _mm512_store_pd(lane, acc);
  return ((lane[0] + lane[1]) + (lane[2] + lane[3])) + ((lane[4] + lane[5]) + (lane[6] + lane[7]));
#else
  double acc[4] = {0.0, 0.0, 0.0, 0.0};
  for (; i + 4 <= x.size(); i += 4)
    for (std::size_t u = 0; u < 4; ++u) acc[u] += static_cast<double>(x[i + u]) * x[i + u];
  for (; i < x.size(); ++i) acc[0] += static_cast<double>(x[i]) * x[i];
  return (acc[0] + acc[1]) + (acc[2] + acc[3]);
#endif
}

}  // namespace kvevict::kernels
