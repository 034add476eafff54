// kvevict — KV-cache eviction policies for LLM inference.
// SPDX-License-Identifier: Apache-2.0
#pragma once

/// \file
/// \brief Driving a `StreamingPolicy` from the query instead of engine-computed probabilities.

#include <cmath>
#include <limits>

#include "error.hpp"
#include "kernels/softmax.hpp"
#include "kv_cache.hpp"
#include "policy.hpp"
#include "query_window.hpp"
#include "workspace.hpp"

namespace kvevict {

/// Computes the attention of the new token's query over the policy's live slots —
/// `softmax(q · kᵀ / √d)` in fp32 per query head, free slots masked — and passes it to
/// `policy.observe`. For engines that do not hand their attention probabilities out.
///
/// `kv` views the engine's slots (`tokens == policy.slots()`); `query` holds one query per query
/// head (`window == 1`). Complexity O(q_heads · slots · head_dim), the cost of the attention
/// step itself. Scratch: q_heads · slots floats from `ws` (no allocation once warm). Throws
/// `kvevict::error` for mismatched shapes or a non-finite logit (NaN/inf in the keys or query).
template <class P, Element T>
requires StreamingPolicy<P, T> Evictions observe_query(P& policy, const KVCache<T>& kv,
                                                       const QueryWindow<T>& query, Workspace& ws) {
  const index_t slots = policy.slots();
  if (kv.tokens() != slots)
    detail::fail("kv.tokens", detail::cat("the policy's slots (", slots, ")"), kv.tokens());
  if (query.window() != 1)
    detail::fail("queries.window", "1 (the new token's query)", query.window());
  const index_t g = check_window(kv, query);
  const index_t d = kv.head_dim(), q_heads = query.q_heads();
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));

  Workspace::Frame frame(ws);
  const auto rows = ws.take<float>(q_heads * slots);
  const auto q = ws.take<float>(d);
  const auto k = ws.take<float>(d);
  for (index_t h = 0; h < q_heads; ++h) {
    to_float(query.query(h, 0).data(), q.data(), d);
    const index_t kvh = h / g;
    float* row = rows.data() + h * slots;
    for (index_t s = 0; s < slots; ++s) {
      if (policy.position(kvh, s) < 0) {
        row[s] = -std::numeric_limits<float>::infinity();
        continue;
      }
      to_float(kv.key(kvh, s).data(), k.data(), d);
      float dot = 0.0f;
      for (index_t i = 0; i < d; ++i)
        dot += q[static_cast<std::size_t>(i)] * k[static_cast<std::size_t>(i)];
      row[s] = dot * scale;
    }
    if (!softmax_inplace({row, static_cast<std::size_t>(slots)}))
      detail::fail("queries", "finite attention logits (finite keys and query)",
                   "a NaN or inf for query head ", h);
  }
  return policy.observe({rows.data(), q_heads, slots, slots});
}

}  // namespace kvevict
