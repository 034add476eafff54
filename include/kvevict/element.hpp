// kvevict — KV-cache eviction policies for LLM inference.
// SPDX-License-Identifier: Apache-2.0
#pragma once

/// \file
/// \brief The storage element types (`float`, `Eigen::half`, `Eigen::bfloat16`) and the one place
/// where they are converted to and from fp32.
///
/// Every kernel accumulates in fp32 whatever the storage type; conversion happens here, a row at
/// a time, so that no kernel carries its own half/bf16 logic (the accessor idea of std::mdspan).

#include <Eigen/Core>
#include <concepts>
#include <cstring>
#include <string_view>

#include "error.hpp"

namespace kvevict {

/// A storage type a `KVCache` or `QueryWindow` may hold.
template <class T>
concept Element =
    std::same_as<T, float> || std::same_as<T, Eigen::half> || std::same_as<T, Eigen::bfloat16>;

/// The element types of the library, as a value: what a view, W_o or an `.npy` array holds.
enum class DType { float32, float16, bfloat16 };

/// The `DType` of element type T.
template <Element T>
constexpr DType dtype_of() {
  if constexpr (std::same_as<T, float>) return DType::float32;
  if constexpr (std::same_as<T, Eigen::half>) return DType::float16;
  if constexpr (std::same_as<T, Eigen::bfloat16>) return DType::bfloat16;
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
  }
  return "?";
}

/// The name of an element type as the command line and messages spell it.
template <Element T>
constexpr std::string_view dtype_name() {
  return to_string(dtype_of<T>());
}

/// Converts `count` elements to fp32. Complexity O(count); no allocation.
template <Element T>
inline void to_float(const T* src, float* dst, index_t count) {
  if constexpr (std::same_as<T, float>) {
    std::memcpy(dst, src, static_cast<std::size_t>(count) * sizeof(float));
  } else {
    for (index_t i = 0; i < count; ++i) dst[i] = static_cast<float>(src[i]);
  }
}

/// One element to fp32.
template <Element T>
inline float to_float(T x) {
  return static_cast<float>(x);
}

/// fp32 to the storage type (round to nearest even for half and bf16).
template <Element T>
inline T from_float(float x) {
  return static_cast<T>(x);
}

}  // namespace kvevict
