// Cascade: StreamingLLM at C = 1, the 2^c spacing and the span on uniform attention, eager fill,
// ties, positions, and the chunked prefill.
// SPDX-License-Identifier: Apache-2.0
#include <cmath>

#include "support.hpp"

namespace kvevict::test {
namespace {

static_assert(StreamingPolicy<Cascade> && EvictionPolicy<Cascade, Eigen::half>);

template <class P>
std::vector<std::int64_t> live_positions(const P& p, index_t head = 0) {
  std::vector<std::int64_t> out;
  for (index_t s = 0; s < p.slots(); ++s)
    if (p.position(head, s) >= 0) out.push_back(p.position(head, s));
  std::sort(out.begin(), out.end());
  return out;
}

/// One step: uniform attention over the live slots (rows of 1 / live).
template <class P>
void uniform_step(P& p, std::int64_t pos, std::vector<float>& rows) {
  p.append(pos);
  const auto live = static_cast<float>(p.size(0));
  for (index_t s = 0; s < p.slots(); ++s)
    rows[static_cast<std::size_t>(s)] = p.position(0, s) >= 0 ? 1.0f / live : 0.0f;
  p.observe({rows.data(), 1, p.slots(), p.slots()});
}

TEST(Cascade, OneCascadeIsStreamingLLM) {
  auto cascade =
      Cascade({.sinks = 3, .cascades = 1}).start({.kv_heads = 2, .q_heads = 4, .budget = 11});
  auto streaming = StreamingLLM({.sinks = 3}).start({.kv_heads = 2, .q_heads = 4, .budget = 11});
  ASSERT_EQ(cascade.state().cascade_slots(), 8);
  std::mt19937_64 rng(1);
  std::uniform_real_distribution<float> uniform;
  std::vector<float> rows(static_cast<std::size_t>(4 * cascade.slots()));
  for (std::int64_t pos = 0; pos < 100; ++pos) {
    cascade.append(pos);
    streaming.append(pos);
    for (float& x : rows) x = uniform(rng);
    cascade.observe({rows.data(), 4, cascade.slots(), cascade.slots()});
    streaming.observe({rows.data(), 4, streaming.slots(), streaming.slots()});
    for (index_t h = 0; h < 2; ++h)
      ASSERT_EQ(live_positions(cascade, h), live_positions(streaming, h)) << pos;
  }
}

// Uniform attention: older tokens have more EMA score, so a token carried into a cascade that is
// not accepting loses to the cascade's newest, and cascade c keeps every 2^c-th token; the cache
// then reaches back S + W·(2^C − 1) tokens with S + C·W slots.
TEST(Cascade, UniformAttentionSpacingAndSpan) {
  for (index_t c_count : {2, 3, 4})
    for (index_t w : {2, 4, 8}) {
      SCOPED_TRACE(::testing::Message() << "C=" << c_count << " W=" << w);
      const index_t sinks = 2;
      Cascade c_policy({.sinks = sinks, .cascades = c_count});
      auto c = c_policy.start({.kv_heads = 1, .q_heads = 1, .budget = sinks + c_count * w});
      std::vector<float> rows(static_cast<std::size_t>(c.slots()));
      std::int64_t max_span = 0;
      for (std::int64_t pos = 0; pos < 1500; ++pos) {
        uniform_step(c, pos, rows);
        if (pos < 500) continue;
        const auto live = live_positions(c);
        ASSERT_EQ(static_cast<index_t>(live.size()), sinks + c_count * w);
        max_span = std::max(max_span, pos - live[static_cast<std::size_t>(sinks)] + 1 + sinks);
        for (index_t k = 1; k < c_count; ++k) {
          const auto ring = c.state().cascade(0, k);
          for (std::size_t i = 1; i < ring.size(); ++i)
            ASSERT_EQ(c.position(0, ring[i]) - c.position(0, ring[i - 1]), std::int64_t{1} << k)
                << "cascade " << k << " at " << pos;
        }
      }
      EXPECT_EQ(max_span, sinks + w * ((index_t{1} << c_count) - 1));
    }
}

TEST(Cascade, EagerFillHoldsEverythingLikeOneCascade) {
  auto four = Cascade({.sinks = 4, .cascades = 4})
                  .start({.kv_heads = 1, .q_heads = 1, .budget = 4 + 4 * 5});
  auto one =
      Cascade({.sinks = 4, .cascades = 1}).start({.kv_heads = 1, .q_heads = 1, .budget = 4 + 20});
  std::vector<float> rows(static_cast<std::size_t>(four.slots()));
  for (std::int64_t pos = 0; pos < 24; ++pos) {
    uniform_step(four, pos, rows);
    uniform_step(one, pos, rows);
    std::vector<std::int64_t> all(static_cast<std::size_t>(pos + 1));
    std::iota(all.begin(), all.end(), 0);
    ASSERT_EQ(live_positions(four), all) << pos;
    ASSERT_EQ(live_positions(one), all) << pos;
  }
  uniform_step(four, 24, rows);  // t = S + M: every cascade still accepts, the oldest leaves
  uniform_step(one, 24, rows);
  EXPECT_EQ(live_positions(four), live_positions(one));
}

// W = 1, C = 2, no sinks. Tokens 0–2 fill eagerly (token 0 leaves at t = 2). Token 3: cascade 0
// takes it, its previous token 2 moves to cascade 1, which does not accept at t = 3 — a contest
// with cascade 1's newest, token 1. Equal scores: the newcomer (2) wins and 1 leaves; a higher
// score for 1 keeps it and 2 leaves.
TEST(Cascade, TiesGoToTheNewcomer) {
  for (bool tie : {true, false}) {
    Cascade c_policy({.sinks = 0, .cascades = 2});
    auto c = c_policy.start({.kv_heads = 1, .q_heads = 1, .budget = 2});
    std::vector<float> rows(static_cast<std::size_t>(c.slots()), 0.0f);
    for (std::int64_t pos = 0; pos < 4; ++pos) {
      c.append(pos);
      std::fill(rows.begin(), rows.end(), 0.0f);
      if (!tie && pos == 1)  // token 1 (slot 1) gets attention once: a higher score
        rows[1] = 1.0f;
      c.observe({rows.data(), 1, c.slots(), c.slots()});
      if (pos == 2) {
        EXPECT_EQ(live_positions(c), (std::vector<std::int64_t>{1, 2}));
      }
    }
    EXPECT_EQ(live_positions(c),
              tie ? (std::vector<std::int64_t>{2, 3}) : (std::vector<std::int64_t>{1, 3}));
  }
}

TEST(Cascade, RelativePositionsFollowAge) {
  Cascade c_policy({.sinks = 2, .cascades = 3});
  auto c = c_policy.start({.kv_heads = 1, .q_heads = 1, .budget = 2 + 3 * 3});
  std::vector<float> rows(static_cast<std::size_t>(c.slots()));
  std::vector<std::int64_t> rel(static_cast<std::size_t>(c.slots()));
  for (std::int64_t pos = 0; pos < 300; ++pos) {
    uniform_step(c, pos, rows);
    c.state().relative_positions(0, rel);
    std::vector<std::pair<std::int64_t, std::int64_t>> by_age;  // (original, relative)
    for (index_t s = 0; s < c.slots(); ++s) {
      ASSERT_EQ(rel[static_cast<std::size_t>(s)] >= 0, c.position(0, s) >= 0);
      if (c.position(0, s) >= 0)
        by_age.emplace_back(c.position(0, s), rel[static_cast<std::size_t>(s)]);
    }
    std::sort(by_age.begin(), by_age.end());
    for (std::size_t i = 0; i < by_age.size(); ++i)
      ASSERT_EQ(by_age[i].second, static_cast<std::int64_t>(i)) << "at " << pos;
  }
}

/// `raw` rotated to position p, as a model's RoPE would have stored it.
std::vector<float> rotated(std::vector<float> raw, std::int64_t p) {
  std::vector<float> v(raw.size());
  const auto d = static_cast<index_t>(raw.size());
  rope_shift(KVCache<float>(Storage<float>::hnd(raw.data(), 1, d),
                            Storage<float>::hnd(v.data(), 1, d), {1, 1, d}),
             p, {});
  return raw;
}

// An engine that stores keys rotated at their original positions moves them to Cascade's
// cache-relative positions with the per-head rope_shift: every kept key becomes the raw key
// rotated at its relative position.
TEST(Cascade, RelativePositionsWithRopeShift) {
  auto c = Cascade({.sinks = 1, .cascades = 2})
               .start({.kv_heads = 1, .q_heads = 1, .budget = 1 + 2 * 3});
  const index_t d = 8;
  std::vector<float> k(static_cast<std::size_t>(c.slots() * d)), v(k.size()),
      rows(static_cast<std::size_t>(c.slots()));
  const KVCache<float> slots(Storage<float>::hnd(k.data(), c.slots(), d),
                             Storage<float>::hnd(v.data(), c.slots(), d), {1, c.slots(), d});
  auto raw = [&](std::int64_t pos) {  // the unrotated key of the token at pos
    std::vector<float> x(static_cast<std::size_t>(d));
    for (index_t e = 0; e < d; ++e)
      x[static_cast<std::size_t>(e)] = std::sin(static_cast<float>(pos * d + e));
    return x;
  };
  for (std::int64_t pos = 0; pos < 40; ++pos) {
    uniform_step(c, pos, rows);  // appends pos into a free slot and observes
    for (index_t s = 0; s < c.slots(); ++s)
      if (c.position(0, s) == pos) std::copy_n(rotated(raw(pos), pos).data(), d, k.data() + s * d);
  }
  std::vector<std::int64_t> rel(static_cast<std::size_t>(c.slots())), delta(rel.size(), 0);
  c.state().relative_positions(0, rel);
  for (index_t s = 0; s < c.slots(); ++s)
    if (rel[static_cast<std::size_t>(s)] >= 0)
      delta[static_cast<std::size_t>(s)] = rel[static_cast<std::size_t>(s)] - c.position(0, s);
  rope_shift(slots, 0, delta, {});
  for (index_t s = 0; s < c.slots(); ++s) {
    if (rel[static_cast<std::size_t>(s)] < 0) continue;
    const auto want = rotated(raw(c.position(0, s)), rel[static_cast<std::size_t>(s)]);
    for (index_t e = 0; e < d; ++e)
      EXPECT_NEAR(k[static_cast<std::size_t>(s * d + e)], want[static_cast<std::size_t>(e)], 1e-5f);
  }
}

/// A prompt of n tokens: K, V [kv_heads][n][d] and Q [q_heads][n][d], as float.
struct Prompt {
  index_t kv_heads = 2, q_heads = 4, n, d = 8;
  std::vector<float> k, v, q;
  explicit Prompt(index_t tokens, std::uint64_t seed) : n(tokens) {
    std::mt19937_64 rng(seed);
    std::normal_distribution<float> normal;
    k.resize(static_cast<std::size_t>(kv_heads * n * d));
    v.resize(k.size());
    q.resize(static_cast<std::size_t>(q_heads * n * d));
    for (auto* vec : {&k, &v, &q})
      for (float& x : *vec) x = 1.5f * normal(rng);
  }
  KVCache<float> view() {
    return {
        Storage<float>::hnd(k.data(), n, d), Storage<float>::hnd(v.data(), n, d), {kv_heads, n, d}};
  }
  QueryWindow<float> queries() const { return {q.data(), q_heads, n, d}; }
};

// A chunk of one token is a decode step: prefill with stride 1 keeps what the streaming form
// driven by observe_query keeps, and writes the kept tokens' K/V into the slots bit for bit.
TEST(Cascade, PrefillWithStrideOneIsDecode) {
  Prompt p(120, 5);
  const CascadeParams params{.sinks = 3, .cascades = 3, .stride = 1};
  const StreamConfig config{.kv_heads = 2, .q_heads = 4, .budget = 3 + 3 * 6};
  auto prefilled = Cascade(params).start(config), decoded = Cascade(params).start(config);
  const index_t slots = prefilled.slots();
  std::vector<float> ka(static_cast<std::size_t>(2 * slots * 8)), va(ka.size()), kb(ka.size()),
      vb(ka.size());
  const KVCache<float> a(Storage<float>::hnd(ka.data(), slots, 8),
                         Storage<float>::hnd(va.data(), slots, 8), {2, slots, 8});
  const KVCache<float> b(Storage<float>::hnd(kb.data(), slots, 8),
                         Storage<float>::hnd(vb.data(), slots, 8), {2, slots, 8});
  Workspace ws;
  prefilled.prefill(a, p.view(), p.queries(), 0, ws);
  StreamDriver driver(decoded, b);
  std::vector<float> kt(16), vt(16);
  for (index_t pos = 0; pos < p.n; ++pos) {
    for (index_t h = 0; h < 2; ++h) {
      std::copy_n(p.k.data() + (h * p.n + pos) * 8, 8, kt.data() + h * 8);
      std::copy_n(p.v.data() + (h * p.n + pos) * 8, 8, vt.data() + h * 8);
    }
    driver.append(pos, kt, vt);
    driver.observe(p.queries().sub(pos, 1), ws);
  }
  for (index_t h = 0; h < 2; ++h) {
    EXPECT_EQ(live_positions(prefilled, h), live_positions(decoded, h));
    for (index_t s = 0; s < slots; ++s) {
      const std::int64_t pos = prefilled.position(h, s);
      if (pos < 0) continue;
      for (index_t e = 0; e < 8; ++e) {
        ASSERT_EQ(a.key(h, s)[static_cast<std::size_t>(e)],
                  p.k[static_cast<std::size_t>((h * p.n + pos) * 8 + e)]);
        ASSERT_EQ(a.value(h, s)[static_cast<std::size_t>(e)],
                  p.v[static_cast<std::size_t>((h * p.n + pos) * 8 + e)]);
      }
      EXPECT_NEAR(prefilled.state().score_of(h, s), decoded.state().score_of(h, s),
                  1e-5 * decoded.state().score_of(h, s));
    }
  }
}

TEST(Cascade, ChunkedPrefillKeepsTheBudgetAndContinuesByDecode) {
  Prompt p(300, 6);
  Cascade c_policy({.sinks = 4, .cascades = 4, .stride = 64});
  auto c = c_policy.start({.kv_heads = 2, .q_heads = 4, .budget = 4 + 4 * 8});
  std::vector<float> ks(static_cast<std::size_t>(2 * c.slots() * 8)), vs(ks.size());
  const KVCache<float> slots(Storage<float>::hnd(ks.data(), c.slots(), 8),
                             Storage<float>::hnd(vs.data(), c.slots(), 8), {2, c.slots(), 8});
  Workspace ws;
  Prompt head(200, 6);  // the first 200 tokens by prefill, the rest token by token
  c.prefill(slots, head.view(), head.queries(), 0, ws);
  EXPECT_EQ(c.size(0), 36);
  const auto live = live_positions(c);
  for (std::int64_t s = 0; s < 4; ++s)
    EXPECT_EQ(live[static_cast<std::size_t>(s)], s);  // the sinks
  EXPECT_EQ(live.back(), 199);
  const std::size_t before = ws.allocations();
  c.prefill(slots, head.view(), head.queries(), 200, ws);  // a second prompt of the same size
  EXPECT_EQ(ws.allocations(), before);                     // reuses the workspace
  EXPECT_EQ(live_positions(c).back(), 399);
  expect_error([&] { c.prefill(slots, head.view(), p.queries(), 0, ws); },
               "queries.window: expected one query per prompt token (200), got 300");
}

TEST(Cascade, OneShotAndErrors) {
  auto cache = make_cache<float>(Layout::nhd, 2, 100, 8, 8, 3);
  std::vector<float> q(4 * 4 * 8, 0.3f);
  Selection sel;
  Workspace ws;
  Cascade({.sinks = 4, .cascades = 2})
      .select(cache.kv(), QueryWindow<float>(q.data(), 4, 4, 8), Budget::tokens(24), sel, ws);
  EXPECT_EQ(sel.size(0), 24);  // 4 sinks + 2 cascades of 10
  for (token_t t = 0; t < 4; ++t) EXPECT_EQ(sel.kept(0)[static_cast<std::size_t>(t)], t);
  EXPECT_EQ(sel.kept(0).back(), 99);
  Cascade().select(cache.kv(), QueryWindow<float>(q.data(), 4, 4, 8), Budget::tokens(100), sel, ws);
  EXPECT_EQ(sel.size(1), 100);
  const Cascade c;
  expect_error(
      [&] { c.start({.kv_heads = 1, .q_heads = 1, .budget = 7}); },
      "budget: expected at least sinks + cascades (8) tokens: one slot per cascade, got 7");
  expect_error([] { Cascade({.beta = 1.0}); }, "beta: expected a decay in [0, 1), got 1");
}

}  // namespace
}  // namespace kvevict::test
