// The baselines on hand-computed cases: SnapKV, TOVA (one-shot and streaming), RandomEviction;
// budget ≥ n is a bit-exact no-op for every policy.
// SPDX-License-Identifier: Apache-2.0
#include <cmath>
#include <map>

#include "support.hpp"

namespace kvevict::test {
namespace {

/// A one-dimensional cache whose keys are ln(a_j): with a query of 1 the attention of a query
/// that sees keys 0 … m is a_j / Σ a, exactly proportional to a.
struct LogCache {
  std::vector<float> k, v;
  std::optional<KVCache<float>> kv;
  LogCache(const std::vector<float>& a, index_t heads = 1) {
    const auto n = static_cast<index_t>(a.size());
    for (index_t h = 0; h < heads; ++h)
      for (float x : a) k.push_back(std::log(x));
    v.assign(k.size(), 0.0f);
    kv.emplace(Storage<float>::hnd(k.data(), n, 1), Storage<float>::hnd(v.data(), n, 1),
               Shape{heads, n, 1});
  }
};

std::vector<token_t> kept(const Selection& s, index_t h = 0) {
  return {s.kept(h).begin(), s.kept(h).end()};
}

TEST(SnapKV, HandCaseMaxPoolTiesAndTheWindow) {
  // a = [1, 5, 1, 1, 1, 3 | 1, 1], w = 2: the prefix scores are proportional to [1,5,1,1,1,3].
  LogCache c({1, 5, 1, 1, 1, 3, 1, 1});
  const std::vector<float> q(2 * 2, 1.0f);  // 2 query heads (g = 2), both windows = 1
  const QueryWindow<float> window(q.data(), 2, 2, 1);
  Selection sel;
  Workspace ws;
  // Max pool k=3: [5,5,5,1,3,3]; top 2 among three tied 5s: the two most recent, 1 and 2.
  SnapKV({.window = 2, .kernel = 3}).select(*c.kv, window, Budget::tokens(4), sel, ws);
  EXPECT_EQ(kept(sel), (std::vector<token_t>{1, 2, 6, 7}));
  // No pooling: top 2 of [1,5,1,1,1,3] = 1 and 5.
  SnapKV({.window = 2, .kernel = 1}).select(*c.kv, window, Budget::tokens(4), sel, ws);
  EXPECT_EQ(kept(sel), (std::vector<token_t>{1, 5, 6, 7}));
  // Avg pool k=3 (zero padded): [2, 7/3, 7/3, 1, 5/3, 4/3]; top 3 = 1, 2, 0.
  SnapKV({.window = 2, .kernel = 3, .pool = Pool::avg})
      .select(*c.kv, window, Budget::tokens(5), sel, ws);
  EXPECT_EQ(kept(sel), (std::vector<token_t>{0, 1, 2, 6, 7}));
  // Budget = window: only the window.
  SnapKV({.window = 2, .kernel = 3}).select(*c.kv, window, Budget::tokens(2), sel, ws);
  EXPECT_EQ(kept(sel), (std::vector<token_t>{6, 7}));
  expect_error([&] { SnapKV({.window = 2}).select(*c.kv, window, Budget::tokens(1), sel, ws); },
               "budget: expected at least window (2) tokens, got 1");
  expect_error([&] { SnapKV({.window = 3}).select(*c.kv, window, Budget::tokens(4), sel, ws); },
               "queries.window: expected at least the policy's window (3), got 2");
  expect_error([] { SnapKV({.kernel = 0}); }, "kernel: expected kernel >= 1, got 0");
}

TEST(SnapKV, PerHeadAndSharedModes) {
  // Two KV heads with opposite preferences.
  std::vector<float> k{std::log(9.f), 0, 0, 0, 0, /**/ 0, 0, 0, std::log(9.f), 0};
  std::vector<float> v(10);
  const KVCache<float> kv(Storage<float>::hnd(k.data(), 5, 1), Storage<float>::hnd(v.data(), 5, 1),
                          {2, 5, 1});
  const std::vector<float> q(2, 1.0f);
  const QueryWindow<float> window(q.data(), 2, 1, 1);
  Selection sel;
  Workspace ws;
  SnapKV({.window = 1, .kernel = 1}).select(kv, window, Budget::tokens(2), sel, ws);
  ASSERT_FALSE(sel.shared());
  EXPECT_EQ(kept(sel, 0), (std::vector<token_t>{0, 4}));
  EXPECT_EQ(kept(sel, 1), (std::vector<token_t>{3, 4}));
  // Shared: mean over both heads; tokens 0 and 3 tie, the more recent (3) wins.
  SnapKV({.window = 1, .kernel = 1, .granularity = Granularity::shared})
      .select(kv, window, Budget::tokens(2), sel, ws);
  ASSERT_TRUE(sel.shared());
  EXPECT_EQ(kept(sel, 1), (std::vector<token_t>{3, 4}));
}

TEST(TOVA, OneShotUsesOnlyTheLastQuery) {
  LogCache c({2, 1, 4, 1, 3});
  // Window of 2; the first query (position 3) would prefer other tokens if it counted.
  const std::vector<float> q{-50.0f, 1.0f};
  const QueryWindow<float> window(q.data(), 1, 2, 1);
  Selection sel;
  Workspace ws;
  TOVA().select(*c.kv, window, Budget::tokens(3), sel, ws);
  EXPECT_TRUE(sel.shared());
  EXPECT_EQ(kept(sel), (std::vector<token_t>{0, 2, 4}));
  LogCache flat({1, 1, 1, 1, 1});  // all tied: the most recent stay
  TOVA().select(*flat.kv, window, Budget::tokens(2), sel, ws);
  EXPECT_EQ(kept(sel), (std::vector<token_t>{3, 4}));
}

TEST(TOVA, StreamingEvictsTheArgminTheNewTokenIncluded) {
  TOVA tova_policy;
  auto tova = tova_policy.start({.kv_heads = 1, .q_heads = 2, .budget = 2});
  ASSERT_EQ(tova.slots(), 3);
  std::vector<float> rows(2 * 3);
  auto step = [&](std::int64_t pos, std::vector<float> head0, std::vector<float> head1) {
    const token_t slot = tova.append(pos)[0];
    std::copy(head0.begin(), head0.end(), rows.begin());
    std::copy(head1.begin(), head1.end(), rows.begin() + 3);
    const Evictions ev = tova.observe({rows.data(), 2, 3, 3});
    return std::pair{slot, ev.empty() ? -1 : ev.of(0)[0]};
  };
  EXPECT_EQ(step(0, {1, 0, 0}, {1, 0, 0}), (std::pair<token_t, token_t>{0, -1}));
  EXPECT_EQ(step(1, {.5f, .5f, 0}, {.3f, .7f, 0}), (std::pair<token_t, token_t>{1, -1}));
  // Positions 0, 1, 2 in slots 0, 1, 2; head means: .3, .3, .4 → tie between 0 and 1, the older
  // (position 0, slot 0) goes.
  EXPECT_EQ(step(2, {.3f, .3f, .4f}, {.3f, .3f, .4f}), (std::pair<token_t, token_t>{2, 0}));
  // The new token (position 3) goes into slot 0 and is itself the least attended: it leaves.
  EXPECT_EQ(step(3, {.05f, .5f, .45f}, {.15f, .4f, .45f}), (std::pair<token_t, token_t>{0, 0}));
  EXPECT_EQ(tova.position(0, 1), 1);
  EXPECT_EQ(tova.position(0, 2), 2);
  EXPECT_EQ(tova.position(0, 0), -1);
  EXPECT_EQ(tova.size(0), 2);
  tova.append(4);
  expect_error(
      [&] {
        tova.observe({rows.data(), 1, 3, 3});
      },
      "rows.q_heads: expected the q_heads the policy was started with (2), got 1");
}

TEST(TOVA, StreamingPerHeadEvictsPerGroup) {
  auto tova = TOVA({.granularity = Granularity::per_head})
                  .start({.kv_heads = 2, .q_heads = 2, .budget = 1});
  std::vector<float> rows(2 * 2);
  tova.append(0);
  tova.observe({rows.data(), 2, 2, 2});
  const auto slot = tova.append(1);
  EXPECT_EQ(slot[0], 1);
  rows = {0.9f, 0.1f, /* head 1 */ 0.2f, 0.8f};
  const Evictions ev = tova.observe({rows.data(), 2, 2, 2});
  EXPECT_EQ(std::vector<token_t>(ev.of(0).begin(), ev.of(0).end()), (std::vector<token_t>{1}));
  EXPECT_EQ(std::vector<token_t>(ev.of(1).begin(), ev.of(1).end()), (std::vector<token_t>{0}));
  EXPECT_EQ(tova.position(0, 0), 0);
  EXPECT_EQ(tova.position(1, 1), 1);
}

TEST(RandomEviction, ProtectsSinksAndRecentAndIsDeterministic) {
  auto c = make_cache<float>(Layout::hnd, 4, 100, 2, 2, 1);
  std::vector<float> q(4 * 2);
  const QueryWindow<float> window(q.data(), 4, 1, 2);
  Workspace ws;
  Selection a, b, other_seed, other_layer;
  const RandomEviction policy({.sinks = 3, .recent = 5, .seed = 42});
  policy.select(c.kv(), window, Budget::tokens(20), a, ws);
  policy.select(c.kv(), window, Budget::tokens(20), b, ws);
  RandomEviction({.sinks = 3, .recent = 5, .seed = 43})
      .select(c.kv(), window, Budget::tokens(20), other_seed, ws);
  policy.select(c.kv().with_layer(1), window, Budget::tokens(20), other_layer, ws);
  for (index_t h = 0; h < 4; ++h) {
    EXPECT_EQ(kept(a, h), kept(b, h));
    EXPECT_NE(kept(a, h), kept(other_seed, h));
    EXPECT_NE(kept(a, h), kept(other_layer, h));
    ASSERT_EQ(a.size(h), 20);
    for (token_t t : {0, 1, 2, 95, 96, 97, 98, 99})
      EXPECT_TRUE(std::binary_search(a.kept(h).begin(), a.kept(h).end(), t));
  }
  EXPECT_NE(kept(a, 0), kept(a, 1));  // each head draws from its own stream
  expect_error([&] { policy.select(c.kv(), window, Budget::tokens(7), a, ws); },
               "budget: expected at least sinks + recent (8) tokens, got 7");
}

TEST(RandomEviction, DrawsUniformlyWithoutReplacement) {
  // 10 candidates, keep 3: each candidate's inclusion probability is 3/10.
  auto c = make_cache<float>(Layout::hnd, 1, 10, 2, 2, 1);
  std::vector<float> q(2);
  const QueryWindow<float> window(q.data(), 1, 1, 2);
  Workspace ws;
  Selection sel;
  std::vector<int> count(10, 0);
  const int trials = 20000;
  for (int s = 0; s < trials; ++s) {
    RandomEviction({.seed = static_cast<std::uint64_t>(s)})
        .select(c.kv(), window, Budget::tokens(3), sel, ws);
    for (token_t t : sel.kept(0)) ++count[static_cast<std::size_t>(t)];
  }
  for (int t = 0; t < 10; ++t)
    EXPECT_NEAR(count[static_cast<std::size_t>(t)] / double(trials), 0.3, 0.015) << t;
}

// Budget ≥ n keeps everything, and compacting that selection leaves the memory bit for bit.
TEST(Baselines, BudgetAtLeastNIsABitExactNoOp) {
  auto c = make_cache<Eigen::bfloat16>(Layout::paged_nhd, 2, 30, 8, 8, 4);
  std::vector<Eigen::bfloat16> q(4 * 4 * 8, Eigen::bfloat16(0.5f));
  const QueryWindow<Eigen::bfloat16> window(q.data(), 4, 4, 8);
  const auto kmem = c.kmem, vmem = c.vmem;
  Workspace ws;
  Selection sel;
  auto check = [&](auto policy) {
    for (Budget budget : {Budget::tokens(30), Budget::tokens(1000), Budget::ratio(1.0)}) {
      policy.select(c.kv(), window, budget, sel, ws);
      for (index_t h = 0; h < 2; ++h) ASSERT_EQ(sel.size(h), 30) << decltype(policy)::name;
      compact(c.kv(), sel);
      for (std::size_t i = 0; i < kmem.size(); ++i) ASSERT_EQ(bits(c.kmem[i]), bits(kmem[i]));
      for (std::size_t i = 0; i < vmem.size(); ++i) ASSERT_EQ(bits(c.vmem[i]), bits(vmem[i]));
    }
  };
  check(StreamingLLM());
  check(RandomEviction({.sinks = 40}));  // protected regions larger than n do not matter at B ≥ n
  check(SnapKV({.window = 4}));
  check(SnapKV({.window = 4, .granularity = Granularity::shared}));
  check(TOVA());
}

}  // namespace
}  // namespace kvevict::test
