// CriticalKV: the hand case, the projected-norm kernels against double references, the paper's
// bound, the window rule, AdaKV budgets, and W_o validation.
// SPDX-License-Identifier: Apache-2.0
#include <cmath>

#include "support.hpp"

namespace kvevict::test {
namespace {

static_assert(EvictionPolicy<CriticalKV, float> && EvictionPolicy<CriticalKV, Eigen::bfloat16>);

std::vector<float> random_vector(std::size_t size, std::uint64_t seed, float scale = 1.0f) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, scale);
  std::vector<float> x(size);
  for (float& v : x) v = normal(rng);
  return x;
}

// shared/ALGORITHMS.md: A = [.40,.25,.15,.10,.06,.04], N = [0.5,1,4,0.2,6,1], B = 4, w = 0,
// ratio 0.5, ε = 1e-4 → stage 1 {0,1} by attention, stage 2 {2,4} by (A + ε)·N.
TEST(CriticalKV, HandCase) {
  std::vector<float> wo_data(8, 1.0f);
  const CriticalKV policy({}, OutputProjection::dense(wo_data.data(), 1, 2, 4));
  const std::vector<float> a{.40f, .25f, .15f, .10f, .06f, .04f}, norm{0.5f, 1, 4, 0.2f, 6, 1};
  // One row of n = m + w = 6 tokens (w = 0: no window to pre-mark), budget 4.
  const Row row{
      .score = a, .second = norm, .n = 6, .budget = 4, .protect = {.recent = 0}, .marked = 0};
  std::vector<std::uint8_t> keep(6, 0);
  Workspace ws;
  policy.rule(6).pick(row, keep, ws);
  EXPECT_EQ(keep, (std::vector<std::uint8_t>{1, 1, 1, 0, 1, 0}));
  // Plain top-4 (first_stage_ratio 1) would keep {0, 1, 2, 3}.
  const CriticalKV attention_only({.first_stage_ratio = 1.0},
                                  OutputProjection::dense(wo_data.data(), 1, 2, 4));
  std::fill(keep.begin(), keep.end(), 0);
  attention_only.rule(6).pick(row, keep, ws);
  EXPECT_EQ(keep, (std::vector<std::uint8_t>{1, 1, 1, 1, 0, 0}));
}

/// ‖v W_o^h‖ in double.
double naive_norm(std::span<const float> v, const OutputProjection& wo, index_t h, NormKind kind) {
  double acc = 0;
  for (index_t k = 0; k < wo.hidden(); ++k) {
    double y = 0;
    for (index_t i = 0; i < wo.head_dim(); ++i)
      y += static_cast<double>(v[static_cast<std::size_t>(i)]) * wo.at(h, i, k);
    acc += kind == NormKind::l1 ? std::abs(y) : y * y;
  }
  return kind == NormKind::l1 ? acc : std::sqrt(acc);
}

template <class T>
class ValueNorms : public ::testing::Test {};
using ElementTypes = ::testing::Types<float, Eigen::half, Eigen::bfloat16>;
TYPED_TEST_SUITE(ValueNorms, ElementTypes);

// The L1 kernel (GEMM) and the L2 Gram form against double references, on two layouts of the
// values and both layouts of W_o (dense and a PyTorch o_proj.weight).
TYPED_TEST(ValueNorms, MatchDoubleReferences) {
  using T = TypeParam;
  const index_t kv_heads = 2, q_heads = 4, n = 150, d = 16, hidden = 40;
  for (Layout layout : {Layout::hnd, Layout::paged_nhd}) {
    auto c = make_cache<T>(layout, kv_heads, n, d, d, 31);
    const auto w = random_vector(static_cast<std::size_t>(q_heads * d * hidden), 32);
    std::vector<T> w_stored(w.size());
    for (std::size_t i = 0; i < w.size(); ++i) w_stored[i] = from_float<T>(w[i]);
    // The same matrix as a linear weight [hidden][q_heads · d].
    std::vector<T> linear(w.size());
    for (index_t h = 0; h < q_heads; ++h)
      for (index_t i = 0; i < d; ++i)
        for (index_t k = 0; k < hidden; ++k)
          linear[static_cast<std::size_t>(k * q_heads * d + h * d + i)] =
              w_stored[static_cast<std::size_t>((h * d + i) * hidden + k)];
    for (const OutputProjection& wo :
         {OutputProjection::dense(w_stored.data(), q_heads, d, hidden),
          OutputProjection::from_linear_weight(linear.data(), q_heads, d, hidden)}) {
      Workspace ws;
      const auto gram = kernels::gram_matrices(wo);
      for (NormKind kind : {NormKind::l1, NormKind::l2}) {
        std::vector<float> out(static_cast<std::size_t>(q_heads * (n - 3)));
        kernels::projected_value_norms(c.kv(), wo, n - 3, kind, gram, out, ws);
        double err = 0, norm = 0;
        for (index_t h = 0; h < q_heads; ++h)
          for (index_t j = 0; j < n - 3; ++j) {
            std::vector<float> v;
            for (T x : c.kv().value(h / 2, j)) v.push_back(to_float(x));
            const double want = naive_norm(v, wo, h, kind);
            err += std::pow(out[static_cast<std::size_t>(h * (n - 3) + j)] - want, 2);
            norm += want * want;
          }
        EXPECT_LT(std::sqrt(err / norm), 1e-5) << layout_name(layout) << " " << to_string(kind);
      }
    }
  }
}

/// A random cache, queries and W_o for end-to-end checks.
struct Problem {
  index_t kv_heads = 2, q_heads = 4, n = 96, d = 8, hidden = 24, w = 4;
  std::vector<float> k, v, q, wo;
  std::optional<KVCache<float>> kv;
  Problem() {
    k = random_vector(static_cast<std::size_t>(kv_heads * n * d), 1);
    v = random_vector(static_cast<std::size_t>(kv_heads * n * d), 2);
    // Heterogeneous value norms: a few tokens carry large values.
    for (index_t t = 5; t < n; t += 11)
      for (index_t h = 0; h < kv_heads; ++h)
        for (index_t e = 0; e < d; ++e) v[static_cast<std::size_t>((h * n + t) * d + e)] *= 6.0f;
    q = random_vector(static_cast<std::size_t>(q_heads * w * d), 3, 1.5f);
    wo = random_vector(static_cast<std::size_t>(q_heads * d * hidden), 4);
    kv.emplace(Storage<float>::hnd(k.data(), n, d), Storage<float>::hnd(v.data(), n, d),
               Shape{kv_heads, n, d});
  }
  QueryWindow<float> window() const { return {q.data(), q_heads, w, d}; }
  OutputProjection projection() const {
    return OutputProjection::dense(wo.data(), q_heads, d, hidden);
  }
};

// Theorem 3.3 of the paper: for a query with attention A over the cache and v_i = V_i W_o^h,
// keeping a set with attention mass S gives ‖o − ô‖₁ ≤ θ = Σ A_i‖v_i‖₁ − (2 − 1/S) Σ_kept A_i‖v_i‖₁
// (ô: the output over the kept tokens, renormalised). The loss is computed here in double from
// the raw data; θ from the library's own kernels — `window_attention` for A and
// `projected_value_norms` for ‖v_i‖₁ — so a wrong head slice, norm or scale in them breaks it.
TEST(CriticalKV, SelectedSetSatisfiesThePaperBound) {
  Problem s;
  const auto wo = s.projection();
  Selection sel;
  Workspace ws;
  CriticalKV({.window = s.w, .kernel = 3}, wo)
      .select(*s.kv, s.window(), Budget::tokens(30), sel, ws);
  std::vector<float> a(static_cast<std::size_t>(s.q_heads * s.n)),
      norms(static_cast<std::size_t>(s.q_heads * s.n));
  kernels::window_attention(*s.kv, s.window().last(1), {}, a, ws);  // the last query of each head
  kernels::projected_value_norms(*s.kv, wo, s.n, NormKind::l1, {}, norms, ws);
  for (index_t h = 0; h < s.q_heads; ++h) {
    const index_t kvh = h / 2;
    const auto kept = sel.kept(kvh);
    double c = 0, kept_mass = 0, kept_term = 0;
    std::vector<double> o(static_cast<std::size_t>(s.hidden), 0.0), o_hat = o;
    for (index_t j = 0; j < s.n; ++j) {
      const double aj = a[static_cast<std::size_t>(h * s.n + j)];
      const double nj = norms[static_cast<std::size_t>(h * s.n + j)];
      const bool is_kept = std::binary_search(kept.begin(), kept.end(), static_cast<token_t>(j));
      c += aj * nj;
      if (is_kept) {
        kept_mass += aj;
        kept_term += aj * nj;
      }
      for (index_t k = 0; k < s.hidden; ++k) {
        double vk = 0;  // (V_j W_o^h)_k in double from the raw arrays
        for (index_t i = 0; i < s.d; ++i)
          vk += static_cast<double>(s.v[static_cast<std::size_t>((kvh * s.n + j) * s.d + i)]) *
                s.wo[static_cast<std::size_t>((h * s.d + i) * s.hidden + k)];
        o[static_cast<std::size_t>(k)] += aj * vk;
        if (is_kept) o_hat[static_cast<std::size_t>(k)] += aj * vk;
      }
    }
    double loss = 0;
    for (index_t k = 0; k < s.hidden; ++k)
      loss +=
          std::abs(o[static_cast<std::size_t>(k)] - o_hat[static_cast<std::size_t>(k)] / kept_mass);
    const double theta = c - (2.0 - 1.0 / kept_mass) * kept_term;
    EXPECT_LE(loss, theta * (1 + 1e-5)) << "query head " << h;
    EXPECT_GT(loss, 0.0);
  }
}

TEST(CriticalKV, WindowIsKeptEvenWhenStageOneIsSmaller) {
  Problem s;
  Selection sel;
  Workspace ws;
  // B = 10, w = 4, ratio 0.2: ⌊0.2 · 10⌋ = 2 < w. Upstream could evict window tokens here.
  CriticalKV({.window = s.w, .kernel = 3, .first_stage_ratio = 0.2}, s.projection())
      .select(*s.kv, s.window(), Budget::tokens(10), sel, ws);
  for (index_t h = 0; h < s.kv_heads; ++h) {
    ASSERT_EQ(sel.size(h), 10);
    for (token_t t = 92; t < 96; ++t)
      EXPECT_TRUE(std::binary_search(sel.kept(h).begin(), sel.kept(h).end(), t)) << t;
  }
  // Budget = window: exactly the window.
  CriticalKV({.window = s.w, .kernel = 3}, s.projection())
      .select(*s.kv, s.window(), Budget::tokens(4), sel, ws);
  EXPECT_EQ(std::vector<token_t>(sel.kept(0).begin(), sel.kept(0).end()),
            (std::vector<token_t>{92, 93, 94, 95}));
}

// The selection is SnapKV's scores and the projected norms composed by `choose`, head by head;
// with ε·N dominating nothing and ratio 1 it is SnapKV itself.
TEST(CriticalKV, ComposesSnapKVScoresAndNorms) {
  Problem s;
  Selection critical, snap;
  Workspace ws;
  const CriticalKV policy({.window = s.w, .kernel = 3, .first_stage_ratio = 1.0}, s.projection());
  policy.select(*s.kv, s.window(), Budget::tokens(25), critical, ws);
  SnapKV({.window = s.w, .kernel = 3, .pool = Pool::avg})
      .select(*s.kv, s.window(), Budget::tokens(25), snap, ws);
  for (index_t h = 0; h < s.kv_heads; ++h)
    EXPECT_EQ(std::vector<token_t>(critical.kept(h).begin(), critical.kept(h).end()),
              std::vector<token_t>(snap.kept(h).begin(), snap.kept(h).end()));
  // With the default ratio the large-value tokens (every 11th from 5) win more places.
  Selection weighted;
  CriticalKV({.window = s.w, .kernel = 3, .first_stage_ratio = 0.0}, s.projection())
      .select(*s.kv, s.window(), Budget::tokens(25), weighted, ws);
  auto heavy = [&](const Selection& sel) {
    int count = 0;
    for (token_t t : sel.kept(0)) count += (t >= 5 && (t - 5) % 11 == 0);
    return count;
  };
  EXPECT_GT(heavy(weighted), heavy(snap));
}

TEST(AdaKV, HeadBudgetsHandCaseAndRaggedSelections) {
  // 2 heads, 5 candidates each, k = 3, alpha 1/3 → safeguard 1 per head; the other 4 places go
  // to the best remaining pairs: head 0 is concentrated, head 1 spread.
  const std::vector<float> scores{.90f, .05f, .03f, .01f, .01f, /**/ .30f, .25f, .20f, .15f, .10f};
  std::vector<index_t> budgets(2);
  Workspace ws;
  kernels::head_budgets(scores, 2, 5, 3, 1.0 / 3.0, budgets, ws);
  // Safeguards: .90 (h0), .30 (h1). Remaining best 4: .25, .20, .15, .10 (all head 1).
  EXPECT_EQ(budgets, (std::vector<index_t>{1, 5}));
  kernels::head_budgets(scores, 2, 5, 3, 1.0, budgets, ws);  // alpha 1: equal budgets
  EXPECT_EQ(budgets, (std::vector<index_t>{3, 3}));
  expect_error([&] { kernels::head_budgets(scores, 2, 5, 3, 1.5, budgets, ws); },
               "alpha_safeguard: expected a fraction in [0, 1], got 1.5");

  Problem s;
  Selection sel;
  for (bool critical : {false, true}) {
    if (critical)
      CriticalKV({.window = s.w, .kernel = 3, .ada = true, .safeguard = AdaSafeguard::adakv},
                 s.projection())
          .select(*s.kv, s.window(), Budget::tokens(20), sel, ws);
    else
      SnapKV({.window = s.w, .kernel = 3, .ada = true, .safeguard = AdaSafeguard::adakv})
          .select(*s.kv, s.window(), Budget::tokens(20), sel, ws);
    EXPECT_EQ(sel.size(0) + sel.size(1), 40);                       // the mean budget is kept
    for (index_t h = 0; h < 2; ++h) EXPECT_GE(sel.size(h), 4 + 3);  // w + ⌊0.2 · 16⌋
    std::vector<float> k = s.k, v = s.v;  // compact handles the ragged lengths
    const KVCache<float> copy(Storage<float>::hnd(k.data(), s.n, s.d),
                              Storage<float>::hnd(v.data(), s.n, s.d), {s.kv_heads, s.n, s.d});
    const Compaction result = compact(copy, sel);
    EXPECT_EQ(result.lengths[0], sel.size(0));
    EXPECT_EQ(result.lengths[1], sel.size(1));
  }
}

TEST(CriticalKV, RejectsMismatchedOutputProjection) {
  Problem s;
  Selection sel;
  Workspace ws;
  std::vector<float> w(6 * 8 * 24);
  expect_error(
      [&] {
        CriticalKV({.window = s.w}, OutputProjection::dense(w.data(), 6, 8, 24))
            .select(*s.kv, s.window(), Budget::tokens(20), sel, ws);
      },
      "wo.q_heads: expected the queries' q_heads (4), got 6");
  expect_error(
      [&] {
        CriticalKV({.window = s.w}, OutputProjection::dense(w.data(), 4, 6, 32))
            .select(*s.kv, s.window(), Budget::tokens(20), sel, ws);
      },
      "wo.head_dim: expected the values' head_dim (8), got 6");
  expect_error([&] { OutputProjection::dense(w.data(), 4, 8, 0); },
               "wo.hidden: expected hidden >= 1, got 0");
  expect_error([&] { CriticalKV({.first_stage_ratio = 2}, s.projection()); },
               "first_stage_ratio: expected a ratio in [0, 1], got 2");
  auto bad = s;
  bad.wo[17] = std::nanf("");
  expect_error(
      [&] {
        CriticalKV({.window = bad.w}, bad.projection())
            .select(*bad.kv, bad.window(), Budget::tokens(20), sel, ws);
      },
      "wo: expected finite values, got nan at query head 0, row 0, column 17");
}

}  // namespace
}  // namespace kvevict::test
