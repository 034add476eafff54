// kvevict — KV-cache eviction policies for LLM inference.
// SPDX-License-Identifier: Apache-2.0
#pragma once

/// \file
/// \brief How an engine's key or value memory is laid out: `Storage` (base pointer and element
/// strides), `Shape`, and `PageTable` (vLLM / FlashInfer paged storage).
///
/// A layout is a shape plus strides (CuTe's view): the element `(head, token, i)` of a dense
/// cache is at `data + head * head_stride + token * token_stride + i`; of a paged cache at
/// `data + pages[token / page_size] * page_stride + head * head_stride
///  + (token % page_size) * token_stride + i`. The last dimension (head_dim) is always
/// contiguous. Nothing here allocates or owns memory.

#include <algorithm>
#include <array>
#include <cstdint>
#include <limits>
#include <optional>
#include <span>
#include <vector>

#include "element.hpp"
#include "error.hpp"

namespace kvevict {

/// What a named `Storage` constructor was told about the engine's buffer besides its strides.
///
/// A layout's dimensions are given twice — to the `Storage` (which turns them into strides) and
/// to the view's `Shape` / `PageTable` — and two values that disagree would let the view address
/// memory the engine never allocated. So the `KVCache` checks every dimension declared here
/// against its shape when it is made, and throws a `kvevict::error` naming the dimension
/// (`head_dim`, `head_dim_v`, `kv_heads`, `tokens`, `pages.page_size`) before any access. Strides
/// given directly (`strided`, `paged`, a braced `Storage{…}`) declare nothing but `size`.
///
/// With the buffer's size (the overloads taking a `std::span`), the view also checks that every
/// element it can address — every (head, token) row, or with pages every row of every page in
/// the pool — lies inside the span: the one check that catches any wrong dimension or stride.
struct Declared {
  std::optional<index_t> head_dim = {};   ///< Values per row: equals head_dim (K) / head_dim_v (V).
  std::optional<index_t> kv_heads = {};   ///< Heads per token (NHD, paged): equals kv_heads.
  std::optional<index_t> capacity = {};   ///< Tokens per head (dense HND): at least `tokens`.
  std::optional<index_t> page_size = {};  ///< Tokens per page: equals `PageTable::page_size`.
  std::optional<index_t> size = {};       ///< Elements of T from `data` (span overloads).
};

/// Element strides by name (`{.head = 4096, .token = 128}`), so they cannot be given in the wrong
/// order.
struct Strides {
  index_t head = 0;   ///< elements between head h and h + 1 of one token
  index_t token = 0;  ///< elements between token t and t + 1 (inside a page when paged)
  index_t page = 0;   ///< elements between page p and p + 1 of the pool (paged only)
};

/// Where one tensor (the keys, or the values, of one layer of one sequence) lives.
///
/// Strides are in elements. For a dense cache `page_stride` is unused. Build one with the named
/// constructors, which spell out the common engine layouts (each also takes a `std::span` of the
/// whole buffer instead of a pointer, and then the view checks it never reads past the span):
///
/// | engine layout                                   | constructor                          |
/// |-------------------------------------------------|--------------------------------------|
/// | HF / kvpress `[h_kv][capacity][d]` (HND)        | `Storage::hnd(p, capacity, d)`       |
/// | llama.cpp cells, TensorRT dense `[n][h_kv][d]`  | `Storage::nhd(p, h_kv, d)`           |
/// | vLLM `(num_blocks, block_size, h, d)` (NHD)     | `Storage::paged_nhd(p, bs, h, d)`    |
/// | vLLM / TRT-LLM `(num_blocks, h, block_size, d)` | `Storage::paged_hnd(p, bs, h, d)`    |
/// | FlashInfer `paged_kv_t` strides                 | `Storage::paged(p, {.page, .head, .token})`
/// | any dense strides (padding, a slice)            | `Storage::strided(p, {.head, .token})` |
///
/// The dimensions a named constructor takes are recorded in `declared` and must agree with the
/// view's `Shape` (see `Declared`): `Storage::nhd(p, 8, 64)` with `Shape{.head_dim = 32}` is an
/// error naming `head_dim`, never a read past the engine's buffer.
///
/// For a quantized `T` strides count elements of T (a `q8_0` element is a block of 32 values),
/// while the named constructors take `head_dim` in values, as the `Shape` does: a q8_0 row of
/// 128 values is 4 blocks, `Storage<q8_0>::nhd(p, 8, 128)` has `head_stride` 4.
template <Element T>
struct Storage {
  T* data = nullptr;         ///< Element (head 0, token 0, 0), or page 0 of the pool when paged.
  index_t head_stride = 0;   ///< Elements between head h and h + 1 of one token.
  index_t token_stride = 0;  ///< Elements between token t and t + 1 (inside a page when paged).
  index_t page_stride = 0;   ///< Elements between page p and p + 1 of the pool (paged only).
  Declared declared = {};    ///< What the named constructor was told (checked by the view).

  /// Dense `[kv_heads][capacity][head_dim]`.
  static constexpr Storage hnd(T* data, index_t capacity, index_t head_dim) {
    return {data,
            capacity * row(head_dim),
            row(head_dim),
            0,
            {.head_dim = head_dim, .capacity = capacity}};
  }
  /// Dense `[capacity][kv_heads][head_dim]`.
  static constexpr Storage nhd(T* data, index_t kv_heads, index_t head_dim) {
    return {data,
            row(head_dim),
            kv_heads * row(head_dim),
            0,
            {.head_dim = head_dim, .kv_heads = kv_heads}};
  }
  /// Dense with any strides (padding between tokens or heads, a slice of a larger tensor):
  /// `strided(p, {.head = …, .token = …})`.
  static constexpr Storage strided(T* data, Strides s) { return {data, s.head, s.token, 0, {}}; }
  /// Paged pool `[pool_pages][kv_heads][page_size][head_dim]`.
  static constexpr Storage paged_hnd(T* pool, index_t page_size, index_t kv_heads,
                                     index_t head_dim) {
    const index_t r = row(head_dim);
    return {pool,
            page_size * r,
            r,
            kv_heads * page_size * r,
            {.head_dim = head_dim, .kv_heads = kv_heads, .page_size = page_size}};
  }
  /// Paged pool `[pool_pages][page_size][kv_heads][head_dim]`.
  static constexpr Storage paged_nhd(T* pool, index_t page_size, index_t kv_heads,
                                     index_t head_dim) {
    const index_t r = row(head_dim);
    return {pool,
            r,
            kv_heads * r,
            page_size * kv_heads * r,
            {.head_dim = head_dim, .kv_heads = kv_heads, .page_size = page_size}};
  }
  /// Paged pool with any strides (FlashInfer's `stride_page`, `stride_h`, `stride_n`):
  /// `paged(pool, {.head = …, .token = …, .page = …})`.
  static constexpr Storage paged(T* pool, Strides s) { return {pool, s.head, s.token, s.page, {}}; }

  // The same over the whole buffer: the view checks that it addresses nothing past the span.
  static constexpr Storage hnd(std::span<T> buffer, index_t capacity, index_t head_dim) {
    return sized(hnd(buffer.data(), capacity, head_dim), buffer);
  }
  static constexpr Storage nhd(std::span<T> buffer, index_t kv_heads, index_t head_dim) {
    return sized(nhd(buffer.data(), kv_heads, head_dim), buffer);
  }
  static constexpr Storage strided(std::span<T> buffer, Strides s) {
    return sized(strided(buffer.data(), s), buffer);
  }
  static constexpr Storage paged_hnd(std::span<T> pool, index_t page_size, index_t kv_heads,
                                     index_t head_dim) {
    return sized(paged_hnd(pool.data(), page_size, kv_heads, head_dim), pool);
  }
  static constexpr Storage paged_nhd(std::span<T> pool, index_t page_size, index_t kv_heads,
                                     index_t head_dim) {
    return sized(paged_nhd(pool.data(), page_size, kv_heads, head_dim), pool);
  }
  static constexpr Storage paged(std::span<T> pool, Strides s) {
    return sized(paged(pool.data(), s), pool);
  }

  /// Elements of a row of `head_dim` values (the view rejects a head_dim that is not a multiple
  /// of `values_per_element<T>`).
  static constexpr index_t row(index_t head_dim) { return head_dim / values_per_element<T>; }

 private:
  static constexpr Storage sized(Storage s, std::span<T> buffer) {
    s.declared.size = static_cast<index_t>(buffer.size());
    return s;
  }
};

/// How scales are stored.
enum class ScaleType { float32, float16 };

/// Where the scales of an fp8 or int8 tensor live (ggml's q8_0 / q4_0 blocks carry their own and
/// take none). The scale of (head, token) is at `data + head * head_stride + token *
/// token_stride` (dense) or `data + pages[t / page_size] * page_stride + head * head_stride +
/// (t % page_size) * token_stride` (paged: per-token scales follow the cache's page table), in
/// scale elements. A stride of 0 shares one scale along that dimension:
///
/// | granularity, engine                                    | constructor                       |
/// |--------------------------------------------------------|-----------------------------------|
/// | none (every scale 1: vLLM with no checkpoint scales)   | `ScaleStorage{}`                  |
/// | per tensor (vLLM k_scale/v_scale, TRT-LLM per layer)   | `ScaleStorage::per_tensor(p)`     |
/// | per KV head                                            | `ScaleStorage::per_head(p)`       |
/// | per (head, token), `[kv_heads][capacity]`              | `ScaleStorage::hnd(p, capacity)`  |
/// | per (token, head), `[capacity][kv_heads]`              | `ScaleStorage::nhd(p, kv_heads)`  |
/// | paged `[pages][kv_heads][page_size]` / `[pages][page_size][kv_heads]` | `paged_hnd`,
/// `paged_nhd` | | any strides                                            |
/// `ScaleStorage::strided(p, {…})`   |
///
/// Scales that vary per token are moved with their token by `compact` and rewritten by
/// `rope_shift`; shared scales are never written.
struct ScaleStorage {
  void* data = nullptr;  ///< The scales (float or Eigen::half), or null: every scale 1.
  ScaleType type = ScaleType::float32;
  index_t head_stride = 0;   ///< Scale elements between head h and h + 1 (0: shared by heads).
  index_t token_stride = 0;  ///< Between token t and t + 1 in a page (0: shared by tokens).
  index_t page_stride = 0;   ///< Between pages (paged per-token scales only).

  /// True when tokens have scales of their own.
  constexpr bool per_token() const noexcept { return token_stride != 0 || page_stride != 0; }

  template <class S>
  static constexpr ScaleStorage per_tensor(S* p) {
    return make(p, {});
  }
  template <class S>
  static constexpr ScaleStorage per_head(S* p) {
    return make(p, {.head = 1});
  }
  template <class S>
  static constexpr ScaleStorage hnd(S* p, index_t capacity) {
    return make(p, {.head = capacity, .token = 1});
  }
  template <class S>
  static constexpr ScaleStorage nhd(S* p, index_t kv_heads) {
    return make(p, {.head = 1, .token = kv_heads});
  }
  template <class S>
  static constexpr ScaleStorage paged_hnd(S* p, index_t page_size, index_t kv_heads) {
    return make(p, {.head = page_size, .token = 1, .page = kv_heads * page_size});
  }
  template <class S>
  static constexpr ScaleStorage paged_nhd(S* p, index_t page_size, index_t kv_heads) {
    return make(p, {.head = 1, .token = kv_heads, .page = page_size * kv_heads});
  }
  template <class S>
  static constexpr ScaleStorage strided(S* p, Strides s) {
    return make(p, s);
  }

 private:
  template <class S>
  static constexpr ScaleStorage make(S* p, Strides s) {
    static_assert(std::same_as<S, float> || std::same_as<S, Eigen::half>,
                  "scales are float or Eigen::half");
    return {p, std::same_as<S, float> ? ScaleType::float32 : ScaleType::float16, s.head, s.token,
            s.page};
  }
};

/// The logical extent of a cache view.
struct Shape {
  index_t kv_heads = 0;    ///< KV heads of this layer.
  index_t tokens = 0;      ///< Tokens (or slots) the view covers, 1 ≤ tokens < 2^31.
  index_t head_dim = 0;    ///< Key head dimension.
  index_t head_dim_v = 0;  ///< Value head dimension; 0 means equal to `head_dim`.
};

/// The pages of one sequence in a shared page pool (vLLM block table, FlashInfer page list).
///
/// Logical token t lives in page `pages[t / page_size]` at row `t % page_size`. A table of pages
/// of one token each is a *gather*: llama.cpp cells of a sequence that are not in position order
/// are described that way (`page_size = 1`, `pages` = the cell ids in position order).
struct PageTable {
  std::span<const std::int32_t> pages;  ///< Page ids of this sequence, in token order.
  index_t page_size = 0;                ///< Tokens per page.
  index_t pool_pages = 0;               ///< Pages in the pool (every id must be below it).
  /// Leading pages that `compact` must never write (prefix caching shares them between
  /// sequences). Selections that would move tokens into them are rejected before any write.
  index_t read_only_pages = 0;
};

namespace detail {

/// One dimension of a lattice of equal-length spans: `count` spans `stride` elements apart.
struct LatticeDim {
  index_t count;
  index_t stride;
};

/// True when the spans `[o, o + span)` at every offset `o = Σ k_i · stride_i` (0 ≤ k_i < count_i)
/// are pairwise disjoint, checked by nesting: sorted by stride, each stride must clear the whole
/// extent of the dimensions below it. That is exact for every layout an engine uses (dense,
/// padded, paged, K/V interleaved in one block) and rejects only exotic interleavings.
/// Complexity O(dims log dims); no allocation.
template <std::size_t N>
bool nested_disjoint(std::array<LatticeDim, N> dims, index_t span) {
  std::sort(dims.begin(), dims.end(),
            [](const LatticeDim& a, const LatticeDim& b) { return a.stride < b.stride; });
  index_t extent = span;
  for (const LatticeDim& dim : dims) {
    if (dim.count <= 1) continue;
    if (dim.stride < extent) return false;
    const index_t max = std::numeric_limits<index_t>::max();
    if (dim.count - 1 > (max - extent) / dim.stride) return false;  // would overflow
    extent += dim.stride * (dim.count - 1);
  }
  return true;
}

/// Largest element offset reachable through `dims` plus `span` (the bounding extent).
template <std::size_t N>
index_t lattice_extent(const std::array<LatticeDim, N>& dims, index_t span) {
  index_t extent = span;
  for (const LatticeDim& dim : dims)
    if (dim.count > 1) extent += dim.stride * (dim.count - 1);
  return extent;
}

}  // namespace detail
}  // namespace kvevict
