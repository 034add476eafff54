// The engine's threads (issue 21): an Executor on the workspace splits scoring by KV head,
// attention rows by query head, compaction by KV head and select_layers by layer — with results
// identical to the serial ones for any number of workers, and the serial run's error. Run under
// ThreadSanitizer by the `test-tsan` preset (the suite is `Threads`).
// SPDX-License-Identifier: Apache-2.0
#include <kvevict/registry.hpp>

#include <atomic>
#include <cmath>
#include <cstring>
#include <set>
#include <string>

#include "policy_settings.hpp"
#include "support.hpp"

namespace kvevict::test {
namespace {

struct Layer {
  index_t heads = 4, n = 300, d = 32, q_heads = 8, w = 16;
  std::vector<float> k, v, q, wo;
  index_t layer;
  explicit Layer(index_t i)
      : k(normals(static_cast<std::size_t>(4 * 300 * 32), 10 + static_cast<std::uint64_t>(i))),
        v(normals(k.size(), 20 + static_cast<std::uint64_t>(i))),
        q(normals(static_cast<std::size_t>(8 * 16 * 32), 30 + static_cast<std::uint64_t>(i))),
        wo(normals(static_cast<std::size_t>(8 * 32 * 24), 40)),
        layer(i) {}
  KVCache<float> kv() {
    return KVCache<float>(Storage<float>::hnd(k.data(), n, d), Storage<float>::hnd(v.data(), n, d),
                          {heads, n, d})
        .with_layer(layer);
  }
  QueryWindow<float> queries() const { return {q.data(), q_heads, w, d}; }
};

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const error& e) {
    return e.what();
  }
  return "no error";
}

TEST(Threads, ThreadExecutorRunsEveryTaskOnceOnItsWorkers) {
  for (index_t workers : {1, 2, 3, 7}) {
    const ThreadExecutor ex(workers);
    std::vector<std::atomic<int>> runs(100);
    std::atomic<index_t> worst_worker{0};
    ex.parallel_for(100, [&](index_t t, index_t w) {
      runs[static_cast<std::size_t>(t)]++;
      index_t seen = worst_worker.load();
      while (w > seen && !worst_worker.compare_exchange_weak(seen, w)) {
      }
    });
    for (const auto& r : runs) EXPECT_EQ(r.load(), 1);
    EXPECT_LT(worst_worker.load(), workers);
  }
  EXPECT_THROW(ThreadExecutor(0), error);
  // detail::run_tasks: every task runs, the lowest failing index's error comes back.
  const ThreadExecutor ex(3);
  std::atomic<int> ran{0};
  const std::string e = error_of([&] {
    detail::run_tasks(&ex, 20, [&](index_t t, index_t) {
      ++ran;
      if (t == 13 || t == 4 || t == 17) detail::fail("task", "no error", t);
    });
  });
  EXPECT_EQ(e, "task: expected no error, got 4");
  EXPECT_EQ(ran.load(), 20);
}

// Scoring: every attention-based policy's select with 2 and 3 workers equals the serial one.
TEST(Threads, EveryPolicySelectsTheSameWithAnyNumberOfWorkers) {
  Layer l(1);
  const auto wo = OutputProjection::dense(l.wo.data(), l.q_heads, l.d, 24);
  for (const auto name : policy_names()) {
    const auto policy = make_policy(name, {.settings = small_settings(name), .seed = 3, .wo = &wo});
    const Budget budget = budget_free(policy) ? Budget::none() : Budget::ratio(0.3);
    Selection serial;
    Workspace ws;
    select(policy, l.kv(), l.queries(), budget, serial, ws);
    for (index_t workers : {2, 3}) {
      const ThreadExecutor ex(workers);
      Workspace pws;
      pws.set_executor(&ex);
      Selection par;
      select(policy, l.kv(), l.queries(), budget, par, pws);
      for (index_t h = 0; h < l.heads; ++h) {
        const auto a = serial.kept(h), b = par.kept(h);
        EXPECT_TRUE(std::equal(a.begin(), a.end(), b.begin(), b.end()))
            << name << " head " << h << " with " << workers << " workers";
      }
    }
  }
}

TEST(Threads, WindowAttentionIsBitIdenticalAndFailsAsTheSerialRun) {
  Layer l(2);
  std::vector<float> serial(static_cast<std::size_t>(l.q_heads * l.n)), par(serial.size());
  Workspace ws;
  kernels::window_attention(l.kv(), l.queries(), {}, serial, ws);
  const ThreadExecutor ex(2);
  Workspace pws;
  pws.set_executor(&ex);
  kernels::window_attention(l.kv(), l.queries(), {}, par, pws);
  EXPECT_EQ(std::memcmp(serial.data(), par.data(), serial.size() * sizeof(float)), 0);
  // Non-finite keys in heads 3 and 1: both runs name head 1.
  l.k[static_cast<std::size_t>((3 * l.n + 5) * l.d)] = NAN;
  l.k[static_cast<std::size_t>((1 * l.n + 9) * l.d + 2)] = INFINITY;
  const std::string want =
      error_of([&] { kernels::window_attention(l.kv(), l.queries(), {}, serial, ws); });
  EXPECT_NE(want.find("KV head 1"), std::string::npos) << want;
  EXPECT_EQ(error_of([&] { kernels::window_attention(l.kv(), l.queries(), {}, par, pws); }), want);
}

TEST(Threads, CompactionWithWorkersLeavesTheSameMemory) {
  Layer a(3), b(3);
  Selection sel;
  Workspace ws;
  SnapKV({.window = 16}).select(a.kv(), a.queries(), Budget::ratio(0.4), sel, ws);
  const Compaction ca = compact(a.kv(), sel);
  const ThreadExecutor ex(2);
  Compaction cb;
  compact(b.kv(), sel, cb, &ex);
  EXPECT_EQ(a.k, b.k);
  EXPECT_EQ(a.v, b.v);
  EXPECT_EQ(ca.positions, cb.positions);
}

TEST(Threads, AttentionRowsPerQueryHeadMatchTheSerialOnes) {
  Layer l(4);
  const H2O h2o({.recent = 50});
  auto seq = h2o.start({.kv_heads = l.heads, .q_heads = l.q_heads, .budget = 200});
  ASSERT_LE(seq.slots(), l.n);
  // The slots view over the layer's memory; 150 tokens go through the stream first.
  const KVCache<float> slots(Storage<float>::hnd(l.k.data(), l.n, l.d),
                             Storage<float>::hnd(l.v.data(), l.n, l.d),
                             {l.heads, seq.slots(), l.d});
  const QueryWindow<float> q(l.q.data(), l.q_heads, 1, l.d);
  Workspace warm;
  for (index_t t = 0; t < 150; ++t) {
    seq.append(t);
    observe_query(seq, slots, q, warm);
  }
  std::vector<float> serial(static_cast<std::size_t>(l.q_heads * seq.slots())), par(serial.size());
  Workspace ws;
  attention_rows(seq, slots, q, serial, ws);
  const ThreadExecutor ex(2);
  Workspace pws;
  pws.set_executor(&ex);
  attention_rows(seq, slots, q, par, pws);
  EXPECT_EQ(serial, par);
}

// select_layers = a loop of selects, with or without workers; all or nothing on failure.
TEST(Threads, SelectLayersEqualsALoopAndIsAllOrNothing) {
  std::vector<Layer> layers;
  for (index_t i = 0; i < 5; ++i) layers.emplace_back(i);
  std::vector<KVCache<float>> caches;
  std::vector<QueryWindow<float>> windows;
  for (auto& l : layers) {
    caches.push_back(l.kv());
    windows.push_back(l.queries());
  }
  const AnyPolicy policy = make_policy("nacl", {.settings = small_settings("nacl"), .seed = 9});
  std::vector<Selection> loop(5), batch(5), par(5);
  Workspace ws;
  for (std::size_t i = 0; i < 5; ++i)
    select(policy, caches[i], windows[i], Budget::ratio(0.25), loop[i], ws);
  select_layers<float>(policy, caches, windows, Budget::ratio(0.25), batch, ws);
  const ThreadExecutor ex(2);
  Workspace pws;
  pws.set_executor(&ex);
  select_layers<float>(policy, caches, windows, Budget::ratio(0.25), par, pws);
  for (std::size_t i = 0; i < 5; ++i)
    for (index_t h = 0; h < 4; ++h) {
      const auto a = loop[i].kept(h), b = batch[i].kept(h), c = par[i].kept(h);
      EXPECT_TRUE(std::equal(a.begin(), a.end(), b.begin(), b.end())) << i;
      EXPECT_TRUE(std::equal(a.begin(), a.end(), c.begin(), c.end())) << i;
    }
  // Layers 3 and 1 fail: nothing is kept anywhere, and the error is layer 1's.
  layers[3].k[7] = NAN;
  layers[1].q[3] = INFINITY;
  const std::string want =
      error_of([&] { select(policy, caches[1], windows[1], Budget::ratio(0.25), loop[1], ws); });
  for (Workspace* w : {&ws, &pws}) {
    EXPECT_EQ(error_of([&] {
                select_layers<float>(policy, caches, windows, Budget::ratio(0.25), par, *w);
              }),
              want);
    for (const auto& s : par) EXPECT_FALSE(s.complete());
  }
  EXPECT_EQ(error_of([&] {
              select_layers<float>(policy, caches, std::span(windows).first(2), Budget::ratio(0.25),
                                   par, ws);
            }),
            "queries: expected one window per cache (5), got 2");
}

}  // namespace
}  // namespace kvevict::test
