// kvevict — KV-cache eviction policies for LLM inference.
// SPDX-License-Identifier: Apache-2.0
#pragma once

/// \file
/// \brief `Selection`: the tokens each KV head keeps, in CSR form.

#include <algorithm>
#include <cstdint>
#include <exception>
#include <span>
#include <vector>

#include "error.hpp"

namespace kvevict {

/// A token index inside a cache view (logical, position order).
using token_t = std::int32_t;

/// A half-open range of token indices [begin, end).
struct TokenRange {
  index_t begin;
  index_t end;
  friend bool operator==(const TokenRange&, const TokenRange&) = default;
};

/// The kept token indices of every KV head: ascending and unique per head. Either per head
/// (each head its own set, possibly of different sizes) or shared (one set for all heads, what
/// token-slot engines such as llama.cpp need).
///
/// Stored in CSR form (offsets + indices). A `Selection` is meant to be reused across calls:
/// `reset` keeps its capacity, so filling it again allocates nothing once it has been large
/// enough. Policies fill it with `reset` + `add_head`; engines read it with `kept`, `to_mask`
/// and `evicted_ranges`.
class Selection {
 public:
  Selection() = default;

  /// Every token of every head (the result of a budget ≥ n). Allocates.
  static Selection all(index_t kv_heads, index_t tokens, bool shared = true) {
    Selection s;
    s.keep_all(kv_heads, tokens, shared);
    return s;
  }

  /// Refills this selection with every token of every head. Keeps capacity.
  void keep_all(index_t kv_heads, index_t tokens, bool shared) {
    reset(kv_heads, tokens, shared);
    for (index_t h = 0; h < stored_heads(); ++h) {
      const auto idx = add_head(tokens);
      for (index_t i = 0; i < tokens; ++i)
        idx[static_cast<std::size_t>(i)] = static_cast<token_t>(i);
    }
  }

  /// Starts a new selection over `kv_heads` heads of a `tokens`-token cache. Keeps capacity.
  void reset(index_t kv_heads, index_t tokens, bool shared) {
    kv_heads_ = kv_heads;
    tokens_ = tokens;
    shared_ = shared;
    offsets_.assign(1, 0);
    indices_.clear();
  }

  /// Empties the selection: no heads, incomplete (`validate` and `compact` reject it until it
  /// is filled again). Keeps capacity; never throws.
  void clear() noexcept {
    offsets_.resize(1);
    offsets_[0] = 0;
    indices_.clear();
    if (kv_heads_ < 1) kv_heads_ = 1;  // so that `complete()` is false
  }

  /// Reserves room for `total` indices (all heads together) so that filling does not allocate.
  void reserve(index_t total) { indices_.reserve(static_cast<std::size_t>(total)); }

  /// Appends the next head's kept set of `count` tokens and returns it to be filled (ascending,
  /// unique). A shared selection takes exactly one head. The span is valid until the next call.
  std::span<token_t> add_head(index_t count) {
    const std::size_t start = indices_.size();
    indices_.resize(start + static_cast<std::size_t>(count));
    offsets_.push_back(static_cast<index_t>(indices_.size()));
    return {indices_.data() + start, static_cast<std::size_t>(count)};
  }

  /// Shrinks the last added head to its first `count` indices.
  void truncate_last(index_t count) {
    const index_t start = offsets_[offsets_.size() - 2];
    indices_.resize(static_cast<std::size_t>(start + count));
    offsets_.back() = start + count;
  }

  index_t kv_heads() const noexcept { return kv_heads_; }
  /// Tokens of the cache the selection was made for.
  index_t tokens() const noexcept { return tokens_; }
  bool shared() const noexcept { return shared_; }
  /// Heads stored: 1 when shared, kv_heads otherwise.
  index_t stored_heads() const noexcept { return shared_ ? 1 : kv_heads_; }
  /// True once every stored head has been added.
  bool complete() const noexcept {
    return static_cast<index_t>(offsets_.size()) == stored_heads() + 1;
  }

  /// Kept token indices of KV head `head`, ascending.
  std::span<const token_t> kept(index_t head) const noexcept {
    const std::size_t h = shared_ ? 0 : static_cast<std::size_t>(head);
    return {indices_.data() + offsets_[h], static_cast<std::size_t>(offsets_[h + 1] - offsets_[h])};
  }
  /// Tokens KV head `head` keeps.
  index_t size(index_t head) const noexcept { return static_cast<index_t>(kept(head).size()); }
  /// Largest per-head kept count.
  index_t max_size() const noexcept {
    index_t m = 0;
    for (index_t h = 0; h < stored_heads(); ++h) m = std::max(m, size(h));
    return m;
  }

  /// Writes 1 for kept and 0 for evicted tokens of `head` into `mask` (size `tokens()`).
  void to_mask(index_t head, std::span<std::uint8_t> mask) const {
    if (static_cast<index_t>(mask.size()) != tokens_)
      detail::fail("mask", detail::cat("one entry per token (", tokens_, ")"), mask.size());
    std::fill(mask.begin(), mask.end(), std::uint8_t{0});
    for (token_t t : kept(head)) mask[static_cast<std::size_t>(t)] = 1;
  }

  /// The evicted tokens of `head` as maximal ranges, ascending: what an engine that frees
  /// position ranges (llama.cpp `llama_memory_seq_rm`) needs. Map them through the view's
  /// positions when it has any. Allocates the returned vector.
  std::vector<TokenRange> evicted_ranges(index_t head = 0) const {
    std::vector<TokenRange> out;
    index_t next = 0;
    for (token_t t : kept(head)) {
      if (t > next) out.push_back({next, t});
      next = t + 1;
    }
    if (next < tokens_) out.push_back({next, tokens_});
    return out;
  }

  /// Checks that the selection is complete and every head's indices are ascending, unique and
  /// below `tokens()`; throws `kvevict::error` naming `selection` otherwise. O(total kept).
  void validate() const {
    if (!complete())
      detail::fail("selection", detail::cat(stored_heads(), " heads filled"),
                   static_cast<index_t>(offsets_.size()) - 1);
    for (index_t h = 0; h < stored_heads(); ++h) {
      const auto k = kept(h);
      for (std::size_t i = 0; i < k.size(); ++i) {
        if (k[i] < 0 || k[i] >= tokens_)
          detail::fail("selection", detail::cat("token indices in [0, ", tokens_, ")"), "head ", h,
                       " index ", k[i]);
        if (i > 0 && k[i] <= k[i - 1])
          detail::fail("selection", "ascending unique indices per head", "head ", h, " index ",
                       k[i], " after ", k[i - 1]);
      }
    }
  }

 private:
  index_t kv_heads_ = 0;
  index_t tokens_ = 0;
  bool shared_ = true;
  std::vector<index_t> offsets_{0};
  std::vector<token_t> indices_;
};

namespace detail {

/// Declared first in every `select`: if the call throws, `out` is left *incomplete* (reset, no
/// head filled), whatever it held before and however far filling got. `compact` and
/// `Selection::validate` reject an incomplete selection, so an error can never leave behind a
/// selection that looks valid (a stale one from an earlier call, or half of this one).
class ClearOnError {
 public:
  explicit ClearOnError(Selection& out) noexcept
      : out_(out), exceptions_(std::uncaught_exceptions()) {}
  ClearOnError(const ClearOnError&) = delete;
  ClearOnError& operator=(const ClearOnError&) = delete;
  ~ClearOnError() {
    if (std::uncaught_exceptions() > exceptions_) out_.clear();
  }

 private:
  Selection& out_;
  int exceptions_;
};

}  // namespace detail
}  // namespace kvevict
