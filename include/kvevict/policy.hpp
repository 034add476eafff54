// kvevict — KV-cache eviction policies for LLM inference.
// SPDX-License-Identifier: Apache-2.0
#pragma once

/// \file
/// \brief The policy contract: `EvictionPolicy` (one-shot, e.g. at prefill) and `StreamingPolicy`
/// (per decode step), and the small types they exchange with an engine.
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
///
/// **Streaming** — the policy keeps per-sequence state over the engine's slots:
/// \code
/// kvevict::H2O h2o;
/// h2o.start({.kv_heads = 8, .q_heads = 32, .budget = 1024});  // allocates; nothing after
/// std::vector<float> probs(32 * h2o.slots());       // engine's attention row per query head
/// for (std::int64_t pos = 0; generating(); ++pos) {
///   std::span<const kvevict::token_t> slot = h2o.append(pos);  // where K/V of pos go, per head
///   engine_write_kv(slot);                          // the engine stores the new token there
///   engine_attend(h2o, probs);                      // softmax over the live slots
///   kvevict::Evictions out = h2o.observe({probs.data(), 32, h2o.slots(), h2o.slots()});
///   // or, without engine probabilities: out = kvevict::observe_query(h2o, kv, query, ws);
///   for (kvevict::index_t h = 0; h < 8; ++h)        // slots freed this step (reused later)
///     for (kvevict::token_t s : out.of(h)) engine_forget(h, s);
/// }
/// \endcode

#include <concepts>
#include <cstdint>
#include <exception>
#include <span>
#include <string_view>

#include "budget.hpp"
#include "element.hpp"
#include "kv_cache.hpp"
#include "query_window.hpp"
#include "selection.hpp"
#include "workspace.hpp"

namespace kvevict {

/// The attention probabilities of one decode step's query, for every query head, over the
/// policy's slots (the new token's slot included): `data[h * head_stride + s]` is the weight
/// query head h gives slot s. Entries of free slots are ignored. Computed in fp32 by the engine
/// (or by `observe_query`).
struct AttentionRows {
  const float* data = nullptr;
  index_t q_heads = 0;
  index_t slots = 0;        ///< Columns: the policy's `slots()`.
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
/// the policy owns; valid until its next `append`/`observe`.
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
concept selects_from_window = requires(const P& p, const KVCache<T>& kv, const QueryWindow<T>& q,
                                       Budget b, Selection& out, Workspace& ws) {
  { p.select(kv, q, b, out, ws) } -> std::same_as<void>;
};

/// `p.start(config)`: (re)starts a sequence; the only call that may allocate.
template <class P>
concept starts_sequences = requires(P& p, const StreamConfig& c) {
  { p.start(c) } -> std::same_as<void>;
};

/// `p.append(position)`: the slot per KV head where the engine writes the new token.
template <class P>
concept appends_tokens = requires(P& p, std::int64_t position) {
  { p.append(position) } -> std::same_as<std::span<const token_t>>;
};

/// `p.observe(rows)`: the new token's attention; returns the slots evicted this step.
template <class P>
concept observes_attention = requires(P& p, const AttentionRows& rows) {
  { p.observe(rows) } -> std::same_as<Evictions>;
};

/// `slots()`, `size(head)`, `position(head, slot)` (−1 for a free slot): what the engine (and
/// `observe_query`) needs to know which slots are live.
template <class P>
concept reports_slots = requires(const P& p, index_t i) {
  { p.slots() } -> std::same_as<index_t>;
  { p.size(i) } -> std::same_as<index_t>;
  { p.position(i, i) } -> std::same_as<std::int64_t>;
};

/// A one-shot policy: selects, from a cache view and the window of the last queries, the tokens
/// each KV head keeps under a budget. `select` is const: a policy object holds only parameters,
/// so one object may serve many threads (each with its own `Selection` and `Workspace`). A
/// `select` that throws leaves `out` incomplete (`detail::ClearOnError`), so `compact` rejects it.
template <class P, class T>
concept EvictionPolicy = Element<T> && named_policy<P> && selects_from_window<P, T>;

/// A decode-time policy: keeps per-sequence state over the engine's slots, is told of each new
/// token and the attention its query produced, and says which slots to evict. No allocation
/// after `start`. One object per sequence, used by one thread at a time. `append` and `observe`
/// validate before they change state: after an error the sequence is as it was.
template <class P, class T>
concept StreamingPolicy = Element<T> && named_policy<P> && starts_sequences<P> &&
    appends_tokens<P> && observes_attention<P> && reports_slots<P>;

namespace detail {

/// Declared first in every `select`: if the call throws, `out` is left *incomplete* (reset, no
/// head filled), whatever it held before and however far filling got. `compact` and
/// `Selection::validate` reject an incomplete selection, so an error can never leave behind a
/// selection that looks valid (a stale one from an earlier call, or half of this one).
class ClearOnError {
 public:
  explicit ClearOnError(Selection& out) noexcept
      : out_(out), exceptions_(std::uncaught_exceptions()) {}
  ClearOnError(const ClearOnError&) = delete;
  ClearOnError& operator=(const ClearOnError&) = delete;
  ~ClearOnError() {
    if (std::uncaught_exceptions() > exceptions_) out_.clear();
  }

 private:
  Selection& out_;
  int exceptions_;
};

/// A budget must hold the protected regions (sinks, recent windows) outright.
inline void check_protected(index_t budget, index_t protect, std::string_view what) {
  if (budget < protect) fail("budget", cat("at least ", what, " (", protect, ") tokens"), budget);
}

/// The preamble of every one-shot `select`: validates the window against the cache, resolves the
/// budget, and either fills `out` with everything (B ≥ n: returns 0) or checks that B holds the
/// `protect` tokens of the protected regions (named `what`) and resets `out` for filling
/// (returns B). Nothing is written to `out` when it throws.
template <Element T>
index_t begin_select(const KVCache<T>& kv, const QueryWindow<T>& queries, Budget budget,
                     Selection& out, bool shared, index_t protect = 0, std::string_view what = "") {
  check_window(kv, queries);
  const index_t b = budget.resolve(kv.tokens());
  if (b >= kv.tokens()) {
    out.keep_all(kv.kv_heads(), kv.tokens(), shared);
    return 0;
  }
  check_protected(b, protect, what);
  out.reset(kv.kv_heads(), kv.tokens(), shared);
  return b;
}

}  // namespace detail
}  // namespace kvevict
