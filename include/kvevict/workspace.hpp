// kvevict — KV-cache eviction policies for LLM inference.
// SPDX-License-Identifier: Apache-2.0
#pragma once

/// \file
/// \brief `Workspace`: caller-owned scratch memory, so that nothing allocates per call once warm.

#include <cstddef>
#include <memory>
#include <new>
#include <span>
#include <type_traits>
#include <vector>

#include "error.hpp"

namespace kvevict {

class Executor;

/// Scratch memory owned by the caller and lent to kernels and policies.
///
/// A bump allocator over 64-byte aligned blocks. Memory taken inside a `Frame` is given back
/// when the frame ends. When a call needs more than the workspace holds, a new block is added
/// (earlier spans stay valid); when the outermost frame ends, the blocks are merged into one, so
/// from the second call of the same size on, nothing is allocated. `allocations()` counts heap
/// allocations, which lets tests prove the steady state allocates nothing.
///
/// Not thread-safe: one workspace per thread (they are cheap).
///
/// **Example**:
/// \code
/// kvevict::Workspace ws;                       // reuse across calls and layers
/// policy.select(kv, queries, budget, sel, ws); // first call sizes the workspace
/// policy.select(kv, queries, budget, sel, ws); // no allocation
/// \endcode
class Workspace {
 public:
  static constexpr std::size_t alignment = 64;

  Workspace() = default;
  /// A workspace that already holds `bytes`.
  explicit Workspace(std::size_t bytes) {
    if (bytes > 0) add_block(bytes);
  }
  Workspace(const Workspace&) = delete;
  Workspace& operator=(const Workspace&) = delete;
  Workspace(Workspace&&) noexcept = default;
  Workspace& operator=(Workspace&&) noexcept = default;

  /// Releases everything taken after its construction when it goes out of scope.
  class Frame {
   public:
    explicit Frame(Workspace& ws) : ws_(&ws), block_(ws.block_), used_(ws.used_) {}
    Frame(const Frame&) = delete;
    Frame& operator=(const Frame&) = delete;
    ~Frame() { ws_->release(block_, used_); }

   private:
    Workspace* ws_;
    std::size_t block_, used_;
  };

  /// `count` uninitialised objects of a trivial type U, 64-byte aligned. Valid until the
  /// enclosing `Frame` ends. O(1) unless the workspace must grow.
  template <class U>
  std::span<U> take(index_t count) {
    static_assert(std::is_trivially_copyable_v<U> && std::is_trivially_destructible_v<U>);
    static_assert(alignof(U) <= alignment);
    if (count <= 0) return {};
    const std::size_t bytes = static_cast<std::size_t>(count) * sizeof(U);
    std::byte* p = bump(bytes);
    return {reinterpret_cast<U*>(p), static_cast<std::size_t>(count)};
  }

  /// The engine's threads for the kernels that take them from the workspace (scoring, and so
  /// every attention-based `select`; `attention_rows`; `select_layers`), or null (the default):
  /// everything on the calling thread. Not owned; must outlive the calls that use it.
  void set_executor(const Executor* executor) noexcept { executor_ = executor; }
  const Executor* executor() const noexcept { return executor_; }

  /// The scratch of worker `w` of a parallel run (created by `prepare_workers`, kept and reused;
  /// without an executor of its own: work inside a task is serial).
  Workspace& worker(index_t w) noexcept { return *workers_[static_cast<std::size_t>(w)]; }
  /// Makes sure `count` worker workspaces exist. Call before a parallel run (not thread-safe).
  void prepare_workers(index_t count) {
    while (static_cast<index_t>(workers_.size()) < count)
      workers_.push_back(std::make_unique<Workspace>());
  }

  /// Bytes held in all blocks.
  std::size_t capacity() const noexcept {
    std::size_t total = 0;
    for (const Block& b : blocks_) total += b.size;
    return total;
  }
  /// Heap allocations made so far (blocks added or merged).
  std::size_t allocations() const noexcept { return allocations_; }

 private:
  struct Free {
    void operator()(std::byte* p) const noexcept {
      ::operator delete[](p, std::align_val_t{alignment});
    }
  };
  struct Block {
    std::unique_ptr<std::byte[], Free> data;
    std::size_t size;
  };

  static std::size_t round_up(std::size_t n) { return (n + alignment - 1) / alignment * alignment; }

  void add_block(std::size_t bytes) {
    bytes = round_up(bytes);
    auto* p = static_cast<std::byte*>(::operator new[](bytes, std::align_val_t{alignment}));
    blocks_.push_back({std::unique_ptr<std::byte[], Free>(p), bytes});
    ++allocations_;
  }

  std::byte* bump(std::size_t bytes) {
    bytes = round_up(bytes);
    while (block_ < blocks_.size()) {
      if (blocks_[block_].size - used_ >= bytes) {
        std::byte* p = blocks_[block_].data.get() + used_;
        used_ += bytes;
        return p;
      }
      ++block_;
      used_ = 0;
    }
    add_block(std::max(bytes, capacity()));
    block_ = blocks_.size() - 1;
    used_ = bytes;
    return blocks_.back().data.get();
  }

  void release(std::size_t block, std::size_t used) noexcept {
    block_ = block;
    used_ = used;
    if (block == 0 && used == 0 && blocks_.size() > 1) {
      // Merge: the next call of the same size then fits in one block.
      const std::size_t total = capacity();
      blocks_.clear();
      try {
        add_block(total);
      } catch (const std::bad_alloc&) {  // keep an empty workspace; the next take grows it
      }
    }
  }

  std::vector<Block> blocks_;
  const Executor* executor_ = nullptr;
  std::vector<std::unique_ptr<Workspace>> workers_;
  std::size_t block_ = 0;
  std::size_t used_ = 0;
  std::size_t allocations_ = 0;
};

}  // namespace kvevict
