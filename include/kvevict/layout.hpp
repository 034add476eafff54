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
#include <span>
#include <vector>

#include "element.hpp"
#include "error.hpp"

namespace kvevict {

/// Where one tensor (the keys, or the values, of one layer of one sequence) lives.
///
/// Strides are in elements. For a dense cache `page_stride` is unused. Build one with the named
/// constructors, which spell out the common engine layouts:
///
/// | engine layout                                   | constructor                          |
/// |-------------------------------------------------|--------------------------------------|
/// | HF / kvpress `[h_kv][capacity][d]` (HND)        | `Storage::hnd(p, capacity, d)`       |
/// | llama.cpp cells, TensorRT dense `[n][h_kv][d]`  | `Storage::nhd(p, h_kv, d)`           |
/// | vLLM `(num_blocks, block_size, h, d)` (NHD)     | `Storage::paged_nhd(p, bs, h, d)`    |
/// | vLLM / TRT-LLM `(num_blocks, h, block_size, d)` | `Storage::paged_hnd(p, bs, h, d)`    |
/// | FlashInfer `paged_kv_t` strides                 | `Storage::paged(p, {.page, .head, .token})`
/// | Element strides by name, so they cannot be given in the wrong order: `Storage::strided(p,
/// {.head = 4096, .token = 128})`.
struct Strides {
  index_t head = 0;   ///< elements between head h and h + 1 of one token
  index_t token = 0;  ///< elements between token t and t + 1 (inside a page when paged)
  index_t page = 0;   ///< elements between page p and p + 1 of the pool (paged only)
};

template <Element T>
struct Storage {
  T* data = nullptr;         ///< Element (head 0, token 0, 0), or page 0 of the pool when paged.
  index_t head_stride = 0;   ///< Elements between head h and h + 1 of one token.
  index_t token_stride = 0;  ///< Elements between token t and t + 1 (inside a page when paged).
  index_t page_stride = 0;   ///< Elements between page p and p + 1 of the pool (paged only).

  /// Dense `[kv_heads][capacity][head_dim]`.
  static constexpr Storage hnd(T* data, index_t capacity, index_t head_dim) {
    return {data, capacity * head_dim, head_dim, 0};
  }
  /// Dense `[capacity][kv_heads][head_dim]`.
  static constexpr Storage nhd(T* data, index_t kv_heads, index_t head_dim) {
    return {data, head_dim, kv_heads * head_dim, 0};
  }
  /// Dense with any strides (padding between tokens or heads, a slice of a larger tensor):
  /// `strided(p, {.head = …, .token = …})`.
  static constexpr Storage strided(T* data, Strides s) { return {data, s.head, s.token, 0}; }
  /// Paged pool `[pool_pages][kv_heads][page_size][head_dim]`.
  static constexpr Storage paged_hnd(T* pool, index_t page_size, index_t kv_heads,
                                     index_t head_dim) {
    return {pool, page_size * head_dim, head_dim, kv_heads * page_size * head_dim};
  }
  /// Paged pool `[pool_pages][page_size][kv_heads][head_dim]`.
  static constexpr Storage paged_nhd(T* pool, index_t page_size, index_t kv_heads,
                                     index_t head_dim) {
    return {pool, head_dim, kv_heads * head_dim, page_size * kv_heads * head_dim};
  }
  /// Paged pool with any strides (FlashInfer's `stride_page`, `stride_h`, `stride_n`):
  /// `paged(pool, {.head = …, .token = …, .page = …})`.
  static constexpr Storage paged(T* pool, Strides s) { return {pool, s.head, s.token, s.page}; }
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
