// kvevict — KV-cache eviction policies for LLM inference.
// SPDX-License-Identifier: Apache-2.0
#pragma once

/// \file
/// \brief `require_finite`: the whole-cache check of scorers that do not read every key and
/// value through an attention kernel (which finds a NaN or inf for free in its logits).

#include <cmath>

#include "../element.hpp"
#include "../error.hpp"
#include "../kv_cache.hpp"

namespace kvevict::detail {

/// Throws `kvevict::error` naming the first non-finite key (when `keys`) or value (when
/// `values`) of `kv`: "keys: expected finite values, got inf at KV head 1, token 13, element 2".
/// Every token is checked, protected ones included, so a policy's answer never depends on which
/// tokens it happened to read. O(kv_heads · tokens · head_dim); allocates nothing.
template <Element T>
void require_finite(const KVCache<T>& kv, bool keys, bool values) {
  for (int which = 0; which < 2; ++which) {
    if (which == 0 ? !keys : !values) continue;
    for (index_t h = 0; h < kv.kv_heads(); ++h)
      for (index_t t = 0; t < kv.tokens(); ++t) {
        const auto x = which == 0 ? kv.key(h, t) : kv.value(h, t);
        for (std::size_t i = 0; i < x.size(); ++i) {
          const float f = to_float(x[i]);
          if (!std::isfinite(f))
            fail(which == 0 ? "keys" : "values", "finite values", f, " at KV head ", h, ", token ",
                 t, ", element ", i);
        }
      }
  }
}

}  // namespace kvevict::detail
