// kvevict — KV-cache eviction policies for LLM inference.
// SPDX-License-Identifier: Apache-2.0
#pragma once

/// \file
/// \brief Windowed attention probabilities `softmax(Q Kᵀ / √d)` of a query window against a cache
/// view, reduced over the window's queries: the score every attention-based policy starts from.
///
/// **How it is computed.** Per KV head, the g query heads of its GQA group are stacked into one
/// `(g·w) × d` matrix, so every key block is read once per group and the logits come from one
/// GEMM per block (Eigen inside; a block of a dense fp32 cache is mapped in place, a paged or
/// half/bf16 block is gathered and converted to fp32 first). While a block's logits are hot in
/// cache they are turned into `exp(x − m)` with the running row maximum m (online softmax, as
/// in FlashAttention), and the row normalisers accumulate. A row's normaliser depends on every
/// key, so the window reduction `Σ_i A[i, j]` — a sum over rows with different normalisers —
/// can only happen after the last block: the exponentials of one group stay in scratch memory
/// and one final sweep applies each row's factor `exp(m_b − m) / l` and reduces over the
/// window. This keeps the FLOPs at one GEMM (2·w·n·d per query head); the alternative that
/// keeps only O(g·w·block) would compute every logit twice.

#include <Eigen/Core>
#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <span>
#include <vector>

#include "../element.hpp"
#include "../error.hpp"
#include "../executor.hpp"
#include "../kv_cache.hpp"
#include "../query_window.hpp"
#include "../scores.hpp"
#include "../workspace.hpp"
#include "finite.hpp"
#include "reduce.hpp"
#include "softmax.hpp"

namespace kvevict {

/// How the window's attention probabilities are reduced over its queries.
enum class WindowReduce {
  sum,   ///< Σ_i c_i · A[i, j] (H2O's accumulation, NACL's proxy score)
  mean,  ///< (1/w) Σ_i c_i · A[i, j] (SnapKV, CriticalKV)
  max,   ///< max_i c_i · A[i, j] (CORM's "important for any query")
};

/// Options of `window_attention`.
struct WindowAttention {
  WindowReduce reduce = WindowReduce::sum;
  /// Causal: query i (at position n − w + i) sees keys 0 … n − w + i. Otherwise every query
  /// sees every key (NACL's proxy tokens).
  bool causal = true;
  /// Optional per-query weights c_i (size w); empty means 1.
  std::span<const float> query_weights = {};
  /// Keys per GEMM block (a tuning knob; results do not depend on it beyond rounding).
  index_t block = 256;
  /// Softmax rows (GQA group members × window queries) per pass: bounds the scratch memory to
  /// rows_per_pass · n floats; more rows per pass read the keys fewer times.
  index_t rows_per_pass = 128;
};

namespace detail {

/// Reports the first non-finite query or key element of KV head `kvh`'s group (slow path).
template <Element T>
[[noreturn]] void report_non_finite(const KVCache<T>& kv, const QueryWindow<query_type<T>>& q,
                                    index_t kvh, index_t g) {
  for (index_t h = kvh * g; h < (kvh + 1) * g; ++h)
    for (index_t i = 0; i < q.window(); ++i)
      for (index_t k = 0; k < q.head_dim(); ++k) {
        const float x = to_float(q.query(h, i)[static_cast<std::size_t>(k)]);
        if (!std::isfinite(x))
          fail("queries", "finite values", x, " at query head ", h, ", window position ", i,
               ", element ", k);
      }
  require_finite_scales(kv);
  std::vector<float> row(static_cast<std::size_t>(kv.head_dim()));
  for (index_t t = 0; t < kv.tokens(); ++t) {
    kv.read(Tensor::keys, kvh, t, row.data());
    for (index_t k = 0; k < kv.head_dim(); ++k) {
      const float x = row[static_cast<std::size_t>(k)];
      if (!std::isfinite(x))
        fail("keys", "finite values", x, " at KV head ", kvh, ", token ", t, ", element ", k);
    }
  }
  fail("keys", "finite attention logits", "an overflow to inf for KV head ", kvh,
       " (finite but huge keys and queries)");
}

/// fp32 keys [first, first + count) of one head as a `d × count` column-major matrix: mapped in
/// place when the storage is fp32 and the range is one evenly strided run, otherwise gathered
/// and converted (half, bf16) or dequantized (quantized formats) into `buffer` (≥ count · d
/// floats).
template <Element T>
Eigen::Map<const Eigen::MatrixXf, 0, Eigen::OuterStride<>> key_block(const KVCache<T>& kv,
                                                                     index_t head, index_t first,
                                                                     index_t count, float* buffer) {
  const index_t d = kv.head_dim();
  if constexpr (std::same_as<T, float>) {
    const float* data = nullptr;
    index_t stride = 0;
    bool single = true;
    kv.for_each_run(Tensor::keys, head, first, first + count, [&](const TokenRun<T>& run) {
      if (data != nullptr) single = false;
      data = run.data;
      stride = run.stride;
    });
    if (single) return {data, d, count, Eigen::OuterStride<>(stride)};
  }
  if constexpr (QuantizedElement<T>) {  // dequantized once per block, then the same GEMM
    for (index_t t = 0; t < count; ++t) kv.read(Tensor::keys, head, first + t, buffer + t * d);
  } else {
    kv.for_each_run(Tensor::keys, head, first, first + count, [&](const TokenRun<T>& run) {
      for (index_t t = 0; t < run.count; ++t)
        to_float(run.data + t * run.stride, buffer + (run.first - first + t) * d, d);
    });
  }
  return {buffer, d, count, Eigen::OuterStride<>(d)};
}

}  // namespace detail

/// Writes `out[h · n + j] = reduce_i c_i · A_h[i, j]` for every query head h and token j, where
/// `A_h = softmax(Q_h K_{h/g}ᵀ / √d)` row by row in fp32 (causal by default) and g =
/// q_heads / kv_heads. `out` holds q_heads · n floats. Weights c_i must be finite and ≥ 0.
///
/// Softmax rows are independent, so a group's g·w rows are processed in passes of at most
/// `rows_per_pass`: each pass keeps its rows' exponentials (rows_per_pass · n floats) and adds
/// its share of the window reduction to `out`. Large windows (NACL's proxies: 1% of n) cost no
/// more memory, only a re-read of the group's keys per pass.
///
/// Complexity: 2·w·n·d FLOPs per query head as blocked GEMMs, plus O(q_heads · w · n) for the
/// exponentials. Scratch from `ws`: min(g·w, rows_per_pass) · (n + d + n / block + 8) + block · d
/// floats; nothing allocated once `ws` is warm. Throws `kvevict::error` for mismatched shapes,
/// bad weights, or non-finite keys/queries (named, with the offending element).
///
/// Threads: with an executor on `ws` (`Workspace::set_executor`), KV heads run as parallel tasks,
/// each with its worker's scratch (`ws.worker(w)`, the sizes above per worker); the result is
/// bit-identical to the serial one, and an error is the one the serial run throws.
template <Element T>
void window_attention(const KVCache<T>& kv, const QueryWindow<query_type<T>>& queries,
                      const WindowAttention& options, std::span<float> out, Workspace& ws) {
  const index_t g = check_window(kv, queries);
  const index_t n = kv.tokens(), w = queries.window(), d = kv.head_dim();
  const index_t q_heads = queries.q_heads(), group_rows = g * w;
  if (static_cast<index_t>(out.size()) != q_heads * n)
    detail::fail("out", detail::cat("q_heads * tokens (", q_heads * n, ") floats"), out.size());
  if (!options.query_weights.empty() && static_cast<index_t>(options.query_weights.size()) != w)
    detail::fail("query_weights", detail::cat("one weight per window query (", w, ")"),
                 options.query_weights.size());
  for (float c : options.query_weights)
    detail::require(std::isfinite(c) && c >= 0.0f, "query_weights", "finite weights >= 0", c);
  detail::require(options.block >= 1, "block", "block >= 1", options.block);
  detail::require(options.rows_per_pass >= 1, "rows_per_pass", "rows_per_pass >= 1",
                  options.rows_per_pass);
  const index_t block = std::min(options.block, n);
  const index_t n_blocks = (n + block - 1) / block;
  const index_t pass_rows = std::min(group_rows, options.rows_per_pass);
  const float ninf = -std::numeric_limits<float>::infinity();
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));

  using RowMatrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  auto weight = [&](index_t i) {  // of window query i
    const float c =
        options.query_weights.empty() ? 1.0f : options.query_weights[static_cast<std::size_t>(i)];
    return options.reduce == WindowReduce::mean ? c / static_cast<float>(w) : c;
  };

  std::fill(out.begin(), out.end(), 0.0f);  // every reduction starts from 0 (probabilities ≥ 0)
  // One KV head's group, with its scratch from `scratch`: it writes only its own rows of `out`.
  const auto group = [&](index_t kvh, Workspace& scratch) {
    Workspace::Frame frame(scratch);
    float* const q_data = scratch.take<float>(pass_rows * d).data();
    float* const exps = scratch.take<float>(pass_rows * n).data();  // column-major rows × n
    float* const kbuf = scratch.take<float>(block * d).data();
    float* const block_max = scratch.take<float>(pass_rows * n_blocks).data();  // rows × blocks
    float* const m = scratch.take<float>(pass_rows).data();      // running row maximum
    float* const check = scratch.take<float>(pass_rows).data();  // Σ 0·x: NaN iff not finite
    float* const ref = scratch.take<float>(pass_rows).data();    // exp reference of the block
    float* const part = scratch.take<float>(pass_rows).data();   // row sums of the block
    double* const l = scratch.take<double>(pass_rows).data();    // row normalisers
    float* const factor = scratch.take<float>(pass_rows).data();
    for (index_t r0 = 0; r0 < group_rows; r0 += pass_rows) {
      const index_t rows = std::min(pass_rows, group_rows - r0);  // group rows r0 … r0 + rows
      Eigen::Map<RowMatrix> qg(q_data, rows, d);
      for (index_t r = 0; r < rows; ++r) {
        const index_t gr = r0 + r;
        to_float(queries.query(kvh * g + gr / w, gr % w).data(), &qg(r, 0), d);
        qg.row(r) *= scale;
        m[r] = ninf;
        check[r] = 0.0f;
        l[r] = 0.0;
      }
      for (index_t b = 0; b < n_blocks; ++b) {
        const index_t b0 = b * block, count = std::min(block, n - b0);
        const auto keys = detail::key_block(kv, kvh, b0, count, kbuf);
        float* const x = exps + b0 * rows;
        Eigen::Map<Eigen::MatrixXf>(x, rows, count).noalias() = qg * keys;
        // Row maxima, and the finiteness check, while the block is hot in cache. A NaN or inf
        // in a key or query makes at least one logit non-finite (every key is visible to the
        // last query), and 0 · (NaN or ±inf) is NaN.
        float* const bmax = block_max + b * rows;
        std::copy(m, m + rows, bmax);
        for (index_t j = 0; j < count; ++j) {
          const float* col = x + j * rows;
          for (index_t r = 0; r < rows; ++r) {
            bmax[r] = col[r] > bmax[r] ? col[r] : bmax[r];
            check[r] += col[r] * 0.0f;
          }
        }
        if (options.causal)  // query i sees keys j ≤ n − w + i: only the window's own block(s)
          for (index_t j = std::max(b0, n - w + 1); j < b0 + count; ++j)
            for (index_t r = 0; r < rows; ++r)
              if (j > n - w + (r0 + r) % w) x[(j - b0) * rows + r] = ninf;
        for (index_t r = 0; r < rows; ++r) {
          if (m[r] != ninf) l[r] *= std::exp(static_cast<double>(m[r]) - bmax[r]);
          ref[r] = bmax[r] == ninf ? 0.0f : bmax[r];  // an all-masked row: exps of exactly 0
          part[r] = 0.0f;
        }
        for (index_t j = 0; j < count; ++j) {
          float* col = x + j * rows;
          for (index_t r = 0; r < rows; ++r) {
            const float e = detail::exp_nonpositive(col[r] - ref[r]);
            col[r] = e;
            part[r] += e;
          }
        }
        for (index_t r = 0; r < rows; ++r) {
          l[r] += part[r];
          m[r] = bmax[r];
        }
      }
      for (index_t r = 0; r < rows; ++r)
        if (check[r] != 0.0f) detail::report_non_finite(kv, queries, kvh, g);
      // Final sweep: each block's exps scaled by exp(m_b − m) / l · c and reduced over this
      // pass's queries of every head it covers, into `out`.
      for (index_t b = 0; b < n_blocks; ++b) {
        const index_t b0 = b * block, count = std::min(block, n - b0);
        for (index_t r = 0; r < rows; ++r)
          factor[r] =
              l[r] > 0.0
                  ? static_cast<float>(
                        std::exp(static_cast<double>(block_max[b * rows + r]) - m[r]) / l[r]) *
                        weight((r0 + r) % w)
                  : 0.0f;
        const Eigen::Map<const Eigen::MatrixXf> x(exps + b0 * rows, rows, count);
        const Eigen::Map<const Eigen::VectorXf> f(factor, rows);
        for (index_t hg = r0 / w; hg * w < r0 + rows; ++hg) {
          const index_t a = std::max(hg * w, r0) - r0, e = std::min((hg + 1) * w, r0 + rows) - r0;
          Eigen::Map<Eigen::VectorXf> dst(out.data() + (kvh * g + hg) * n + b0, count);
          const auto x_head = x.middleRows(a, e - a);
          const auto f_head = f.segment(a, e - a);
          if (options.reduce == WindowReduce::max)
            dst = dst.cwiseMax((x_head.array().colwise() * f_head.array())
                                   .colwise()
                                   .maxCoeff()
                                   .transpose()
                                   .matrix());
          else
            dst.noalias() += x_head.transpose() * f_head;
        }
      }
    }
  };
  const Executor* exec = ws.executor();
  if (exec == nullptr || exec->workers() <= 1 || kv.kv_heads() <= 1) {
    for (index_t kvh = 0; kvh < kv.kv_heads(); ++kvh) group(kvh, ws);
    return;
  }
  ws.prepare_workers(exec->workers());
  detail::run_tasks(exec, kv.kv_heads(),
                    [&](index_t kvh, index_t worker) { group(kvh, ws.worker(worker)); });
}

/// `window_attention` as the `Scores` a policy hands to `choose`: one row per query head
/// (`[q_heads][n]` from `ws`, valid in the caller's frame), reduced over heads by `reduce`,
/// keyed to the view's layer. The scorer of TOVA, H2O, NACL, CORM and Cascade.
template <Element T>
Scores attention_scores(const KVCache<T>& kv, const QueryWindow<query_type<T>>& queries,
                        const WindowAttention& options, GroupReduce reduce, Workspace& ws,
                        Protected protect = {}) {
  const auto attention = ws.take<float>(queries.q_heads() * kv.tokens());
  window_attention(kv, queries, options, attention, ws);
  return {.values = attention,
          .rows = queries.q_heads(),
          .tokens = kv.tokens(),
          .kv_heads = kv.kv_heads(),
          .kind = ScoreRows::query_heads,
          .reduce = reduce,
          .protect = protect,
          .layer = kv.layer()};
}

}  // namespace kvevict
