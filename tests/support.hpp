// Test helpers: caches in every layout over owned memory, with the same logical content.
// SPDX-License-Identifier: Apache-2.0
#pragma once

#include <kvevict/kvevict.hpp>

#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <numeric>
#include <optional>
#include <random>
#include <string>
#include <vector>

namespace kvevict::test {

/// Every memory layout the view supports, as engines use them.
enum class Layout {
  hnd,          ///< dense [h][capacity][d]
  nhd,          ///< dense [capacity][h][d]
  padded,       ///< dense, strides with padding between tokens and heads
  paged_hnd,    ///< pool [pages][h][page][d], pages in order
  paged_nhd,    ///< pool [pages][page][h][d], pages shuffled
  vllm_blocks,  ///< one pool (blocks, 2, page, h, d): K and V interleaved per block
  cells,        ///< llama.cpp cells out of position order: a gather (page_size 1)
};

inline const char* layout_name(Layout l) {
  switch (l) {
    case Layout::hnd:
      return "hnd";
    case Layout::nhd:
      return "nhd";
    case Layout::padded:
      return "padded";
    case Layout::paged_hnd:
      return "paged_hnd";
    case Layout::paged_nhd:
      return "paged_nhd";
    case Layout::vllm_blocks:
      return "vllm_blocks";
    case Layout::cells:
      return "cells";
  }
  return "?";
}

inline constexpr Layout all_layouts[] = {Layout::hnd,       Layout::nhd,       Layout::padded,
                                         Layout::paged_hnd, Layout::paged_nhd, Layout::vllm_blocks,
                                         Layout::cells};

/// Raw bits of an element, for bit-exact comparisons.
template <class T>
auto bits(T x) {
  if constexpr (QuantizedElement<T>)
    return std::bit_cast<std::array<std::uint8_t, sizeof(T)>>(x);
  else if constexpr (sizeof(T) == 2)
    return std::bit_cast<std::uint16_t>(x);
  else
    return std::bit_cast<std::uint32_t>(x);
}

/// An element from a number: `from_float` for float types; for quantized ones raw bytes that
/// follow `x` (any bit pattern is a valid element to move; it need not decode to `x`).
template <class T>
T element_from(float x) {
  if constexpr (QuantizedElement<T>) {
    std::array<std::uint8_t, sizeof(T)> b{};
    const auto seed = std::bit_cast<std::uint32_t>(x);
    for (std::size_t i = 0; i < b.size(); ++i)
      b[i] = static_cast<std::uint8_t>((seed >> ((i % 4) * 8)) + 37 * i);
    return std::bit_cast<T>(b);
  } else {
    return from_float<T>(x);
  }
}

/// `count` values from N(0, scale²), seeded.
inline std::vector<float> normals(std::size_t count, std::uint64_t seed, float scale = 1.0f) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, scale);
  std::vector<float> out(count);
  for (float& x : out) x = normal(rng);
  return out;
}

/// The element whose raw bits are `b` (inverse of `bits`).
template <class T, class B>
T from_bits(B b) {
  return std::bit_cast<T>(b);
}

/// A cache over memory it owns. Memory outside the logical spans holds a sentinel pattern.
template <class T>
struct OwnedCache {
  std::vector<T> kmem, vmem;  ///< vllm_blocks keeps both in kmem.
  std::vector<std::int32_t> pages;
  std::optional<KVCache<T>> view;
  index_t heads = 0, tokens = 0, dim = 0, dim_v = 0;

  KVCache<T>& kv() { return *view; }
  const T* kbase() const { return kmem.data(); }
};

/// Deterministic logical content: element (h, t, i) of K and V drawn from N(0, 1) by seed.
template <class T>
void fill_logical(KVCache<T>& kv, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal;
  for (index_t h = 0; h < kv.kv_heads(); ++h)
    for (index_t t = 0; t < kv.tokens(); ++t) {
      for (T& x : kv.key(h, t)) x = from_float<T>(normal(rng));
      for (T& x : kv.value(h, t)) x = from_float<T>(normal(rng));
    }
}

/// Builds a cache of `heads` × `tokens` in `layout`, head_dim `dim` (values `dim_v`), filled
/// with `fill_logical(seed)`; every element outside the logical spans is a sentinel (1234.5).
template <class T>
OwnedCache<T> make_cache(Layout layout, index_t heads, index_t tokens, index_t dim, index_t dim_v,
                         std::uint64_t seed, index_t page = 4) {
  OwnedCache<T> c;
  c.heads = heads;
  c.tokens = tokens;
  c.dim = dim;
  c.dim_v = dim_v;
  const T sentinel = from_float<T>(1234.5f);
  const Shape shape{heads, tokens, dim, dim_v};
  const index_t n_pages = (tokens + page - 1) / page;
  const index_t pool = n_pages + 3;  // spare pages, not part of the sequence
  auto shuffled_pages = [&](std::uint64_t s, index_t count, index_t pool_pages) {
    std::vector<std::int32_t> ids(static_cast<std::size_t>(pool_pages));
    std::iota(ids.begin(), ids.end(), 0);
    std::mt19937_64 rng(s);
    std::shuffle(ids.begin(), ids.end(), rng);
    ids.resize(static_cast<std::size_t>(count));
    return ids;
  };
  switch (layout) {
    case Layout::hnd: {
      const index_t cap = tokens + 5;
      c.kmem.assign(static_cast<std::size_t>(heads * cap * dim), sentinel);
      c.vmem.assign(static_cast<std::size_t>(heads * cap * dim_v), sentinel);
      c.view.emplace(Storage<T>::hnd(std::span(c.kmem), cap, dim),
                     Storage<T>::hnd(std::span(c.vmem), cap, dim_v), shape);
      break;
    }
    case Layout::nhd: {
      const index_t cap = tokens + 3;
      c.kmem.assign(static_cast<std::size_t>(cap * heads * dim), sentinel);
      c.vmem.assign(static_cast<std::size_t>(cap * heads * dim_v), sentinel);
      c.view.emplace(Storage<T>::nhd(std::span(c.kmem), heads, dim),
                     Storage<T>::nhd(std::span(c.vmem), heads, dim_v), shape);
      break;
    }
    case Layout::padded: {  // token rows padded by 3, heads padded by 7 (a slice of a bigger
                            // tensor)
      const index_t ts_k = heads * dim + 3, ts_v = heads * dim_v + 3;
      c.kmem.assign(static_cast<std::size_t>(tokens * ts_k + 7), sentinel);
      c.vmem.assign(static_cast<std::size_t>(tokens * ts_v + 7), sentinel);
      c.view.emplace(
          Storage<T>::strided(std::span(c.kmem).subspan(7), {.head = dim, .token = ts_k}),
          Storage<T>::strided(std::span(c.vmem).subspan(7), {.head = dim_v, .token = ts_v}), shape);
      break;
    }
    case Layout::paged_hnd:
    case Layout::paged_nhd: {
      c.pages = layout == Layout::paged_hnd ? shuffled_pages(0, n_pages, n_pages)
                                            : shuffled_pages(seed + 17, n_pages, pool);
      if (layout == Layout::paged_hnd) std::sort(c.pages.begin(), c.pages.end());
      c.kmem.assign(static_cast<std::size_t>(pool * page * heads * dim), sentinel);
      c.vmem.assign(static_cast<std::size_t>(pool * page * heads * dim_v), sentinel);
      const PageTable table{c.pages, page, pool, 0};
      if (layout == Layout::paged_hnd)
        c.view.emplace(Storage<T>::paged_hnd(std::span(c.kmem), page, heads, dim),
                       Storage<T>::paged_hnd(std::span(c.vmem), page, heads, dim_v), shape, table);
      else
        c.view.emplace(Storage<T>::paged_nhd(std::span(c.kmem), page, heads, dim),
                       Storage<T>::paged_nhd(std::span(c.vmem), page, heads, dim_v), shape, table);
      break;
    }
    case Layout::vllm_blocks: {  // (blocks, 2, page, h, d): requires dim_v == dim
      c.pages = shuffled_pages(seed + 29, n_pages, pool);
      const index_t block = page * heads * dim;
      c.kmem.assign(static_cast<std::size_t>(pool * 2 * block), sentinel);
      const PageTable table{c.pages, page, pool, 0};
      c.view.emplace(Storage<T>::paged(std::span(c.kmem),
                                       {.head = dim, .token = heads * dim, .page = 2 * block}),
                     Storage<T>::paged(std::span(c.kmem).subspan(static_cast<std::size_t>(block)),
                                       {.head = dim, .token = heads * dim, .page = 2 * block}),
                     shape, table);
      break;
    }
    case Layout::cells: {  // llama.cpp: cells [kv_size][h][d], the sequence scattered among them
      const index_t kv_size = tokens + 6;
      c.pages = shuffled_pages(seed + 31, tokens, kv_size);
      c.kmem.assign(static_cast<std::size_t>(kv_size * heads * dim), sentinel);
      c.vmem.assign(static_cast<std::size_t>(kv_size * heads * dim_v), sentinel);
      const PageTable table{c.pages, 1, kv_size, 0};
      c.view.emplace(
          Storage<T>::paged(std::span(c.kmem), {.head = dim, .token = 0, .page = heads * dim}),
          Storage<T>::paged(std::span(c.vmem), {.head = dim_v, .token = 0, .page = heads * dim_v}),
          shape, table);
      break;
    }
  }
  fill_logical(*c.view, seed);
  return c;
}

/// The logical tensor of a view, as bits: [h][t][i] for K then V.
template <class T>
auto snapshot(const KVCache<T>& kv) {
  std::vector<decltype(bits(T{}))> out;
  for (index_t h = 0; h < kv.kv_heads(); ++h)
    for (index_t t = 0; t < kv.tokens(); ++t) {
      for (T x : kv.key(h, t)) out.push_back(bits(x));
      for (T x : kv.value(h, t)) out.push_back(bits(x));
    }
  return out;
}

/// Naive reference: out[h][j] = reduce_i c_i A_h[i, j], all in double, from float inputs.
inline std::vector<double> reference_attention(const KVCache<float>& kv,
                                               const std::vector<float>& q, index_t q_heads,
                                               index_t w, WindowReduce reduce, bool causal,
                                               const std::vector<float>& weights) {
  const index_t n = kv.tokens(), d = kv.head_dim(), g = q_heads / kv.kv_heads();
  std::vector<double> out(static_cast<std::size_t>(q_heads * n), 0.0);
  std::vector<double> logit(static_cast<std::size_t>(n));
  for (index_t h = 0; h < q_heads; ++h)
    for (index_t i = 0; i < w; ++i) {
      const index_t visible = causal ? n - w + i + 1 : n;
      double max = -INFINITY;
      for (index_t j = 0; j < visible; ++j) {
        double dot = 0;
        for (index_t e = 0; e < d; ++e)
          dot += static_cast<double>(q[static_cast<std::size_t>((h * w + i) * d + e)]) *
                 kv.key(h / g, j)[static_cast<std::size_t>(e)];
        logit[static_cast<std::size_t>(j)] = dot / std::sqrt(static_cast<double>(d));
        max = std::max(max, logit[static_cast<std::size_t>(j)]);
      }
      double sum = 0;
      for (index_t j = 0; j < visible; ++j)
        sum += std::exp(logit[static_cast<std::size_t>(j)] - max);
      const double c = weights.empty() ? 1.0 : weights[static_cast<std::size_t>(i)];
      for (index_t j = 0; j < n; ++j) {
        const double p =
            j < visible ? std::exp(logit[static_cast<std::size_t>(j)] - max) / sum : 0.0;
        double& o = out[static_cast<std::size_t>(h * n + j)];
        if (reduce == WindowReduce::max)
          o = std::max(o, c * p);
        else
          o += reduce == WindowReduce::mean ? c * p / static_cast<double>(w) : c * p;
      }
    }
  return out;
}

/// Expects `fn` to throw kvevict::error with exactly `message`.
template <class F>
void expect_error(F&& fn, const std::string& message) {
  try {
    fn();
    ADD_FAILURE() << "no kvevict::error; expected: " << message;
  } catch (const kvevict::error& e) {
    EXPECT_EQ(std::string(e.what()), message);
  }
}

}  // namespace kvevict::test
