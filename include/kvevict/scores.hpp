// kvevict — KV-cache eviction policies for LLM inference.
// SPDX-License-Identifier: Apache-2.0
#pragma once

/// \file
/// \brief `Scores`: what a scorer (a policy's, or an engine's own attention kernel) says about
/// each token of one layer, and the `Granularity` a choice is made in.
///
/// The pipeline every policy runs is **score → choose → apply**: a scorer turns the cache view
/// and queries into fp32 scores per head and token (`Scores`), the one chooser (`choose`,
/// choose.hpp) turns scores, protected regions and a budget into a `Selection` in the
/// granularity the engine can free, and `compact` (or the engine's own removal) applies it.
/// An engine that computes attention itself hands its scores in at the middle step.

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <span>
#include <string_view>

#include "error.hpp"
#include "kernels/reduce.hpp"
#include "workspace.hpp"

namespace kvevict {

/// The unit a selection frees memory in — what an engine's cache can drop. Which one an engine
/// needs: README, "Which granularity does my engine need".
enum class Granularity {
  per_head,  ///< each KV head its own set; ragged when AdaKV head budgets are on (HF/kvpress)
  equal,     ///< each KV head its own set, every head the same count (vLLM, FlashInfer: one
             ///< length per layer)
  shared,    ///< one set for all KV heads of a layer, scores reduced over every query head
  layers,    ///< one set for all heads of all layers given together (llama.cpp's cells)
  pages,     ///< whole pages of `page_size` tokens, shared by the heads (OpenVINO GenAI-style
             ///< block eviction: the engine frees blocks, nothing is compacted)
};

/// The command-line spelling of a `Granularity`.
constexpr std::string_view to_string(Granularity g) {
  switch (g) {
    case Granularity::per_head:
      return "per_head";
    case Granularity::equal:
      return "equal";
    case Granularity::shared:
      return "shared";
    case Granularity::layers:
      return "layers";
    case Granularity::pages:
      return "pages";
  }
  return "?";
}

/// Every `Granularity`, in the order the command lists them.
constexpr std::array<Granularity, 5> all_values(Granularity) {
  return {Granularity::per_head, Granularity::equal, Granularity::shared, Granularity::layers,
          Granularity::pages};
}

/// True for the granularities whose selection is one set for all KV heads.
constexpr bool one_set(Granularity g) noexcept {
  return g == Granularity::shared || g == Granularity::layers || g == Granularity::pages;
}

/// Whose rows a score matrix holds.
enum class ScoreRows {
  query_heads,  ///< one row per query head; the chooser reduces each GQA group (or all heads)
  kv_heads,     ///< one row per KV head, already reduced over its group
  shared,       ///< one row for the whole layer
};

/// Token regions kept outright, before any score is read: `[0, sinks)` and `[n − recent, n)`.
/// They never compete, so they never lose a tie.
struct Protected {
  index_t sinks = 0;
  index_t recent = 0;
  std::string_view recent_name = "recent";  ///< what error messages call the recent region

  /// Tokens the regions hold in a cache of n tokens (they may overlap in a short cache).
  index_t count(index_t n) const noexcept {
    return std::min(n, std::min(sinks, n) + std::min(recent, n));
  }
  friend bool operator==(const Protected&, const Protected&) = default;
};

/// The union of two sets of protected regions.
constexpr Protected unite(Protected a, Protected b) noexcept {
  return {std::max(a.sinks, b.sinks), std::max(a.recent, b.recent),
          a.recent >= b.recent ? a.recent_name : b.recent_name};
}

/// Token scores of one layer: fp32 `[rows][tokens]`, row-major, higher = more worth keeping.
/// A view of memory the caller owns (a scorer's from the workspace, or an engine's).
///
/// - `kind` says whose rows they are; `reduce` how the chooser combines query-head rows into a
///   KV head (over its GQA group of g = rows / kv_heads) and every head into one shared row.
/// - `protect`: the regions the scorer implies (SnapKV's observation window is `recent = w`;
///   tokens there need no score, and their entries are never read).
/// - `second`: an optional second channel of the same shape (CriticalKV's projected value
///   norms), reduced over heads with `second_reduce`.
/// - `layer` keys the random streams of choosers that sample (NACL, random).
///
/// **Example** (an engine that has its own window attention probabilities `p[q_head][n]`):
/// \code
/// kvevict::Scores s{.values = p, .rows = q_heads, .tokens = n, .kv_heads = kv_heads,
///                   .kind = kvevict::ScoreRows::query_heads, .protect = {.recent = 32}};
/// kvevict::choose(s, {.budget = kvevict::Budget::ratio(0.2)}, kvevict::TopK{}, keep, ws);
/// \endcode
struct Scores {
  std::span<const float> values = {};  ///< rows · tokens floats (empty for positional choosers)
  index_t rows = 0;
  index_t tokens = 0;
  index_t kv_heads = 0;  ///< KV heads of the layer (the selection's heads)
  ScoreRows kind = ScoreRows::query_heads;
  GroupReduce reduce = GroupReduce::mean;
  Protected protect = {};
  std::span<const float> second = {};
  GroupReduce second_reduce = GroupReduce::mean;
  index_t layer = 0;

  /// One row per KV head of `view` (a `KVCache`), already reduced over its group: what a
  /// scorer reading keys or values alone returns (KNorm, KeyDiff).
  template <class View>
  static Scores of_kv_heads(std::span<const float> values, const View& view) {
    return {.values = values,
            .rows = view.kv_heads(),
            .tokens = view.tokens(),
            .kv_heads = view.kv_heads(),
            .kind = ScoreRows::kv_heads,
            .layer = view.layer()};
  }
  /// One row per query head (`q_heads` rows over `view`'s tokens), each KV head's group
  /// reduced by `reduce` when chosen; `protect`: the regions the scores imply.
  template <class View>
  static Scores of_query_heads(std::span<const float> values, index_t q_heads, const View& view,
                               GroupReduce reduce, Protected protect = {}) {
    return {.values = values,
            .rows = q_heads,
            .tokens = view.tokens(),
            .kv_heads = view.kv_heads(),
            .kind = ScoreRows::query_heads,
            .reduce = reduce,
            .protect = protect,
            .layer = view.layer()};
  }

  /// Row r of the first channel.
  std::span<const float> row(index_t r) const noexcept {
    return values.subspan(static_cast<std::size_t>(r * tokens), static_cast<std::size_t>(tokens));
  }

  /// Checks the shape (rows that match `kind` and `kv_heads`, both channels rows · tokens) and
  /// that no score is NaN (±inf are allowed: an engine may mask a token with −inf). Throws
  /// `kvevict::error` naming `scores`. O(rows · tokens).
  void validate() const {
    detail::require(tokens >= 1, "scores.tokens", "at least 1 token", tokens);
    detail::require(kv_heads >= 1, "scores.kv_heads", "at least 1 KV head", kv_heads);
    if (values.empty() && second.empty() && rows == 0) return;  // positional: no scores
    switch (kind) {
      case ScoreRows::query_heads:
        detail::require(rows >= kv_heads && rows % kv_heads == 0, "scores.rows",
                        detail::cat("a multiple of kv_heads (", kv_heads, ") query-head rows"),
                        rows);
        break;
      case ScoreRows::kv_heads:
        detail::require(rows == kv_heads, "scores.rows",
                        detail::cat("one row per KV head (", kv_heads, ")"), rows);
        break;
      case ScoreRows::shared:
        detail::require(rows == 1, "scores.rows", "1 row (shared)", rows);
        break;
    }
    check_channel(values, "scores.values");
    if (!second.empty()) check_channel(second, "scores.second");
  }

 private:
  void check_channel(std::span<const float> data, std::string_view name) const {
    if (static_cast<index_t>(data.size()) != rows * tokens)
      detail::fail(name, detail::cat("rows · tokens (", rows * tokens, ") floats"), data.size());
    for (std::size_t i = 0; i < data.size(); ++i)
      if (std::isnan(data[i]))
        detail::fail(name, "scores that are not NaN", "NaN at row ",
                     static_cast<index_t>(i) / tokens, ", token ",
                     static_cast<index_t>(i) % tokens);
  }
};

namespace detail {

/// The rows of `channel` (rows · n floats of kind `kind`) reduced to the rows granularity `g`
/// chooses from: KV-head rows for per-head choices, one row for shared ones. A view of the
/// input when nothing needs reducing, else written to `scratch` (kv_heads · n floats).
/// Query-head rows reduce straight to one shared row (not through KV heads), so a shared
/// choice reduces every query head with one operation, as the paper's layer-wise policies do.
inline std::span<const float> reduce_rows(std::span<const float> channel, ScoreRows kind,
                                          index_t rows, index_t n, index_t kv_heads, GroupReduce op,
                                          Granularity g, std::span<float> scratch) {
  const bool shared = one_set(g);
  switch (kind) {
    case ScoreRows::shared:
      if (!shared)
        fail("scores.kind", "per-head rows for a per-head choice (query_heads or kv_heads)",
             "shared");
      return channel;
    case ScoreRows::kv_heads:
      if (!shared) return channel;
      kernels::reduce_group(channel.data(), n, kv_heads, n, op, scratch.data());
      return scratch.first(static_cast<std::size_t>(n));
    case ScoreRows::query_heads: {
      const auto out = scratch.first(static_cast<std::size_t>((shared ? 1 : kv_heads) * n));
      kernels::reduce_groups(channel, rows, n, kv_heads, op, shared, out);
      return out;
    }
  }
  return channel;
}

}  // namespace detail

/// Which KV heads of a layer one tensor-parallel rank holds (with their query heads).
struct Shard {
  index_t first_kv_head = 0;   ///< the rank's first KV head in the whole layer
  index_t total_kv_heads = 0;  ///< KV heads of the whole layer
};

/// Tensor parallel, step 1 of 2. A rank scores its own heads (`local`, per-head rows of its
/// `local.kv_heads` KV heads); to choose one set on every rank, the scores of all ranks must
/// meet. This writes `local`'s rows into `all` at the rows the shard's heads have in the whole
/// layer, every other entry 0: `all` holds `scores_size(local, shard)` floats. The engine then
/// sums `all` over ranks with its own collective (`MPI_Allreduce(…, MPI_SUM)`, NCCL's
/// all-reduce): adding zeros is exact, so every rank ends with every head's scores bit for bit,
/// in any reduction order. Both channels (CriticalKV's norms too) travel in the one buffer.
/// Throws for rows already reduced over heads (`ScoreRows::shared`: H2O's `reduce = max` for a
/// shared choice), which no rank can complete alone.
inline index_t scores_size(const Scores& local, Shard shard) {
  const index_t g = local.kind == ScoreRows::query_heads ? local.rows / local.kv_heads : 1;
  return (local.second.empty() ? 1 : 2) * shard.total_kv_heads * g * local.tokens;
}

inline void place_shard(const Scores& local, Shard shard, std::span<float> all) {
  local.validate();
  if (local.kind == ScoreRows::shared)
    detail::fail("scores.kind", "per-head rows (query_heads or kv_heads) to share between ranks",
                 "shared");
  detail::require(
      shard.first_kv_head >= 0 && shard.first_kv_head + local.kv_heads <= shard.total_kv_heads,
      "shard", detail::cat("KV heads within the layer's ", shard.total_kv_heads),
      shard.first_kv_head);
  if (static_cast<index_t>(all.size()) != scores_size(local, shard))
    detail::fail("all", detail::cat("scores_size (", scores_size(local, shard), ") floats"),
                 all.size());
  std::fill(all.begin(), all.end(), 0.0f);
  const index_t g = local.rows / local.kv_heads, n = local.tokens;
  const index_t total_rows = shard.total_kv_heads * g, first_row = shard.first_kv_head * g;
  std::copy(local.values.begin(), local.values.end(), all.begin() + first_row * n);
  if (!local.second.empty())
    std::copy(local.second.begin(), local.second.end(), all.begin() + (total_rows + first_row) * n);
}

/// Tensor parallel, step 2 of 2: after the all-reduce, the whole layer's scores as a `Scores`
/// view of `all` (rows of every rank's heads), to hand to `choose` (or a policy's `choose`) on
/// every rank: the same inputs give the same set everywhere, equal to what one process scoring
/// every head would choose. A rank applies `sel.kept(h)` to its own heads h (global indices).
inline Scores whole_layer(const Scores& local, Shard shard, std::span<const float> all) {
  const index_t g = local.rows / local.kv_heads, n = local.tokens;
  const index_t total_rows = shard.total_kv_heads * g;
  Scores out = local;
  out.rows = total_rows;
  out.kv_heads = shard.total_kv_heads;
  out.values = all.first(static_cast<std::size_t>(total_rows * n));
  if (!local.second.empty()) out.second = all.subspan(static_cast<std::size_t>(total_rows * n));
  return out;
}

/// The rows a choice in granularity `g` ranks: `scores`' first channel reduced to one row per
/// KV head (per-head choices) or to one row (shared ones), `[rows][tokens]`. A view of the
/// input when nothing needs reducing, else written to memory from `ws` (valid in the caller's
/// frame). O(rows · tokens).
inline std::span<const float> ranked_rows(const Scores& scores, Granularity g, Workspace& ws) {
  scores.validate();
  return detail::reduce_rows(scores.values, scores.kind, scores.rows, scores.tokens,
                             scores.kv_heads, scores.reduce, g,
                             ws.take<float>(scores.kv_heads * scores.tokens));
}

}  // namespace kvevict
