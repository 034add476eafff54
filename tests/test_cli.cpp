// The kvevict command end to end, on .npy files the test writes itself.
// SPDX-License-Identifier: Apache-2.0
#include <kvevict/eval/npy.hpp>
#include <kvevict/eval/stored.hpp>
#include <kvevict/eval/workload.hpp>
#include <kvevict/registry.hpp>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <unistd.h>

#include "support.hpp"

namespace kvevict::test {
namespace {

/// The library's policies: what the command knows (this test program also registers its own,
/// test_registry.cpp, which the command does not have).
std::vector<std::string_view> library_policy_names() {
  std::vector<std::string_view> names;
  for_each_policy([&]<class P>() { names.push_back(P::name); });
  return names;
}

namespace fs = std::filesystem;

struct Result {
  int code;
  std::string out, err;
};

/// A directory of this test process (CTest runs test cases in parallel processes).
const fs::path& scratch() {
  static const fs::path dir = [] {
    const fs::path d = fs::temp_directory_path() / ("kvevict_cli_" + std::to_string(getpid()));
    fs::create_directories(d);
    return d;
  }();
  return dir;
}

/// Runs the command with `args`, capturing stdout and stderr.
Result run(const std::string& args) {
  const fs::path& dir = scratch();
  const fs::path out = dir / "kvevict_cli_out.txt", err = dir / "kvevict_cli_err.txt";
  const std::string cmd =
      std::string(KVEVICT_CLI) + " " + args + " >" + out.string() + " 2>" + err.string();
  const int status = std::system(cmd.c_str());
  auto slurp = [](const fs::path& p) {
    std::ifstream in(p);
    std::stringstream s;
    s << in.rdbuf();
    return s.str();
  };
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, slurp(out), slurp(err)};
}

/// A directory of small inputs: K, V [2, 40, 8], Q [4, 8, 8], float32 and float16.
class Cli : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = scratch();
    std::mt19937_64 rng(17);
    std::normal_distribution<float> normal;
    auto save = [&](const std::string& name, std::vector<index_t> shape, bool half) {
      index_t count = 1;
      for (index_t s : shape) count *= s;
      std::vector<float> x(static_cast<std::size_t>(count));
      for (float& v : x) v = normal(rng);
      if (half) {
        std::vector<Eigen::half> h(x.begin(), x.end());
        npy::write(path(name), npy::DType::float16, shape, h.data());
      } else {
        npy::write(path(name), npy::DType::float32, shape, x.data());
      }
      return x;
    };
    k_ = save("k.npy", {2, 40, 8}, false);
    v_ = save("v.npy", {2, 40, 8}, false);
    q_ = save("q.npy", {4, 8, 8}, false);
    save("k16.npy", {2, 40, 8}, true);
    save("v16.npy", {2, 40, 8}, true);
    save("q16.npy", {4, 8, 8}, true);
    save("v_short.npy", {2, 39, 8}, false);
    save("q_dim.npy", {4, 8, 6}, false);
    save("q_heads.npy", {3, 8, 8}, false);
    save("q_all.npy", {4, 40, 8}, false);
    wo_ = save("wo.npy", {4, 8, 12}, false);
    save("wo_bad.npy", {4, 6, 12}, false);
    auto bad = k_;
    bad[static_cast<std::size_t>(1 * 320 + 5 * 8 + 2)] = std::numeric_limits<float>::infinity();
    const std::vector<index_t> shape{2, 40, 8};
    npy::write(path("k_inf.npy"), npy::DType::float32, shape, bad.data());
    std::ofstream(path("garbage.npy")) << "not an npy file at all";
    auto poisoned = [&](const std::string& name, std::vector<float> x, std::vector<index_t> shape,
                        std::size_t at, float value) {
      x[at] = value;
      npy::write(path(name), npy::DType::float32, shape, x.data());
    };
    const float nan = std::numeric_limits<float>::quiet_NaN();
    poisoned("v_nan.npy", v_, {2, 40, 8}, 40 * 8 + 3 * 8 + 1, nan);
    poisoned("q_nan.npy", q_, {4, 8, 8}, 2 * 64 + 7 * 8, -std::numeric_limits<float>::infinity());
    poisoned("wo_nan.npy", wo_, {4, 8, 12}, 3 * 96 + 5, nan);
    // Headers numpy writes for arrays the command does not take, and a cut file.
    auto raw = [&](const std::string& name, const std::string& dict, std::size_t data_bytes,
                   std::size_t keep = std::string::npos) {
      std::string h = dict;
      while ((10 + h.size() + 1) % 64 != 0) h += ' ';
      h += '\n';
      std::string f = "\x93NUMPY";
      f += '\x01';
      f += '\0';
      f += static_cast<char>(h.size() & 0xff);
      f += static_cast<char>(h.size() >> 8);
      f += h + std::string(data_bytes, '\0');
      std::ofstream(path(name), std::ios::binary) << f.substr(0, keep);
    };
    raw("k_fortran.npy", "{'descr': '<f4', 'fortran_order': True, 'shape': (2, 40, 8), }", 2560);
    raw("k_big.npy", "{'descr': '>f4', 'fortran_order': False, 'shape': (2, 40, 8), }", 2560);
    raw("k_f64.npy", "{'descr': '<f8', 'fortran_order': False, 'shape': (2, 40, 8), }", 5120);
    raw("k_cut.npy", "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 40, 8), }", 2560,
        64 + 1000);
    raw("k_header_cut.npy", "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 40, 8), }", 2560,
        30);
    raw("k_rank2.npy", "{'descr': '<f4', 'fortran_order': False, 'shape': (80, 8), }", 2560);
    raw("k_empty.npy", "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 0, 8), }", 0);
    std::ofstream(path("a_file")) << "x";
  }
  static void TearDownTestSuite() { fs::remove_all(dir_); }
  static std::string path(const std::string& name) { return (dir_ / name).string(); }
  static std::string inputs(const std::string& k = "k.npy", const std::string& v = "v.npy",
                            const std::string& q = "q.npy") {
    return "--keys " + path(k) + " --values " + path(v) + " --queries " + path(q);
  }

  /// The inputs k.npy, v.npy, q.npy as the library views them: 2 KV heads, 40 tokens, d = 8;
  /// 4 query heads, a window of 8.
  static KVCache<float> cache() {
    return {
        Storage<float>::hnd(k_.data(), 40, 8), Storage<float>::hnd(v_.data(), 40, 8), {2, 40, 8}};
  }
  static QueryWindow<float> window() { return {q_.data(), 4, 8, 8}; }

  static inline fs::path dir_;
  static inline std::vector<float> k_, v_, q_, wo_;
};

/// The kept lists of every head as the command prints them: "[0, 3, …], [1, …]".
std::string kept_lists(const Selection& sel) {
  std::string out;
  for (index_t h = 0; h < sel.kv_heads(); ++h) {
    out += h ? ", [" : "[";
    for (std::size_t i = 0; i < sel.kept(h).size(); ++i)
      out += (i ? ", " : "") + std::to_string(sel.kept(h)[i]);
    out += "]";
  }
  return out;
}

TEST_F(Cli, SelectMatchesTheLibrary) {
  const Result r =
      run("select --policy snapkv --set window=4 --set kernel=3 --budget 12 " + inputs());
  ASSERT_EQ(r.code, 0) << r.err;
  // The same selection through the library.
  const KVCache<float> kv = cache();
  Selection sel;
  Workspace ws;
  SnapKV({.window = 4, .kernel = 3}).select(kv, window(), Budget::tokens(12), sel, ws);
  const std::string kept = "\"kept\": [" + kept_lists(sel);
  EXPECT_NE(r.out.find(kept + "]"), std::string::npos) << r.out << "\nwant " << kept;
  EXPECT_NE(
      r.out.find("\"policy\": \"snapkv\", \"params\": {\"window\": 4, \"kernel\": 3, \"pool\": "
                 "\"max\", \"ada\": false, \"alpha_safeguard\": 0.2, \"safeguard\": \"kvpress\", "
                 "\"reduce\": \"mean\", \"granularity\": \"per_head\"}, \"n\": 40, \"budget\": 12"),
      std::string::npos)
      << r.out;
}

// The library's config-string syntax on the command line, and page-granular selection: the same
// kept set as the library's, whole pages of 4 tokens.
TEST_F(Cli, ConfigStringsAndPagesMatchTheLibrary) {
  const Result r =
      run("select --policy 'snapkv: window=4, kernel=3' --granularity pages "
          "--page-size 4 --budget 12 " +
          inputs());
  ASSERT_EQ(r.code, 0) << r.err;
  const KVCache<float> kv = cache();
  Selection sel;
  Workspace ws;
  const AnyPolicy snap = parse_policy("snapkv:window=4,kernel=3,granularity=pages");
  snap.choose(snap.score(kv, window(), Granularity::pages, ws), Budget::tokens(12), sel, ws, 4);
  const std::string kept = "\"kept\": [" + kept_lists(sel);
  EXPECT_NE(r.out.find(kept + "]"), std::string::npos) << r.out << "\nwant " << kept;
  EXPECT_NE(r.out.find("\"granularity\": \"pages\""), std::string::npos) << r.out;
  std::vector<index_t> dropped;
  dropped_pages(sel, 4, dropped);  // throws unless whole pages are kept; 12 / 4 = 3 of 10 kept
  EXPECT_EQ(dropped.size(), 7u);
}

TEST_F(Cli, SelectsOnFloat16SharedAndWritesOut) {
  const std::string out = path("out.json");
  fs::remove(out);
  const Result r =
      run("select --policy random --seed 3 --shared --ratio 0.25 --set sinks=2 --out " + out + " " +
          inputs("k16.npy", "v16.npy", "q16.npy"));
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_TRUE(r.out.empty());
  std::ifstream in(out);
  std::stringstream s;
  s << in.rdbuf();
  EXPECT_NE(
      s.str().find(
          "\"params\": {\"sinks\": 2, \"recent\": 0, \"granularity\": \"shared\", \"seed\": 3}"),
      std::string::npos)
      << s.str();
  EXPECT_NE(s.str().find("\"budget\": 10, \"shared\": true, \"kept\": [[0, 1, "), std::string::npos)
      << s.str();
  // Deterministic: the same command gives the same bytes.
  const Result again = run("select --policy random --seed 3 --shared --ratio 0.25 --set sinks=2 " +
                           inputs("k16.npy", "v16.npy", "q16.npy"));
  EXPECT_EQ(again.out, s.str());
}

// --kv-format: the inputs stored as an engine stores them (int8 with per-token scales here),
// selected with fp32 queries — the library's selection on the same stored cache; a format
// whose block does not divide head_dim is refused by name.
TEST_F(Cli, SelectsOnAQuantizedCache) {
  const Result r =
      run("select --policy snapkv --set window=4 --set kernel=3 --budget 12 "
          "--kv-format int8 " +
          inputs());
  ASSERT_EQ(r.code, 0) << r.err;
  const eval::Stored<int8> stored(k_.data(), v_.data(), 2, 40, 8, 8);
  Selection sel;
  Workspace ws;
  SnapKV({.window = 4, .kernel = 3}).select(stored.view(), window(), Budget::tokens(12), sel, ws);
  const std::string kept =
      "\"kv_format\": \"int8\", \"shared\": false, \"kept\": [" + kept_lists(sel);
  EXPECT_NE(r.out.find(kept + "]"), std::string::npos) << r.out << "\nwant " << kept;
  EXPECT_EQ(run("select --policy snapkv --budget 12 --kv-format q8_0 " + inputs()).err,
            "kvevict: --kv-format: expected a format whose block (32 values) divides head_dim "
            "(8, 8), got q8_0\n");
  EXPECT_EQ(run("select --policy snapkv --budget 12 --kv-format q5_1 " + inputs()).err,
            "kvevict: --kv-format: expected one of q8_0, q4_0, fp8_e4m3, fp8_e5m2, int8, got "
            "q5_1\n");
}

TEST_F(Cli, NaclPresetAndSeed) {
  const std::string args = "select --policy nacl --ratio 0.5 --seed 9 --set preset=paper20 " +
                           inputs("k.npy", "v.npy", "q.npy");
  const Result r = run(args);
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("\"params\": {\"sinks\": 4, \"recent\": 32, \"random_share\": 0.666667, "
                       "\"causal\": false, \"preset\": \"paper20\", \"reduce\": \"sum\", "
                       "\"granularity\": \"per_head\", \"seed\": 9}"),
            std::string::npos)
      << r.out;
  EXPECT_EQ(run(args).out, r.out);  // reproducible
  const Result bad = run("select --policy nacl --ratio 0.5 --set preset=paper25 " + inputs());
  EXPECT_EQ(bad.err,
            "kvevict: preset (in policy 'nacl:preset=paper25'): expected one of none, paper10, "
            "paper20, paper30, long_context, got 'paper25'\n");
}

TEST_F(Cli, CriticalKVReadsTheOutputProjection) {
  const Result r =
      run("select --policy criticalkv --budget 12 --set window=4 --set kernel=3 --wo " +
          path("wo.npy") + " " + inputs());
  ASSERT_EQ(r.code, 0) << r.err;
  const KVCache<float> kv = cache();
  Selection sel;
  Workspace ws;
  CriticalKV({.window = 4, .kernel = 3}, OutputProjection::dense(wo_.data(), 4, 8, 12))
      .select(kv, window(), Budget::tokens(12), sel, ws);
  std::string first = "\"kept\": [[";
  for (std::size_t i = 0; i < sel.kept(0).size(); ++i)
    first += (i ? ", " : "") + std::to_string(sel.kept(0)[i]);
  EXPECT_NE(r.out.find(first + "]"), std::string::npos) << r.out;
  EXPECT_EQ(run("select --policy criticalkv --budget 12 " + inputs()).err,
            "kvevict: --wo: expected the output projection W_o for criticalkv, got none\n");
  EXPECT_EQ(
      run("select --policy criticalkv --budget 12 --wo " + path("wo_bad.npy") + " " + inputs()).err,
      "kvevict: wo: expected shape [4, 8, hidden] (q_heads and d_v of the inputs), got [4, 6, "
      "12]\n");
}

TEST_F(Cli, CormTakesNoBudget) {
  Result r = run("select --policy corm --set w=4 --set r=4 " + inputs());
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("\"budget\": null"), std::string::npos) << r.out;
  r = run("replay --policy corm --set w=4 --set r=4 " + inputs("k.npy", "v.npy", "q_all.npy"));
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("\"budget\": null"), std::string::npos) << r.out;
  EXPECT_EQ(run("replay --policy corm --budget 5 " + inputs("k.npy", "v.npy", "q_all.npy")).err,
            "kvevict: budget: expected none: corm is budget-free, got 5\n");
}

TEST_F(Cli, EvalWritesTableCsvAndPlot) {
  const std::string csv = path("eval.csv"), svg = path("eval.svg"), heads = path("heads.csv");
  const Result r =
      run("eval --workload default,needle_inside --workload-set n=300 --policies "
          "snapkv,h2o,corm --set snapkv.window=16 --ratios 0.2,0.4 --csv " +
          csv + " --plot " + svg + " --per-head " + heads);
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_TRUE(r.err.empty()) << r.err;  // no progress bar when stderr is not a terminal
  EXPECT_NE(r.out.find("needle_inside  snapkv             40%"), std::string::npos) << r.out;
  std::ifstream in(csv);
  std::string line;
  int lines = 0;
  while (std::getline(in, line)) ++lines;
  EXPECT_EQ(lines, 1 + 2 * (2 + 2 + 1));  // header + 2 workloads × (2 + 2 budgets + corm once)
  std::ifstream plot(svg);
  std::stringstream text;
  text << plot.rdbuf();
  EXPECT_NE(text.str().find("data-series=\"corm (kept "), std::string::npos);  // budget-free
  EXPECT_EQ(run("eval --workload default --set snapkv.windw=4 --policies snapkv").err,
            "kvevict: windw (in policy 'snapkv:windw=4'): expected a parameter of snapkv (window, "
            "kernel, pool, ada, alpha_safeguard, safeguard, reduce, granularity), got 'windw'\n");
  EXPECT_EQ(run("eval --workload default --set h2o.recent=4 --policies snapkv").err,
            "kvevict: --set: expected settings for a policy in --policies, got 'h2o'\n");
  EXPECT_EQ(run("eval --workload default --mode streaming").err,
            "kvevict: --mode: expected one-shot or replay, got 'streaming'\n");
}

// eval --kv-format: every row says its format and its agreement with the fp32 selection.
TEST_F(Cli, EvalOnAQuantizedCacheReportsAgreement) {
  const std::string csv = path("q8.csv");
  const Result r =
      run("eval --workload default --workload-set n=300 --policies snapkv,knorm --ratios 0.2 "
          "--kv-format q8_0 --csv " +
          csv);
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("format"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("agree"), std::string::npos) << r.out;
  std::ifstream in(csv);
  std::string header, row;
  std::getline(in, header);
  EXPECT_EQ(header.substr(header.size() - std::string("kv_format,agreement").size()),
            "kv_format,agreement");
  int rows = 0;
  while (std::getline(in, row)) {
    ++rows;
    const auto comma = row.rfind(',');
    EXPECT_EQ(row.substr(row.rfind(',', comma - 1) + 1, comma - row.rfind(',', comma - 1) - 1),
              "q8_0")
        << row;
    const double agreement = std::stod(row.substr(comma + 1));
    EXPECT_GT(agreement, 0.5) << row;
    EXPECT_LE(agreement, 1.0) << row;
  }
  EXPECT_EQ(rows, 2);
  EXPECT_EQ(run("eval --workload default --mode replay --kv-format q8_0 --policies h2o").err,
            "kvevict: --kv-format: expected one-shot mode (replays run on fp32), got q8_0\n");
}

TEST_F(Cli, DemoWritesItsFiles) {
  const Result r = run("demo --out-dir " + dir_.string());
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_TRUE(fs::exists(dir_ / "kvevict-demo.csv"));
  EXPECT_TRUE(fs::exists(dir_ / "kvevict-demo.svg"));
  for (auto name : library_policy_names())
    EXPECT_NE(r.out.find(std::string(name)), std::string::npos);
  EXPECT_NE(r.out.find("wrote "), std::string::npos);
}

TEST_F(Cli, ListShowsEveryPolicyAndItsDefaults) {
  const Result r = run("list");
  ASSERT_EQ(r.code, 0);
  for (auto name : library_policy_names())
    EXPECT_NE(r.out.find(std::string(name)), std::string::npos) << name;
  EXPECT_NE(r.out.find("kernel             7"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("pool               max "), std::string::npos) << r.out;
  // Every parameter line is generated from the registry's metadata (issue 33.6): an enum lists
  // the values that parse (test_registry checks those against the policies' validation).
  for (const PolicyEntry* e : policy_entries()) {
    if (!e->builtin) continue;
    const auto at = r.out.find(std::string(e->name) + " ");
    ASSERT_NE(at, std::string::npos) << e->name;
    for (const ParameterInfo& p : e->parameters) {
      std::string accepts = p.range;
      if (!p.values.empty()) {
        accepts = "one of ";
        for (std::size_t i = 0; i < p.values.size(); ++i) accepts += (i ? ", " : "") + p.values[i];
      }
      EXPECT_NE(r.out.find(p.doc + (accepts.empty() ? "" : "; " + accepts) + "\n", at),
                std::string::npos)
          << e->name << "." << p.name;
    }
  }
  EXPECT_NE(r.out.find("one of per_head, equal, shared, layers\n"), std::string::npos)
      << "cascade's granularity";
}

TEST_F(Cli, ReplayReportsKeptTokensAndErrors) {
  Result r = run("replay --policy streaming_llm --budget 10 --set sinks=2 " +
                 inputs("k.npy", "v.npy", "q_all.npy"));
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("\"kept\": [[0, 1, 32, 33, 34, 35, 36, 37, 38, 39], [0, 1, 32, 33, 34, 35, "
                       "36, 37, 38, 39]]"),
            std::string::npos)
      << r.out;
  EXPECT_NE(r.out.find("\"step_error\": [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, "), std::string::npos)
      << r.out;
  r = run("replay --policy h2o --budget 40 " + inputs("k.npy", "v.npy", "q_all.npy"));
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("\"error\": {\"mean\": 0, \"max\": 0}"), std::string::npos) << r.out;
  r = run("replay --policy h2o --budget 10 " + inputs());  // Q of the window only
  EXPECT_EQ(r.code, 2);
  EXPECT_EQ(r.err,
            "kvevict: queries: expected one query per position: [q_heads, 40, 8], got [4, 8, 8]\n");
  r = run("replay --policy tova " + inputs("k.npy", "v.npy", "q_all.npy"));
  EXPECT_EQ(r.err, "kvevict: budget: expected a token budget for tova, got none\n");
}

/// "streaming_llm, random, …": every policy name, as the command lists them in errors.
std::string known_policies() {
  std::string out;
  for (auto name : library_policy_names()) out += (out.empty() ? "" : ", ") + std::string(name);
  return out;
}

std::string known_workloads() {
  std::string out;
  for (auto name : eval::workload_names()) out += (out.empty() ? "" : ", ") + std::string(name);
  return out;
}

// Every bad input exits non-zero with one line naming what is wrong, and writes nothing.
TEST_F(Cli, BadInputExitsWithOneLineAndWritesNothing) {
  const std::string out = path("never.json");
  const std::pair<std::string, std::string> cases[] = {
      {"select --policy snapkv --budget 10 " + inputs("garbage.npy"),
       "kvevict: keys: expected a .npy file (magic \\x93NUMPY), got a file of 22 bytes without "
       "it\n"},
      {"select --policy snapkv --budget 10 " + inputs("k.npy", "v_short.npy"),
       "kvevict: values: expected shape [2, 40, d_v] to match the keys, got [2, 39, 8]\n"},
      {"select --policy snapkv --budget 10 " + inputs("k.npy", "v.npy", "q_dim.npy"),
       "kvevict: queries: expected head_dim 8 (the keys'), got [4, 8, 6]\n"},
      {"select --policy snapkv --budget 10 " + inputs("k.npy", "v.npy", "q_heads.npy"),
       "kvevict: queries: expected q_heads a multiple of kv_heads (2), got [3, 8, 8]\n"},
      {"select --policy snapkv --budget 10 " + inputs("k_inf.npy"),
       "kvevict: keys: expected finite values, got inf at [1, 5, 2]\n"},
      {"select --policy snapkv --budget 0 " + inputs(),
       "kvevict: budget: expected a token count >= 1, got 0\n"},
      {"select --policy snapkv --ratio 1.5 " + inputs(),
       "kvevict: budget: expected a ratio in (0, 1], got 1.5\n"},
      {"select --policy snapkv --budget 10 --ratio 0.5 " + inputs(),
       "kvevict: --budget: expected exactly one of --budget N and --ratio R, got both\n"},
      {"select --policy snapkv --budget 3 --set window=4 " + inputs(),
       "kvevict: budget: expected at least window (4) tokens, got 3\n"},
      {"select --policy snapkv --budget 10 --set windw=4 " + inputs(),
       "kvevict: windw (in policy 'snapkv:windw=4'): expected a parameter of snapkv (window, "
       "kernel, pool, ada, alpha_safeguard, safeguard, reduce, granularity), got 'windw'\n"},
      {"select --policy snapkv:windw=4 --budget 10 " + inputs(),  // the library's syntax
       "kvevict: windw (in policy 'snapkv:windw=4'): expected a parameter of snapkv (window, "
       "kernel, pool, ada, alpha_safeguard, safeguard, reduce, granularity), got 'windw'\n"},
      {"select --policy snapkv:window=8 --budget 10 --set window=4 " + inputs(),
       "kvevict: window (in policy 'snapkv:window=4,window=8'): expected each parameter set "
       "once, got '4' and then '8'\n"},
      {"select --policy snapkv --budget 10 --set pool=min " + inputs(),
       "kvevict: pool (in policy 'snapkv:pool=min'): expected one of max, avg, got 'min'\n"},
      {"select --policy snapkv --budget 10 --set window=x " + inputs(),
       "kvevict: window (in policy 'snapkv:window=x'): expected an integer, got 'x'\n"},
      {"select --policy h3o --budget 10 " + inputs(),
       "kvevict: policy: expected one of " + known_policies() + ", got 'h3o'\n"},
      {"select --policy snapkv --budget 10 --bogus 1 " + inputs(),
       "kvevict: arguments: expected one of --policy --keys --values --queries --wo --budget "
       "--ratio --set --seed --shared --granularity --page-size --out --kv-format --threads, got "
       "'--bogus'\n"},
      {"select --policy snapkv --budget 10 --keys " + path("k.npy"),
       "kvevict: --values: expected to be given, got nothing\n"},
      {"frobnicate",
       "kvevict: command: expected list, select, replay, eval or demo, got 'frobnicate'\n"},
      // non-finite values in every input
      {"select --policy snapkv --budget 10 " + inputs("k.npy", "v_nan.npy"),
       "kvevict: values: expected finite values, got nan at [1, 3, 1]\n"},
      {"select --policy snapkv --budget 10 " + inputs("k.npy", "v.npy", "q_nan.npy"),
       "kvevict: queries: expected finite values, got -inf at [2, 7, 0]\n"},
      {"select --policy criticalkv --budget 10 --set window=4 --wo " + path("wo_nan.npy") + " " +
           inputs(),
       "kvevict: wo: expected finite values, got nan at [3, 0, 5]\n"},
      {"select --policy criticalkv --budget 10 --set window=4 --wo " + path("wo_bad.npy") + " " +
           inputs(),
       "kvevict: wo: expected shape [4, 8, hidden] (q_heads and d_v of the inputs), got [4, 6, "
       "12]\n"},
      {"select --policy criticalkv --budget 10 --set window=4 " + inputs(),
       "kvevict: --wo: expected the output projection W_o for criticalkv, got none\n"},
      // npy files the command does not take
      {"select --policy snapkv --budget 10 " + inputs("k_fortran.npy"),
       "kvevict: keys: expected C order (fortran_order False), got a Fortran-order array\n"},
      {"select --policy snapkv --budget 10 " + inputs("k_big.npy"),
       "kvevict: keys: expected little-endian float32 or float16 ('<f4' or '<f2'), got "
       "big-endian '>f4'\n"},
      {"select --policy snapkv --budget 10 " + inputs("k_f64.npy"),
       "kvevict: keys: expected dtype float32 or float16 ('<f4' or '<f2'), got '<f8'\n"},
      {"select --policy snapkv --budget 10 " + inputs("k_cut.npy"),
       "kvevict: keys: expected 2560 bytes of data for its shape, got 936 (truncated)\n"},
      {"select --policy snapkv --budget 10 " + inputs("k_header_cut.npy"),
       "kvevict: keys: expected a header of 118 bytes, got only 20 bytes after the preamble "
       "(truncated file)\n"},
      {"select --policy snapkv --budget 10 " + inputs("k_rank2.npy"),
       "kvevict: keys: expected a 3-d array [kv_heads, n, d], got 2 dimensions\n"},
      {"select --policy snapkv --budget 10 " + inputs("k_empty.npy"),
       "kvevict: keys: expected a non-empty array [kv_heads, n, d], got a dimension of 0\n"},
      {"select --policy snapkv --budget 10 " + inputs("missing.npy"),
       "kvevict: keys: expected a readable .npy file, got '" + path("missing.npy") + "'\n"},
      // budgets
      {"select --policy snapkv --budget -5 " + inputs(),
       "kvevict: budget: expected a token count >= 1, got -5\n"},
      {"select --policy snapkv --ratio -0.2 " + inputs(),
       "kvevict: budget: expected a ratio in (0, 1], got -0.2\n"},
      {"select --policy snapkv --ratio nan " + inputs(),
       "kvevict: --ratio: expected a finite number, got 'nan'\n"},
      {"select --policy snapkv --budget 12x " + inputs(),
       "kvevict: --budget: expected an integer, got '12x'\n"},
      // outputs that cannot be written are refused before any work
      {"replay --policy h2o --budget 10 " + inputs("k.npy", "v.npy", "q_all.npy") + " --out " +
           path("no_dir/x.json"),
       "kvevict: --out: expected a file in an existing directory, got '" + path("no_dir/x.json") +
           "'\n"},
      {"eval --workload default --workload-set n=128 --policies tova --csv " + dir_.string(),
       "kvevict: --csv: expected a file path (not a directory), got '" + dir_.string() + "'\n"},
      {"demo --out-dir " + path("a_file"),
       "kvevict: --out-dir: expected a directory (it is created if missing), got '" +
           path("a_file") + "'\n"},
      // eval and replay arguments
      {"eval --workload nope",
       "kvevict: workload: expected one of " + known_workloads() + ", got 'nope'\n"},
      {"eval --workload default --workload-set head_dim=0",
       "kvevict: head_dim: expected an even head_dim in [16, 1024], got 0\n"},
      {"eval --workload default --workload-set n=100000000",
       "kvevict: n: expected 16 <= n <= 2^24 tokens, got 100000000\n"},
      {"eval --workload default --workload-set n=4000000 --workload-set head_dim=256",
       "kvevict: n: expected a workload of at most 2^30 floats (4 GiB) over K, V, Q, the held-out "
       "queries and W_o; lower n, head_dim, kv_heads or group, got 12292227072 floats\n"},
      {"eval --workload default --workload-set colour=red",
       "kvevict: --workload-set: expected a knob: n, head_dim, kv_heads, group, window, future, "
       "sinks, sink_strength, sink_value, recency, heavy_fraction, heavy_strength, needles, "
       "needle_strength, question, value_sigma, rope_base, noise, seed, got 'colour'\n"},
      {"eval --workload default --ratios 0.1,2",
       "kvevict: budget: expected a ratio in (0, 1], got 2\n"},
      {"eval --workload default --mode sideways",
       "kvevict: --mode: expected one-shot or replay, got 'sideways'\n"},
      {"eval --workload default --set snapkv.windw=3 --policies snapkv",
       "kvevict: windw (in policy 'snapkv:windw=3'): expected a parameter of snapkv (window, "
       "kernel, pool, ada, alpha_safeguard, safeguard, reduce, granularity), got 'windw'\n"},
      {"replay --policy corm --budget 10 " + inputs("k.npy", "v.npy", "q_all.npy"),
       "kvevict: budget: expected none: corm is budget-free, got 10\n"},
      {"replay --policy h2o --budget 10 " + inputs(),
       "kvevict: queries: expected one query per position: [q_heads, 40, 8], got [4, 8, 8]\n"},
  };
  for (const auto& [args, message] : cases) {
    fs::remove(out);
    // Each command's own output option points at `out`, unless the case is about it.
    std::string output;
    if (args.find("--out") == std::string::npos && args.find("--csv") == std::string::npos)
      output = args.rfind("eval", 0) == 0   ? " --csv " + out
               : args.rfind("demo", 0) == 0 ? ""
                                            : " --out " + out;
    const Result r = run(args + output);
    EXPECT_NE(r.code, 0) << args;
    EXPECT_EQ(r.err, message) << args;
    EXPECT_FALSE(fs::exists(out)) << args;
  }
}

}  // namespace
}  // namespace kvevict::test
