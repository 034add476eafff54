// kvevict — KV-cache eviction policies for LLM inference.
// SPDX-License-Identifier: Apache-2.0
#pragma once

/// \file
/// \brief kvevict inside llama.cpp: prompt compression after prefill with any one-shot policy,
/// decode-time eviction with any streaming policy, periodic re-compression — over llama.cpp's
/// public API (`llama.h`, plus `gguf.h` to read W_o). No llama.cpp internals, no patch.
///
/// How it works. llama.cpp's KV cells hold a token for every layer and head at once, so the only
/// memory it can free is a whole token: the selection is one set per sequence, chosen across
/// layers (`Granularity::layers`) and evicted as position ranges with `llama_memory_seq_rm`.
/// What kvevict needs is captured through the context's eval callback (`cb_eval`):
/// - `Qcur-<il>` / `Kcur-<il>` (the ROPE nodes: post-RoPE, what the cache holds) and `Vcur-<il>`
///   for one-shot scoring: every layer's K, V and Q of the prompt, kept on the host;
/// - `kq_soft_max-<il>` (flash attention off) for decode-time eviction: each step's
///   probabilities over cache cells, for every layer and head;
/// - `cache_k_l0 (view)` (the SET_ROWS that writes K): the cell each new token went to, so
///   probability columns (cells) map to positions.
/// W_o (CriticalKV) comes from the GGUF file (`blk.<il>.attn_output.weight`).
///
/// Positions: kept tokens keep their original positions (default; holes are fine for
/// llama.cpp), or `PositionMode::shift` closes the gaps with `llama_memory_seq_add`, which
/// makes llama.cpp re-rotate the shifted keys at the next decode.
///
/// What it cannot do in llama.cpp: per-head eviction (a cell is shared by every head and layer),
/// and page-granular release (the cache is not paged). One sequence per context.

#include <ggml-backend.h>
#include <ggml.h>
#include <gguf.h>
#include <llama.h>

#include <kvevict/kvevict.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

namespace kvevict::llama {

/// The attention shape of a llama-architecture model.
struct ModelShape {
  index_t layers = 0, heads = 0, kv_heads = 0, head_dim = 0, embd = 0, vocab = 0;
  index_t context = 0;  ///< training context
  double rope_base = 10000.0;

  static ModelShape of(const llama_model* model) {
    ModelShape s;
    s.layers = llama_model_n_layer(model);
    s.heads = llama_model_n_head(model);
    s.kv_heads = llama_model_n_head_kv(model);
    s.embd = llama_model_n_embd(model);
    s.head_dim = s.embd / s.heads;
    s.vocab = llama_vocab_n_tokens(llama_model_get_vocab(model));
    s.context = llama_model_n_ctx_train(model);
    char buf[64];
    if (llama_model_meta_val_str(model, "llama.rope.freq_base", buf, sizeof buf) > 0)
      s.rope_base = std::stod(buf);
    return s;
  }
};

/// What the eval callback captures, per layer, for the tokens decoded since `clear`: post-RoPE
/// queries and keys and the values (fp32, `[token][head][head_dim]`), the cache cell of each
/// token, and — when `probabilities` is on — the last ubatch's attention over cells.
class Capture {
 public:
  explicit Capture(const ModelShape& shape) : shape_(shape) {
    q_.resize(static_cast<std::size_t>(shape.layers));
    k_.resize(q_.size());
    v_.resize(q_.size());
    probs_.resize(q_.size());
  }

  bool qkv = true;             ///< capture Q, K, V
  bool probabilities = false;  ///< capture `kq_soft_max` (flash attention must be off)

  /// Forgets the captured tokens (capacity kept).
  void clear() {
    for (auto* v : {&q_, &k_, &v_})
      for (auto& x : *v) x.clear();
    cells_.clear();
  }

  index_t tokens() const noexcept { return static_cast<index_t>(cells_.size()); }
  const std::vector<float>& queries(index_t layer) const {
    return q_[static_cast<std::size_t>(layer)];
  }
  const std::vector<float>& keys(index_t layer) const {
    return k_[static_cast<std::size_t>(layer)];
  }
  const std::vector<float>& values(index_t layer) const {
    return v_[static_cast<std::size_t>(layer)];
  }
  float* mutable_queries(index_t layer) { return q_[static_cast<std::size_t>(layer)].data(); }
  float* mutable_keys(index_t layer) { return k_[static_cast<std::size_t>(layer)].data(); }
  /// The cache cell of each captured token, in decode order.
  const std::vector<std::int64_t>& cells() const noexcept { return cells_; }
  /// The last ubatch's probabilities of layer l: `[head][ubatch token][cells]`, and the cell count.
  const std::vector<float>& probabilities_of(index_t layer) const {
    return probs_[static_cast<std::size_t>(layer)];
  }
  index_t probability_cells() const noexcept { return n_kv_; }

  /// Drops the captured Q/K/V of tokens whose `keep[i]` is 0 (after an eviction), keeping the
  /// others in order.
  void keep_only(std::span<const std::uint8_t> keep) {
    const auto kept = [&](std::vector<float>& x, index_t width) {
      index_t out = 0;
      for (index_t i = 0; i < static_cast<index_t>(keep.size()); ++i)
        if (keep[static_cast<std::size_t>(i)] != 0) {
          if (out != i) std::copy_n(x.begin() + i * width, width, x.begin() + out * width);
          ++out;
        }
      x.resize(static_cast<std::size_t>(out * width));
    };
    for (index_t l = 0; l < shape_.layers; ++l) {
      kept(q_[static_cast<std::size_t>(l)], shape_.heads * shape_.head_dim);
      kept(k_[static_cast<std::size_t>(l)], shape_.kv_heads * shape_.head_dim);
      kept(v_[static_cast<std::size_t>(l)], shape_.kv_heads * shape_.head_dim);
    }
    std::size_t out = 0;
    for (std::size_t i = 0; i < keep.size(); ++i)
      if (keep[i] != 0) cells_[out++] = cells_[i];
    cells_.resize(out);
  }

  /// The `cb_eval` of a `llama_context_params` whose `cb_eval_user_data` is this capture.
  static bool callback(ggml_tensor* t, bool ask, void* user) {
    return static_cast<Capture*>(user)->dispatch(t, ask);
  }

  /// Chains the engine's own eval callback behind the capture, so that an engine which already
  /// uses `cb_eval` (its own debugging, imatrix-like statistics) keeps it: asked about a tensor,
  /// the pair wants it when either does; handed one, the capture reads it if it asked, then
  /// `next` sees it if it asked, and `next`'s answer (false: stop the graph) is the pair's.
  /// `next` null: the capture alone. The capture never changes a tensor.
  void chain(ggml_backend_sched_eval_callback next, void* next_user) noexcept {
    next_ = next;
    next_user_ = next_user;
  }

 private:
  enum class Kind { none, q, k, v, probs, cells };

  static bool named(const ggml_tensor* t, std::string_view prefix, index_t& layer) {
    const std::string_view name(t->name);
    if (name.size() <= prefix.size() || name.substr(0, prefix.size()) != prefix) return false;
    const std::string_view rest = name.substr(prefix.size());
    index_t v = 0;
    for (char c : rest) {
      if (c < '0' || c > '9') return false;
      v = v * 10 + (c - '0');
    }
    layer = v;
    return true;
  }

  Kind kind_of(const ggml_tensor* t, index_t& layer) const {
    if (qkv && t->op == GGML_OP_ROPE && named(t, "Qcur-", layer)) return Kind::q;
    if (qkv && t->op == GGML_OP_ROPE && named(t, "Kcur-", layer)) return Kind::k;
    if (qkv && t->op == GGML_OP_RESHAPE && named(t, "Vcur-", layer)) return Kind::v;
    if (probabilities && t->op == GGML_OP_SOFT_MAX && named(t, "kq_soft_max-", layer))
      return Kind::probs;
    if (t->op == GGML_OP_SET_ROWS && std::string_view(t->name) == "cache_k_l0 (view)") {
      layer = 0;
      return Kind::cells;
    }
    return Kind::none;
  }

  bool dispatch(ggml_tensor* t, bool ask) {
    if (next_ == nullptr) return on_tensor(t, ask);
    if (ask) return on_tensor(t, true) || next_(t, true, next_user_);
    on_tensor(t, false);  // reads only what it asked for
    return next_(t, true, next_user_) ? next_(t, false, next_user_) : true;
  }

  bool on_tensor(ggml_tensor* t, bool ask) {
    index_t layer = -1;
    const Kind kind = kind_of(t, layer);
    if (ask) return kind != Kind::none;
    if (kind == Kind::none || layer < 0 || layer >= shape_.layers) return true;
    const auto l = static_cast<std::size_t>(layer);
    switch (kind) {
      case Kind::q:
        append(t, q_[l]);
        break;
      case Kind::k:
        append(t, k_[l]);
        break;
      case Kind::v:
        append(t, v_[l]);
        break;
      case Kind::probs:
        n_kv_ = t->ne[0];
        probs_[l].clear();
        append(t, probs_[l]);
        break;
      case Kind::cells: {  // src[1]: I64 cell index of every ubatch token
        const ggml_tensor* idx = t->src[1];
        std::vector<std::int64_t> tmp(static_cast<std::size_t>(idx->ne[0]));
        read(idx, tmp.data(), tmp.size() * sizeof(std::int64_t));
        cells_.insert(cells_.end(), tmp.begin(), tmp.end());
        break;
      }
      case Kind::none:
        break;
    }
    return true;
  }

  /// Appends a contiguous F32 tensor's elements (the CPU backend's are host memory).
  static void append(const ggml_tensor* t, std::vector<float>& out) {
    if (t->type != GGML_TYPE_F32 || !ggml_is_contiguous(t))
      detail::fail("capture", "contiguous F32 activations", ggml_type_name(t->type), " ", t->name);
    const std::size_t n = static_cast<std::size_t>(ggml_nelements(t));
    const std::size_t at = out.size();
    out.resize(at + n);
    read(t, out.data() + at, n * sizeof(float));
  }

  static void read(const ggml_tensor* t, void* dst, std::size_t bytes) {
    if (t->buffer == nullptr || ggml_backend_buffer_is_host(t->buffer))
      std::memcpy(dst, t->data, bytes);
    else
      ggml_backend_tensor_get(t, dst, 0, bytes);
  }

  ModelShape shape_;
  std::vector<std::vector<float>> q_, k_, v_, probs_;
  std::vector<std::int64_t> cells_;
  index_t n_kv_ = 0;
  ggml_backend_sched_eval_callback next_ = nullptr;
  void* next_user_ = nullptr;
};

/// Each layer's output projection W_o as fp32 `[embd][heads · head_dim]` (PyTorch's
/// `o_proj.weight` layout), read from the model's GGUF file (`blk.<il>.attn_output.weight`,
/// F32 or F16). llama.h has no tensor getter; gguf.h reads the file directly.
class OutputProjections {
 public:
  OutputProjections(const std::string& gguf_path, const ModelShape& shape) : shape_(shape) {
    ggml_context* ctx = nullptr;
    gguf_init_params params{/*no_alloc=*/false, /*ctx=*/&ctx};
    gguf_context* g = gguf_init_from_file(gguf_path.c_str(), params);
    if (g == nullptr) detail::fail("model", "a readable GGUF file", "'", gguf_path, "'");
    const auto cleanup = [&] {
      gguf_free(g);
      ggml_free(ctx);
    };
    const index_t in = shape.heads * shape.head_dim, out = shape.embd;
    for (index_t l = 0; l < shape.layers; ++l) {
      const std::string name = "blk." + std::to_string(l) + ".attn_output.weight";
      const ggml_tensor* t = ggml_get_tensor(ctx, name.c_str());
      if (t == nullptr || t->ne[0] != in || t->ne[1] != out ||
          (t->type != GGML_TYPE_F32 && t->type != GGML_TYPE_F16)) {
        cleanup();
        detail::fail("model", detail::cat("an F32/F16 tensor ", name, " of [", in, ", ", out, "]"),
                     t == nullptr ? "none" : ggml_type_name(t->type));
      }
      std::vector<float> w(static_cast<std::size_t>(in * out));
      if (t->type == GGML_TYPE_F32)
        std::memcpy(w.data(), t->data, w.size() * sizeof(float));
      else
        ggml_fp16_to_fp32_row(static_cast<const ggml_fp16_t*>(t->data), w.data(), in * out);
      weights_.push_back(std::move(w));
    }
    cleanup();
  }

  /// W_o of layer l as a view for CriticalKV.
  OutputProjection layer(index_t l) const {
    return OutputProjection::from_linear_weight(weights_[static_cast<std::size_t>(l)].data(),
                                                shape_.heads, shape_.head_dim, shape_.embd);
  }
  const std::vector<float>& weight(index_t l) const {
    return weights_[static_cast<std::size_t>(l)];
  }

 private:
  ModelShape shape_;
  std::vector<std::vector<float>> weights_;
};

/// −log softmax(logits)[next] in nats, computed in double with the maximum subtracted.
inline double token_nll(std::span<const float> logits, llama_token next) {
  const float mx = *std::max_element(logits.begin(), logits.end());
  double sum = 0;
  for (float x : logits) sum += std::exp(static_cast<double>(x - mx));
  return std::log(sum) + mx - logits[static_cast<std::size_t>(next)];
}

/// Where kept tokens' positions go after an eviction.
enum class PositionMode {
  keep,   ///< original positions, holes left in place (default)
  shift,  ///< gaps closed with `llama_memory_seq_add` (llama.cpp re-rotates the keys)
};

/// What `evict` did to one sequence.
struct Eviction {
  index_t evicted = 0;                  ///< tokens removed from the sequence
  std::vector<std::int64_t> positions;  ///< the kept tokens' positions now, in order
};

/// Removes from sequence `seq` of `mem` the tokens `keep` marks 0: `positions[i]` is the position
/// of the sequence's i-th cached token (ascending), `keep[i]` whether it stays. Each run of
/// consecutive evicted positions is one `llama_memory_seq_rm(mem, seq, …)`; with
/// `PositionMode::shift` every run of kept tokens then moves left by what was removed before it
/// (`llama_memory_seq_add`, llama.cpp re-rotates their keys), so the positions become contiguous.
/// Only `seq`'s cells change: every other sequence of the context keeps its cells, and with
/// flash attention off its logits bit for bit (tested: four sequences in one unified buffer).
/// With llama.cpp's CPU flash attention, which accumulates V in fp16, a later token placed in a
/// freed cell sums in another order: the other sequences' logits then move by rounding (up to
/// 0.043 on the random-weight tiny model).
///
/// Validates before it changes anything: `positions` ascending and as long as `keep`; an error
/// names the argument. Throws if llama.cpp refuses a removal (a recurrent memory that cannot
/// remove a middle run); what was removed before it stays removed, as llama.cpp did it.
/// O(n) plus llama.cpp's cost per call.
inline Eviction evict(llama_memory_t mem, llama_seq_id seq, std::span<const std::int64_t> positions,
                      std::span<const std::uint8_t> keep, PositionMode mode = PositionMode::keep) {
  const index_t n = static_cast<index_t>(positions.size());
  if (static_cast<index_t>(keep.size()) != n)
    detail::fail("keep", detail::cat("one flag per cached token (", n, ")"), keep.size());
  for (index_t i = 1; i < n; ++i)
    if (positions[static_cast<std::size_t>(i)] <= positions[static_cast<std::size_t>(i - 1)])
      detail::fail("positions", "ascending positions", "position ",
                   positions[static_cast<std::size_t>(i)], " at ", i, " after ",
                   positions[static_cast<std::size_t>(i - 1)]);
  const auto at = [&](index_t i) { return positions[static_cast<std::size_t>(i)]; };
  const auto kept = [&](index_t i) { return keep[static_cast<std::size_t>(i)] != 0; };
  Eviction out;
  for (index_t i = 0; i < n;) {  // evicted runs of consecutive positions → one seq_rm each
    if (kept(i)) {
      ++i;
      continue;
    }
    index_t j = i + 1;
    while (j < n && !kept(j) && at(j) == at(j - 1) + 1) ++j;
    if (!llama_memory_seq_rm(mem, seq, static_cast<llama_pos>(at(i)),
                             static_cast<llama_pos>(at(j - 1) + 1)))
      detail::fail("seq_rm", "a memory that removes any range", "refused [", at(i), ", ",
                   at(j - 1) + 1, ") of sequence ", seq);
    out.evicted += j - i;
    i = j;
  }
  std::int64_t removed = 0;
  for (index_t i = 0; i < n; ++i) {
    if (!kept(i)) {
      ++removed;
      continue;
    }
    index_t j = i;  // the run of kept tokens that starts here
    while (j + 1 < n && kept(j + 1)) ++j;
    const std::int64_t delta = mode == PositionMode::shift ? -removed : 0;
    if (delta != 0)
      llama_memory_seq_add(mem, seq, static_cast<llama_pos>(at(i)),
                           static_cast<llama_pos>(at(j) + 1), static_cast<llama_pos>(delta));
    for (index_t k = i; k <= j; ++k) out.positions.push_back(at(k) + delta);
    i = j;
  }
  return out;
}

/// `evict` for a `Selection` of one set over the sequence's cached tokens in position order
/// (`Granularity::layers` or `shared`: a cell holds every layer and head).
inline Eviction evict(llama_context* ctx, llama_seq_id seq, std::span<const std::int64_t> positions,
                      const Selection& sel, PositionMode mode = PositionMode::keep) {
  sel.validate();
  if (!sel.shared())
    detail::fail("selection", "one set for every head (granularity layers or shared)",
                 "a set per head");
  if (sel.tokens() != static_cast<index_t>(positions.size()))
    detail::fail("selection", detail::cat("a choice over the ", positions.size(), " cached tokens"),
                 sel.tokens());
  std::vector<std::uint8_t> keep(positions.size(), 0);
  for (token_t t : sel.kept(0)) keep[static_cast<std::size_t>(t)] = 1;
  return evict(llama_get_memory(ctx), seq, positions, keep, mode);
}

/// Time spent, in seconds.
struct Timing {
  double kvevict = 0;  ///< scoring, choosing, bookkeeping
  double llama = 0;    ///< llama_decode and memory calls
  double prefill = 0;  ///< the prompt's llama_decode alone
};

/// One sequence in one llama.cpp context, with kvevict deciding what its cache keeps.
///
/// **Example** (prompt compression, then greedy generation):
/// \code
/// kvevict::llama::Session s(model, "tiny.gguf", {.n_ctx = 2048});
/// s.prefill(s.tokenize(prompt));
/// s.compress(kvevict::parse_policy("snapkv"), kvevict::Budget::ratio(0.2));
/// std::vector<llama_token> answer = s.generate(32);  // greedy tokens
/// \endcode
class Session {
 public:
  struct Options {
    index_t n_ctx = 0;      ///< 0: the model's training context
    index_t n_batch = 512;  ///< tokens per llama_decode of the prompt
    index_t threads = 2;
    bool capture_qkv = true;  ///< keep every layer's Q/K/V on the host (one-shot policies)
    /// The cache's types: f16 (llama.cpp's default), f32, or quantized (`--cache-type-k q8_0`).
    /// A quantized V needs llama.cpp's flash attention, which never materialises
    /// `kq_soft_max`: such a session compresses prompts (one-shot policies, from the captured
    /// fp32 Q/K/V) but refuses `stream`. llama.cpp 80fb11ac also rotates K and V by a
    /// Hadamard matrix before a quantized cache when head_dim % 64 == 0 (`attn_rot_k`); the
    /// scores use the captured unrotated vectors, whose dot products the rotation preserves.
    ggml_type type_k = GGML_TYPE_F16, type_v = GGML_TYPE_F16;
  };

  Session(llama_model* model, std::string gguf_path, const Options& options)
      : model_(model),
        path_(std::move(gguf_path)),
        shape_(ModelShape::of(model)),
        capture_(shape_) {
    capture_.qkv = capture_default_ = options.capture_qkv;
    llama_context_params cp = llama_context_default_params();
    cp.n_ctx = static_cast<std::uint32_t>(options.n_ctx > 0 ? options.n_ctx : shape_.context);
    cp.n_batch = static_cast<std::uint32_t>(options.n_batch);
    cp.n_ubatch = static_cast<std::uint32_t>(options.n_batch);
    cp.n_threads = cp.n_threads_batch = static_cast<std::int32_t>(options.threads);
    // kq_soft_max must exist for decode-time eviction: flash attention only where llama.cpp
    // requires it (a quantized V cache).
    flash_ = ggml_is_quantized(options.type_v);
    cp.flash_attn_type = flash_ ? LLAMA_FLASH_ATTN_TYPE_ENABLED : LLAMA_FLASH_ATTN_TYPE_DISABLED;
    cp.cb_eval = &Capture::callback;
    cp.cb_eval_user_data = &capture_;
    cp.type_k = options.type_k;
    cp.type_v = options.type_v;
    type_v_ = options.type_v;
    cp.no_perf = true;
    ctx_ = llama_init_from_model(model, cp);
    if (ctx_ == nullptr) detail::fail("context", "a llama.cpp context for the model", "none");
    n_batch_ = options.n_batch;
  }
  ~Session() {
    if (ctx_ != nullptr) llama_free(ctx_);
  }
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;

  const ModelShape& shape() const noexcept { return shape_; }
  llama_context* context() noexcept { return ctx_; }
  const Capture& capture() const noexcept { return capture_; }
  const Timing& timing() const noexcept { return timing_; }
  /// Tokens in the cache (live positions).
  index_t cached() const noexcept { return static_cast<index_t>(positions_.size()); }
  /// The original index (0 = the first prompt token) of every cached token, ascending.
  const std::vector<std::int64_t>& kept() const noexcept { return original_; }
  /// The position llama.cpp holds each cached token at (equal to `kept()` unless shifted).
  const std::vector<std::int64_t>& positions() const noexcept { return positions_; }
  /// Tokens evicted so far.
  index_t evicted() const noexcept { return evicted_; }

  std::vector<llama_token> tokenize(const std::string& text, bool bos = true) const {
    const llama_vocab* vocab = llama_model_get_vocab(model_);
    std::vector<llama_token> out(text.size() + 8);
    int32_t n = llama_tokenize(vocab, text.data(), static_cast<int32_t>(text.size()), out.data(),
                               static_cast<int32_t>(out.size()), bos, false);
    if (n < 0) {
      out.resize(static_cast<std::size_t>(-n));
      n = llama_tokenize(vocab, text.data(), static_cast<int32_t>(text.size()), out.data(),
                         static_cast<int32_t>(out.size()), bos, false);
    }
    out.resize(static_cast<std::size_t>(std::max(n, 0)));
    return out;
  }

  std::string piece(llama_token t) const {
    char buf[256];
    const int32_t n =
        llama_token_to_piece(llama_model_get_vocab(model_), t, buf, sizeof buf, 0, false);
    return n > 0 ? std::string(buf, static_cast<std::size_t>(n)) : std::string();
  }

  /// Decodes `tokens` after what the cache holds (the prompt, in batches of n_batch), capturing
  /// every layer's Q/K/V. Returns the logits of the last token.
  std::span<const float> prefill(std::span<const llama_token> tokens) {
    const auto t0 = clock::now();
    for (std::size_t i = 0; i < tokens.size(); i += static_cast<std::size_t>(n_batch_)) {
      const std::size_t count =
          std::min<std::size_t>(static_cast<std::size_t>(n_batch_), tokens.size() - i);
      decode(tokens.subspan(i, count));
    }
    const double secs = seconds_since(t0);
    timing_.prefill += secs;
    return logits();
  }

  /// Decodes one token after the cache (its logits are returned).
  std::span<const float> step(llama_token token) {
    decode(std::span<const llama_token>(&token, 1));
    return logits();
  }

  /// Decodes `tokens` after the cache (in batches of n_batch) and returns the negative
  /// log-likelihood in nats of each token given everything before it — the first from the
  /// current `logits()` — summed. Perplexity of a continuation; not with a stream attached.
  double nll(std::span<const llama_token> tokens) {
    if (stream_) detail::fail("nll", "a session with no stream attached", "a stream");
    double total = 0;
    std::vector<float> prev(logits().begin(), logits().end());
    for (std::size_t i = 0; i < tokens.size(); i += static_cast<std::size_t>(n_batch_)) {
      const std::size_t count =
          std::min<std::size_t>(static_cast<std::size_t>(n_batch_), tokens.size() - i);
      total += token_nll(prev, tokens[i]);
      decode(tokens.subspan(i, count), true);
      for (std::size_t j = 0; j + 1 < count; ++j)
        total += token_nll({llama_get_logits_ith(ctx_, static_cast<int32_t>(j)),
                            static_cast<std::size_t>(shape_.vocab)},
                           tokens[i + j + 1]);
      const float* last = llama_get_logits_ith(ctx_, static_cast<int32_t>(count - 1));
      prev.assign(last, last + shape_.vocab);
    }
    return total;
  }

  /// The logits of the last decoded token (after `restore`: the snapshot's).
  std::span<const float> logits() const {
    if (!restored_logits_.empty()) return restored_logits_;
    const float* l = llama_get_logits_ith(ctx_, -1);
    return {l, static_cast<std::size_t>(shape_.vocab)};
  }

  /// Greedy continuation of `n` tokens (with the streaming policy, if one is attached).
  std::vector<llama_token> generate(index_t n) {
    std::vector<llama_token> out;
    for (index_t i = 0; i < n; ++i) {
      const auto l = logits();
      const auto best = static_cast<llama_token>(std::max_element(l.begin(), l.end()) - l.begin());
      out.push_back(best);
      if (llama_vocab_is_eog(llama_model_get_vocab(model_), best)) break;
      step(best);
    }
    return out;
  }

  /// `kvevict::parse_policy(spec, options)` for this model: a policy that reads W_o (CriticalKV)
  /// gets layer 0's projection from the GGUF to construct with, and `compress` substitutes each
  /// layer's own when it scores that layer. Such a policy is valid while this session lives.
  AnyPolicy policy(std::string_view spec, PolicyOptions options = {}) {
    const std::string_view name = spec.substr(0, spec.find(':'));
    if ((policy_info(name).reads & reads_output_projection) != 0) {
      if (!wo_) wo_.emplace(path_, shape_);
      wo0_.emplace(wo_->layer(0));
      options.wo = &*wo0_;
    }
    return parse_policy(spec, options);
  }

  /// Compresses the cache to `budget` with a one-shot policy, choosing across layers: every
  /// layer's scores (from the captured Q/K/V, the last `window` queries as the observation
  /// window — or all of them when `window` is 0 — and W_o for policies that read it) combined
  /// into one set, then `llama_memory_seq_rm` per evicted range. Returns the selection.
  const Selection& compress(const AnyPolicy& policy, Budget budget,
                            PositionMode mode = PositionMode::keep, index_t window = 0,
                            LayerCombine combine = LayerCombine::mean) {
    const auto t0 = clock::now();
    const LayerScores scores = score(policy, window);
    timing_.kvevict += seconds_since(t0);
    return compress(policy, scores, budget, mode, combine);
  }

  /// Every layer's scores of a one-shot policy over the cached tokens, owned: what `compress`
  /// chooses from. Scoring once and choosing several budgets from a restored `Snapshot` is how
  /// `kvevict-llama passkey` sweeps budgets (a policy's scores do not depend on the budget).
  class LayerScores {
   public:
    LayerScores() = default;
    // Move-only: the scores are spans into `owned_`'s buffers, which a move keeps (a copy would
    // point into the original's).
    LayerScores(LayerScores&&) noexcept = default;
    LayerScores& operator=(LayerScores&&) noexcept = default;
    LayerScores(const LayerScores&) = delete;
    LayerScores& operator=(const LayerScores&) = delete;
    std::span<const Scores> layers() const noexcept { return layers_; }
    index_t tokens() const noexcept { return layers_.empty() ? 0 : layers_[0].tokens; }

   private:
    friend class Session;
    std::vector<Scores> layers_;
    std::vector<std::vector<float>> owned_;
  };

  /// `LayerScores` of `policy` (see `compress` for `window`).
  LayerScores score(const AnyPolicy& policy, index_t window = 0) {
    const index_t n = cached();
    if (!capture_.qkv) detail::fail("compress", "a session that captures Q/K/V", "capture off");
    if (capture_.tokens() != n)
      detail::fail("compress", detail::cat("the captured Q/K/V of the ", n, " cached tokens"),
                   capture_.tokens());
    if ((info_of(policy).reads & reads_output_projection) != 0 && !wo_) wo_.emplace(path_, shape_);
    const index_t w = window > 0 ? std::min(window, n) : n;
    LayerScores out;
    out.layers_.reserve(static_cast<std::size_t>(shape_.layers));
    Workspace::Frame frame(ws_);
    const index_t d = shape_.head_dim;
    const auto own = [&](std::span<const float> x) -> std::span<const float> {
      if (x.empty()) return x;
      out.owned_.emplace_back(x.begin(), x.end());
      return out.owned_.back();
    };
    for (index_t l = 0; l < shape_.layers; ++l) {
      const KVCache<float> kv =
          KVCache<float>(
              Storage<float>::nhd(const_cast<float*>(capture_.keys(l).data()), shape_.kv_heads, d),
              Storage<float>::nhd(const_cast<float*>(capture_.values(l).data()), shape_.kv_heads,
                                  d),
              Shape{.kv_heads = shape_.kv_heads, .tokens = n, .head_dim = d})
              .with_layer(l);
      const QueryWindow<float> q(capture_.queries(l).data() + (n - w) * shape_.heads * d,
                                 shape_.heads, w, d, d, shape_.heads * d);
      Scores sc = score_layer(policy, kv, q, l);
      sc.values = own(sc.values);
      sc.second = own(sc.second);
      out.layers_.push_back(sc);
    }
    return out;
  }

  /// Compresses the cache to `budget` choosing from `scores` (from `score` on these same
  /// cached tokens, e.g. before a `restore`), then `llama_memory_seq_rm` per evicted range.
  const Selection& compress(const AnyPolicy& policy, const LayerScores& scores, Budget budget,
                            PositionMode mode = PositionMode::keep,
                            LayerCombine combine = LayerCombine::mean) {
    if (scores.tokens() != cached())
      detail::fail("scores", detail::cat("scores of the ", cached(), " cached tokens"),
                   scores.tokens(), " tokens");
    const auto t0 = clock::now();
    policy.choose_layers(scores.layers(), budget, selection_, ws_, combine);
    timing_.kvevict += seconds_since(t0);
    apply(selection_, mode);
    return selection_;
  }

  // ---- decode-time eviction ---------------------------------------------------------------

  /// Attaches a streaming policy that keeps the cache at `budget` tokens (budget-free policies:
  /// `budget` is the slot capacity) while tokens are decoded with `step` / `generate`: each
  /// step's attention probabilities of every layer and head (llama.cpp's own `kq_soft_max`)
  /// feed one stream whose query heads are all layers' heads, so its evictions are one set for
  /// the sequence. Call before the first token: the prompt is then decoded token by token.
  void stream(const AnyPolicy& policy, index_t budget, PositionMode mode = PositionMode::keep) {
    if (flash_)
      detail::fail("type_v",
                   "an unquantized V cache for decode-time eviction (a quantized one runs "
                   "flash attention, which gives no attention probabilities)",
                   ggml_type_name(type_v_));
    const bool free = budget_free(policy);
    stream_.emplace(start(policy, {.kv_heads = 1,
                                   .q_heads = shape_.layers * shape_.heads,
                                   .budget = free ? 0 : budget,
                                   .capacity = free ? budget + 1 : 0}));
    capture_.probabilities = true;
    stream_mode_ = mode;
    const index_t slots = stream_->slots();
    slot_cell_.assign(static_cast<std::size_t>(slots), -1);
    slot_original_.assign(static_cast<std::size_t>(slots), -1);
    rows_.assign(static_cast<std::size_t>(shape_.layers * shape_.heads * slots), 0.0f);
  }

  /// The attached stream, if any.
  const std::optional<AnyStream>& attached() const noexcept { return stream_; }

  /// Called after every decode-time step with the token's original index, the rows the stream
  /// observed and what it evicted (for inspection and tests).
  std::function<void(std::int64_t, const AttentionRows&, const Evictions&)> on_step;

  /// Periodic re-compression with a one-shot policy during generation: whenever the cache holds
  /// `budget + every` tokens, `compress` back to `budget` (observation window `window`).
  void recompress_every(const AnyPolicy& policy, index_t budget, index_t every, index_t window,
                        PositionMode mode = PositionMode::keep) {
    periodic_.emplace(Periodic{policy, budget, every, window, mode});
  }

  /// The sequence's cache (llama.cpp's own `llama_state_seq_get_data`) and the session's record
  /// of it (captured Q/K/V, positions), to come back to with `restore`: one prefill, then every
  /// policy and budget from the same state, as `kvevict-llama passkey` does.
  struct Snapshot {
    std::vector<std::uint8_t> state;
    Capture capture;
    std::vector<std::int64_t> positions, original;
    std::vector<float> logits;  ///< of the last decoded token
    std::int64_t next_original = 0;
    index_t evicted = 0;
  };

  /// The current state (see `Snapshot`). Not while a stream or periodic re-compression is
  /// attached (their state is not part of a snapshot).
  Snapshot save() const {
    if (stream_ || periodic_)
      detail::fail("save", "a session with no stream or periodic re-compression attached",
                   stream_ ? "a stream" : "periodic re-compression");
    Snapshot s{.state = std::vector<std::uint8_t>(llama_state_seq_get_size(ctx_, 0)),
               .capture = capture_,
               .positions = positions_,
               .original = original_,
               .logits = positions_.empty() ? std::vector<float>()
                                            : std::vector<float>(logits().begin(), logits().end()),
               .next_original = next_original_,
               .evicted = evicted_};
    const std::size_t n = llama_state_seq_get_data(ctx_, s.state.data(), s.state.size(), 0);
    if (n != s.state.size())
      detail::fail("llama_state_seq_get_data", detail::cat(s.state.size(), " bytes"), n);
    return s;
  }

  /// Returns to `snapshot` (taken from this session): the sequence's cells are replaced by the
  /// snapshot's, any attached stream or periodic re-compression is detached.
  void restore(const Snapshot& snapshot) {
    llama_memory_seq_rm(llama_get_memory(ctx_), 0, -1, -1);
    const std::size_t n =
        llama_state_seq_set_data(ctx_, snapshot.state.data(), snapshot.state.size(), 0);
    if (n == 0) detail::fail("llama_state_seq_set_data", "the snapshot restored", "0 bytes read");
    stream_.reset();
    periodic_.reset();
    capture_ = snapshot.capture;
    capture_.probabilities = false;
    positions_ = snapshot.positions;
    original_ = snapshot.original;
    restored_logits_ = snapshot.logits;
    next_original_ = snapshot.next_original;
    evicted_ = snapshot.evicted;
  }

  /// Stops (or resumes) capturing Q/K/V in the following decodes: decoding is faster without
  /// (the eval callback then splits llama.cpp's graph at fewer nodes), for a continuation no
  /// later `compress` needs. `compress` refuses until a `restore` or `reset` (which bring back
  /// a snapshot's capture, or the session's option).
  void capture_qkv(bool on) {
    if (on && !capture_.qkv) capture_.clear();  // what was not captured cannot be resumed
    capture_.qkv = on;
  }

  /// Empties the sequence's cache and detaches any stream or periodic re-compression: the
  /// session is as new (its context and model stay).
  void reset() {
    llama_memory_seq_rm(llama_get_memory(ctx_), 0, -1, -1);
    stream_.reset();
    periodic_.reset();
    capture_.clear();
    capture_.qkv = capture_default_;
    capture_.probabilities = false;
    positions_.clear();
    original_.clear();
    restored_logits_.clear();
    next_original_ = 0;
    evicted_ = 0;
  }

  /// Removes the cached tokens whose original indices are not in `keep_original` (ascending),
  /// as `compress` does after choosing. For tests and engines with their own choice.
  void evict_to(std::span<const std::int64_t> keep_original,
                PositionMode mode = PositionMode::keep) {
    Selection sel;
    sel.reset(1, cached(), true);
    std::vector<token_t> idx;
    std::size_t j = 0;
    for (index_t i = 0; i < cached() && j < keep_original.size(); ++i)
      if (original_[static_cast<std::size_t>(i)] == keep_original[j]) {
        idx.push_back(static_cast<token_t>(i));
        ++j;
      }
    auto h = sel.add_head(static_cast<index_t>(idx.size()));
    std::copy(idx.begin(), idx.end(), h.begin());
    apply(sel, mode);
  }

 private:
  using clock = std::chrono::steady_clock;
  static double seconds_since(clock::time_point t0) {
    return std::chrono::duration<double>(clock::now() - t0).count();
  }

  struct Periodic {
    AnyPolicy policy;
    index_t budget, every, window;
    PositionMode mode;
  };

  template <Element T>
  Scores score_layer(const AnyPolicy& policy, const KVCache<T>& kv,
                     const QueryWindow<query_type<T>>& q, index_t l) {
    if ((policy.info().reads & reads_output_projection) == 0)
      return policy.score(kv, q, Granularity::layers, ws_);
    // The same parameters with this layer's W_o.
    return policy.with_output_projection(wo_->layer(l)).score(kv, q, Granularity::layers, ws_);
  }

  void decode(std::span<const llama_token> tokens, bool all_logits = false) {
    const index_t n = static_cast<index_t>(tokens.size());
    llama_batch batch = llama_batch_init(static_cast<int32_t>(n), 0, 1);
    const std::int64_t first = positions_.empty() ? 0 : positions_.back() + 1;
    for (index_t i = 0; i < n; ++i) {
      batch.token[i] = tokens[static_cast<std::size_t>(i)];
      batch.pos[i] = static_cast<llama_pos>(first + i);
      batch.n_seq_id[i] = 1;
      batch.seq_id[i][0] = 0;
      batch.logits[i] = all_logits || i == n - 1;
    }
    batch.n_tokens = static_cast<int32_t>(n);
    const bool streaming = stream_.has_value();
    if (streaming && n != 1) {
      llama_batch_free(batch);
      for (llama_token t : tokens) decode(std::span<const llama_token>(&t, 1));
      return;
    }
    std::span<const token_t> slot;
    if (streaming) {
      const auto t0 = clock::now();
      slot = stream_->append(next_original_);
      timing_.kvevict += seconds_since(t0);
    }
    const auto t0 = clock::now();
    restored_logits_.clear();
    const int32_t rc = llama_decode(ctx_, batch);
    timing_.llama += seconds_since(t0);
    llama_batch_free(batch);
    if (rc != 0) detail::fail("llama_decode", "0 (success)", rc);
    for (index_t i = 0; i < n; ++i) {
      positions_.push_back(first + i);
      original_.push_back(next_original_++);
    }
    if (streaming) observe_step(slot[0]);
    if (periodic_ && cached() >= periodic_->budget + periodic_->every)
      compress(periodic_->policy, Budget::tokens(periodic_->budget), periodic_->mode,
               periodic_->window);
  }

  /// Feeds the stream the step's probabilities of every layer and head over its live slots and
  /// evicts what it returns.
  void observe_step(token_t slot) {
    const auto t0 = clock::now();
    slot_cell_[static_cast<std::size_t>(slot)] = capture_.cells().back();
    slot_original_[static_cast<std::size_t>(slot)] = original_.back();
    const index_t slots = static_cast<index_t>(slot_cell_.size()),
                  n_kv = capture_.probability_cells();
    for (index_t l = 0; l < shape_.layers; ++l) {
      const auto& p = capture_.probabilities_of(l);  // [head][1 token][n_kv]
      for (index_t h = 0; h < shape_.heads; ++h) {
        float* row = rows_.data() + (l * shape_.heads + h) * slots;
        for (index_t s = 0; s < slots; ++s) {
          const std::int64_t c = slot_cell_[static_cast<std::size_t>(s)];
          row[s] = c >= 0 && c < n_kv ? p[static_cast<std::size_t>(h * n_kv + c)] : 0.0f;
        }
      }
    }
    const AttentionRows rows{rows_.data(), shape_.layers * shape_.heads, slots, slots};
    const Evictions ev = stream_->observe(rows);
    if (on_step) on_step(original_.back(), rows, ev);
    std::vector<std::int64_t> gone;
    for (token_t s : ev.of(0)) {
      gone.push_back(slot_original_[static_cast<std::size_t>(s)]);
      slot_cell_[static_cast<std::size_t>(s)] = -1;
      slot_original_[static_cast<std::size_t>(s)] = -1;
    }
    if (!capture_.qkv) capture_.clear();  // only the new token's cell was needed
    timing_.kvevict += seconds_since(t0);
    if (!gone.empty()) remove_originals(gone);
  }

  /// Removes the cached tokens with the given original indices.
  void remove_originals(std::span<const std::int64_t> gone) {
    std::vector<std::uint8_t> keep(static_cast<std::size_t>(cached()), 1);
    for (std::int64_t g : gone) {
      const auto it = std::lower_bound(original_.begin(), original_.end(), g);
      if (it != original_.end() && *it == g)
        keep[static_cast<std::size_t>(it - original_.begin())] = 0;
    }
    apply_mask(keep, stream_mode_);
  }

  /// Evicts what `sel` (one set over the cached tokens, in position order) does not keep.
  void apply(const Selection& sel, PositionMode mode) {
    std::vector<std::uint8_t> keep(static_cast<std::size_t>(cached()), 0);
    for (token_t t : sel.kept(0)) keep[static_cast<std::size_t>(t)] = 1;
    apply_mask(keep, mode);
  }

  void apply_mask(std::span<const std::uint8_t> keep, PositionMode mode) {
    const auto t0 = clock::now();
    const index_t n = cached();
    Eviction done = evict(llama_get_memory(ctx_), 0, positions_, keep, mode);
    evicted_ += done.evicted;
    std::vector<std::int64_t> pos = std::move(done.positions), orig;
    for (index_t i = 0; i < n; ++i)
      if (keep[static_cast<std::size_t>(i)] != 0)
        orig.push_back(original_[static_cast<std::size_t>(i)]);
    if (capture_.qkv && capture_.tokens() == n) {
      capture_.keep_only(keep);
      if (mode == PositionMode::shift) {
        std::vector<std::int64_t> old;
        for (index_t i = 0; i < n; ++i)
          if (keep[static_cast<std::size_t>(i)] != 0)
            old.push_back(positions_[static_cast<std::size_t>(i)]);
        rotate_host_copies(old, pos);
      }
    }
    positions_ = std::move(pos);
    original_ = std::move(orig);
    timing_.llama += seconds_since(t0);
  }

  /// After a shift, turns the host copies of Q and K from the kept tokens' old positions to
  /// their new ones, as llama.cpp turns its cached K, so that later scoring sees what the model
  /// sees (RoPE of the `llama` architecture: adjacent pairs, `RopeStyle::gptj`).
  void rotate_host_copies(std::span<const std::int64_t> old_positions,
                          std::span<const std::int64_t> new_positions) {
    const index_t n = capture_.tokens(), d = shape_.head_dim;
    std::vector<std::int64_t> delta(static_cast<std::size_t>(n));
    for (std::size_t k = 0; k < delta.size(); ++k) delta[k] = new_positions[k] - old_positions[k];
    const Rope rope{.base = shape_.rope_base, .style = RopeStyle::gptj};
    for (index_t l = 0; l < shape_.layers; ++l) {
      for (const bool keys : {true, false}) {
        const index_t heads = keys ? shape_.kv_heads : shape_.heads;
        float* data = keys ? capture_.mutable_keys(l) : capture_.mutable_queries(l);
        scratch_.assign(static_cast<std::size_t>(n * heads * d), 0.0f);  // V: unused by rope_shift
        const KVCache<float> view(Storage<float>::nhd(data, heads, d),
                                  Storage<float>::nhd(scratch_.data(), heads, d),
                                  {.kv_heads = heads, .tokens = n, .head_dim = d});
        rope_shift(view, std::span<const std::int64_t>(delta), rope);
      }
    }
  }

  llama_model* model_;
  std::string path_;
  ModelShape shape_;
  Capture capture_;
  llama_context* ctx_ = nullptr;
  bool flash_ = false;  ///< flash attention on (a quantized V cache)
  ggml_type type_v_ = GGML_TYPE_F16;
  index_t n_batch_ = 512;
  Workspace ws_;
  Selection selection_;
  Timing timing_;
  std::optional<OutputProjections> wo_;
  std::optional<OutputProjection> wo0_;  // what `policy` constructs W_o readers with
  std::vector<std::int64_t> positions_, original_;
  std::int64_t next_original_ = 0;
  index_t evicted_ = 0;
  // decode-time stream
  std::optional<AnyStream> stream_;
  PositionMode stream_mode_ = PositionMode::keep;
  std::vector<std::int64_t> slot_cell_, slot_original_;
  std::vector<float> rows_, scratch_;
  std::optional<Periodic> periodic_;
  std::vector<float> restored_logits_;  // `logits()` until the next decode, after `restore`
  bool capture_default_ = true;         // Options::capture_qkv
};

}  // namespace kvevict::llama
