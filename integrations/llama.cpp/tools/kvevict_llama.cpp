// `kvevict-llama`: kvevict's policies inside llama.cpp, on a GGUF model.
// SPDX-License-Identifier: Apache-2.0
//
//   kvevict-llama generate --model M.gguf --prompt-file P.txt --n-predict N
//                          [--policy NAME (--budget B | --ratio R)] [--set k=v]...
//                          [--at prefill|every:N|stream] [--window W]
//                          [--keep-positions|--shift-positions] [--seed S] [--threads T]
//   kvevict-llama ppl      --model M.gguf --text-file T.txt [--policy NAME --budget B]
//                          [--set k=v]... [--ctx 2048] [--stride S]
//                          [--keep-positions|--shift-positions]
//   kvevict-llama dump     --model M.gguf --prompt-file P.txt --layer L --out DIR
#include <kvevict/eval/npy.hpp>
#include <kvevict/llama.hpp>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <string>

#include "cli.hpp"

namespace kvevict::cli {
namespace {

namespace kl = kvevict::llama;

std::string read_text(const std::string& option, const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail(option, "a readable text file", "'", path, "'");
  std::stringstream s;
  s << in.rdbuf();
  std::string text = s.str();
  while (!text.empty() && (text.back() == '\n' || text.back() == '\r')) text.pop_back();
  return text;
}

/// The model, loaded once; llama.cpp's log silenced unless KVEVICT_LLAMA_LOG is set.
struct Model {
  llama_model* model = nullptr;
  std::string path;
  explicit Model(const std::string& p) : path(p) {
    if (std::getenv("KVEVICT_LLAMA_LOG") == nullptr)
      llama_log_set([](ggml_log_level, const char*, void*) {}, nullptr);
    llama_backend_init();
    if (!std::filesystem::is_regular_file(p)) fail("--model", "a GGUF file", "'", p, "'");
    model = llama_model_load_from_file(p.c_str(), llama_model_default_params());
    if (model == nullptr) fail("--model", "a GGUF model llama.cpp can load", "'", p, "'");
  }
  ~Model() {
    if (model != nullptr) llama_model_free(model);
  }
};

kl::PositionMode positions(const Args& args, kl::PositionMode fallback) {
  if (args.has("--keep-positions") && args.has("--shift-positions"))
    fail("--keep-positions", "either --keep-positions or --shift-positions", "both");
  if (args.has("--keep-positions")) return kl::PositionMode::keep;
  if (args.has("--shift-positions")) return kl::PositionMode::shift;
  return fallback;
}

/// `--at prefill` (default: one-shot compression after prefill), `--at every:N` (and again
/// whenever N more tokens were generated), `--at stream` (decode-time eviction: the policy's
/// streaming form over the prompt token by token, then over the generated tokens). Returns N,
/// 0 for prefill, −1 for stream.
index_t at_option(const Args& args) {
  const std::string at = args.get("--at", "prefill");
  if (at == "prefill") return 0;
  if (at == "stream") return -1;
  if (at.rfind("every:", 0) == 0) {
    const index_t n = parse_count("--at", at.substr(6));
    if (n < 1) fail("--at", "every:N with N >= 1", "'", at, "'");
    return n;
  }
  fail("--at", "prefill, every:N or stream", "'", at, "'");
}

int generate(int argc, char** argv) {
  const Args args(argc, argv, 2, {"--keep-positions", "--shift-positions"});
  args.allow({"--model", "--prompt-file", "--n-predict", "--policy", "--budget", "--ratio", "--set",
              "--seed", "--at", "--window", "--keep-positions", "--shift-positions", "--threads",
              "--ctx"});
  const std::string prompt = read_text("--prompt-file", args.get("--prompt-file"));
  const index_t n_predict = parse_count("--n-predict", args.get("--n-predict", "32"));
  if (n_predict < 0) fail("--n-predict", "a count >= 0", n_predict);
  const index_t threads = parse_count("--threads", args.get("--threads", "2"));
  const index_t window = parse_count("--window", args.get("--window", "0"));
  const index_t at = at_option(args);
  Model m(args.get("--model"));
  kl::Session s(m.model, m.path,
                {.n_ctx = parse_count("--ctx", args.get("--ctx", "0")), .threads = threads});
  std::optional<AnyPolicy> policy;  // through the session: CriticalKV reads the model's W_o
  if (args.has("--policy"))
    policy = s.policy(args.get("--policy"), {.settings = settings(args), .seed = seed(args)});
  const auto tokens = s.tokenize(prompt);
  if (static_cast<index_t>(tokens.size()) + n_predict >
      static_cast<index_t>(llama_n_ctx(s.context())))
    fail("--prompt-file",
         cat("a prompt that leaves room for --n-predict in the context (", llama_n_ctx(s.context()),
             " tokens)"),
         tokens.size(), " prompt tokens");
  const auto mode = positions(args, kl::PositionMode::keep);
  index_t budget_tokens = 0;
  const bool streaming = policy && at < 0;
  if (policy) {
    const Budget b = budget(args, budget_free(*policy));
    const auto n = static_cast<index_t>(tokens.size());
    budget_tokens = b.is_none() ? n + n_predict : std::min(b.resolve(n), n);
    if (streaming && !info_of(*policy).streaming)
      fail("--at", cat("prefill or every:N for ", name_of(*policy), " (it has no streaming form)"),
           "stream");
  }
  if (streaming) s.stream(*policy, budget_tokens, mode);
  s.prefill(tokens);
  if (policy && !streaming) {
    s.compress(*policy, Budget::tokens(std::max<index_t>(budget_tokens, 1)), mode, window);
    if (at > 0) s.recompress_every(*policy, budget_tokens, at, window, mode);
  }
  const auto after_prompt = s.cached();
  const auto out = s.generate(n_predict);
  std::string text;
  for (llama_token t : out) text += s.piece(t);
  std::printf("%s\n", text.c_str());
  const auto& t = s.timing();
  std::printf(
      "[prompt %zu tokens | cache %lld after the prompt, %lld at the end | evicted %lld | "
      "kvevict %.1f ms | llama.cpp %.1f ms (prefill %.1f ms)]\n",
      tokens.size(), static_cast<long long>(after_prompt), static_cast<long long>(s.cached()),
      static_cast<long long>(s.evicted()), t.kvevict * 1e3, t.llama * 1e3, t.prefill * 1e3);
  return 0;
}

/// Perplexity of a text scored token by token. With a streaming policy and a budget, the cache
/// never holds more than the budget (positions shifted into the cache by default, as the
/// StreamingLLM paper does, so a text longer than the training context stays in range). With
/// no policy: the full-context reference by sliding windows of --ctx tokens moved --stride at a
/// time (each window scores its last --stride tokens with at least ctx − stride of context).
int ppl(int argc, char** argv) {
  const Args args(argc, argv, 2, {"--keep-positions", "--shift-positions"});
  args.allow({"--model", "--text-file", "--policy", "--budget", "--set", "--seed", "--ctx",
              "--stride", "--keep-positions", "--shift-positions", "--threads", "--max-tokens"});
  const std::string text = read_text("--text-file", args.get("--text-file"));
  const index_t ctx = parse_count("--ctx", args.get("--ctx", "2048"));
  const index_t threads = parse_count("--threads", args.get("--threads", "2"));
  Model m(args.get("--model"));
  kl::Session probe(m.model, m.path, {.n_ctx = 256, .threads = threads, .capture_qkv = false});
  auto tokens = probe.tokenize(text);
  if (args.has("--max-tokens"))
    tokens.resize(std::min<std::size_t>(
        tokens.size(),
        static_cast<std::size_t>(parse_count("--max-tokens", args.get("--max-tokens")))));
  const auto nll_of = [](std::span<const float> logits, llama_token next) {
    const float mx = *std::max_element(logits.begin(), logits.end());
    double sum = 0;
    for (float x : logits) sum += std::exp(static_cast<double>(x - mx));
    return std::log(sum) + mx - logits[static_cast<std::size_t>(next)];
  };
  double nll = 0;
  index_t count = 0;
  double mean_cache = 0;
  if (!args.has("--policy")) {
    const index_t stride = parse_count("--stride", args.get("--stride", "256"));
    if (stride < 1 || stride >= ctx)
      fail("--stride", cat("1 <= stride < --ctx (", ctx, ")"), stride);
    for (index_t end = 0; end + 1 < static_cast<index_t>(tokens.size());) {
      const index_t stop = std::min<index_t>(static_cast<index_t>(tokens.size()) - 1, end + stride);
      const index_t begin = std::max<index_t>(0, stop + 1 - ctx);
      kl::Session s(m.model, m.path, {.n_ctx = ctx, .threads = threads, .capture_qkv = false});
      // score tokens (end, stop]: decode [begin, end] in one batch, then one token at a time
      const std::vector<llama_token> head(tokens.begin() + begin, tokens.begin() + end + 1);
      auto logits = s.prefill(head);
      for (index_t i = end; i < stop; ++i) {
        nll += nll_of(logits, tokens[static_cast<std::size_t>(i + 1)]);
        ++count;
        mean_cache += static_cast<double>(s.cached());
        logits = s.step(tokens[static_cast<std::size_t>(i + 1)]);
      }
      end = stop;
    }
  } else {
    const AnyPolicy policy =
        make_policy(args.get("--policy"), {.settings = settings(args), .seed = seed(args)});
    if (!info_of(policy).streaming)
      fail("--policy", "a streaming policy for ppl (one-shot ones: kvevict-llama eval)",
           args.get("--policy"));
    const bool free = budget_free(policy);
    const index_t budget = free ? parse_count("--budget", args.get("--budget", cat(ctx - 1)))
                                : parse_count("--budget", args.get("--budget"));
    kl::Session s(
        m.model, m.path,
        {.n_ctx = std::max<index_t>(budget + 8, 256), .threads = threads, .capture_qkv = false});
    s.stream(policy, budget, positions(args, kl::PositionMode::shift));
    auto logits = s.step(tokens[0]);
    for (std::size_t i = 1; i < tokens.size(); ++i) {
      nll += nll_of(logits, tokens[i]);
      ++count;
      mean_cache += static_cast<double>(s.cached());
      logits = s.step(tokens[i]);
    }
  }
  std::printf("{\"tokens\": %lld, \"nll\": %.6f, \"ppl\": %.4f, \"mean_cache\": %.1f}\n",
              static_cast<long long>(count), nll / static_cast<double>(count),
              std::exp(nll / static_cast<double>(count)), mean_cache / static_cast<double>(count));
  return 0;
}

/// Writes K, V, Q (every position) and W_o of one layer as `.npy`, in the layout `kvevict eval`
/// reads: K, V `[kv_heads, n, d]`, Q `[q_heads, n, d]`, WO `[q_heads, d, hidden]`.
int dump(int argc, char** argv) {
  const Args args(argc, argv, 2, {});
  args.allow({"--model", "--prompt-file", "--layer", "--out", "--threads"});
  const std::string prompt = read_text("--prompt-file", args.get("--prompt-file"));
  const index_t layer = parse_count("--layer", args.get("--layer"));
  const std::string out = args.get("--out");
  Model m(args.get("--model"));
  kl::Session s(m.model, m.path, {.threads = parse_count("--threads", args.get("--threads", "2"))});
  const auto& sh = s.shape();
  if (layer < 0 || layer >= sh.layers)
    fail("--layer", cat("a layer in [0, ", sh.layers, ")"), layer);
  std::filesystem::create_directories(out);
  const auto tokens = s.tokenize(prompt);
  s.prefill(tokens);
  const index_t n = s.capture().tokens(), d = sh.head_dim;
  const auto to_hnd = [&](const std::vector<float>& nhd, index_t heads) {
    std::vector<float> hnd(nhd.size());
    for (index_t t = 0; t < n; ++t)
      for (index_t h = 0; h < heads; ++h)
        std::copy_n(nhd.data() + (t * heads + h) * d, d, hnd.data() + (h * n + t) * d);
    return hnd;
  };
  const auto k = to_hnd(s.capture().keys(layer), sh.kv_heads);
  const auto v = to_hnd(s.capture().values(layer), sh.kv_heads);
  const auto q = to_hnd(s.capture().queries(layer), sh.heads);
  const index_t kv_shape[3] = {sh.kv_heads, n, d}, q_shape[3] = {sh.heads, n, d};
  npy::write(out + "/keys.npy", npy::DType::float32, kv_shape, k.data());
  npy::write(out + "/values.npy", npy::DType::float32, kv_shape, v.data());
  npy::write(out + "/queries.npy", npy::DType::float32, q_shape, q.data());
  // W_o [q_heads, d, hidden] from o_proj.weight [hidden][q_heads · d]
  const kl::OutputProjections wo(m.path, sh);
  const auto& w = wo.weight(layer);
  std::vector<float> split(static_cast<std::size_t>(sh.heads * d * sh.embd));
  for (index_t h = 0; h < sh.heads; ++h)
    for (index_t i = 0; i < d; ++i)
      for (index_t o = 0; o < sh.embd; ++o)
        split[static_cast<std::size_t>((h * d + i) * sh.embd + o)] =
            w[static_cast<std::size_t>(o * sh.heads * d + h * d + i)];
  const index_t wo_shape[3] = {sh.heads, d, sh.embd};
  npy::write(out + "/wo.npy", npy::DType::float32, wo_shape, split.data());
  std::printf("%s: layer %lld, %lld tokens, K/V [%lld, %lld, %lld], Q [%lld, %lld, %lld]\n",
              out.c_str(), static_cast<long long>(layer), static_cast<long long>(n),
              static_cast<long long>(sh.kv_heads), static_cast<long long>(n),
              static_cast<long long>(d), static_cast<long long>(sh.heads),
              static_cast<long long>(n), static_cast<long long>(d));
  return 0;
}

}  // namespace
}  // namespace kvevict::cli

int main(int argc, char** argv) {
  const std::string usage =
      "usage: kvevict-llama generate|ppl|dump --model M.gguf …  (see "
      "integrations/llama.cpp/README)";
  try {
    if (argc < 2) kvevict::detail::fail("command", "generate, ppl or dump", "nothing");
    const std::string command = argv[1];
    if (command == "generate") return kvevict::cli::generate(argc, argv);
    if (command == "ppl") return kvevict::cli::ppl(argc, argv);
    if (command == "dump") return kvevict::cli::dump(argc, argv);
    if (command == "--help" || command == "-h") {
      std::printf("%s\n", usage.c_str());
      return 0;
    }
    kvevict::detail::fail("command", "generate, ppl or dump", "'", command, "'");
  } catch (const kvevict::error& e) {
    std::fprintf(stderr, "kvevict-llama: %s\n", e.what());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "kvevict-llama: error: %s\n", e.what());
    return 1;
  }
}
