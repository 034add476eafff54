// kvevict — KV-cache eviction policies for LLM inference.
// SPDX-License-Identifier: Apache-2.0
#pragma once

/// \file
/// \brief `Executor`: the engine's threads, lent to kvevict. The library starts no thread of its
/// own; given an executor (through `Workspace::set_executor`, or to `compact`), it splits work by
/// KV head (scoring, compaction), query head (`attention_rows`) or layer (`select_layers`).
///
/// Results are identical for any executor and any number of workers: every task writes memory
/// no other task writes, and reductions are never split across tasks. Errors are deterministic
/// too: when tasks throw, the error of the lowest task index is rethrown (the one a serial run
/// throws first), after every task has finished.

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <exception>
#include <functional>
#include <thread>
#include <vector>

#include "error.hpp"

namespace kvevict {

/// What kvevict needs of a thread pool: run `fn(task, worker)` for every task in [0, count),
/// each exactly once, on at most `workers()` threads at a time, and return when all are done.
/// `worker` in [0, workers()) names the thread a task runs on (two tasks running at the same
/// time never share a worker id): kvevict gives each worker its own scratch memory. Tasks may
/// throw; an implementation must let every task run and may rethrow any of their errors (or
/// none: kvevict catches inside each task). An engine wraps its pool in a few lines (see the
/// README); `ThreadExecutor` is a simple one for tools and tests.
class Executor {
 public:
  using Task = std::function<void(index_t task, index_t worker)>;
  virtual ~Executor() = default;
  /// Threads that may run tasks at the same time (≥ 1).
  virtual index_t workers() const noexcept = 0;
  virtual void parallel_for(index_t count, const Task& fn) const = 0;
};

/// An `Executor` that starts `workers − 1` std::threads per `parallel_for` call (the caller's
/// thread is worker 0) and hands out tasks through an atomic counter. Costs a thread start per
/// call (~10–50 µs): fine for prompt compression, not for per-token calls — wrap the engine's own
/// pool for those.
class ThreadExecutor final : public Executor {
 public:
  explicit ThreadExecutor(index_t workers) : workers_(workers) {
    detail::require(workers >= 1, "workers", "at least 1 worker", workers);
  }
  index_t workers() const noexcept override { return workers_; }
  /// Every task runs; the first error caught (in time) is rethrown after all are done.
  void parallel_for(index_t count, const Task& fn) const override {
    std::atomic<index_t> next{0};
    std::exception_ptr error;
    std::atomic_flag failed = ATOMIC_FLAG_INIT;
    const auto work = [&](index_t worker) {
      for (index_t t = next++; t < count; t = next++) {
        try {
          fn(t, worker);
        } catch (...) {
          if (!failed.test_and_set()) error = std::current_exception();
        }
      }
    };
    std::vector<std::thread> threads;
    const index_t extra = std::min(workers_, count) - 1;
    threads.reserve(static_cast<std::size_t>(std::max<index_t>(extra, 0)));
    for (index_t w = 1; w <= extra; ++w) threads.emplace_back(work, w);
    work(0);
    for (auto& t : threads) t.join();
    if (error) std::rethrow_exception(error);
  }

 private:
  index_t workers_;
};

namespace detail {

/// Runs `fn(task, worker)` for tasks [0, count): on `exec` when given and there is more than one
/// task, serially (worker 0) otherwise. Every task runs even when some throw; then the error of
/// the lowest failing task is rethrown.
template <class F>
void run_tasks(const Executor* exec, index_t count, F&& fn) {
  if (exec == nullptr || exec->workers() <= 1 || count <= 1) {
    for (index_t t = 0; t < count; ++t) fn(t, index_t{0});
    return;
  }
  std::vector<std::exception_ptr> errors(static_cast<std::size_t>(count));
  exec->parallel_for(count, [&](index_t task, index_t worker) {
    try {
      fn(task, worker);
    } catch (...) {
      errors[static_cast<std::size_t>(task)] = std::current_exception();
    }
  });
  for (const auto& e : errors)
    if (e) std::rethrow_exception(e);
}

}  // namespace detail
}  // namespace kvevict
