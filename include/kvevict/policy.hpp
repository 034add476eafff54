// kvevict — KV-cache eviction policies for LLM inference.
// SPDX-License-Identifier: Apache-2.0
#pragma once

/// \file
/// \brief The policy contract: `EvictionPolicy` (one-shot, e.g. at prefill) and
/// `StreamingPolicy` (per decode step), the small types they exchange with an engine, and
/// `OneShot`, the score → choose pipeline every one-shot policy runs.
///
/// **One-shot** — select once from the cache and a window of recent queries:
/// \code
/// kvevict::SnapKV policy({.window = 32});           // parameters: a Params aggregate
/// kvevict::Workspace ws;                            // reused across layers and calls
/// kvevict::Selection keep;                          // reused too
/// for (int layer = 0; layer < n_layers; ++layer) {
///   kvevict::KVCache<Eigen::half> kv = engine_view(layer);   // wraps engine memory
///   kvevict::QueryWindow<Eigen::half> q = engine_queries(layer);
///   policy.select(kv, q, kvevict::Budget::ratio(0.2), keep, ws);
///   kvevict::compact(kv, keep);                     // kept tokens to the front, in place
/// }
/// \endcode
/// The same in two steps, for an engine that scores itself or inspects the scores:
/// `kvevict::Scores s = policy.score(kv, q, ws); policy.choose(s, budget, keep, ws);`.
///
/// **Streaming** — `start` returns the sequence's state; the policy object stays parameters:
/// \code
/// const kvevict::H2O h2o;                           // shareable by every sequence and thread
/// auto seq = h2o.start({.kv_heads = 8, .q_heads = 32, .budget = 1024});  // allocates
/// std::vector<float> probs(32 * seq.slots());       // engine's attention row per query head
/// for (std::int64_t pos = 0; generating(); ++pos) {
///   std::span<const kvevict::token_t> slot = seq.append(pos);  // where K/V of pos go, per head
///   write_kv(slot);                                 // the engine stores the new token there
///   attend(seq.slots(), probs);                     // softmax over the live slots
///   kvevict::Evictions out = seq.observe({probs.data(), 32, seq.slots(), seq.slots()});
///   for (kvevict::index_t h = 0; h < 8; ++h)        // slots freed this step (reused later)
///     for (kvevict::token_t s : out.of(h)) forget(h, s);
/// }
/// \endcode

#include <concepts>
#include <cstdint>
#include <span>
#include <string_view>

#include "budget.hpp"
#include "element.hpp"
#include "error.hpp"
#include "kv_cache.hpp"
#include "metadata.hpp"
#include "query_window.hpp"
#include "scores.hpp"
#include "selection.hpp"
#include "workspace.hpp"

namespace kvevict {

/// The attention probabilities of one decode step's query, for every query head, over the
/// stream's slots (the new token's slot included): `data[h * head_stride + s]` is the weight
/// query head h gives slot s. Entries of free slots are ignored. Computed in fp32 by the engine
/// (or by `observe_query`).
struct AttentionRows {
  const float* data = nullptr;
  index_t q_heads = 0;
  index_t slots = 0;        ///< Columns: the stream's `slots()`.
  index_t head_stride = 0;  ///< Elements between the rows of consecutive query heads.

  float at(index_t head, index_t slot) const noexcept { return data[head * head_stride + slot]; }
};

/// What a streaming policy is started with.
struct StreamConfig {
  index_t kv_heads = 0;
  index_t q_heads = 0;   ///< A multiple of kv_heads (GQA).
  index_t budget = 0;    ///< Tokens kept per KV head; 0 for budget-free policies (CORM).
  index_t capacity = 0;  ///< Slots the engine offers; 0 = what the policy needs (budget + 1).
};

/// The slots a step evicted, per KV head (`shared`: one list for all heads). A view of memory
/// the stream owns; valid until its next `append`/`observe`.
struct Evictions {
  bool shared = true;
  std::span<const index_t> offsets;  ///< CSR offsets, stored heads + 1.
  std::span<const token_t> slots;

  /// Slots KV head `head` evicted this step (empty if none).
  std::span<const token_t> of(index_t head) const noexcept {
    const std::size_t h = shared ? 0 : static_cast<std::size_t>(head);
    if (offsets.empty()) return {};
    return slots.subspan(static_cast<std::size_t>(offsets[h]),
                         static_cast<std::size_t>(offsets[h + 1] - offsets[h]));
  }
  bool empty() const noexcept { return slots.empty(); }
};

// -- Named requirements, combined below so that a failed constraint names what is missing. -------

/// `P::name`: the policy's command-line name.
template <class P>
concept named_policy = requires {
  { P::name } -> std::convertible_to<std::string_view>;
};

/// `p.select(kv, queries, budget, out, ws)` on a const policy: one-shot selection.
template <class P, class T>
concept selects_from_window = requires(const P& p, const KVCache<T>& kv,
                                       const QueryWindow<query_type<T>>& q, Budget b,
                                       Selection& out, Workspace& ws) {
  { p.select(kv, q, b, out, ws) } -> std::same_as<void>;
};

/// `s.append(position)`: the slot per KV head where the engine writes the new token.
template <class S>
concept appends_tokens = requires(S& s, std::int64_t position) {
  { s.append(position) } -> std::same_as<std::span<const token_t>>;
};

/// `s.observe(rows)`: the new token's attention; returns the slots evicted this step.
template <class S>
concept observes_attention = requires(S& s, const AttentionRows& rows) {
  { s.observe(rows) } -> std::same_as<Evictions>;
};

/// `slots()`, `size(head)`, `position(head, slot)` (−1 for a free slot): what the engine (and
/// `observe_query`) needs to know which slots are live.
template <class S>
concept reports_slots = requires(const S& s, index_t i) {
  { s.slots() } -> std::same_as<index_t>;
  { s.size(i) } -> std::same_as<index_t>;
  { s.position(i, i) } -> std::same_as<std::int64_t>;
};

/// One sequence's decode-time state (what a streaming policy's `start` returns): append,
/// observe, and which slots are live. No allocation after it is made; one thread at a time;
/// a call that throws changes nothing.
template <class S>
concept SequenceStream = appends_tokens<S> && observes_attention<S> && reports_slots<S>;

/// `p.start(config)` on a const policy: a new sequence's state (the only call that allocates).
template <class P>
concept starts_sequences = requires(const P& p, const StreamConfig& c) {
  { p.start(c) } -> SequenceStream;
};

/// A one-shot policy: selects, from a cache view and the window of the last queries, the tokens
/// each KV head keeps under a budget. `select` is const: a policy object holds only parameters,
/// so one object may serve many threads (each with its own `Selection` and `Workspace`). A
/// `select` that throws leaves `out` incomplete (`detail::ClearOnError`), so `compact` rejects it.
template <class P, class T>
concept EvictionPolicy = Element<T> && named_policy<P> && selects_from_window<P, T>;

/// A decode-time policy: parameters only; `start` returns the per-sequence `Stream`, which is
/// told of each new token and the attention its query produced, and says which slots to evict.
template <class P>
concept StreamingPolicy = named_policy<P> && starts_sequences<P>;

/// The name of a policy type's object, or of an `AnyPolicy` (its `name()`).
template <class P>
std::string_view name_of_policy(const P& p) {
  if constexpr (requires { p.name(); })
    return p.name();
  else
    return P::name;
}

/// The metadata of a policy type's object, or of an `AnyPolicy` (its `info()`).
template <class P>
const PolicyInfo& info_of_policy(const P& p) {
  if constexpr (requires { p.info(); })
    return p.info();
  else
    return P::info;
}

namespace detail {

/// A budget must hold the protected regions (sinks, recent windows) outright.
inline void check_protected(index_t budget, index_t protect, std::string_view what) {
  if (budget < protect) fail("budget", cat("at least ", what, " (", protect, ") tokens"), budget);
}

}  // namespace detail
}  // namespace kvevict
