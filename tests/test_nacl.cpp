// NACL: top-k equivalence, determinism, the exact sampling distribution, presets, errors.
// SPDX-License-Identifier: Apache-2.0
#include <cmath>
#include <map>

#include "support.hpp"

namespace kvevict::test {
namespace {

static_assert(EvictionPolicy<NACL, float> && EvictionPolicy<NACL, Eigen::half>);

std::vector<token_t> kept(const Selection& s, index_t h = 0) {
  return {s.kept(h).begin(), s.kept(h).end()};
}

/// Random queries [q_heads][w][d].
std::vector<float> random_queries(index_t q_heads, index_t w, index_t d, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal;
  std::vector<float> q(static_cast<std::size_t>(q_heads * w * d));
  for (float& x : q) x = normal(rng);
  return q;
}

// random_share = 0 is plain top-k of the proxy sums (non-causal, summed over the group), after
// the sinks and the recent window — checked against a double-precision reference.
TEST(NACL, NoRandomShareIsPlainTopK) {
  const index_t n = 120, d = 16, w = 6;
  auto c = make_cache<float>(Layout::paged_nhd, 2, n, d, d, 13);
  const auto q = random_queries(4, w, d, 14);
  const QueryWindow<float> window(q.data(), 4, w, d);
  const auto ref = reference_attention(c.kv(), q, 4, w, WindowReduce::sum, /*causal=*/false, {});
  Selection sel;
  Workspace ws;
  NACL({.sinks = 3, .recent = 5, .random_share = 0.0})
      .select(c.kv(), window, Budget::tokens(30), sel, ws);
  ASSERT_FALSE(sel.shared());
  for (index_t kvh = 0; kvh < 2; ++kvh) {
    std::vector<double> s(static_cast<std::size_t>(n));
    for (index_t j = 0; j < n; ++j)
      s[static_cast<std::size_t>(j)] = ref[static_cast<std::size_t>((2 * kvh) * n + j)] +
                                       ref[static_cast<std::size_t>((2 * kvh + 1) * n + j)];
    std::vector<token_t> candidates;
    for (token_t j = 3; j < n - 5; ++j) candidates.push_back(j);
    std::sort(candidates.begin(), candidates.end(), [&](token_t a, token_t b) {
      return s[static_cast<std::size_t>(a)] != s[static_cast<std::size_t>(b)]
                 ? s[static_cast<std::size_t>(a)] > s[static_cast<std::size_t>(b)]
                 : a > b;
    });
    std::vector<token_t> want{0, 1, 2};
    want.insert(want.end(), candidates.begin(), candidates.begin() + 22);
    for (token_t j = n - 5; j < n; ++j) want.push_back(j);
    std::sort(want.begin(), want.end());
    EXPECT_EQ(kept(sel, kvh), want) << "KV head " << kvh;
  }
}

TEST(NACL, SameSeedSameOutputDifferentHeadsDifferentPicks) {
  // Both KV heads hold the same keys and see the same queries: only the streams differ.
  const index_t n = 200, d = 8;
  auto one = make_cache<float>(Layout::hnd, 1, n, d, d, 3);
  std::vector<float> k(static_cast<std::size_t>(2 * n * d)), v(k.size());
  for (index_t h = 0; h < 2; ++h)
    for (index_t t = 0; t < n; ++t)
      for (index_t e = 0; e < d; ++e)
        k[static_cast<std::size_t>((h * n + t) * d + e)] =
            one.kv().key(0, t)[static_cast<std::size_t>(e)];
  const KVCache<float> kv(Storage<float>::hnd(k.data(), n, d), Storage<float>::hnd(v.data(), n, d),
                          {2, n, d});
  auto q = random_queries(1, 4, d, 5);
  q.insert(q.end(), q.begin(), q.end());  // 2 query heads, identical
  const QueryWindow<float> window(q.data(), 2, 4, d);
  Selection a, b, other;
  Workspace ws;
  const NACL policy({.seed = 7});
  policy.select(kv, window, Budget::ratio(0.3), a, ws);
  policy.select(kv, window, Budget::ratio(0.3), b, ws);
  NACL({.seed = 8}).select(kv, window, Budget::ratio(0.3), other, ws);
  EXPECT_EQ(kept(a, 0), kept(b, 0));
  EXPECT_EQ(kept(a, 1), kept(b, 1));
  EXPECT_NE(kept(a, 0), kept(a, 1));  // same scores, different head streams
  EXPECT_NE(kept(a, 0), kept(other, 0));
  EXPECT_EQ(a.size(0), 60);
  // The top-k part is the same on both heads: B = 60 leaves E = 24, C_r = 16, C_p = 8 — the
  // 8 best candidates, which a budget of 36 + 8 with no random share keeps.
  Selection top_only;
  NACL({.random_share = 0.0}).select(kv, window, Budget::tokens(44), top_only, ws);
  std::vector<token_t> common;
  std::set_intersection(a.kept(0).begin(), a.kept(0).end(), a.kept(1).begin(), a.kept(1).end(),
                        std::back_inserter(common));
  for (token_t t : top_only.kept(0))
    EXPECT_TRUE(std::binary_search(common.begin(), common.end(), t)) << t;
}

// The random part samples without replacement with probability ∝ exp(s). With 6 candidates and
// 2 draws, the 15 possible pairs have exact probabilities (sum over both orders of successive
// sampling); over 30,000 seeds the observed pair frequencies must pass a chi-square test at
// p > 0.001 (14 degrees of freedom: critical value 36.12).
TEST(NACL, SamplingMatchesTheExactWithoutReplacementDistribution) {
  // Cache: 1 sink, 6 candidates, 1 recent; keys ln(a) with d = 1; 3 identical proxy queries of
  // 1 (non-causal) give s_j = 3 a_j / Σa.
  const std::vector<float> a{1.0f, 6.0f, 1.0f, 2.0f, 4.0f, 8.0f, 3.0f, 1.0f};
  std::vector<float> k, v(a.size());
  for (float x : a) k.push_back(std::log(x));
  const index_t n = 8;
  const KVCache<float> kv(Storage<float>::hnd(k.data(), n, 1), Storage<float>::hnd(v.data(), n, 1),
                          {1, n, 1});
  const std::vector<float> q(3, 1.0f);
  const QueryWindow<float> window(q.data(), 1, 3, 1);
  double total = 0;
  for (float x : a) total += x;
  std::vector<double> p;  // softmax over the candidates 1..6
  for (int j = 1; j <= 6; ++j) p.push_back(std::exp(3.0 * a[static_cast<std::size_t>(j)] / total));
  const double z = std::accumulate(p.begin(), p.end(), 0.0);
  for (double& x : p) x /= z;
  std::map<std::pair<int, int>, double> expected;
  for (int i = 0; i < 6; ++i)
    for (int j = 0; j < 6; ++j)
      if (i != j)
        expected[{std::min(i, j), std::max(i, j)}] += p[static_cast<std::size_t>(i)] *
                                                      p[static_cast<std::size_t>(j)] /
                                                      (1.0 - p[static_cast<std::size_t>(i)]);

  const int trials = 30000;
  std::map<std::pair<int, int>, int> observed;
  Selection sel;
  Workspace ws;
  for (int seed = 0; seed < trials; ++seed) {
    NACL({.sinks = 1, .recent = 1, .random_share = 1.0, .seed = static_cast<std::uint64_t>(seed)})
        .select(kv, window, Budget::tokens(4), sel, ws);
    ASSERT_EQ(sel.size(0), 4);
    const auto kk = sel.kept(0);
    ASSERT_EQ(kk[0], 0);
    ASSERT_EQ(kk[3], 7);
    ++observed[{kk[1] - 1, kk[2] - 1}];
  }
  double chi2 = 0;
  for (const auto& [pair, prob] : expected) {
    const double e = prob * trials;
    ASSERT_GT(e, 5.0);
    const double o = observed.count(pair) ? observed[pair] : 0;
    chi2 += (o - e) * (o - e) / e;
  }
  EXPECT_EQ(expected.size(), 15u);
  EXPECT_LT(chi2, 36.12) << "chi-square with 14 degrees of freedom";
}

TEST(NACL, PresetsFollowTheirSplits) {
  EXPECT_EQ(NACL({.preset = NACLPreset::paper20}).split(10000).sinks, 50);
  const NACLSplit s20 = NACL({.preset = NACLPreset::paper20}).split(10000);
  EXPECT_EQ(s20.recent, 150);    // 2% of 10000 protected, 50 of them sinks
  EXPECT_EQ(s20.proxies, 1800);  // 18%
  EXPECT_NEAR(s20.random_share, 12.0 / 18.0, 1e-12);
  const NACLSplit s10 = NACL({.preset = NACLPreset::paper10}).split(1000);
  EXPECT_EQ(s10.sinks, 10);  // 1% of 1000 is 10 < 50 sinks: the sinks take it all, recent 0
  EXPECT_EQ(s10.recent, 0);
  EXPECT_EQ(s10.proxies, 30);
  EXPECT_NEAR(s10.random_share, 7.0 / 9.0, 1e-12);
  const NACLSplit lc = NACL({.preset = NACLPreset::long_context}).split(130048);
  EXPECT_EQ(lc.sinks, 256);
  EXPECT_EQ(lc.recent, 1300 - 256);  // the paper code's 130K example: 1,044 recent
  EXPECT_EQ(lc.proxies, 1300);
  EXPECT_NEAR(lc.random_share, 7.0 / 19.0, 1e-12);
  const NACLSplit p30 = NACL({.preset = NACLPreset::paper30}).split(2000);
  EXPECT_EQ(p30.sinks + p30.recent, 30);
  EXPECT_NEAR(p30.random_share, 18.0 / 28.5, 1e-12);

  // At the preset's own budget, the kept set has the table's shape: here 20% of 2000 = 400 =
  // 40 protected + 120 top-k + 240 sampled, scored with the last 360 queries given.
  const index_t n = 2000, d = 8;
  auto c = make_cache<Eigen::half>(Layout::hnd, 1, n, d, d, 5);
  std::vector<Eigen::half> q(static_cast<std::size_t>(2 * 400 * d), Eigen::half(0.1f));
  Selection sel;
  Workspace ws;
  NACL({.preset = NACLPreset::paper20})
      .select(c.kv(), QueryWindow<Eigen::half>(q.data(), 2, 400, d), Budget::ratio(0.2), sel, ws);
  EXPECT_EQ(sel.size(0), 400);
  for (token_t t = 0; t < 40; ++t)  // sinks = min(50, 40) = 40, recent 0
    EXPECT_EQ(sel.kept(0)[static_cast<std::size_t>(t)], t);
}

TEST(NACL, Errors) {
  auto c = make_cache<float>(Layout::hnd, 1, 100, 4, 4, 1);
  std::vector<float> q(4, 1.0f);
  const QueryWindow<float> window(q.data(), 1, 1, 4);
  Selection sel;
  Workspace ws;
  expect_error([&] { NACL().select(c.kv(), window, Budget::tokens(35), sel, ws); },
               "budget: expected at least sinks + recent (36) tokens, got 35");
  EXPECT_NO_THROW(NACL().select(c.kv(), window, Budget::tokens(36), sel, ws));
  expect_error([] { NACL({.random_share = 1.5}); },
               "random_share: expected a share in [0, 1], got 1.5");
  expect_error([] { NACL({.sinks = -1}); }, "sinks: expected sinks >= 0, got -1");
}

}  // namespace
}  // namespace kvevict::test
