// CORM: the hand case for both thresholds, its invariants on random streams, the cap, and the
// one-shot approximation.
// SPDX-License-Identifier: Apache-2.0
#include <kvevict/eval/replay.hpp>

#include <cmath>
#include <map>

#include "support.hpp"

namespace kvevict::test {
namespace {

static_assert(StreamingPolicy<CORM> && EvictionPolicy<CORM, Eigen::half>);

/// Drives CORM with attention given per live position (1-based labels, as in the paper); returns
/// the 1-based labels of the live keys after the step.
class Driver {
 public:
  Driver(const CORMParams& p, index_t capacity)
      : corm_(CORM(p).start({.kv_heads = 1, .q_heads = 1, .capacity = capacity})) {
    rows_.resize(static_cast<std::size_t>(capacity));
  }
  std::vector<std::int64_t> step(const std::map<std::int64_t, float>& attention_by_label) {
    const std::int64_t label = ++t_;
    corm_.append(label - 1);
    std::fill(rows_.begin(), rows_.end(), 0.0f);
    for (index_t s = 0; s < corm_.slots(); ++s) {
      const std::int64_t pos = corm_.position(0, s);
      if (pos >= 0 && attention_by_label.count(pos + 1))
        rows_[static_cast<std::size_t>(s)] = attention_by_label.at(pos + 1);
    }
    corm_.observe({rows_.data(), 1, corm_.slots(), corm_.slots()});
    return live();
  }
  std::vector<std::int64_t> live() const {
    std::vector<std::int64_t> out;
    for (index_t s = 0; s < corm_.slots(); ++s)
      if (corm_.position(0, s) >= 0) out.push_back(corm_.position(0, s) + 1);
    std::sort(out.begin(), out.end());
    return out;
  }
  Stream<CORM>& stream() { return corm_; }

 private:
  Stream<CORM> corm_;
  std::vector<float> rows_;
  std::int64_t t_ = 0;
};

// shared/ALGORITHMS.md, r = w = 2: after steps 1–4 the cache is {1,2,3,4} with last important
// steps {1:4, 2:3, 3:4, 4:4}; step 5 attends [.5,.05,.10,.15,.20] over 1..5 → 2 leaves; step 6
// attends [.42,.05,.18,.15,.20] over {1,3,4,5,6} → with 1/t: {1,4,5,6}; with 1/|cache|: {1,5,6}.
TEST(CORM, HandCaseBothThresholds) {
  for (CORMThreshold threshold : {CORMThreshold::t, CORMThreshold::live}) {
    SCOPED_TRACE(to_string(threshold));
    Driver d({.w = 2, .r = 2, .threshold = threshold}, 8);
    d.step({{1, 1.0f}});
    d.step({{1, .7f}, {2, .3f}});
    d.step({{1, .2f}, {2, .5f}, {3, .3f}});
    EXPECT_EQ(d.step({{1, .3f}, {2, .1f}, {3, .3f}, {4, .3f}}),
              (std::vector<std::int64_t>{1, 2, 3, 4}));
    const std::vector<std::int64_t> last{4, 3, 4, 4};
    for (index_t s = 0; s < 4; ++s)
      EXPECT_EQ(d.stream().state().last_important(0, s), last[static_cast<std::size_t>(s)]);
    EXPECT_EQ(d.step({{1, .5f}, {2, .05f}, {3, .10f}, {4, .15f}, {5, .20f}}),
              (std::vector<std::int64_t>{1, 3, 4, 5}));
    const auto after6 = d.step({{1, .42f}, {3, .05f}, {4, .18f}, {5, .15f}, {6, .20f}});
    if (threshold == CORMThreshold::t)
      EXPECT_EQ(after6, (std::vector<std::int64_t>{1, 4, 5, 6}));
    else
      EXPECT_EQ(after6, (std::vector<std::int64_t>{1, 5, 6}));
  }
}

TEST(CORM, UniformAttentionIsImportantNothingLeaves) {
  Driver d({.w = 1, .r = 0}, 64);
  for (std::int64_t t = 1; t <= 40; ++t) {
    std::map<std::int64_t, float> uniform;
    for (std::int64_t i = 1; i <= t; ++i) uniform[i] = 1.0f / static_cast<float>(t);
    EXPECT_EQ(d.step(uniform).size(), static_cast<std::size_t>(t));
  }
}

// On random attention: a key important at step t stays until at least step t + w, and nothing
// among the last r positions is ever evicted.
TEST(CORM, InvariantsOnRandomStreams) {
  for (auto [w, r] : {std::pair<index_t, index_t>{3, 2}, {8, 0}, {1, 5}, {16, 16}}) {
    SCOPED_TRACE(::testing::Message() << "w=" << w << " r=" << r);
    const index_t kv_heads = 2, q_heads = 4, slots = 640;  // never full: no cap
    auto corm =
        CORM({.w = w, .r = r}).start({.kv_heads = kv_heads, .q_heads = q_heads, .capacity = slots});
    std::vector<float> rows(static_cast<std::size_t>(q_heads * slots));
    std::mt19937_64 rng(w * 31 + r);
    std::exponential_distribution<float> skewed(1.0f);
    std::map<std::pair<index_t, std::int64_t>, std::int64_t> last_important;  // (head, pos) → step
    for (std::int64_t pos = 0; pos < 600; ++pos) {
      const std::int64_t t = pos + 1;
      corm.append(pos);
      for (index_t q = 0; q < q_heads; ++q) {
        float total = 0;
        for (index_t s = 0; s < slots; ++s) {
          const bool live = corm.position(q / 2, s) >= 0;
          const float x = live ? std::pow(skewed(rng), 3.0f) : 0.0f;
          rows[static_cast<std::size_t>(q * slots + s)] = x;
          total += x;
        }
        for (index_t s = 0; s < slots; ++s) rows[static_cast<std::size_t>(q * slots + s)] /= total;
      }
      // Record the importance the policy will see (any query head of the group).
      for (index_t h = 0; h < kv_heads; ++h)
        for (index_t s = 0; s < slots; ++s) {
          const std::int64_t p = corm.position(h, s);
          if (p < 0) continue;
          for (index_t q = 2 * h; q < 2 * h + 2; ++q)
            if (rows[static_cast<std::size_t>(q * slots + s)] >= 1.0f / static_cast<float>(t))
              last_important[{h, p}] = t;
        }
      std::vector<std::vector<std::int64_t>> before(static_cast<std::size_t>(kv_heads));
      for (index_t h = 0; h < kv_heads; ++h)
        for (index_t s = 0; s < slots; ++s)
          before[static_cast<std::size_t>(h)].push_back(corm.position(h, s));
      const Evictions ev = corm.observe({rows.data(), q_heads, slots, slots});
      for (index_t h = 0; h < kv_heads; ++h)
        for (token_t s : ev.of(h)) {
          const std::int64_t p = before[static_cast<std::size_t>(h)][static_cast<std::size_t>(s)];
          ASSERT_LE(p + 1, t - r) << "evicted inside the last r";
          const auto it = last_important.find({h, p});
          if (it != last_important.end()) {
            ASSERT_GE(t, it->second + w) << "evicted within w steps of being important";
          }
        }
    }
  }
}

TEST(CORM, MaxTokensCapsTheCacheOldestImportanceFirst) {
  Driver d({.w = 100, .r = 1, .max_tokens = 3}, 16);
  d.step({{1, 1.0f}});
  d.step({{1, .9f}, {2, .1f}});            // 1 important at 2; 2 never (yet)
  d.step({{1, .1f}, {2, .8f}, {3, .1f}});  // 2 important at 3
  // Over the cap at step 4: keys 1 (last important 2) and 2 (3) and 3 (never: −1) compete
  // outside the last 1: 3 never was important → it leaves.
  EXPECT_EQ(d.step({{1, .1f}, {2, .1f}, {3, .1f}, {4, .7f}}), (std::vector<std::int64_t>{1, 2, 4}));
  EXPECT_EQ(d.step({{1, .1f}, {2, .1f}, {4, .1f}, {5, .7f}}), (std::vector<std::int64_t>{2, 4, 5}));
  expect_error([] { CORM({.r = 8, .max_tokens = 4}); },
               "max_tokens: expected 0 (no cap) or at least max(r, 1) (8), got 4");
  const CORM small;
  expect_error([&] { small.start({.kv_heads = 1, .q_heads = 1, .capacity = 100}); },
               "capacity: expected room for r (256) tokens and the next one, got 100");
  expect_error([&] { small.start({.kv_heads = 1, .q_heads = 1, .budget = 5, .capacity = 300}); },
               "budget: expected no budget (0) for a budget-free policy, got 5");
}

// One-shot approximation: keys 0 … 5 with a = [8, 1, 1, 4, 1, 1] (d = 1, keys ln a); a window of
// two queries at positions 4 and 5 (t = 5, 6). Query at 4 sees a[0..4] (Σ 15): 8/15 ≥ 1/5 and
// 4/15 ≥ 1/5 are important; query at 5 (Σ 16): 8/16, 4/16 ≥ 1/6, and 1/16 < 1/6. With r = 1:
// keep {0, 3} ∪ {5}.
TEST(CORM, OneShotKeepsWhatSomeWindowQueryFindsImportant) {
  const std::vector<float> a{8, 1, 1, 4, 1, 1};
  std::vector<float> k, v(a.size());
  for (float x : a) k.push_back(std::log(x));
  const KVCache<float> kv(Storage<float>::hnd(k.data(), 6, 1), Storage<float>::hnd(v.data(), 6, 1),
                          {1, 6, 1});
  const std::vector<float> q(2, 1.0f);
  Selection sel;
  Workspace ws;
  CORM({.w = 2, .r = 1}).select(kv, QueryWindow<float>(q.data(), 1, 2, 1), Budget::none(), sel, ws);
  EXPECT_EQ(std::vector<token_t>(sel.kept(0).begin(), sel.kept(0).end()),
            (std::vector<token_t>{0, 3, 5}));
  // A budget caps it (the most important first); a budget ≥ n keeps everything.
  CORM({.w = 2, .r = 1})
      .select(kv, QueryWindow<float>(q.data(), 1, 2, 1), Budget::tokens(2), sel, ws);
  EXPECT_EQ(std::vector<token_t>(sel.kept(0).begin(), sel.kept(0).end()),
            (std::vector<token_t>{0, 5}));
  CORM().select(kv, QueryWindow<float>(q.data(), 1, 2, 1), Budget::tokens(6), sel, ws);
  EXPECT_EQ(sel.size(0), 6);
}

TEST(CORM, ReplayIsBudgetFree) {
  const index_t n = 120, d = 8;
  std::mt19937_64 rng(3);
  std::normal_distribution<float> normal;
  std::vector<float> k(static_cast<std::size_t>(2 * n * d)), v(k.size()),
      q(static_cast<std::size_t>(4 * n * d));
  for (auto* vec : {&k, &v, &q})
    for (float& x : *vec) x = 2.0f * normal(rng);
  const eval::DecodeTrace trace{k.data(), v.data(), q.data(), 2, 4, n, d, d};
  const auto policy = make_policy("corm", {.settings = {{"w", "8"}, {"r", "8"}}});
  const auto r = eval::replay(policy, trace, std::nullopt);
  EXPECT_LT(r.mean_live, static_cast<double>(n) / 2);  // it frees memory on peaked attention
  EXPECT_GE(r.kept[0].size(), 8u);
  expect_error([&] { eval::replay(policy, trace, 50); },
               "budget: expected none: corm is budget-free, got 50");
}

}  // namespace
}  // namespace kvevict::test
