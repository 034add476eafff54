// The bad-input matrix of the public API: every wrong shape, stride, page table, budget and
// non-finite value a caller can hand over gets a kvevict::error naming the argument, and the
// caller's outputs (selection, streaming state) are left as they were.
// SPDX-License-Identifier: Apache-2.0
#include <kvevict/registry.hpp>

#include <functional>
#include <limits>

#include "policy_settings.hpp"
#include "support.hpp"

namespace kvevict::test {
namespace {

/// Expects `fn` to throw a kvevict::error whose message starts with "`argument`: expected ".
void expect_names(const std::function<void()>& fn, const std::string& argument,
                  const std::string& context) {
  try {
    fn();
    ADD_FAILURE() << context << ": no kvevict::error (expected one naming " << argument << ")";
  } catch (const kvevict::error& e) {
    const std::string what = e.what();
    EXPECT_EQ(what.rfind(argument + ": expected ", 0), 0u) << context << ": " << what;
    const std::invalid_argument& base = e;  // the documented base class
    (void)base;
  }
}

constexpr index_t kv_heads = 2, q_heads = 4, n = 96, d = 8, w = 8;

// -- Views -------------------------------------------------------------------------------------

TEST(BadInput, ViewShapesStridesAndPageTables) {
  std::vector<float> mem(4096, 0.0f);
  float* p = mem.data();
  using S = Storage<float>;
  const std::vector<std::int32_t> pages{0, 1, 2}, dup{0, 1, 1}, out_of_range{0, 1, 7},
      negative{0, -1, 2};
  const std::pair<std::string, std::function<void()>> cases[] = {
      // shapes
      {"kv_heads",
       [&] {
         KVCache<float>(S::hnd(p, 8, 4), S::hnd(p + 512, 8, 4), {0, 8, 4});
       }},
      {"kv_heads",
       [&] {
         KVCache<float>(S::hnd(p, 8, 4), S::hnd(p + 512, 8, 4), {-1, 8, 4});
       }},
      {"tokens",
       [&] {
         KVCache<float>(S::hnd(p, 8, 4), S::hnd(p + 512, 8, 4), {2, 0, 4});
       }},
      {"head_dim",
       [&] {
         KVCache<float>(S::hnd(p, 8, 4), S::hnd(p + 512, 8, 4), {2, 8, 0});
       }},
      {"head_dim_v",
       [&] {
         KVCache<float>(S::hnd(p, 8, 4), S::hnd(p + 512, 8, 4), {2, 8, 4, -2});
       }},
      {"keys.data",
       [&] {
         KVCache<float>(S::hnd(nullptr, 8, 4), S::hnd(p, 8, 4), {2, 8, 4});
       }},
      // overlapping strides: heads of K, tokens of K, K over V
      {"keys",
       [&] {
         KVCache<float>(S::strided(p, {.head = 2, .token = 8}), S::hnd(p + 512, 8, 4), {2, 8, 4});
       }},
      {"keys",
       [&] {
         KVCache<float>(S::strided(p, {.head = 64, .token = 2}), S::hnd(p + 512, 8, 4), {2, 8, 4});
       }},
      {"values.data",
       [&] {
         KVCache<float>(S::hnd(p, 8, 4), S::hnd(p + 16, 8, 4), {2, 8, 4});
       }},
      // page tables
      {"pages.pages",
       [&] {
         KVCache<float>(S::paged_hnd(p, 4, 2, 4), S::paged_hnd(p + 1024, 4, 2, 4), {2, 12, 4},
                        {dup, 4, 8, 0});
       }},
      {"pages.pages[2]",
       [&] {
         KVCache<float>(S::paged_hnd(p, 4, 2, 4), S::paged_hnd(p + 1024, 4, 2, 4), {2, 12, 4},
                        {out_of_range, 4, 4, 0});
       }},
      {"pages.pages[1]",
       [&] {
         KVCache<float>(S::paged_hnd(p, 4, 2, 4), S::paged_hnd(p + 1024, 4, 2, 4), {2, 12, 4},
                        {negative, 4, 8, 0});
       }},
      {"pages.pages",  // too short for the tokens
       [&] {
         KVCache<float>(S::paged_hnd(p, 4, 2, 4), S::paged_hnd(p + 1024, 4, 2, 4), {2, 16, 4},
                        {pages, 4, 8, 0});
       }},
      {"pages.page_size",
       [&] {
         KVCache<float>(S::paged_hnd(p, 4, 2, 4), S::paged_hnd(p + 1024, 4, 2, 4), {2, 12, 4},
                        {pages, 0, 8, 0});
       }},
      {"pages.read_only_pages",
       [&] {
         KVCache<float>(S::paged_hnd(p, 4, 2, 4), S::paged_hnd(p + 1024, 4, 2, 4), {2, 12, 4},
                        {pages, 4, 8, 5});
       }},
      // query windows
      {"queries.q_heads", [&] { QueryWindow<float>(p, 0, 4, 4); }},
      {"queries.window", [&] { QueryWindow<float>(p, 2, 0, 4); }},
      {"queries.head_dim", [&] { QueryWindow<float>(p, 2, 4, 0); }},
      {"queries", [&] { QueryWindow<float>(p, 2, 4, 4, 4, 2); }},
      // output projections
      {"wo.q_heads", [&] { OutputProjection::dense(p, 0, 4, 16); }},
      {"wo.hidden", [&] { OutputProjection::dense(p, 2, 4, 0); }},
  };
  for (const auto& [argument, fn] : cases) expect_names(fn, argument, argument);
}

// Issue 33: head_dim (and kv_heads, page_size, capacity) is given to the Storage and to the
// Shape; a disagreement made the view address memory the engine never allocated (an ASan
// heap-buffer-overflow in release builds' "no error"). Each is now an error naming the dimension,
// for K and for V, for every named constructor; with a span the view also checks the buffer size.
TEST(BadInput, StorageDimensionsMustAgreeWithTheShape) {
  using S = Storage<float>;
  constexpr index_t heads = 2, page = 4, pool = 3, small = 32, large = 64, tokens = 12;
  // Every buffer is allocated for head_dim 32 (`small`), exactly: under ASan any read past it is
  // a heap-buffer-overflow, so these cases would fail the sanitizer build if a view were made.
  std::vector<float> k(static_cast<std::size_t>(pool * page * heads * small), 0.5f);
  std::vector<float> v(k.size(), 0.25f);
  const std::vector<std::int32_t> table{2, 0, 1};
  const PageTable pages{table, page, pool, 0};
  const Shape shape{heads, tokens, small};
  const std::pair<std::string, std::function<KVCache<float>()>> cases[] = {
      // the case: K Storage made for d = 64 over a pool of d = 32, in both orders
      {"head_dim",
       [&] {
         return KVCache<float>(S::paged_nhd(k.data(), page, heads, large),
                               S::paged_nhd(v.data(), page, heads, small), shape, pages);
       }},
      {"head_dim_v",
       [&] {
         return KVCache<float>(S::paged_nhd(k.data(), page, heads, small),
                               S::paged_nhd(v.data(), page, heads, large), shape, pages);
       }},
      {"head_dim",
       [&] {
         return KVCache<float>(S::paged_hnd(k.data(), page, heads, large),
                               S::paged_hnd(v.data(), page, heads, small), shape, pages);
       }},
      {"head_dim",
       [&] {  // the shape is the one that is wrong
         return KVCache<float>(S::paged_hnd(k.data(), page, heads, small),
                               S::paged_hnd(v.data(), page, heads, small),
                               {heads, tokens, large, small}, pages);
       }},
      {"head_dim",
       [&] {
         return KVCache<float>(S::nhd(k.data(), heads, large), S::nhd(v.data(), heads, small),
                               shape);
       }},
      {"head_dim_v",
       [&] {
         return KVCache<float>(S::hnd(k.data(), 12, small), S::hnd(v.data(), 12, large), shape);
       }},
      // kv_heads, page_size and capacity, also given twice
      {"kv_heads",
       [&] {
         return KVCache<float>(S::nhd(k.data(), heads + 1, small),
                               S::nhd(v.data(), heads + 1, small), shape);
       }},
      {"kv_heads",
       [&] {
         return KVCache<float>(S::paged_nhd(k.data(), page, heads, small),
                               S::paged_nhd(v.data(), page, heads, small), {1, tokens, small},
                               pages);
       }},
      {"pages.page_size",
       [&] {
         return KVCache<float>(S::paged_hnd(k.data(), page, heads, small),
                               S::paged_hnd(v.data(), page, heads, small), {heads, 6, small},
                               PageTable{table, 2, pool, 0});
       }},
      {"tokens",
       [&] {
         return KVCache<float>(S::hnd(k.data(), 10, small), S::hnd(v.data(), 10, small), shape);
       }},
      {"keys",
       [&] {  // a paged layout without a page table
         return KVCache<float>(S::paged_nhd(k.data(), page, heads, small),
                               S::nhd(v.data(), heads, small), shape);
       }},
      // with the buffer's size: strides that reach past it (a pool of 4 pages for 3, a capacity
      // of 13 for 12, strides of d = 64)
      {"keys",
       [&] {
         return KVCache<float>(S::paged_nhd(std::span(k), page, heads, small),
                               S::paged_nhd(std::span(v), page, heads, small), shape,
                               PageTable{table, page, pool + 1, 0});
       }},
      {"values",
       [&] {
         return KVCache<float>(S::hnd(std::span(k), 12, small), S::hnd(std::span(v), 13, small),
                               shape);
       }},
      {"keys",
       [&] {
         return KVCache<float>(S::strided(std::span(k), {.head = large, .token = 2 * large}),
                               S::strided(std::span(v), {.head = small, .token = 2 * small}),
                               shape);
       }},
      {"values",
       [&] {
         return KVCache<float>(
             S::paged(std::span(k),
                      {.head = small, .token = heads * small, .page = page * heads * small}),
             S::paged(std::span(v),
                      {.head = large, .token = heads * large, .page = page * heads * large}),
             shape, pages);
       }},
  };
  const SnapKV snap({.window = 4});
  std::vector<float> q(static_cast<std::size_t>(4 * 4 * small), 0.125f);
  for (const auto& [argument, make] : cases) {
    // If a view were made, selecting and compacting through it is what read and wrote past
    // the buffers: the test then fails here (and under ASan, with the overflow).
    expect_names(
        [&] {
          const KVCache<float> kv = make();
          Workspace ws;
          Selection keep;
          snap.select(kv, QueryWindow<float>(q.data(), 4, 4, small), Budget::tokens(8), keep, ws);
          compact(kv, keep);
        },
        argument, argument);
  }
  // The same buffers, described consistently, make views (with and without the span).
  EXPECT_NO_THROW(KVCache<float>(S::paged_nhd(std::span(k), page, heads, small),
                                 S::paged_nhd(std::span(v), page, heads, small), shape, pages));
  EXPECT_NO_THROW(
      KVCache<float>(S::hnd(std::span(k), 12, small), S::hnd(v.data(), 12, small), shape));
  expect_error(
      [&] {
        KVCache<float>(S::paged_nhd(k.data(), page, heads, large),
                       S::paged_nhd(v.data(), page, heads, small), shape, pages);
      },
      "head_dim: expected the head_dim the keys' Storage was made with (64), got 32");
}

TEST(BadInput, WindowAndProjectionMustMatchTheCache) {
  auto c = make_cache<float>(Layout::hnd, kv_heads, n, d, d, 1);
  std::vector<float> q(static_cast<std::size_t>(6 * n * d), 0.5f);
  std::vector<float> wo(static_cast<std::size_t>(6 * d * 16), 0.5f);
  Workspace ws;
  Selection out;
  const SnapKV snap({.window = w});
  const std::pair<std::string, std::function<void()>> cases[] = {
      {"queries.head_dim",
       [&] {
         snap.select(c.kv(), QueryWindow<float>(q.data(), q_heads, w, d - 1), Budget::tokens(24),
                     out, ws);
       }},
      {"queries.q_heads",
       [&] {
         snap.select(c.kv(), QueryWindow<float>(q.data(), 3, w, d), Budget::tokens(24), out, ws);
       }},
      {"queries.window",
       [&] {
         snap.select(c.kv().with_tokens(6), QueryWindow<float>(q.data(), q_heads, w, d),
                     Budget::tokens(4), out, ws);
       }},
      {"wo.q_heads",  // W_o's q_heads differ from the window's
       [&] {
         const CriticalKV ck({.window = w}, OutputProjection::dense(wo.data(), 6, d, 16));
         ck.select(c.kv(), QueryWindow<float>(q.data(), q_heads, w, d), Budget::tokens(24), out,
                   ws);
       }},
      {"wo.head_dim",  // W_o's head_dim differs from the values'
       [&] {
         const CriticalKV ck({.window = w}, OutputProjection::dense(wo.data(), q_heads, d + 1, 16));
         ck.select(c.kv(), QueryWindow<float>(q.data(), q_heads, w, d), Budget::tokens(24), out,
                   ws);
       }},
  };
  for (const auto& [argument, fn] : cases) expect_names(fn, argument, argument);
}

// -- Every policy: budgets and non-finite values ----------------------------------------------

struct Inputs {
  OwnedCache<float> cache = make_cache<float>(Layout::paged_nhd, kv_heads, n, d, d, 3);
  std::vector<float> q, wo;
  Inputs() {
    std::mt19937_64 rng(5);
    std::normal_distribution<float> normal;
    q.resize(static_cast<std::size_t>(q_heads * w * d));
    wo.resize(static_cast<std::size_t>(q_heads * d * 16));
    for (float& x : q) x = normal(rng);
    for (float& x : wo) x = normal(rng);
  }
  QueryWindow<float> queries() const { return {q.data(), q_heads, w, d}; }
  OutputProjection projection() const { return OutputProjection::dense(wo.data(), q_heads, d, 16); }
};

/// A complete selection, as an earlier call leaves it: a failed select must not leave it valid.
Selection sentinel_selection() {
  Selection s;
  s.reset(1, 3, true);
  const auto k = s.add_head(2);
  k[0] = 0;
  k[1] = 2;
  return s;
}

/// What a failed `select` leaves: an incomplete selection that `compact` rejects, and the cache
/// untouched.
void expect_cleared(const Selection& out, KVCache<float>& kv, const std::string& ctx) {
  EXPECT_FALSE(out.complete()) << ctx;
  const auto before = snapshot(kv);
  Compaction c;
  expect_names([&] { compact(kv, out, c); }, "selection", ctx + " (compact)");
  EXPECT_EQ(snapshot(kv), before) << ctx;
}

bool same(const Selection& a, const Selection& b) {
  if (a.kv_heads() != b.kv_heads() || a.tokens() != b.tokens() || a.shared() != b.shared())
    return false;
  for (index_t h = 0; h < a.kv_heads(); ++h)
    if (!std::ranges::equal(a.kept(h), b.kept(h))) return false;
  return true;
}

/// Whether a configured policy protects a fixed number of tokens: one of its protected-region
/// parameters (sinks, a recent window, an observation window, CORM-style r) is at least 1.
/// A recent window given as a share of the budget ("none") is not fixed.
bool protects_tokens(const AnyPolicy& policy) {
  for (const auto& [key, value] : describe(policy))
    if ((key == "sinks" || key == "recent" || key == "window" || key == "r") && !value.empty() &&
        value[0] != '"' && std::stoll(value) >= 1)
      return true;
  return false;
}

TEST(BadInput, EveryPolicyBudgets) {
  Inputs in;
  const auto wo = in.projection();
  Workspace ws;
  for (auto name : policy_names()) {
    const auto policy = make_policy(name, {.settings = small_settings(name), .seed = 7, .wo = &wo});
    const std::string ctx(name);
    Selection out;
    // Budget::none() is for budget-free policies (CORM); CORM's one-shot form takes a budget as a
    // cap.
    if (!budget_free(policy))
      expect_names(
          [&] { kvevict::select(policy, in.cache.kv(), in.queries(), Budget::none(), out, ws); },
          "budget", ctx);
    // Budgets that hold everything are a documented no-op: every token of every head.
    for (const Budget b : {Budget::tokens(n), Budget::tokens(n + 1000), Budget::ratio(1.0)}) {
      kvevict::select(policy, in.cache.kv(), in.queries(), b, out, ws);
      for (index_t h = 0; h < kv_heads; ++h) {
        ASSERT_EQ(out.size(h), n) << ctx;
        for (index_t i = 0; i < n; ++i) ASSERT_EQ(out.kept(h)[static_cast<std::size_t>(i)], i);
      }
    }
    // Too small to hold the protected regions (sinks, windows), where a policy has any.
    // H2O's recent window is a share of the budget, TOVA protects nothing.
    if (!protects_tokens(policy)) continue;
    Selection untouched = sentinel_selection();
    expect_names(
        [&] {
          kvevict::select(policy, in.cache.kv(), in.queries(), Budget::tokens(1), untouched, ws);
        },
        "budget", ctx);
    expect_cleared(untouched, in.cache.kv(), ctx);
  }
  // The budget values themselves, for every policy alike.
  const double nan = std::numeric_limits<double>::quiet_NaN();
  for (const auto& fn : std::vector<std::function<void()>>{
           [] { Budget::tokens(0); }, [] { Budget::tokens(-3); }, [] { Budget::ratio(0.0); },
           [] { Budget::ratio(-0.1); }, [] { Budget::ratio(1.5); }, [=] { Budget::ratio(nan); },
           [] { Budget::ratio(0.001).resolve(96); }})
    expect_names(fn, "budget", "Budget");
}

/// The budget each policy is run with here: none for budget-free policies, else 24 tokens.
Budget test_budget(std::string_view policy) {
  return policy_info(policy).budget_free ? Budget::none() : Budget::tokens(24);
}

/// Whether the policy's selection depends on the window's queries before the last one: its
/// selection with those queries redrawn differs from the one with the given window. (TOVA, for
/// one, reads only the last query.)
bool reads_earlier_queries(std::string_view policy) {
  Inputs given, redrawn;
  std::mt19937_64 rng(11);
  std::normal_distribution<float> normal;
  for (index_t h = 0; h < q_heads; ++h)
    for (index_t i = 0; i + 1 < w; ++i)
      for (index_t e = 0; e < d; ++e)
        redrawn.q[static_cast<std::size_t>((h * w + i) * d + e)] = normal(rng);
  const auto wo = given.projection();
  const auto p = make_policy(policy, {.settings = small_settings(policy), .seed = 7, .wo = &wo});
  Selection a, b;
  Workspace ws;
  kvevict::select(p, given.cache.kv(), given.queries(), test_budget(policy), a, ws);
  kvevict::select(p, redrawn.cache.kv(), redrawn.queries(), test_budget(policy), b, ws);
  return !same(a, b);
}

/// Which inputs each policy computes on (its metadata's `reads`). A policy that never reads a
/// tensor cannot be misled by it, and checking it would cost a pass over the whole cache: those
/// accept it. A policy that reads only the last query of the window accepts the earlier ones.
bool reads(std::string_view policy, char tensor, bool last_query, bool earlier_queries) {
  const unsigned r = policy_info(policy).reads;
  switch (tensor) {
    case 'k':
      return (r & reads_keys) != 0;
    case 'q':
      return (r & reads_queries) != 0 && (last_query || earlier_queries);
    case 'v':
      return (r & reads_values) != 0;
    default:  // W_o
      return (r & reads_output_projection) != 0;
  }
}

TEST(BadInput, EveryPolicyNonFiniteValues) {
  const float bad_values[] = {std::numeric_limits<float>::quiet_NaN(),
                              std::numeric_limits<float>::infinity(),
                              -std::numeric_limits<float>::infinity()};
  Workspace ws;
  for (auto name : policy_names()) {
    const bool earlier_queries = reads_earlier_queries(name);
    for (const char tensor : {'k', 'q', 'v', 'o'}) {
      for (const float bad : bad_values) {
        for (const index_t where : {index_t{0}, index_t{37}}) {  // a sink, and a scored token
          Inputs clean, in;
          switch (tensor) {
            case 'k':
              in.cache.kv().key(1, where)[3] = bad;
              break;
            case 'v':
              in.cache.kv().value(0, where)[5] = bad;
              break;
            case 'q':  // the last query (every scorer reads it), or an earlier one
              in.q[static_cast<std::size_t>((3 * w + (where == 0 ? w - 1 : 2)) * d + 1)] = bad;
              break;
            default:
              in.wo[static_cast<std::size_t>(where * 3 + 1)] = bad;
          }
          const auto wo = in.projection(), clean_wo = clean.projection();
          const std::string ctx = std::string(name) + " " + tensor + " " + std::to_string(bad) +
                                  " at " + std::to_string(where);
          const Budget budget = test_budget(name);
          Selection out = sentinel_selection();
          auto run = [&] {
            const auto policy =
                make_policy(name, {.settings = small_settings(name), .seed = 7, .wo = &wo});
            kvevict::select(policy, in.cache.kv(), in.queries(), budget, out, ws);
          };
          if (reads(name, tensor, where == 0, earlier_queries)) {
            const std::string argument = tensor == 'k'   ? "keys"
                                         : tensor == 'q' ? "queries"
                                         : tensor == 'v' ? "values"
                                                         : "wo";
            expect_names(run, argument, ctx);
            expect_cleared(out, in.cache.kv(), ctx);
          } else {
            run();
            Selection expected;
            const auto policy =
                make_policy(name, {.settings = small_settings(name), .seed = 7, .wo = &clean_wo});
            kvevict::select(policy, clean.cache.kv(), clean.queries(), budget, expected, ws);
            EXPECT_TRUE(same(out, expected)) << ctx;
          }
        }
      }
    }
  }
}

// -- Streaming ----------------------------------------------------------------------------------

/// `reads_rows`: the policy computes on the attention rows. StreamingLLM and random never look at
/// them (an engine may pass `{}`), so they cannot be misled by them either.
template <class P>
void expect_streaming_errors(const P policy, StreamConfig config, bool reads_rows) {
  const std::string ctx(P::name);
  expect_names([&] { policy.start({.kv_heads = 0, .q_heads = 4, .budget = config.budget}); },
               "kv_heads", ctx);
  expect_names([&] { policy.start({.kv_heads = 2, .q_heads = 3, .budget = config.budget}); },
               "q_heads", ctx);
  if (config.budget > 0)
    expect_names([&] { policy.start({.kv_heads = 2, .q_heads = 4, .budget = -5}); }, "budget", ctx);
  else
    expect_names([&] { policy.start({.kv_heads = 2, .q_heads = 4, .budget = 8}); }, "budget", ctx);
  auto stream = policy.start(config);
  const index_t slots = stream.slots();
  std::vector<float> rows(static_cast<std::size_t>(4 * slots), 0.0f);
  auto uniform = [&] {
    for (index_t h = 0; h < 4; ++h)
      for (index_t s = 0; s < slots; ++s)
        rows[static_cast<std::size_t>(h * slots + s)] =
            stream.position(h / 2, s) >= 0 ? 1.0f / static_cast<float>(stream.size(h / 2)) : 0.0f;
  };
  // Call order (issue 33): an observe needs an append since the previous observe.
  expect_names(
      [&] {
        stream.observe({rows.data(), 4, slots, slots});
      },
      "observe", ctx + ": observe before any append");
  // Run past the budget so that evictions happen, then feed bad rows.
  auto twin = policy.start(config);  // sees only the good steps
  std::int64_t pos = 0;
  for (; pos < 40; ++pos) {
    stream.append(pos);
    twin.append(pos);
    uniform();
    const AttentionRows r{rows.data(), 4, slots, slots};
    stream.observe(r);
    twin.observe(r);
    if (pos % 13 == 0)
      expect_names([&] { stream.observe(r); }, "observe", ctx + ": a second observe");
  }
  expect_names([&] { stream.append(pos - 1); }, "position", ctx);
  stream.append(pos);
  twin.append(pos);
  if (stream.size(0) == slots)  // full: the next token needs an observe first
    expect_names([&] { stream.append(pos + 1); }, "append", ctx);
  if (reads_rows) {
    expect_names([&] { stream.observe({rows.data(), 3, slots, slots}); }, "rows.q_heads", ctx);
    expect_names([&] { stream.observe({rows.data(), 4, slots - 1, slots}); }, "rows.slots", ctx);
    expect_names([&] { stream.observe({nullptr, 4, slots, slots}); }, "rows.data", ctx);
  }
  uniform();
  for (const float bad :
       {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity(), -0.5f}) {
    // A live slot of query head 2 (KV head 1): the newest token's.
    token_t live = 0;
    while (stream.position(1, live) != pos) ++live;
    const float saved = rows[static_cast<std::size_t>(2 * slots + live)];
    rows[static_cast<std::size_t>(2 * slots + live)] = bad;
    if (!reads_rows) break;
    expect_names(
        [&] {
          stream.observe({rows.data(), 4, slots, slots});
        },
        "rows", ctx + " " + std::to_string(bad));
    rows[static_cast<std::size_t>(2 * slots + live)] = saved;
  }
  uniform();
  // The failed calls changed nothing: the stream goes on exactly like its twin.
  for (; pos < 60; ++pos) {
    if (pos > 40) {
      stream.append(pos);
      twin.append(pos);
    }
    uniform();
    const AttentionRows r{rows.data(), 4, slots, slots};
    const Evictions a = stream.observe(r);
    std::vector<token_t> ea(a.slots.begin(), a.slots.end());
    const Evictions b = twin.observe(r);
    EXPECT_TRUE(std::ranges::equal(ea, b.slots)) << ctx << " step " << pos;
  }
}

// H2O adds each observed row to its accumulator: before issue 33 an observe twice in a row
// counted one step twice, and an observe before any append was accepted.
TEST(BadInput, StreamingCallOrderIsChecked) {
  auto seq = H2O({.recent = 2}).start({.kv_heads = 1, .q_heads = 1, .budget = 4});
  std::vector<float> rows(static_cast<std::size_t>(seq.slots()), 0.0f);
  const AttentionRows r{rows.data(), 1, seq.slots(), seq.slots()};
  expect_error([&] { seq.observe(r); },
               "observe: expected an append before it (each observe reports the attention of the "
               "token appended last), got an observe before any append");
  const token_t slot = seq.append(7)[0];
  rows[static_cast<std::size_t>(slot)] = 1.0f;
  seq.observe(r);
  const float after_one = seq.state().acc[static_cast<std::size_t>(slot)];
  expect_error([&] { seq.observe(r); },
               "observe: expected an append before it (each observe reports the attention of the "
               "token appended last), got a second observe after the append at position 7");
  EXPECT_EQ(seq.state().acc[static_cast<std::size_t>(slot)], after_one);  // counted once
  seq.append(8);  // two appends, one observe: allowed
  seq.append(9);
  EXPECT_NO_THROW(seq.observe(r));
}

TEST(BadInput, StreamingPolicies) {
  expect_streaming_errors(H2O({.recent = 4}), {.kv_heads = 2, .q_heads = 4, .budget = 16}, true);
  expect_streaming_errors(TOVA(), {.kv_heads = 2, .q_heads = 4, .budget = 16}, true);
  expect_streaming_errors(StreamingLLM({.sinks = 2}), {.kv_heads = 2, .q_heads = 4, .budget = 16},
                          false);
  expect_streaming_errors(RandomEviction({.seed = 3}), {.kv_heads = 2, .q_heads = 4, .budget = 16},
                          false);
  expect_streaming_errors(CORM({.w = 4, .r = 4}),
                          {.kv_heads = 2, .q_heads = 4, .budget = 0, .capacity = 64}, true);
  expect_streaming_errors(Cascade({.sinks = 2, .cascades = 2}),
                          {.kv_heads = 2, .q_heads = 4, .budget = 18}, true);
}

// -- Compaction -----------------------------------------------------------------------------------

TEST(BadInput, CompactionRejectsBeforeWriting) {
  auto c = make_cache<float>(Layout::paged_hnd, kv_heads, 16, d, d, 9);
  const auto before = snapshot(c.kv());
  Compaction out;
  auto selection = [](index_t heads, index_t tokens, bool shared,
                      std::vector<std::vector<token_t>> kept) {
    Selection s;
    s.reset(heads, tokens, shared);
    for (const auto& k : kept) {
      const auto span = s.add_head(static_cast<index_t>(k.size()));
      std::copy(k.begin(), k.end(), span.begin());
    }
    return s;
  };
  const std::pair<std::string, Selection> cases[] = {
      {"selection", selection(3, 16, false, {{0}, {1}, {2}})},  // heads
      {"selection", selection(2, 15, true, {{0, 1}})},          // tokens
      {"selection", selection(2, 16, false, {{0, 1}})},         // incomplete
      {"selection", selection(2, 16, true, {{3, 2}})},          // order
      {"selection", selection(2, 16, true, {{1, 1}})},          // duplicate
      {"selection", selection(2, 16, true, {{0, 16}})},         // range
      {"selection", selection(2, 16, false, {{0, -1}, {0}})},   // negative
  };
  for (const auto& entry : cases) {
    const auto& [argument, sel_] = entry;
    const Selection& sel = sel_;  // a reference the lambda can capture (clang < 16)
    expect_names([&] { compact(c.kv(), sel, out); }, argument, "compact");
    EXPECT_EQ(snapshot(c.kv()), before);
  }
}

}  // namespace
}  // namespace kvevict::test

namespace kvevict::test {
namespace {

// Cascade places each newcomer in `observe`: a second append before it would orphan the first
// token (live, in no sub-cache, never evicted), and an observe with no newcomer has nothing to
// place. Both are errors that leave the sequence as it was (found by fuzz_stream).
TEST(BadInput, CascadeOneObservePerAppend) {
  auto cascade = Cascade({.sinks = 1, .cascades = 2})
                     .start({.kv_heads = 1, .q_heads = 1, .budget = 5, .capacity = 9});
  std::vector<float> rows(static_cast<std::size_t>(cascade.slots()), 0.0f);
  const AttentionRows r{rows.data(), 1, cascade.slots(), cascade.slots()};
  expect_names([&] { cascade.observe(r); }, "observe", "observe first");
  for (std::int64_t pos = 0; pos < 30; ++pos) {
    const token_t slot = cascade.append(pos)[0];
    expect_names([&] { cascade.append(pos + 1); }, "append", "second append");
    std::fill(rows.begin(), rows.end(), 0.0f);
    rows[static_cast<std::size_t>(slot)] = 1.0f;
    cascade.observe(r);
    expect_names([&] { cascade.observe(r); }, "observe", "second observe");
    EXPECT_LE(cascade.size(0), 5) << pos;  // 1 sink + 2 cascades of 2
  }
}

}  // namespace
}  // namespace kvevict::test
