// kvevict — KV-cache eviction policies for LLM inference.
// SPDX-License-Identifier: Apache-2.0
#pragma once

/// \file
/// \brief Slot bookkeeping shared by the streaming policies: which slot holds which position,
/// which slots are free, and the per-step eviction list. Allocates only in `start`.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <span>
#include <string>
#include <vector>

#include "error.hpp"
#include "policy.hpp"
#include "selection.hpp"

namespace kvevict::detail {

/// Checks a `StreamConfig` and returns the slot count: `capacity`, or `budget + 1` when 0.
/// `needs_budget`: the policy keeps a fixed number of tokens.
inline index_t check_stream_config(const StreamConfig& c, bool needs_budget) {
  require(c.kv_heads >= 1, "kv_heads", "at least 1 KV head", c.kv_heads);
  require(c.q_heads >= 1 && c.q_heads % c.kv_heads == 0, "q_heads",
          cat("a positive multiple of kv_heads (", c.kv_heads, ")"), c.q_heads);
  if (needs_budget) {
    require(c.budget >= 1, "budget", "a token count >= 1", c.budget);
    const index_t slots = c.capacity == 0 ? c.budget + 1 : c.capacity;
    require(slots >= c.budget + 1, "capacity",
            cat("at least budget + 1 (", c.budget + 1, ") slots"), c.capacity);
    require(slots <= std::numeric_limits<token_t>::max(), "capacity", "fewer than 2^31 slots",
            slots);
    return slots;
  }
  require(c.budget == 0, "budget", "no budget (0) for a budget-free policy", c.budget);
  require(c.capacity >= 2 && c.capacity <= std::numeric_limits<token_t>::max(), "capacity",
          "2 <= capacity < 2^31 slots", c.capacity);
  return c.capacity;
}

/// Which position each slot of each stored head holds (−1: free), and a free-slot stack per
/// head. Fresh slots are handed out in ascending order; an evicted slot is the next one reused.
class SlotTable {
 public:
  void start(index_t heads, index_t slots) {
    heads_ = heads;
    slots_ = slots;
    position_.assign(static_cast<std::size_t>(heads * slots), -1);
    free_.resize(static_cast<std::size_t>(heads * slots));
    free_count_.assign(static_cast<std::size_t>(heads), slots);
    last_ = -1;
    for (index_t h = 0; h < heads; ++h)
      for (index_t i = 0; i < slots; ++i)
        free_[static_cast<std::size_t>(h * slots + i)] = static_cast<token_t>(slots - 1 - i);
  }

  index_t heads() const noexcept { return heads_; }
  index_t slots() const noexcept { return slots_; }
  index_t size(index_t h) const noexcept {
    return slots_ - free_count_[static_cast<std::size_t>(h)];
  }
  std::int64_t position(index_t h, index_t slot) const noexcept {
    return position_[static_cast<std::size_t>(h * slots_ + slot)];
  }
  bool live(index_t h, index_t slot) const noexcept { return position(h, slot) >= 0; }
  /// Positions of head h, indexed by slot (−1 for free slots).
  std::span<const std::int64_t> positions(index_t h) const noexcept {
    return {position_.data() + h * slots_, static_cast<std::size_t>(slots_)};
  }

  /// Checks that every stored head can take a slot for `position`: each has a free slot (the
  /// engine did not append twice without `observe`) and the position comes after the previous
  /// one. Throws `kvevict::error` otherwise, having changed nothing. O(heads).
  void check_take(std::int64_t position) const {
    for (index_t h = 0; h < heads_; ++h)
      if (free_count_[static_cast<std::size_t>(h)] == 0)
        fail("append", "a free slot (call observe after every append)", "all ", slots_,
             " slots live", heads_ > 1 ? cat(" in stored head ", h) : std::string());
    if (position <= last_)
      fail("position", cat("a position after the previous one (", last_, ")"), position);
  }

  /// Takes a free slot of every stored head for `position` and writes them into `out` (one per
  /// stored head). All heads or none: `check_take` runs first, then nothing can fail.
  void take_all(std::int64_t position, std::span<token_t> out) {
    check_take(position);
    last_ = position;
    for (index_t h = 0; h < heads_; ++h) {
      index_t& count = free_count_[static_cast<std::size_t>(h)];
      const token_t slot = free_[static_cast<std::size_t>(h * slots_ + --count)];
      position_[static_cast<std::size_t>(h * slots_ + slot)] = position;
      out[static_cast<std::size_t>(h)] = slot;
    }
  }

  /// The last position taken (−1 before the first).
  std::int64_t last_position() const noexcept { return last_; }

  /// Frees `slot` of head h.
  void release(index_t h, token_t slot) noexcept {
    position_[static_cast<std::size_t>(h * slots_ + slot)] = -1;
    index_t& count = free_count_[static_cast<std::size_t>(h)];
    free_[static_cast<std::size_t>(h * slots_ + count++)] = slot;
  }

 private:
  index_t heads_ = 0, slots_ = 0;
  std::vector<std::int64_t> position_;
  std::vector<token_t> free_;
  std::vector<index_t> free_count_;
  std::int64_t last_ = -1;  ///< every stored head takes every position, so one for all
};

/// Which slots of each stored head are protected from eviction: the first `sinks` tokens ever
/// appended and the last `recent` ones (a ring of slots). O(1) per append; allocates in `start`.
class Protection {
 public:
  void start(index_t heads, index_t slots, index_t sinks, index_t recent) {
    slots_ = slots;
    sinks_ = sinks;
    recent_ = recent;
    seen_ = 0;
    next_ = 0;
    ring_.assign(static_cast<std::size_t>(heads * std::max<index_t>(recent, 1)), -1);
    flag_.assign(static_cast<std::size_t>(heads * slots), free_bit);
  }
  /// Records that `slot` of head h now holds the newest token (call once per head and token,
  /// then `next_token`).
  void on_append(index_t h, token_t slot) noexcept {
    std::uint8_t& f = flag_[static_cast<std::size_t>(h * slots_ + slot)];
    f = 0;
    if (seen_ < sinks_) {
      f |= sink_bit;
    } else if (recent_ > 0) {
      token_t& entry = ring_[static_cast<std::size_t>(h * recent_ + next_)];
      if (entry >= 0) flag_[static_cast<std::size_t>(h * slots_ + entry)] &= ~recent_bit;
      entry = slot;
      f |= recent_bit;
    }
  }
  /// Advances to the next token (after `on_append` for every head).
  void next_token() noexcept {
    if (seen_ < sinks_) {
      ++seen_;
    } else if (recent_ > 0) {
      next_ = (next_ + 1) % recent_;
    }
  }
  /// Records that `slot` of head h was freed.
  void on_release(index_t h, token_t slot) noexcept {
    flag_[static_cast<std::size_t>(h * slots_ + slot)] |= free_bit;
  }
  bool protects(index_t h, index_t slot) const noexcept {
    return (flag_[static_cast<std::size_t>(h * slots_ + slot)] & (sink_bit | recent_bit)) != 0;
  }
  /// Head h's slot flags: 0 exactly for a live slot that is not protected (what eviction may
  /// take), so a scan for the lowest score reads one byte per slot.
  const std::uint8_t* flags(index_t h) const noexcept { return flag_.data() + h * slots_; }

 private:
  static constexpr std::uint8_t sink_bit = 1, recent_bit = 2, free_bit = 4;
  index_t slots_ = 0, sinks_ = 0, recent_ = 0, seen_ = 0, next_ = 0;
  std::vector<token_t> ring_;
  std::vector<std::uint8_t> flag_;
};

/// Takes a slot for `position` in every stored head of `table` and writes the slot of each KV
/// head into `out` (one stored head: the same slot for all). Returns `out`. Every stored head
/// takes one, or (on error) none does.
inline std::span<const token_t> append_to_slots(SlotTable& table, std::vector<token_t>& out,
                                                std::int64_t position) {
  if (table.heads() == 1) {
    token_t slot = 0;
    table.take_all(position, {&slot, 1});
    std::fill(out.begin(), out.end(), slot);
  } else {
    table.take_all(position, out);
  }
  return out;
}

/// Checks the shape of the rows an engine passes to `observe`. O(1).
inline void check_rows(const AttentionRows& rows, index_t q_heads, index_t slots) {
  if (rows.data == nullptr) fail("rows.data", "a non-null pointer", "nullptr");
  if (rows.q_heads != q_heads)
    fail("rows.q_heads", cat("the q_heads the policy was started with (", q_heads, ")"),
         rows.q_heads);
  if (rows.slots != slots) fail("rows.slots", cat("the policy's slots (", slots, ")"), rows.slots);
  if (q_heads > 1 && rows.head_stride < slots)
    fail("rows.head_stride", cat("at least slots (", slots, ")"), rows.head_stride);
}

/// Checks that `rows` hold a finite, non-negative probability at every live slot (free slots
/// are ignored, as `AttentionRows` promises). Query head q belongs to stored head
/// q / (q_heads / table.heads()). Called by the policies that compute on the rows, before they
/// change any state, so a bad step leaves the sequence as it was. O(q_heads · slots): one
/// branch-free pass over bits (vectorised), about the cost of the policies' own pass.
inline void check_probabilities(const AttentionRows& rows, const SlotTable& table) {
  const index_t slots = table.slots(), g = rows.q_heads / table.heads();
  for (index_t q = 0; q < rows.q_heads; ++q) {
    const std::int64_t* position = table.positions(q / g).data();
    const auto* row = reinterpret_cast<const std::uint32_t*>(rows.data + q * rows.head_stride);
    // Valid: +0 … +max finite (bits below +inf's), or −0. A live slot has position ≥ 0.
    std::uint32_t bad = 0;
    for (index_t s = 0; s < slots; ++s)
      bad |= static_cast<std::uint32_t>(position[s] >= 0) &
             static_cast<std::uint32_t>(row[s] >= 0x7f800000u && row[s] != 0x80000000u);
    if (bad == 0) continue;
    for (index_t s = 0; s < slots; ++s) {
      const float x = rows.at(q, s);
      if (position[s] >= 0 && !(x >= 0.0f && std::isfinite(x)))
        fail("rows", "finite probabilities >= 0 at live slots",
             cat(x, " at query head ", q, ", slot ", s));
    }
  }
}

/// The per-step eviction list a streaming policy returns, preallocated in `start`.
class EvictionList {
 public:
  void start(index_t stored_heads, bool shared, index_t max_per_head) {
    shared_ = shared;
    offsets_.assign(static_cast<std::size_t>(stored_heads + 1), 0);
    slots_.assign(static_cast<std::size_t>(stored_heads * max_per_head), 0);
    count_ = 0;
    head_ = 0;
  }
  /// Starts a new step.
  void clear() noexcept {
    count_ = 0;
    head_ = 0;
    std::fill(offsets_.begin(), offsets_.end(), 0);
  }
  /// Appends an eviction of `slot` for stored head h; heads must come in ascending order.
  void push(index_t h, token_t slot) noexcept {
    close_until(h);
    slots_[static_cast<std::size_t>(count_++)] = slot;
  }
  /// The step's evictions.
  Evictions view() noexcept {
    close_until(static_cast<index_t>(offsets_.size()) - 1);
    return {shared_, offsets_,
            std::span<const token_t>(slots_.data(), static_cast<std::size_t>(count_))};
  }

 private:
  void close_until(index_t h) noexcept {
    while (head_ < h) offsets_[static_cast<std::size_t>(++head_)] = count_;
  }

  bool shared_ = true;
  std::vector<index_t> offsets_;
  std::vector<token_t> slots_;
  index_t count_ = 0, head_ = 0;
};

}  // namespace kvevict::detail
