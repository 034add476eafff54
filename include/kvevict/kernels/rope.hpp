// kvevict — KV-cache eviction policies for LLM inference.
// SPDX-License-Identifier: Apache-2.0
#pragma once

/// \file
/// \brief `rope_shift`: re-rotates stored keys by a position delta, for engines that keep keys at
/// cache-relative positions (StreamingLLM's and Cascade's RoPE handling).
///
/// RoPE rotates each pair of key coordinates by `position · θ_k`, θ_k = base^(−2k / rotary_dim)
/// (Su et al., arXiv 2104.09864, eq. 34). A key stored at position p becomes the key at position
/// p + δ by one more rotation of `δ · θ_k`, since rotations compose. Two pairings exist:
/// `neox` (GPT-NeoX / Llama in HF: coordinate k with k + rotary_dim/2) and `gptj` (GPT-J /
/// llama.cpp's original: 2k with 2k + 1). Coordinates at or beyond `rotary_dim` are not rotated
/// (partial rotary, e.g. GPT-NeoX, Phi).

#include <array>
#include <cmath>
#include <cstdint>
#include <span>
#include <string_view>
#include <utility>
#include <vector>

#include "../compact.hpp"
#include "../element.hpp"
#include "../error.hpp"
#include "../kv_cache.hpp"

namespace kvevict {

/// How a model applied RoPE to its keys.
enum class RopeStyle {
  neox,  ///< Pairs (k, k + rotary_dim / 2): HF Llama, Mistral, Qwen, GPT-NeoX.
  gptj,  ///< Pairs (2k, 2k + 1): GPT-J, llama.cpp `LLAMA_ROPE_TYPE_NORM`.
};

constexpr std::string_view to_string(RopeStyle s) {
  return s == RopeStyle::neox ? "neox" : "gptj";
}
constexpr std::array<RopeStyle, 2> all_values(RopeStyle) {
  return {RopeStyle::neox, RopeStyle::gptj};
}

/// RoPE parameters of the model whose keys are shifted.
struct Rope {
  double base = 10000.0;  ///< θ base (Llama 2: 1e4; Llama 3: 5e5).
  RopeStyle style = RopeStyle::neox;
  index_t rotary_dim = 0;  ///< Rotated coordinates; 0 means all of head_dim.
};

namespace detail {

inline index_t check_rope(const Rope& rope, index_t head_dim) {
  require(std::isfinite(rope.base) && rope.base > 1.0, "rope.base", "a finite base > 1", rope.base);
  const index_t rd = rope.rotary_dim == 0 ? head_dim : rope.rotary_dim;
  if (rd < 2 || rd > head_dim || rd % 2 != 0)
    fail("rope.rotary_dim", cat("an even count in [2, head_dim = ", head_dim, "] (or 0)"),
         rope.rotary_dim);
  return rd;
}

/// The two coordinates RoPE's k-th frequency rotates: (k, k + half) NeoX, (2k, 2k + 1) GPT-J.
constexpr std::pair<index_t, index_t> rope_pair(RopeStyle style, index_t half, index_t k) noexcept {
  return style == RopeStyle::neox ? std::pair{k, k + half} : std::pair{2 * k, 2 * k + 1};
}

/// θ_k = base^(−2k/rd) for k < rd / 2: the frequencies of a rotary dimension rd.
inline void rope_frequencies(const Rope& rope, index_t rd, std::vector<double>& freq) {
  freq.resize(static_cast<std::size_t>(rd / 2));
  for (index_t k = 0; k < rd / 2; ++k)
    freq[static_cast<std::size_t>(k)] =
        std::pow(rope.base, -2.0 * static_cast<double>(k) / static_cast<double>(rd));
}

/// cos and sin of `position` · θ_k into c[k], s[k] (`freq.size()` of each).
inline void rope_angles(std::span<const double> freq, double position, double* c,
                        double* s) noexcept {
  for (std::size_t k = 0; k < freq.size(); ++k) {
    const double angle = position * freq[k];
    c[k] = std::cos(angle);
    s[k] = std::sin(angle);
  }
}

/// Rotates the `half` pairs of x (floats or doubles) by the angles whose cosines and sines are
/// c[k], s[k], in double: the one RoPE rotation of the library (keys shifted by `rope_shift`,
/// ExpectedAttention's queries, the generated workloads).
template <class X>
void rotate_pairs(X* x, RopeStyle style, index_t half, const double* c, const double* s) noexcept {
  for (index_t k = 0; k < half; ++k) {
    const auto [a, b] = rope_pair(style, half, k);
    const double xa = x[a], xb = x[b];
    x[a] = static_cast<X>(xa * c[k] - xb * s[k]);
    x[b] = static_cast<X>(xa * s[k] + xb * c[k]);
  }
}

/// Rotates the keys of tokens [0, deltas.size()) of one head, token t by deltas[t] positions:
/// each row is read as fp32 (dequantized), rotated in double and written back as the engine
/// writes it (`KVCache::write`: rounded, or requantized with new per-token scales). cos/sin are
/// recomputed only when the delta changes (runs of equal deltas are common). `cs`: rd doubles.
template <Element T>
void shift_head(const KVCache<T>& kv, index_t head, std::span<const std::int64_t> deltas,
                const Rope& rope, index_t rd, std::vector<double>& freq, std::vector<double>& cs) {
  const index_t half = rd / 2;
  std::vector<float> row(static_cast<std::size_t>(kv.head_dim()));
  std::int64_t current = 0;
  bool have = false;
  for (std::size_t t = 0; t < deltas.size(); ++t) {
    const std::int64_t delta = deltas[t];
    if (delta == 0) continue;
    if (!have || delta != current) {
      rope_angles(freq, static_cast<double>(delta), cs.data(), cs.data() + half);
      current = delta;
      have = true;
    }
    kv.read(Tensor::keys, head, static_cast<index_t>(t), row.data());
    rotate_pairs(row.data(), rope.style, half, cs.data(), cs.data() + half);
    kv.write(Tensor::keys, head, static_cast<index_t>(t), row.data());
  }
}

}  // namespace detail

/// Rotates the keys of tokens [0, deltas.size()) of every head by `deltas[t]` positions
/// (negative moves a key back). Values are not touched. Angles in double, so a shift by +a then
/// −a returns fp32 keys to within ~1e-7 relative.
///
/// Quantized keys are dequantized, rotated and requantized, as llama.cpp's K-shift does for a
/// quantized cache (`build_rope_shift`: ggml_cast to f32, rope, back): each shift adds at most
/// one rounding of the format per value — for q8_0 half the block's new scale (amax/127 of the
/// rotated block), for q4_0 up to a whole step amax/8 (its codes −8 … 7 clamp the sign opposite
/// the block's largest value at 7), for int8 with per-token scales half of the new
/// amax/127, for fp8 half a code step (relative 2^-4 e4m3, 2^-3 e5m2) — plus saturation where a
/// *shared* fp8 / int8 scale cannot hold a rotated value (a rotation keeps each pair's norm, so
/// a value grows at most √2 times). Per-token scales are recomputed from the rotated row.
///
/// Complexity O(heads · tokens · rotary_dim), one cos/sin table per distinct consecutive delta.
/// Allocates two vectors of rotary_dim doubles.
template <Element T>
void rope_shift(const KVCache<T>& kv, std::span<const std::int64_t> deltas, const Rope& rope) {
  const index_t rd = detail::check_rope(rope, kv.head_dim());
  if (static_cast<index_t>(deltas.size()) > kv.tokens())
    detail::fail("deltas", detail::cat("at most one delta per token (", kv.tokens(), ")"),
                 deltas.size());
  std::vector<double> freq, cs(static_cast<std::size_t>(rd));
  detail::rope_frequencies(rope, rd, freq);
  for (index_t h = 0; h < kv.kv_heads(); ++h) detail::shift_head(kv, h, deltas, rope, rd, freq, cs);
}

/// Rotates the keys of one head only, token t by `deltas[t]` positions: for layouts whose heads
/// hold different tokens (per-head eviction; Cascade's slots, whose cache-relative positions
/// `relative_positions` gives per head). A delta of 0 leaves the key untouched.
template <Element T>
void rope_shift(const KVCache<T>& kv, index_t head, std::span<const std::int64_t> deltas,
                const Rope& rope) {
  const index_t rd = detail::check_rope(rope, kv.head_dim());
  if (head < 0 || head >= kv.kv_heads())
    detail::fail("head", detail::cat("a KV head in [0, ", kv.kv_heads(), ")"), head);
  if (static_cast<index_t>(deltas.size()) > kv.tokens())
    detail::fail("deltas", detail::cat("at most one delta per token (", kv.tokens(), ")"),
                 deltas.size());
  std::vector<double> freq, cs(static_cast<std::size_t>(rd));
  detail::rope_frequencies(rope, rd, freq);
  detail::shift_head(kv, head, deltas, rope, rd, freq, cs);
}

/// Rotates every key of the view by the same `delta` positions.
template <Element T>
void rope_shift(const KVCache<T>& kv, std::int64_t delta, const Rope& rope) {
  const std::vector<std::int64_t> deltas(static_cast<std::size_t>(kv.tokens()), delta);
  rope_shift(kv, std::span<const std::int64_t>(deltas), rope);
}

/// After `compact`, moves each kept key from its original position to its cache-relative
/// position (token i of head h to position i), as StreamingLLM and Cascade do. `kv` is the
/// compacted view; `c` the compaction's result.
template <Element T>
void rope_shift(const KVCache<T>& kv, const Compaction& c, const Rope& rope) {
  const index_t rd = detail::check_rope(rope, kv.head_dim());
  if (static_cast<index_t>(c.lengths.size()) != kv.kv_heads())
    detail::fail("compaction", detail::cat("lengths for kv_heads (", kv.kv_heads(), ")"),
                 c.lengths.size());
  // The whole compaction is checked before the first key turns: no head half shifted.
  if (static_cast<index_t>(c.offsets.size()) != kv.kv_heads() + 1 || c.offsets[0] != 0 ||
      c.offsets.back() != static_cast<index_t>(c.positions.size()))
    detail::fail("compaction", "CSR offsets (kv_heads + 1, from 0 to positions.size())",
                 c.offsets.size(), " offsets for ", c.positions.size(), " positions");
  for (index_t h = 0; h < kv.kv_heads(); ++h) {
    const index_t count =
        c.offsets[static_cast<std::size_t>(h + 1)] - c.offsets[static_cast<std::size_t>(h)];
    if (count < 0 || count > kv.tokens() || count != c.lengths[static_cast<std::size_t>(h)])
      detail::fail("compaction",
                   detail::cat("per head, length = offsets[h + 1] − offsets[h] <= tokens (",
                               kv.tokens(), ")"),
                   count, " at head ", h);
  }
  std::vector<double> freq, cs(static_cast<std::size_t>(rd));
  detail::rope_frequencies(rope, rd, freq);
  std::vector<std::int64_t> deltas;
  for (index_t h = 0; h < kv.kv_heads(); ++h) {
    const auto from = c.kept_positions(h);
    deltas.resize(from.size());
    for (std::size_t i = 0; i < from.size(); ++i)
      deltas[i] = static_cast<std::int64_t>(i) - from[i];
    detail::shift_head(kv, h, deltas, rope, rd, freq, cs);
  }
}

}  // namespace kvevict
