// kvevict — KV-cache eviction policies for LLM inference.
// SPDX-License-Identifier: Apache-2.0
#pragma once

/// \file
/// \brief Policies × budgets × layers: the comparison `kvevict eval` and `kvevict demo` print.

#include <chrono>
#include <cmath>
#include <limits>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "../kvevict.hpp"
#include "../registry.hpp"
#include "metrics.hpp"
#include "replay.hpp"
#include "stored.hpp"
#include "workload.hpp"

namespace kvevict::eval {

/// How a policy is run.
enum class Mode {
  one_shot,  ///< `select` once with the observation window (prefill compression)
  replay,    ///< token by token from an empty cache (decode); see `replay`
};

constexpr std::string_view to_string(Mode m) {
  return m == Mode::one_shot ? "one-shot" : "replay";
}

/// One layer to compare policies on, dense fp32: K, V [kv_heads][n][d], the queries of the
/// context [q_heads][query_positions][d] — every position (then replay works), or only the
/// observation window — the held-out queries [q_heads][future][d], W_o (optional) and needles.
struct Layer {
  std::string name;
  index_t kv_heads = 0, q_heads = 0, n = 0, d = 0, d_v = 0, window = 0, query_positions = 0,
          future_count = 0, hidden = 0;
  std::vector<float> keys, values, queries, future, wo;
  std::vector<index_t> needles;

  bool replayable() const noexcept { return query_positions == n; }
  KVCache<float> cache() const {
    return {Storage<float>::hnd(const_cast<float*>(keys.data()), n, d),
            Storage<float>::hnd(const_cast<float*>(values.data()), n, d_v),
            {kv_heads, n, d, d_v}};
  }
  /// The observation window: the last `window` context queries (at least `at_least` when the
  /// layer has them: SnapKV-style policies need their own window).
  QueryWindow<float> window_queries(index_t at_least = 0) const {
    return QueryWindow<float>(queries.data(), q_heads, query_positions, d)
        .last(std::min(std::max(window, at_least), query_positions));
  }
  std::optional<OutputProjection> projection() const {
    if (wo.empty()) return std::nullopt;
    return OutputProjection::dense(wo.data(), q_heads, d_v, hidden);
  }
  EvalLayer metrics_view() const {
    return {keys.data(),
            values.data(),
            future.data(),
            wo.empty() ? nullptr : wo.data(),
            kv_heads,
            q_heads,
            n,
            d,
            d_v,
            future_count,
            hidden,
            needles};
  }
  DecodeTrace trace() const {
    return {keys.data(), values.data(), queries.data(), kv_heads, q_heads, n, d, d_v};
  }
};

/// A generated workload as a layer.
inline Layer layer_from(Workload w) {
  Layer l;
  l.name = w.spec.name;
  l.kv_heads = w.spec.kv_heads;
  l.q_heads = w.q_heads;
  l.n = w.spec.n;
  l.d = l.d_v = w.spec.head_dim;
  l.window = w.spec.window;
  l.query_positions = w.spec.n;
  l.future_count = w.spec.future;
  l.hidden = w.hidden;
  l.keys = std::move(w.keys);
  l.values = std::move(w.values);
  l.queries = std::move(w.queries);
  l.future = std::move(w.future);
  l.wo = std::move(w.wo);
  l.needles = std::move(w.needles);
  return l;
}

/// One result: a policy at a budget on a layer.
struct Row {
  std::string layer, policy;
  Mode mode = Mode::one_shot;
  std::string budget;                                          ///< "20%", "512" or "none"
  double budget_x = std::numeric_limits<double>::quiet_NaN();  ///< ratio or tokens, for plots
  Metrics metrics;
  double kept = 0;     ///< mean tokens kept per KV head
  double time_ms = 0;  ///< one `select` (one-shot), or the whole replay
  double replay_mean = std::numeric_limits<double>::quiet_NaN(),
         replay_max = std::numeric_limits<double>::quiet_NaN();
  double mean_live = std::numeric_limits<double>::quiet_NaN();  ///< replay: cache size per step
  std::string kv_format = "none";  ///< the cache format selected on (`--kv-format`)
  /// With a format: the share of the fp32 selection's (head, token) pairs the selection on the
  /// quantized cache also keeps (1 = the same tokens).
  double agreement = std::numeric_limits<double>::quiet_NaN();
};

/// The label and x of a budget.
inline std::pair<std::string, double> budget_label(const Budget& b) {
  if (b.is_none()) return {"none", std::numeric_limits<double>::quiet_NaN()};
  if (b.is_ratio()) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%g%%", b.fraction() * 100.0);
    return {buf, b.fraction()};
  }
  return {std::to_string(b.count()), static_cast<double>(b.count())};
}

/// Runs `policy` on `layer` at `budget` in `mode` and measures it. Budget-free policies take
/// `Budget::none()`. A policy whose granularity is `pages` keeps whole pages of `page_size`
/// tokens of the layer (its dense view has no page table of its own). Throws `kvevict::error`
/// for a replay on a layer without every position's query, or a budget the policy rejects.
///
/// With `format` (one-shot only) the policy selects on the layer's K and V stored in that
/// format (`Stored`, with the window's fp32 queries), the metrics compare the output of the
/// stored cache over the kept tokens with the exact fp32 output, and `agreement` compares the
/// selection with the one on fp32.
inline Row run(const Layer& layer, const AnyPolicy& policy, Budget budget, Mode mode, Workspace& ws,
               const ReplayOptions& replay_options = {}, index_t page_size = 16,
               KVFormat format = KVFormat::none) {
  using clock = std::chrono::steady_clock;
  Row row;
  row.layer = layer.name;
  row.policy = std::string(name_of(policy));
  row.mode = mode;
  std::tie(row.budget, row.budget_x) = budget_label(budget);
  Selection sel;
  // The metrics of the kept set (`kept` over the layer, seen through `view`: the fp32 layer, or
  // what a stored cache holds).
  const auto measure = [&](const Selection& kept, const EvalLayer& view) {
    row.metrics = evaluate(view, kept);
    for (index_t h = 0; h < layer.kv_heads; ++h)
      row.kept += static_cast<double>(kept.size(h)) / static_cast<double>(layer.kv_heads);
    return row;
  };
  if (mode == Mode::one_shot) {
    const KVCache<float> kv = layer.cache();
    // Policies with an observation window of their own (SnapKV, CriticalKV) get that many.
    const auto window = layer.window_queries(policy.window());
    // The fastest of three calls: the first sizes the workspace, the next touch its pages.
    row.time_ms = std::numeric_limits<double>::infinity();
    const auto one = [&] {
      if (policy.granularity() != Granularity::pages || !policy.reads_scores())
        return policy.select(kv, window, budget, sel, ws);  // position-only: no pages to score
      Workspace::Frame frame(ws);
      policy.choose(policy.score(kv, window, Granularity::pages, ws), budget, sel, ws, page_size);
    };
    for (int i = 0; i < 3; ++i) {
      const auto t0 = clock::now();
      one();
      row.time_ms = std::min(row.time_ms,
                             std::chrono::duration<double, std::milli>(clock::now() - t0).count());
    }
    if (format != KVFormat::none) {
      if (granularity_of(policy) == Granularity::pages)
        kvevict::detail::fail(
            "format", "a policy whose unit is not pages (the stored cache is dense)", "pages");
      row.kv_format = std::string(to_string(format));
      return with_format(
          format, layer.keys.data(), layer.values.data(), layer.kv_heads, layer.n, layer.d,
          layer.d_v, [&](const auto& stored) {
            Selection on_stored;
            const auto view = stored.view();
            const auto t0 = clock::now();
            select(policy, view, window, budget, on_stored, ws);
            row.time_ms = std::chrono::duration<double, std::milli>(clock::now() - t0).count();
            index_t both = 0, total = 0;
            std::vector<std::uint8_t> mask(static_cast<std::size_t>(layer.n));
            for (index_t h = 0; h < layer.kv_heads; ++h) {
              on_stored.to_mask(h, mask);
              for (const token_t t : sel.kept(h)) both += mask[static_cast<std::size_t>(t)];
              total += sel.size(h);
            }
            row.agreement =
                total > 0 ? static_cast<double>(both) / static_cast<double>(total) : 1.0;
            EvalLayer metrics = layer.metrics_view();
            metrics.approx_keys = stored.keys_read.data();
            metrics.approx_values = stored.values_read.data();
            return measure(on_stored, metrics);
          });
    }
  } else {
    if (format != KVFormat::none)
      kvevict::detail::fail("format", "one-shot mode (replays run on fp32)", to_string(format));
    if (!layer.replayable())
      kvevict::detail::fail("queries", "the query of every context position for a replay",
                            layer.query_positions, " positions of ", layer.n);
    std::optional<index_t> tokens;
    if (!budget.is_none()) tokens = budget.resolve(layer.n);
    const auto t0 = clock::now();
    const ReplayResult r = replay(policy, layer.trace(), tokens, replay_options);
    row.time_ms = std::chrono::duration<double, std::milli>(clock::now() - t0).count();
    row.replay_mean = r.mean_error;
    row.replay_max = r.max_error;
    row.mean_live = r.mean_live;
    sel.reset(layer.kv_heads, layer.n, false);
    for (const auto& head : r.kept) {
      const auto out = sel.add_head(static_cast<index_t>(head.size()));
      for (std::size_t i = 0; i < head.size(); ++i) out[i] = static_cast<token_t>(head[i]);
    }
  }
  return measure(sel, layer.metrics_view());
}

}  // namespace kvevict::eval
