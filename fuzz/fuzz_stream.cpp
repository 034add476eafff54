// libFuzzer target: the decode path. A streaming policy (any of the six, fuzzed parameters) is
// started with a fuzzed StreamConfig, then driven by a fuzzed sequence of append / observe calls:
// positions that may repeat or go back, appends without an observe, and attention rows that are
// mostly probabilities but may have the wrong shape, a null pointer, NaN, inf or negative
// entries.
//
// Properties checked:
// - every failure is a kvevict::error whose message starts with "<argument>: expected ";
// - a failed call changes nothing: a twin policy that is given only the calls that succeeded
//   evicts exactly the same slots at every step;
// - evicted slots were live and are free afterwards; live positions per head are distinct;
// - observe never grows a head, and after one append per observe a budgeted policy holds at
//   most its budget per head.
// SPDX-License-Identifier: Apache-2.0
#include <fuzzer/FuzzedDataProvider.h>

#include <kvevict/kvevict.hpp>
#include <kvevict/registry.hpp>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "fuzz_common.hpp"

namespace {

using namespace kvevict;

using fuzz::broken;
using fuzz::check_message;
using fuzz::note;
using std::to_string;

std::string text(const Evictions& e, index_t kv_heads) {
  std::string out;
  for (index_t h = 0; h < kv_heads; ++h) {
    out += h == 0 ? "{" : " {";
    for (token_t s : e.of(h)) out += (out.back() == '{' ? "" : ",") + to_string(s);
    out += "}";
  }
  return out;
}

std::vector<token_t> copy(const Evictions& e, index_t kv_heads) {
  std::vector<token_t> out;
  for (index_t h = 0; h < kv_heads; ++h) {
    out.push_back(-1);
    for (token_t s : e.of(h)) out.push_back(s);
  }
  return out;
}

template <class P>
void drive(const P& policy_params, FuzzedDataProvider& in) {
  const StreamConfig config{
      in.ConsumeIntegralInRange<index_t>(0, 4), in.ConsumeIntegralInRange<index_t>(0, 12),
      in.ConsumeIntegralInRange<index_t>(-2, 40), in.ConsumeIntegralInRange<index_t>(0, 64)};
  note("start {kv_heads ", to_string(config.kv_heads), ", q_heads ", to_string(config.q_heads),
       ", budget ", to_string(config.budget), ", capacity ", to_string(config.capacity), "}");
  std::optional<Stream<P>> started;
  try {
    started.emplace(policy_params.start(config));
  } catch (const kvevict::error& e) {
    note("  -> error: ", e.what());
    check_message(e);
    return;
  }
  Stream<P>& policy = *started;
  Stream<P> twin = policy;  // receives only the calls that succeed
  const index_t slots = policy.slots(), kv_heads = config.kv_heads, q_heads = config.q_heads;
  const bool budgeted = config.budget > 0;
  std::vector<float> rows(static_cast<std::size_t>(q_heads * slots + 1));
  std::int64_t position = -1;
  const int steps = in.ConsumeIntegralInRange(0, 300);
  for (int step = 0; step < steps && in.remaining_bytes() > 0; ++step) {
    if (in.ConsumeIntegralInRange(0, 2) != 0) {  // append, usually at the next position
      const int jump = in.ConsumeIntegralInRange(0, 15);
      const std::int64_t p = jump == 0 ? position : jump == 1 ? position - 1 : position + jump - 1;
      try {
        const auto slot = policy.append(p);
        note("append(", to_string(p), ") -> slot ", to_string(slot.empty() ? -1 : slot[0]),
             slot.size() > 1 ? " (head 0)" : "");
      } catch (const kvevict::error& e) {
        note("append(", to_string(p), ") -> error: ", e.what());
        check_message(e);
        continue;
      }
      try {
        twin.append(p);
      } catch (const kvevict::error& e) {
        broken("the twin accepts what the policy accepted", e.what());
      }
      position = p;
      continue;
    }
    // observe: probabilities over the live slots (the group's head), perturbed now and then
    for (index_t q = 0; q < q_heads; ++q) {
      const index_t h = q / (q_heads / kv_heads);
      float total = 0;
      for (index_t s = 0; s < slots; ++s) {
        float& x = rows[static_cast<std::size_t>(q * slots + s)];
        x = policy.position(h, s) >= 0 ? static_cast<float>(in.ConsumeIntegralInRange(0, 255))
                                       : in.ConsumeFloatingPoint<float>();  // free: anything
        if (policy.position(h, s) >= 0) total += x;
      }
      for (index_t s = 0; s < slots; ++s)
        if (policy.position(h, s) >= 0 && total > 0)
          rows[static_cast<std::size_t>(q * slots + s)] /= total;
    }
    const float specials[] = {std::nanf(""), INFINITY, -INFINITY, -0.25f};
    if (in.ConsumeIntegralInRange(0, 7) == 0 && q_heads * slots > 0)
      rows[in.ConsumeIntegralInRange<std::size_t>(0,
                                                  static_cast<std::size_t>(q_heads * slots - 1))] =
          specials[in.ConsumeIntegralInRange(0, 3)];
    AttentionRows r{rows.data(), q_heads, slots, slots};
    switch (in.ConsumeIntegralInRange(0, 15)) {
      case 0:
        r.data = nullptr;
        break;
      case 1:
        r.q_heads += in.ConsumeBool() ? 1 : -1;
        break;
      case 2:
        r.slots -= 1;
        break;
      case 3:
        r.head_stride = in.ConsumeIntegralInRange<index_t>(0, slots);
        break;
      default:
        break;
    }
    std::vector<index_t> live_before(static_cast<std::size_t>(kv_heads));
    for (index_t h = 0; h < kv_heads; ++h)
      live_before[static_cast<std::size_t>(h)] = policy.size(h);
    Evictions got;
    try {
      got = policy.observe(r);
      note("observe -> evicted ", text(got, kv_heads));
    } catch (const kvevict::error& e) {
      note("observe -> error: ", e.what());
      check_message(e);
      for (index_t h = 0; h < kv_heads; ++h)
        if (policy.size(h) != live_before[static_cast<std::size_t>(h)])
          broken("a failed observe changes nothing");
      continue;
    }
    const auto mine = copy(got, kv_heads);
    const std::string mine_text = text(got, kv_heads);
    std::vector<token_t> theirs;
    std::string theirs_text;
    try {
      const Evictions e = twin.observe(r);
      theirs = copy(e, kv_heads);
      theirs_text = text(e, kv_heads);
    } catch (const kvevict::error& e) {
      broken("the twin accepts what the policy accepted", e.what());
    }
    if (mine != theirs)
      broken("the twin that skipped the failed calls evicts the same slots",
             "(policy: " + mine_text + ", twin: " + theirs_text + ")");
    for (index_t h = 0; h < kv_heads; ++h) {
      for (token_t s : got.of(h)) {
        if (s < 0 || s >= slots) broken("evicted slots are slots");
        if (policy.position(h, s) >= 0) broken("an evicted slot is free");
      }
      std::set<std::int64_t> seen;
      for (index_t s = 0; s < slots; ++s)
        if (policy.position(h, s) >= 0 && !seen.insert(policy.position(h, s)).second)
          broken("live positions are distinct");
      if (static_cast<index_t>(seen.size()) != policy.size(h)) broken("size counts live slots");
      // observe never grows a head; after the usual one append per observe it is within budget
      const index_t before = live_before[static_cast<std::size_t>(h)];
      if (policy.size(h) > before) broken("observe never adds tokens");
      if (budgeted && before <= config.budget + 1 && policy.size(h) > config.budget)
        broken("the budget holds after observe",
               std::string(P::name) + " budget " + std::to_string(config.budget) + " capacity " +
                   std::to_string(config.capacity) + " head " + std::to_string(h) + " before " +
                   std::to_string(before) + " after " + std::to_string(policy.size(h)));
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  FuzzedDataProvider in(data, size);
  static const std::vector<std::string_view> streaming = [] {
    std::vector<std::string_view> out;  // every streaming policy, in the registry's order
    for_each_policy([&]<class P>() {
      if (P::info.streaming) out.push_back(P::name);
    });
    return out;
  }();
  const std::string_view name =
      streaming[in.ConsumeIntegralInRange<std::size_t>(0, streaming.size() - 1)];
  Settings settings;
  try {
    const auto defaults = describe(make_policy(name));
    for (int i = in.ConsumeIntegralInRange(0, 3); i > 0 && !defaults.empty(); --i) {
      const auto& key =
          defaults[in.ConsumeIntegralInRange<std::size_t>(0, defaults.size() - 1)].first;
      if (key == "seed" || key == "granularity") continue;  // set below, as before
      settings.emplace_back(key, in.ConsumeBool()
                                     ? std::to_string(in.ConsumeIntegralInRange(-2, 24))
                                     : std::to_string(in.ConsumeFloatingPointInRange(-0.5, 1.5)));
    }
    const auto seed = in.ConsumeIntegral<std::uint8_t>();
    const bool shared = in.ConsumeBool();
    fuzz::trace().clear();
    std::string described;
    for (const auto& [key, value] : settings) described += " " + key + "=" + value;
    note("policy ", std::string(name), described, " seed=", to_string(seed),
         shared ? " shared" : "");
    const auto policy = make_policy(
        name, {.settings = settings,
               .seed = seed,
               .granularity = shared ? std::optional(Granularity::shared) : std::nullopt});
    policy.visit([&](const auto& p) {
      using P = std::decay_t<decltype(p)>;
      if constexpr (StreamingPolicy<P>) drive(p, in);
    });
  } catch (const kvevict::error& e) {
    check_message(e);
  }
  return 0;
}
