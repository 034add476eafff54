// kvevict — KV-cache eviction policies for LLM inference.
// SPDX-License-Identifier: Apache-2.0
#pragma once

/// \file
/// \brief Windowed attention probabilities `softmax(Q Kᵀ / √d)` of a query window against a cache
/// view, reduced over the window's queries: the score every attention-based policy starts from.
///
/// **How it is computed.** Per KV head, the g query heads of its GQA group are stacked into one
/// `(g·w) × d` matrix, so every key block is read once per group and the logits come from one
/// GEMM per block. On AVX-512 targets with passes of ≥ 16 rows that GEMM is our own
/// `logits_block` (32 × 8 register tiles over the keys as they lie, the rows' maxima and
/// finiteness check fused into its epilogue; every block is first copied or converted into a
/// contiguous fp32 buffer, so the tiles read sequential memory whatever the cache's layout);
/// elsewhere it is Eigen's (a block of a dense fp32 cache mapped in place, a paged or half/bf16
/// block gathered and converted first). While a block's logits are hot in
/// cache they are turned into `exp(x − m)` with the running row maximum m (online softmax, as
/// in FlashAttention), and the row normalisers accumulate. A row's normaliser depends on every
/// key, so the window reduction `Σ_i A[i, j]` — a sum over rows with different normalisers —
/// can only happen after the last block: the exponentials of one group stay in scratch memory
/// and one final sweep applies each row's factor `exp(m_b − m) / l` and reduces over the
/// window (on AVX-512 targets column by column, every head of the pass from one read of the
/// column). This keeps the FLOPs at one GEMM (2·w·n·d per query head); the alternative that
/// keeps only O(g·w·block) would compute every logit twice.
///
/// Both paths compute the same logits bit for bit; their speed against the same run's sgemm is
/// `BM_Score_Window` in bench/ (figures and history: bench/README.md).

#include <Eigen/Core>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif
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

#if defined(__AVX512F__)
/// Whether `logits_block` is compiled in (AVX-512 targets); elsewhere Eigen's GEMM computes the
/// logits.
inline constexpr bool has_logits_kernel = true;

/// One tile of `logits_block`: rows r0 … r0 + 31 (fewer at the end, masked) × KT keys, the
/// accumulators in 2·KT registers over the whole depth d.
template <int KT>
inline void logits_tile(const float* qt, index_t ld, index_t rows, index_t r0, const float* k,
                        index_t kstride, index_t d, float* x, float* row_max, float* check) {
  __m512 c0[KT], c1[KT];
  for (int t = 0; t < KT; ++t) c0[t] = c1[t] = _mm512_setzero_ps();
  const float* q = qt + r0;
  for (index_t e = 0; e < d; ++e) {
    const __m512 a0 = _mm512_load_ps(q + e * ld), a1 = _mm512_load_ps(q + e * ld + 16);
    for (int t = 0; t < KT; ++t) {
      const __m512 b = _mm512_set1_ps(k[t * kstride + e]);
      c0[t] = _mm512_fmadd_ps(a0, b, c0[t]);
      c1[t] = _mm512_fmadd_ps(a1, b, c1[t]);
    }
  }
  const index_t left = rows - r0;
  const auto m0 = static_cast<__mmask16>(left >= 16 ? 0xFFFFu : (1u << left) - 1u);
  const auto m1 = static_cast<__mmask16>(left >= 32  ? 0xFFFFu
                                         : left > 16 ? (1u << (left - 16)) - 1u
                                                     : 0u);
  // the rows' running maxima and finiteness checks (Σ 0·x), while the logits are in registers
  __m512 x0 = _mm512_mask_loadu_ps(_mm512_setzero_ps(), m0, row_max + r0);
  __m512 x1 = _mm512_mask_loadu_ps(_mm512_setzero_ps(), m1, row_max + r0 + 16);
  __m512 z0 = _mm512_mask_loadu_ps(_mm512_setzero_ps(), m0, check + r0);
  __m512 z1 = _mm512_mask_loadu_ps(_mm512_setzero_ps(), m1, check + r0 + 16);
  const __m512 zero = _mm512_setzero_ps();
  for (int t = 0; t < KT; ++t) {
    float* col = x + t * rows + r0;
    _mm512_mask_storeu_ps(col, m0, c0[t]);
    _mm512_mask_storeu_ps(col + 16, m1, c1[t]);
    // as the scalar `a > m ? a : m`: a NaN logit leaves the maximum, the check catches it
    x0 = _mm512_mask_mov_ps(x0, _mm512_cmp_ps_mask(c0[t], x0, _CMP_GT_OQ), c0[t]);
    x1 = _mm512_mask_mov_ps(x1, _mm512_cmp_ps_mask(c1[t], x1, _CMP_GT_OQ), c1[t]);
    z0 = _mm512_fmadd_ps(c0[t], zero, z0);
    z1 = _mm512_fmadd_ps(c1[t], zero, z1);
  }
  _mm512_mask_storeu_ps(row_max + r0, m0, x0);
  _mm512_mask_storeu_ps(row_max + r0 + 16, m1, x1);
  _mm512_mask_storeu_ps(check + r0, m0, z0);
  _mm512_mask_storeu_ps(check + r0 + 16, m1, z1);
}

/// The logits of one key block, `x[j · rows + r] = Σ_e q[r, e] · k_j[e]` (column-major rows ×
/// count), from `qt`: the pass's scaled queries transposed (`qt[e · ld + r]`), zero-padded to
/// ld = rows rounded up to 32, 64-byte aligned; keys `k_j = k + j · kstride`, read where they lie
/// (no packing: the keys are read once per tile column). Each logit accumulates over e in order,
/// one FMA per term. Tiles of 32 rows × 8 keys keep a tile's 16 accumulators in registers and
/// its 32 query columns in L1. Its throughput against Eigen's: bench/README.md.
inline void logits_block(const float* qt, index_t ld, index_t rows, const float* k, index_t kstride,
                         index_t count, index_t d, float* x, float* row_max, float* check) {
  index_t j = 0;
  for (; j + 8 <= count; j += 8) {
    for (index_t r0 = 0; r0 < rows; r0 += 32)
      logits_tile<8>(qt, ld, rows, r0, k + j * kstride, kstride, d, x + j * rows, row_max, check);
  }
  const auto rest = [&]<int KT>() {
    for (index_t r0 = 0; r0 < rows; r0 += 32)
      logits_tile<KT>(qt, ld, rows, r0, k + j * kstride, kstride, d, x + j * rows, row_max, check);
  };
  switch (count - j) {
    case 7:
      rest.template operator()<7>();
      break;
    case 6:
      rest.template operator()<6>();
      break;
    case 5:
      rest.template operator()<5>();
      break;
    case 4:
      rest.template operator()<4>();
      break;
    case 3:
      rest.template operator()<3>();
      break;
    case 2:
      rest.template operator()<2>();
      break;
    case 1:
      rest.template operator()<1>();
      break;
    default:
      break;
  }
}

/// The final sweep's weighted reduction of one block for the g heads of a pass:
/// `out_h[j] += Σ_{r ∈ head h} x[j · rows + r] · f[r]` for j < count, where head h covers rows
/// [max(h·w, r0), min((h + 1)·w, r0 + rows)) − r0 of the pass (rows r0 …). Column by column, so
/// each column of exponentials is read once for all its heads (a GEMV per head would read the
/// block once per head).
inline void weighted_column_sums(const float* x, index_t rows, index_t r0, index_t w,
                                 const float* f, index_t count, float* const* out) {
  const index_t h0 = r0 / w, h1 = (r0 + rows - 1) / w;  // heads of this pass
  for (index_t j = 0; j < count; ++j) {
    const float* col = x + j * rows;
    for (index_t h = h0; h <= h1; ++h) {
      const index_t a = std::max(h * w, r0) - r0, e = std::min((h + 1) * w, r0 + rows) - r0;
      __m512 acc = _mm512_setzero_ps();
      index_t r = a;
      for (; r + 16 <= e; r += 16)
        acc = _mm512_fmadd_ps(_mm512_loadu_ps(col + r), _mm512_loadu_ps(f + r), acc);
      if (r < e) {
        const auto m = static_cast<__mmask16>((1u << (e - r)) - 1u);
        acc = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, col + r), _mm512_maskz_loadu_ps(m, f + r),
                              acc);
      }
      out[h - h0][j] += _mm512_reduce_add_ps(acc);
    }
  }
}
#else
inline constexpr bool has_logits_kernel = false;
inline void weighted_column_sums(const float*, index_t, index_t, index_t, const float*, index_t,
                                 float* const*) {}
inline void logits_block(const float*, index_t, index_t, const float*, index_t, index_t, index_t,
                         float*, float*, float*) {}
#endif

/// fp32 keys [first, first + count) of one head as a `d × count` column-major matrix: mapped in
/// place when `map_fp32`, the storage is fp32 and the range is one evenly strided run, otherwise
/// gathered and converted (half, bf16) or dequantized (quantized formats) into `buffer`
/// (≥ count · d floats). `window_attention` copies fp32 blocks for its own AVX-512 kernel
/// (`map_fp32` false): the copy's sequential pass brings the keys into cache ahead of the tiles.
template <Element T>
Eigen::Map<const Eigen::MatrixXf, 0, Eigen::OuterStride<>> key_block(const KVCache<T>& kv,
                                                                     index_t head, index_t first,
                                                                     index_t count, float* buffer,
                                                                     bool map_fp32 = true) {
  const index_t d = kv.head_dim();
  if constexpr (std::same_as<T, float>) {
    if (map_fp32) {
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

namespace kernels {
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
    // the own kernel where it is compiled in and the pass has rows enough to fill its tiles
    const bool own = detail::has_logits_kernel && pass_rows >= 16;
    const index_t ld = (pass_rows + 31) / 32 * 32;
    float* const qt = own ? scratch.take<float>(ld * d).data() : nullptr;
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
      if (own) {  // qᵀ, zero-padded to ld rows
        std::fill_n(qt, ld * d, 0.0f);
        for (index_t r = 0; r < rows; ++r)
          for (index_t e = 0; e < d; ++e) qt[e * ld + r] = qg(r, e);
      }
      for (index_t b = 0; b < n_blocks; ++b) {
        const index_t b0 = b * block, count = std::min(block, n - b0);
        const auto keys = detail::key_block(kv, kvh, b0, count, kbuf, /*map_fp32=*/!own);
        float* const x = exps + b0 * rows;
        // Row maxima, and the finiteness check, while the block is hot in cache (the own kernel:
        // in registers). A NaN or inf in a key or query makes at least one logit non-finite
        // (every key is visible to the last query), and 0 · (NaN or ±inf) is NaN.
        float* const bmax = block_max + b * rows;
        std::copy(m, m + rows, bmax);
        if (own) {
          detail::logits_block(qt, ld, rows, keys.data(), keys.outerStride(), count, d, x, bmax,
                               check);
        } else {
          Eigen::Map<Eigen::MatrixXf>(x, rows, count).noalias() = qg * keys;
          for (index_t j = 0; j < count; ++j) {
            const float* col = x + j * rows;
            for (index_t r = 0; r < rows; ++r) {
              bmax[r] = col[r] > bmax[r] ? col[r] : bmax[r];
              check[r] += col[r] * 0.0f;
            }
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
        if (own && options.reduce != WindowReduce::max) {
          float* dsts[64];  // the pass's heads: rows ≤ rows_per_pass, so at most rows / w + 2
          const index_t h0 = r0 / w, h1 = (r0 + rows - 1) / w;
          if (h1 - h0 < 64) {
            for (index_t hg = h0; hg <= h1; ++hg)
              dsts[hg - h0] = out.data() + (kvh * g + hg) * n + b0;
            detail::weighted_column_sums(exps + b0 * rows, rows, r0, w, factor, count, dsts);
            continue;
          }
        }
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
  kernels::window_attention(kv, queries, options, attention, ws);
  return Scores::of_query_heads(attention, queries.q_heads(), kv, reduce, protect);
}

}  // namespace kernels
}  // namespace kvevict
