// kvevict — KV-cache eviction policies for LLM inference.
// SPDX-License-Identifier: Apache-2.0
#pragma once

/// \file
/// \brief RandomEviction: the baseline every scoring policy must beat.

#include <cstdint>
#include <span>
#include <string_view>
#include <vector>

#include "../budget.hpp"
#include "../choose.hpp"
#include "../error.hpp"
#include "../kv_cache.hpp"
#include "../metadata.hpp"
#include "../one_shot.hpp"
#include "../policy.hpp"
#include "../query_window.hpp"
#include "../random.hpp"
#include "../selection.hpp"
#include "../slots.hpp"
#include "../stream.hpp"
#include "../workspace.hpp"

namespace kvevict {

/// Parameters of `RandomEviction`.
struct RandomEvictionParams {
  index_t sinks = 0;       ///< First tokens always kept.
  index_t recent = 0;      ///< Last tokens always kept.
  std::uint64_t seed = 0;  ///< With the view's layer and the head, keys the random stream.
  Granularity granularity = Granularity::per_head;  ///< shared: one set, drawn from head 0's stream
};

/// Random eviction: keeps the protected sinks and recent tokens, and otherwise chooses uniformly
/// at random. Reads no keys or queries.
///
/// - **One-shot**: B − sinks − recent of the unprotected tokens drawn uniformly without
///   replacement (a partial Fisher–Yates shuffle, `Uniform`), each KV head from its own stream
///   `RandomStream(seed, layer, head)` — the same inputs and seed give the same selection.
///   O(n) per head; scratch n bytes + n ints from `ws`.
/// - **Streaming**: when more than B tokens are live, one unprotected live token, uniformly at
///   random, leaves; each stored head draws from its own stream `RandomStream(seed, 0, head)`,
///   advancing step by step. O(slots) per step; no allocation after `start`.
/// - Errors: B < sinks + recent unless B ≥ n (one-shot); B < sinks + recent (streaming).
class RandomEviction : public OneShot<RandomEviction, RandomEvictionParams> {
 public:
  static constexpr std::string_view name = "random";
  static constexpr PolicyInfo info{
      .summary = "uniform random eviction (baseline)", .streaming = true, .scores = false};
  static std::vector<Parameter<Params>> parameters() {
    return with_common_parameters<Params>(
        {param<&Params::sinks>("sinks", "≥ 0", "first tokens always kept"),
         param<&Params::recent>("recent", "≥ 0", "last tokens always kept")});
  }

  using OneShot::OneShot;
  /// Throws `kvevict::error` naming the first invalid parameter (the constructors call it).
  static void check(const Params& p) {
    detail::require(p.sinks >= 0, "sinks", "sinks >= 0", p.sinks);
    detail::require(p.recent >= 0, "recent", "recent >= 0", p.recent);
  }

  Uniform rule(index_t) const noexcept {
    return {.keep = {params_.sinks, params_.recent}, .seed = params_.seed};
  }

  struct State {
    std::vector<RandomStream> streams;  ///< one per stored head
  };
  static constexpr bool reads_rows = false;

  /// A new sequence keeping `budget` tokens per KV head in `budget + 1` slots.
  Stream<RandomEviction> start(const StreamConfig& config) const { return {*this, config}; }

  StreamSetup setup(const StreamConfig& config) const {
    const index_t slots = detail::check_stream_config(config, /*needs_budget=*/true);
    detail::check_protected(config.budget, params_.sinks + params_.recent, "sinks + recent");
    return {.slots = slots,
            .shared = one_set(params_.granularity),
            .protect = {params_.sinks, params_.recent}};
  }
  State state(const StreamCore& core) const {
    State st;
    for (index_t h = 0; h < core.stored(); ++h)
      st.streams.emplace_back(params_.seed, 0, static_cast<std::uint64_t>(h));
    return st;
  }
  void appended(State&, StreamCore&, std::span<const token_t>) const noexcept {}

  /// Evicts one unprotected live token per stored head, uniformly, when over budget. Ignores
  /// `rows`.
  void observed(State& st, StreamCore& core, const AttentionRows&) const noexcept {
    for (index_t h = 0; h < core.stored(); ++h) {
      if (core.size(h) <= core.budget()) continue;
      index_t candidates = 0;
      for (index_t s = 0; s < core.slots(); ++s)
        candidates += core.live(h, s) && !core.protects(h, s);
      auto pick = static_cast<index_t>(st.streams[static_cast<std::size_t>(h)].next() %
                                       static_cast<std::uint64_t>(candidates));
      for (index_t s = 0; s < core.slots(); ++s) {
        if (!core.live(h, s) || core.protects(h, s) || pick-- > 0) continue;
        core.evict(h, static_cast<token_t>(s));
        break;
      }
    }
  }
};

}  // namespace kvevict
