// kvevict — KV-cache eviction policies for LLM inference.
// SPDX-License-Identifier: Apache-2.0
#pragma once

/// \file
/// \brief StreamingLLM: attention sinks plus a recent window.

#include <cstdint>
#include <span>
#include <string_view>
#include <vector>

#include "../budget.hpp"
#include "../error.hpp"
#include "../kv_cache.hpp"
#include "../policy.hpp"
#include "../query_window.hpp"
#include "../selection.hpp"
#include "../slots.hpp"
#include "../workspace.hpp"

namespace kvevict {

/// Parameters of `StreamingLLM`.
struct StreamingLLMParams {
  index_t sinks = 4;  ///< S: the first tokens, kept forever (the paper's 4 attention sinks).
};

/// StreamingLLM (Xiao et al., arXiv 2309.17453, §3.2 "Rolling KV cache with attention sinks";
/// upstream mit-han-lab/streaming-llm `streaming_llm/kv_cache.py`, `StartRecentKVCache`).
///
/// Keeps the sinks [0, S) and the last B − S tokens; reads neither keys nor queries. The set is
/// the same for every head (a shared selection). Streaming: after each new token, if more than
/// B tokens are live, the oldest non-sink leaves. Upstream re-rotates keys to cache-relative
/// positions every step; here positions stay original and `rope_shift` offers the re-rotation.
///
/// - one-shot `select`: O(B) time; allocation only in `out` until it has grown once.
/// - streaming: `start` allocates O(budget + kv_heads); `append`/`observe` are O(1) per step
///   (O(kv_heads) to report the shared slot per head) and never allocate.
/// - Errors: B < S (the budget cannot hold the sinks) is a `kvevict::error` unless B ≥ n.
/// - Threading: `select` is const and may run concurrently; the streaming state belongs to one
///   sequence.
class StreamingLLM {
 public:
  static constexpr std::string_view name = "streaming_llm";
  using Params = StreamingLLMParams;

  StreamingLLM() : StreamingLLM(Params{}) {}
  explicit StreamingLLM(const Params& p) : params_(p) {
    detail::require(p.sinks >= 0, "sinks", "sinks >= 0", p.sinks);
  }
  const Params& params() const noexcept { return params_; }

  /// Keeps [0, S) ∪ [n − (B − S), n), shared by all heads.
  template <Element T>
  void select(const KVCache<T>& kv, const QueryWindow<T>& queries, Budget budget, Selection& out,
              Workspace& /*ws*/) const {
    detail::ClearOnError on_error(out);
    const index_t n = kv.tokens();
    const index_t b =
        detail::begin_select(kv, queries, budget, out, /*shared=*/true, params_.sinks, "sinks");
    if (b == 0) return;
    const auto kept = out.add_head(b);
    const index_t s = params_.sinks;
    for (index_t i = 0; i < s; ++i) kept[static_cast<std::size_t>(i)] = static_cast<token_t>(i);
    for (index_t i = s; i < b; ++i)
      kept[static_cast<std::size_t>(i)] = static_cast<token_t>(n - b + i);
  }

  /// Starts a sequence: `budget` tokens kept (≥ sinks), `budget + 1` slots (or `capacity`).
  void start(const StreamConfig& config) {
    const index_t slots = detail::check_stream_config(config, /*needs_budget=*/true);
    detail::check_protected(config.budget, params_.sinks, "sinks");
    slots_ = slots;  // nothing changes before every check has passed
    budget_ = config.budget;
    table_.start(1, slots_);
    fifo_.assign(static_cast<std::size_t>(slots_), 0);
    fifo_head_ = fifo_size_ = sinks_seen_ = 0;
    append_slots_.assign(static_cast<std::size_t>(config.kv_heads), 0);
    evicted_.start(1, /*shared=*/true, 1);
  }

  /// The slot (the same for every head) where the token at `position` goes.
  std::span<const token_t> append(std::int64_t position) {
    const token_t slot = detail::append_to_slots(table_, append_slots_, position)[0];
    if (sinks_seen_ < params_.sinks) {
      ++sinks_seen_;
    } else {
      fifo_[static_cast<std::size_t>((fifo_head_ + fifo_size_) % slots_)] = slot;
      ++fifo_size_;
    }
    return append_slots_;
  }

  /// Evicts the oldest non-sink when more than `budget` tokens are live. Ignores `rows`.
  Evictions observe(const AttentionRows& /*rows*/) {
    evicted_.clear();
    if (table_.size(0) > budget_) {
      const token_t oldest = fifo_[static_cast<std::size_t>(fifo_head_)];
      fifo_head_ = (fifo_head_ + 1) % slots_;
      --fifo_size_;
      table_.release(0, oldest);
      evicted_.push(0, oldest);
    }
    return evicted_.view();
  }

  index_t slots() const noexcept { return slots_; }
  index_t size(index_t /*head*/) const noexcept { return table_.size(0); }
  std::int64_t position(index_t /*head*/, index_t slot) const noexcept {
    return table_.position(0, slot);
  }

 private:
  Params params_;
  // Streaming state (one sequence).
  index_t slots_ = 0, budget_ = 0;
  detail::SlotTable table_;
  std::vector<token_t> fifo_;  ///< Non-sink slots in arrival order (a ring).
  index_t fifo_head_ = 0, fifo_size_ = 0, sinks_seen_ = 0;
  std::vector<token_t> append_slots_;
  detail::EvictionList evicted_;
};

}  // namespace kvevict
