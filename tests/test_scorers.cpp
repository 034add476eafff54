// The attention-free scorers (issue 20) against direct transcriptions of kvpress's formulas
// (commit 8bb29b9): KNorm, KeyDiff (and its block form), ExpectedAttention, LagKV.
// SPDX-License-Identifier: Apache-2.0
#include <kvevict/registry.hpp>

#include <numeric>

#include "support.hpp"

namespace kvevict::test {
namespace {

std::vector<token_t> kept(const Selection& s, index_t h = 0) {
  return {s.kept(h).begin(), s.kept(h).end()};
}

/// The top b of `score` (ties: the larger index), ascending: the library's tie rule applied to
/// a reference score vector.
std::vector<token_t> top(const std::vector<double>& score, index_t b) {
  std::vector<token_t> idx(score.size());
  std::iota(idx.begin(), idx.end(), 0);
  std::stable_sort(idx.begin(), idx.end(), [&](token_t a, token_t c) {
    return score[static_cast<std::size_t>(a)] > score[static_cast<std::size_t>(c)] ||
           (score[static_cast<std::size_t>(a)] == score[static_cast<std::size_t>(c)] && a > c);
  });
  idx.resize(static_cast<std::size_t>(b));
  std::sort(idx.begin(), idx.end());
  return idx;
}

struct Layer {
  index_t kv, qh, n, d, w;
  std::vector<float> k, v, q;
  Layer(index_t kv_heads, index_t q_heads, index_t tokens, index_t dim, index_t window,
        std::uint64_t seed)
      : kv(kv_heads), qh(q_heads), n(tokens), d(dim), w(window) {
    std::mt19937_64 rng(seed);
    std::normal_distribution<float> normal;
    k.resize(static_cast<std::size_t>(kv * n * d));
    v.resize(k.size());
    q.resize(static_cast<std::size_t>(qh * w * d));
    for (auto* x : {&k, &v, &q})
      for (float& e : *x) e = normal(rng);
  }
  KVCache<float> view() {
    return {Storage<float>::hnd(k.data(), n, d), Storage<float>::hnd(v.data(), n, d), {kv, n, d}};
  }
  QueryWindow<float> queries() const { return {q.data(), qh, w, d}; }
  const float* key(index_t h, index_t t) const { return k.data() + (h * n + t) * d; }
  const float* value(index_t h, index_t t) const { return v.data() + (h * n + t) * d; }
  const float* query(index_t h, index_t i) const { return q.data() + (h * w + i) * d; }
};

double norm(const float* x, index_t d) {
  double s = 0;
  for (index_t i = 0; i < d; ++i) s += static_cast<double>(x[i]) * x[i];
  return std::sqrt(s);
}

// -- KNorm -----------------------------------------------------------------------------------

TEST(KNorm, KeepsTheSmallestKeysTiesToTheRecent) {
  // one head, d 2: norms 3, 1, 2, 1 → B 2 keeps {1, 3}; B 1: the tie keeps the recent 3
  std::vector<float> k{3, 0, 0, 1, 2, 0, 1, 0}, v(8);
  const KVCache<float> kv(Storage<float>::hnd(k.data(), 4, 2), Storage<float>::hnd(v.data(), 4, 2),
                          {1, 4, 2});
  const std::vector<float> q(2, 0.0f);
  Selection sel;
  Workspace ws;
  KNorm().select(kv, QueryWindow<float>(q.data(), 1, 1, 2), Budget::tokens(2), sel, ws);
  EXPECT_EQ(kept(sel), (std::vector<token_t>{1, 3}));
  KNorm().select(kv, QueryWindow<float>(q.data(), 1, 1, 2), Budget::tokens(1), sel, ws);
  EXPECT_EQ(kept(sel), (std::vector<token_t>{3}));
}

TEST(KNorm, EqualsTheFormulaOnRandomKeys) {
  Layer l(2, 4, 200, 16, 4, 1);
  Selection sel;
  Workspace ws;
  KNorm().select(l.view(), l.queries(), Budget::tokens(50), sel, ws);
  for (index_t h = 0; h < 2; ++h) {
    std::vector<double> s(static_cast<std::size_t>(l.n));
    for (index_t t = 0; t < l.n; ++t) s[static_cast<std::size_t>(t)] = -norm(l.key(h, t), l.d);
    EXPECT_EQ(kept(sel, h), top(s, 50)) << h;
  }
}

// -- KeyDiff ---------------------------------------------------------------------------------

/// kvpress: anchor = mean(normalize(k)); score = −cosine_similarity(k, anchor).
std::vector<double> keydiff_reference(const Layer& l, index_t h,
                                      const std::vector<index_t>& tokens) {
  const index_t d = l.d;
  std::vector<double> anchor(static_cast<std::size_t>(d), 0.0);
  for (index_t t : tokens) {
    const double nk = std::max(norm(l.key(h, t), d), 1e-12);
    for (index_t i = 0; i < d; ++i)
      anchor[static_cast<std::size_t>(i)] +=
          l.key(h, t)[i] / nk / static_cast<double>(tokens.size());
  }
  double na = 0;
  for (double a : anchor) na += a * a;
  na = std::max(std::sqrt(na), 1e-8);
  std::vector<double> out;
  for (index_t t : tokens) {
    const double nk = std::max(norm(l.key(h, t), d), 1e-8);
    double dot = 0;
    for (index_t i = 0; i < d; ++i)
      dot += l.key(h, t)[i] / nk * anchor[static_cast<std::size_t>(i)] / na;
    out.push_back(-dot);
  }
  return out;
}

TEST(KeyDiff, EqualsTheFormulaOnRandomAndStructuredKeys) {
  Layer l(2, 4, 160, 16, 4, 2);
  for (index_t t = 0; t < l.n; t += 5)  // a common direction most keys lean to
    for (index_t h = 0; h < 2; ++h) l.k[static_cast<std::size_t>((h * l.n + t) * l.d)] += 6.0f;
  Selection sel;
  Workspace ws;
  KeyDiff().select(l.view(), l.queries(), Budget::tokens(40), sel, ws);
  std::vector<index_t> all(static_cast<std::size_t>(l.n));
  std::iota(all.begin(), all.end(), 0);
  for (index_t h = 0; h < 2; ++h)
    EXPECT_EQ(kept(sel, h), top(keydiff_reference(l, h, all), 40)) << h;
}

TEST(KeyDiff, BlockFormEqualsBlockPress) {
  Layer l(2, 4, 150, 16, 4, 3);
  const index_t b = 30, block = 32;
  Selection sel;
  Workspace ws;
  KeyDiff({.block = block}).select(l.view(), l.queries(), Budget::tokens(b), sel, ws);
  for (index_t h = 0; h < 2; ++h) {
    std::vector<index_t> keep(static_cast<std::size_t>(b));
    std::iota(keep.begin(), keep.end(), 0);
    for (index_t i = b; i < l.n; i += block) {  // kvpress BlockPress
      std::vector<index_t> cur = keep;
      for (index_t t = i; t < std::min(i + block, l.n); ++t) cur.push_back(t);
      const auto s = keydiff_reference(l, h, cur);
      const auto best = top(s, b);  // indices into cur; cur is ascending, so ties go to the recent
      keep.clear();
      for (token_t j : best) keep.push_back(cur[static_cast<std::size_t>(j)]);
    }
    std::sort(keep.begin(), keep.end());
    EXPECT_EQ(kept(sel, h), std::vector<token_t>(keep.begin(), keep.end())) << h;
  }
  expect_error([] { KeyDiff({.block = 8, .granularity = Granularity::shared}); },
               "granularity: expected per_head or equal for the block form, got shared");
}

// -- ExpectedAttention -----------------------------------------------------------------------

/// kvpress in matrix form: R_t = diag(cos) + diag(sin)·P for the neox pairs, R̄ = mean_t R_t;
/// μ' = R̄μ, Σ' = R̄ΣR̄ᵀ from the pre-RoPE queries; softmax over non-sink keys of
/// μ'·k/√d + kᵀΣ'k/2d; group mean; × ‖v‖.
std::vector<double> expected_attention_reference(const Layer& l, index_t kvh, index_t n_future,
                                                 index_t sinks, double base) {
  const index_t d = l.d, half = d / 2, g = l.qh / l.kv, n = l.n;
  auto rot = [&](index_t pos) {  // R(pos) as a d×d matrix, neox pairs
    std::vector<double> r(static_cast<std::size_t>(d * d), 0.0);
    for (index_t i = 0; i < half; ++i) {
      const double th = static_cast<double>(pos) *
                        std::pow(base, -2.0 * static_cast<double>(i) / static_cast<double>(d));
      r[static_cast<std::size_t>(i * d + i)] = std::cos(th);
      r[static_cast<std::size_t>(i * d + i + half)] = -std::sin(th);
      r[static_cast<std::size_t>((i + half) * d + i)] = std::sin(th);
      r[static_cast<std::size_t>((i + half) * d + i + half)] = std::cos(th);
    }
    return r;
  };
  std::vector<double> rbar(static_cast<std::size_t>(d * d), 0.0);
  for (index_t t = n; t < n + n_future; ++t) {
    const auto r = rot(t);
    for (std::size_t i = 0; i < r.size(); ++i) rbar[i] += r[i] / static_cast<double>(n_future);
  }
  std::vector<double> total(static_cast<std::size_t>(n), 0.0);
  for (index_t h = kvh * g; h < (kvh + 1) * g; ++h) {
    std::vector<std::vector<double>> pre;
    for (index_t i = 0; i < l.w; ++i) {
      const index_t pos = n - l.w + i;
      if (pos < sinks) continue;
      const auto r = rot(-pos);
      std::vector<double> q(static_cast<std::size_t>(d), 0.0);
      for (index_t a = 0; a < d; ++a)
        for (index_t b = 0; b < d; ++b)
          q[static_cast<std::size_t>(a)] +=
              r[static_cast<std::size_t>(a * d + b)] * l.query(h, i)[b];
      pre.push_back(q);
    }
    const double N = static_cast<double>(pre.size());
    std::vector<double> mu(static_cast<std::size_t>(d), 0.0),
        cov(static_cast<std::size_t>(d * d), 0.0);
    for (const auto& q : pre)
      for (index_t a = 0; a < d; ++a)
        mu[static_cast<std::size_t>(a)] += q[static_cast<std::size_t>(a)] / N;
    for (const auto& q : pre)
      for (index_t a = 0; a < d; ++a)
        for (index_t b = 0; b < d; ++b)
          cov[static_cast<std::size_t>(a * d + b)] +=
              (q[static_cast<std::size_t>(a)] - mu[static_cast<std::size_t>(a)]) *
              (q[static_cast<std::size_t>(b)] - mu[static_cast<std::size_t>(b)]) / N;
    std::vector<double> mu2(static_cast<std::size_t>(d), 0.0), rc(cov.size(), 0.0),
        c2(cov.size(), 0.0);
    for (index_t a = 0; a < d; ++a)
      for (index_t b = 0; b < d; ++b)
        mu2[static_cast<std::size_t>(a)] +=
            rbar[static_cast<std::size_t>(a * d + b)] * mu[static_cast<std::size_t>(b)];
    for (index_t a = 0; a < d; ++a)
      for (index_t b = 0; b < d; ++b)
        for (index_t c = 0; c < d; ++c)
          rc[static_cast<std::size_t>(a * d + b)] +=
              rbar[static_cast<std::size_t>(a * d + c)] * cov[static_cast<std::size_t>(c * d + b)];
    for (index_t a = 0; a < d; ++a)
      for (index_t b = 0; b < d; ++b)
        for (index_t c = 0; c < d; ++c)
          c2[static_cast<std::size_t>(a * d + b)] +=
              rc[static_cast<std::size_t>(a * d + c)] * rbar[static_cast<std::size_t>(b * d + c)];
    std::vector<double> s(static_cast<std::size_t>(n), 0.0);
    double mx = -INFINITY;
    for (index_t t = sinks; t < n; ++t) {
      const float* k = l.key(kvh, t);
      double lin = 0, quad = 0;
      for (index_t a = 0; a < d; ++a) {
        lin += mu2[static_cast<std::size_t>(a)] * k[a];
        for (index_t b = 0; b < d; ++b)
          quad += k[a] * c2[static_cast<std::size_t>(a * d + b)] * k[b];
      }
      s[static_cast<std::size_t>(t)] = lin / std::sqrt(static_cast<double>(d)) + quad / (2.0 * d);
      mx = std::max(mx, s[static_cast<std::size_t>(t)]);
    }
    double sum = 0;
    for (index_t t = sinks; t < n; ++t) sum += std::exp(s[static_cast<std::size_t>(t)] - mx);
    for (index_t t = sinks; t < n; ++t)
      total[static_cast<std::size_t>(t)] += std::exp(s[static_cast<std::size_t>(t)] - mx) / sum / g;
  }
  for (index_t t = sinks; t < n; ++t)
    total[static_cast<std::size_t>(t)] *= norm(l.value(kvh, t), d);
  for (index_t t = 0; t < sinks; ++t) total[static_cast<std::size_t>(t)] = 1e300;  // protected
  return total;
}

TEST(ExpectedAttention, EqualsTheMatrixFormOfTheFormula) {
  Layer l(2, 4, 120, 8, 120, 4);  // every position's query: the statistics of the whole prompt
  Selection sel;
  Workspace ws;
  ExpectedAttention({.n_future = 64}).select(l.view(), l.queries(), Budget::tokens(30), sel, ws);
  for (index_t h = 0; h < 2; ++h)
    EXPECT_EQ(kept(sel, h), top(expected_attention_reference(l, h, 64, 4, 10000.0), 30)) << h;
  // the scores themselves, within fp32 accumulation error
  Workspace::Frame frame(ws);
  const Scores s =
      ExpectedAttention({.n_future = 64}).score(l.view(), l.queries(), Granularity::per_head, ws);
  const auto ref = expected_attention_reference(l, 1, 64, 4, 10000.0);
  for (index_t t = 4; t < l.n; ++t)
    EXPECT_NEAR(s.values[static_cast<std::size_t>(l.n + t)], ref[static_cast<std::size_t>(t)],
                2e-5 * ref[static_cast<std::size_t>(t)] + 1e-7)
        << t;
}

/// Every non-sink score of every KV head of `l` within fp32 accumulation error of the matrix form.
void expect_scores_match_formula(Layer l, index_t n_future) {
  Workspace ws;
  const Scores s = ExpectedAttention({.n_future = n_future})
                       .score(l.view(), l.queries(), Granularity::per_head, ws);
  for (index_t h = 0; h < l.kv; ++h) {
    const auto ref = expected_attention_reference(l, h, n_future, 4, 10000.0);
    for (index_t t = 4; t < l.n; ++t)
      ASSERT_NEAR(s.values[static_cast<std::size_t>(h * l.n + t)], ref[static_cast<std::size_t>(t)],
                  2e-5 * ref[static_cast<std::size_t>(t)] + 1e-7)
          << "w " << l.w << " head " << h << " token " << t;
  }
}

// Caches longer than one key block (1024) with a partial last block; windows whose g·N product
// columns are below and above 16 (Eigen's product, and the own kernel of AVX-512 builds).
TEST(ExpectedAttention, SeveralKeyBlocksMatchTheFormula) {
  for (const index_t w : {index_t{6}, index_t{12}})
    expect_scores_match_formula(Layer(2, 4, 1500, 8, w, 9), 64);
}

// The covariance term folds N centred queries into N − 1 (z_j = x_j + x_N / (√N − 1)); at the
// edges: one query (no covariance term: x_1 = 0), two (one folded vector), and a window reaching
// into the sinks (their queries left out of N).
TEST(ExpectedAttention, FoldedCovarianceMatchesTheFormulaAtFewQueries) {
  for (const index_t w : {index_t{1}, index_t{2}, index_t{3}, index_t{40}})
    expect_scores_match_formula(Layer(2, 8, 40, 8, w, 17), 16);
}

// Non-finite keys and values are found inside the scoring (no whole-cache pass first), and the
// error is still the one a whole-cache check in (head, token, element) order gives: keys before
// values, whichever the scoring meets first.
TEST(ExpectedAttention, NamesTheFirstNonFiniteElementAsAWholeCacheCheck) {
  Workspace ws;
  Selection sel;
  const float inf = std::numeric_limits<float>::infinity(), nan = std::nanf("");
  {  // a bad value at a scored token and a bad key later: the key is named
    Layer l(2, 4, 60, 8, 8, 5);
    l.v[static_cast<std::size_t>((0 * 60 + 10) * 8 + 1)] = nan;
    l.k[static_cast<std::size_t>((1 * 60 + 50) * 8 + 2)] = -inf;
    expect_error(
        [&] { ExpectedAttention().select(l.view(), l.queries(), Budget::tokens(20), sel, ws); },
        "keys: expected finite values, got -inf at KV head 1, token 50, element 2");
  }
  {  // a bad query of head 0 (read before head 1's keys) and a bad key of KV head 1: the key
    Layer l(2, 4, 60, 8, 8, 7);
    l.q[static_cast<std::size_t>((0 * 8 + 7) * 8 + 3)] = nan;
    l.k[static_cast<std::size_t>((1 * 60 + 40) * 8 + 0)] = inf;
    expect_error(
        [&] { ExpectedAttention().select(l.view(), l.queries(), Budget::tokens(20), sel, ws); },
        "keys: expected finite values, got inf at KV head 1, token 40, element 0");
  }
  for (const bool vnorm : {true, false}) {  // a bad value alone, at a scored token or a sink
    for (const index_t t : {index_t{2}, index_t{33}}) {
      Layer l(2, 4, 60, 8, 8, 6);
      l.v[static_cast<std::size_t>((1 * 60 + t) * 8 + 7)] = inf;
      expect_error(
          [&] {
            ExpectedAttention({.use_vnorm = vnorm})
                .select(l.view(), l.queries(), Budget::tokens(20), sel, ws);
          },
          "values: expected finite values, got inf at KV head 1, token " + std::to_string(t) +
              ", element 7");
    }
  }
}

// -- LagKV -----------------------------------------------------------------------------------

std::vector<double> lagkv_reference(const Layer& l, index_t h, index_t sink, index_t lag) {
  const index_t n = l.n, d = l.d;
  std::vector<double> out(static_cast<std::size_t>(n), 1.0);
  const index_t m = (n - sink) / lag;
  for (index_t p = 0; p + 1 < m; ++p) {
    std::vector<double> sc(static_cast<std::size_t>(lag), 0.0);
    for (const bool keys : {true, false}) {
      const auto x = [&](index_t t, index_t c) { return keys ? l.key(h, t)[c] : l.value(h, t)[c]; };
      const index_t b = sink + p * lag;
      std::vector<double> s(static_cast<std::size_t>(lag));
      for (index_t i = 0; i < lag; ++i) {
        std::vector<double> z;
        for (index_t c = 0; c < d; ++c) {
          double lo = INFINITY, hi = -INFINITY;
          for (index_t t = b + lag; t < b + 2 * lag; ++t)
            lo = std::min<double>(lo, x(t, c)), hi = std::max<double>(hi, x(t, c));
          z.push_back((x(b + i, c) - lo) / (hi - lo));
        }
        const double mean = std::accumulate(z.begin(), z.end(), 0.0) / d;
        double var = 0;
        for (double e : z) var += (e - mean) * (e - mean);
        s[static_cast<std::size_t>(i)] = std::sqrt(var / (d - 1));
      }
      const double mx = *std::max_element(s.begin(), s.end());
      double sum = 0;
      for (double& e : s) sum += e = std::exp(e - mx);
      for (index_t i = 0; i < lag; ++i)
        sc[static_cast<std::size_t>(i)] += s[static_cast<std::size_t>(i)] / sum / 2;
    }
    std::vector<index_t> order(static_cast<std::size_t>(lag));
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](index_t a, index_t b) {
      return sc[static_cast<std::size_t>(a)] < sc[static_cast<std::size_t>(b)];
    });
    for (index_t r = 0; r < lag; ++r)
      out[static_cast<std::size_t>(sink + p * lag + order[static_cast<std::size_t>(r)])] =
          static_cast<double>(r) / lag;
  }
  return out;
}

TEST(LagKV, EqualsTheFormula) {
  Layer l(2, 4, 4 + 5 * 16 + 7, 8, 4, 5);  // 5 partitions of 16 and a remainder of 7
  Selection sel;
  Workspace ws;
  LagKV({.lag = 16}).select(l.view(), l.queries(), Budget::tokens(50), sel, ws);
  for (index_t h = 0; h < 2; ++h)
    EXPECT_EQ(kept(sel, h), top(lagkv_reference(l, h, 4, 16), 50)) << h;
}

TEST(LagKV, ShortCacheKeepsSinksThenTheMostRecent) {
  Layer l(1, 1, 40, 8, 4, 6);  // 40 < 4 + 2 · 32: no partition to score
  Selection sel;
  Workspace ws;
  LagKV({.lag = 32}).select(l.view(), l.queries(), Budget::tokens(10), sel, ws);
  EXPECT_EQ(kept(sel), (std::vector<token_t>{0, 1, 2, 3, 34, 35, 36, 37, 38, 39}));
}

// Every scorer is in the registry with its parameters, and budget ≥ n keeps everything.
TEST(Scorers, RegisteredAndKeepEverythingAtFullBudget) {
  for (const char* name : {"knorm", "keydiff", "expected_attention", "lagkv"}) {
    const AnyPolicy p = make_policy(name);
    EXPECT_EQ(name_of(p), name);
    EXPECT_TRUE(info_of(p).scores);
    Layer l(2, 4, 64, 8, 16, 7);
    Selection sel;
    Workspace ws;
    kvevict::select(p, l.view(), l.queries(), Budget::tokens(64), sel, ws);
    for (index_t h = 0; h < 2; ++h) EXPECT_EQ(sel.size(h), 64) << name;
  }
}

}  // namespace
}  // namespace kvevict::test
