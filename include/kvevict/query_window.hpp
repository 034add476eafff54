// kvevict — KV-cache eviction policies for LLM inference.
// SPDX-License-Identifier: Apache-2.0
#pragma once

/// \file
/// \brief `QueryWindow<T>`: the queries of the last w positions, the observation window of
/// one-shot policies.

#include <array>
#include <span>

#include "element.hpp"
#include "error.hpp"
#include "kv_cache.hpp"
#include "layout.hpp"

namespace kvevict {

/// The extent of a query window, by name (three counts cannot be swapped silently).
struct QueryShape {
  index_t q_heads = 0;   ///< query heads (a multiple of the cache's KV heads)
  index_t window = 0;    ///< queries: positions n − window … n − 1
  index_t head_dim = 0;  ///< values per query (the keys' head_dim)
};

/// Query element strides by name, for `QueryWindow::strided`.
struct QueryStrides {
  index_t head = 0;      ///< elements between query head h and h + 1 of one position
  index_t position = 0;  ///< elements between position i and i + 1 of one head
};

/// A read-only view of the queries of the last `window` positions of a sequence, for every
/// query head: element `(head, i, k)` at `data + head * head_stride + i * position_stride + k`.
///
/// Build one with the named constructors, which say the layout:
///
/// | layout                                                   | constructor                    |
/// |----------------------------------------------------------|--------------------------------|
/// | `[q_heads][window][head_dim]` (HF / kvpress, per head)   | `QueryWindow::hnd(q, shape)`   |
/// | `[window][q_heads][head_dim]` (vLLM / FlashInfer tokens) | `QueryWindow::nhd(q, shape)`   |
/// | any element strides (a slice of a larger batch)          | `QueryWindow::strided(q, shape,
/// {.head, .position})` |
///
/// Each also takes a `std::span` of the buffer, and then checks that every query lies inside it.
/// The positional constructors below are the `hnd` layout and the strided one.
///
/// Query i sits at position `n − window + i` of the cache it is used with (n = the cache's
/// tokens), so causal attention lets it see tokens 0 … n − window + i. `q_heads` is a multiple
/// g of the cache's `kv_heads` (GQA; query head h reads KV head h / g). Construction validates
/// extents and strides in O(1); no allocation.
///
/// **Example**:
/// \code
/// // An engine's last 32 queries as tokens × heads: q[32 positions][32 heads][128].
/// auto q = kvevict::QueryWindow<float>::nhd(q_data, {.q_heads = 32, .window = 32,
///                                                     .head_dim = 128});
/// \endcode
template <FloatElement T>
class QueryWindow {
 public:
  /// `[q_heads][window][head_dim]`: each head's queries contiguous.
  static QueryWindow hnd(const T* data, QueryShape s) {
    return QueryWindow(data, s.q_heads, s.window, s.head_dim);
  }
  /// `[window][q_heads][head_dim]`: each position's heads contiguous (vLLM, FlashInfer, the
  /// layout an engine's Q projection writes).
  static QueryWindow nhd(const T* data, QueryShape s) {
    return QueryWindow(data, s.q_heads, s.window, s.head_dim, s.head_dim, s.q_heads * s.head_dim);
  }
  /// Any element strides, by name.
  static QueryWindow strided(const T* data, QueryShape s, QueryStrides st) {
    return QueryWindow(data, s.q_heads, s.window, s.head_dim, st.head, st.position);
  }
  // The same over the whole buffer: throws unless every query lies inside the span.
  static QueryWindow hnd(std::span<const T> buffer, QueryShape s) {
    return sized(hnd(buffer.data(), s), buffer);
  }
  static QueryWindow nhd(std::span<const T> buffer, QueryShape s) {
    return sized(nhd(buffer.data(), s), buffer);
  }
  static QueryWindow strided(std::span<const T> buffer, QueryShape s, QueryStrides st) {
    return sized(strided(buffer.data(), s, st), buffer);
  }

  /// Dense `[q_heads][window][head_dim]`.
  QueryWindow(const T* data, index_t q_heads, index_t window, index_t head_dim)
      : QueryWindow(data, q_heads, window, head_dim, window * head_dim, head_dim) {}

  /// Any strides (e.g. `[window][q_heads][head_dim]`: head_stride = head_dim,
  /// position_stride = q_heads · head_dim).
  QueryWindow(const T* data, index_t q_heads, index_t window, index_t head_dim, index_t head_stride,
              index_t position_stride)
      : data_(data),
        q_heads_(q_heads),
        window_(window),
        head_dim_(head_dim),
        head_stride_(head_stride),
        position_stride_(position_stride) {
    detail::require(data != nullptr, "queries.data", "a non-null pointer", "nullptr");
    detail::require(q_heads >= 1, "queries.q_heads", "at least 1 query head", q_heads);
    detail::require(window >= 1, "queries.window", "at least 1 query", window);
    detail::require(head_dim >= 1, "queries.head_dim", "head_dim >= 1", head_dim);
    const std::array<detail::LatticeDim, 2> dims{
        {{q_heads, head_stride}, {window, position_stride}}};
    if (!detail::nested_disjoint(dims, head_dim))
      detail::fail("queries",
                   detail::cat("head_stride and position_stride under which no two query vectors "
                               "of ",
                               head_dim, " elements overlap"),
                   "head_stride=", head_stride, ", position_stride=", position_stride);
  }

  index_t q_heads() const noexcept { return q_heads_; }
  index_t window() const noexcept { return window_; }
  index_t head_dim() const noexcept { return head_dim_; }
  index_t head_stride() const noexcept { return head_stride_; }
  index_t position_stride() const noexcept { return position_stride_; }

  /// The `head_dim` contiguous elements of query i of head h. No bounds check.
  std::span<const T> query(index_t head, index_t i) const noexcept {
    return {data_ + head * head_stride_ + i * position_stride_,
            static_cast<std::size_t>(head_dim_)};
  }
  /// Queries [first, first + count) of the window, as a window of their own.
  QueryWindow sub(index_t first, index_t count) const {
    if (first < 0 || count < 1 || first + count > window_)
      detail::fail("queries.window", detail::cat("queries [", first, ", ", first + count, ")"),
                   window_, " queries");
    return QueryWindow(data_ + first * position_stride_, q_heads_, count, head_dim_, head_stride_,
                       position_stride_);
  }
  /// The last `count` queries of the window (a sub-window ending at the same position).
  QueryWindow last(index_t count) const { return sub(window_ - count, count); }

  /// First element of head h's queries; consecutive queries are `position_stride` apart.
  const T* head_data(index_t head) const noexcept { return data_ + head * head_stride_; }

 private:
  static QueryWindow sized(QueryWindow q, std::span<const T> buffer) {
    const std::array<detail::LatticeDim, 2> dims{
        {{q.q_heads_, q.head_stride_}, {q.window_, q.position_stride_}}};
    const index_t need = detail::lattice_extent(dims, q.head_dim_);
    if (static_cast<index_t>(buffer.size()) < need)
      detail::fail("queries",
                   detail::cat("a buffer holding every query (", need, " elements at the strides)"),
                   "a span of ", buffer.size());
    return q;
  }

  const T* data_;
  index_t q_heads_, window_, head_dim_, head_stride_, position_stride_;
};

/// Validates that `queries` can be used with `kv`: same head_dim, q_heads a multiple of
/// kv_heads, window ≤ tokens. Returns the GQA group size g = q_heads / kv_heads. O(1).
template <Element T>
index_t check_window(const KVCache<T>& kv, const QueryWindow<query_type<T>>& queries) {
  if (queries.head_dim() != kv.head_dim())
    detail::fail("queries.head_dim", detail::cat("the keys' head_dim (", kv.head_dim(), ")"),
                 queries.head_dim());
  if (queries.q_heads() % kv.kv_heads() != 0)
    detail::fail("queries.q_heads", detail::cat("a multiple of kv_heads (", kv.kv_heads(), ")"),
                 queries.q_heads());
  if (queries.window() > kv.tokens())
    detail::fail("queries.window", detail::cat("at most the cache's tokens (", kv.tokens(), ")"),
                 queries.window());
  return queries.q_heads() / kv.kv_heads();
}

}  // namespace kvevict
