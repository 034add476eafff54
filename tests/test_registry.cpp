// The registry (registry.hpp) and AnyPolicy (any_policy.hpp): policies by name, config strings,
// an engine's own policies registered and run wherever a library policy runs (issue 33.3), and
// `list` generated from what parses (issue 33.6).
// SPDX-License-Identifier: Apache-2.0
#include <kvevict/batch.hpp>
#include <kvevict/periodic.hpp>
#include <kvevict/registry.hpp>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <set>

#include "policy_settings.hpp"
#include "support.hpp"

namespace kvevict::test {
namespace {

// -- Two policies of "an engine's own" ------------------------------------------------------------

/// One-shot: keeps the tokens with the largest first key element (a hand-checkable scorer). Only
/// unquantized caches: its `score` is constrained, so quantized ones are refused by name.
struct FirstElementParams {
  double scale = 1.0;
  Granularity granularity = Granularity::per_head;
};
class FirstElement : public OneShot<FirstElement, FirstElementParams> {
 public:
  using OneShot::OneShot;
  static constexpr std::string_view name = "test_first_element";
  static constexpr PolicyInfo info{.summary = "largest first key element (test)",
                                   .reads = reads_keys};
  static std::vector<Parameter<Params>> parameters() {
    return {param<&Params::scale>("scale", "> 0", "multiplies the scores"),
            param<&Params::granularity>("granularity", "", "unit of the choice")};
  }
  static void check(const Params& p) {
    detail::require(p.scale > 0, "scale", "scale > 0", p.scale);
  }
  TopK rule(index_t) const { return {}; }
  template <FloatElement T>
  Scores score(const KVCache<T>& kv, const QueryWindow<T>&, Granularity, Workspace& ws) const {
    const auto out = ws.take<float>(kv.kv_heads() * kv.tokens());
    for (index_t h = 0; h < kv.kv_heads(); ++h)
      for (index_t t = 0; t < kv.tokens(); ++t)
        out[static_cast<std::size_t>(h * kv.tokens() + t)] =
            static_cast<float>(params().scale) * to_float(kv.key(h, t)[0]);
    return Scores::of_kv_heads(out, kv);
  }
};

/// Streaming only: first in, first out — keeps the last `budget` tokens, with a stream type of
/// its own (not `Stream<P>`).
struct FifoParams {
  index_t extra = 0;  ///< slots beyond budget + 1
};
struct Fifo {
  static constexpr std::string_view name = "test_fifo";
  static constexpr PolicyInfo info{.summary = "oldest leaves (test)", .streaming = true};
  using Params = FifoParams;
  static std::vector<Parameter<Params>> parameters() {
    return {param<&Params::extra>("extra", "≥ 0", "spare slots")};
  }
  Fifo() = default;
  explicit Fifo(const Params& p) : p_(p) {}
  const Params& params() const { return p_; }
  Granularity granularity() const { return Granularity::shared; }

  class Sequence {
   public:
    Sequence(index_t budget, index_t slots)
        : budget_(budget), pos_(static_cast<std::size_t>(slots), -1) {}
    std::span<const token_t> append(std::int64_t position) {
      const auto free = std::find(pos_.begin(), pos_.end(), -1);
      if (free == pos_.end()) detail::fail("append", "a free slot", "none");
      *free = position;
      slot_[0] = static_cast<token_t>(free - pos_.begin());
      return slot_;
    }
    Evictions observe(const AttentionRows&) {
      gone_.clear();
      if (size(0) > budget_) {
        const auto oldest = std::min_element(
            pos_.begin(), pos_.end(), [](auto a, auto b) { return b < 0 || (a >= 0 && a < b); });
        gone_.push_back(static_cast<token_t>(oldest - pos_.begin()));
        *oldest = -1;
      }
      offsets_ = {0, static_cast<index_t>(gone_.size())};
      return {true, offsets_, gone_};
    }
    index_t slots() const { return static_cast<index_t>(pos_.size()); }
    index_t size(index_t) const {
      return std::count_if(pos_.begin(), pos_.end(), [](auto p) { return p >= 0; });
    }
    std::int64_t position(index_t, index_t slot) const {
      return pos_[static_cast<std::size_t>(slot)];
    }

   private:
    index_t budget_;
    std::vector<std::int64_t> pos_;
    std::vector<token_t> gone_;
    std::vector<index_t> offsets_ = {0, 0};
    std::vector<token_t> slot_ = std::vector<token_t>(1);
  };
  Sequence start(const StreamConfig& c) const { return {c.budget, c.budget + 1 + p_.extra}; }

 private:
  Params p_;
};

// A policy type needs no constructor of its own: `P{}`, `P()` and `P(params)` (with the
// inherited constructors) all work — no `P() = default;` (issue 33.3).
struct Bare : OneShot<Bare, FirstElementParams> {
  static constexpr std::string_view name = "bare";
  TopK rule(index_t) const { return {}; }
};
static_assert(std::is_default_constructible_v<Bare>);
static_assert(std::is_default_constructible_v<FirstElement>);
static_assert(std::is_constructible_v<FirstElement, FirstElementParams>);
static_assert(PolicyType<FirstElement> && PolicyType<Fifo> && PolicyType<SnapKV>);
static_assert(!PolicyType<Bare>);  // no info / parameters: what a failed constraint names

TEST(Registry, PoliciesNeedNoConstructorOfTheirOwn) {
  const Bare a{}, b;
  EXPECT_EQ(a.params().scale, 1.0);
  EXPECT_EQ(b.granularity(), Granularity::per_head);
  expect_error([] { FirstElement({.scale = -1}); }, "scale: expected scale > 0, got -1");
}

/// Registers the two test policies once for the whole test program.
void register_test_policies() {
  static const bool once = [] {
    register_policy<FirstElement>();
    register_policy<Fifo>();
    return true;
  }();
  (void)once;
}

TEST(Registry, AnEnginesPolicyIsSelectedByNameAndRunsEverywhere) {
  register_test_policies();
  const auto names = policy_names();
  EXPECT_NE(std::find(names.begin(), names.end(), "test_first_element"), names.end());
  EXPECT_FALSE(policy_entries().back()->builtin);

  // Hand case: 1 KV head, first key elements 3, 9, 1, 7, 5 → budget 2 keeps tokens 1 and 3.
  std::vector<float> k(5 * 2), v(5 * 2, 0.5f), q(2 * 2, 0.5f);
  for (int t = 0; t < 5; ++t) k[static_cast<std::size_t>(2 * t)] = std::array{3, 9, 1, 7, 5}[t];
  const KVCache<float> kv(Storage<float>::hnd(std::span(k), 5, 2),
                          Storage<float>::hnd(std::span(v), 5, 2), {1, 5, 2});
  const QueryWindow<float> window(q.data(), 2, 1, 2);
  const AnyPolicy p = parse_policy(" test_first_element : scale = 2 ");
  EXPECT_EQ(p.name(), "test_first_element");
  EXPECT_EQ(p.describe(), (std::vector<std::pair<std::string, std::string>>{
                              {"scale", "2"}, {"granularity", "\"per_head\""}}));
  ASSERT_NE(p.target<FirstElement>(), nullptr);
  EXPECT_EQ(p.target<FirstElement>()->params().scale, 2.0);
  EXPECT_EQ(p.target<SnapKV>(), nullptr);
  Selection keep;
  Workspace ws;
  p.select(kv, window, Budget::tokens(2), keep, ws);
  EXPECT_EQ(std::vector<token_t>(keep.kept(0).begin(), keep.kept(0).end()),
            (std::vector<token_t>{1, 3}));

  // score → choose, across layers, over several layers at once, and periodically.
  {
    Workspace::Frame frame(ws);
    const Scores s = p.score(kv, window, Granularity::per_head, ws);
    EXPECT_EQ(s.values[1], 18.0f);
    Selection c;
    p.choose(s, Budget::tokens(3), c, ws);
    EXPECT_EQ(c.size(0), 3);
    p.choose_layers(std::span(&s, 1), Budget::tokens(2), c, ws);
    EXPECT_TRUE(c.shared());
    EXPECT_EQ(std::vector<token_t>(c.kept(0).begin(), c.kept(0).end()),
              (std::vector<token_t>{1, 3}));
  }
  std::vector<KVCache<float>> caches{kv, kv};
  std::vector<QueryWindow<float>> windows{window, window};
  std::vector<Selection> out(2);
  select_layers<float>(p, caches, windows, Budget::tokens(2), out, ws);
  EXPECT_EQ(out[1].size(0), 2);

  // The engine's policy refuses the element types its score does not serve, by name.
  std::vector<q8_0> k8(40), v8(40);
  const KVCache<q8_0> c8(Storage<q8_0>::hnd(std::span(k8), 40, 32),
                         Storage<q8_0>::hnd(std::span(v8), 40, 32), {1, 40, 32});
  std::vector<float> q32(2 * 32, 0.5f);
  expect_error(
      [&] { p.select(c8, QueryWindow<float>(q32.data(), 2, 1, 32), Budget::tokens(4), keep, ws); },
      "policy: expected a policy with a one-shot select for q8_0 caches, got "
      "'test_first_element', which has none");
  EXPECT_FALSE(keep.complete());
}

TEST(Registry, AnEnginesStreamingPolicyStartsAnyStream) {
  register_test_policies();
  const AnyPolicy p = make_policy("test_fifo", {.settings = {{"extra", "1"}}});
  EXPECT_TRUE(p.info().streaming);
  AnyStream s = p.start({.kv_heads = 1, .q_heads = 1, .budget = 3});
  EXPECT_EQ(s.slots(), 5);
  std::vector<float> rows(5, 0.0f);
  for (std::int64_t pos = 0; pos < 6; ++pos) {
    s.append(pos);
    s.observe({rows.data(), 1, 5, 5});
  }
  std::set<std::int64_t> live;
  for (index_t slot = 0; slot < 5; ++slot)
    if (s.position(0, slot) >= 0) live.insert(s.position(0, slot));
  EXPECT_EQ(live, (std::set<std::int64_t>{3, 4, 5}));
  AnyStream copy = s;  // copies the sequence's state
  copy.append(6);
  copy.observe({rows.data(), 1, 5, 5});
  EXPECT_EQ(s.size(0), 3);
  EXPECT_NE(s.target<Fifo::Sequence>(), nullptr);
  // A one-shot use of a streaming-only policy names what is missing.
  std::vector<float> kv_mem(8, 0.0f);
  const KVCache<float> kv(Storage<float>::hnd(kv_mem.data(), 2, 2),
                          Storage<float>::hnd(kv_mem.data() + 4, 2, 2), {1, 2, 2});
  Selection keep;
  Workspace ws;
  expect_error(
      [&] {
        p.select(kv, QueryWindow<float>(kv_mem.data(), 1, 1, 2), Budget::tokens(1), keep, ws);
      },
      "policy: expected a policy with a one-shot select for float32 caches, got 'test_fifo', "
      "which has none");
  // And the library's one-shot policies have no stream.
  expect_error([&] { parse_policy("snapkv").start({.kv_heads = 1, .q_heads = 1, .budget = 3}); },
               "policy: expected a streaming policy (one with a decode-time form), got snapkv");
}

TEST(Registry, NamesAreUniqueAndSpellable) {
  register_test_policies();
  expect_error([] { register_policy<FirstElement>(); },
               "policy: expected a name no policy has yet, got 'test_first_element', taken");
  expect_error([] { register_policy<SnapKV>(); },
               "policy: expected a name no policy has yet, got 'snapkv', taken");
}

TEST(Registry, ConfigStringsAreTrimmedCheckedAndNamed) {
  const AnyPolicy p = parse_policy("  snapkv :  window = 16 , pool=avg  ");
  EXPECT_EQ(p.window(), 16);
  EXPECT_EQ(p.target<SnapKV>()->params().pool, Pool::avg);
  expect_error([] { parse_policy("snapkv:windw=32"); },
               "windw (in policy 'snapkv:windw=32'): expected a parameter of snapkv (window, "
               "kernel, pool, ada, alpha_safeguard, safeguard, reduce, granularity), got 'windw'");
  expect_error([] { parse_policy("snapkv:window=16,kernel=3,window=32"); },
               "window (in policy 'snapkv:window=16,kernel=3,window=32'): expected each "
               "parameter set once, got '16' and then '32'");
  expect_error([] { parse_policy("snapkv:window=0"); },
               "window (in policy 'snapkv:window=0'): expected window >= 1, got 0");
  expect_error([] { parse_policy("snapkv:window"); },
               "policy 'snapkv:window': expected settings as key=value, separated by commas, got "
               "'window'");
  expect_error([] { parse_policy("snapkv:window=16,"); },
               "policy 'snapkv:window=16,': expected settings as key=value, separated by commas, "
               "got ''");
  expect_error([] { parse_policy("criticalkv:window=16"); },
               "wo (in policy 'criticalkv:window=16'): expected the output projection W_o "
               "(PolicyOptions::wo) for criticalkv, got none");
  // Settings given as options come first; one also in the string is set twice.
  expect_error(
      [] {
        parse_policy("h2o:recent=4", {.settings = {{"recent", "8"}}});
      },
      "recent (in policy 'h2o:recent=8,recent=4'): expected each parameter set once, got "
      "'8' and then '4'");
  EXPECT_THROW(parse_policy(""), kvevict::error);
}

// `kvevict list` prints `policy_entries()`: every enum value it lists parses, every other value
// of that enum is refused, and the listed defaults are what a default-built policy reports.
TEST(Registry, ListedParametersAreWhatParses) {
  std::vector<float> wo_data(4 * 8 * 16, 0.5f);
  const OutputProjection wo = OutputProjection::dense(wo_data.data(), 4, 8, 16);
  int enums = 0;
  for (const PolicyEntry* e : policy_entries()) {
    const auto defaults = make_policy(e->name, {.wo = &wo}).describe();
    ASSERT_EQ(defaults.size(), e->parameters.size()) << e->name;
    for (std::size_t i = 0; i < defaults.size(); ++i) {
      const ParameterInfo& p = e->parameters[i];
      EXPECT_EQ(defaults[i].first, p.name);
      EXPECT_EQ(defaults[i].second, p.default_value) << e->name << "." << p.name;
      if (p.type != "enum") continue;
      ++enums;
      EXPECT_FALSE(p.values.empty()) << e->name << "." << p.name;
      for (const std::string_view every : {"per_head", "equal", "shared", "layers", "pages", "max",
                                           "avg", "mean", "sum", "l1", "l2", "kvpress", "adakv"}) {
        const bool listed = std::find(p.values.begin(), p.values.end(), every) != p.values.end();
        bool parses = true;
        try {
          make_policy(e->name, {.settings = {{p.name, std::string(every)}}, .wo = &wo});
        } catch (const kvevict::error&) {
          parses = false;
        }
        EXPECT_EQ(parses, listed) << e->name << "." << p.name << "=" << every;
      }
    }
  }
  EXPECT_GE(enums, 25);
  // Cascade counts tokens: it takes every granularity but pages, and says so.
  const auto& cascade = policy_entries()[8]->parameters;
  const auto g = std::find_if(cascade.begin(), cascade.end(),
                              [](const auto& p) { return p.name == "granularity"; });
  ASSERT_NE(g, cascade.end());
  EXPECT_EQ(g->values, (std::vector<std::string>{"per_head", "equal", "shared", "layers"}));
}

TEST(Registry, OutputProjectionIsRebuiltPerLayer) {
  std::vector<float> a(4 * 8 * 16, 0.5f), b(4 * 8 * 16, 2.0f);
  const OutputProjection wa = OutputProjection::dense(a.data(), 4, 8, 16),
                         wb = OutputProjection::dense(b.data(), 4, 8, 16);
  const AnyPolicy ck = make_policy("criticalkv", {.settings = {{"window", "4"}}, .wo = &wa});
  const AnyPolicy rebuilt = ck.with_output_projection(wb);
  EXPECT_EQ(rebuilt.target<CriticalKV>()->output_projection().at(1, 2, 3), 2.0f);
  EXPECT_EQ(ck.target<CriticalKV>()->output_projection().at(1, 2, 3), 0.5f);
  EXPECT_EQ(rebuilt.describe(), ck.describe());
  const AnyPolicy snap = parse_policy("snapkv");
  EXPECT_EQ(snap.with_output_projection(wb).describe(), snap.describe());
}

TEST(Registry, PeriodicDriverTakesAnyPolicyType) {
  register_test_policies();
  auto c = make_cache<float>(Layout::hnd, 1, 12, 4, 4, 5);
  std::vector<float> q(2 * 4, 0.5f);
  const QueryWindow<float> window(q.data(), 2, 1, 4);
  Workspace ws;
  for (const AnyPolicy& p : {parse_policy("test_first_element"), parse_policy("knorm")}) {
    PeriodicDriver<float> drv(p, 8, 4, c.kv());
    for (std::int64_t pos = 0; pos < 12; ++pos) {
      std::vector<float> kv(4, static_cast<float>(pos));
      drv.append(pos, kv, kv);
      drv.observe(window, ws);
    }
    EXPECT_EQ(drv.size(), 8) << p.name();
    EXPECT_EQ(drv.compressions(), 1) << p.name();
  }
  PeriodicDriver<float> typed(KNorm(), 8, 4, c.kv());  // a policy type directly
  EXPECT_EQ(typed.size(), 0);
  expect_error([&] { PeriodicDriver<float>(parse_policy("test_fifo"), 8, 4, c.kv()); },
               "policy: expected a one-shot policy (a streaming one evicts at every step itself), "
               "got test_fifo");
}

}  // namespace
}  // namespace kvevict::test
