// kvevict — KV-cache eviction policies for LLM inference.
// SPDX-License-Identifier: Apache-2.0
#pragma once

/// \file
/// \brief RandomEviction: the baseline every scoring policy must beat.

#include <cstdint>
#include <numeric>
#include <span>
#include <string_view>
#include <vector>

#include "../budget.hpp"
#include "../error.hpp"
#include "../kernels/topk.hpp"
#include "../kv_cache.hpp"
#include "../policy.hpp"
#include "../query_window.hpp"
#include "../random.hpp"
#include "../selection.hpp"
#include "../slots.hpp"
#include "../workspace.hpp"

namespace kvevict {

/// Parameters of `RandomEviction`.
struct RandomEvictionParams {
  index_t sinks = 0;       ///< First tokens always kept.
  index_t recent = 0;      ///< Last tokens always kept.
  std::uint64_t seed = 0;  ///< With the view's layer and the head, keys the random stream.
  bool shared = false;     ///< One set for all heads (drawn from head 0's stream).
};

/// Random eviction: keeps the protected sinks and recent tokens, and otherwise chooses uniformly
/// at random. Reads no keys or queries.
///
/// - **One-shot**: B − sinks − recent of the unprotected tokens drawn uniformly without
///   replacement (a partial Fisher–Yates shuffle), each KV head from its own stream
///   `RandomStream(seed, layer, head)` — the same inputs and seed give the same selection.
///   O(n) per head; scratch n bytes + n ints from `ws`.
/// - **Streaming**: when more than B tokens are live, one unprotected live token, uniformly at
///   random, leaves; each stored head draws from its own stream `RandomStream(seed, 0, head)`,
///   advancing step by step. O(slots) per step; no allocation after `start`.
/// - Errors: B < sinks + recent unless B ≥ n (one-shot); B < sinks + recent (streaming).
class RandomEviction {
 public:
  static constexpr std::string_view name = "random";
  using Params = RandomEvictionParams;

  RandomEviction() : RandomEviction(Params{}) {}
  explicit RandomEviction(const Params& p) : params_(p) {
    detail::require(p.sinks >= 0, "sinks", "sinks >= 0", p.sinks);
    detail::require(p.recent >= 0, "recent", "recent >= 0", p.recent);
  }
  const Params& params() const noexcept { return params_; }

  template <Element T>
  void select(const KVCache<T>& kv, const QueryWindow<T>& queries, Budget budget, Selection& out,
              Workspace& ws) const {
    detail::ClearOnError on_error(out);
    const index_t b = detail::begin_select(kv, queries, budget, out, params_.shared,
                                           params_.sinks + params_.recent, "sinks + recent");
    if (b == 0) return;
    Workspace::Frame frame(ws);
    const index_t n = kv.tokens(), first = params_.sinks, last = n - params_.recent;
    const auto keep = ws.take<std::uint8_t>(n);
    const auto pool = ws.take<token_t>(last - first);
    for (index_t h = 0; h < out.stored_heads(); ++h) {
      std::fill(keep.begin(), keep.end(), std::uint8_t{0});
      keep_range(keep, 0, first);
      keep_range(keep, last, n);
      std::iota(pool.begin(), pool.end(), static_cast<token_t>(first));
      RandomStream rng(params_.seed, static_cast<std::uint64_t>(kv.layer()),
                       static_cast<std::uint64_t>(h));
      const auto m = static_cast<std::uint64_t>(pool.size());
      for (std::uint64_t i = 0; i < static_cast<std::uint64_t>(b - first - params_.recent); ++i) {
        const std::uint64_t j = i + rng.next() % (m - i);  // bias < m / 2^64
        std::swap(pool[i], pool[j]);
        keep[static_cast<std::size_t>(pool[i])] = 1;
      }
      add_head_from_mask(out, keep);
    }
  }

  /// Starts a sequence keeping `budget` tokens per KV head in `budget + 1` slots.
  void start(const StreamConfig& config) {
    const index_t slots = detail::check_stream_config(config, /*needs_budget=*/true);
    detail::check_protected(config.budget, params_.sinks + params_.recent, "sinks + recent");
    slots_ = slots;  // nothing changes before every check has passed
    budget_ = config.budget;
    const index_t stored = params_.shared ? 1 : config.kv_heads;
    table_.start(stored, slots_);
    protection_.start(stored, slots_, params_.sinks, params_.recent);
    streams_.clear();
    for (index_t h = 0; h < stored; ++h)
      streams_.emplace_back(params_.seed, 0, static_cast<std::uint64_t>(h));
    append_slots_.assign(static_cast<std::size_t>(config.kv_heads), 0);
    evicted_.start(stored, params_.shared, 1);
  }

  /// The slot per KV head where the token at `position` goes.
  std::span<const token_t> append(std::int64_t position) {
    const auto slots = detail::append_to_slots(table_, append_slots_, position);
    for (index_t h = 0; h < table_.heads(); ++h)
      protection_.on_append(h, slots[static_cast<std::size_t>(params_.shared ? 0 : h)]);
    protection_.next_token();
    return slots;
  }

  /// Evicts one unprotected live token per stored head, uniformly, when over budget. Ignores
  /// `rows`.
  Evictions observe(const AttentionRows& /*rows*/) {
    evicted_.clear();
    for (index_t h = 0; h < table_.heads(); ++h) {
      if (table_.size(h) <= budget_) continue;
      index_t candidates = 0;
      for (index_t s = 0; s < slots_; ++s)
        candidates += table_.live(h, s) && !protection_.protects(h, s);
      auto pick = static_cast<index_t>(streams_[static_cast<std::size_t>(h)].next() %
                                       static_cast<std::uint64_t>(candidates));
      for (index_t s = 0; s < slots_; ++s) {
        if (!table_.live(h, s) || protection_.protects(h, s) || pick-- > 0) continue;
        table_.release(h, static_cast<token_t>(s));
        evicted_.push(h, static_cast<token_t>(s));
        break;
      }
    }
    return evicted_.view();
  }

  index_t slots() const noexcept { return slots_; }
  index_t size(index_t head) const noexcept { return table_.size(params_.shared ? 0 : head); }
  std::int64_t position(index_t head, index_t slot) const noexcept {
    return table_.position(params_.shared ? 0 : head, slot);
  }

 private:
  Params params_;
  index_t slots_ = 0, budget_ = 0;
  detail::SlotTable table_;
  detail::Protection protection_;
  std::vector<RandomStream> streams_;
  std::vector<token_t> append_slots_;
  detail::EvictionList evicted_;
};

}  // namespace kvevict
