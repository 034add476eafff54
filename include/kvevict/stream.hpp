// kvevict — KV-cache eviction policies for LLM inference.
// SPDX-License-Identifier: Apache-2.0
#pragma once

/// \file
/// \brief `Stream<P>`: one sequence's decode-time state for a streaming policy, built on one
/// shared core (`StreamCore`: slot table, protected regions, the per-step eviction list, and the
/// argmin-with-tie-rule every score-driven policy evicts by).
///
/// A streaming policy object holds parameters only, and `policy.start(config)` returns a
/// `Stream<Policy>`: the per-sequence state. So the thread contract is a property of the types:
/// a `const` policy may serve any number of threads and sequences; a `Stream` belongs to one
/// sequence, used by one thread at a time.
///
/// A policy plugs its rule into `Stream` with a few members (H2O is a full example):
///
/// - `struct State`: its per-sequence data;
/// - `StreamSetup setup(const StreamConfig&) const`: validates the configuration, says how many
///   slots and which protected regions;
/// - `State state(const StreamCore&) const`: allocates the per-sequence data;
/// - `void appended(State&, StreamCore&, std::span<const token_t> stored_slots) const noexcept`;
/// - `void observed(State&, StreamCore&, const AttentionRows&) const noexcept`: evicts;
/// - `static constexpr bool reads_rows`: false when the rows are not looked at.
///
/// Optional: `check_append(const State&)` for an order rule of its own (Cascade: one observe
/// per append), called before anything changes.
///
/// **Call order**, checked for every policy: each `observe` reports the attention of the token
/// appended last, so it needs an `append` since the previous `observe` — an observe before any
/// append, or a second one for the same token (which would count that step twice), is a
/// `kvevict::error` naming `observe` and changes nothing. Several appends before one observe are
/// allowed (tokens whose attention the engine does not hand in, e.g. prompt tokens processed as
/// a batch): they are kept and scored by the attention they receive afterwards.

#include <algorithm>
#include <cstdint>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "error.hpp"
#include "policy.hpp"
#include "scores.hpp"
#include "selection.hpp"
#include "slots.hpp"

namespace kvevict {

/// What a policy's `setup` derives from a `StreamConfig` (after validating it).
struct StreamSetup {
  index_t slots = 0;          ///< slots the sequence uses
  bool shared = false;        ///< one stored head for all KV heads
  Protected protect = {};     ///< sinks and recent tokens never evicted (slot-tracked)
  index_t max_evictions = 1;  ///< per stored head and step
};

/// The per-sequence bookkeeping every streaming policy shares: which slot holds which
/// position, the protected sinks and recent tokens, and the step's evictions. Allocates in its
/// constructor only.
class StreamCore {
 public:
  StreamCore() = default;
  StreamCore(const StreamConfig& config, const StreamSetup& setup)
      : config_(config), shared_(setup.shared), protect_(setup.protect) {
    const index_t stored = setup.shared ? 1 : config.kv_heads;
    table_.start(stored, setup.slots);
    protection_.start(stored, setup.slots, setup.protect.sinks, setup.protect.recent);
    evicted_.start(stored, setup.shared, setup.max_evictions);
    append_slots_.assign(static_cast<std::size_t>(config.kv_heads), 0);
  }

  const StreamConfig& config() const noexcept { return config_; }
  index_t budget() const noexcept { return config_.budget; }
  index_t q_heads() const noexcept { return config_.q_heads; }
  index_t slots() const noexcept { return table_.slots(); }
  /// Stored heads: 1 when shared, kv_heads otherwise.
  index_t stored() const noexcept { return table_.heads(); }
  /// The stored head of KV head `head`.
  index_t stored_of(index_t head) const noexcept { return shared_ ? 0 : head; }
  index_t size(index_t stored_head) const noexcept { return table_.size(stored_head); }
  std::int64_t position(index_t stored_head, index_t slot) const noexcept {
    return table_.position(stored_head, slot);
  }
  bool live(index_t stored_head, index_t slot) const noexcept {
    return table_.live(stored_head, slot);
  }
  bool protects(index_t stored_head, index_t slot) const noexcept {
    return protection_.protects(stored_head, slot);
  }
  const detail::SlotTable& table() const noexcept { return table_; }
  std::int64_t last_position() const noexcept { return table_.last_position(); }

  /// Takes a slot for `position` in every stored head (all or none; throws before any change
  /// when a head has no free slot or the position does not increase) and marks it protected
  /// while it is among the sinks or the recent tokens. Returns the slot of each stored head.
  std::span<const token_t> take(std::int64_t position) {
    const index_t stored = table_.heads();
    table_.take_all(position,
                    std::span<token_t>(append_slots_).first(static_cast<std::size_t>(stored)));
    for (index_t h = 0; h < stored; ++h)
      protection_.on_append(h, append_slots_[static_cast<std::size_t>(h)]);
    protection_.next_token();
    return std::span<const token_t>(append_slots_).first(static_cast<std::size_t>(stored));
  }

  /// The slot of every KV head for the token just taken (a shared stream: the same for all).
  std::span<const token_t> slots_per_kv_head() noexcept {
    if (shared_) std::fill(append_slots_.begin() + 1, append_slots_.end(), append_slots_[0]);
    return append_slots_;
  }

  /// Frees `slot` of stored head h and reports it in this step's evictions (heads ascending).
  void evict(index_t h, token_t slot) noexcept {
    table_.release(h, slot);
    protection_.on_release(h, slot);
    evicted_.push(h, slot);
  }

  /// The live slot of stored head h with the lowest `key[slot]` among those `eligible(slot)`
  /// accepts; ties go to the older position (it is evicted first). −1 if none is eligible. The
  /// one "evict the lowest score" rule of H2O, TOVA and CORM's cap. O(slots).
  template <class Key, class Eligible>
  token_t lowest(index_t h, const Key* key, Eligible&& eligible) const {
    token_t victim = -1;
    for (index_t s = 0; s < table_.slots(); ++s) {
      if (!table_.live(h, s) || !eligible(s)) continue;
      if (victim < 0 || key[s] < key[victim] ||
          (key[s] == key[victim] && table_.position(h, s) < table_.position(h, victim)))
        victim = static_cast<token_t>(s);
    }
    return victim;
  }

  /// The position held by every slot of stored head h (−1: free), for one-pass scans.
  std::span<const std::int64_t> positions(index_t h) const noexcept { return table_.positions(h); }

  /// Stored head h's slot flags: 0 exactly for a live, unprotected slot (see `lowest_eligible`).
  const std::uint8_t* flags(index_t h) const noexcept { return protection_.flags(h); }

  /// `lowest(h, key, !protects)` for a key already scanned: `best` is the minimum of `key` over
  /// the slots whose flag is 0, found in [from, to) — the range a fused pass saw it in — and
  /// ties go to the older position. −1 when no slot is eligible (best = +inf, or NaN keys):
  /// then the caller falls back to `lowest`. O(to − from).
  token_t lowest_eligible(index_t h, const float* key, float best, index_t from,
                          index_t to) const noexcept {
    const std::uint8_t* flag = protection_.flags(h);
    token_t victim = -1;
    for (index_t s = from; s < to; ++s)
      if (flag[s] == 0 && key[s] == best &&
          (victim < 0 || table_.position(h, s) < table_.position(h, victim)))
        victim = static_cast<token_t>(s);
    return victim;
  }

  /// Starts a step's eviction list.
  void begin_step() noexcept { evicted_.clear(); }
  /// The step's evictions.
  Evictions evictions() noexcept { return evicted_.view(); }

 private:
  StreamConfig config_{};
  bool shared_ = false;
  Protected protect_{};
  detail::SlotTable table_;
  detail::Protection protection_;
  detail::EvictionList evicted_;
  std::vector<token_t> append_slots_;
};

/// One sequence's decode-time state for streaming policy P: what `P::start` returns. Drive it
/// with `append(position)` → the slot per KV head where the engine writes the new token's K
/// and V, then `observe(rows)` → the slots evicted this step (one observe per append). Evicted
/// slots are reused by the next `append`: no data moves per step, nothing is allocated after
/// construction. A failed call (a `kvevict::error`) changes nothing.
template <class P>
class Stream {
 public:
  using Policy = P;
  using State = typename P::State;

  /// Validates `config` for `policy`, then allocates the sequence's state.
  Stream(const P& policy, const StreamConfig& config)
      : policy_(policy),
        core_(config, checked_setup(policy, config)),
        state_(policy_.state(core_)) {}

  /// The slot of every KV head where the token at `position` goes.
  std::span<const token_t> append(std::int64_t position) {
    if constexpr (requires { policy_.check_append(state_); }) policy_.check_append(state_);
    const auto stored = core_.take(position);
    policy_.appended(state_, core_, stored);
    awaiting_observe_ = true;
    return core_.slots_per_kv_head();
  }

  /// The attention of the token appended last over the slots (itself included); returns the
  /// slots evicted. Needs an `append` since the previous observe (see the file comment).
  Evictions observe(const AttentionRows& rows) {
    if (!awaiting_observe_)
      detail::fail("observe",
                   "an append before it (each observe reports the attention of the token "
                   "appended last)",
                   core_.last_position() < 0
                       ? std::string("an observe before any append")
                       : detail::cat("a second observe after the append at position ",
                                     core_.last_position()));
    if constexpr (P::reads_rows) detail::check_rows(rows, core_.q_heads(), core_.slots());
    if constexpr (P::reads_rows) detail::check_probabilities(rows, core_.table());
    core_.begin_step();
    policy_.observed(state_, core_, rows);
    awaiting_observe_ = false;
    return core_.evictions();
  }

  /// Slots of the sequence (what the engine reserves).
  index_t slots() const noexcept { return core_.slots(); }
  /// Live tokens of KV head `head`.
  index_t size(index_t head) const noexcept { return core_.size(core_.stored_of(head)); }
  /// Position held by `slot` of KV head `head`, −1 when free.
  std::int64_t position(index_t head, index_t slot) const noexcept {
    return core_.position(core_.stored_of(head), slot);
  }

  const P& policy() const noexcept { return policy_; }
  const StreamCore& core() const noexcept { return core_; }
  const State& state() const noexcept { return state_; }

  /// Policy-specific operations that change the sequence (Cascade's `prefill`): forwarded to
  /// `policy.prefill(state, core, args…)`.
  template <class... A>
  requires requires(const P& p, State& s, StreamCore& c, A&&... a) {
    p.prefill(s, c, std::forward<A>(a)...);
  }
  void prefill(A&&... args) { policy_.prefill(state_, core_, std::forward<A>(args)...); }

 private:
  static StreamSetup checked_setup(const P& policy, const StreamConfig& config) {
    return policy.setup(config);
  }

  P policy_;
  StreamCore core_;
  State state_;
  bool awaiting_observe_ = false;  ///< an append since the last observe
};

}  // namespace kvevict
