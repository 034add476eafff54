// kvevict — KV-cache eviction policies for LLM inference.
// SPDX-License-Identifier: Apache-2.0
#pragma once

/// \file
/// \brief Decode replay: a policy runs token by token over recorded Q/K/V, and every step's
/// attention output is compared with full attention.
///
/// The cache starts empty. At step t, token t is appended; the query of position t attends over
/// the current cache (itself included) — that output is what the model would have used — and
/// the policy observes and evicts down to its budget. The error of step t is the relative L2
/// distance `‖o_t − ô_t‖ / ‖ô_t‖` between that output and full attention over tokens 0 … t,
/// per query head, averaged over heads.
///
/// Streaming policies run their own `start` / `append` / `observe` over a slot store of
/// `policy.slots()` tokens. One-shot policies are compressed periodically during decoding, the
/// semantics of kvpress's `DecodingPress` (presses/decoding_press.py, commit 8bb29b9): whenever
/// the cache reaches B + N tokens after an append (N = `every`, 1 by default: whenever it
/// exceeds B), `select` runs on it with budget B and the queries of the last `window` positions
/// as its observation window (an approximation when some of those tokens were evicted: the
/// window's causal mask assumes they are the cache's last tokens — exact for every policy that
/// keeps a recent window), and the cache is compacted back to B. The cache peaks at B + N, and
/// the policy's protected regions (sinks, recent window) are whatever the policy protects;
/// `DecodingPress` adds none either. One deviation: kvpress scores with the hidden states of
/// the steps since the last compression only (at most 256); here the window is the last
/// `window` queries whatever the interval, so N = 1 keeps a full observation window.
/// Budget-free policies take no budget.

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "../kvevict.hpp"
#include "../registry.hpp"

namespace kvevict::eval {

/// Q/K/V of one layer of one sequence, dense fp32: K [kv_heads][n][d], V [kv_heads][n][d_v],
/// Q [q_heads][n][d] (the query of every position).
struct DecodeTrace {
  const float* keys = nullptr;
  const float* values = nullptr;
  const float* queries = nullptr;
  index_t kv_heads = 0, q_heads = 0, n = 0, d = 0, d_v = 0;
};

struct ReplayOptions {
  index_t window = 32;  ///< Observation window of one-shot policies (last queries).
  /// One-shot policies: compress when the cache reaches budget + `every` tokens (≥ 1).
  index_t every = 1;
};

struct ReplayResult {
  std::vector<std::vector<std::int64_t>> kept;  ///< Final positions per KV head, ascending.
  std::vector<double> step_error;               ///< Per step, mean over query heads.
  double mean_error = 0, max_error = 0;         ///< Over all steps.
  double mean_live = 0;                         ///< Live tokens per KV head after each step.
  index_t max_live = 0;
};

namespace detail {

/// Attention output of one query over the tokens `rows` of one head (indices into `k`/`v`,
/// row-major [*, d] / [*, d_v]): `probs` gets the softmax, `out` the weighted values.
inline void attend(const float* q, const float* k, const float* v, index_t d, index_t dv,
                   std::span<const index_t> rows, std::span<float> probs, std::span<float> out) {
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));
  for (std::size_t i = 0; i < rows.size(); ++i)
    probs[i] = kernels::dot(q, k + rows[i] * d, d) * scale;
  kernels::softmax_inplace(probs.first(rows.size()));
  Eigen::Map<Eigen::VectorXf> o(out.data(), dv);
  o.setZero();
  for (std::size_t i = 0; i < rows.size(); ++i)
    o += probs[i] * Eigen::Map<const Eigen::VectorXf>(v + rows[i] * dv, dv);
}

inline double relative_l2(std::span<const float> got, std::span<const float> want) {
  double err = 0, norm = 0;
  for (std::size_t i = 0; i < want.size(); ++i) {
    err += std::pow(static_cast<double>(got[i]) - want[i], 2);
    norm += std::pow(static_cast<double>(want[i]), 2);
  }
  return norm > 0 ? std::sqrt(err / norm) : std::sqrt(err);
}

/// Per-step bookkeeping shared by both paths: full attention and the error of a step.
class StepScorer {
 public:
  explicit StepScorer(const DecodeTrace& t)
      : t_(t),
        all_(static_cast<std::size_t>(t.n)),
        probs_(static_cast<std::size_t>(t.n)),
        full_(static_cast<std::size_t>(t.d_v)),
        got_(static_cast<std::size_t>(t.d_v)) {
    for (index_t i = 0; i < t.n; ++i) all_[static_cast<std::size_t>(i)] = i;
  }
  const float* query(index_t h, index_t pos) const { return t_.queries + (h * t_.n + pos) * t_.d; }
  /// Error of query head h at step `pos` whose cache output is `got`.
  double error(index_t h, index_t pos, std::span<const float> got) {
    const index_t kvh = h / (t_.q_heads / t_.kv_heads);
    attend(query(h, pos), t_.keys + kvh * t_.n * t_.d, t_.values + kvh * t_.n * t_.d_v, t_.d,
           t_.d_v, std::span<const index_t>(all_).first(static_cast<std::size_t>(pos + 1)), probs_,
           full_);
    return relative_l2(got, full_);
  }

 private:
  const DecodeTrace& t_;
  std::vector<index_t> all_;
  std::vector<float> probs_, full_, got_;
};

inline void finish(ReplayResult& r, index_t n) {
  r.mean_error = 0;
  r.max_error = 0;
  for (double e : r.step_error) {
    r.mean_error += e / static_cast<double>(n);
    r.max_error = std::max(r.max_error, e);
  }
  r.mean_live /= static_cast<double>(n);
}

template <class P>
ReplayResult replay_streaming(const P& p, const DecodeTrace& t, std::optional<index_t> budget) {
  const index_t g = t.q_heads / t.kv_heads;
  auto policy = p.start({t.kv_heads, t.q_heads, budget.value_or(0), budget ? 0 : t.n + 1});
  const index_t slots = policy.slots();
  std::vector<float> ks(static_cast<std::size_t>(t.kv_heads * slots * t.d)),
      vs(static_cast<std::size_t>(t.kv_heads * slots * t.d_v)),
      rows(static_cast<std::size_t>(t.q_heads * slots)), got(static_cast<std::size_t>(t.d_v));
  const KVCache<float> store(Storage<float>::hnd(ks.data(), slots, t.d),
                             Storage<float>::hnd(vs.data(), slots, t.d_v),
                             {t.kv_heads, slots, t.d, t.d_v});
  const QueryWindow<float> queries(t.queries, t.q_heads, t.n, t.d);
  StepScorer scorer(t);
  Workspace ws;
  ReplayResult r;
  for (index_t pos = 0; pos < t.n; ++pos) {
    const auto slot = policy.append(pos);
    for (index_t h = 0; h < t.kv_heads; ++h) {
      const auto s = slot[static_cast<std::size_t>(h)];
      std::copy_n(t.keys + (h * t.n + pos) * t.d, t.d, store.key(h, s).data());
      std::copy_n(t.values + (h * t.n + pos) * t.d_v, t.d_v, store.value(h, s).data());
    }
    // The same probabilities an engine using observe_query would feed the policy.
    const AttentionRows a = attention_rows(policy, store, queries.sub(pos, 1), rows, ws);
    double step = 0;
    for (index_t h = 0; h < t.q_heads; ++h) {
      Eigen::Map<Eigen::VectorXf> o(got.data(), t.d_v);
      o.setZero();
      for (index_t s = 0; s < slots; ++s)
        if (a.at(h, s) != 0.0f)
          o += a.at(h, s) * Eigen::Map<const Eigen::VectorXf>(store.value(h / g, s).data(), t.d_v);
      step += scorer.error(h, pos, got) / static_cast<double>(t.q_heads);
    }
    r.step_error.push_back(step);
    policy.observe(a);
    index_t sizes = 0;
    for (index_t h = 0; h < t.kv_heads; ++h) {
      sizes += policy.size(h);
      r.max_live = std::max(r.max_live, policy.size(h));
    }
    r.mean_live += static_cast<double>(sizes) / static_cast<double>(t.kv_heads);
  }
  r.kept.resize(static_cast<std::size_t>(t.kv_heads));
  for (index_t h = 0; h < t.kv_heads; ++h) {
    auto& kept = r.kept[static_cast<std::size_t>(h)];
    for (index_t s = 0; s < slots; ++s)
      if (policy.position(h, s) >= 0) kept.push_back(policy.position(h, s));
    std::sort(kept.begin(), kept.end());
  }
  finish(r, t.n);
  return r;
}

template <class P>
ReplayResult replay_one_shot(const P& policy, const DecodeTrace& t, index_t budget,
                             const ReplayOptions& options) {
  const index_t g = t.q_heads / t.kv_heads, cap = budget + options.every;
  std::vector<float> ks(static_cast<std::size_t>(t.kv_heads * cap * t.d)),
      vs(static_cast<std::size_t>(t.kv_heads * cap * t.d_v)), got(static_cast<std::size_t>(t.d_v)),
      probs(static_cast<std::size_t>(cap));
  std::vector<std::vector<std::int64_t>> pos_of(static_cast<std::size_t>(t.kv_heads));
  std::vector<index_t> rows;
  StepScorer scorer(t);
  Selection sel;
  Workspace ws;
  Compaction compaction;
  ReplayResult r;
  index_t size = 0;  // equal for every head: the policies keep B per head
  for (index_t pos = 0; pos < t.n; ++pos) {
    for (index_t h = 0; h < t.kv_heads; ++h) {
      std::copy_n(t.keys + (h * t.n + pos) * t.d, t.d, ks.data() + (h * cap + size) * t.d);
      std::copy_n(t.values + (h * t.n + pos) * t.d_v, t.d_v, vs.data() + (h * cap + size) * t.d_v);
      pos_of[static_cast<std::size_t>(h)].push_back(pos);
    }
    ++size;
    rows.resize(static_cast<std::size_t>(size));
    for (index_t i = 0; i < size; ++i) rows[static_cast<std::size_t>(i)] = i;
    double step = 0;
    for (index_t h = 0; h < t.q_heads; ++h) {
      const index_t kvh = h / g;
      attend(scorer.query(h, pos), ks.data() + kvh * cap * t.d, vs.data() + kvh * cap * t.d_v, t.d,
             t.d_v, rows, probs, got);
      step += scorer.error(h, pos, got) / static_cast<double>(t.q_heads);
    }
    r.step_error.push_back(step);
    if (size >= budget + options.every) {
      const KVCache<float> kv(Storage<float>::hnd(ks.data(), cap, t.d),
                              Storage<float>::hnd(vs.data(), cap, t.d_v),
                              {t.kv_heads, size, t.d, t.d_v});
      const index_t w = std::min({options.window, pos + 1, size});
      const QueryWindow<float> all(t.queries, t.q_heads, t.n, t.d);
      policy.select(kv, all.sub(pos + 1 - w, w), Budget::tokens(budget), sel, ws);
      compact(kv, sel, compaction);
      for (index_t h = 0; h < t.kv_heads; ++h) {
        if (sel.size(h) != sel.size(0))
          kvevict::detail::fail("replay", "equal per-head budgets from a one-shot policy",
                                "head sizes ", sel.size(0), " and ", sel.size(h));
        auto& p = pos_of[static_cast<std::size_t>(h)];
        const auto kept = sel.kept(h);
        for (std::size_t i = 0; i < kept.size(); ++i) p[i] = p[static_cast<std::size_t>(kept[i])];
        p.resize(kept.size());
      }
      size = sel.size(0);
    }
    r.mean_live += static_cast<double>(size);
    r.max_live = std::max(r.max_live, size);
  }
  r.kept = pos_of;
  finish(r, t.n);
  return r;
}

}  // namespace detail

/// Replays `trace` through `policy` (see the file comment for the rule). `budget`: tokens kept
/// per KV head; required for every policy but budget-free ones, which reject it.
///
/// Complexity O(n² · d · q_heads) for the full-attention reference, plus the policy's own cost
/// (a one-shot policy's `select` every `options.every` steps once the cache is full). Allocates its
/// buffers; single threaded. Throws `kvevict::error` for a bad trace or budget.
inline ReplayResult replay(const AnyPolicy& policy, const DecodeTrace& trace,
                           std::optional<index_t> budget, const ReplayOptions& options = {}) {
  using kvevict::detail::fail;
  if (trace.keys == nullptr || trace.values == nullptr || trace.queries == nullptr)
    fail("trace", "keys, values and queries", "a null pointer");
  if (trace.kv_heads < 1 || trace.n < 1 || trace.d < 1 || trace.d_v < 1 ||
      trace.q_heads % trace.kv_heads != 0 || trace.q_heads < 1)
    fail("trace", "positive extents and q_heads a multiple of kv_heads",
         kvevict::detail::cat("kv_heads=", trace.kv_heads, " q_heads=", trace.q_heads,
                              " n=", trace.n, " d=", trace.d));
  if (options.window < 1) fail("window", "at least 1 query", options.window);
  if (options.every < 1) fail("every", "at least 1 token between compressions", options.every);
  const PolicyInfo& info = policy.info();
  const std::string name(policy.name());
  if (info.budget_free) {
    if (budget) fail("budget", kvevict::detail::cat("none: ", name, " is budget-free"), *budget);
  } else {
    if (!budget) fail("budget", kvevict::detail::cat("a token budget for ", name), "none");
    if (*budget < 1) fail("budget", "a token count >= 1", *budget);
  }
  // A budget of n or more evicts nothing: n slots are enough.
  const std::optional<index_t> b =
      budget ? std::optional<index_t>(std::min(*budget, trace.n)) : std::nullopt;
  if (info.streaming) {
    if (options.every != 1)
      fail("every", kvevict::detail::cat("1: ", name, " evicts at every step"), options.every);
    return detail::replay_streaming(policy, trace, b);
  }
  return detail::replay_one_shot(policy, trace, *b, options);
}

}  // namespace kvevict::eval
