// kvevict — KV-cache eviction policies for LLM inference.
// SPDX-License-Identifier: Apache-2.0
#pragma once

/// \file
/// \brief Driving a sequence's `Stream` from the query instead of engine-computed probabilities,
/// and `StreamDriver`, which writes each new token's K/V where the stream says.

#include <algorithm>
#include <cmath>
#include <limits>

#include "error.hpp"
#include "executor.hpp"
#include "kernels/softmax.hpp"
#include "kv_cache.hpp"
#include "policy.hpp"
#include "query_window.hpp"
#include "workspace.hpp"

namespace kvevict {

/// Computes the attention of the new token's query over the stream's live slots —
/// `softmax(q · kᵀ / √d)` in fp32 per query head, free slots masked to 0 — into `rows`
/// (q_heads · slots floats), and returns them as `AttentionRows` for `stream.observe`.
///
/// `kv` views the engine's slots (`tokens == stream.slots()`); `query` holds one query per query
/// head (`window == 1`). Complexity O(q_heads · slots · head_dim), the cost of the attention
/// step itself. Scratch: 2 · head_dim floats from `ws` (no allocation once warm). Throws
/// `kvevict::error` for mismatched shapes or a non-finite logit (NaN/inf in the keys or query).
template <SequenceStream S, Element T>
AttentionRows attention_rows(const S& stream, const KVCache<T>& kv,
                             const QueryWindow<query_type<T>>& query, std::span<float> rows,
                             Workspace& ws) {
  const index_t slots = stream.slots();
  if (kv.tokens() != slots)
    detail::fail("kv.tokens", detail::cat("the stream's slots (", slots, ")"), kv.tokens());
  if (query.window() != 1)
    detail::fail("queries.window", "1 (the new token's query)", query.window());
  const index_t g = check_window(kv, query);
  const index_t d = kv.head_dim(), q_heads = query.q_heads();
  if (static_cast<index_t>(rows.size()) != q_heads * slots)
    detail::fail("rows", detail::cat("q_heads · slots (", q_heads * slots, ") floats"),
                 rows.size());
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));

  // One query head's row, with scratch from `scratch`; rows are disjoint, so heads may run as
  // parallel tasks on the workspace's executor with identical results.
  const auto head = [&](index_t h, Workspace& scratch) {
    Workspace::Frame frame(scratch);
    const auto q = scratch.take<float>(d);
    const auto k = scratch.take<float>(d);
    to_float(query.query(h, 0).data(), q.data(), d);
    const index_t kvh = h / g;
    float* row = rows.data() + h * slots;
    for (index_t s = 0; s < slots; ++s) {
      if (stream.position(kvh, s) < 0) {
        row[s] = -std::numeric_limits<float>::infinity();
        continue;
      }
      kv.read(Tensor::keys, kvh, s, k.data());
      row[s] = kernels::dot(q.data(), k.data(), d) * scale;
    }
    if (!kernels::softmax_inplace({row, static_cast<std::size_t>(slots)}))
      detail::fail("queries", "finite attention logits (finite keys and query)",
                   "a NaN or inf for query head ", h);
  };
  const Executor* exec = ws.executor();
  if (exec == nullptr || exec->workers() <= 1) {
    for (index_t h = 0; h < q_heads; ++h) head(h, ws);
  } else {
    ws.prepare_workers(exec->workers());
    detail::run_tasks(exec, q_heads, [&](index_t h, index_t w) { head(h, ws.worker(w)); });
  }
  return {rows.data(), q_heads, slots, slots};
}

/// `attention_rows` then `stream.observe`: drives a stream from the query, for engines that do
/// not hand their attention probabilities out. Scratch: q_heads · slots + 2 · head_dim floats
/// from `ws`.
template <SequenceStream S, Element T>
Evictions observe_query(S& stream, const KVCache<T>& kv, const QueryWindow<query_type<T>>& query,
                        Workspace& ws) {
  Workspace::Frame frame(ws);
  const auto rows = ws.take<float>(query.q_heads() * stream.slots());
  return stream.observe(attention_rows(stream, kv, query, rows, ws));
}

/// Drives a sequence's stream over its slots in an engine's memory: append the new
/// token's key and value where the stream says, feed the step's attention (the engine's
/// probabilities, or the query), and report the slots that left. Owns nothing — the stream,
/// the memory and the workspace are the caller's — and allocates nothing per step.
///
/// Eviction moves no data: an evicted slot is simply free, and the stream hands it to the next
/// `append`, so the engine's cache never holds more than `stream.slots()` tokens. An engine's
/// attention kernel must skip free slots; `live(head, slot)` (or `stream.position(head, slot)
/// >= 0`) says which are live.
///
/// **Example** (vLLM-style paged cache; see examples/paged_streaming.cpp):
/// \code
/// auto seq = kvevict::H2O().start({.kv_heads = 8, .q_heads = 32, .budget = 1024});
/// kvevict::KVCache<Eigen::half> slots(K, V, {.kv_heads = 8, .tokens = seq.slots(),
///                                     .head_dim = 128}, {block_table, 16, pool_blocks});
/// kvevict::StreamDriver driver(seq, slots);
/// for (std::int64_t pos = 0; generating(); ++pos) {
///   driver.append(pos, new_keys, new_values);   // [kv_heads][head_dim] each
///   driver.observe(query, ws);                  // or driver.observe(engine_probabilities)
/// }
/// \endcode
///
/// Quantized caches: the driver writes float rows only (`FloatElement`); an engine whose slots
/// are quantized writes its own rows (it quantizes them anyway) and drives the stream with
/// `Stream::append` and `observe` (or `observe_query`, which reads quantized keys).
template <SequenceStream S, FloatElement T>
class StreamDriver {
 public:
  /// `slots` views the sequence's slot memory: `slots.tokens() == stream.slots()`.
  StreamDriver(S& stream, const KVCache<T>& slots) : stream_(stream), slots_(slots) {
    if (slots.tokens() != stream.slots())
      detail::fail("slots.tokens", detail::cat("the stream's slots (", stream.slots(), ")"),
                   slots.tokens());
  }

  /// Writes the new token's keys (`kv_heads · head_dim` elements, head-major) and values
  /// (`kv_heads · head_dim_v`) into the slots the stream gives, and returns those slots.
  std::span<const token_t> append(std::int64_t position, std::span<const T> keys,
                                  std::span<const T> values) {
    const index_t heads = slots_.kv_heads(), d = slots_.head_dim(), dv = slots_.head_dim_v();
    if (static_cast<index_t>(keys.size()) != heads * d)
      detail::fail("keys", detail::cat("kv_heads · head_dim (", heads * d, ") elements"),
                   keys.size());
    if (static_cast<index_t>(values.size()) != heads * dv)
      detail::fail("values", detail::cat("kv_heads · head_dim_v (", heads * dv, ") elements"),
                   values.size());
    const auto slot = stream_.append(position);
    for (index_t h = 0; h < heads; ++h) {
      const auto s = slot[static_cast<std::size_t>(h)];
      std::copy_n(keys.data() + h * d, d, slots_.key(h, s).data());
      std::copy_n(values.data() + h * dv, dv, slots_.value(h, s).data());
    }
    return slot;
  }

  /// The step's attention as the engine computed it (over the slots, the new one included).
  Evictions observe(const AttentionRows& rows) { return stream_.observe(rows); }

  /// The step's attention computed here from the new token's query (`window == 1`).
  Evictions observe(const QueryWindow<query_type<T>>& query, Workspace& ws) {
    return observe_query(stream_, slots_, query, ws);
  }

  /// True when `slot` of `head` holds a token.
  bool live(index_t head, index_t slot) const noexcept { return stream_.position(head, slot) >= 0; }

 private:
  S& stream_;
  KVCache<T> slots_;
};

}  // namespace kvevict
