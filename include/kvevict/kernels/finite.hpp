// kvevict — KV-cache eviction policies for LLM inference.
// SPDX-License-Identifier: Apache-2.0
#pragma once

/// \file
/// \brief `require_finite`: the whole-cache check of scorers that do not read every key and
/// value through an attention kernel (which finds a NaN or inf for free in its logits).

#include <cmath>
#include <vector>

#include "../element.hpp"
#include "../error.hpp"
#include "../kv_cache.hpp"

namespace kvevict::detail {

/// Throws `kvevict::error` naming the first non-finite scale of an fp8 or int8 cache:
/// "key_scales: expected finite scales, got nan at KV head 0, token 3". A no-op for the other
/// formats. O(kv_heads · tokens); allocates nothing.
template <Element T>
void require_finite_scales(const KVCache<T>& kv) {
  if constexpr (has_external_scale<T>) {
    for (const Tensor which : {Tensor::keys, Tensor::values}) {
      if (kv.scales(which).data == nullptr) continue;
      for (index_t h = 0; h < kv.kv_heads(); ++h)
        for (index_t t = 0; t < kv.tokens(); ++t) {
          const float s = kv.scale(which, h, t);
          if (!std::isfinite(s))
            fail(which == Tensor::keys ? "key_scales" : "value_scales", "finite scales", s,
                 " at KV head ", h, ", token ", t);
        }
    }
  } else {
    (void)kv;
  }
}

/// Throws `kvevict::error` naming the first non-finite key (when `keys`) or value (when
/// `values`) of `kv`: "keys: expected finite values, got inf at KV head 1, token 13, element 2"
/// (for a quantized cache, its scales first, then the dequantized values). Every token is
/// checked, protected ones included, so a policy's answer never depends on which tokens it
/// happened to read. O(kv_heads · tokens · head_dim); allocates nothing for float types, one
/// row for quantized ones.
template <Element T>
void require_finite(const KVCache<T>& kv, bool keys, bool values) {
  require_finite_scales(kv);
  for (int which = 0; which < 2; ++which) {
    if (which == 0 ? !keys : !values) continue;
    const Tensor tensor = which == 0 ? Tensor::keys : Tensor::values;
    [[maybe_unused]] std::vector<float> row;
    if constexpr (QuantizedElement<T>) row.resize(static_cast<std::size_t>(kv.dim(tensor)));
    for (index_t h = 0; h < kv.kv_heads(); ++h)
      for (index_t t = 0; t < kv.tokens(); ++t) {
        const auto check = [&](std::size_t i, float f) {
          if (!std::isfinite(f))
            fail(which == 0 ? "keys" : "values", "finite values", f, " at KV head ", h, ", token ",
                 t, ", element ", i);
        };
        if constexpr (QuantizedElement<T>) {
          kv.read(tensor, h, t, row.data());
          for (std::size_t i = 0; i < row.size(); ++i) check(i, row[i]);
        } else {
          const auto x = kv.span(tensor, h, t);
          for (std::size_t i = 0; i < x.size(); ++i) check(i, to_float(x[i]));
        }
      }
  }
}

}  // namespace kvevict::detail
