// kvevict — KV-cache eviction policies for LLM inference.
// SPDX-License-Identifier: Apache-2.0
#pragma once

/// \file
/// \brief The storage element types and the one place where they are converted to and from fp32.
///
/// Two families (the accessor idea of std::mdspan: kernels accumulate in fp32 whatever the
/// storage, and no kernel carries its own format logic):
/// - `FloatElement`: `float`, `Eigen::half`, `Eigen::bfloat16` — one value per element;
/// - `QuantizedElement` (quant.hpp): ggml `q8_0` / `q4_0` blocks (32 values and their scale per
///   element), `fp8_e4m3` / `fp8_e5m2` and `int8` (one value per element, scales apart from the
///   data, given to the view with `KVCache::with_scales`).
///
/// A token's row of `head_dim` values is `head_dim / values_per_element<T>` elements. Rows are
/// converted whole by `dequantize_row` / `quantize_row`; queries are never quantized
/// (`query_type<T>` is fp32 for a quantized cache).

#include <Eigen/Core>
#include <concepts>
#include <cstring>
#include <string_view>

#include "error.hpp"
#include "quant.hpp"

namespace kvevict {

/// A floating-point storage type: what a `QueryWindow`, W_o or an unquantized cache holds.
template <class T>
concept FloatElement =
    std::same_as<T, float> || std::same_as<T, Eigen::half> || std::same_as<T, Eigen::bfloat16>;

/// A quantized cache format (quant.hpp).
template <class T>
concept QuantizedElement = std::same_as<T, q8_0> || std::same_as<T, q4_0> ||
    std::same_as<T, fp8_e4m3> || std::same_as<T, fp8_e5m2> || std::same_as<T, int8>;

/// A storage type a `KVCache` may hold.
template <class T>
concept Element = FloatElement<T> || QuantizedElement<T>;

/// Values one element holds: 32 for the ggml block formats, 1 otherwise.
template <Element T>
inline constexpr index_t values_per_element = [] {
  if constexpr (QuantizedElement<T>)
    return T::values;
  else
    return index_t{1};
}();

/// True for the formats whose scales live apart from the data (fp8, int8).
template <Element T>
inline constexpr bool has_external_scale =
    std::same_as<T, fp8_e4m3> || std::same_as<T, fp8_e5m2> || std::same_as<T, int8>;

/// The element type of the queries scored against a cache of T: T itself, fp32 for a
/// quantized cache (engines keep queries in their compute type).
template <Element T>
using query_type = std::conditional_t<FloatElement<T>, T, float>;

/// The element types of the library, as a value: what a view, W_o or an `.npy` array holds.
enum class DType { float32, float16, bfloat16, q8_0, q4_0, fp8_e4m3, fp8_e5m2, int8 };

/// The `DType` of element type T.
template <Element T>
constexpr DType dtype_of() {
  if constexpr (std::same_as<T, float>) return DType::float32;
  if constexpr (std::same_as<T, Eigen::half>) return DType::float16;
  if constexpr (std::same_as<T, Eigen::bfloat16>) return DType::bfloat16;
  if constexpr (std::same_as<T, q8_0>) return DType::q8_0;
  if constexpr (std::same_as<T, q4_0>) return DType::q4_0;
  if constexpr (std::same_as<T, fp8_e4m3>) return DType::fp8_e4m3;
  if constexpr (std::same_as<T, fp8_e5m2>) return DType::fp8_e5m2;
  if constexpr (std::same_as<T, int8>) return DType::int8;
}

/// The name of a `DType` as the command line and messages spell it.
constexpr std::string_view to_string(DType t) {
  switch (t) {
    case DType::float32:
      return "float32";
    case DType::float16:
      return "float16";
    case DType::bfloat16:
      return "bfloat16";
    case DType::q8_0:
      return "q8_0";
    case DType::q4_0:
      return "q4_0";
    case DType::fp8_e4m3:
      return "fp8_e4m3";
    case DType::fp8_e5m2:
      return "fp8_e5m2";
    case DType::int8:
      return "int8";
  }
  return "?";
}

/// The name of an element type as the command line and messages spell it.
template <Element T>
constexpr std::string_view dtype_name() {
  return to_string(dtype_of<T>());
}

/// Converts `count` elements to fp32. Complexity O(count); no allocation.
template <FloatElement T>
inline void to_float(const T* src, float* dst, index_t count) {
  if constexpr (std::same_as<T, float>) {
    std::memcpy(dst, src, static_cast<std::size_t>(count) * sizeof(float));
  } else {
    for (index_t i = 0; i < count; ++i) dst[i] = static_cast<float>(src[i]);
  }
}

/// One element to fp32.
template <FloatElement T>
inline float to_float(T x) {
  return static_cast<float>(x);
}

/// fp32 to the storage type (round to nearest even for half and bf16).
template <FloatElement T>
inline T from_float(float x) {
  return static_cast<T>(x);
}

/// A row of `values` values (a multiple of `values_per_element<T>`) to fp32: `scale` multiplies
/// fp8 and int8 codes and is ignored by the formats that carry their own. O(values).
template <Element T>
inline void dequantize_row(const T* row, index_t values, float scale, float* out) {
  if constexpr (FloatElement<T>) {
    (void)scale;
    to_float(row, out, values);
  } else if constexpr (has_external_scale<T>) {
    quant::dequantize(row, values, scale, out);
  } else {
    (void)scale;
    quant::dequantize(row, values, out);
  }
}

/// fp32 to a row of T, as the engine that defines T writes it: ggml blocks compute their own
/// scales; fp8 and int8 divide by the given `scale` (saturating). O(values).
template <Element T>
inline void quantize_row(const float* in, index_t values, float scale, T* row) {
  if constexpr (FloatElement<T>) {
    (void)scale;
    for (index_t i = 0; i < values; ++i) row[i] = from_float<T>(in[i]);
  } else if constexpr (has_external_scale<T>) {
    quant::quantize(in, values, scale, row);
  } else {
    (void)scale;
    quant::quantize(in, values, row);
  }
}

}  // namespace kvevict
