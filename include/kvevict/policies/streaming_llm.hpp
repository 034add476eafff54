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
#include "../choose.hpp"
#include "../error.hpp"
#include "../kv_cache.hpp"
#include "../metadata.hpp"
#include "../one_shot.hpp"
#include "../policy.hpp"
#include "../query_window.hpp"
#include "../selection.hpp"
#include "../slots.hpp"
#include "../stream.hpp"
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
class StreamingLLM : public OneShot<StreamingLLM, StreamingLLMParams> {
 public:
  static constexpr std::string_view name = "streaming_llm";
  static constexpr PolicyInfo info{.summary = "attention sinks + recent window (Xiao et al. 2023)",
                                   .streaming = true,
                                   .scores = false};
  static std::vector<Parameter<Params>> parameters() {
    return {param<&Params::sinks>("sinks", "≥ 0", "first tokens always kept")};
  }

  using OneShot::OneShot;
  /// Throws `kvevict::error` naming the first invalid parameter (the constructors call it).
  static void check(const Params& p) {
    detail::require(p.sinks >= 0, "sinks", "sinks >= 0", p.sinks);
  }

  // ---- one-shot: keeps [0, S) ∪ [n − (B − S), n), shared by all heads ----------------------

  Granularity granularity() const noexcept { return Granularity::shared; }
  Recent rule(index_t) const noexcept { return {.sinks = params_.sinks}; }

  // ---- streaming: the oldest non-sink leaves ----------------------------------------------

  struct State {
    std::vector<token_t> fifo;  ///< Non-sink slots in arrival order (a ring).
    index_t head = 0, size = 0, sinks_seen = 0;
  };
  static constexpr bool reads_rows = false;

  /// A new sequence: `budget` tokens kept (≥ sinks), `budget + 1` slots (or `capacity`).
  Stream<StreamingLLM> start(const StreamConfig& config) const { return {*this, config}; }

  StreamSetup setup(const StreamConfig& config) const {
    const index_t slots = detail::check_stream_config(config, /*needs_budget=*/true);
    detail::check_protected(config.budget, params_.sinks, "sinks");
    return {.slots = slots, .shared = true};
  }
  State state(const StreamCore& core) const {
    return {.fifo = std::vector<token_t>(static_cast<std::size_t>(core.slots()), 0)};
  }
  void appended(State& st, StreamCore& core, std::span<const token_t> slots) const noexcept {
    if (st.sinks_seen < params_.sinks) {
      ++st.sinks_seen;
      return;
    }
    st.fifo[static_cast<std::size_t>((st.head + st.size) % core.slots())] = slots[0];
    ++st.size;
  }
  /// Evicts the oldest non-sink when more than `budget` tokens are live. Ignores `rows`.
  void observed(State& st, StreamCore& core, const AttentionRows&) const noexcept {
    if (core.size(0) <= core.budget()) return;
    const token_t oldest = st.fifo[static_cast<std::size_t>(st.head)];
    st.head = (st.head + 1) % core.slots();
    --st.size;
    core.evict(0, oldest);
  }
};

}  // namespace kvevict
