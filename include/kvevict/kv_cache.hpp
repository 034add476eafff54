// kvevict — KV-cache eviction policies for LLM inference.
// SPDX-License-Identifier: Apache-2.0
#pragma once

/// \file
/// \brief `KVCache<T>`: a non-owning view of one layer's keys and values for one sequence.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "element.hpp"
#include "error.hpp"
#include "layout.hpp"

namespace kvevict {

/// Which of the two tensors of a cache.
enum class Tensor { keys, values };

/// A maximal run of tokens of one head whose spans are evenly strided in memory: token
/// `first + i` starts at `data + i * stride`. Kernels see a dense cache as one run per head and
/// a paged cache as one run per page, so every run is GEMM-shaped (`Eigen::Map` with
/// `OuterStride`).
template <Element T>
struct TokenRun {
  index_t first;   ///< First logical token of the run.
  index_t count;   ///< Tokens in the run.
  T* data;         ///< Start of token `first`.
  index_t stride;  ///< Elements between consecutive tokens of the run.
};

/// A non-owning view of the keys and values of one layer of one sequence.
///
/// The view wraps the engine's memory without copying: dense HND/NHD, any element strides, or
/// paged storage (a page pool plus this sequence's page table). Token indices are *logical*:
/// 0 … tokens − 1 in position order; the engine's slot or page arrangement is the layout's
/// business. Optional metadata: the original position of each token (after an earlier
/// compaction they are no longer 0 … n − 1) and the layer index (it seeds random policies).
///
/// Construction validates everything a kernel later assumes: positive extents, strides under
/// which no two (head, token) spans of K or of V overlap and K does not overlap V, page ids in
/// range and distinct, positions strictly increasing. Errors are `kvevict::error` naming the
/// argument. Complexity of construction: O(1) dense, O(P log P) paged (P = page table length,
/// one temporary copy of the table). Accessors are O(1) and allocate nothing.
///
/// Policies only read through the view; `compact` and `rope_shift` write through it.
///
/// **Quantized caches** (`T` a `QuantizedElement`): `head_dim` and `head_dim_v` count values and
/// must be multiples of `values_per_element<T>` (32 for ggml blocks); `key`/`value` return the
/// row's `row_elements` raw elements; `read` dequantizes a row to fp32 and `write` quantizes one
/// back. fp8 and int8 scales live apart from the data and are given with `with_scales` (every
/// scale is 1 without it, as vLLM's fp8 cache without checkpoint scales).
///
/// **Example**:
/// \code
/// // HF-style dense cache: float k[8][4096][128], v[8][4096][128], 3000 tokens filled.
/// kvevict::KVCache<float> kv(kvevict::Storage<float>::hnd(k, 4096, 128),
///                            kvevict::Storage<float>::hnd(v, 4096, 128),
///                            {.kv_heads = 8, .tokens = 3000, .head_dim = 128});
/// std::span<float> key = kv.key(/*head=*/2, /*token=*/17);  // 128 contiguous elements
/// \endcode
template <Element T>
class KVCache {
 public:
  using element_type = T;

  /// A dense cache: keys and values with any strides.
  KVCache(Storage<T> keys, Storage<T> values, Shape shape) : keys_(keys), values_(values) {
    init_shape(shape);
    check_declared();
    validate_layout();
  }

  /// A paged cache: `keys.data` and `values.data` point at page 0 of their pools.
  KVCache(Storage<T> keys, Storage<T> values, Shape shape, PageTable pages)
      : keys_(keys), values_(values), pages_(pages), paged_(true) {
    init_shape(shape);
    validate_pages();
    check_declared();
    validate_layout();
  }

  /// The same memory with the original position of every token (strictly increasing, one per
  /// token). Without positions, token t is at position t. O(tokens).
  [[nodiscard]] KVCache with_positions(std::span<const std::int64_t> positions) const {
    KVCache out = *this;
    if (static_cast<index_t>(positions.size()) != tokens_)
      detail::fail("positions", detail::cat("one position per token (", tokens_, ")"),
                   positions.size());
    for (std::size_t i = 0; i < positions.size(); ++i) {
      if (positions[i] < 0)
        detail::fail("positions", "values >= 0", detail::cat("positions[", i, "]=", positions[i]));
      if (i > 0 && positions[i] <= positions[i - 1])
        detail::fail("positions", "strictly increasing values",
                     detail::cat("positions[", i, "]=", positions[i], " after positions[", i - 1,
                                 "]=", positions[i - 1]));
    }
    out.positions_ = positions;
    return out;
  }

  /// The same memory with the scales of an fp8 or int8 cache (see `ScaleStorage`). Validates
  /// that per-token scales give every (head, token) its own scale and that key and value scales
  /// do not overlap; the values are checked (finite) by `select`'s input check, not here.
  /// O(1) dense, O(1) paged.
  [[nodiscard]] KVCache with_scales(
      ScaleStorage key_scales, ScaleStorage value_scales) const requires has_external_scale<T> {
    KVCache out = *this;
    out.check_scales(key_scales, "key_scales");
    out.check_scales(value_scales, "value_scales");
    if (key_scales.per_token() && value_scales.per_token() && key_scales.data != nullptr &&
        value_scales.data != nullptr) {
      const auto range = [&](const ScaleStorage& sc) {
        const auto lo = reinterpret_cast<std::uintptr_t>(sc.data);
        return std::pair{
            lo, lo + static_cast<std::uintptr_t>(detail::lattice_extent(scale_lattice(sc), 1)) *
                         scale_bytes(sc)};
      };
      const auto [k0, k1] = range(key_scales);
      const auto [v0, v1] = range(value_scales);
      if (!(k1 <= v0 || v1 <= k0))
        detail::fail("value_scales.data", "memory disjoint from the key scales",
                     "an overlap with the key scales");
    }
    out.key_scales_ = key_scales;
    out.value_scales_ = value_scales;
    return out;
  }

  /// The same memory with a layer index (random policies seed each layer differently).
  [[nodiscard]] KVCache with_layer(index_t layer) const {
    detail::require(layer >= 0, "layer", "a layer index >= 0", layer);
    KVCache out = *this;
    out.layer_ = layer;
    return out;
  }

  /// The same memory covering another number of tokens (a cache that grew or shrank).
  /// Re-validates strides in O(1); a paged table was validated in full at construction, so only
  /// its length is checked. Positions, when set, must cover the new count (their prefix is kept).
  [[nodiscard]] KVCache with_tokens(index_t tokens) const {
    KVCache out = *this;
    Shape shape{kv_heads_, tokens, head_dim_, head_dim_v_};
    out.init_shape(shape);
    if (paged_) out.check_page_capacity();
    out.validate_layout();
    if constexpr (has_external_scale<T>) {
      out.check_scales(key_scales_, "key_scales");
      out.check_scales(value_scales_, "value_scales");
    }
    if (!positions_.empty()) {
      if (tokens > static_cast<index_t>(positions_.size()))
        detail::fail("tokens",
                     detail::cat("at most the number of positions (", positions_.size(), ")"),
                     tokens);
      out.positions_ = positions_.first(static_cast<std::size_t>(tokens));
    }
    return out;
  }

  index_t kv_heads() const noexcept { return kv_heads_; }
  index_t tokens() const noexcept { return tokens_; }
  index_t head_dim() const noexcept { return head_dim_; }
  index_t head_dim_v() const noexcept { return head_dim_v_; }
  /// Elements of T per (head, token) row of `which`: its values / `values_per_element<T>`.
  index_t row_elements(Tensor which) const noexcept {
    return (which == Tensor::keys ? head_dim_ : head_dim_v_) / values_per_element<T>;
  }
  /// The scales given with `with_scales` (empty: every scale 1).
  const ScaleStorage& scales(Tensor which) const noexcept {
    return which == Tensor::keys ? key_scales_ : value_scales_;
  }
  index_t layer() const noexcept { return layer_; }
  bool paged() const noexcept { return paged_; }
  const Storage<T>& key_storage() const noexcept { return keys_; }
  const Storage<T>& value_storage() const noexcept { return values_; }
  /// The page table (empty for a dense cache).
  const PageTable& page_table() const noexcept { return pages_; }

  /// Original position of token `t` (t itself unless positions were given).
  std::int64_t position(index_t t) const noexcept {
    return positions_.empty() ? t : positions_[static_cast<std::size_t>(t)];
  }
  /// The positions span given with `with_positions` (empty otherwise).
  std::span<const std::int64_t> positions() const noexcept { return positions_; }

  /// The contiguous key elements of (head, token): `head_dim` values, `row_elements(keys)`
  /// elements. No bounds check (hot path).
  std::span<T> key(index_t head, index_t token) const noexcept {
    return {keys_.data + offset(keys_, head, token),
            static_cast<std::size_t>(row_elements(Tensor::keys))};
  }
  /// The contiguous value elements of (head, token). No bounds check (hot path).
  std::span<T> value(index_t head, index_t token) const noexcept {
    return {values_.data + offset(values_, head, token),
            static_cast<std::size_t>(row_elements(Tensor::values))};
  }

  /// The scale of (head, token) of `which`: 1 for float and ggml block formats and without
  /// scales. No bounds check.
  float scale(Tensor which, index_t head, index_t token) const noexcept {
    if constexpr (!has_external_scale<T>) {
      (void)which, (void)head, (void)token;
      return 1.0f;
    } else {
      const ScaleStorage& sc = scales(which);
      if (sc.data == nullptr) return 1.0f;
      const index_t o = scale_offset(sc, head, token);
      return sc.type == ScaleType::float32
                 ? static_cast<const float*>(sc.data)[o]
                 : static_cast<float>(static_cast<const Eigen::half*>(sc.data)[o]);
    }
  }

  /// Dequantizes the row (head, token) of `which` into `out` (`dim(which)` floats). O(dim).
  void read(Tensor which, index_t head, index_t token, float* out) const noexcept {
    dequantize_row(span(which, head, token).data(), dim(which), scale(which, head, token), out);
  }

  /// Writes `dim(which)` values into the row (head, token), as the engine writes it: float
  /// types round, ggml blocks compute their scales; fp8 and int8 with per-token scales get a
  /// new scale (amax / largest code: 127 for int8, 448 / 57344 for fp8), with shared scales
  /// the shared one (values beyond it saturate). O(dim).
  void write(Tensor which, index_t head, index_t token, const float* in) const noexcept {
    T* row = span(which, head, token).data();
    if constexpr (has_external_scale<T>) {
      const ScaleStorage& sc = scales(which);
      if (sc.data != nullptr && sc.per_token()) {
        float amax = 0.0f;
        for (index_t i = 0; i < dim(which); ++i) amax = std::max(amax, std::fabs(in[i]));
        float s = amax / largest_code();
        const index_t o = scale_offset(sc, head, token);
        if (sc.type == ScaleType::float32) {
          static_cast<float*>(sc.data)[o] = s;
        } else {
          const Eigen::half h(s);
          static_cast<Eigen::half*>(sc.data)[o] = h;
          s = static_cast<float>(h);  // quantize with the scale as stored
        }
        quantize_row(in, dim(which), s, row);
        return;
      }
    }
    quantize_row(in, dim(which), scale(which, head, token), row);
  }

  /// The offset of (head, token)'s scale in `sc`, in scale elements.
  index_t scale_offset(const ScaleStorage& sc, index_t head, index_t token) const noexcept {
    if (!paged_) return head * sc.head_stride + token * sc.token_stride;
    const index_t ps = pages_.page_size;
    return static_cast<index_t>(pages_.pages[static_cast<std::size_t>(token / ps)]) *
               sc.page_stride +
           head * sc.head_stride + (token % ps) * sc.token_stride;
  }
  /// The span of (head, token) in `which`.
  std::span<T> span(Tensor which, index_t head, index_t token) const noexcept {
    return which == Tensor::keys ? key(head, token) : value(head, token);
  }
  /// Values per (head, token) row of `which` (`head_dim` or `head_dim_v`).
  index_t dim(Tensor which) const noexcept {
    return which == Tensor::keys ? head_dim_ : head_dim_v_;
  }

  /// Calls `f(TokenRun<T>)` for the maximal evenly strided runs covering tokens [begin, end) of
  /// `head`, in token order: one run for a dense cache, one per page (or page fragment) when
  /// paged. O(runs); no allocation.
  template <class F>
  void for_each_run(Tensor which, index_t head, index_t begin, index_t end, F&& f) const {
    const Storage<T>& s = which == Tensor::keys ? keys_ : values_;
    if (!paged_) {
      if (end > begin)
        f(TokenRun<T>{begin, end - begin, s.data + head * s.head_stride + begin * s.token_stride,
                      s.token_stride});
      return;
    }
    const index_t ps = pages_.page_size;
    for (index_t t = begin; t < end;) {
      const index_t in_page = t % ps;
      const index_t count = std::min(ps - in_page, end - t);
      f(TokenRun<T>{t, count, s.data + offset(s, head, t), s.token_stride});
      t += count;
    }
  }

 private:
  index_t offset(const Storage<T>& s, index_t head, index_t token) const noexcept {
    if (!paged_) return head * s.head_stride + token * s.token_stride;
    const index_t ps = pages_.page_size;
    return static_cast<index_t>(pages_.pages[static_cast<std::size_t>(token / ps)]) *
               s.page_stride +
           head * s.head_stride + (token % ps) * s.token_stride;
  }

  void init_shape(const Shape& shape) {
    detail::require(shape.kv_heads >= 1, "kv_heads", "at least 1 KV head", shape.kv_heads);
    detail::require(shape.tokens >= 1 && shape.tokens <= std::numeric_limits<std::int32_t>::max(),
                    "tokens", "1 <= tokens < 2^31", shape.tokens);
    detail::require(shape.head_dim >= 1, "head_dim", "head_dim >= 1", shape.head_dim);
    detail::require(shape.head_dim_v >= 0, "head_dim_v", "head_dim_v >= 1 (or 0 for head_dim)",
                    shape.head_dim_v);
    constexpr index_t vpe = values_per_element<T>;
    if (shape.head_dim % vpe != 0)
      detail::fail("head_dim",
                   detail::cat("a multiple of ", vpe, " (values per ", dtype_name<T>(), " block)"),
                   shape.head_dim);
    if (shape.head_dim_v % vpe != 0)
      detail::fail("head_dim_v",
                   detail::cat("a multiple of ", vpe, " (values per ", dtype_name<T>(), " block)"),
                   shape.head_dim_v);
    kv_heads_ = shape.kv_heads;
    tokens_ = shape.tokens;
    head_dim_ = shape.head_dim;
    head_dim_v_ = shape.head_dim_v == 0 ? shape.head_dim : shape.head_dim_v;
  }

  /// What each Storage's named constructor was told must agree with the shape and page table
  /// (see `Declared`): a dimension given twice that disagrees is an error naming it, before any
  /// stride is looked at.
  void check_declared() const {
    check_declared(keys_.declared, Tensor::keys);
    check_declared(values_.declared, Tensor::values);
  }

  void check_declared(const Declared& d, Tensor which) const {
    const bool keys = which == Tensor::keys;
    const char* tensor = keys ? "keys" : "values";
    if (d.head_dim && *d.head_dim != dim(which))
      detail::fail(
          keys ? "head_dim" : "head_dim_v",
          detail::cat("the head_dim the ", tensor, "' Storage was made with (", *d.head_dim, ")",
                      keys ? "" : " (Shape::head_dim_v, or head_dim when it is 0)"),
          dim(which));
    if (d.kv_heads && *d.kv_heads != kv_heads_)
      detail::fail(
          "kv_heads",
          detail::cat("the kv_heads the ", tensor, "' Storage was made with (", *d.kv_heads, ")"),
          kv_heads_);
    if (paged_ && d.page_size && *d.page_size != pages_.page_size)
      detail::fail(
          "pages.page_size",
          detail::cat("the page_size the ", tensor, "' Storage was made with (", *d.page_size, ")"),
          pages_.page_size);
    if (!paged_ && d.page_size)
      detail::fail(tensor, "a dense layout for a view without a page table",
                   "a paged Storage (page_size ", *d.page_size, ")");
    if (!paged_ && d.capacity && tokens_ > *d.capacity)
      detail::fail("tokens",
                   detail::cat("at most the capacity the ", tensor, "' Storage was made with (",
                               *d.capacity, ")"),
                   tokens_);
    if (d.size && *d.size < 0) detail::fail(tensor, "a buffer of >= 0 elements", *d.size);
  }

  void check_page_capacity() const {
    const auto entries = static_cast<index_t>(pages_.pages.size());
    const index_t needed = (tokens_ + pages_.page_size - 1) / pages_.page_size;
    if (entries < needed)
      detail::fail("pages.pages",
                   detail::cat("at least ceil(tokens / page_size) = ", needed, " page ids"),
                   entries);
  }

  void validate_pages() const {
    detail::require(pages_.page_size >= 1, "pages.page_size", "page_size >= 1", pages_.page_size);
    detail::require(
        pages_.pool_pages >= 1 && pages_.pool_pages <= std::numeric_limits<std::int32_t>::max(),
        "pages.pool_pages", "1 <= pool_pages < 2^31", pages_.pool_pages);
    check_page_capacity();
    const auto entries = static_cast<index_t>(pages_.pages.size());
    detail::require(pages_.read_only_pages >= 0 && pages_.read_only_pages <= entries,
                    "pages.read_only_pages", detail::cat("0 <= read_only_pages <= ", entries),
                    pages_.read_only_pages);
    for (index_t i = 0; i < entries; ++i) {
      const std::int32_t id = pages_.pages[static_cast<std::size_t>(i)];
      if (id < 0 || id >= pages_.pool_pages)
        detail::fail(detail::cat("pages.pages[", i, "]"),
                     detail::cat("a page id in [0, pool_pages = ", pages_.pool_pages, ")"), id);
    }
    std::vector<std::int32_t> sorted(pages_.pages.begin(), pages_.pages.end());
    std::sort(sorted.begin(), sorted.end());
    const auto dup = std::adjacent_find(sorted.begin(), sorted.end());
    if (dup != sorted.end())
      detail::fail("pages.pages", "distinct page ids (two tokens would share memory)", "page ",
                   *dup, " listed twice");
  }

  /// The lattice of one tensor's (head, token[, page]) spans.
  std::array<detail::LatticeDim, 3> lattice(const Storage<T>& s) const {
    if (!paged_) return {{{kv_heads_, s.head_stride}, {tokens_, s.token_stride}, {1, 0}}};
    return {{{kv_heads_, s.head_stride},
             {pages_.page_size, s.token_stride},
             {pages_.pool_pages, s.page_stride}}};
  }

  void validate_layout() const {
    detail::require(keys_.data != nullptr, "keys.data", "a non-null pointer", "nullptr");
    detail::require(values_.data != nullptr, "values.data", "a non-null pointer", "nullptr");
    check_tensor(keys_, row_elements(Tensor::keys), "keys");
    check_tensor(values_, row_elements(Tensor::values), "values");
    check_disjoint();
  }

  void check_tensor(const Storage<T>& s, index_t dim, const char* name) const {
    const auto dims = lattice(s);
    if (!detail::nested_disjoint(dims, dim)) {
      const char* what = paged_ ? "head_stride, token_stride and page_stride under which no two "
                                  "(page, head, token) spans of "
                                : "head_stride and token_stride under which no two (head, token) "
                                  "spans of ";
      detail::fail(name, detail::cat(what, dim, " elements overlap"), "head_stride=", s.head_stride,
                   ", token_stride=", s.token_stride,
                   paged_ ? detail::cat(", page_stride=", s.page_stride) : std::string());
    }
    if (s.declared.size && detail::lattice_extent(dims, dim) > *s.declared.size)
      detail::fail(name,
                   detail::cat("a buffer holding every element the view addresses (",
                               detail::lattice_extent(dims, dim), " elements of ", dtype_name<T>(),
                               paged_ ? ": pool_pages pages of the Storage's page_stride)"
                                      : ": kv_heads x tokens rows at the Storage's strides)"),
                   "a span of ", *s.declared.size);
  }

  /// Keys and values must not share an element. Same strides (vLLM's `(blocks, 2, …)` block):
  /// K/V is one more lattice dimension. Otherwise the bounding ranges must be disjoint.
  void check_disjoint() const {
    const auto k = reinterpret_cast<std::uintptr_t>(keys_.data);
    const auto v = reinterpret_cast<std::uintptr_t>(values_.data);
    const auto lo = std::min(k, v), hi = std::max(k, v);
    const std::uintptr_t gap_bytes = hi - lo;
    const bool same_strides =
        keys_.head_stride == values_.head_stride && keys_.token_stride == values_.token_stride &&
        (!paged_ || keys_.page_stride == values_.page_stride) && head_dim_ == head_dim_v_;
    if (same_strides && gap_bytes % sizeof(T) == 0 &&
        gap_bytes / sizeof(T) <= static_cast<std::uintptr_t>(std::numeric_limits<index_t>::max())) {
      const auto l = lattice(keys_);
      const std::array<detail::LatticeDim, 4> with_kv{
          {l[0], l[1], l[2], {2, static_cast<index_t>(gap_bytes / sizeof(T))}}};
      if (detail::nested_disjoint(with_kv, row_elements(Tensor::keys))) return;
    } else {
      const std::uintptr_t k_end = k + static_cast<std::uintptr_t>(detail::lattice_extent(
                                           lattice(keys_), row_elements(Tensor::keys))) *
                                           sizeof(T);
      const std::uintptr_t v_end = v + static_cast<std::uintptr_t>(detail::lattice_extent(
                                           lattice(values_), row_elements(Tensor::values))) *
                                           sizeof(T);
      if (k_end <= v || v_end <= k) return;
    }
    detail::fail("values.data", "memory disjoint from the keys", "an overlap with the keys");
  }

  static constexpr float largest_code() noexcept {
    if constexpr (std::same_as<T, fp8_e4m3>) return 448.0f;
    if constexpr (std::same_as<T, fp8_e5m2>) return 57344.0f;
    return 127.0f;
  }

  static std::size_t scale_bytes(const ScaleStorage& sc) noexcept {
    return sc.type == ScaleType::float32 ? sizeof(float) : sizeof(Eigen::half);
  }

  /// The lattice of one tensor's scales (heads, tokens[, pages]).
  std::array<detail::LatticeDim, 3> scale_lattice(const ScaleStorage& sc) const {
    if (!paged_) return {{{kv_heads_, sc.head_stride}, {tokens_, sc.token_stride}, {1, 0}}};
    return {{{kv_heads_, sc.head_stride},
             {pages_.page_size, sc.token_stride},
             {pages_.pool_pages, sc.page_stride}}};
  }

  void check_scales(const ScaleStorage& sc, const char* name) const {
    const std::string arg(name);
    detail::require(sc.head_stride >= 0 && sc.token_stride >= 0 && sc.page_stride >= 0,
                    arg + ".strides", "strides >= 0",
                    detail::cat(sc.head_stride, ", ", sc.token_stride, ", ", sc.page_stride));
    if (sc.data == nullptr) {
      if (sc.head_stride != 0 || sc.token_stride != 0 || sc.page_stride != 0)
        detail::fail(arg + ".data", "a pointer to the scales (strides were given)", "nullptr");
      return;
    }
    if (sc.per_token() && !paged_ && sc.page_stride != 0)
      detail::fail(arg + ".page_stride", "0 for a dense cache", sc.page_stride);
    if (sc.per_token() && paged_ && sc.page_stride == 0)
      detail::fail(arg + ".page_stride",
                   "a page stride (per-token scales of a paged cache follow its pages)", 0);
    if (sc.per_token() && !detail::nested_disjoint(scale_lattice(sc), 1))
      detail::fail(arg,
                   "a scale of its own for every (head, token) (per-token scales are moved "
                   "with their token)",
                   "head_stride=", sc.head_stride, ", token_stride=", sc.token_stride,
                   ", page_stride=", sc.page_stride);
  }

  Storage<T> keys_{};
  Storage<T> values_{};
  ScaleStorage key_scales_{};
  ScaleStorage value_scales_{};
  PageTable pages_{};
  bool paged_ = false;
  index_t kv_heads_ = 0, tokens_ = 0, head_dim_ = 0, head_dim_v_ = 0, layer_ = 0;
  std::span<const std::int64_t> positions_{};
};

}  // namespace kvevict
