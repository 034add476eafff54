// kvevict — KV-cache eviction policies for LLM inference.
// SPDX-License-Identifier: Apache-2.0
#pragma once

/// \file
/// \brief Cascade: sinks plus cascading sub-cache buffers that keep every 2^c-th token.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <span>
#include <string_view>
#include <vector>

#include "../budget.hpp"
#include "../choose.hpp"
#include "../error.hpp"
#include "../kernels/attention.hpp"
#include "../kernels/norm.hpp"
#include "../kernels/reduce.hpp"
#include "../kv_cache.hpp"
#include "../metadata.hpp"
#include "../one_shot.hpp"
#include "../policy.hpp"
#include "../query_window.hpp"
#include "../scores.hpp"
#include "../selection.hpp"
#include "../slots.hpp"
#include "../stream.hpp"
#include "../workspace.hpp"

namespace kvevict {

/// Parameters of `Cascade`. The budget gives the slots: W = (B − sinks) / cascades.
struct CascadeParams {
  index_t sinks = 4;                      ///< S: the first tokens, kept forever.
  index_t cascades = 4;                   ///< C sub-caches; C = 1 is StreamingLLM.
  double beta = 0.9999999;                ///< EMA decay of the attention scores.
  GroupReduce reduce = GroupReduce::max;  ///< over a KV head's query heads (the authors' runs).
  index_t stride = 1024;                  ///< prefill chunk length.
  Granularity granularity = Granularity::per_head;  ///< shared: one arrangement for all heads
};

/// Cascading KV cache (Willette et al., arXiv 2406.17808, §3 "Cascading KV Cache", Algorithm 1;
/// upstream jeffwillette/cascading_kv_cache `cascade/models/cascading_cache.py`, the Triton
/// kernel `_update_kv_cache_inner` — its rules, not the slower Python class's).
///
/// Per KV head: S sinks and C cascades of W slots each, ring buffers of slot indices, and an EMA
/// score per slot: `score ← β · score + (1 − β) · a` at every step, a the step's attention
/// reduced over the GQA group (max by default), in fp32 (upstream's fp16 store underflows).
/// Token t (0-based count of tokens appended) goes into the sinks while t < S. Otherwise, from
/// cascade 0: cascade c **accepts** when `(t − S) mod 2^c = 0`, or while the cache is filling
/// (eager fill: every cascade accepts while t ≤ S + C·W). Accepting and not full: appended.
/// Accepting and full: it replaces the cascade's **oldest**, which moves on to cascade c + 1
/// (and leaves the cache after the last). Not accepting: it replaces the cascade's **newest** if
/// its score is ≥ that token's (ties go to the newcomer), else it leaves; either way the walk
/// stops. An empty cascade takes any token. The acceptance test uses the incoming token's t in
/// every cascade, as upstream, even for the older token carried down.
///
/// The cache spans S + W·(2^C − 1) tokens with S + C·W slots; C = 1 is StreamingLLM with S
/// sinks and a window of W. Tokens move between cascades in the bookkeeping only: the one slot
/// that changes per step is the evicted one, reused by the next token (`append`).
///
/// Positions: `position(head, slot)` is the original one; `relative_positions` gives the
/// cache-relative ones by age (sinks 0 … S − 1, then the oldest cascade's oldest token first), the
/// positions upstream re-rotates keys to every step — `rope_shift` applies such a change to
/// keys stored rotated. Deviations, on purpose: upstream's newest-slot index uses a float
/// modulo that, when a ring's start is 0, reads the previous cascade's last slot; here
/// `(start − 1) mod stored`. In a prefill chunk, upstream weighs a new token's attention by
/// β^(q − k) and the cache's by β^(last − q); here both are the EMA over the queries in order
/// (β^(last − q)), so a chunk of one token is exactly a decode step (at β ≈ 1 they agree).
///
/// - Streaming: `start` allocates O(kv_heads · B); a step is O(q_heads · slots) for the EMA
///   plus O(C) per KV head for the insertion; no allocation.
/// - `prefill`: chunks of `stride` tokens attend to [live slots, the chunk causally], then are
///   inserted one by one: O(n · (S + C·W + stride) · d · q_heads), linear in the prompt.
/// - One-shot `select` keeps what the streaming form would after the given tokens, scored by
///   the query window (an approximation: positions before the window see no attention).
class Cascade : public OneShot<Cascade, CascadeParams> {
 public:
  static constexpr std::string_view name = "cascade";
  static constexpr PolicyInfo info{
      .summary = "sinks + cascading sub-caches keeping every 2^c-th token (Willette et al. 2024)",
      .reads = reads_keys | reads_queries | reads_attention_rows,
      .streaming = true};
  static std::vector<Parameter<Params>> parameters() {
    return with_common_parameters<Params>(
        {param<&Params::sinks>("sinks", "≥ 0", "first tokens always kept"),
         param<&Params::cascades>("cascades", "[1, 30]",
                                  "sub-caches C (W = (budget - sinks) / C slots each)"),
         param<&Params::beta>("beta", "[0, 1)", "EMA decay of the attention scores"),
         param<&Params::stride>("stride", "≥ 1", "prefill chunk length")});
  }

  using OneShot::OneShot;
  /// Throws `kvevict::error` naming the first invalid parameter (the constructors call it).
  static void check(const Params& p) {
    detail::require(p.sinks >= 0, "sinks", "sinks >= 0", p.sinks);
    detail::require(p.cascades >= 1 && p.cascades <= 30, "cascades", "1 <= cascades <= 30",
                    p.cascades);
    detail::require(p.beta >= 0.0 && p.beta < 1.0, "beta", "a decay in [0, 1)", p.beta);
    detail::require(p.stride >= 1, "stride", "stride >= 1", p.stride);
    // A cascade of pages would count its sinks and sub-windows in pages: not the policy.
    detail::require(p.granularity != Granularity::pages, "granularity",
                    "per_head, equal, shared or layers (cascade counts tokens, not pages)",
                    to_string(p.granularity));
  }

  /// W for a budget B: (B − S) / C, at least 1. Throws when B cannot hold S + C slots.
  index_t window_for(index_t budget) const {
    if (budget < params_.sinks + params_.cascades)
      detail::fail("budget",
                   detail::cat("at least sinks + cascades (", params_.sinks + params_.cascades,
                               ") tokens: one slot per cascade"),
                   budget);
    return (budget - params_.sinks) / params_.cascades;
  }

  // ---- streaming -------------------------------------------------------------------------------

  /// Per stored head: the EMA score of every slot, the sink slots and C rings of W slot ids.
  struct State {
    index_t sinks = 0, cascades = 0, w = 0, count = 0;  ///< count: tokens placed so far
    bool shared = false;
    std::vector<float> score;         ///< per stored head and slot: EMA score
    std::vector<float> step;          ///< one step's group-reduced attention per slot
    std::vector<token_t> ring;        ///< per stored head and cascade: W slot ids
    std::vector<index_t> ring_start;  ///< index of the oldest
    std::vector<index_t> ring_size;   ///< tokens held
    std::vector<token_t> sink;        ///< per stored head: the S sink slots
    std::vector<token_t> pending;     ///< per stored head: the newcomer's slot (−1: none)

    /// The EMA score of the token in `slot` of KV head `head`.
    float score_of(index_t head, index_t slot) const noexcept {
      return score[static_cast<std::size_t>(stored(head)) * step.size() +
                   static_cast<std::size_t>(slot)];
    }
    /// W, the slots of one cascade.
    index_t cascade_slots() const noexcept { return w; }
    /// The live tokens of cascade c of `head`, oldest first (their slots).
    std::vector<token_t> cascade(index_t head, index_t c) const {
      std::vector<token_t> out;
      const index_t base = stored(head) * cascades + c;
      for (index_t i = 0; i < ring_size[static_cast<std::size_t>(base)]; ++i)
        out.push_back(ring[static_cast<std::size_t>(
            base * w + (ring_start[static_cast<std::size_t>(base)] + i) % w)]);
      return out;
    }
    /// Cache-relative positions by age, per slot (−1 for free slots): the sinks 0 … S − 1, then
    /// cascade C − 1's tokens oldest first, …, cascade 0's newest last. Upstream rotates cached
    /// keys to these positions every step and puts the next query right after them. O(slots).
    void relative_positions(index_t head, std::span<std::int64_t> out) const {
      if (out.size() != step.size())
        detail::fail("out", detail::cat("one entry per slot (", step.size(), ")"), out.size());
      std::fill(out.begin(), out.end(), -1);
      const index_t h = stored(head);
      std::int64_t next = 0;
      for (index_t i = 0; i < std::min<index_t>(sinks, count); ++i)
        out[static_cast<std::size_t>(sink[static_cast<std::size_t>(h * sinks + i)])] = next++;
      for (index_t c = cascades - 1; c >= 0; --c)
        for (token_t s : cascade(head, c)) out[static_cast<std::size_t>(s)] = next++;
    }
    index_t stored(index_t head) const noexcept { return shared ? 0 : head; }
  };
  static constexpr bool reads_rows = true;

  /// A new sequence: S + C · W slots kept (W from the budget), one more for the newcomer.
  Stream<Cascade> start(const StreamConfig& config) const { return {*this, config}; }

  StreamSetup setup(const StreamConfig& config) const {
    const index_t slots = detail::check_stream_config(config, /*needs_budget=*/true);
    window_for(config.budget);
    return {.slots = slots, .shared = one_set(params_.granularity)};
  }
  State state(const StreamCore& core) const {
    const index_t stored = core.stored(), slots = core.slots(), w = window_for(core.budget());
    State st;
    st.sinks = params_.sinks;
    st.cascades = params_.cascades;
    st.w = w;
    st.shared = stored == 1 && one_set(params_.granularity);
    st.score.assign(static_cast<std::size_t>(stored * slots), 0.0f);
    st.step.assign(static_cast<std::size_t>(slots), 0.0f);
    st.ring.assign(static_cast<std::size_t>(stored * params_.cascades * w), -1);
    st.ring_start.assign(static_cast<std::size_t>(stored * params_.cascades), 0);
    st.ring_size.assign(static_cast<std::size_t>(stored * params_.cascades), 0);
    st.sink.assign(static_cast<std::size_t>(stored * std::max<index_t>(params_.sinks, 1)), -1);
    st.pending.assign(static_cast<std::size_t>(stored), -1);
    return st;
  }

  /// Cascade places the newcomer in `observe`, so each append must be followed by its observe:
  /// a second append first is a `kvevict::error` (it would leave the first token live in no
  /// sub-cache, never to be evicted).
  void check_append(const State& st) const {
    if (st.pending[0] >= 0)
      detail::fail("append",
                   "an observe after the previous append (Cascade places each token then)",
                   "a second append");
  }
  /// The newcomer (in a free slot: after the first S + C · W tokens, the one the previous step
  /// evicted) starts with score 0 and waits for its observe.
  void appended(State& st, StreamCore& core, std::span<const token_t> slots) const noexcept {
    for (index_t h = 0; h < core.stored(); ++h) {
      const token_t s = slots[static_cast<std::size_t>(h)];
      st.score[static_cast<std::size_t>(h * core.slots() + s)] = 0.0f;
      st.pending[static_cast<std::size_t>(h)] = s;
    }
  }

  /// Updates every live token's EMA score with the step's attention (the newcomer included),
  /// then inserts the newcomer into the sinks or the cascades.
  void observed(State& st, StreamCore& core, const AttentionRows& rows) const noexcept {
    const index_t slots = core.slots(), g = core.q_heads() / core.stored();
    // s ← β·s + (1 − β)·a, written s − c·s + c·a with c = 1 − β from double: β = 0.9999999
    // itself is not a float (it rounds to 1 − 1.19e-7, a 19% error in c).
    const auto c = static_cast<float>(1.0 - params_.beta);
    for (index_t h = 0; h < core.stored(); ++h) {
      kernels::reduce_group(rows.data + h * g * rows.head_stride, rows.head_stride, g, slots,
                            params_.reduce, st.step.data());
      float* score = st.score.data() + h * slots;
      for (index_t s = 0; s < slots; ++s)  // free slots too: harmless, reset on append
        score[s] = score[s] - c * score[s] + c * st.step[static_cast<std::size_t>(s)];
      insert(st, core, h, st.pending[static_cast<std::size_t>(h)]);
      st.pending[static_cast<std::size_t>(h)] = -1;
    }
    ++st.count;
  }

  // ---- prefill ---------------------------------------------------------------------------------

  /// Linear-time chunked prefill (`stream.prefill(slots, prompt, queries, first_position, ws)`):
  /// `prompt` holds the next n tokens' keys and values (positions continue the sequence) and
  /// `queries` their n queries. Chunk by chunk (`stride` tokens), the chunk's queries attend to
  /// [the live slots, the chunk causally]; the EMA of every live token and the chunk's tokens is
  /// updated query by query; then the chunk's tokens are inserted one by one, their keys and
  /// values written into `slots` (the engine's slot memory, `tokens == slots()`) where they are
  /// kept. Everything that can fail is checked before the first chunk (`check_prefill`).
  ///
  /// O(n · (S + C·W + stride) · d · q_heads) FLOPs; scratch from `ws`: kv_heads · (S + C·W +
  /// stride) · (d + d_v) elements and the attention's passes; no allocation once warm.
  template <FloatElement T>
  void prefill(State& st, StreamCore& core, const KVCache<T>& slots, const KVCache<T>& prompt,
               const QueryWindow<query_type<T>>& queries, std::int64_t first_position,
               Workspace& ws) const {
    if (slots.tokens() != core.slots())
      detail::fail("slots.tokens", detail::cat("the stream's slots (", core.slots(), ")"),
                   slots.tokens());
    if (queries.window() != prompt.tokens())
      detail::fail("queries.window",
                   detail::cat("one query per prompt token (", prompt.tokens(), ")"),
                   queries.window());
    if (prompt.kv_heads() != slots.kv_heads() || prompt.head_dim() != slots.head_dim() ||
        prompt.head_dim_v() != slots.head_dim_v())
      detail::fail("prompt", "the slots' kv_heads, head_dim and head_dim_v", "a different shape");
    const index_t kv_heads = slots.kv_heads(), d = slots.head_dim(), dv = slots.head_dim_v();
    const index_t n = prompt.tokens();
    check_prefill(st, core, slots, prompt, queries, first_position);
    const index_t stored = core.stored();
    for (index_t c0 = 0; c0 < n; c0 += params_.stride) {
      const index_t chunk = std::min(params_.stride, n - c0);
      Workspace::Frame frame(ws);
      // [live slots in slot order, then the chunk] per KV head, gathered into one dense view.
      const index_t live = core.size(0), cols = live + chunk;
      const auto kbuf = ws.take<T>(kv_heads * cols * d), vbuf = ws.take<T>(kv_heads * cols * dv);
      const auto where = ws.take<token_t>(kv_heads * live);  // slot of each live column
      for (index_t h = 0; h < kv_heads; ++h) {
        index_t j = 0;
        for (index_t s = 0; s < core.slots(); ++s) {
          if (core.position(core.stored_of(h), s) < 0) continue;
          where[static_cast<std::size_t>(h * live + j)] = static_cast<token_t>(s);
          std::copy_n(slots.key(h, s).data(), d, kbuf.data() + (h * cols + j) * d);
          std::copy_n(slots.value(h, s).data(), dv, vbuf.data() + (h * cols + j) * dv);
          ++j;
        }
        for (index_t i = 0; i < chunk; ++i) {
          std::copy_n(prompt.key(h, c0 + i).data(), d, kbuf.data() + (h * cols + live + i) * d);
          std::copy_n(prompt.value(h, c0 + i).data(), dv, vbuf.data() + (h * cols + live + i) * dv);
        }
      }
      const KVCache<T> view(Storage<T>::hnd(kbuf.data(), cols, d),
                            Storage<T>::hnd(vbuf.data(), cols, dv), {kv_heads, cols, d, dv});
      // EMA over the chunk's queries in order: query i weighs (1 − β) β^(chunk − 1 − i).
      const auto weights = ws.take<float>(chunk);
      for (index_t i = 0; i < chunk; ++i)
        weights[static_cast<std::size_t>(i)] = static_cast<float>(
            (1.0 - params_.beta) * std::pow(params_.beta, static_cast<double>(chunk - 1 - i)));
      const auto attention = ws.take<float>(queries.q_heads() * cols);
      kernels::window_attention(view, queries.sub(c0, chunk),
                                {.reduce = WindowReduce::sum, .query_weights = weights}, attention,
                                ws);
      const auto gained = ws.take<float>(stored * cols);
      kernels::reduce_groups(attention, queries.q_heads(), cols, kv_heads, params_.reduce,
                             stored == 1 && one_set(params_.granularity), gained);
      // β^chunk · s as s − (1 − β^chunk)·s, the complement from double (see `observed`).
      const auto fade =
          static_cast<float>(-std::expm1(static_cast<double>(chunk) * std::log(params_.beta)));
      for (index_t h = 0; h < stored; ++h)
        for (index_t j = 0; j < live; ++j) {
          const auto slot = where[static_cast<std::size_t>(h * live + j)];
          float& s = st.score[static_cast<std::size_t>(h * core.slots() + slot)];
          s = s - fade * s + gained[static_cast<std::size_t>(h * cols + j)];
        }
      for (index_t i = 0; i < chunk; ++i) {
        appended(st, core, core.take(first_position + c0 + i));
        const auto slot = core.slots_per_kv_head();
        for (index_t h = 0; h < kv_heads; ++h) {
          const auto s = slot[static_cast<std::size_t>(h)];
          std::copy_n(prompt.key(h, c0 + i).data(), d, slots.key(h, s).data());
          std::copy_n(prompt.value(h, c0 + i).data(), dv, slots.value(h, s).data());
        }
        core.begin_step();
        for (index_t h = 0; h < stored; ++h) {
          const token_t newcomer = st.pending[static_cast<std::size_t>(h)];
          st.score[static_cast<std::size_t>(h * core.slots() + newcomer)] =
              gained[static_cast<std::size_t>(h * cols + live + i)];
          insert(st, core, h, newcomer);
          st.pending[static_cast<std::size_t>(h)] = -1;
        }
        ++st.count;
      }
    }
  }

  /// Everything in `prefill` that can fail, checked before it changes anything: no append
  /// waiting for its observe, the stream's heads, positions after the last one, and inputs
  /// whose attention logits are finite — finite queries and keys (the prompt's and the live
  /// slots') whose norms bound every logit |q·k|/√d ≤ ‖q‖‖k‖/√d below 1e37, so no chunk's
  /// attention can fail halfway through the prompt. O((n + slots) · d).
  template <FloatElement T>
  void check_prefill(const State& st, const StreamCore& core, const KVCache<T>& slots,
                     const KVCache<T>& prompt, const QueryWindow<query_type<T>>& queries,
                     std::int64_t first_position) const {
    if (st.pending[0] >= 0)
      detail::fail("prefill", "an observe after the previous append", "an append pending");
    if (slots.kv_heads() != core.config().kv_heads)
      detail::fail("slots.kv_heads",
                   detail::cat("the kv_heads of start (", core.config().kv_heads, ")"),
                   slots.kv_heads());
    if (queries.q_heads() != core.q_heads())
      detail::fail("queries.q_heads", detail::cat("the q_heads of start (", core.q_heads(), ")"),
                   queries.q_heads());
    if (prompt.tokens() > 0 && first_position <= core.last_position())
      detail::fail("first_position",
                   detail::cat("a position after the previous one (", core.last_position(), ")"),
                   first_position);
    std::vector<float> row(
        static_cast<std::size_t>(std::max(queries.head_dim(), slots.head_dim())));
    const auto norm = [&](const auto& elements, std::string_view what, auto... where) {
      const std::span<float> x(row.data(), elements.size());
      to_float(elements.data(), x.data(), static_cast<index_t>(x.size()));
      const double sum = kernels::squared_norm(x);
      if (!std::isfinite(sum))  // a non-finite value: name the first
        detail::fail(
            what, "finite values",
            *std::find_if_not(x.begin(), x.end(), [](float v) { return std::isfinite(v); }),
            where...);
      return std::sqrt(sum);
    };
    double q_max = 0, k_max = 0;
    for (index_t h = 0; h < queries.q_heads(); ++h)
      for (index_t i = 0; i < queries.window(); ++i)
        q_max = std::max(q_max, norm(queries.query(h, i), "queries", " at query head ", h,
                                     ", window position ", i));
    for (index_t h = 0; h < prompt.kv_heads(); ++h) {
      for (index_t t = 0; t < prompt.tokens(); ++t)
        k_max = std::max(
            k_max, norm(prompt.key(h, t), "prompt", " in a key of KV head ", h, ", token ", t));
      for (index_t s = 0; s < core.slots(); ++s)
        if (core.position(core.stored_of(h), s) >= 0)
          k_max = std::max(
              k_max, norm(slots.key(h, s), "slots", " in a key of KV head ", h, ", slot ", s));
    }
    const double bound = q_max * k_max / std::sqrt(static_cast<double>(prompt.head_dim()));
    if (!(bound < 1e37))
      detail::fail("prompt", "keys and queries whose logits cannot overflow (|q|·|k|/√d < 1e37)",
                   bound);
  }

  // ---- one-shot --------------------------------------------------------------------------------

  /// The cascade run over tokens 0 … n − 1 of one row, each token scored by its window
  /// attention (positions before the window see none); keeps what stays. B gives W.
  struct Rule {
    static constexpr bool reads_scores = true;
    const Cascade* policy;
    Protected protect(index_t, index_t) const noexcept { return {}; }
    void check(index_t, index_t budget, Protected) const { policy->window_for(budget); }
    void pick(const Row& row, std::span<std::uint8_t> keep, Workspace& ws) const {
      Params one = policy->params_;
      one.granularity = Granularity::per_head;
      auto run = Cascade(one).start({.kv_heads = 1, .q_heads = 1, .budget = row.budget});
      Workspace::Frame frame(ws);
      // Each token's window score is its own "attention": a one-row step.
      const auto rows = ws.take<float>(run.slots());
      for (index_t j = 0; j < row.n; ++j) {
        const token_t slot = run.append(j)[0];
        std::fill(rows.begin(), rows.end(), 0.0f);
        rows[static_cast<std::size_t>(slot)] = row.score[static_cast<std::size_t>(j)];
        run.observe({rows.data(), 1, run.slots(), run.slots()});
      }
      for (index_t s = 0; s < run.slots(); ++s)
        if (run.position(0, s) >= 0) keep[static_cast<std::size_t>(run.position(0, s))] = 1;
    }
  };

  Rule rule(index_t) const noexcept { return {this}; }

  /// Every token's attention summed over the window's queries (`[q_heads][n]` from `ws`),
  /// reduced like the EMA's steps (`reduce`).
  template <Element T>
  Scores score(const KVCache<T>& kv, const QueryWindow<query_type<T>>& queries, Granularity,
               Workspace& ws) const {
    return kernels::attention_scores(kv, queries, {.reduce = WindowReduce::sum}, params_.reduce,
                                     ws);
  }

 private:
  /// Walks the newcomer in `slot` (token index `count`) through the sinks and cascades of
  /// stored head h; at most one slot leaves. O(C).
  void insert(State& st, StreamCore& core, index_t h, token_t slot) const noexcept {
    const index_t t = st.count, sinks = params_.sinks, w = st.w;
    if (t < sinks) {
      st.sink[static_cast<std::size_t>(h * sinks + t)] = slot;
      return;
    }
    const bool eager = t <= sinks + params_.cascades * w;
    const float* score = st.score.data() + h * core.slots();
    token_t carry = slot;
    for (index_t c = 0; c < params_.cascades; ++c) {
      const auto base = static_cast<std::size_t>(h * params_.cascades + c);
      index_t& start = st.ring_start[base];
      index_t& count = st.ring_size[base];
      token_t* ring = st.ring.data() + base * static_cast<std::size_t>(w);
      const bool accepts = eager || ((t - sinks) & ((index_t{1} << c) - 1)) == 0;
      if (count < w && (accepts || count == 0)) {  // room (an empty cascade takes anyone)
        ring[(start + count) % w] = carry;
        ++count;
        return;
      }
      if (accepts) {  // full: the oldest moves on
        const token_t oldest = ring[start];
        ring[start] = carry;
        start = (start + 1) % w;
        carry = oldest;
        continue;
      }
      // Not accepting: a contest with the newest (ties go to the newcomer).
      token_t& newest = ring[(start + count - 1) % w];
      if (score[carry] >= score[newest]) std::swap(carry, newest);
      break;
    }
    core.evict(h, carry);
  }
};

}  // namespace kvevict
