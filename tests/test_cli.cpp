// The kvevict command end to end, on .npy files the test writes itself.
// SPDX-License-Identifier: Apache-2.0
#include <kvevict/eval/npy.hpp>
#include <kvevict/eval/registry.hpp>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <unistd.h>

#include "support.hpp"

namespace kvevict::test {
namespace {

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
  }
  static void TearDownTestSuite() { fs::remove_all(dir_); }
  static std::string path(const std::string& name) { return (dir_ / name).string(); }
  static std::string inputs(const std::string& k = "k.npy", const std::string& v = "v.npy",
                            const std::string& q = "q.npy") {
    return "--keys " + path(k) + " --values " + path(v) + " --queries " + path(q);
  }

  static inline fs::path dir_;
  static inline std::vector<float> k_, v_, q_, wo_;
};

TEST_F(Cli, SelectMatchesTheLibrary) {
  const Result r =
      run("select --policy snapkv --set window=4 --set kernel=3 --budget 12 " + inputs());
  ASSERT_EQ(r.code, 0) << r.err;
  // The same selection through the library.
  const KVCache<float> kv(Storage<float>::hnd(k_.data(), 40, 8),
                          Storage<float>::hnd(v_.data(), 40, 8), {2, 40, 8});
  Selection sel;
  Workspace ws;
  SnapKV({.window = 4, .kernel = 3})
      .select(kv, QueryWindow<float>(q_.data(), 4, 8, 8), Budget::tokens(12), sel, ws);
  std::string kept = "\"kept\": [";
  for (index_t h = 0; h < 2; ++h) {
    kept += h ? ", [" : "[";
    for (std::size_t i = 0; i < sel.kept(h).size(); ++i)
      kept += (i ? ", " : "") + std::to_string(sel.kept(h)[i]);
    kept += "]";
  }
  EXPECT_NE(r.out.find(kept + "]"), std::string::npos) << r.out << "\nwant " << kept;
  EXPECT_NE(
      r.out.find("\"policy\": \"snapkv\", \"params\": {\"window\": 4, \"kernel\": 3, \"pool\": "
                 "\"max\", \"reduce\": \"mean\", \"ada\": false, \"alpha_safeguard\": 0.2, "
                 "\"shared\": false}, \"n\": 40, \"budget\": 12"),
      std::string::npos)
      << r.out;
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
      s.str().find("\"params\": {\"sinks\": 2, \"recent\": 0, \"seed\": 3, \"shared\": true}"),
      std::string::npos)
      << s.str();
  EXPECT_NE(s.str().find("\"budget\": 10, \"shared\": true, \"kept\": [[0, 1, "), std::string::npos)
      << s.str();
  // Deterministic: the same command gives the same bytes.
  const Result again = run("select --policy random --seed 3 --shared --ratio 0.25 --set sinks=2 " +
                           inputs("k16.npy", "v16.npy", "q16.npy"));
  EXPECT_EQ(again.out, s.str());
}

TEST_F(Cli, NaclPresetAndSeed) {
  const std::string args = "select --policy nacl --ratio 0.5 --seed 9 --set preset=paper20 " +
                           inputs("k.npy", "v.npy", "q.npy");
  const Result r = run(args);
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("\"params\": {\"sinks\": 4, \"recent\": 32, \"random_share\": 0.666667, "
                       "\"causal\": false, \"reduce\": \"sum\", \"preset\": \"paper20\", "
                       "\"seed\": 9, \"shared\": false}"),
            std::string::npos)
      << r.out;
  EXPECT_EQ(run(args).out, r.out);  // reproducible
  const Result bad = run("select --policy nacl --ratio 0.5 --set preset=paper25 " + inputs());
  EXPECT_EQ(bad.err,
            "kvevict: preset: expected one of none, paper10, paper20, paper30, long_context, got "
            "'paper25'\n");
}

TEST_F(Cli, CriticalKVReadsTheOutputProjection) {
  const Result r =
      run("select --policy criticalkv --budget 12 --set window=4 --set kernel=3 --wo " +
          path("wo.npy") + " " + inputs());
  ASSERT_EQ(r.code, 0) << r.err;
  const KVCache<float> kv(Storage<float>::hnd(k_.data(), 40, 8),
                          Storage<float>::hnd(v_.data(), 40, 8), {2, 40, 8});
  Selection sel;
  Workspace ws;
  CriticalKV({.window = 4, .kernel = 3}, OutputProjection::dense(wo_.data(), 4, 8, 12))
      .select(kv, QueryWindow<float>(q_.data(), 4, 8, 8), Budget::tokens(12), sel, ws);
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
  EXPECT_NE(r.out.find("needle_inside  snapkv         40%"), std::string::npos) << r.out;
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
            "kvevict: --set: expected a parameter of snapkv (window, kernel, pool, reduce, ada, "
            "alpha_safeguard), got 'windw'\n");
  EXPECT_EQ(run("eval --workload default --set h2o.recent=4 --policies snapkv").err,
            "kvevict: --set: expected settings for a policy in --policies, got 'h2o'\n");
  EXPECT_EQ(run("eval --workload default --mode streaming").err,
            "kvevict: --mode: expected one-shot or replay, got 'streaming'\n");
}

TEST_F(Cli, DemoWritesItsFiles) {
  const Result r = run("demo --out-dir " + dir_.string());
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_TRUE(fs::exists(dir_ / "kvevict-demo.csv"));
  EXPECT_TRUE(fs::exists(dir_ / "kvevict-demo.svg"));
  for (auto name : eval::policy_names())
    EXPECT_NE(r.out.find(std::string(name)), std::string::npos);
  EXPECT_NE(r.out.find("wrote "), std::string::npos);
}

TEST_F(Cli, ListShowsEveryPolicyAndItsDefaults) {
  const Result r = run("list");
  ASSERT_EQ(r.code, 0);
  for (auto name : eval::policy_names())
    EXPECT_NE(r.out.find(std::string(name)), std::string::npos) << name;
  EXPECT_NE(r.out.find("kernel             7"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("pool               max "), std::string::npos) << r.out;
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
  for (auto name : eval::policy_names()) out += (out.empty() ? "" : ", ") + std::string(name);
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
       "kvevict: --set: expected a parameter of snapkv (window, kernel, pool, reduce, ada, "
       "alpha_safeguard), got "
       "'windw'\n"},
      {"select --policy snapkv --budget 10 --set pool=min " + inputs(),
       "kvevict: pool: expected one of max, avg, got 'min'\n"},
      {"select --policy snapkv --budget 10 --set window=x " + inputs(),
       "kvevict: window: expected an integer, got 'x'\n"},
      {"select --policy h3o --budget 10 " + inputs(),
       "kvevict: --policy: expected one of " + known_policies() + ", got 'h3o'\n"},
      {"select --policy snapkv --budget 10 --bogus 1 " + inputs(),
       "kvevict: arguments: expected one of --policy --keys --values --queries --wo --budget "
       "--ratio --set --seed --shared --out, got '--bogus'\n"},
      {"select --policy snapkv --budget 10 --keys " + path("k.npy"),
       "kvevict: --values: expected to be given, got nothing\n"},
      {"frobnicate",
       "kvevict: command: expected list, select, replay, eval or demo, got 'frobnicate'\n"},
  };
  for (const auto& [args, message] : cases) {
    fs::remove(out);
    const Result r = run(args + " --out " + out);
    EXPECT_NE(r.code, 0) << args;
    EXPECT_EQ(r.err, message) << args;
    EXPECT_FALSE(fs::exists(out)) << args;
  }
}

}  // namespace
}  // namespace kvevict::test
