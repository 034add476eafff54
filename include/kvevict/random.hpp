// kvevict — KV-cache eviction policies for LLM inference.
// SPDX-License-Identifier: Apache-2.0
#pragma once

/// \file
/// \brief Seeded random streams: one independent, reproducible stream per (seed, layer, head).

#include <cstdint>

namespace kvevict {

/// splitmix64's finaliser (Steele, Lea & Flood, OOPSLA 2014): a bijective 64-bit mix.
constexpr std::uint64_t mix64(std::uint64_t z) noexcept {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

/// A splitmix64 stream keyed by (seed, layer, head): the same key always yields the same
/// numbers on every platform, different keys independent-looking ones. O(1) per draw; no state
/// beyond one counter.
class RandomStream {
 public:
  constexpr RandomStream(std::uint64_t seed, std::uint64_t layer, std::uint64_t head) noexcept
      : state_(
            mix64(mix64(mix64(seed) ^ (layer + 0x632be59bd9b4e019ull)) ^ (head + 0x85157af5ull))) {}

  /// The next 64 random bits.
  constexpr std::uint64_t next() noexcept {
    state_ += 0x9e3779b97f4a7c15ull;
    return mix64(state_);
  }

  /// Uniform in the open interval (0, 1), 53 bits.
  constexpr double uniform() noexcept {
    return (static_cast<double>(next() >> 11) + 0.5) * 0x1.0p-53;
  }

 private:
  std::uint64_t state_;
};

}  // namespace kvevict
