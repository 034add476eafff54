// The policy contract: Budget, Workspace, the concepts (including types that must not satisfy
// them), and StreamingLLM as the first policy behind both concepts.
// SPDX-License-Identifier: Apache-2.0
#include "support.hpp"

namespace kvevict::test {
namespace {

// ---- concepts: satisfied by the policies, and a missing member is named by its requirement ------

static_assert(EvictionPolicy<StreamingLLM, float>);
static_assert(EvictionPolicy<StreamingLLM, Eigen::half>);
static_assert(EvictionPolicy<StreamingLLM, Eigen::bfloat16>);
static_assert(StreamingPolicy<StreamingLLM>);
static_assert(SequenceStream<Stream<StreamingLLM>>);
static_assert(!EvictionPolicy<StreamingLLM, double>);  // not a storage element type

struct NoName {
  template <class T>
  void select(const KVCache<T>&, const QueryWindow<query_type<T>>&, Budget, Selection&,
              Workspace&) const {}
};
struct NoSelect {
  static constexpr std::string_view name = "no_select";
};
struct MutatingSelect {  // select must be callable on a const policy (shared across threads)
  static constexpr std::string_view name = "mutating";
  template <class T>
  void select(const KVCache<T>&, const QueryWindow<query_type<T>>&, Budget, Selection&,
              Workspace&) {}
};
static_assert(!named_policy<NoName> && selects_from_window<NoName, float>);
static_assert(named_policy<NoSelect> && !selects_from_window<NoSelect, float>);
static_assert(!EvictionPolicy<NoSelect, float>);
static_assert(!EvictionPolicy<MutatingSelect, float>);

struct NoObserve {  // a sequence state without `observe`
  std::span<const token_t> append(std::int64_t) { return {}; }
  index_t slots() const { return 0; }
  index_t size(index_t) const { return 0; }
  std::int64_t position(index_t, index_t) const { return -1; }
};
static_assert(appends_tokens<NoObserve> && reports_slots<NoObserve> &&
              !observes_attention<NoObserve> && !SequenceStream<NoObserve>);
struct StartsNoObserve {  // a policy whose `start` returns it
  static constexpr std::string_view name = "starts_no_observe";
  NoObserve start(const StreamConfig&) const { return {}; }
};
static_assert(named_policy<StartsNoObserve> && !starts_sequences<StartsNoObserve>);
static_assert(!StreamingPolicy<StartsNoObserve>);
struct MutatingStart {  // start must be callable on a const policy: the sequence's state is
  static constexpr std::string_view name = "mutating_start";  // what it returns
  Stream<StreamingLLM> start(const StreamConfig& c) { return StreamingLLM().start(c); }
};
static_assert(!StreamingPolicy<MutatingStart>);

// ---- Budget -------------------------------------------------------------------------------------

TEST(Budget, ResolvesCountsAndRatios) {
  EXPECT_EQ(Budget::tokens(512).resolve(100), 512);  // ≥ n: the policy keeps everything
  EXPECT_EQ(Budget::ratio(0.2).resolve(1000), 200);
  EXPECT_EQ(Budget::ratio(0.2).resolve(1002), 200);  // 200.4 rounds to 200
  EXPECT_EQ(Budget::ratio(0.2).resolve(1003), 201);  // 200.6 rounds to 201
  EXPECT_EQ(Budget::ratio(0.29).resolve(100), 29);   // 28.999… rounds, does not truncate
  EXPECT_EQ(Budget::ratio(1.0).resolve(7), 7);
}

TEST(Budget, RejectsBadValues) {
  expect_error([] { (void)Budget::tokens(0); }, "budget: expected a token count >= 1, got 0");
  expect_error([] { (void)Budget::tokens(-3); }, "budget: expected a token count >= 1, got -3");
  expect_error([] { (void)Budget::ratio(0.0); }, "budget: expected a ratio in (0, 1], got 0");
  expect_error([] { (void)Budget::ratio(1.5); }, "budget: expected a ratio in (0, 1], got 1.5");
  expect_error([] { (void)Budget::ratio(std::nan("")); },
               "budget: expected a ratio in (0, 1], got nan");
  expect_error([] { (void)Budget::ratio(0.001).resolve(100); },
               "budget: expected a ratio that keeps at least 1 of 100 tokens, got 0.001");
}

// ---- Workspace ----------------------------------------------------------------------------------

TEST(Workspace, AlignedFramesAndNoAllocationOnceWarm) {
  Workspace ws;
  auto use = [&](index_t a, index_t b) {
    Workspace::Frame frame(ws);
    auto x = ws.take<float>(a);
    auto y = ws.take<std::int32_t>(b);
    EXPECT_EQ(reinterpret_cast<std::uintptr_t>(x.data()) % 64, 0u);
    EXPECT_EQ(reinterpret_cast<std::uintptr_t>(y.data()) % 64, 0u);
    std::fill(x.begin(), x.end(), 1.0f);  // spans stay valid and disjoint while the frame lives
    std::fill(y.begin(), y.end(), 7);
    EXPECT_TRUE(std::all_of(x.begin(), x.end(), [](float v) { return v == 1.0f; }));
  };
  use(1000, 10);
  use(5000, 3000);  // grows: a second block
  const std::size_t after_growth = ws.allocations();
  for (int i = 0; i < 10; ++i) use(5000, 3000);  // merged into one block: no more allocations
  EXPECT_EQ(ws.allocations(), after_growth);
  EXPECT_GE(ws.capacity(), 5000 * sizeof(float) + 3000 * sizeof(std::int32_t));
  EXPECT_TRUE(ws.take<float>(0).empty());
}

// ---- StreamingLLM: the one-shot and streaming forms ------------------------------------------

TEST(StreamingLLM, OneShotKeepsSinksAndTheLastTokens) {
  auto c = make_cache<float>(Layout::nhd, 2, 12, 4, 4, 1);
  std::vector<float> q(4 * 2 * 4);
  const QueryWindow<float> window(q.data(), 4, 2, 4);
  Selection sel;
  Workspace ws;
  StreamingLLM({.sinks = 4}).select(c.kv(), window, Budget::tokens(6), sel, ws);
  ASSERT_TRUE(sel.shared());
  const auto kept = sel.kept(1);
  EXPECT_EQ(std::vector<token_t>(kept.begin(), kept.end()),
            (std::vector<token_t>{0, 1, 2, 3, 10, 11}));
  StreamingLLM({.sinks = 2}).select(c.kv(), window, Budget::ratio(0.25), sel, ws);  // B = 3
  EXPECT_EQ(std::vector<token_t>(sel.kept(0).begin(), sel.kept(0).end()),
            (std::vector<token_t>{0, 1, 11}));
  StreamingLLM({.sinks = 4}).select(c.kv(), window, Budget::tokens(4), sel, ws);  // sinks only
  EXPECT_EQ(sel.size(0), 4);
  StreamingLLM({.sinks = 4}).select(c.kv(), window, Budget::tokens(12), sel, ws);  // B ≥ n
  EXPECT_EQ(sel.size(0), 12);
  expect_error(
      [&] { StreamingLLM({.sinks = 4}).select(c.kv(), window, Budget::tokens(3), sel, ws); },
      "budget: expected at least sinks (4) tokens, got 3");
  expect_error([] { StreamingLLM({.sinks = -1}); }, "sinks: expected sinks >= 0, got -1");
}

TEST(StreamingLLM, StreamingEvictsTheOldestNonSink) {
  StreamingLLM policy_policy({.sinks = 2});
  auto policy = policy_policy.start({.kv_heads = 2, .q_heads = 4, .budget = 5});
  ASSERT_EQ(policy.slots(), 6);
  std::vector<float> rows(4 * 6, 0.0f);
  for (std::int64_t pos = 0; pos < 20; ++pos) {
    const auto slot = policy.append(pos);
    ASSERT_EQ(slot.size(), 2u);
    EXPECT_EQ(slot[0], slot[1]);
    EXPECT_EQ(policy.position(0, slot[0]), pos);
    const Evictions ev = policy.observe({rows.data(), 4, 6, 6});
    std::vector<std::int64_t> live;
    for (index_t s = 0; s < 6; ++s)
      if (policy.position(0, s) >= 0) live.push_back(policy.position(0, s));
    std::sort(live.begin(), live.end());
    std::vector<std::int64_t> want;
    for (std::int64_t p = 0; p <= pos; ++p)
      if (p < 2 || p > pos - 3) want.push_back(p);
    EXPECT_EQ(live, want) << "after position " << pos;
    EXPECT_EQ(ev.of(0).size(), pos >= 5 ? 1u : 0u);
    EXPECT_EQ(policy.size(1), static_cast<index_t>(want.size()));
  }
}

TEST(StreamingLLM, StreamingContractErrors) {
  const StreamingLLM sllm({.sinks = 4});
  expect_error([&] { sllm.start({.kv_heads = 2, .q_heads = 4, .budget = 3}); },
               "budget: expected at least sinks (4) tokens, got 3");
  expect_error([&] { sllm.start({.kv_heads = 2, .q_heads = 3, .budget = 8}); },
               "q_heads: expected a positive multiple of kv_heads (2), got 3");
  expect_error([&] { sllm.start({.kv_heads = 2, .q_heads = 4, .budget = 8, .capacity = 8}); },
               "capacity: expected at least budget + 1 (9) slots, got 8");
  auto policy = sllm.start({.kv_heads = 1, .q_heads = 1, .budget = 4});
  policy.append(0);
  expect_error([&] { policy.append(0); },
               "position: expected a position after the previous one (0), got 0");
  for (int p = 1; p < 5; ++p) policy.append(p);
  expect_error([&] { policy.append(5); },
               "append: expected a free slot (call observe after every append), got all 5 slots "
               "live");
}

// ---- softmax and the query path of streaming policies -------------------------------------------

TEST(Softmax, StableMaskedAndEmptyRows) {
  std::vector<float> x{0.0f, std::log(3.0f), -std::numeric_limits<float>::infinity()};
  ASSERT_TRUE(kernels::softmax_inplace(x));
  EXPECT_FLOAT_EQ(x[0], 0.25f);
  EXPECT_FLOAT_EQ(x[1], 0.75f);
  EXPECT_EQ(x[2], 0.0f);
  std::vector<float> big{1000.0f, 1000.0f};  // would overflow without the max subtraction
  ASSERT_TRUE(kernels::softmax_inplace(big));
  EXPECT_FLOAT_EQ(big[0], 0.5f);
  std::vector<float> none(3, -std::numeric_limits<float>::infinity());
  ASSERT_TRUE(kernels::softmax_inplace(none));
  EXPECT_EQ(none, std::vector<float>(3, 0.0f));
  std::vector<float> bad{1.0f, std::nanf("")};
  EXPECT_FALSE(kernels::softmax_inplace(bad));
  std::vector<float> inf{1.0f, std::numeric_limits<float>::infinity()};
  EXPECT_FALSE(kernels::softmax_inplace(inf));
}

/// A streaming policy that keeps everything and records the rows it is given.
struct RecordRows {
  static constexpr std::string_view name = "record_rows";
  detail::SlotTable table;
  detail::EvictionList none;
  std::vector<token_t> slot_per_head;
  std::vector<float> last;
  void start(const StreamConfig& c) {
    table.start(c.kv_heads, c.capacity);
    none.start(c.kv_heads, false, 1);
    slot_per_head.assign(static_cast<std::size_t>(c.kv_heads), 0);
  }
  std::span<const token_t> append(std::int64_t pos) {
    table.take_all(pos, slot_per_head);
    return slot_per_head;
  }
  Evictions observe(const AttentionRows& rows) {
    last.assign(rows.data, rows.data + rows.q_heads * rows.head_stride);
    none.clear();
    return none.view();
  }
  index_t slots() const { return table.slots(); }
  index_t size(index_t h) const { return table.size(h); }
  std::int64_t position(index_t h, index_t s) const { return table.position(h, s); }
};
static_assert(SequenceStream<RecordRows>);

TEST(ObserveQuery, SoftmaxOverLiveSlotsPerGroup) {
  // 1 KV head, 2 query heads, head_dim 2, 3 slots of which 2 are live.
  std::vector<float> k{1, 0, 0, 1, 5, 5}, v(6);
  const KVCache<float> kv(Storage<float>::hnd(k.data(), 3, 2), Storage<float>::hnd(v.data(), 3, 2),
                          {1, 3, 2});
  RecordRows policy;
  policy.start({.kv_heads = 1, .q_heads = 2, .capacity = 3});  // a hand-made stream
  policy.append(0);
  policy.append(1);  // slots 0 and 1 live; slot 2 (key [5, 5]) is free and must be ignored
  const float s = std::sqrt(2.0f);
  std::vector<float> q{s * std::log(3.0f), 0.0f, 0.0f, 0.0f};  // head 0 prefers slot 0 3:1
  Workspace ws;
  observe_query(policy, kv, QueryWindow<float>(q.data(), 2, 1, 2), ws);
  ASSERT_EQ(policy.last.size(), 6u);
  EXPECT_FLOAT_EQ(policy.last[0], 0.75f);
  EXPECT_FLOAT_EQ(policy.last[1], 0.25f);
  EXPECT_EQ(policy.last[2], 0.0f);
  EXPECT_FLOAT_EQ(policy.last[3], 0.5f);  // head 1: zero query, uniform over the live slots
  EXPECT_FLOAT_EQ(policy.last[4], 0.5f);
  EXPECT_EQ(policy.last[5], 0.0f);

  std::vector<float> nan_q{std::nanf(""), 0, 0, 0};
  expect_error([&] { observe_query(policy, kv, QueryWindow<float>(nan_q.data(), 2, 1, 2), ws); },
               "queries: expected finite attention logits (finite keys and query), got a NaN or "
               "inf for query head 0");
  expect_error(
      [&] { observe_query(policy, kv.with_tokens(2), QueryWindow<float>(q.data(), 2, 1, 2), ws); },
      "kv.tokens: expected the stream's slots (3), got 2");
}

// StreamingLLM driven through the query path over a paged cache: the engine writes each token
// into the slot it is given and the live set stays sinks + recent.
TEST(ObserveQuery, DrivesStreamingLLMOverAPagedCache) {
  const index_t heads = 2, d = 4, budget = 6, slots = budget + 1, page = 2;
  std::vector<float> kpool(8 * page * heads * d), vpool(kpool.size());
  const std::vector<std::int32_t> pages{5, 2, 7, 0};  // 4 pages of 2 slots = 8 ≥ 7 slots
  const KVCache<float> kv(Storage<float>::paged_nhd(kpool.data(), page, heads, d),
                          Storage<float>::paged_nhd(vpool.data(), page, heads, d),
                          {heads, slots, d}, {pages, page, 8});
  auto policy =
      StreamingLLM({.sinks = 2}).start({.kv_heads = heads, .q_heads = 4, .budget = budget});
  Workspace ws;
  std::vector<float> q(4 * d, 0.1f);
  std::mt19937_64 rng(3);
  std::normal_distribution<float> normal;
  for (std::int64_t pos = 0; pos < 30; ++pos) {
    const auto slot = policy.append(pos);
    for (index_t h = 0; h < heads; ++h)
      for (float& x : kv.key(h, slot[static_cast<std::size_t>(h)])) x = normal(rng);
    const std::size_t allocs = ws.allocations();
    observe_query(policy, kv, QueryWindow<float>(q.data(), 4, 1, d), ws);
    if (pos > 0) {
      EXPECT_EQ(ws.allocations(), allocs);  // no allocation per step once warm
    }
  }
  std::vector<std::int64_t> live;
  for (index_t s = 0; s < slots; ++s)
    if (policy.position(0, s) >= 0) live.push_back(policy.position(0, s));
  std::sort(live.begin(), live.end());
  EXPECT_EQ(live, (std::vector<std::int64_t>{0, 1, 26, 27, 28, 29}));
}

}  // namespace
}  // namespace kvevict::test
