// kvevict inside llama.cpp: the adapter's mechanics on the tiny model's architecture with
// seeded random weights (models/tiny/export_gguf.py --random 1, written at test time).
// SPDX-License-Identifier: Apache-2.0
#include <kvevict/eval/npy.hpp>
#include <kvevict/llama.hpp>

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <vector>

namespace kvevict::llama {
namespace {

std::string read(const std::string& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  std::string t = s.str();
  while (!t.empty() && t.back() == '\n') t.pop_back();
  return t;
}

/// The tiny model, loaded once for every test.
class Tiny : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    llama_log_set([](ggml_log_level, const char*, void*) {}, nullptr);
    llama_backend_init();
    model_ = llama_model_load_from_file(KVEVICT_TINY_MODEL, llama_model_default_params());
  }
  static void TearDownTestSuite() {
    if (model_ != nullptr) llama_model_free(model_);
  }
  void SetUp() override { ASSERT_NE(model_, nullptr) << "cannot load " << KVEVICT_TINY_MODEL; }
  static Session::Options options() { return {.n_ctx = 2048, .threads = 2}; }
  static std::string prompt(const std::string& name) {
    return read(std::string(KVEVICT_PROMPTS) + "/" + name);
  }
  /// The largest |difference| between `got` (the logits of `next` after a compression kept
  /// `kept`) and those of a reference session (`opts`) that prefilled `tokens`, removed every
  /// other position one by one with llama_memory_seq_rm, and decoded `next` after the last kept
  /// position. +inf when the reference cannot be built.
  static double worst_against_removal(const Session::Options& opts,
                                      const std::vector<llama_token>& tokens,
                                      const std::vector<std::int64_t>& kept, llama_token next,
                                      const std::vector<float>& got) {
    Session ref(model_, KVEVICT_TINY_MODEL, opts);
    ref.prefill(tokens);
    llama_memory_t mem = llama_get_memory(ref.context());
    const std::set<std::int64_t> keep(kept.begin(), kept.end());
    for (std::int64_t p = 0; p < static_cast<std::int64_t>(tokens.size()); ++p)
      if (keep.count(p) == 0 &&
          !llama_memory_seq_rm(mem, 0, static_cast<llama_pos>(p), static_cast<llama_pos>(p + 1))) {
        ADD_FAILURE() << "llama_memory_seq_rm refused position " << p;
        return INFINITY;
      }
    llama_batch b = llama_batch_init(1, 0, 1);
    b.token[0] = next;
    b.pos[0] = static_cast<llama_pos>(kept.back() + 1);
    b.n_seq_id[0] = 1;
    b.seq_id[0][0] = 0;
    b.logits[0] = 1;
    b.n_tokens = 1;
    const int32_t status = llama_decode(ref.context(), b);
    llama_batch_free(b);
    if (status != 0) {
      ADD_FAILURE() << "llama_decode: " << status;
      return INFINITY;
    }
    const float* r = llama_get_logits_ith(ref.context(), -1);
    double worst = 0;
    for (std::size_t i = 0; i < got.size(); ++i)
      worst = std::max(worst, std::abs(static_cast<double>(got[i] - r[i])));
    return worst;
  }
  static inline llama_model* model_ = nullptr;
};

// kvevict's q8_0 / q4_0 codecs (quant.hpp, written from ggml-common.h and ggml-quants.c) against
// ggml's own: the reference quantizers (`from_float_ref`: quantize_row_q{8,4}_0_ref) give the
// same bytes, and the dequantizers (`to_float`) the same floats, on random rows with zero
// blocks, exact ties and values of every magnitude.
template <class Block>
void expect_codec_equals_ggml(ggml_type type) {
  const ggml_type_traits* traits = ggml_get_type_traits(type);
  ASSERT_NE(traits, nullptr);
  ASSERT_EQ(traits->type_size, sizeof(Block));
  ASSERT_EQ(traits->blck_size, Block::values);
  std::mt19937_64 rng(19);
  std::normal_distribution<float> normal;
  const index_t n = 32 * 64;
  std::vector<float> x(static_cast<std::size_t>(n));
  for (index_t i = 0; i < n; ++i) {
    const auto b = static_cast<int>(i / 32);
    float v = normal(rng) * std::ldexp(1.0f, b % 16 - 8);
    if (b % 7 == 0) v = 0.0f;                                    // a zero block
    if (b % 7 == 1) v = static_cast<float>(i % 32 - 16) * 0.5f;  // exact halves and ties
    x[static_cast<std::size_t>(i)] = v;
  }
  std::vector<Block> ours(static_cast<std::size_t>(n / 32)), theirs(ours.size());
  quant::quantize(x.data(), n, ours.data());
  traits->from_float_ref(x.data(), theirs.data(), n);
  EXPECT_EQ(std::memcmp(ours.data(), theirs.data(), ours.size() * sizeof(Block)), 0);
  // Dequantizing random blocks (finite scales).
  std::vector<Block> random(ours.size());
  auto* bytes = reinterpret_cast<unsigned char*>(random.data());
  for (std::size_t i = 0; i < random.size() * sizeof(Block); ++i)
    bytes[i] = static_cast<unsigned char>(rng());
  for (auto& b : random) b.d = static_cast<std::uint16_t>(b.d & 0x7BFF);  // exponent < 31
  std::vector<float> a(static_cast<std::size_t>(n)), r(a.size());
  quant::dequantize(random.data(), n, a.data());
  traits->to_float(random.data(), r.data(), n);
  EXPECT_EQ(a, r);
}

TEST(Ggml, Q8_0AndQ4_0CodecsEqualGgmls) {
  expect_codec_equals_ggml<q8_0>(GGML_TYPE_Q8_0);
  expect_codec_equals_ggml<q4_0>(GGML_TYPE_Q4_0);
}

// The exporter declares the tiny architecture: a llama-architecture model with GQA, every
// tensor in the shape llama.cpp's llama graph expects.
void expect_card_shapes(const char* path) {
  ggml_context* ctx = nullptr;
  gguf_context* g = gguf_init_from_file(path, {/*no_alloc=*/true, &ctx});
  ASSERT_NE(g, nullptr);
  const auto u32 = [&](const char* key) {
    const int64_t id = gguf_find_key(g, key);
    EXPECT_GE(id, 0) << key;
    return id < 0 ? 0u : gguf_get_val_u32(g, id);
  };
  EXPECT_STREQ(gguf_get_val_str(g, gguf_find_key(g, "general.architecture")), "llama");
  EXPECT_STREQ(gguf_get_val_str(g, gguf_find_key(g, "tokenizer.ggml.model")), "llama");
  const std::uint32_t layers = u32("llama.block_count"), embd = u32("llama.embedding_length");
  const std::uint32_t heads = u32("llama.attention.head_count"),
                      kv = u32("llama.attention.head_count_kv");
  const std::uint32_t ffn = u32("llama.feed_forward_length"),
                      rope = u32("llama.rope.dimension_count");
  EXPECT_EQ(u32("llama.context_length"), 2048u);
  EXPECT_GE(layers, 4u);
  EXPECT_LE(layers, 6u);
  EXPECT_EQ(heads % kv, 0u);
  EXPECT_GT(heads, kv);  // grouped-query attention
  const std::uint32_t hd = embd / heads;
  EXPECT_GE(hd, 32u);
  EXPECT_LE(hd, 64u);
  EXPECT_EQ(rope, hd);
  const int64_t vocab = gguf_get_arr_n(g, gguf_find_key(g, "tokenizer.ggml.tokens"));
  EXPECT_LE(vocab, 4096);
  const auto shape = [&](const std::string& name, std::vector<int64_t> ne) {
    const ggml_tensor* t = ggml_get_tensor(ctx, name.c_str());
    ASSERT_NE(t, nullptr) << name;
    for (std::size_t i = 0; i < ne.size(); ++i) EXPECT_EQ(t->ne[i], ne[i]) << name << " dim " << i;
  };
  shape("token_embd.weight", {embd, vocab});
  shape("output_norm.weight", {embd});
  for (std::uint32_t l = 0; l < layers; ++l) {
    const std::string b = "blk." + std::to_string(l) + ".";
    shape(b + "attn_norm.weight", {embd});
    shape(b + "attn_q.weight", {embd, heads * hd});
    shape(b + "attn_k.weight", {embd, kv * hd});
    shape(b + "attn_v.weight", {embd, kv * hd});
    shape(b + "attn_output.weight", {heads * hd, embd});
    shape(b + "ffn_norm.weight", {embd});
    shape(b + "ffn_gate.weight", {embd, ffn});
    shape(b + "ffn_up.weight", {embd, ffn});
    shape(b + "ffn_down.weight", {ffn, embd});
  }
  std::int64_t params = 0;
  for (ggml_tensor* t = ggml_get_first_tensor(ctx); t != nullptr; t = ggml_get_next_tensor(ctx, t))
    params += ggml_nelements(t);
  EXPECT_GE(params, 4'000'000);
  EXPECT_LE(params, 10'000'000);
  gguf_free(g);
  ggml_free(ctx);
}

TEST_F(Tiny, GgufDeclaresTheCardsShapes) {
  expect_card_shapes(KVEVICT_TINY_MODEL);
}

// The prompts' SentencePiece token counts (passkey.py) are llama.cpp's too: same tokenizer.
TEST_F(Tiny, TokenizerAgreesWithSentencePiece) {
  Session s(model_, KVEVICT_TINY_MODEL, options());
  std::ifstream in(std::string(KVEVICT_PROMPTS) + "/manifest.json");
  ASSERT_TRUE(in.good());
  std::string json((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const auto first = json.find("\"inside\": \"") + 11;
  const std::string file = json.substr(first, json.find('"', first) - first);
  const auto tpos = json.find("\"tokens\": ") + 10;
  const auto want = std::stoll(json.substr(tpos));
  EXPECT_EQ(static_cast<long long>(s.tokenize(prompt(file)).size()), want) << file;
}

// A budget that holds the whole prompt changes nothing: the same tokens and the same logits,
// bit for bit, as llama.cpp alone.
TEST_F(Tiny, BudgetCoveringThePromptIsBitIdentical) {
  const std::string text = prompt("inside-1024-050-0.txt");
  Session plain(model_, KVEVICT_TINY_MODEL, options());
  const auto tokens = plain.tokenize(text);
  plain.prefill(tokens);
  const std::vector<float> want(plain.logits().begin(), plain.logits().end());
  const auto want_out = plain.generate(8);
  for (const char* name : {"snapkv", "h2o", "tova", "criticalkv", "streaming_llm"}) {
    Session s(model_, KVEVICT_TINY_MODEL, options());
    s.prefill(tokens);
    s.compress(s.policy(name), Budget::tokens(static_cast<index_t>(tokens.size())));
    EXPECT_EQ(s.evicted(), 0) << name;
    const std::vector<float> got(s.logits().begin(), s.logits().end());
    EXPECT_EQ(got, want) << name;
    EXPECT_EQ(s.generate(8), want_out) << name;
  }
}

// After compression, the next token's logits equal those of a reference that removes exactly
// the evicted positions one by one from a full cache: the adapter removed the right cells (a
// cell holds every layer, so the right cells are right for every layer).
TEST_F(Tiny, EvictionEqualsRemovingExactlyTheEvictedPositions) {
  const std::string text = prompt("inside-1024-020-1.txt");
  for (const char* name : {"snapkv", "nacl", "h2o", "criticalkv"}) {
    Session s(model_, KVEVICT_TINY_MODEL, options());
    const auto tokens = s.tokenize(text);
    s.prefill(tokens);
    s.compress(s.policy(name), Budget::ratio(0.25));
    const auto kept = s.kept();
    ASSERT_LT(static_cast<index_t>(kept.size()), static_cast<index_t>(tokens.size()));
    const llama_token next = 42;
    const auto got = s.step(next);
    const std::vector<float> a(got.begin(), got.end());
    EXPECT_LE(worst_against_removal(options(), tokens, kept, next, a), 1e-4) << name;
    EXPECT_EQ(llama_memory_seq_pos_max(llama_get_memory(s.context()), 0), kept.back() + 1);
  }
}

// The same with llama.cpp's quantized cache (`--cache-type-k q8_0 --cache-type-v q8_0`, flash
// attention on, as llama.cpp requires for a quantized V): the kept set is scored from the
// captured fp32 Q/K/V, the evicted cells leave the q8_0 cache, and the next token's logits equal
// those of a q8_0 reference that removes exactly those positions. Decode-time eviction needs
// attention probabilities, which flash attention does not produce: refused by name.
TEST_F(Tiny, Q8_0CacheCompressesLikeRemovingTheEvictedPositions) {
  const std::string text = prompt("inside-1024-020-1.txt");
  Session::Options q8 = options();
  q8.type_k = q8.type_v = GGML_TYPE_Q8_0;
  for (const char* name : {"snapkv", "tova"}) {
    Session s(model_, KVEVICT_TINY_MODEL, q8);
    const auto tokens = s.tokenize(text);
    s.prefill(tokens);
    s.compress(s.policy(name), Budget::ratio(0.25));
    const auto kept = s.kept();
    ASSERT_LT(static_cast<index_t>(kept.size()), static_cast<index_t>(tokens.size()));
    const llama_token next = 42;
    const auto got = s.step(next);
    const std::vector<float> a(got.begin(), got.end());
    EXPECT_LE(worst_against_removal(q8, tokens, kept, next, a), 1e-4) << name;
  }
  Session s(model_, KVEVICT_TINY_MODEL, q8);
  try {
    s.stream(s.policy("h2o"), 256);
    ADD_FAILURE() << "stream accepted a q8_0 V cache";
  } catch (const kvevict::error& e) {
    EXPECT_EQ(std::string(e.what()).rfind("type_v: expected", 0), 0u) << e.what();
  }
}

// Closing the gaps: positions become 0 … kept − 1, and generation continues from there.
TEST_F(Tiny, ShiftedPositionsAreContiguous) {
  Session s(model_, KVEVICT_TINY_MODEL, options());
  s.prefill(s.tokenize(prompt("inside-1024-080-2.txt")));
  s.compress(make_policy("snapkv"), Budget::ratio(0.3), PositionMode::shift);
  const auto& pos = s.positions();
  for (std::size_t i = 0; i < pos.size(); ++i) ASSERT_EQ(pos[i], static_cast<std::int64_t>(i));
  llama_memory_t mem = llama_get_memory(s.context());
  EXPECT_EQ(llama_memory_seq_pos_min(mem, 0), 0);
  EXPECT_EQ(llama_memory_seq_pos_max(mem, 0), static_cast<llama_pos>(pos.size() - 1));
  EXPECT_EQ(s.generate(4).size(), 4u);
}

// Decode-time eviction: the cache never exceeds the budget (+1 during a step), an evicted
// position never comes back, and H2O's evictions with llama.cpp's own probabilities are those
// of kvevict's stream fed the same rows.
TEST_F(Tiny, DecodeTimeH2OKeepsTheBudgetAndMatchesItsOwnStream) {
  Session s(model_, KVEVICT_TINY_MODEL, {.n_ctx = 1024, .threads = 2, .capture_qkv = false});
  const index_t budget = 64;
  s.stream(make_policy("h2o"), budget);
  auto twin =
      start(make_policy("h2o"),
            {.kv_heads = 1, .q_heads = s.shape().layers * s.shape().heads, .budget = budget});
  std::set<std::int64_t> gone;
  index_t steps = 0, mismatches = 0;
  s.on_step = [&](std::int64_t position, const AttentionRows& rows, const Evictions& ev) {
    twin.append(position);
    const Evictions mine = twin.observe(rows);
    if (std::vector<token_t>(mine.slots.begin(), mine.slots.end()) !=
        std::vector<token_t>(ev.slots.begin(), ev.slots.end()))
      ++mismatches;
    ++steps;
  };
  const auto tokens = s.tokenize(prompt("inside-1024-050-3.txt"));
  for (llama_token t : tokens) {
    s.step(t);
    ASSERT_LE(s.cached(), budget);
    for (std::int64_t p : s.kept())
      ASSERT_EQ(gone.count(p), 0u) << "position " << p << " came back";
    std::set<std::int64_t> now(s.kept().begin(), s.kept().end());
    for (std::int64_t p = 0; p <= s.kept().back(); ++p)
      if (now.count(p) == 0) gone.insert(p);
  }
  EXPECT_EQ(steps, static_cast<index_t>(tokens.size()));
  EXPECT_EQ(mismatches, 0);
  EXPECT_EQ(s.evicted(), static_cast<index_t>(tokens.size()) - budget);
}

// `kvevict-llama dump` writes a layer `kvevict eval` reads.
TEST_F(Tiny, DumpRoundTripsIntoEval) {
#ifdef KVEVICT_CLI
  const std::string dir = std::filesystem::temp_directory_path() / "kvevict-llama-dump";
  std::filesystem::remove_all(dir);
  const std::string p = std::string(KVEVICT_PROMPTS) + "/inside-1024-050-0.txt";
  ASSERT_EQ(std::system((std::string(KVEVICT_LLAMA_CLI) + " dump --model " + KVEVICT_TINY_MODEL +
                         " --prompt-file " + p + " --layer 2 --out " + dir + " > /dev/null")
                            .c_str()),
            0);
  for (const char* f : {"keys.npy", "values.npy", "queries.npy", "wo.npy"})
    EXPECT_TRUE(std::filesystem::exists(dir + "/" + f)) << f;
  const std::string out = dir + "/eval.csv";
  ASSERT_EQ(std::system((std::string(KVEVICT_CLI) + " eval --keys " + dir + "/keys.npy --values " +
                         dir + "/values.npy --queries " + dir + "/queries.npy --wo " + dir +
                         "/wo.npy --policies snapkv,criticalkv --ratios 0.2 --csv " + out +
                         " > /dev/null")
                            .c_str()),
            0);
  EXPECT_NE(read(out).find("criticalkv"), std::string::npos);
#else
  GTEST_SKIP() << "the kvevict command is not built";
#endif
}

// `save` / `restore`: compressing from a restored snapshot is compressing after a fresh
// prefill — the same kept tokens, the same greedy continuation, the same logits (within float
// rounding: llama.cpp may place the restored tokens in other cells, so sums run in another
// order) — whatever was done in between.
TEST_F(Tiny, RestoredSnapshotCompressesAsAFreshPrefill) {
  const std::string text = prompt("inside-1024-030-1.txt");
  Session fresh(model_, KVEVICT_TINY_MODEL, options());
  const auto tokens = fresh.tokenize(text);
  fresh.prefill(tokens);
  fresh.compress(fresh.policy("snapkv"), Budget::tokens(300));
  const std::vector<float> want(fresh.logits().begin(), fresh.logits().end());
  const auto want_kept = fresh.kept();
  const auto want_out = fresh.generate(6);

  Session s(model_, KVEVICT_TINY_MODEL, options());
  s.prefill(tokens);
  const auto snap = s.save();
  s.compress(s.policy("tova"), Budget::tokens(100), PositionMode::shift);
  s.generate(4);
  s.restore(snap);
  EXPECT_EQ(s.cached(), static_cast<index_t>(tokens.size()));
  s.compress(s.policy("snapkv"), Budget::tokens(300));
  EXPECT_EQ(s.kept(), want_kept);
  const std::vector<float> got(s.logits().begin(), s.logits().end());
  ASSERT_EQ(got.size(), want.size());
  for (std::size_t i = 0; i < got.size(); ++i) ASSERT_NEAR(got[i], want[i], 1e-4f) << i;
  EXPECT_EQ(s.generate(6), want_out);
  // a stream attached: no snapshot (its state is not part of one)
  s.reset();
  EXPECT_EQ(s.cached(), 0);
  s.stream(s.policy("h2o"), 64);
  EXPECT_THROW(s.save(), kvevict::error);
}

// `nll` (a continuation scored in batches, every logit read) equals scoring it a token at a
// time with `step`.
TEST_F(Tiny, BatchedNllEqualsStepByStep) {
  Session a(model_, KVEVICT_TINY_MODEL, {.n_ctx = 2048, .n_batch = 64, .threads = 2});
  Session b(model_, KVEVICT_TINY_MODEL, options());
  const auto tokens = a.tokenize(prompt("inside-1024-060-0.txt"));
  const std::span<const llama_token> head(tokens.data(), 700), tail(tokens.data() + 700, 200);
  a.prefill(head);
  b.prefill(head);
  const double batched = a.nll(tail);
  double stepped = 0;
  for (llama_token t : tail) {
    const auto l = b.logits();
    const float mx = *std::max_element(l.begin(), l.end());
    double sum = 0;
    for (float x : l) sum += std::exp(static_cast<double>(x - mx));
    stepped += std::log(sum) + mx - l[static_cast<std::size_t>(t)];
    b.step(t);
  }
  EXPECT_NEAR(batched, stepped, 1e-3 * stepped);
  EXPECT_EQ(a.cached(), 900);
}

/// A context of four sequences in one unified KV buffer (as llama-server's slots share one), each
/// prefilled with its own tokens (lengths 300, 500, 700, 200).
class Sequences {
 public:
  static constexpr int count = 4;
  static constexpr int lengths[count] = {300, 500, 700, 200};

  explicit Sequences(llama_model* model, bool flash = false) {
    llama_context_params cp = llama_context_default_params();
    cp.n_ctx = 4096;
    cp.n_batch = cp.n_ubatch = 256;
    cp.n_seq_max = count;
    cp.kv_unified = true;
    cp.flash_attn_type = flash ? LLAMA_FLASH_ATTN_TYPE_ENABLED : LLAMA_FLASH_ATTN_TYPE_DISABLED;
    cp.n_threads = cp.n_threads_batch = 2;
    ctx = llama_init_from_model(model, cp);
    const int vocab = llama_vocab_n_tokens(llama_model_get_vocab(model));
    std::mt19937 rng(7);
    for (int s = 0; s < count; ++s) {
      std::vector<llama_token> t(static_cast<std::size_t>(lengths[s]));
      for (auto& x : t) x = static_cast<llama_token>(rng() % static_cast<unsigned>(vocab));
      tokens.push_back(t);
      for (std::size_t at = 0; at < t.size(); at += 256) {  // one sequence per batch
        std::vector<std::pair<llama_token, llama_pos>> chunk;
        for (std::size_t i = at; i < std::min(t.size(), at + 256); ++i)
          chunk.emplace_back(t[i], static_cast<llama_pos>(i));
        decode(chunk, s);
      }
    }
  }
  ~Sequences() { llama_free(ctx); }
  Sequences(const Sequences&) = delete;
  Sequences& operator=(const Sequences&) = delete;

  /// Decodes (token, position) pairs of sequence `seq`; returns the last one's logits.
  std::vector<float> decode(const std::vector<std::pair<llama_token, llama_pos>>& items, int seq) {
    llama_batch b = llama_batch_init(static_cast<int32_t>(items.size()), 0, 1);
    for (std::size_t i = 0; i < items.size(); ++i) {
      b.token[i] = items[i].first;
      b.pos[i] = items[i].second;
      b.n_seq_id[i] = 1;
      b.seq_id[i][0] = seq;
      b.logits[i] = i + 1 == items.size();
    }
    b.n_tokens = static_cast<int32_t>(items.size());
    const int32_t status = llama_decode(ctx, b);
    llama_batch_free(b);
    EXPECT_EQ(status, 0);
    const float* l = llama_get_logits_ith(ctx, -1);
    const int vocab = llama_vocab_n_tokens(llama_model_get_vocab(llama_get_model(ctx)));
    return {l, l + vocab};
  }
  /// The next token (42) of sequence `seq` after position `last`.
  std::vector<float> next(int seq, llama_pos last) { return decode({{42, last + 1}}, seq); }

  llama_context* ctx = nullptr;
  std::vector<std::vector<llama_token>> tokens;
};

// Many sequences in one context: evicting from one leaves every other sequence's cells and logits
// bit for bit as they were (flash attention off: llama.cpp's CPU flash attention accumulates V in
// fp16, so where a later token's cell lands — in a freed cell or after the last — changes the
// others' logits by rounding: up to 0.043 here with it on), and the evicted sequence's next logits
// equal a reference that removed exactly those positions; with PositionMode::shift its positions
// close up.
TEST_F(Tiny, EvictingOneSequenceLeavesTheOthersBitIdentical) {
  for (const PositionMode mode : {PositionMode::keep, PositionMode::shift}) {
    Sequences plain(model_), evicted(model_), reference(model_);
    ASSERT_NE(plain.ctx, nullptr);
    const int victim = 1, n = Sequences::lengths[victim];
    std::vector<std::int64_t> positions(static_cast<std::size_t>(n));
    std::vector<std::uint8_t> keep(positions.size(), 0);
    for (int i = 0; i < n; ++i) {
      positions[static_cast<std::size_t>(i)] = i;
      keep[static_cast<std::size_t>(i)] = i % 3 == 0 || i >= n - 32 || (i >= 100 && i < 140);
    }
    const Eviction done = evict(llama_get_memory(evicted.ctx), victim, positions, keep, mode);
    const auto kept = std::count(keep.begin(), keep.end(), 1);
    EXPECT_EQ(done.evicted, n - kept);
    ASSERT_EQ(static_cast<std::int64_t>(done.positions.size()), kept);
    llama_memory_t mem = llama_get_memory(evicted.ctx);
    EXPECT_EQ(llama_memory_seq_pos_max(mem, victim), done.positions.back());
    if (mode == PositionMode::shift) {
      EXPECT_EQ(done.positions.back(), kept - 1);
    }

    for (int s = 0; s < Sequences::count; ++s) {
      if (s == victim) continue;
      const llama_pos last = Sequences::lengths[s] - 1;
      EXPECT_EQ(llama_memory_seq_pos_max(mem, s), last) << s;
      EXPECT_EQ(evicted.next(s, last), plain.next(s, last)) << "sequence " << s;
    }
    // the victim: as if its evicted positions had been removed one by one
    llama_memory_t ref = llama_get_memory(reference.ctx);
    for (int i = 0; i < n; ++i)
      if (keep[static_cast<std::size_t>(i)] == 0) {
        ASSERT_TRUE(llama_memory_seq_rm(ref, victim, i, i + 1));
      }
    if (mode == PositionMode::keep) {
      const auto got = evicted.next(victim, n - 1), want = reference.next(victim, n - 1);
      double worst = 0;
      for (std::size_t i = 0; i < got.size(); ++i)
        worst = std::max(worst, std::abs(static_cast<double>(got[i] - want[i])));
      EXPECT_LE(worst, 1e-4);
    }
  }
  // bad input changes nothing
  Sequences seqs(model_);
  const std::vector<std::int64_t> unordered = {0, 2, 1};
  const std::vector<std::uint8_t> keep3 = {1, 0, 1};
  EXPECT_THROW(evict(llama_get_memory(seqs.ctx), 0, unordered, keep3), kvevict::error);
  EXPECT_EQ(llama_memory_seq_pos_max(llama_get_memory(seqs.ctx), 0), Sequences::lengths[0] - 1);
}

/// An engine's own eval callback: counts the FFN outputs it is handed.
struct FfnCounter {
  int seen = 0;
  static bool callback(ggml_tensor* t, bool ask, void* user) {
    const bool mine = std::string_view(t->name).rfind("ffn_out-", 0) == 0;
    if (ask) return mine;
    if (mine) ++static_cast<FfnCounter*>(user)->seen;
    return true;
  }
};

/// Decodes `n` tokens (0, 1, …) of sequence 0 in a context whose eval callback is `cb`.
void decode_with(llama_model* model, ggml_backend_sched_eval_callback cb, void* user, int n) {
  llama_context_params cp = llama_context_default_params();
  cp.n_ctx = 512;
  cp.n_threads = cp.n_threads_batch = 2;
  cp.flash_attn_type = LLAMA_FLASH_ATTN_TYPE_DISABLED;
  cp.cb_eval = cb;
  cp.cb_eval_user_data = user;
  llama_context* ctx = llama_init_from_model(model, cp);
  ASSERT_NE(ctx, nullptr);
  llama_batch b = llama_batch_init(n, 0, 1);
  for (int i = 0; i < n; ++i) {
    b.token[i] = i + 1;
    b.pos[i] = i;
    b.n_seq_id[i] = 1;
    b.seq_id[i][0] = 0;
    b.logits[i] = i + 1 == n;
  }
  b.n_tokens = n;
  EXPECT_EQ(llama_decode(ctx, b), 0);
  llama_batch_free(b);
  llama_free(ctx);
}

// The capture chains an engine's own eval callback: the engine's sees exactly what it sees alone,
// and the capture still gets every layer's Q/K/V.
TEST_F(Tiny, CaptureChainsTheEnginesEvalCallback) {
  FfnCounter alone;
  decode_with(model_, &FfnCounter::callback, &alone, 20);
  const ModelShape shape = ModelShape::of(model_);
  EXPECT_EQ(alone.seen, shape.layers);

  FfnCounter chained;
  Capture capture(shape);
  capture.chain(&FfnCounter::callback, &chained);
  decode_with(model_, &Capture::callback, &capture, 20);
  EXPECT_EQ(chained.seen, alone.seen);
  EXPECT_EQ(capture.tokens(), 20);
  for (index_t l = 0; l < shape.layers; ++l) {
    EXPECT_EQ(static_cast<index_t>(capture.keys(l).size()), 20 * shape.kv_heads * shape.head_dim);
    EXPECT_EQ(static_cast<index_t>(capture.queries(l).size()), 20 * shape.heads * shape.head_dim);
  }
}

#ifdef KVEVICT_TRAINED_MODEL
/// A row of the passkey prompts' manifest (models/tiny/passkey.py): name, key, and the file of
/// the prompt with the question inside.
struct PasskeyPrompt {
  std::string name, key, inside;
};

std::vector<PasskeyPrompt> passkey_manifest() {
  std::stringstream manifest(read(std::string(KVEVICT_PROMPTS) + "/manifest.tsv"));
  std::string line, length, depth;
  std::getline(manifest, line);  // header
  std::vector<PasskeyPrompt> rows;
  while (std::getline(manifest, line)) {
    std::stringstream row(line);
    PasskeyPrompt p;
    std::getline(row, p.name, '\t');
    std::getline(row, length, '\t');
    std::getline(row, depth, '\t');
    std::getline(row, p.key, '\t');
    std::getline(row, p.inside, '\t');
    rows.push_back(std::move(p));
  }
  return rows;
}

/// Whether the session's greedy continuation starts with `key` (spaces dropped: the model may
/// emit a bare "▁" before the digits).
bool answers(Session& s, const std::string& key) {
  std::string out;
  for (llama_token t : s.generate(6)) out += s.piece(t);
  out.erase(std::remove(out.begin(), out.end(), ' '), out.end());
  return out.substr(0, key.size()) == key;
}

// The committed trained model (models/tiny/tiny.gguf).
class Trained : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    llama_log_set([](ggml_log_level, const char*, void*) {}, nullptr);
    llama_backend_init();
    model_ = llama_model_load_from_file(KVEVICT_TRAINED_MODEL, llama_model_default_params());
  }
  static void TearDownTestSuite() {
    if (model_ != nullptr) llama_model_free(model_);
  }
  void SetUp() override { ASSERT_NE(model_, nullptr) << "cannot load " << KVEVICT_TRAINED_MODEL; }
  static inline llama_model* model_ = nullptr;
};

TEST_F(Trained, GgufDeclaresTheCardsShapes) {
  expect_card_shapes(KVEVICT_TRAINED_MODEL);
}

// The conversion check: llama.cpp's logits on validation text equal PyTorch's
// (models/tiny/reference.py, weights rounded to f16 as exported) within fp16 tolerance.
TEST_F(Trained, LogitsMatchPyTorch) {
  const auto tokens = npy::read(KVEVICT_MODEL_DIR "/reference_tokens.npy", "tokens");
  const auto logits = npy::read(KVEVICT_MODEL_DIR "/reference_logits.npy", "logits");
  ASSERT_EQ(tokens.dtype, npy::DType::float32);
  ASSERT_EQ(logits.dtype, npy::DType::float32);
  const index_t n = tokens.shape[0], vocab = logits.shape[1];
  std::vector<llama_token> ids(static_cast<std::size_t>(n));
  const auto* t = reinterpret_cast<const float*>(tokens.data.data());
  for (index_t i = 0; i < n; ++i) ids[static_cast<std::size_t>(i)] = static_cast<llama_token>(t[i]);
  const auto* want = reinterpret_cast<const float*>(logits.data.data());
  Session s(model_, KVEVICT_TRAINED_MODEL, {.n_ctx = 256, .threads = 2, .capture_qkv = false});
  ASSERT_EQ(s.shape().vocab, vocab);
  double worst = 0;
  for (index_t i = 0; i < n; ++i) {  // a token at a time: every position's logits
    const auto got = s.step(ids[static_cast<std::size_t>(i)]);
    for (index_t v = 0; v < vocab; ++v)
      worst = std::max(worst, std::abs(static_cast<double>(got[static_cast<std::size_t>(v)]) -
                                       want[i * vocab + v]));
  }
  RecordProperty("max_abs_logit_difference", std::to_string(worst));
  std::printf("max |logit(llama.cpp) - logit(PyTorch)| over %lld tokens: %.5f\n",
              static_cast<long long>(n), worst);
  EXPECT_LT(worst, 0.05);  // f16 K/V cache and f16 GEMM inputs against fp32 PyTorch
}

// Issue 17's acceptance: on a 2048-token passkey prompt with the question inside, SnapKV at
// 20% still answers the key; StreamingLLM at 20% with the key at depth 10% (evicted: it keeps
// only the sinks and the most recent tokens) does not.
TEST_F(Trained, SnapKVAnswersAt20PercentStreamingLLMDoesNot) {
  const auto manifest = passkey_manifest();
  const auto p = std::find_if(manifest.begin(), manifest.end(),
                              [](const PasskeyPrompt& r) { return r.name == "2048-010-0"; });
  ASSERT_NE(p, manifest.end());
  const std::string text = read(std::string(KVEVICT_PROMPTS) + "/" + p->inside);
  const auto answer = [&](const char* policy) {
    Session s(model_, KVEVICT_TRAINED_MODEL, {.n_ctx = 2048, .threads = 2});
    const auto tokens = s.tokenize(text);
    EXPECT_GT(tokens.size(), 2000u);
    s.prefill(tokens);
    if (policy != nullptr) s.compress(s.policy(policy), Budget::ratio(0.2));
    return answers(s, p->key);
  };
  EXPECT_TRUE(answer(nullptr));
  EXPECT_TRUE(answer("snapkv"));
  EXPECT_FALSE(answer("streaming_llm"));
}

// Issue 18's regression slice: the first key of every depth (0, 10, …, 100%) at 1024 and 2048
// tokens, question inside, 20% of the prompt kept. The full run (integrations/llama.cpp/e2e.py,
// README's end-to-end table) shows SnapKV far above StreamingLLM there; this pins that ordering
// on 22 prompts, so that a change that breaks either policy end to end (or the adapter's
// eviction) fails CI.
TEST_F(Trained, PasskeySliceKeepsTheEndToEndOrdering) {
  const std::string dir = KVEVICT_PROMPTS;
  std::vector<PasskeyPrompt> prompts = passkey_manifest();
  std::erase_if(prompts, [](const PasskeyPrompt& p) { return !p.name.ends_with("-0"); });
  ASSERT_EQ(prompts.size(), 22u);
  Session s(model_, KVEVICT_TRAINED_MODEL, {.n_ctx = 2048 + 64, .threads = 2});
  const AnyPolicy snapkv = s.policy("snapkv"), streaming = s.policy("streaming_llm");
  index_t full = 0, snap = 0, stream = 0;
  for (const auto& p : prompts) {
    const auto tokens = s.tokenize(read(dir + "/" + p.inside));
    s.reset();
    s.prefill(tokens);
    const auto snapshot = s.save();
    const auto answered = [&](const AnyPolicy* policy) {
      s.restore(snapshot);
      if (policy != nullptr) s.compress(*policy, Budget::ratio(0.2));
      return index_t{answers(s, p.key)};
    };
    full += answered(nullptr);
    snap += answered(&snapkv);
    stream += answered(&streaming);
  }
  std::printf(
      "22 prompts, question inside, 20%% kept: full %lld, snapkv %lld, streaming_llm %lld\n",
      static_cast<long long>(full), static_cast<long long>(snap), static_cast<long long>(stream));
  // The full run (2026-12-02, model run v15, 220 prompts): full cache 98%, SnapKV 98%,
  // StreamingLLM 20%. This slice measured 22, 22 and 7 of 22. StreamingLLM at 20% keeps the
  // needle only when it lies in the kept tail (depths of about 70-80% and more); elsewhere its
  // answers are mostly wrong in a digit or two — the kept tokens' keys and values hold part of
  // the key, written into them by the prefill's attention — and now and then right (here 1024
  // tokens at depth 40%). The bounds leave room for a legitimate
  // numeric change (another thread count, a ggml update) and none for a broken policy or
  // eviction (evicting nothing answers 22 with every policy, a random choice about 0).
  EXPECT_GE(full, 19);
  EXPECT_GE(snap, 16);
  EXPECT_LE(stream, 10);
  EXPECT_GE(snap, stream + 8);
}
#endif

}  // namespace
}  // namespace kvevict::llama
