// kvevict — KV-cache eviction policies for LLM inference.
// SPDX-License-Identifier: Apache-2.0
#pragma once

/// \file
/// \brief `head_rows`: the loop of every scorer that scores each KV head from its own keys or
/// values (KNorm, KeyDiff, LagKV), written once.

#include <cstddef>
#include <span>

#include "../element.hpp"
#include "../kv_cache.hpp"
#include "../scores.hpp"
#include "../workspace.hpp"

namespace kvevict::kernels {

/// Calls `f(h, row)` for every KV head h of `kv`, `row` its n scores to fill, and returns them as
/// one row per KV head (`[kv_heads][n]` from `ws`, valid in the caller's frame). What `f` takes
/// from `ws` is released after each head. O(kv_heads) calls; allocates nothing once `ws` is warm.
template <Element T, class F>
Scores head_rows(const KVCache<T>& kv, Workspace& ws, F&& f) {
  const index_t n = kv.tokens();
  const auto out = ws.take<float>(kv.kv_heads() * n);
  for (index_t h = 0; h < kv.kv_heads(); ++h) {
    Workspace::Frame frame(ws);
    f(h, out.subspan(static_cast<std::size_t>(h * n), static_cast<std::size_t>(n)));
  }
  return Scores::of_kv_heads(out, kv);
}

}  // namespace kvevict::kernels
