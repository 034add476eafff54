// kvevict — KV-cache eviction policies for LLM inference.
// SPDX-License-Identifier: Apache-2.0
#pragma once

/// \file
/// \brief Quantized KV-cache formats — ggml `q8_0` / `q4_0` blocks, fp8 `e4m3fn` / `e5m2`, int8 —
/// with the bit layouts of the engines that define them, and the row codecs every kernel,
/// `rope_shift` and the command use: dequantize a row to fp32, quantize a row from fp32.
///
/// | format     | element        | values per element | scale                                  |
/// |------------|----------------|--------------------|----------------------------------------|
/// | `q8_0`     | `q8_0`, 34 B   | 32                 | fp16 inside each block                 |
/// | `q4_0`     | `q4_0`, 18 B   | 32                 | fp16 inside each block                 |
/// | `fp8_e4m3` | `fp8_e4m3`, 1 B | 1                 | fp32, given: per tensor (or per head)  |
/// | `fp8_e5m2` | `fp8_e5m2`, 1 B | 1                 | fp32, given: per tensor (or per head)  |
/// | `int8`     | `int8`, 1 B    | 1                  | per tensor, head or (head, token), apart |
///
/// Sources (read for facts; the code is ours):
/// - ggml, llama.cpp 80fb11ac (2026-09-12): `ggml/src/ggml-common.h` (`block_q8_0`,
///   `block_q4_0`) and `ggml/src/ggml-quants.c` (`quantize_row_q{8,4}_0_ref`,
///   `dequantize_row_q{8,4}_0`), reproduced bit for bit. ggml's CPU backend writes the cache with
///   its own (SIMD) `quantize_row_q8_0`, which may round exact halves to even where the reference's
///   `roundf` rounds them away from zero. This llama.cpp also multiplies K (and V) by a Hadamard
///   matrix before a quantized cache when head_dim % 64 == 0 (`attn_rot_k`,
///   `LLAMA_ATTN_ROT_DISABLE`): the stored keys are then H·k, and scores need H·q.
/// - fp8: vLLM's cache write (`csrc/cache_kernels.cu` → `fp8::scaled_convert`,
///   `csrc/quantization/fp8/nvidia/quant_utils.cuh` @2fed15b): stored = fp8(x / scale) with
///   `__nv_cvt_float_to_fp8(…, __NV_SATFINITE, …)` — round to nearest even, ±inf and overflow
///   saturate to ±max (448, 57344), NaN stays NaN; read back as fp8 · scale. One fp32 k_scale and
///   v_scale per layer (`vllm/model_executor/layers/quantization/kv_cache.py` @190900b; 1.0 when
///   the checkpoint has none). Bit layouts as PyTorch's `c10/util/Float8_e4m3fn.h` and
///   `Float8_e5m2.h`; note PyTorch's own fp32 → fp8 casts do *not* saturate (e4m3fn overflow is
///   NaN, e5m2 overflow inf) — the cache follows vLLM.
/// - int8: symmetric, q = cvt.rni.sat.s8(x · (1 / scale)) as TensorRT-LLM's attention kernels
///   (`decoderMaskedMultiheadAttentionUtils.h` @5955b8a; TensorRT-LLM keeps one fp32
///   `kv_cache_scaling_factor` per layer); the scale's granularity is the view's choice, down to
///   one per (head, token) computed as amax / 127, the granularity of LMDeploy's int8 cache.
///   Deviation: LMDeploy (`quant_policy=8`) is *asymmetric* (uint8 with a scale and a zero point
///   per (token, head), fp16/bf16, stored after the block's data); that variant is not provided.
///
/// Codecs are defined for every input: where ggml's C casts would be undefined (NaN, values out
/// of int8 range from a non-finite scale) they give 0 or saturate; finite inputs match exactly.
/// Nothing here allocates; every codec is O(values).

#include <Eigen/Core>
#include <algorithm>
#include <array>
#include <cmath>
#include <concepts>
#include <cstdint>
#include <cstring>
#include <limits>

#include "error.hpp"

namespace kvevict {

/// ggml `block_q8_0`: 32 values as an fp16 scale `d` and 32 int8 `qs`; value j is `qs[j] · d`.
struct q8_0 {
  static constexpr index_t values = 32;  ///< values per block (ggml `QK8_0`)
  std::uint16_t d;                       ///< the scale, IEEE fp16 bits (ggml_half)
  std::int8_t qs[32];                    ///< the quants
};
static_assert(sizeof(q8_0) == 34 && alignof(q8_0) == 2, "ggml block_q8_0 is 34 bytes");

/// ggml `block_q4_0`: 32 values as an fp16 scale `d` and 16 bytes of nibbles; value j < 16 is
/// `((qs[j] & 15) − 8) · d`, value 16 + j is `((qs[j] >> 4) − 8) · d`.
struct q4_0 {
  static constexpr index_t values = 32;  ///< values per block (ggml `QK4_0`)
  std::uint16_t d;                       ///< the scale, IEEE fp16 bits (ggml_half)
  std::uint8_t qs[16];                   ///< low nibble: value j, high nibble: value j + 16
};
static_assert(sizeof(q4_0) == 18 && alignof(q4_0) == 2, "ggml block_q4_0 is 18 bytes");

/// OCP FP8 E4M3 as PyTorch's `float8_e4m3fn`: sign, 4 exponent bits (bias 7), 3 mantissa bits,
/// no infinities, NaN = S.1111.111, largest finite 448.
struct fp8_e4m3 {
  static constexpr index_t values = 1;
  std::uint8_t bits;
};

/// OCP FP8 E5M2 as PyTorch's `float8_e5m2`: sign, 5 exponent bits (bias 15), 2 mantissa bits,
/// IEEE-like (±inf = S.11111.00, NaN above), largest finite 57344.
struct fp8_e5m2 {
  static constexpr index_t values = 1;
  std::uint8_t bits;
};

/// Symmetric int8; its scale lives apart from the data (see the view): value = q · scale.
struct int8 {
  static constexpr index_t values = 1;
  std::int8_t q;
};

namespace quant {

inline float half_to_float(std::uint16_t bits) {
  return static_cast<float>(Eigen::numext::bit_cast<Eigen::half>(bits));
}
/// fp32 → fp16 bits, round to nearest even (ggml's `GGML_FP32_TO_FP16` on every target).
inline std::uint16_t float_to_half(float x) {
  return Eigen::numext::bit_cast<std::uint16_t>(Eigen::half(x));
}

namespace detail {
/// (int8) x for x in range, as ggml casts; NaN → 0 and out-of-range values saturate, where C's
/// cast is undefined (ggml never sees them from finite inputs; a corrupt block could).
inline std::int8_t to_i8(float x) {
  if (!(x == x)) return 0;
  return static_cast<std::int8_t>(std::clamp(x, -128.0f, 127.0f));
}
}  // namespace detail

// -- ggml q8_0 -------------------------------------------------------------------------------

/// ggml `dequantize_row_q8_0`: `n` values (a multiple of 32) from `n / 32` blocks.
inline void dequantize(const q8_0* x, index_t n, float* y) {
  for (index_t b = 0; b < n / q8_0::values; ++b) {
    const float d = half_to_float(x[b].d);
    for (int j = 0; j < 32; ++j) y[b * 32 + j] = static_cast<float>(x[b].qs[j]) * d;
  }
}

/// ggml `quantize_row_q8_0_ref`: per block d = amax / 127 (stored as fp16), q = roundf(x / d)
/// computed as x · (1 / d) with the fp32 d, as ggml does.
inline void quantize(const float* x, index_t n, q8_0* y) {
  for (index_t b = 0; b < n / q8_0::values; ++b) {
    const float* v = x + b * 32;
    float amax = 0.0f;
    for (int j = 0; j < 32; ++j) amax = std::max(amax, std::fabs(v[j]));
    const float d = amax / 127.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    y[b].d = float_to_half(d);
    for (int j = 0; j < 32; ++j) y[b].qs[j] = detail::to_i8(std::roundf(v[j] * id));
  }
}

// -- ggml q4_0 -------------------------------------------------------------------------------

/// ggml `dequantize_row_q4_0`.
inline void dequantize(const q4_0* x, index_t n, float* y) {
  for (index_t b = 0; b < n / q4_0::values; ++b) {
    const float d = half_to_float(x[b].d);
    for (int j = 0; j < 16; ++j) {
      y[b * 32 + j] = static_cast<float>((x[b].qs[j] & 0x0F) - 8) * d;
      y[b * 32 + j + 16] = static_cast<float>((x[b].qs[j] >> 4) - 8) * d;
    }
  }
}

/// ggml `quantize_row_q4_0_ref`: per block, `max` = the value of largest magnitude (the first
/// one on ties), d = max / −8, q = min(15, (int8)(x / d + 8.5)) — truncation, as ggml casts.
inline void quantize(const float* x, index_t n, q4_0* y) {
  for (index_t b = 0; b < n / q4_0::values; ++b) {
    const float* v = x + b * 32;
    float amax = 0.0f, max = 0.0f;
    for (int j = 0; j < 32; ++j)
      if (amax < std::fabs(v[j])) {
        amax = std::fabs(v[j]);
        max = v[j];
      }
    const float d = max / -8.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    y[b].d = float_to_half(d);
    for (int j = 0; j < 16; ++j) {
      const auto lo =
          static_cast<std::uint8_t>(std::min<int>(15, static_cast<std::int8_t>(v[j] * id + 8.5f)));
      const auto hi = static_cast<std::uint8_t>(
          std::min<int>(15, static_cast<std::int8_t>(v[j + 16] * id + 8.5f)));
      y[b].qs[j] = static_cast<std::uint8_t>(lo | (hi << 4));
    }
  }
}

// -- fp8 -------------------------------------------------------------------------------------

namespace detail {

/// The value of an fp8 code with `E` exponent and `M` mantissa bits.
template <int E, int M, bool Inf>
constexpr float fp8_value(std::uint8_t bits) {
  const int bias = (1 << (E - 1)) - 1;
  const int e = (bits >> M) & ((1 << E) - 1);
  const int m = bits & ((1 << M) - 1);
  const float sign = (bits & 0x80) ? -1.0f : 1.0f;
  const int emax = (1 << E) - 1;
  if (Inf && e == emax)  // e5m2: IEEE specials
    return m == 0 ? sign * std::numeric_limits<float>::infinity()
                  : std::numeric_limits<float>::quiet_NaN();
  if (!Inf && e == emax && m == (1 << M) - 1) return std::numeric_limits<float>::quiet_NaN();
  // Powers of two by repeated doubling keep this constexpr (std::ldexp is not, in C++20).
  float scale = 1.0f;
  const int exp = (e == 0 ? 1 : e) - bias - M;  // value = (e ? 2^M + m : m) · 2^exp
  for (int i = 0; i < exp; ++i) scale *= 2.0f;
  for (int i = 0; i > exp; --i) scale *= 0.5f;
  return sign * static_cast<float>((e == 0 ? 0 : (1 << M)) + m) * scale;
}

/// The 128 non-negative codes' values, ascending (codes above the largest finite are NaN/inf).
template <int E, int M, bool Inf>
constexpr std::array<float, 128> fp8_table() {
  std::array<float, 128> t{};
  for (int c = 0; c < 128; ++c)
    t[static_cast<std::size_t>(c)] = fp8_value<E, M, Inf>(static_cast<std::uint8_t>(c));
  return t;
}

/// fp32 → fp8: round to nearest, ties to the even code; NaN → NaN; anything of magnitude at
/// or beyond the largest finite value (±inf included) saturates to it (vLLM clamps to ±max before
/// converting; see `quantize`). `max_code` is the code of the largest finite value.
template <int E, int M, bool Inf>
inline std::uint8_t fp8_encode(float x, std::uint8_t max_code, std::uint8_t nan_code) {
  static constexpr std::array<float, 128> table = fp8_table<E, M, Inf>();
  if (std::isnan(x)) return nan_code;
  const std::uint8_t sign = std::signbit(x) ? 0x80 : 0x00;
  const float a = std::fabs(x);
  if (a >= table[max_code]) return static_cast<std::uint8_t>(sign | max_code);
  // The largest code whose value is ≤ a (values ascend with the code), then the nearer of it
  // and the next; the midpoint of two neighbours is exact in fp32 (≤ 5 significant bits).
  const auto* end = table.begin() + max_code + 1;
  const auto lo = static_cast<int>(std::upper_bound(table.begin(), end, a) - table.begin()) - 1;
  const float mid =
      0.5f * (table[static_cast<std::size_t>(lo)] + table[static_cast<std::size_t>(lo + 1)]);
  const int code = a < mid ? lo : a > mid ? lo + 1 : (lo % 2 == 0 ? lo : lo + 1);
  return static_cast<std::uint8_t>(sign | code);
}

}  // namespace detail

namespace detail {
/// Every code's value, computed once (decoding is a table lookup).
template <int E, int M, bool Inf>
inline const std::array<float, 256>& fp8_decode_table() {
  static const std::array<float, 256> table = [] {
    std::array<float, 256> t{};
    for (int c = 0; c < 256; ++c)
      t[static_cast<std::size_t>(c)] = fp8_value<E, M, Inf>(static_cast<std::uint8_t>(c));
    return t;
  }();
  return table;
}
}  // namespace detail

inline float to_float(fp8_e4m3 x) {
  return detail::fp8_decode_table<4, 3, false>()[x.bits];
}
inline float to_float(fp8_e5m2 x) {
  return detail::fp8_decode_table<5, 2, true>()[x.bits];
}

/// fp32 → e4m3fn, round to nearest even, saturating at ±448, NaN to NaN (0x7F, sign kept).
inline fp8_e4m3 to_fp8_e4m3(float x) {
  const std::uint8_t nan = std::signbit(x) ? 0xFF : 0x7F;
  return {detail::fp8_encode<4, 3, false>(x, 0x7E, nan)};
}
/// fp32 → e5m2, round to nearest even, saturating at ±57344, NaN to NaN (0x7F, sign kept).
inline fp8_e5m2 to_fp8_e5m2(float x) {
  const std::uint8_t nan = std::signbit(x) ? 0xFF : 0x7F;
  return {detail::fp8_encode<5, 2, true>(x, 0x7B, nan)};
}

/// fp8 row → fp32: value · scale.
template <class F>
requires std::same_as<F, fp8_e4m3> || std::same_as<F, fp8_e5m2>
inline void dequantize(const F* x, index_t n, float scale, float* y) {
  const auto& table = std::same_as<F, fp8_e4m3> ? detail::fp8_decode_table<4, 3, false>()
                                                : detail::fp8_decode_table<5, 2, true>();
  for (index_t i = 0; i < n; ++i) y[i] = table[x[i].bits] * scale;
}

/// fp32 row → fp8 with a given scale: fp8(x / scale), saturating (vLLM's `scaled_fp8_conversion`).
inline void quantize(const float* x, index_t n, float scale, fp8_e4m3* y) {
  for (index_t i = 0; i < n; ++i) y[i] = to_fp8_e4m3(x[i] / scale);
}
inline void quantize(const float* x, index_t n, float scale, fp8_e5m2* y) {
  for (index_t i = 0; i < n; ++i) y[i] = to_fp8_e5m2(x[i] / scale);
}

// -- int8 ------------------------------------------------------------------------------------

/// int8 row → fp32: q · scale.
inline void dequantize(const int8* x, index_t n, float scale, float* y) {
  for (index_t i = 0; i < n; ++i) y[i] = static_cast<float>(x[i].q) * scale;
}

/// fp32 row → int8 with a given scale: q = rint(x · (1 / scale)), ties to even, saturated to
/// [−128, 127] — TensorRT-LLM's `cvt.rni.sat.s8.f32(x * inv_scale)`.
inline void quantize(const float* x, index_t n, float scale, int8* y) {
  const float inv = scale != 0.0f ? 1.0f / scale : 0.0f;
  for (index_t i = 0; i < n; ++i) y[i].q = detail::to_i8(std::nearbyint(x[i] * inv));
}

/// fp32 row → int8 with its own scale s = amax / 127 (returned; 0 for a zero row), then as
/// above (so q ∈ [−127, 127]).
inline float quantize(const float* x, index_t n, int8* y) {
  float amax = 0.0f;
  for (index_t i = 0; i < n; ++i) amax = std::max(amax, std::fabs(x[i]));
  const float s = amax / 127.0f;
  quantize(x, n, s, y);
  return s;
}

}  // namespace quant
}  // namespace kvevict
