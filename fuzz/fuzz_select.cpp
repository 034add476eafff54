// libFuzzer target: view construction + select + compact with fuzzed shapes, strides, page
// tables, dtypes, values (NaN and inf included), policies, parameters, granularities and budgets.
//
// Properties checked on every input:
// - every failure is a kvevict::error whose message starts with "<argument>: expected ";
// - a failed select leaves its Selection incomplete and the cache untouched;
// - an accepted selection validates and respects the budget (B ≥ n keeps everything);
// - compact moves each kept entry bit for bit, leaves every head's tokens beyond its new length,
//   and all memory outside the view's spans, untouched; a rejected compact writes nothing.
// SPDX-License-Identifier: Apache-2.0
#include <fuzzer/FuzzedDataProvider.h>

#include <kvevict/kvevict.hpp>
#include <kvevict/registry.hpp>

#include <array>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "fuzz_common.hpp"

namespace {

using namespace kvevict;

using fuzz::broken;
using fuzz::check_message;

constexpr index_t max_elements = index_t{1} << 20;  // per buffer: keeps every run fast

/// Elements one tensor can reach: Σ max(0, stride) · (count − 1) + width (negative strides
/// with count > 1 are rejected by the view before any access).
index_t reach(std::initializer_list<std::pair<index_t, index_t>> dims, index_t width) {
  index_t extent = width;
  for (auto [count, stride] : dims)
    if (count > 1 && stride > 0) {
      if (stride > max_elements || count > max_elements) return max_elements + 1;
      extent += stride * (count - 1);
    }
  return extent;
}

/// Standard-normal values for K, V, Q and W_o, cheaply: splitmix64 picks one of 4096 quantiles
/// of N(0, 1). std::normal_distribution over std::mt19937_64 (a logarithm per value, and
/// libFuzzer's comparison tracing inside the inlined engine) took ~40% of each input's time.
class Normal {
 public:
  explicit Normal(std::uint64_t seed) : state_(seed) {}

  /// The next 64 random bits (splitmix64).
  __attribute__((no_sanitize("coverage"))) std::uint64_t bits() {
    std::uint64_t z = (state_ += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
  }
  std::uint64_t operator()() { return bits(); }

  __attribute__((no_sanitize("coverage"))) float normal() { return quantiles()[bits() >> 52]; }

 private:
  /// Φ⁻¹((i + ½) / 4096) for i < 4096, by bisection on Φ(x) = erfc(−x/√2) / 2.
  static const std::array<float, 4096>& quantiles() {
    static const std::array<float, 4096> table = [] {
      std::array<float, 4096> q{};
      for (std::size_t i = 0; i < q.size(); ++i) {
        const double p = (static_cast<double>(i) + 0.5) / static_cast<double>(q.size());
        double lo = -10, hi = 10;
        for (int it = 0; it < 64; ++it) {
          const double mid = 0.5 * (lo + hi);
          (0.5 * std::erfc(-mid / std::sqrt(2.0)) < p ? lo : hi) = mid;
        }
        q[i] = static_cast<float>(0.5 * (lo + hi));
      }
      return q;
    }();
    return table;
  }

  std::uint64_t state_;
};

template <class T>
std::uint32_t raw(T x) {
  std::uint32_t b = 0;
  std::memcpy(&b, &x, sizeof(T));
  return b;
}

// The harness's own loops over every element (filling, snapshots, comparisons) are not what
// is being fuzzed: without coverage tracing they no longer dominate each input's time.
#define UNTRACED __attribute__((no_sanitize("coverage")))

template <class T>
UNTRACED void fill(std::span<T> span, Normal& rng, float scale) {
  for (T& x : span) x = from_float<T>(scale * rng.normal());
}

template <class T>
UNTRACED void append_bits(std::span<const T> span, std::vector<std::uint32_t>& out) {
  const std::size_t n = out.size();
  out.resize(n + span.size());  // not push_back: std::vector's own code is traced
  std::uint32_t* to = out.data() + n;
  for (std::size_t i = 0; i < span.size(); ++i) to[i] = raw(span[i]);
}

template <class T>
UNTRACED std::vector<std::uint32_t> bits_of(std::span<const T> span) {
  std::vector<std::uint32_t> out;
  out.reserve(span.size());
  append_bits(span, out);
  return out;
}

/// Marks `span`'s elements of `memory` as covered and appends their bits to `bits`.
template <class T>
UNTRACED void cover(std::span<const T> span, const T* memory, std::vector<std::uint8_t>& covered,
                    std::vector<std::uint32_t>& bits) {
  for (const T& x : span) covered[static_cast<std::size_t>(&x - memory)] = 1;
  append_bits(span, bits);
}

UNTRACED inline bool equal_outside(const std::vector<std::uint32_t>& a,
                                   const std::vector<std::uint32_t>& b,
                                   const std::vector<std::uint8_t>& covered) {
  for (std::size_t i = 0; i < a.size(); ++i)
    if (!covered[i] && a[i] != b[i]) return false;
  return true;
}

template <class T>
void run(FuzzedDataProvider& in) {
  // -- Shape and layout ---------------------------------------------------------------------
  const index_t heads = in.ConsumeIntegralInRange<index_t>(0, 4);
  const index_t tokens = in.ConsumeIntegralInRange<index_t>(0, 160);
  const index_t d = in.ConsumeIntegralInRange<index_t>(0, 20);
  const index_t dv_field = in.ConsumeIntegralInRange<index_t>(0, 20);  // 0: same as d
  const index_t dv = dv_field == 0 ? d : dv_field;
  const int layout = in.ConsumeIntegralInRange(0, 3);
  const Shape shape{heads, tokens, d, dv_field};

  index_t page_size = 0, pool_pages = 0, read_only = 0;
  std::vector<std::int32_t> pages;
  auto stride = [&](index_t natural) {  // mostly sensible, sometimes anything
    return in.ConsumeBool() ? natural : in.ConsumeIntegralInRange<index_t>(-4, 700);
  };
  Storage<T> ks{}, vs{};
  index_t k_reach = 0, v_reach = 0;
  if (layout <= 2) {  // dense: HND, NHD, or fuzzed strides
    const index_t cap = tokens + in.ConsumeIntegralInRange<index_t>(0, 4);
    if (layout == 0) {
      ks = {nullptr, cap * d, d, 0};
      vs = {nullptr, cap * dv, dv, 0};
    } else if (layout == 1) {
      ks = {nullptr, d, heads * d, 0};
      vs = {nullptr, dv, heads * dv, 0};
    } else {
      ks = {nullptr, stride(cap * d), stride(d), 0};
      vs = {nullptr, stride(cap * dv), stride(dv), 0};
    }
    k_reach = reach({{heads, ks.head_stride}, {tokens, ks.token_stride}}, d);
    v_reach = reach({{heads, vs.head_stride}, {tokens, vs.token_stride}}, dv);
  } else {  // paged, with a fuzzed table
    page_size = in.ConsumeIntegralInRange<index_t>(0, 16);
    pool_pages = in.ConsumeIntegralInRange<index_t>(0, 48);
    read_only = in.ConsumeIntegralInRange<index_t>(0, 3);
    const index_t needed = page_size > 0 ? (tokens + page_size - 1) / page_size : 1;
    const index_t count = needed + in.ConsumeIntegralInRange<index_t>(-1, 2);
    std::vector<std::int32_t> ids(static_cast<std::size_t>(std::max<index_t>(pool_pages, 0)));
    for (std::size_t i = 0; i < ids.size(); ++i) ids[i] = static_cast<std::int32_t>(i);
    std::mt19937 shuffle(in.ConsumeIntegral<std::uint32_t>());
    std::shuffle(ids.begin(), ids.end(), shuffle);
    for (index_t i = 0; i < count; ++i)
      pages.push_back(in.ConsumeIntegralInRange(0, 9) == 0
                          ? in.ConsumeIntegralInRange<std::int32_t>(-2, 60)  // maybe bad
                          : (ids.empty() ? 0 : ids[static_cast<std::size_t>(i) % ids.size()]));
    const index_t ps = std::max<index_t>(page_size, 1);
    ks = {nullptr, stride(ps * d), stride(d), stride(heads * ps * d)};
    vs = {nullptr, stride(ps * dv), stride(dv), stride(heads * ps * dv)};
    k_reach =
        reach({{pool_pages, ks.page_stride}, {heads, ks.head_stride}, {ps, ks.token_stride}}, d);
    v_reach =
        reach({{pool_pages, vs.page_stride}, {heads, vs.head_stride}, {ps, vs.token_stride}}, dv);
  }
  if (k_reach > max_elements || v_reach > max_elements) return;
  // K and V in one buffer: V after K, or (sometimes) at a fuzzed offset that may overlap.
  const index_t v_offset = in.ConsumeIntegralInRange(0, 7) == 0
                               ? in.ConsumeIntegralInRange<index_t>(0, k_reach)
                               : k_reach;
  std::vector<T> memory(static_cast<std::size_t>(std::max<index_t>(v_offset + v_reach, 1)));
  const T sentinel = from_float<T>(-777.25f);
  std::fill(memory.begin(), memory.end(), sentinel);
  ks.data = memory.data();
  vs.data = memory.data() + v_offset;
  if (in.ConsumeIntegralInRange(0, 31) == 0) ks.data = nullptr;

  std::optional<KVCache<T>> view;
  try {
    if (layout <= 2)
      view.emplace(ks, vs, shape);
    else
      view.emplace(ks, vs, shape, PageTable{pages, page_size, pool_pages, read_only});
  } catch (const kvevict::error& e) {
    check_message(e);
    return;
  }
  KVCache<T>& kv = *view;

  // -- Values: normal, scaled, with specials now and then -------------------------------------
  Normal rng(in.ConsumeIntegral<std::uint64_t>());
  const float scale = in.ConsumeBool() ? 1.0f : in.ConsumeFloatingPointInRange(0.0f, 3000.0f);
  const int specials = in.ConsumeIntegralInRange(0, 3) == 0 ? in.ConsumeIntegralInRange(1, 3) : 0;
  auto value = [&] { return from_float<T>(scale * rng.normal()); };
  for (index_t h = 0; h < heads; ++h)
    for (index_t t = 0; t < tokens; ++t) {
      fill(kv.key(h, t), rng, scale);
      fill(kv.value(h, t), rng, scale);
    }
  const float special_values[] = {std::numeric_limits<float>::quiet_NaN(),
                                  std::numeric_limits<float>::infinity(),
                                  -std::numeric_limits<float>::infinity()};
  for (int i = 0; i < specials; ++i) {
    const index_t h = static_cast<index_t>(rng() % static_cast<std::uint64_t>(heads));
    const index_t t = static_cast<index_t>(rng() % static_cast<std::uint64_t>(tokens));
    auto span = rng() % 2 ? kv.key(h, t) : kv.value(h, t);
    span[rng() % span.size()] = from_float<T>(special_values[rng() % 3]);
  }

  // -- Queries and W_o ------------------------------------------------------------------------
  const index_t q_heads = in.ConsumeIntegralInRange(0, 7) == 0
                              ? in.ConsumeIntegralInRange<index_t>(1, 9)
                              : heads * in.ConsumeIntegralInRange<index_t>(1, 4);
  const index_t window = in.ConsumeIntegralInRange<index_t>(1, std::min<index_t>(tokens + 2, 48));
  const index_t qd = in.ConsumeIntegralInRange(0, 15) == 0 ? d + 1 : d;
  std::vector<T> q(static_cast<std::size_t>(q_heads * window * qd));
  for (T& x : q) x = value();
  if (in.ConsumeIntegralInRange(0, 15) == 0 && !q.empty())
    q[rng() % q.size()] = from_float<T>(special_values[rng() % 3]);
  const index_t hidden = in.ConsumeIntegralInRange<index_t>(1, 12);
  const index_t wo_heads = in.ConsumeIntegralInRange(0, 15) == 0 ? q_heads + 1 : q_heads;
  const index_t wo_dim = in.ConsumeIntegralInRange(0, 15) == 0 ? dv + 1 : dv;
  std::vector<float> wo(static_cast<std::size_t>(wo_heads * wo_dim * hidden));
  for (float& x : wo) x = rng.normal();
  if (in.ConsumeIntegralInRange(0, 15) == 0 && !wo.empty())
    wo[rng() % wo.size()] = special_values[rng() % 3];

  // -- Policy, parameters, budget ---------------------------------------------------------------
  const auto names = policy_names();
  const std::string_view name = names[in.ConsumeIntegralInRange<std::size_t>(0, names.size() - 1)];
  std::optional<AnyPolicy> policy;
  std::optional<Budget> budget;
  std::optional<QueryWindow<T>> queries;
  std::optional<OutputProjection> projection;
  try {
    projection.emplace(OutputProjection::dense(wo.data(), wo_heads, wo_dim, hidden));
    queries.emplace(q.data(), q_heads, window, qd);
    const auto defaults = describe(make_policy(name, {.wo = &*projection}));
    Settings settings;
    for (int i = in.ConsumeIntegralInRange(0, 3); i > 0 && !defaults.empty(); --i) {
      const auto& key =
          defaults[in.ConsumeIntegralInRange<std::size_t>(0, defaults.size() - 1)].first;
      if (key == "seed" || key == "granularity") continue;  // set below
      switch (in.ConsumeIntegralInRange(0, 3)) {
        case 0:
          settings.emplace_back(key, std::to_string(in.ConsumeIntegralInRange(-3, 40)));
          break;
        case 1:
          settings.emplace_back(key, std::to_string(in.ConsumeFloatingPointInRange(-0.5, 1.5)));
          break;
        case 2:
          settings.emplace_back(key, in.ConsumeRandomLengthString(10));
          break;
        default:
          settings.emplace_back(key, in.ConsumeBool() ? "max" : "l2");
      }
    }
    const auto seed = in.ConsumeIntegral<std::uint8_t>();
    // The policy's own granularity, or any of them (pages on an unpaged view must be refused).
    const auto units = all_values(Granularity{});
    const auto unit = in.ConsumeIntegralInRange<std::size_t>(0, units.size());
    policy.emplace(
        make_policy(name, {.settings = settings,
                           .seed = seed,
                           .granularity = unit == 0 ? std::nullopt : std::optional(units[unit - 1]),
                           .wo = &*projection}));
    switch (in.ConsumeIntegralInRange(0, 2)) {
      case 0:
        budget = Budget::tokens(in.ConsumeIntegralInRange<index_t>(-2, tokens + 8));
        break;
      case 1:
        budget = Budget::ratio(in.ConsumeFloatingPointInRange(-0.2, 1.2));
        break;
      default:
        budget = Budget::none();
    }
  } catch (const kvevict::error& e) {
    check_message(e);
    return;
  }

  // -- Select ---------------------------------------------------------------------------------
  auto read_all = [&] { return bits_of(std::span<const T>(memory)); };  // the buffer's bits
  const auto before = read_all();
  Selection out = Selection::all(1, 1);  // complete, as an earlier call leaves it
  Workspace ws;
  try {
    kvevict::select(*policy, kv, *queries, *budget, out, ws);
  } catch (const kvevict::error& e) {
    check_message(e);
    if (out.complete()) broken("a failed select leaves its selection incomplete");
    if (read_all() != before) broken("select never writes the cache");
    return;
  }
  if (read_all() != before) broken("select never writes the cache");
  try {
    out.validate();
  } catch (const kvevict::error& e) {
    broken("an accepted selection validates", e.what());
  }
  if (out.kv_heads() != heads || out.tokens() != tokens) broken("selection matches the view");
  if (!budget->is_none()) {
    const index_t b = budget->resolve(tokens);
    index_t total = 0;
    for (index_t h = 0; h < heads; ++h) total += out.size(h);
    if (b >= tokens && total != heads * tokens) broken("B >= n keeps everything");
    if (b < tokens && total > b * heads) broken("the budget holds", std::to_string(total));
  }

  // -- Compact --------------------------------------------------------------------------------
  // Which buffer elements belong to a (head, token) span of the view, and each span's bits.
  std::vector<std::uint8_t> covered(memory.size(), 0);
  std::vector<std::vector<std::uint32_t>> logical(static_cast<std::size_t>(heads * tokens));
  for (index_t h = 0; h < heads; ++h)
    for (index_t t = 0; t < tokens; ++t) {
      auto& l = logical[static_cast<std::size_t>(h * tokens + t)];
      for (auto span : {kv.key(h, t), kv.value(h, t)}) cover<T>(span, memory.data(), covered, l);
    }
  Compaction result;
  try {
    compact(kv, out, result);
  } catch (const kvevict::error& e) {
    check_message(e);
    if (read_all() != before) broken("a rejected compact writes nothing");
    return;
  }
  const auto after = read_all();
  if (!equal_outside(before, after, covered)) broken("memory outside the spans is untouched");
  for (index_t h = 0; h < heads; ++h) {
    const auto kept = out.kept(h);
    if (result.lengths[static_cast<std::size_t>(h)] != static_cast<index_t>(kept.size()))
      broken("compact reports the new length");
    for (index_t t = 0; t < tokens; ++t) {
      std::vector<std::uint32_t> now;
      for (auto span : {kv.key(h, t), kv.value(h, t)}) append_bits<T>(span, now);
      const index_t source = t < static_cast<index_t>(kept.size())
                                 ? kept[static_cast<std::size_t>(t)]
                                 : t;  // beyond the new length: unchanged
      if (now != logical[static_cast<std::size_t>(h * tokens + source)])
        broken("kept entries move bit for bit; the rest stays", std::to_string(h));
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  FuzzedDataProvider in(data, size);
  switch (in.ConsumeIntegralInRange(0, 2)) {
    case 0:
      run<float>(in);
      break;
    case 1:
      run<Eigen::half>(in);
      break;
    default:
      run<Eigen::bfloat16>(in);
  }
  return 0;
}
