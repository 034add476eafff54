// H2O (hand cases, streaming vs one-shot), the streaming driver, and decode replay.
// SPDX-License-Identifier: Apache-2.0
#include <kvevict/eval/replay.hpp>
#include <kvevict/periodic.hpp>

#include <cmath>

#include "support.hpp"

namespace kvevict::test {
namespace {

static_assert(StreamingPolicy<StreamingLLM> && StreamingPolicy<TOVA> && StreamingPolicy<H2O> &&
              StreamingPolicy<RandomEviction>);
static_assert(EvictionPolicy<H2O, Eigen::bfloat16>);
static_assert(!StreamingPolicy<SnapKV>);

std::vector<token_t> kept(const Selection& s, index_t h = 0) {
  return {s.kept(h).begin(), s.kept(h).end()};
}

/// Feeds H2O one step of attention given per slot; returns the evicted position (−1: none).
std::int64_t step(Stream<H2O>& h2o, std::int64_t pos, const std::vector<float>& by_slot) {
  h2o.append(pos);
  std::vector<float> rows(static_cast<std::size_t>(h2o.slots()), 0.0f);
  std::copy(by_slot.begin(), by_slot.end(), rows.begin());
  // The position must be read before observe frees the slot.
  std::vector<std::int64_t> before(rows.size());
  for (index_t s = 0; s < h2o.slots(); ++s)
    before[static_cast<std::size_t>(s)] = h2o.position(0, s);
  const Evictions ev = h2o.observe({rows.data(), 1, h2o.slots(), h2o.slots()});
  return ev.empty() ? -1 : before[static_cast<std::size_t>(ev.of(0)[0])];
}

// Budget 3, recent 1 (heavy 2). Slots are reused in eviction order; attention rows are dyadic
// so the sums are exact. By hand (acc per position after each step):
//   t0: {0: 1}
//   t1: {0: 1.5, 1: .5}
//   t2: {0: 2, 1: .75, 2: .25}
//   t3: {0: 2.25, 1: .75, 2: .75, 3: .25}, over budget, 3 is recent; 1 and 2 tie → the older,
//       position 1, leaves
//   t4 (into slot 1): {0: 2.5, 2: 1, 3: .5, 4: .25} → 4 recent; position 3 (.5) leaves
//   t5 (into slot 3): {0: 3, 2: 1.125, 4: .375, 5: .25} → 5 recent; position 4 (.375) leaves
TEST(H2O, HandComputedSixTokens) {
  H2O h2o_policy({.recent = 1});
  auto h2o = h2o_policy.start({.kv_heads = 1, .q_heads = 1, .budget = 3});
  ASSERT_EQ(h2o.slots(), 4);
  EXPECT_EQ(step(h2o, 0, {1}), -1);
  EXPECT_EQ(step(h2o, 1, {.5f, .5f}), -1);
  EXPECT_EQ(step(h2o, 2, {.5f, .25f, .25f}), -1);
  EXPECT_EQ(step(h2o, 3, {.25f, 0, .5f, .25f}), 1);
  EXPECT_EQ(step(h2o, 4, {.25f, .25f, .25f, .25f}), 3);   // slots: 0→0, 1→4, 2→2, 3→3
  EXPECT_EQ(step(h2o, 5, {.5f, .125f, .125f, .25f}), 4);  // slots: 0→0, 1→4, 2→2, 3→5
  EXPECT_FLOAT_EQ(h2o.state().score(0, 0), 3.0f);
  EXPECT_FLOAT_EQ(h2o.state().score(0, 2), 1.125f);
  EXPECT_FLOAT_EQ(h2o.state().score(0, 3), 0.25f);
  EXPECT_EQ(h2o.size(0), 3);
}

TEST(H2O, StreamingDefaultsAndErrors) {
  const H2O h2o;  // recent = B / 2
  h2o.start({.kv_heads = 2, .q_heads = 4, .budget = 5});
  EXPECT_EQ(h2o.recent_for(5), 2);
  const H2O too_recent({.recent = 6});
  expect_error([&] { too_recent.start({.kv_heads = 1, .q_heads = 1, .budget = 5}); },
               "budget: expected at least recent (6) tokens, got 5");
  expect_error([] { H2O({.recent = -2}); },
               "recent: expected recent >= 0 (or none: half the budget), got -2");
}

/// A one-dimensional cache whose keys are ln(a_j) (queries of 1 attend proportionally to a).
struct LogCache {
  std::vector<float> k, v;
  std::optional<KVCache<float>> kv;
  explicit LogCache(const std::vector<float>& a) {
    for (float x : a) k.push_back(std::log(x));
    v.assign(k.size(), 0.0f);
    const auto n = static_cast<index_t>(a.size());
    kv.emplace(Storage<float>::hnd(k.data(), n, 1), Storage<float>::hnd(v.data(), n, 1),
               Shape{1, n, 1});
  }
};

// a = [4, 1, 2, 1, 2], window of 2 (positions 3 and 4), causal:
// acc = a/8 (query 3 sees 0..3, Σ = 8) + a/10 (query 4, Σ = 10) = [.9, .225, .45, .225, .2].
TEST(H2O, OneShotHandCase) {
  LogCache c({4, 1, 2, 1, 2});
  const std::vector<float> q(2, 1.0f);
  const QueryWindow<float> window(q.data(), 1, 2, 1);
  Selection sel;
  Workspace ws;
  H2O().select(*c.kv, window, Budget::tokens(3), sel, ws);  // R = 1: {4} + top 2 of 0..3
  EXPECT_EQ(kept(sel), (std::vector<token_t>{0, 2, 4}));
  H2O().select(*c.kv, window, Budget::tokens(4), sel, ws);  // R = 2: {3, 4} + top 2 of 0..2
  EXPECT_EQ(kept(sel), (std::vector<token_t>{0, 2, 3, 4}));
  H2O({.recent = 0}).select(*c.kv, window, Budget::tokens(2), sel, ws);
  EXPECT_EQ(kept(sel), (std::vector<token_t>{0, 2}));
  // Flat attention: acc = [.45, .45, .45, .45, .2]; the tie among 0..3 keeps the recent 2, 3.
  LogCache flat({1, 1, 1, 1, 1});
  H2O().select(*flat.kv, window, Budget::tokens(3), sel, ws);
  EXPECT_EQ(kept(sel), (std::vector<token_t>{2, 3, 4}));
  expect_error([&] { H2O({.recent = 3}).select(*c.kv, window, Budget::tokens(2), sel, ws); },
               "budget: expected at least recent (3) tokens, got 2");
}

// reduce = max takes the maximum over the group per query, then sums over queries.
TEST(H2O, OneShotMaxReducesPerQuery) {
  auto c = make_cache<float>(Layout::nhd, 2, 30, 8, 8, 9);
  std::vector<float> q(4 * 5 * 8);
  std::mt19937_64 rng(2);
  std::normal_distribution<float> normal;
  for (float& x : q) x = normal(rng);
  const QueryWindow<float> window(q.data(), 4, 5, 8);
  Workspace ws;
  Workspace::Frame frame(ws);
  const auto acc = ranked_rows(
      H2O({.reduce = GroupReduce::max}).score(c.kv(), window, Granularity::per_head, ws),
      Granularity::per_head, ws);
  // Naive: per query i, per KV head, max over its 2 query heads of softmax probabilities.
  for (index_t kvh = 0; kvh < 2; ++kvh)
    for (index_t j = 0; j < 30; ++j) {
      double want = 0;
      for (index_t i = 0; i < 5; ++i) {
        double best = 0;
        for (index_t h = 2 * kvh; h < 2 * kvh + 2; ++h) {
          const index_t visible = 30 - 5 + i + 1;
          if (j >= visible) continue;
          std::vector<double> logit(static_cast<std::size_t>(visible));
          double max = -1e300, sum = 0;
          for (index_t t = 0; t < visible; ++t) {
            double dot = 0;
            for (index_t e = 0; e < 8; ++e)
              dot += static_cast<double>(window.query(h, i)[static_cast<std::size_t>(e)]) *
                     c.kv().key(kvh, t)[static_cast<std::size_t>(e)];
            logit[static_cast<std::size_t>(t)] = dot / std::sqrt(8.0);
            max = std::max(max, logit[static_cast<std::size_t>(t)]);
          }
          for (double l : logit) sum += std::exp(l - max);
          best = std::max(best, std::exp(logit[static_cast<std::size_t>(j)] - max) / sum);
        }
        want += best;
      }
      EXPECT_NEAR(acc[static_cast<std::size_t>(kvh * 30 + j)], want, 1e-5) << kvh << " " << j;
    }
}

// Without evictions (B ≥ n), streaming accumulates exactly what the one-shot form sums over the
// queries of every position, and both keep everything.
TEST(H2O, StreamingAndOneShotAgreeWithoutEvictions) {
  const index_t n = 24, d = 8;
  auto c = make_cache<float>(Layout::hnd, 2, n, d, d, 21);
  std::vector<float> q(static_cast<std::size_t>(4 * n * d));
  std::mt19937_64 rng(8);
  std::normal_distribution<float> normal;
  for (float& x : q) x = normal(rng);
  const QueryWindow<float> all(q.data(), 4, n, d);

  auto streaming = H2O().start({.kv_heads = 2, .q_heads = 4, .budget = n});
  ASSERT_EQ(streaming.slots(), n + 1);
  std::vector<float> ks(static_cast<std::size_t>(2 * (n + 1) * d)), vs(ks.size());
  const KVCache<float> store(Storage<float>::hnd(ks.data(), n + 1, d),
                             Storage<float>::hnd(vs.data(), n + 1, d), {2, n + 1, d});
  StreamDriver driver(streaming, store);
  Workspace ws;
  std::vector<float> kt(2 * d), vt(2 * d);
  for (index_t pos = 0; pos < n; ++pos) {
    for (index_t h = 0; h < 2; ++h)
      for (index_t e = 0; e < d; ++e) {
        kt[static_cast<std::size_t>(h * d + e)] = c.kv().key(h, pos)[static_cast<std::size_t>(e)];
        vt[static_cast<std::size_t>(h * d + e)] = c.kv().value(h, pos)[static_cast<std::size_t>(e)];
      }
    const auto slot = driver.append(pos, kt, vt);
    EXPECT_EQ(slot[0], pos);  // fresh slots in order
    EXPECT_TRUE(driver.observe(all.sub(pos, 1), ws).empty());
  }
  Workspace::Frame frame(ws);
  const auto acc =
      ranked_rows(H2O().score(c.kv(), all, Granularity::per_head, ws), Granularity::per_head, ws);
  for (index_t h = 0; h < 2; ++h)
    for (index_t j = 0; j < n; ++j)
      EXPECT_NEAR(streaming.state().score(h, j), acc[static_cast<std::size_t>(h * n + j)], 2e-6);

  Selection sel;
  H2O().select(c.kv(), all, Budget::tokens(n), sel, ws);
  EXPECT_EQ(sel.size(0), n);
  EXPECT_EQ(streaming.size(0), n);
}

/// A random decode trace (K, V [kv_heads][n][d], Q [q_heads][n][d]).
struct Trace {
  std::vector<float> k, v, q;
  eval::DecodeTrace view;
  Trace(index_t kv_heads, index_t q_heads, index_t n, index_t d, std::uint64_t seed) {
    std::mt19937_64 rng(seed);
    std::normal_distribution<float> normal;
    k.resize(static_cast<std::size_t>(kv_heads * n * d));
    v.resize(k.size());
    q.resize(static_cast<std::size_t>(q_heads * n * d));
    for (auto* vec : {&k, &v, &q})
      for (float& x : *vec) x = normal(rng);
    view = {k.data(), v.data(), q.data(), kv_heads, q_heads, n, d, d};
  }
};

TEST(Replay, StreamingLLMKeepsSinksAndTheLastTokens) {
  Trace t(2, 4, 60, 8, 1);
  const auto r = eval::replay(make_policy("streaming_llm"), t.view, 10);
  std::vector<std::int64_t> want{0, 1, 2, 3};
  for (std::int64_t p = 54; p < 60; ++p) want.push_back(p);
  for (const auto& head : r.kept) EXPECT_EQ(head, want);
  EXPECT_EQ(r.max_live, 10);
  EXPECT_EQ(r.step_error.size(), 60u);
  for (std::size_t s = 0; s < 10; ++s) EXPECT_EQ(r.step_error[s], 0.0) << s;  // nothing evicted yet
  EXPECT_GT(r.mean_error, 0.0);
}

TEST(Replay, ErrorIsZeroWhenTheBudgetHoldsEverything) {
  Trace t(2, 4, 40, 8, 2);
  std::vector<float> wo_data(4 * 8 * 16, 0.25f);
  const auto wo = OutputProjection::dense(wo_data.data(), 4, 8, 16);
  for (auto name : policy_names()) {
    Settings set;  // an observation window of 4, where a policy has one
    for (const auto& [key, value] : describe(make_policy(name, {.wo = &wo})))
      if (key == "window") set.emplace_back(key, "4");
    const auto policy = make_policy(name, {.settings = set, .wo = &wo});
    if (budget_free(policy)) continue;  // no budget to hold everything
    const auto r = eval::replay(policy, t.view, 40, {.window = 4});
    EXPECT_EQ(r.max_error, 0.0) << name;
    EXPECT_EQ(r.kept[0].size(), 40u) << name;
    const auto big = eval::replay(policy, t.view, 1000, {.window = 4});
    EXPECT_EQ(big.max_error, 0.0) << name;
  }
}

TEST(Replay, OneShotPoliciesReselectWhenOverBudget) {
  Trace t(2, 4, 50, 8, 3);
  const auto r = eval::replay(parse_policy("snapkv:window=4"), t.view, 12, {.window = 4});
  for (const auto& head : r.kept) {
    ASSERT_EQ(head.size(), 12u);
    for (std::int64_t p = 46; p < 50; ++p)  // the observation window is always kept
      EXPECT_TRUE(std::binary_search(head.begin(), head.end(), p));
  }
  EXPECT_EQ(r.max_live, 12);
  expect_error([&] { eval::replay(make_policy("snapkv"), t.view, std::nullopt); },
               "budget: expected a token budget for snapkv, got none");
}

// Periodic decode-time compression (kvpress DecodingPress semantics): budget 12, every 5 — the
// cache grows to 16, compresses at 17 (positions 16, 21, …, 46) back to 12, so it ends at 15
// with positions 43…49 kept (the window of 4 at the last compression, then three appends).
TEST(Replay, EveryNCompressesWhenTheCacheReachesBudgetPlusN) {
  Trace t(2, 4, 50, 8, 3);
  const auto policy = parse_policy("snapkv:window=4");
  const auto r = eval::replay(policy, t.view, 12, {.window = 4, .every = 5});
  EXPECT_EQ(r.max_live, 16);
  EXPECT_DOUBLE_EQ(r.mean_live, 610.0 / 50.0);  // 1…16, six cycles of 12…16, then 12…15
  for (const auto& head : r.kept) {
    ASSERT_EQ(head.size(), 15u);
    for (std::int64_t p = 43; p < 50; ++p)
      EXPECT_TRUE(std::binary_search(head.begin(), head.end(), p));
  }
  for (std::size_t s = 0; s < 17; ++s) EXPECT_EQ(r.step_error[s], 0.0) << s;  // nothing evicted yet
  const auto each = eval::replay(policy, t.view, 12, {.window = 4, .every = 1});
  const auto dflt = eval::replay(policy, t.view, 12, {.window = 4});
  EXPECT_EQ(each.kept, dflt.kept);
  EXPECT_EQ(each.step_error, dflt.step_error);
  expect_error([&] { eval::replay(policy, t.view, 12, {.every = 0}); },
               "every: expected at least 1 token between compressions, got 0");
  expect_error([&] { eval::replay(make_policy("h2o"), t.view, 12, {.every = 2}); },
               "every: expected 1: h2o evicts at every step, got 2");
}

// PeriodicDriver over an engine's own memory (NHD, slots budget + every) keeps exactly what the
// replay's periodic rule keeps, position for position, and refuses what it cannot drive.
TEST(PeriodicDriver, MatchesReplayEveryN) {
  const index_t kv_heads = 2, q_heads = 4, n = 50, d = 8, budget = 12, every = 5, w = 4;
  Trace t(kv_heads, q_heads, n, d, 3);
  const auto policy = parse_policy("snapkv:window=4");
  std::vector<float> kmem(static_cast<std::size_t>((budget + every) * kv_heads * d)),
      vmem(kmem.size()), key(static_cast<std::size_t>(kv_heads * d)), value(key.size());
  const KVCache<float> slots(Storage<float>::nhd(kmem.data(), kv_heads, d),
                             Storage<float>::nhd(vmem.data(), kv_heads, d),
                             {.kv_heads = kv_heads, .tokens = budget + every, .head_dim = d});
  PeriodicDriver<float> drv(policy, budget, every, slots);
  const QueryWindow<float> all(t.q.data(), q_heads, n, d);
  Workspace ws;
  index_t compressions = 0;
  for (index_t pos = 0; pos < n; ++pos) {
    for (index_t h = 0; h < kv_heads; ++h)
      for (index_t e = 0; e < d; ++e) {
        key[static_cast<std::size_t>(h * d + e)] =
            t.k[static_cast<std::size_t>((h * n + pos) * d + e)];
        value[static_cast<std::size_t>(h * d + e)] =
            t.v[static_cast<std::size_t>((h * n + pos) * d + e)];
      }
    const token_t slot = drv.append(pos, key, value);
    EXPECT_EQ(slot, drv.size() - 1);
    const index_t win = std::min({w, pos + 1, drv.size()});
    const index_t gone = drv.observe(all.sub(pos + 1 - win, win), ws);
    if (gone > 0) {
      ++compressions;
      EXPECT_EQ(gone, every);
    }
    EXPECT_LE(drv.size(), budget + every - 1);
  }
  EXPECT_EQ(compressions, 7);  // at positions 16, 21, …, 46
  EXPECT_EQ(drv.compressions(), 7);
  const auto r = eval::replay(policy, t.view, budget, {.window = w, .every = every});
  for (index_t h = 0; h < kv_heads; ++h) {
    std::vector<std::int64_t> mine;
    for (index_t s = 0; s < drv.size(); ++s) mine.push_back(drv.position(h, s));
    EXPECT_EQ(mine, r.kept[static_cast<std::size_t>(h)]) << "head " << h;
    for (index_t s = 0; s < drv.size(); ++s)  // the memory holds those tokens' keys, bit for bit
      EXPECT_EQ(slots.key(h, s)[0],
                t.k[static_cast<std::size_t>((h * n + drv.position(h, s)) * d)]);
  }
  // A failed append changes nothing: a full cache must be observed first.
  PeriodicDriver<float> full(policy, 1, 1, slots.with_tokens(2));
  full.append(0, key, value);
  full.append(1, key, value);
  expect_error(
      [&] { full.append(2, key, value); },
      "append: expected a free slot (call observe after every append), got all 2 slots live");
  EXPECT_EQ(full.size(), 2);
  expect_error([&] { PeriodicDriver<float>(make_policy("h2o"), budget, every, slots); },
               "policy: expected a one-shot policy (a streaming one evicts at every step itself), "
               "got h2o");
  expect_error([&] { PeriodicDriver<float>(policy, budget, every + 1, slots); },
               "slots.tokens: expected budget + every (18) slots, got 17");
}

// The driver over an engine's paged memory and the replay's own slot store feed H2O the same
// probabilities, so they keep the same tokens; the driver allocates nothing per step.
TEST(StreamDriver, PagedCacheMatchesReplay) {
  const index_t kv_heads = 2, q_heads = 4, n = 80, d = 8, budget = 16;
  Trace t(kv_heads, q_heads, n, d, 4);
  auto h2o = H2O({.recent = 4}).start({.kv_heads = kv_heads, .q_heads = q_heads, .budget = budget});
  const index_t page = 4, pages = (h2o.slots() + page - 1) / page, pool = pages + 2;
  std::vector<float> kpool(static_cast<std::size_t>(pool * page * kv_heads * d)),
      vpool(kpool.size());
  std::vector<std::int32_t> table(static_cast<std::size_t>(pages));
  for (index_t i = 0; i < pages; ++i)
    table[static_cast<std::size_t>(i)] = static_cast<std::int32_t>(pool - 1 - i);
  const KVCache<float> slots(Storage<float>::paged_nhd(kpool.data(), page, kv_heads, d),
                             Storage<float>::paged_nhd(vpool.data(), page, kv_heads, d),
                             {kv_heads, h2o.slots(), d}, {table, page, pool});
  StreamDriver driver(h2o, slots);
  const QueryWindow<float> queries(t.q.data(), q_heads, n, d);
  Workspace ws;
  std::vector<float> kt(static_cast<std::size_t>(kv_heads * d)), vt(kt.size());
  std::size_t warm = 0;
  for (index_t pos = 0; pos < n; ++pos) {
    for (index_t h = 0; h < kv_heads; ++h) {
      std::copy_n(t.k.data() + (h * n + pos) * d, d, kt.data() + h * d);
      std::copy_n(t.v.data() + (h * n + pos) * d, d, vt.data() + h * d);
    }
    const auto slot = driver.append(pos, kt, vt);
    EXPECT_EQ(slots.key(1, slot[1])[3], kt[static_cast<std::size_t>(d + 3)]);
    driver.observe(queries.sub(pos, 1), ws);
    if (pos == 1) warm = ws.allocations();
    if (pos > 1) {
      ASSERT_EQ(ws.allocations(), warm);
    }
  }
  const auto r = eval::replay(parse_policy("h2o:recent=4"), t.view, budget);
  for (index_t h = 0; h < kv_heads; ++h) {
    std::vector<std::int64_t> live;
    for (index_t s = 0; s < h2o.slots(); ++s)
      if (driver.live(h, s)) live.push_back(h2o.position(h, s));
    std::sort(live.begin(), live.end());
    EXPECT_EQ(live, r.kept[static_cast<std::size_t>(h)]) << "head " << h;
  }
}

TEST(StreamingRandom, EvictsUniformlyAmongUnprotected) {
  auto policy = RandomEviction({.sinks = 2, .recent = 3, .seed = 5})
                    .start({.kv_heads = 1, .q_heads = 1, .budget = 8});
  std::vector<float> rows(9);
  std::vector<int> evicted_age(40, 0);
  for (std::int64_t pos = 0; pos < 4000; ++pos) {
    policy.append(pos);
    std::vector<std::int64_t> before(9);
    for (index_t s = 0; s < 9; ++s) before[static_cast<std::size_t>(s)] = policy.position(0, s);
    const auto ev = policy.observe({rows.data(), 1, 9, 9});
    for (token_t s : ev.of(0)) {
      const std::int64_t p = before[static_cast<std::size_t>(s)];
      ASSERT_GE(p, 2);        // sinks never leave
      ASSERT_LE(p, pos - 3);  // the last 3 never leave
      ++evicted_age[static_cast<std::size_t>(std::min<std::int64_t>(pos - p, 39))];
    }
  }
  // Each of the 4 unprotected tokens leaves with probability 1/4 per step: the age at eviction
  // is geometric; P(age = 3) = 1/4 (it leaves on its first step as a candidate).
  EXPECT_NEAR(evicted_age[3] / 3994.0, 0.25, 0.03);
  EXPECT_NEAR(evicted_age[4] / 3994.0, 0.25 * 0.75, 0.03);
}

}  // namespace
}  // namespace kvevict::test
