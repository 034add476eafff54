// libFuzzer target: view construction + select + compact with fuzzed shapes, strides, page
// tables, dtypes — float, half, bf16 and the quantized formats (q8_0, q4_0, fp8, int8 with
// fuzzed scale granularity, NaN scales included) — values (NaN and inf included), policies,
// parameters, granularities and budgets.
//
// Properties checked on every input:
// - every failure is a kvevict::error whose message starts with "<argument>: expected ";
// - a failed select leaves its Selection incomplete and the cache untouched;
// - an accepted selection validates and respects the budget (B ≥ n keeps everything);
// - compact moves each kept entry bit for bit, leaves every head's tokens beyond its new length,
//   and all memory outside the view's spans, untouched; a rejected compact writes nothing;
//   per-token fp8 / int8 scales move with their tokens.
// SPDX-License-Identifier: Apache-2.0
#include <fuzzer/FuzzedDataProvider.h>

#include <kvevict/kvevict.hpp>
#include <kvevict/registry.hpp>

#include <array>
#include <bit>
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

/// An element's bytes (a q8_0 block is 34).
template <class T>
using Raw = std::array<std::uint8_t, sizeof(T)>;

template <class T>
Raw<T> raw(T x) {
  Raw<T> b;
  std::memcpy(b.data(), &x, sizeof(T));
  return b;
}

// The harness's own loops over every element (filling, snapshots, comparisons) are not what
// is being fuzzed: without coverage tracing they no longer dominate each input's time.
#define UNTRACED __attribute__((no_sanitize("coverage")))

template <class T>
UNTRACED void fill(std::span<T> span, Normal& rng, float scale) {
  for (T& x : span) x = from_float<T>(scale * rng.normal());
}

/// Writes a row of normal values through the view (quantized as the engine would).
template <class T>
UNTRACED void fill_row(const KVCache<T>& kv, Tensor which, index_t h, index_t t, Normal& rng,
                       float scale, std::vector<float>& row) {
  row.resize(static_cast<std::size_t>(kv.dim(which)));
  for (float& x : row) x = scale * rng.normal();
  kv.write(which, h, t, row.data());
}

template <class T>
UNTRACED void append_bits(std::span<const T> span, std::vector<Raw<T>>& out) {
  const std::size_t n = out.size();
  out.resize(n + span.size());  // not push_back: std::vector's own code is traced
  Raw<T>* to = out.data() + n;
  for (std::size_t i = 0; i < span.size(); ++i) to[i] = raw(span[i]);
}

template <class T>
UNTRACED std::vector<Raw<T>> bits_of(std::span<const T> span) {
  std::vector<Raw<T>> out;
  out.reserve(span.size());
  append_bits(span, out);
  return out;
}

/// Marks `span`'s elements of `memory` as covered and appends their bits to `bits`.
template <class T>
UNTRACED void cover(std::span<const T> span, const T* memory, std::vector<std::uint8_t>& covered,
                    std::vector<Raw<T>>& bits) {
  for (const T& x : span) covered[static_cast<std::size_t>(&x - memory)] = 1;
  append_bits(span, bits);
}

template <class R>
UNTRACED bool equal_outside(const std::vector<R>& a, const std::vector<R>& b,
                            const std::vector<std::uint8_t>& covered) {
  for (std::size_t i = 0; i < a.size(); ++i)
    if (!covered[i] && a[i] != b[i]) return false;
  return true;
}

template <class T>
void run(FuzzedDataProvider& in) {
  // -- Shape and layout ---------------------------------------------------------------------
  // d and dv count elements of T; the shape counts values (a q8_0 element holds 32), now and
  // then one more than a whole number of blocks (to be refused).
  constexpr index_t vpe = values_per_element<T>;
  const index_t most = vpe == 1 ? 20 : 3;
  const index_t heads = in.ConsumeIntegralInRange<index_t>(0, 4);
  const index_t tokens = in.ConsumeIntegralInRange<index_t>(0, 160);
  const index_t d = in.ConsumeIntegralInRange<index_t>(0, most);
  const index_t dv_field = in.ConsumeIntegralInRange<index_t>(0, most);  // 0: same as d
  const index_t dv = dv_field == 0 ? d : dv_field;
  const int layout = in.ConsumeIntegralInRange(0, 3);
  const index_t ragged = vpe > 1 && in.ConsumeIntegralInRange(0, 15) == 0 ? 1 : 0;
  const Shape shape{heads, tokens, d * vpe + ragged, dv_field * vpe};

  index_t page_size = 0, pool_pages = 0, read_only = 0;
  std::vector<std::int32_t> pages;
  // Now and then (not with fuzzed strides) the storages come from the named constructors, which
  // take the dimensions again — sometimes one that disagrees with the shape, sometimes the buffer
  // as a span (1: pointer, 2: span). The memory below is sized for the shape, so a view that
  // accepted a disagreeing dimension would read past it.
  const int named = layout == 2 ? 0 : in.ConsumeIntegralInRange(0, 2);
  auto stride = [&](index_t natural) {  // mostly sensible, sometimes anything
    return named != 0 || in.ConsumeBool() ? natural : in.ConsumeIntegralInRange<index_t>(-4, 700);
  };
  Storage<T> ks{}, vs{};
  index_t k_reach = 0, v_reach = 0, cap = 0;
  if (layout <= 2) {  // dense: HND, NHD, or fuzzed strides
    cap = tokens + in.ConsumeIntegralInRange<index_t>(0, 4);
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
  T sentinel;
  std::memset(static_cast<void*>(&sentinel), 0xA7, sizeof(T));
  if constexpr (FloatElement<T>) sentinel = from_float<T>(-777.25f);
  std::fill(memory.begin(), memory.end(), sentinel);
  ks.data = memory.data();
  vs.data = memory.data() + v_offset;
  // A named constructor's dimensions: those of the shape, or one of them off (0: none, 1: K's
  // head_dim, 2: V's head_dim, 3: kv_heads, 4: page size, 5: capacity one short — legitimate
  // while it still holds the tokens).
  const int off = named == 0 ? 0 : in.ConsumeIntegralInRange(0, 5);
  if (named != 0) {
    const index_t dk_values = d * vpe + (off == 1 ? vpe : 0);
    const index_t dv_values = dv * vpe + (off == 2 ? vpe : 0);
    const index_t h = heads + (off == 3 ? 1 : 0), ps = page_size + (off == 4 ? 1 : 0);
    const index_t c = cap - (off == 5 ? 1 : 0);
    const auto k_span = std::span<T>(memory);
    const auto v_span = k_span.subspan(static_cast<std::size_t>(v_offset));
    auto make = [&](auto buffer, index_t dim) {
      if (layout == 0) return Storage<T>::hnd(buffer, c, dim);
      if (layout == 1) return Storage<T>::nhd(buffer, h, dim);
      return Storage<T>::paged_hnd(buffer, ps, h, dim);  // the natural paged strides above
    };
    ks = named == 1 ? make(k_span.data(), dk_values) : make(k_span, dk_values);
    vs = named == 1 ? make(v_span.data(), dv_values) : make(v_span, dv_values);
  }
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
  const bool disagrees = off == 1 || off == 2 || (off == 3 && layout != 0) ||
                         (off == 4 && layout == 3);  // HND takes no kv_heads, dense no page size
  if (disagrees)
    broken(
        "a view refuses a Storage whose head_dim, kv_heads or page size disagrees with its "
        "shape");
  // fp8 / int8 scales: none, per tensor, per head or per token (dense [h][cap] or following
  // the pages), sometimes overlapping each other, sometimes with a NaN or inf.
  std::vector<float> scale_memory;
  if constexpr (has_external_scale<T>) {
    const int kind = in.ConsumeIntegralInRange(0, 4);
    const index_t ps = std::max<index_t>(page_size, 1), cap = layout <= 2 ? tokens : ps;
    const index_t copies = layout <= 2 ? 1 : std::max<index_t>(pool_pages, 1);
    const index_t per = kind <= 2 ? std::max<index_t>(heads, 1) : heads * cap * copies;
    scale_memory.resize(static_cast<std::size_t>(2 * std::max<index_t>(per, 1) + 1));
    for (std::size_t i = 0; i < scale_memory.size(); ++i)
      scale_memory[i] = 0.5f + static_cast<float>(i % 7) * 0.25f;
    const index_t v_at =
        in.ConsumeIntegralInRange(0, 7) == 0 ? in.ConsumeIntegralInRange<index_t>(0, per) : per + 1;
    auto make = [&](float* p) -> ScaleStorage {
      switch (kind) {
        case 0:
          return {};
        case 1:
          return ScaleStorage::per_tensor(p);
        case 2:
          return ScaleStorage::per_head(p);
        default:
          if (layout <= 2) return ScaleStorage::hnd(p, std::max<index_t>(cap, 1));
          return kind == 3 ? ScaleStorage::paged_hnd(p, ps, heads)
                           : ScaleStorage::paged_nhd(p, ps, heads);
      }
    };
    if (in.ConsumeIntegralInRange(0, 7) == 0) {
      const float specials[] = {std::numeric_limits<float>::quiet_NaN(),
                                std::numeric_limits<float>::infinity(), 0.0f, -1.0f};
      scale_memory[in.ConsumeIntegralInRange<std::size_t>(0, scale_memory.size() - 1)] =
          specials[in.ConsumeIntegralInRange(0, 3)];
    }
    try {
      view.emplace(view->with_scales(make(scale_memory.data()), make(scale_memory.data() + v_at)));
    } catch (const kvevict::error& e) {
      check_message(e);
      return;
    }
  }
  KVCache<T>& kv = *view;

  // -- Values: normal, scaled, with specials now and then -------------------------------------
  Normal rng(in.ConsumeIntegral<std::uint64_t>());
  const float scale = in.ConsumeBool() ? 1.0f : in.ConsumeFloatingPointInRange(0.0f, 3000.0f);
  const int specials = in.ConsumeIntegralInRange(0, 3) == 0 ? in.ConsumeIntegralInRange(1, 3) : 0;
  using Q = query_type<T>;
  auto value = [&] { return from_float<Q>(scale * rng.normal()); };
  std::vector<float> row;
  for (index_t h = 0; h < heads; ++h)
    for (index_t t = 0; t < tokens; ++t) {
      if constexpr (QuantizedElement<T>) {
        fill_row(kv, Tensor::keys, h, t, rng, scale, row);
        fill_row(kv, Tensor::values, h, t, rng, scale, row);
      } else {
        fill(kv.key(h, t), rng, scale);
        fill(kv.value(h, t), rng, scale);
      }
    }
  const float special_values[] = {std::numeric_limits<float>::quiet_NaN(),
                                  std::numeric_limits<float>::infinity(),
                                  -std::numeric_limits<float>::infinity()};
  for (int i = 0; i < specials; ++i) {
    const index_t h = static_cast<index_t>(rng() % static_cast<std::uint64_t>(heads));
    const index_t t = static_cast<index_t>(rng() % static_cast<std::uint64_t>(tokens));
    auto span = rng() % 2 ? kv.key(h, t) : kv.value(h, t);
    auto& x = span[rng() % span.size()];
    if constexpr (FloatElement<T>) {
      x = from_float<T>(special_values[rng() % 3]);
    } else if constexpr (std::same_as<T, q8_0> || std::same_as<T, q4_0>) {
      x.d = rng() % 2 ? 0x7E00 : 0x7C00;  // a NaN or inf block scale
    } else if constexpr (std::same_as<T, int8>) {
      x.q = 127;  // int8 codes are all finite: only a scale can be non-finite
    } else {
      x.bits = 0x7F;  // NaN (e4m3fn) or NaN (e5m2)
    }
  }
  const auto scales_before = scale_memory;

  // -- Queries and W_o ------------------------------------------------------------------------
  const index_t q_heads = in.ConsumeIntegralInRange(0, 7) == 0
                              ? in.ConsumeIntegralInRange<index_t>(1, 9)
                              : heads * in.ConsumeIntegralInRange<index_t>(1, 4);
  const index_t window = in.ConsumeIntegralInRange<index_t>(1, std::min<index_t>(tokens + 2, 48));
  const index_t qd = in.ConsumeIntegralInRange(0, 15) == 0 ? d * vpe + 1 : d * vpe;
  std::vector<Q> q(static_cast<std::size_t>(q_heads * window * qd));
  for (Q& x : q) x = value();
  if (in.ConsumeIntegralInRange(0, 15) == 0 && !q.empty())
    q[rng() % q.size()] = from_float<Q>(special_values[rng() % 3]);
  const index_t hidden = in.ConsumeIntegralInRange<index_t>(1, 12);
  const index_t wo_heads = in.ConsumeIntegralInRange(0, 15) == 0 ? q_heads + 1 : q_heads;
  const index_t wo_dim = in.ConsumeIntegralInRange(0, 15) == 0 ? dv * vpe + 1 : dv * vpe;
  std::vector<float> wo(static_cast<std::size_t>(wo_heads * wo_dim * hidden));
  for (float& x : wo) x = rng.normal();
  if (in.ConsumeIntegralInRange(0, 15) == 0 && !wo.empty())
    wo[rng() % wo.size()] = special_values[rng() % 3];

  // -- Policy, parameters, budget ---------------------------------------------------------------
  const auto names = policy_names();
  const std::string_view name = names[in.ConsumeIntegralInRange<std::size_t>(0, names.size() - 1)];
  std::optional<AnyPolicy> policy;
  std::optional<Budget> budget;
  std::optional<QueryWindow<Q>> queries;
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
  const auto scales_same = [&] {
    return scale_memory.empty() || std::memcmp(scale_memory.data(), scales_before.data(),
                                               scale_memory.size() * sizeof(float)) == 0;
  };
  Selection out = Selection::all(1, 1);  // complete, as an earlier call leaves it
  Workspace ws;
  try {
    kvevict::select(*policy, kv, *queries, *budget, out, ws);
  } catch (const kvevict::error& e) {
    check_message(e);
    if (out.complete()) broken("a failed select leaves its selection incomplete");
    if (read_all() != before || !scales_same()) broken("select never writes the cache");
    return;
  }
  if (read_all() != before || !scales_same()) broken("select never writes the cache");
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
  std::vector<std::vector<Raw<T>>> logical(static_cast<std::size_t>(heads * tokens));
  std::vector<std::uint32_t> logical_scales;  // per (tensor, head, token), as bits
  const auto scale_bits = [&](Tensor which, index_t h, index_t t) {
    return std::bit_cast<std::uint32_t>(kv.scale(which, h, t));
  };
  for (const Tensor which : {Tensor::keys, Tensor::values})
    for (index_t h = 0; h < heads; ++h)
      for (index_t t = 0; t < tokens; ++t) logical_scales.push_back(scale_bits(which, h, t));
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
    if (read_all() != before || !scales_same()) broken("a rejected compact writes nothing");
    return;
  }
  const auto after = read_all();
  if (!equal_outside(before, after, covered)) broken("memory outside the spans is untouched");
  for (index_t h = 0; h < heads; ++h) {
    const auto kept = out.kept(h);
    if (result.lengths[static_cast<std::size_t>(h)] != static_cast<index_t>(kept.size()))
      broken("compact reports the new length");
    for (index_t t = 0; t < tokens; ++t) {
      std::vector<Raw<T>> now;
      for (auto span : {kv.key(h, t), kv.value(h, t)}) append_bits<T>(span, now);
      const index_t source = t < static_cast<index_t>(kept.size())
                                 ? kept[static_cast<std::size_t>(t)]
                                 : t;  // beyond the new length: unchanged
      if (now != logical[static_cast<std::size_t>(h * tokens + source)])
        broken("kept entries move bit for bit; the rest stays", std::to_string(h));
      for (int w = 0; w < 2; ++w)
        if (scale_bits(w == 0 ? Tensor::keys : Tensor::values, h, t) !=
            logical_scales[static_cast<std::size_t>((w * heads + h) * tokens + source)])
          broken("per-token scales move with their tokens", std::to_string(h));
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  FuzzedDataProvider in(data, size);
  switch (in.ConsumeIntegralInRange(0, 7)) {
    case 0:
      run<float>(in);
      break;
    case 1:
      run<Eigen::half>(in);
      break;
    case 2:
      run<Eigen::bfloat16>(in);
      break;
    case 3:
      run<q8_0>(in);
      break;
    case 4:
      run<q4_0>(in);
      break;
    case 5:
      run<fp8_e4m3>(in);
      break;
    case 6:
      run<fp8_e5m2>(in);
      break;
    default:
      run<int8>(in);
  }
  return 0;
}
