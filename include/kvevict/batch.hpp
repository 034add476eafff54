// kvevict — KV-cache eviction policies for LLM inference.
// SPDX-License-Identifier: Apache-2.0
#pragma once

/// \file
/// \brief `select_layers`: one call for every layer of a sequence (or of several sequences) —
/// what an engine does after prefill — with one workspace and, optionally, the engine's threads.

#include <span>

#include "budget.hpp"
#include "error.hpp"
#include "executor.hpp"
#include "kv_cache.hpp"
#include "policy.hpp"
#include "query_window.hpp"
#include "selection.hpp"
#include "workspace.hpp"

namespace kvevict {

/// Runs `policy`'s one-shot selection (a policy type, or an `AnyPolicy`) on every view: `out[i]`
/// from `caches[i]` and `queries[i]` at `budget`. The views may be layers of one sequence or of
/// several (each keeps its own layer index, so seeded policies differ per layer as in single
/// calls); every result is exactly what `select(policy, caches[i], queries[i], budget, out[i], ws)`
/// gives.
///
/// Threads: with an executor on `ws` and more than one view, views run as parallel tasks, each
/// on its worker's scratch (`ws.worker(w)`, serial inside); with one view the executor splits
/// that view's KV heads instead. Results do not depend on the number of workers.
///
/// All or nothing: when any view fails, every `out[i]` is left incomplete and the error of the
/// lowest failing index is thrown (the one a loop of single calls would throw first).
/// Throws `kvevict::error` when the three spans differ in length.
template <Element T, class P>
requires selects_from_window<P, T>
void select_layers(const P& policy, std::span<const KVCache<T>> caches,
                   std::span<const QueryWindow<query_type<T>>> queries, Budget budget,
                   std::span<Selection> out, Workspace& ws) {
  if (queries.size() != caches.size())
    detail::fail("queries", detail::cat("one window per cache (", caches.size(), ")"),
                 queries.size());
  if (out.size() != caches.size())
    detail::fail("out", detail::cat("one selection per cache (", caches.size(), ")"), out.size());
  const auto count = static_cast<index_t>(caches.size());
  const Executor* exec = ws.executor();
  try {
    if (exec == nullptr || exec->workers() <= 1 || count <= 1) {
      for (index_t i = 0; i < count; ++i) {
        const auto u = static_cast<std::size_t>(i);
        policy.select(caches[u], queries[u], budget, out[u], ws);
      }
    } else {
      ws.prepare_workers(exec->workers());
      detail::run_tasks(exec, count, [&](index_t i, index_t worker) {
        const auto u = static_cast<std::size_t>(i);
        policy.select(caches[u], queries[u], budget, out[u], ws.worker(worker));
      });
    }
  } catch (...) {
    for (Selection& s : out) s.clear();
    throw;
  }
}

}  // namespace kvevict
