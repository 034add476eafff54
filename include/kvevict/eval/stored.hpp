// kvevict — KV-cache eviction policies for LLM inference.
// SPDX-License-Identifier: Apache-2.0
#pragma once

/// \file
/// \brief `--kv-format`: fp32 keys and values quantized the way an engine stores them, so the
/// command and the evaluation show what a quantized cache does to each policy's selection.
///
/// Scales, per format (decided here; an engine may choose finer ones, which only helps):
/// - `q8_0`, `q4_0`: ggml's blocks of 32 carry their own (llama.cpp `--cache-type-k q8_0`);
/// - `fp8_e4m3`, `fp8_e5m2`: one fp32 scale per tensor (per layer: vLLM's k_scale / v_scale),
///   amax / largest finite code, the calibration vLLM computes when `calculate_kv_scales` is on;
/// - `int8`: one fp32 scale per (head, token), amax / 127 (TensorRT-LLM's symmetric codes at
///   LMDeploy's per-token granularity).

#include <algorithm>
#include <cmath>
#include <string>
#include <string_view>
#include <vector>

#include "../element.hpp"
#include "../error.hpp"
#include "../kv_cache.hpp"

namespace kvevict::eval {

/// A cache format the command can quantize to; `none` keeps the input's own type.
enum class KVFormat { none, q8_0, q4_0, fp8_e4m3, fp8_e5m2, int8 };

inline constexpr std::string_view kv_format_names = "q8_0, q4_0, fp8_e4m3, fp8_e5m2, int8";

constexpr std::string_view to_string(KVFormat f) {
  switch (f) {
    case KVFormat::none:
      return "none";
    case KVFormat::q8_0:
      return "q8_0";
    case KVFormat::q4_0:
      return "q4_0";
    case KVFormat::fp8_e4m3:
      return "fp8_e4m3";
    case KVFormat::fp8_e5m2:
      return "fp8_e5m2";
    case KVFormat::int8:
      return "int8";
  }
  return "?";
}

/// Parses `--kv-format`; throws `kvevict::error` naming `argument` for anything else.
inline KVFormat parse_kv_format(std::string_view text, std::string_view argument = "--kv-format") {
  for (const KVFormat f : {KVFormat::none, KVFormat::q8_0, KVFormat::q4_0, KVFormat::fp8_e4m3,
                           KVFormat::fp8_e5m2, KVFormat::int8})
    if (text == to_string(f)) return f;
  kvevict::detail::fail(argument, kvevict::detail::cat("one of ", kv_format_names), text);
}

/// Keys and values `[kv_heads][n][d]` (fp32) stored in format T, with their scales and the
/// dequantized values the cache then holds.
template <QuantizedElement T>
struct Stored {
  index_t kv_heads = 0, n = 0, d = 0, d_v = 0;
  std::vector<T> keys, values;
  std::vector<float> key_scales, value_scales;  ///< per tensor (1) or per (head, token)
  std::vector<float> keys_read, values_read;    ///< what the cache holds, in fp32

  Stored(const float* k, const float* v, index_t heads, index_t tokens, index_t dim, index_t dim_v)
      : kv_heads(heads), n(tokens), d(dim), d_v(dim_v) {
    constexpr index_t vpe = values_per_element<T>;
    if (d % vpe != 0 || d_v % vpe != 0)
      kvevict::detail::fail("--kv-format",
                            kvevict::detail::cat("a format whose block (", vpe,
                                                 " values) divides head_dim (", d, ", ", d_v, ")"),
                            dtype_name<T>());
    keys.resize(static_cast<std::size_t>(heads * tokens * d / vpe));
    values.resize(static_cast<std::size_t>(heads * tokens * d_v / vpe));
    const bool per_token = std::same_as<T, int8>;
    const std::size_t scales = per_token ? static_cast<std::size_t>(heads * tokens) : 1;
    key_scales.assign(scales, 1.0f);
    value_scales.assign(scales, 1.0f);
    if constexpr (std::same_as<T, fp8_e4m3> || std::same_as<T, fp8_e5m2>) {
      const float top = std::same_as<T, fp8_e4m3> ? 448.0f : 57344.0f;
      const auto amax = [](const float* x, index_t count) {
        float m = 0.0f;
        for (index_t i = 0; i < count; ++i) m = std::max(m, std::fabs(x[i]));
        return m;
      };
      const float ak = amax(k, heads * tokens * d), av = amax(v, heads * tokens * d_v);
      key_scales[0] = ak > 0.0f ? ak / top : 1.0f;
      value_scales[0] = av > 0.0f ? av / top : 1.0f;
    }
    keys_read.resize(static_cast<std::size_t>(heads * tokens * d));
    values_read.resize(static_cast<std::size_t>(heads * tokens * d_v));
    const KVCache<T> kv = view();
    for (index_t h = 0; h < heads; ++h)
      for (index_t t = 0; t < tokens; ++t) {
        kv.write(Tensor::keys, h, t, k + (h * tokens + t) * d);  // int8: its own scale
        kv.write(Tensor::values, h, t, v + (h * tokens + t) * d_v);
        kv.read(Tensor::keys, h, t, keys_read.data() + (h * tokens + t) * d);
        kv.read(Tensor::values, h, t, values_read.data() + (h * tokens + t) * d_v);
      }
  }

  /// The HND view of the stored cache (with its scales for fp8 and int8).
  KVCache<T> view() const {
    auto* kp = const_cast<T*>(keys.data());
    auto* vp = const_cast<T*>(values.data());
    const KVCache<T> kv(Storage<T>::hnd(kp, n, d), Storage<T>::hnd(vp, n, d_v),
                        {kv_heads, n, d, d_v});
    if constexpr (has_external_scale<T>) {
      auto* ks = const_cast<float*>(key_scales.data());
      auto* vs = const_cast<float*>(value_scales.data());
      if (key_scales.size() == 1)
        return kv.with_scales(ScaleStorage::per_tensor(ks), ScaleStorage::per_tensor(vs));
      return kv.with_scales(ScaleStorage::hnd(ks, n), ScaleStorage::hnd(vs, n));
    } else {
      return kv;
    }
  }

  Stored(const Stored&) = delete;
  Stored& operator=(const Stored&) = delete;
};

/// Calls `f(const Stored<T>&)` with fp32 `k`, `v` stored in `format` (not `none`).
template <class F>
decltype(auto) with_format(KVFormat format, const float* k, const float* v, index_t kv_heads,
                           index_t n, index_t d, index_t d_v, F&& f) {
  const auto run = [&]<class T>() -> decltype(auto) {
    const Stored<T> stored(k, v, kv_heads, n, d, d_v);
    return f(stored);
  };
  switch (format) {
    case KVFormat::q8_0:
      return run.template operator()<q8_0>();
    case KVFormat::q4_0:
      return run.template operator()<q4_0>();
    case KVFormat::fp8_e4m3:
      return run.template operator()<fp8_e4m3>();
    case KVFormat::fp8_e5m2:
      return run.template operator()<fp8_e5m2>();
    case KVFormat::int8:
    case KVFormat::none:
      break;
  }
  if (format == KVFormat::none) kvevict::detail::fail("format", "a quantized format", "none");
  return run.template operator()<int8>();
}

}  // namespace kvevict::eval
