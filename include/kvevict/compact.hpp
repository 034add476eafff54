// kvevict — KV-cache eviction policies for LLM inference.
// SPDX-License-Identifier: Apache-2.0
#pragma once

/// \file
/// \brief `compact`: moves the kept tokens of every head to the front, in place.

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <optional>
#include <span>
#include <string>
#include <vector>

#if defined(__SSE2__) || defined(_M_X64)
#include <immintrin.h>
#endif

#include "error.hpp"
#include "executor.hpp"
#include "kv_cache.hpp"
#include "selection.hpp"

namespace kvevict {

/// The result of a compaction: each head's new length and the original positions of the
/// tokens it kept, in their new order (token i of head h came from position
/// `kept_positions(h)[i]`), so an engine can keep RoPE positions or re-rotate keys to
/// cache-relative positions with `rope_shift`.
struct Compaction {
  std::vector<index_t> lengths;         ///< New token count per KV head.
  std::vector<index_t> offsets;         ///< CSR offsets into `positions`, kv_heads + 1.
  std::vector<std::int64_t> positions;  ///< Original positions of the kept tokens, per head.

  std::span<const std::int64_t> kept_positions(index_t head) const noexcept {
    const auto h = static_cast<std::size_t>(head);
    return {positions.data() + offsets[h], static_cast<std::size_t>(offsets[h + 1] - offsets[h])};
  }
};

/// How `compact` runs (see `compact`).
struct CompactOptions {
  const Executor* executor = nullptr;  ///< KV heads as parallel tasks (null: the calling thread)
  /// Moves of at least this many bytes use streaming stores; default: the last-level cache.
  std::optional<std::size_t> streaming_store_bytes = std::nullopt;
};

namespace detail {

/// The last-level cache of this machine in bytes: on Linux the largest `size` among
/// /sys/devices/system/cpu/cpu0/cache/index*/ (what the kernel reports for the CPU the process
/// runs on; glibc's sysconf can report a host's total in a VM), elsewhere — or when that cannot
/// be read — 32 MiB. Read once per process.
inline std::size_t last_level_cache_bytes() {
  static const std::size_t bytes = [] {
    std::size_t best = 0;
#if defined(__linux__)
    for (int i = 0; i < 8; ++i) {
      std::ifstream in("/sys/devices/system/cpu/cpu0/cache/index" + std::to_string(i) + "/size");
      std::size_t value = 0;
      char unit = 0;
      if (!(in >> value)) continue;
      in >> unit;
      const std::size_t scale = unit == 'K' ? 1024 : unit == 'M' ? 1024 * 1024 : 1;
      best = std::max(best, value * scale);
    }
#endif
    return best > 0 ? best : std::size_t{32} << 20;
  }();
  return bytes;
}

/// How far ahead of the copy the kept tokens' rows are prefetched, in bytes of rows: far enough
/// to cover the memory latency of the scattered sources a selection makes.
inline constexpr index_t prefetch_ahead_bytes = 4096;

#if defined(__SSE2__) || defined(_M_X64)
inline constexpr bool has_streaming_stores = true;

/// Copies one 64-byte line from `src` (any alignment) to a 64-byte aligned `dst`, bypassing the
/// caches. Every byte of the line is loaded before any is stored.
inline void stream_line(std::byte* dst, const std::byte* src) noexcept {
#if defined(__AVX512F__)
  _mm512_stream_si512(reinterpret_cast<__m512i*>(dst),
                      _mm512_loadu_si512(reinterpret_cast<const void*>(src)));
#elif defined(__AVX__)
  const __m256i a = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src));
  const __m256i b = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + 32));
  _mm256_stream_si256(reinterpret_cast<__m256i*>(dst), a);
  _mm256_stream_si256(reinterpret_cast<__m256i*>(dst + 32), b);
#else
  __m128i x[4];
  for (int i = 0; i < 4; ++i) x[i] = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src) + i);
  for (int i = 0; i < 4; ++i) _mm_stream_si128(reinterpret_cast<__m128i*>(dst) + i, x[i]);
#endif
}

/// Orders the streaming stores before whatever the thread does next (another thread that
/// synchronises with this one afterwards sees them).
inline void streaming_fence() noexcept {
  _mm_sfence();
}
#else
inline constexpr bool has_streaming_stores = false;
inline void stream_line(std::byte*, const std::byte*) noexcept {}
inline void streaming_fence() noexcept {}
#endif

/// Copies `bytes` from `src` to `dst < src` front to back in 64-byte chunks, each loaded before
/// it is stored, so overlapping ranges are safe in this direction (every store lands below the
/// bytes still to be read). Inline fixed-size copies become vector moves: no call and no
/// direction check per run (memmove's cost on the short runs a scattered selection makes). With
/// `stream`, the lines from dst's first 64-byte boundary on are written with streaming stores.
inline void copy_forward(std::byte* dst, const std::byte* src, std::size_t bytes,
                         bool stream) noexcept {
  std::size_t i = 0;
  if (has_streaming_stores && stream) {
    const auto misalign = static_cast<std::size_t>(reinterpret_cast<std::uintptr_t>(dst) % 64);
    const std::size_t head = std::min(bytes, misalign == 0 ? 0 : 64 - misalign);
    if (head > 0) std::memmove(dst, src, head);
    for (i = head; i + 64 <= bytes; i += 64) stream_line(dst + i, src + i);
  }
  for (; i + 64 <= bytes; i += 64) {
    std::byte chunk[64];
    std::memcpy(chunk, src + i, 64);
    std::memcpy(dst + i, chunk, 64);
  }
  if (i < bytes) std::memmove(dst + i, src + i, bytes - i);
}

/// Hints the cache to load [p, p + bytes) into the core's second-level cache, not the first:
/// prefetches into L1 occupy its few miss buffers, which a scattered copy needs for its stores
/// (`BM_Compact` in bench/ measures it). A no-op where the compiler has no prefetch builtin.
inline void prefetch(const void* p, index_t bytes) noexcept {
#if defined(__GNUC__) || defined(__clang__)
  // every line the range touches, also the last one of a range that does not start a line
  const auto first = reinterpret_cast<std::uintptr_t>(p) & ~std::uintptr_t{63};
  const auto end = reinterpret_cast<std::uintptr_t>(p) + static_cast<std::uintptr_t>(bytes);
  for (std::uintptr_t a = first; a < end; a += 64)
    __builtin_prefetch(reinterpret_cast<const void*>(a), /*rw=*/0, /*locality=*/1);
#else
  (void)p;
  (void)bytes;
#endif
}

/// Copies `count` tokens of `width` elements from logical token `src` to `dst` (dst ≤ src) of
/// one head, splitting at page boundaries; contiguous chunks move with one forward copy.
template <Element T>
void move_tokens(const KVCache<T>& kv, Tensor which, index_t head, index_t dst, index_t src,
                 index_t count, index_t width, bool stream) {
  const Storage<T>& s = which == Tensor::keys ? kv.key_storage() : kv.value_storage();
  const bool contiguous = s.token_stride == width;
  const index_t page = kv.paged() ? kv.page_table().page_size : count;
  while (count > 0) {
    index_t chunk = count;
    if (kv.paged()) chunk = std::min({count, page - dst % page, page - src % page});
    T* to = kv.span(which, head, dst).data();
    const T* from = kv.span(which, head, src).data();
    if (contiguous) {
      copy_forward(reinterpret_cast<std::byte*>(to), reinterpret_cast<const std::byte*>(from),
                   static_cast<std::size_t>(chunk * width) * sizeof(T), stream);
    } else {  // distinct tokens of one head never overlap (validated by the view)
      for (index_t i = 0; i < chunk; ++i)
        std::memcpy(to + i * s.token_stride, from + i * s.token_stride,
                    static_cast<std::size_t>(width) * sizeof(T));
    }
    dst += chunk;
    src += chunk;
    count -= chunk;
  }
}

/// Moves `kept` (ascending) of one head to the front: runs of consecutive sources move
/// together, and the unchanged prefix is not touched. Every kept token's row is prefetched
/// `prefetch_ahead_bytes` of rows before it is copied (the sources of a scattered selection are a
/// forward stream with gaps that hardware prefetchers follow poorly).
template <Element T>
void move_kept(const KVCache<T>& kv, Tensor which, index_t head, std::span<const token_t> kept,
               index_t width, bool stream) {
  const auto n = static_cast<index_t>(kept.size());
  const auto row_bytes = width * static_cast<index_t>(sizeof(T));
  const index_t ahead =
      std::max<index_t>(4, prefetch_ahead_bytes / std::max<index_t>(1, row_bytes));
  const auto at = [&](index_t i) { return kept[static_cast<std::size_t>(i)]; };
  index_t i = 0;
  while (i < n && at(i) == i) ++i;
  index_t fetched = i;  // rows of kept[i, fetched) have been prefetched
  // Rows one after another (not paged, no padding): plain offsets from the head's first row
  // instead of the view's per-token lookup.
  const Storage<T>& s = which == Tensor::keys ? kv.key_storage() : kv.value_storage();
  const bool plain = !kv.paged() && s.token_stride == width && i < n;
  T* const base = plain ? kv.span(which, head, 0).data() : nullptr;
  const auto row = [&](index_t t) {
    return reinterpret_cast<std::byte*>(plain ? base + t * width : kv.span(which, head, t).data());
  };
  while (i < n) {
    index_t j = i + 1;
    while (j < n && at(j) == at(j - 1) + 1) ++j;
    for (const index_t to = std::min(n, j + ahead); fetched < to; ++fetched)
      prefetch(row(at(fetched)), row_bytes);
    if (plain)
      copy_forward(row(i), row(at(i)), static_cast<std::size_t>((j - i) * row_bytes), stream);
    else
      move_tokens(kv, which, head, i, at(i), j - i, width, stream);
    i = j;
  }
}

/// Moves the per-token scales of `which` with their tokens (a no-op for shared scales): scale
/// i of head h becomes scale kept[i], front to back (kept[i] ≥ i, so nothing is overwritten
/// before it is read).
template <Element T>
void move_scales(const KVCache<T>& kv, Tensor which, const Selection& sel) {
  const ScaleStorage& sc = kv.scales(which);
  if (sc.data == nullptr || !sc.per_token()) return;
  const auto move = [&](auto* p) {
    for (index_t h = 0; h < kv.kv_heads(); ++h) {
      const auto kept = sel.kept(h);
      for (std::size_t i = 0; i < kept.size(); ++i)
        if (kept[i] != static_cast<token_t>(i))
          p[kv.scale_offset(sc, h, static_cast<index_t>(i))] = p[kv.scale_offset(sc, h, kept[i])];
    }
  };
  if (sc.type == ScaleType::float32)
    move(static_cast<float*>(sc.data));
  else
    move(static_cast<Eigen::half*>(sc.data));
}

}  // namespace detail

/// Moves the kept tokens of each KV head to the front of that head, in place: after the call,
/// token i of head h holds what token `sel.kept(h)[i]` held, bit for bit, for keys and values.
///
/// Stable and exact for every layout (dense, strided, paged) and format: quantized rows move as
/// their raw blocks, and per-token fp8 / int8 scales move with their tokens. Only the spans of
/// tokens 0 … length − 1 of each head are written; memory beyond the new length, padding and other
/// heads' spans are untouched. A paged cache never writes its `read_only_pages` (shared prefix
/// pages): a selection that would is rejected before anything is written.
///
/// Complexity O(kept · head_dim) copies, one forward copy per maximal run of consecutive kept
/// tokens (a shared selection over NHD rows with adjacent heads moves whole token rows).
/// Allocation: only `out`'s vectors, which keep their capacity when `out` is reused. Throws
/// `kvevict::error` for a selection that does not match the view (heads, token count, order,
/// range).
///
/// Threads: with `options.executor`, KV heads move as parallel tasks (each head's spans are its
/// own: the view guarantees no two (head, token) spans overlap); the memory afterwards is
/// identical to a serial run's. A shared selection over NHD rows moves whole rows on the calling
/// thread.
///
/// Stores: a compaction that moves at least `options.streaming_store_bytes` (keys and values, all
/// heads) writes with streaming (non-temporal) stores where the target has them: the moved rows
/// are then larger than the caches, and an ordinary store would first read each destination line
/// from memory. The default threshold is this machine's last-level cache
/// (`detail::last_level_cache_bytes()`); 0 streams every compaction, `SIZE_MAX` none. The bytes
/// written are the same either way.
template <Element T>
void compact(const KVCache<T>& kv, const Selection& sel, Compaction& out,
             const CompactOptions& options) {
  const Executor* exec = options.executor;
  sel.validate();
  if (sel.kv_heads() != kv.kv_heads())
    detail::fail("selection", detail::cat("a selection for kv_heads (", kv.kv_heads(), ")"),
                 sel.kv_heads(), " heads");
  if (sel.tokens() != kv.tokens())
    detail::fail("selection", detail::cat("a selection made for tokens (", kv.tokens(), ")"),
                 sel.tokens(), " tokens");
  const index_t heads = kv.kv_heads();
  if (kv.paged() && kv.page_table().read_only_pages > 0) {
    const index_t first_writable = kv.page_table().read_only_pages * kv.page_table().page_size;
    for (index_t h = 0; h < sel.stored_heads(); ++h) {
      const auto k = sel.kept(h);
      for (std::size_t i = 0; i < k.size() && static_cast<index_t>(i) < first_writable; ++i)
        if (k[i] != static_cast<token_t>(i))
          detail::fail("selection",
                       detail::cat("no write into the read-only pages (the first ",
                                   kv.page_table().read_only_pages, ")"),
                       "head ", h, " would overwrite token ", i);
    }
  }

  // The result first: the only step that allocates, so a bad_alloc leaves the memory as it was.
  out.lengths.resize(static_cast<std::size_t>(heads));
  out.offsets.resize(static_cast<std::size_t>(heads + 1));
  out.offsets[0] = 0;
  for (index_t h = 0; h < heads; ++h) {
    out.lengths[static_cast<std::size_t>(h)] = sel.size(h);
    out.offsets[static_cast<std::size_t>(h + 1)] =
        out.offsets[static_cast<std::size_t>(h)] + sel.size(h);
  }
  out.positions.resize(static_cast<std::size_t>(out.offsets.back()));
  for (index_t h = 0; h < heads; ++h) {
    std::int64_t* p = out.positions.data() + out.offsets[static_cast<std::size_t>(h)];
    for (token_t t : sel.kept(h)) *p++ = kv.position(t);
  }

  // A shared selection over rows where the heads of one token are adjacent (NHD) moves whole
  // rows: one memmove per run instead of one per head.
  const Storage<T>& ks = kv.key_storage();
  const Storage<T>& vs = kv.value_storage();
  const index_t rk = kv.row_elements(Tensor::keys), rv = kv.row_elements(Tensor::values);
  const bool rows = sel.shared() && heads > 1 && ks.head_stride == rk && vs.head_stride == rv;
  // Streaming stores when the kept rows are far larger than the caches.
  std::size_t moved = 0;
  for (index_t h = 0; h < sel.stored_heads(); ++h)
    moved += static_cast<std::size_t>(sel.size(h)) * static_cast<std::size_t>(rk + rv);
  if (sel.shared()) moved *= static_cast<std::size_t>(heads);
  const bool stream =
      moved * sizeof(T) >= options.streaming_store_bytes.value_or(detail::last_level_cache_bytes());
  if (rows) {
    detail::move_kept(kv, Tensor::keys, 0, sel.kept(0), heads * rk, stream);
    detail::move_kept(kv, Tensor::values, 0, sel.kept(0), heads * rv, stream);
    if (stream) detail::streaming_fence();
  } else {
    detail::run_tasks(exec, heads, [&](index_t h, index_t) {
      detail::move_kept(kv, Tensor::keys, h, sel.kept(h), rk, stream);
      detail::move_kept(kv, Tensor::values, h, sel.kept(h), rv, stream);
      if (stream) detail::streaming_fence();
    });
  }
  if constexpr (has_external_scale<T>)
    for (const Tensor which : {Tensor::keys, Tensor::values}) detail::move_scales(kv, which, sel);
}

/// `compact` on the calling thread, or with the heads as tasks on `exec`.
template <Element T>
void compact(const KVCache<T>& kv, const Selection& sel, Compaction& out,
             const Executor* exec = nullptr) {
  compact(kv, sel, out, CompactOptions{.executor = exec});
}

/// `compact` returning a fresh `Compaction` (allocates it).
template <Element T>
Compaction compact(const KVCache<T>& kv, const Selection& sel) {
  Compaction out;
  compact(kv, sel, out);
  return out;
}

}  // namespace kvevict
