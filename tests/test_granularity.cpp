// Granularities engines need (issue 16): per head, equal counts, shared, across layers, whole
// pages — hand cases for the chooser, and properties for every scoring policy on every layout.
// SPDX-License-Identifier: Apache-2.0
#include <kvevict/registry.hpp>

#include <set>

#include "policy_settings.hpp"
#include "support.hpp"

namespace kvevict::test {
namespace {

std::vector<token_t> kept(const Selection& s, index_t h = 0) {
  return {s.kept(h).begin(), s.kept(h).end()};
}

// Two layers, one KV head each, 8 tokens, no protection. Layer 0's row [0 .. 7] normalises to
// j / 28; layer 1's [7, 0, 0, 0, 0, 0, 0, 7] to [.5, 0, …, 0, .5]. Mean: token 0 = .25,
// token 7 = .375, token 6 = 3/28 · ½ = .107, token 5 = .089. Top 3: {0, 6, 7}; with `max`:
// token 0 = .5, token 7 = .5, token 6 = .214 → also {0, 6, 7}; a budget of 2 keeps {0, 7}.
TEST(Granularity, LayersCombineNormalisedScoresByMeanOrMax) {
  const std::vector<float> a{0, 1, 2, 3, 4, 5, 6, 7}, b{7, 0, 0, 0, 0, 0, 0, 7};
  const Scores layers[2] = {
      {.values = a, .rows = 1, .tokens = 8, .kv_heads = 1, .kind = ScoreRows::kv_heads},
      {.values = b, .rows = 1, .tokens = 8, .kv_heads = 1, .kind = ScoreRows::kv_heads}};
  Selection sel;
  Workspace ws;
  choose(layers, {.budget = Budget::tokens(3), .granularity = Granularity::layers}, TopK{}, sel,
         ws);
  ASSERT_TRUE(sel.shared());
  EXPECT_EQ(kept(sel), (std::vector<token_t>{0, 6, 7}));
  choose(layers, {.budget = Budget::tokens(4), .granularity = Granularity::layers}, TopK{}, sel,
         ws);
  EXPECT_EQ(kept(sel), (std::vector<token_t>{0, 5, 6, 7}));  // .089 (5) beats .054 (3)
  choose(layers,
         {.budget = Budget::tokens(2),
          .granularity = Granularity::layers,
          .combine = LayerCombine::max},
         TopK{}, sel, ws);
  EXPECT_EQ(kept(sel), (std::vector<token_t>{0, 7}));
  // one layer's scores alone: the layers granularity ranks like the shared one
  Selection one, shared;
  choose(layers[0], {.budget = Budget::tokens(3), .granularity = Granularity::layers}, TopK{}, one,
         ws);
  choose(layers[0], {.budget = Budget::tokens(3), .granularity = Granularity::shared}, TopK{},
         shared, ws);
  EXPECT_EQ(kept(one), kept(shared));
  expect_error(
      [&] {
        choose(std::span<const Scores>(layers), {.budget = Budget::tokens(3)}, TopK{}, sel, ws);
      },
      "scores: expected one layer's scores (several only for granularity layers), got 2 layers");
}

// 12 tokens in pages of 4: [0..3] [4..7] [8..11]. Sinks 1 → page 0 kept; a budget of 8 tokens
// keeps 2 pages; page sums (candidates only): page 1 = 4, page 2 = 5 → page 2 stays.
TEST(Granularity, PagesKeepWholePagesAndTheProtectedOnes) {
  const std::vector<float> s{9, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 5};
  const Scores scores{.values = s,
                      .rows = 1,
                      .tokens = 12,
                      .kv_heads = 2,
                      .kind = ScoreRows::shared,
                      .protect = {.sinks = 1}};
  Selection sel;
  Workspace ws;
  choose(scores, {.budget = Budget::tokens(8), .granularity = Granularity::pages, .page_size = 4},
         TopK{}, sel, ws);
  EXPECT_EQ(kept(sel), (std::vector<token_t>{0, 1, 2, 3, 8, 9, 10, 11}));
  std::vector<index_t> dropped;
  dropped_pages(sel, 4, dropped);
  EXPECT_EQ(dropped, (std::vector<index_t>{1}));
  // max instead of sum: page 1 = 1, page 2 = 5 → the same; a budget of 7 keeps ⌊7/4⌋ = 1 page
  choose(scores,
         {.budget = Budget::tokens(7),
          .granularity = Granularity::pages,
          .page_size = 4,
          .page_score = PageScore::max},
         TopK{}, sel, ws);
  EXPECT_EQ(kept(sel), (std::vector<token_t>{0, 1, 2, 3}));
  // the protected pages must fit: sinks 1 and recent 1 need pages 0 and 2 = 8 tokens
  Scores both = scores;
  both.protect = {.sinks = 1, .recent = 1};
  expect_error(
      [&] {
        choose(both,
               {.budget = Budget::tokens(7), .granularity = Granularity::pages, .page_size = 4},
               TopK{}, sel, ws);
      },
      "budget: expected at least the pages holding protected tokens (2 pages of 4 = 8 tokens), got "
      "7");
  // a partial last page: 10 tokens in pages of 4 → [0..3] [4..7] [8, 9]
  const std::vector<float> t{0, 0, 0, 0, 1, 1, 1, 1, 3, 3};
  choose(Scores{.values = t, .rows = 1, .tokens = 10, .kv_heads = 1, .kind = ScoreRows::shared},
         {.budget = Budget::tokens(5), .granularity = Granularity::pages, .page_size = 4}, TopK{},
         sel, ws);
  EXPECT_EQ(kept(sel), (std::vector<token_t>{8, 9}));  // 6 > 4: the short page wins, 1 page kept
  Selection half;
  half.reset(1, 8, true);
  const auto h = half.add_head(2);
  h[0] = 0;
  h[1] = 5;
  expect_error(
      [&] { dropped_pages(half, 4, dropped); },
      "selection: expected whole pages kept or dropped, got page 0 of head 0 keeps 1 of 4 tokens");
}

// CORM compares its scores with 1 ("important for some window query"), so across layers it
// must see them unscaled: a token important in any layer stays. Layer 0 finds token 1 important
// (1.2), layer 1 token 3 (1.5); r = 1 protects token 5. Normalised (each layer to a sum of 1 over
// its candidates, as the other rules get them) no score would reach 1 and only token 5 would
// stay — what the llama.cpp adapter did until this test. Mean or max: the same for CORM.
TEST(Granularity, LayersKeepCORMsThresholdOnRawScores) {
  const std::vector<float> a{0.5f, 1.2f, 0.1f, 0.3f, 0.2f, 0.9f},
      b{0.2f, 0.1f, 0.4f, 1.5f, 0.2f, 0.3f};
  const Scores layers[2] = {
      {.values = a, .rows = 1, .tokens = 6, .kv_heads = 1, .kind = ScoreRows::kv_heads},
      {.values = b, .rows = 1, .tokens = 6, .kv_heads = 1, .kind = ScoreRows::kv_heads}};
  const CORM corm({.w = 4, .r = 1});
  Selection sel;
  Workspace ws;
  for (const LayerCombine how : {LayerCombine::mean, LayerCombine::max}) {
    choose(layers, {.budget = Budget::none(), .granularity = Granularity::layers, .combine = how},
           corm.rule(6), sel, ws);
    EXPECT_EQ(kept(sel), (std::vector<token_t>{1, 3, 5})) << to_string(how);
  }
  // a budget caps it: the protected token and the most important one (1.5 > 1.2)
  choose(layers, {.budget = Budget::tokens(2), .granularity = Granularity::layers}, corm.rule(6),
         sel, ws);
  EXPECT_EQ(kept(sel), (std::vector<token_t>{3, 5}));
}

// CORM's threshold keeps a different count per head; `equal` fills the others up by their own
// scores to the largest count (vLLM keeps one length per layer).
TEST(Granularity, EqualCountsFillHeadsUpToTheLargest) {
  // head 0: 3 important (score ≥ 1), head 1: 1 important; r = 0, no cap
  const std::vector<float> s{1.5f, 0.2f, 2.0f, 1.0f, 0.1f, 0.3f,    // head 0
                             0.1f, 0.9f, 0.2f, 0.3f, 1.2f, 0.05f};  // head 1
  const Scores scores{
      .values = s, .rows = 2, .tokens = 6, .kv_heads = 2, .kind = ScoreRows::kv_heads};
  const CORM corm({.w = 4, .r = 0});
  Selection per_head, equal;
  Workspace ws;
  choose(scores, {.budget = Budget::none(), .granularity = Granularity::per_head}, corm.rule(6),
         per_head, ws);
  EXPECT_EQ(kept(per_head, 0), (std::vector<token_t>{0, 2, 3}));
  EXPECT_EQ(kept(per_head, 1), (std::vector<token_t>{4}));
  choose(scores, {.budget = Budget::none(), .granularity = Granularity::equal}, corm.rule(6), equal,
         ws);
  EXPECT_EQ(kept(equal, 0), (std::vector<token_t>{0, 2, 3}));
  EXPECT_EQ(kept(equal, 1), (std::vector<token_t>{1, 3, 4}));  // + its next best: .9 and .3
  // and AdaKV budgets are per_head only: equal keeps every head at the budget
  const std::vector<float> t{9, 8, 7, 6, 0, 0, 1, 1, 1, 1, 1, 1};
  const Scores flat{
      .values = t, .rows = 2, .tokens = 6, .kv_heads = 2, .kind = ScoreRows::kv_heads};
  choose(flat,
         {.budget = Budget::tokens(3),
          .granularity = Granularity::equal,
          .adaptive = AdaptiveBudgets{.alpha = 0.0}},
         TopK{}, equal, ws);
  EXPECT_EQ(equal.size(0), 3);
  EXPECT_EQ(equal.size(1), 3);
  choose(flat,
         {.budget = Budget::tokens(3),
          .granularity = Granularity::per_head,
          .adaptive = AdaptiveBudgets{.alpha = 0.0}},
         TopK{}, per_head, ws);
  EXPECT_NE(per_head.size(0), per_head.size(1));  // ragged: head 0's mass is concentrated
}

/// Every scoring policy (through the registry), every granularity, every layout: the selection
/// has the granularity's shape, and `compact` (or, for pages, nothing at all) applies it.
TEST(Granularity, EveryScoringPolicyOffersEveryGranularityOnEveryLayout) {
  const index_t n = 96, d = 8, kv_heads = 2, q_heads = 4, w = 8;
  std::vector<float> q(static_cast<std::size_t>(q_heads * w * d));
  std::mt19937_64 rng(5);
  std::normal_distribution<float> normal;
  for (float& x : q) x = normal(rng);
  std::vector<float> wo_data(static_cast<std::size_t>(q_heads * d * 16));
  for (float& x : wo_data) x = normal(rng);
  const OutputProjection wo = OutputProjection::dense(wo_data.data(), q_heads, d, 16);
  int checked = 0;
  for_each_policy([&]<class P>() {
    if (!P::info.scores) return;
    for (const Granularity g : all_values(Granularity{})) {
      if (std::string_view(P::name) == "cascade" && g == Granularity::pages) {
        expect_error([&] { make_policy(P::name, {.granularity = g}); },
                     "granularity (in policy 'cascade'): expected per_head, equal, shared or "
                     "layers (cascade counts "
                     "tokens, not pages), got pages");
        ++checked;
        continue;
      }
      const AnyPolicy policy = make_policy(
          P::name, {.settings = small_settings<P>(), .seed = 3, .granularity = g, .wo = &wo});
      for (const Layout layout : all_layouts) {
        SCOPED_TRACE(std::string(P::name) + " " + std::string(to_string(g)) + " " +
                     layout_name(layout));
        auto c = make_cache<float>(layout, kv_heads, n, d, d, 17, 8);
        const QueryWindow<float> window(q.data(), q_heads, w, d);
        const bool paged = c.kv().paged();  // cells too: a gather is pages of one token
        const Budget budget = budget_free(policy) ? Budget::none() : Budget::tokens(40);
        Selection sel;
        Workspace ws;
        if (g == Granularity::pages && !paged) {
          EXPECT_THROW(kvevict::select(policy, c.kv(), window, budget, sel, ws), kvevict::error);
          continue;
        }
        kvevict::select(policy, c.kv(), window, budget, sel, ws);
        ASSERT_NO_THROW(sel.validate());
        EXPECT_EQ(sel.shared(), one_set(g));
        if (g == Granularity::equal) {
          for (index_t h = 1; h < kv_heads; ++h) EXPECT_EQ(sel.size(h), sel.size(0));
        }
        if (!budget.is_none()) {
          for (index_t h = 0; h < kv_heads; ++h) EXPECT_LE(sel.size(h), 40);
        }
        if (g == Granularity::pages) {
          const index_t page = c.kv().page_table().page_size;
          std::vector<index_t> dropped;
          ASSERT_NO_THROW(dropped_pages(sel, page, dropped));
          EXPECT_EQ(sel.size(0) % page == 0 || sel.kept(0).back() == n - 1, true);
          continue;  // a paged engine frees the dropped pages: nothing is compacted
        }
        const auto before = snapshot(c.kv());
        const Compaction r = compact(c.kv(), sel);
        for (index_t h = 0; h < kv_heads; ++h) {
          const auto k = sel.kept(h);
          for (std::size_t i = 0; i < k.size(); ++i)
            for (index_t e = 0; e < d; ++e)
              ASSERT_EQ(
                  c.kv().key(h, static_cast<index_t>(i))[static_cast<std::size_t>(e)],
                  from_bits<float>(before[static_cast<std::size_t>(((h * n + k[i]) * 2) * d + e)]));
          EXPECT_EQ(r.lengths[static_cast<std::size_t>(h)], sel.size(h));
        }
      }
      ++checked;
    }
  });
  int scoring = 0;
  for_each_policy([&]<class P>() { scoring += P::info.scores ? 1 : 0; });
  EXPECT_EQ(checked, scoring * 5);  // every scoring policy × five granularities
  EXPECT_GE(scoring, 11);
}

// Cross-layer: several layers' scores, one set; the same policy per layer scores each layer's
// cache, and the combined set is identical for every layer (a cell is one token everywhere).
TEST(Granularity, LayersGiveOneSetForEveryLayer) {
  const index_t n = 64, d = 8, w = 8;
  std::vector<OwnedCache<float>> caches;
  std::vector<float> q(static_cast<std::size_t>(4 * w * d));
  std::mt19937_64 rng(9);
  std::normal_distribution<float> normal;
  for (float& x : q) x = normal(rng);
  for (int l = 0; l < 3; ++l) caches.push_back(make_cache<float>(Layout::nhd, 2, n, d, d, 40 + l));
  const SnapKV snap({.window = w, .granularity = Granularity::layers});
  Workspace ws;
  std::vector<Scores> layers;
  for (auto& c : caches)
    layers.push_back(
        snap.score(c.kv(), QueryWindow<float>(q.data(), 4, w, d), Granularity::layers, ws));
  Selection sel;
  choose(std::span<const Scores>(layers),
         {.budget = Budget::tokens(20), .granularity = Granularity::layers}, snap.rule(n), sel, ws);
  ASSERT_TRUE(sel.shared());
  EXPECT_EQ(sel.size(0), 20);
  // the window of every layer is protected in the combined set
  for (index_t t = n - w; t < n; ++t)
    EXPECT_TRUE(
        std::binary_search(sel.kept(0).begin(), sel.kept(0).end(), static_cast<token_t>(t)));
}

}  // namespace
}  // namespace kvevict::test
