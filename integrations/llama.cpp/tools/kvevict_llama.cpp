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
//   kvevict-llama passkey  --model M.gguf --prompts DIR [--policies a,b,…] [--streaming a,b,…]
//                          [--ratios 0.1,0.2,0.3,0.5] [--placements inside,after]
//                          [--lengths 1024,2048] [--keys K] [--window W] [--csv FILE]
//   kvevict-llama continuation --model M.gguf --text-file T.txt [--prompt 1792] [--next 256]
//                          [--windows 4] [--policies a,b,…] [--ratios …] [--csv FILE]
#include <kvevict/eval/npy.hpp>
#include <kvevict/llama.hpp>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
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
        nll += kl::token_nll(logits, tokens[static_cast<std::size_t>(i + 1)]);
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
      nll += kl::token_nll(logits, tokens[i]);
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

std::vector<std::string> split_list(const std::string& text) {
  std::vector<std::string> out;
  std::stringstream in(text);
  for (std::string item; std::getline(in, item, ',');)
    if (!item.empty()) out.push_back(item);
  return out;
}

/// `--ratios a,b,…` (each in (0, 1]), or `fallback`.
std::vector<double> ratio_list(const Args& args, const std::string& fallback) {
  std::vector<double> ratios;
  for (const auto& r : split_list(args.get("--ratios", fallback))) {
    const double x = detail::parse_real("--ratios", r);
    if (!(x > 0 && x <= 1)) fail("--ratios", "ratios in (0, 1]", x);
    ratios.push_back(x);
  }
  return ratios;
}

/// `--policies a,b,…` (specs, `name:k=v` allowed), or every policy of the registry.
std::vector<std::string> policy_list(const Args& args) {
  if (args.has("--policies")) return split_list(args.get("--policies"));
  std::vector<std::string> all;
  for (auto n : policy_names()) all.emplace_back(n);
  return all;
}

/// The `--csv` file opened with its header line, or nullptr without `--csv`.
std::FILE* open_csv(const Args& args, const char* header) {
  if (!args.has("--csv")) return nullptr;
  std::FILE* csv = std::fopen(args.get("--csv").c_str(), "w");
  if (csv == nullptr) fail("--csv", "a writable file", "'", args.get("--csv"), "'");
  std::fprintf(csv, "%s\n", header);
  return csv;
}

/// One prompt of the manifest `models/tiny/passkey.py` writes (`manifest.tsv`).
struct PasskeyPrompt {
  std::string name, key, inside, after;
  index_t length = 0, depth = 0;
};

std::vector<PasskeyPrompt> read_manifest(const std::string& dir) {
  const std::string path = dir + "/manifest.tsv";
  std::ifstream in(path);
  if (!in)
    fail("--prompts", "a directory with manifest.tsv (models/tiny/passkey.py)", "'", dir, "'");
  std::vector<PasskeyPrompt> out;
  std::string line;
  std::getline(in, line);  // header
  while (std::getline(in, line)) {
    std::stringstream row(line);
    PasskeyPrompt p;
    std::string length, depth;
    if (!(std::getline(row, p.name, '\t') && std::getline(row, length, '\t') &&
          std::getline(row, depth, '\t') && std::getline(row, p.key, '\t') &&
          std::getline(row, p.inside, '\t') && std::getline(row, p.after, '\t')))
      fail("--prompts", "manifest.tsv rows: name, length, depth, key, inside, after", "'", line,
           "'");
    p.length = parse_count("--prompts", length);
    p.depth = parse_count("--prompts", depth);
    p.inside = dir + "/" + p.inside;
    p.after = dir + "/" + p.after;
    out.push_back(std::move(p));
  }
  return out;
}

/// Passkey retrieval under compression (issue 18's needle setting): for every prompt, one
/// prefill and a snapshot, then every (policy, ratio) from that snapshot — one-shot policies
/// compress after the prompt; streaming ones (`--streaming`) run over the prompt token by token
/// at the same budget. Placements: `inside` (the question is part of the compressed prompt, so
/// scoring sees it in the observation window) and `after` (the context is compressed, then the
/// question is decoded and the key generated). Correct = the key's digits, greedy, exact.
/// Prints one line per (policy, ratio, placement) and writes every run to --csv.
int passkey(int argc, char** argv) {
  const Args args(argc, argv, 2, {});
  args.allow({"--model", "--prompts", "--policies", "--streaming", "--ratios", "--placements",
              "--lengths", "--keys", "--window", "--csv", "--threads", "--seed"});
  auto prompts = read_manifest(args.get("--prompts"));
  const auto lengths = split_list(args.get("--lengths", "1024,2048"));
  const index_t keys = parse_count("--keys", args.get("--keys", "1000000"));
  const index_t window = parse_count("--window", args.get("--window", "0"));
  const std::vector<double> ratios = ratio_list(args, "0.1,0.2,0.3,0.5");
  const auto placements = split_list(args.get("--placements", "inside,after"));
  for (const auto& p : placements)
    if (p != "inside" && p != "after") fail("--placements", "inside and/or after", "'", p, "'");
  const std::vector<std::string> one_shot = policy_list(args);
  const auto streaming = split_list(args.get("--streaming", ""));
  for (const auto& n : streaming)
    if (!policy_info(n.substr(0, n.find(':'))).streaming)
      fail("--streaming", "policies with a streaming form", "'", n, "'");
  // keep the chosen lengths, and the first --keys prompts of every (length, depth)
  std::map<std::pair<index_t, index_t>, index_t> seen;
  std::erase_if(prompts, [&](const PasskeyPrompt& p) {
    const bool length_ok =
        std::find(lengths.begin(), lengths.end(), std::to_string(p.length)) != lengths.end();
    return !length_ok || seen[{p.length, p.depth}]++ >= keys;
  });
  if (prompts.empty()) fail("--lengths", "lengths present in the manifest", args.get("--lengths"));

  Model m(args.get("--model"));
  const index_t threads = parse_count("--threads", args.get("--threads", "2"));
  index_t max_len = 0;
  for (const auto& p : prompts) max_len = std::max(max_len, p.length);
  kl::Session s(m.model, m.path, {.n_ctx = max_len + 64, .threads = threads});
  std::vector<std::pair<std::string, AnyPolicy>> policies;
  for (const auto& spec : one_shot)
    policies.emplace_back(spec, s.policy(spec, {.settings = settings(args), .seed = seed(args)}));
  std::vector<std::pair<std::string, AnyPolicy>> streams;
  for (const auto& spec : streaming)
    streams.emplace_back(spec, make_policy(spec.substr(0, spec.find(':')),
                                           {.settings = settings(args), .seed = seed(args)}));

  std::FILE* csv =
      open_csv(args, "policy,mode,ratio,placement,length,depth,key,answer,correct,kept");
  struct Tally {
    index_t hits = 0, runs = 0;
  };
  std::map<std::tuple<std::string, double, std::string>, Tally> tally;
  const auto digits_of = [&](const std::vector<llama_token>& out) {
    std::string text;
    for (llama_token t : out) text += s.piece(t);
    std::string d;
    for (char c : text)
      if (c >= '0' && c <= '9')
        d += c;
      else if (!d.empty() || c != ' ')
        break;
    return d;
  };
  const auto record = [&](const std::string& policy, const char* mode, double ratio,
                          const std::string& placement, const PasskeyPrompt& p,
                          const std::string& answer, index_t kept) {
    const bool ok = answer == p.key;
    auto& t = tally[{policy, ratio, placement}];
    t.hits += ok ? 1 : 0;
    ++t.runs;
    if (csv != nullptr)
      std::fprintf(csv, "%s,%s,%.2f,%s,%lld,%lld,%s,%s,%d,%lld\n", policy.c_str(), mode, ratio,
                   placement.c_str(), static_cast<long long>(p.length),
                   static_cast<long long>(p.depth), p.key.c_str(), answer.c_str(), ok ? 1 : 0,
                   static_cast<long long>(kept));
  };
  // a 5-digit key is 5 tokens (split_digits), and the model may first emit a bare "▁" piece
  const auto key_tokens = static_cast<index_t>(6);
  const auto t_start = std::chrono::steady_clock::now();
  for (const auto& p : prompts) {
    const std::string inside = read_text("--prompts", p.inside);
    const std::string context = read_text("--prompts", p.after);
    const auto question = s.tokenize(" " + inside.substr(context.size() + 1), false);
    for (const auto& placement : placements) {
      const bool in = placement == "inside";
      const auto tokens = s.tokenize(in ? inside : context);
      const auto n = static_cast<index_t>(tokens.size());
      s.reset();
      s.prefill(tokens);
      const auto full = s.save();
      const auto finish = [&]() {
        s.capture_qkv(false);  // nothing is compressed after this point
        if (!in) s.prefill(question);
        return digits_of(s.generate(key_tokens));
      };
      record("full", "-", 1.0, placement, p, finish(), n);
      const auto budget_of = [&](double ratio) {
        return std::max<index_t>(1, static_cast<index_t>(std::lround(ratio * n)));
      };
      for (const auto& [name, policy] : policies) {  // scored once, chosen at every ratio
        s.restore(full);
        const auto scores = s.score(policy, window);
        for (const double ratio : ratios) {
          s.restore(full);
          s.compress(policy, scores,
                     budget_free(policy) ? Budget::none() : Budget::tokens(budget_of(ratio)));
          const index_t kept = s.cached();
          record(name, "one-shot", ratio, placement, p, finish(), kept);
        }
      }
      for (const double ratio : ratios) {
        const index_t budget = budget_of(ratio);
        for (const auto& [name, policy] : streams) {
          s.reset();
          s.capture_qkv(false);  // the stream reads probabilities, not Q/K/V
          s.stream(policy, budget, kl::PositionMode::keep);
          s.prefill(tokens);
          const index_t kept = s.cached();
          record(name, "stream", ratio, placement, p, finish(), kept);
        }
      }
    }
  }
  if (csv != nullptr) std::fclose(csv);
  const double secs =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count();
  std::printf("%-26s %6s %-7s %9s\n", "policy", "ratio", "place", "accuracy");
  for (const auto& [k, t] : tally)
    std::printf("%-26s %6.2f %-7s %8.1f%%  (%lld/%lld)\n", std::get<0>(k).c_str(), std::get<1>(k),
                std::get<2>(k).c_str(),
                100.0 * static_cast<double>(t.hits) / static_cast<double>(t.runs),
                static_cast<long long>(t.hits), static_cast<long long>(t.runs));
  std::printf("[%zu prompts, %.1f s]\n", prompts.size(), secs);
  return 0;
}

/// Prompt compression, then continuation (issue 18, item 3): the text's tokens cut into
/// --windows consecutive windows of --prompt + --next tokens; each prompt is prefilled once,
/// then for every (policy, ratio) compressed from that snapshot and the next tokens scored
/// (their perplexity given the compressed cache). `full` is the uncompressed reference. The
/// prompt and its continuation fit the context together (1792 + 256 = 2048 by default) so that
/// the reference is within the trained context.
int continuation(int argc, char** argv) {
  const Args args(argc, argv, 2, {"--keep-positions", "--shift-positions"});
  args.allow({"--model", "--text-file", "--prompt", "--next", "--windows", "--policies", "--ratios",
              "--window", "--csv", "--threads", "--seed", "--set", "--keep-positions",
              "--shift-positions"});
  const std::string text = read_text("--text-file", args.get("--text-file"));
  const index_t prompt = parse_count("--prompt", args.get("--prompt", "1792"));
  const index_t next = parse_count("--next", args.get("--next", "256"));
  const index_t windows = parse_count("--windows", args.get("--windows", "4"));
  const index_t window = parse_count("--window", args.get("--window", "0"));
  const index_t threads = parse_count("--threads", args.get("--threads", "2"));
  if (prompt < 1) fail("--prompt", "a count >= 1", prompt);
  if (next < 1) fail("--next", "a count >= 1", next);
  const std::vector<double> ratios = ratio_list(args, "0.1,0.2,0.3,0.4,0.5");
  const std::vector<std::string> specs = policy_list(args);
  const auto mode = positions(args, kl::PositionMode::keep);
  Model m(args.get("--model"));
  kl::Session s(m.model, m.path, {.n_ctx = prompt + next + 8, .threads = threads});
  const auto tokens = s.tokenize(text);
  if (static_cast<index_t>(tokens.size()) < windows * (prompt + next))
    fail("--text-file",
         cat("at least ", windows * (prompt + next), " tokens (--windows × (",
             "--prompt + --next))"),
         tokens.size());
  std::vector<std::pair<std::string, AnyPolicy>> policies;
  for (const auto& spec : specs)
    policies.emplace_back(spec, s.policy(spec, {.settings = settings(args), .seed = seed(args)}));
  std::FILE* csv = open_csv(args, "policy,ratio,window,kept,nll,tokens");
  std::map<std::pair<std::string, double>, std::pair<double, index_t>> sum;
  const auto record = [&](const std::string& name, double ratio, index_t w, double nll) {
    auto& t = sum[{name, ratio}];
    t.first += nll;
    t.second += next;
    if (csv != nullptr)
      std::fprintf(csv, "%s,%.2f,%lld,%lld,%.6f,%lld\n", name.c_str(), ratio,
                   static_cast<long long>(w), static_cast<long long>(s.cached() - next), nll,
                   static_cast<long long>(next));
  };
  const auto t0 = std::chrono::steady_clock::now();
  for (index_t w = 0; w < windows; ++w) {
    std::vector<llama_token> head(tokens.begin() + w * (prompt + next),
                                  tokens.begin() + w * (prompt + next) + prompt);
    // every window starts as a document does: with BOS
    head.insert(head.begin(), llama_vocab_bos(llama_model_get_vocab(m.model)));
    const std::span<const llama_token> tail(tokens.data() + w * (prompt + next) + prompt,
                                            static_cast<std::size_t>(next));
    s.reset();
    s.prefill(head);
    const auto full = s.save();
    const auto score_tail = [&]() {
      s.capture_qkv(false);  // nothing is compressed while the continuation is scored
      return s.nll(tail);
    };
    record("full", 1.0, w, score_tail());
    for (const auto& [name, policy] : policies) {  // scored once, chosen at every ratio
      s.restore(full);
      const auto scores = s.score(policy, window);
      for (const double ratio : ratios) {
        s.restore(full);
        const auto n = static_cast<index_t>(head.size());
        const index_t budget = std::max<index_t>(1, static_cast<index_t>(std::lround(ratio * n)));
        s.compress(policy, scores, budget_free(policy) ? Budget::none() : Budget::tokens(budget),
                   mode);
        record(name, ratio, w, score_tail());
      }
    }
  }
  if (csv != nullptr) std::fclose(csv);
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("%-26s %6s %10s\n", "policy", "ratio", "perplexity");
  for (const auto& [k, t] : sum)
    std::printf("%-26s %6.2f %10.3f\n", k.first.c_str(), k.second,
                std::exp(t.first / static_cast<double>(t.second)));
  std::printf("[%lld windows of %lld + %lld tokens, %.1f s]\n", static_cast<long long>(windows),
              static_cast<long long>(prompt), static_cast<long long>(next), secs);
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
      "usage: kvevict-llama generate|ppl|dump|passkey|continuation --model M.gguf …  (see "
      "integrations/llama.cpp/README)";
  try {
    if (argc < 2)
      kvevict::detail::fail("command", "generate, ppl, dump, passkey or continuation", "nothing");
    const std::string command = argv[1];
    if (command == "generate") return kvevict::cli::generate(argc, argv);
    if (command == "ppl") return kvevict::cli::ppl(argc, argv);
    if (command == "dump") return kvevict::cli::dump(argc, argv);
    if (command == "passkey") return kvevict::cli::passkey(argc, argv);
    if (command == "continuation") return kvevict::cli::continuation(argc, argv);
    if (command == "--help" || command == "-h") {
      std::printf("%s\n", usage.c_str());
      return 0;
    }
    kvevict::detail::fail("command", "generate, ppl, dump, passkey or continuation", "'", command,
                          "'");
  } catch (const kvevict::error& e) {
    std::fprintf(stderr, "kvevict-llama: %s\n", e.what());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "kvevict-llama: error: %s\n", e.what());
    return 1;
  }
}
