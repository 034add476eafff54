// kvevict — KV-cache eviction policies for LLM inference.
// SPDX-License-Identifier: Apache-2.0
#pragma once

/// \file
/// \brief KNorm: keep the keys with the smallest L2 norm — no attention needed.

#include <cmath>
#include <cstdint>
#include <span>
#include <string_view>
#include <vector>

#include "../budget.hpp"
#include "../choose.hpp"
#include "../element.hpp"
#include "../error.hpp"
#include "../kernels/finite.hpp"
#include "../kernels/head_rows.hpp"
#include "../kernels/norm.hpp"
#include "../kv_cache.hpp"
#include "../metadata.hpp"
#include "../one_shot.hpp"
#include "../query_window.hpp"
#include "../scores.hpp"
#include "../workspace.hpp"

namespace kvevict {

/// Parameters of `KNorm` (kvpress's press has none but the ratio).
struct KNormParams {
  Granularity granularity = Granularity::per_head;
};

/// KNorm (Devoto et al., "A Simple and Effective L2 Norm-Based Strategy for KV Cache
/// Compression", arXiv 2406.11430, §3; upstream NVIDIA/kvpress `kvpress/presses/knorm_press.py`
/// at commit 8bb29b9): score = −‖k‖₂ over head_dim of each cached (post-RoPE) key, per KV head;
/// keep the top B — the keys with the smallest norm, which the paper finds draw the most
/// attention. Reads the keys only: no queries, no attention matrix, so an engine with a fused
/// attention kernel can run it as is.
///
/// Deviations: kvpress keeps `int(n · (1 − ratio))` per head with `torch.topk`'s unspecified
/// order on ties and gathers the kept keys in score order; here the budget is tokens (or
/// `Budget::ratio`, rounded), ties keep the more recent token, and kept tokens stay in position
/// order (`compact`). The norm is accumulated in double.
///
/// - Complexity O(kv_heads · n · d); scratch kv_heads · n floats from `ws`.
class KNorm : public OneShot<KNorm, KNormParams> {
 public:
  static constexpr std::string_view name = "knorm";
  static constexpr PolicyInfo info{
      .summary = "smallest key L2 norms, no attention needed (Devoto et al. 2024)",
      .reads = reads_keys};

  using OneShot::OneShot;

  TopK rule(index_t) const noexcept { return {}; }

  /// −‖k‖₂ per KV head and token (`[kv_heads][n]` from `ws`); the queries are not read.
  template <Element T>
  Scores score(const KVCache<T>& kv, const QueryWindow<query_type<T>>&, Granularity,
               Workspace& ws) const {
    detail::require_finite_scales(kv);
    const index_t d = kv.head_dim();
    return kernels::head_rows(kv, ws, [&](index_t h, std::span<float> row) {
      const auto k = ws.take<float>(d);
      for (index_t t = 0; t < kv.tokens(); ++t) {
        kv.read(Tensor::keys, h, t, k.data());
        const double sum = kernels::squared_norm(k);
        if (!std::isfinite(sum))
          detail::fail("keys", "finite values", "a non-finite key at KV head ", h, ", token ", t);
        row[static_cast<std::size_t>(t)] = -static_cast<float>(std::sqrt(sum));
      }
    });
  }
};

}  // namespace kvevict
