// `kvevict eval` and `kvevict demo`: policies × budgets × workloads, as a table, CSV and SVG.
// SPDX-License-Identifier: Apache-2.0
#include <kvevict/eval/compare.hpp>
#include <kvevict/eval/svg.hpp>

#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <map>
#include <optional>

#include "cli.hpp"

namespace kvevict::cli {
namespace {

std::vector<std::string> split(const std::string& text, char sep) {
  std::vector<std::string> out;
  std::string cur;
  for (char c : text) {
    if (c == sep) {
      out.push_back(cur);
      cur.clear();
    } else {
      cur += c;
    }
  }
  out.push_back(cur);
  return out;
}

std::string fixed(double v, int digits = 4) {
  if (std::isnan(v)) return "-";
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.*f", digits, v);
  return buf;
}

/// The layer of a user dump: K, V [kv_heads, n, d]; Q [q_heads, n, d] (every position: the last
/// `future` become the held-out queries, the context is the first n − future tokens) or
/// [q_heads, w, d] (only the observation window: it doubles as the held-out queries).
eval::Layer layer_from_dump(const Args& args, index_t window, index_t future) {
  Inputs in(args, "[q_heads, n or w, d]");
  npy::Array wo_array;
  const auto wo = output_projection(args, wo_array, in);
  eval::Layer l;
  l.name = std::filesystem::path(args.get("--keys")).stem().string();
  l.kv_heads = in.kv_heads;
  l.q_heads = in.q_heads;
  l.d = in.d;
  l.d_v = in.dv;
  if (in.w == in.n) {  // every position: hold the last `future` out
    if (future < 1 || future + window >= in.n)
      fail("--future", cat("1 <= future and future + window < n (", in.n, ")"), future);
    l.n = in.n - future;
    l.query_positions = l.n;
    l.future_count = future;
    for (index_t h = 0; h < in.kv_heads; ++h) {
      l.keys.insert(l.keys.end(), in.kf().begin() + h * in.n * in.d,
                    in.kf().begin() + (h * in.n + l.n) * in.d);
      l.values.insert(l.values.end(), in.vf().begin() + h * in.n * in.dv,
                      in.vf().begin() + (h * in.n + l.n) * in.dv);
    }
    for (index_t h = 0; h < in.q_heads; ++h) {
      l.queries.insert(l.queries.end(), in.qf().begin() + h * in.n * in.d,
                       in.qf().begin() + (h * in.n + l.n) * in.d);
      l.future.insert(l.future.end(), in.qf().begin() + (h * in.n + l.n) * in.d,
                      in.qf().begin() + (h + 1) * in.n * in.d);
    }
    l.window = std::min(window, l.n);
  } else {
    if (in.w > in.n) fail("queries", cat("at most n (", in.n, ") queries"), shape_text(in.q));
    l.n = in.n;
    l.keys.assign(in.kf().begin(), in.kf().end());
    l.values.assign(in.vf().begin(), in.vf().end());
    l.queries.assign(in.qf().begin(), in.qf().end());
    l.future.assign(in.qf().begin(), in.qf().end());
    l.query_positions = in.w;
    l.future_count = in.w;
    l.window = in.w;
    std::fprintf(stderr,
                 "kvevict: note: Q holds only the window (%lld queries); it is also the "
                 "set the outputs are compared on (not held out)\n",
                 static_cast<long long>(in.w));
  }
  if (wo) {
    l.hidden = wo->hidden();
    l.wo.resize(static_cast<std::size_t>(l.q_heads * l.d_v * l.hidden));
    for (index_t h = 0; h < l.q_heads; ++h)
      wo->head(h, {l.wo.data() + h * l.d_v * l.hidden, static_cast<std::size_t>(l.d_v * l.hidden)});
  }
  return l;
}

struct Plan {
  std::vector<eval::Layer> layers;
  std::vector<std::string> policies;
  std::vector<Budget> budgets;
  eval::Mode mode = eval::Mode::one_shot;
  std::map<std::string, Settings> settings;  // per policy
  std::uint64_t seed = 0;
  /// The units compared (`--granularity a,b,…`); one empty entry: each policy's own.
  std::vector<std::optional<Granularity>> granularities{std::nullopt};
  index_t page_size = 16;  ///< for `pages` on the layers' dense views
  index_t replay_window = 32;
  eval::KVFormat kv_format = eval::KVFormat::none;  ///< `--kv-format`: select on a stored cache
};

/// Runs the plan with a progress line on a terminal (nothing when stderr is piped).
std::vector<eval::Row> execute(const Plan& plan) {
  std::vector<eval::Row> rows;
  const bool tty = isatty(STDERR_FILENO) != 0;
  std::size_t total = 0, done = 0;
  for (const auto& layer : plan.layers) {
    (void)layer;
    for (const auto& name : plan.policies)
      total += (policy_info(name).budget_free ? 1 : plan.budgets.size()) *
               (policy_info(name).scores ? plan.granularities.size() : 1);
  }
  Workspace ws;
  for (const auto& layer : plan.layers) {
    const auto wo = layer.projection();
    for (const auto& name : plan.policies) {
      const auto it = plan.settings.find(name);
      const bool several = plan.granularities.size() > 1 && policy_info(name).scores;
      for (const auto& g : plan.granularities) {
        if (!policy_info(name).scores && g != plan.granularities.front()) break;
        const AnyPolicy policy =
            make_policy(name, {.settings = it == plan.settings.end() ? Settings{} : it->second,
                               .seed = plan.seed,
                               .granularity = policy_info(name).scores ? g : std::nullopt,
                               .wo = wo ? &*wo : nullptr});
        const bool free = budget_free(policy);
        for (std::size_t b = 0; b < (free ? 1 : plan.budgets.size()); ++b) {
          const Budget budget = free ? Budget::none() : plan.budgets[b];
          if (tty) {
            std::fprintf(stderr, "\r  [%3zu/%3zu] %-14s %-6s %-16s", done + 1, total, name.c_str(),
                         eval::budget_label(budget).first.c_str(), layer.name.c_str());
            std::fflush(stderr);
          }
          rows.push_back(eval::run(layer, policy, budget, plan.mode, ws,
                                   {.window = plan.replay_window}, plan.page_size, plan.kv_format));
          if (several) {  // appended piecewise: GCC 12's -Wrestrict misfires on "/" + string
            rows.back().policy += '/';
            rows.back().policy += to_string(policy.granularity());
          }
          ++done;
        }
      }
    }
  }
  if (tty) std::fprintf(stderr, "\r%70s\r", "");
  return rows;
}

void print_table(const std::vector<eval::Row>& rows, eval::Mode mode) {
  const bool formats = !rows.empty() && rows.front().kv_format != "none";
  std::printf("%-14s %-18s %-7s %8s %9s %9s %7s %7s", "workload", "policy", "budget", "kept",
              "error", "err·W_o", "mass", "recall");
  if (mode == eval::Mode::replay) std::printf(" %9s %9s %8s", "replay", "rep.max", "live");
  if (formats) std::printf(" %-9s %7s", "format", "agree");
  std::printf(" %9s\n", "time ms");
  for (const auto& r : rows) {
    std::printf("%-14s %-18s %-7s %8.1f %9s %9s %7s %7s", r.layer.c_str(), r.policy.c_str(),
                r.budget.c_str(), r.kept, fixed(r.metrics.error).c_str(),
                fixed(r.metrics.error_wo).c_str(), fixed(r.metrics.kept_mass, 3).c_str(),
                fixed(r.metrics.needle_recall, 2).c_str());
    if (mode == eval::Mode::replay)
      std::printf(" %9s %9s %8.1f", fixed(r.replay_mean).c_str(), fixed(r.replay_max).c_str(),
                  r.mean_live);
    if (formats) std::printf(" %-9s %7s", r.kv_format.c_str(), fixed(r.agreement, 3).c_str());
    std::printf(" %9.2f\n", r.time_ms);
  }
}

std::string csv(const std::vector<eval::Row>& rows) {
  std::string out =
      "workload,policy,mode,budget,kept,error,error_wo,kept_mass,needle_recall,replay_mean,"
      "replay_max,mean_live,time_ms,kv_format,agreement\n";
  for (const auto& r : rows)
    out += r.layer + "," + r.policy + "," + std::string(eval::to_string(r.mode)) + "," + r.budget +
           "," + fixed(r.kept, 1) + "," + fixed(r.metrics.error, 6) + "," +
           fixed(r.metrics.error_wo, 6) + "," + fixed(r.metrics.kept_mass, 6) + "," +
           fixed(r.metrics.needle_recall, 4) + "," + fixed(r.replay_mean, 6) + "," +
           fixed(r.replay_max, 6) + "," + fixed(r.mean_live, 1) + "," + fixed(r.time_ms, 3) + "," +
           r.kv_format + "," + fixed(r.agreement, 6) + "\n";
  return out;
}

std::string per_head_csv(const std::vector<eval::Row>& rows) {
  std::string out = "workload,policy,mode,budget,head,error,error_wo\n";
  for (const auto& r : rows)
    for (std::size_t h = 0; h < r.metrics.head_error.size(); ++h)
      out += r.layer + "," + r.policy + "," + std::string(eval::to_string(r.mode)) + "," +
             r.budget + "," + std::to_string(h) + "," + fixed(r.metrics.head_error[h], 6) + "," +
             (r.metrics.head_error_wo.empty() ? "-" : fixed(r.metrics.head_error_wo[h], 6)) + "\n";
  return out;
}

/// One panel per workload: error against budget, one line per policy. A budget-free policy is
/// one point at the fraction it kept, if that falls inside the budgets' range; its legend entry
/// says what it kept either way.
std::string plot(const std::vector<eval::Row>& rows, const std::vector<eval::Layer>& layers,
                 eval::Mode mode) {
  std::vector<eval::Panel> panels;
  for (const auto& layer : layers) {
    eval::Panel p;
    p.title = layer.name + ": attention-output error on held-out queries (" +
              std::string(eval::to_string(mode)) + ")";
    p.x_label = "KV cache kept per head (budget)";
    p.y_label = "relative L2 error of the attention output";
    auto fraction = [&](double x) { return x > 1.0 ? x / static_cast<double>(layer.n) : x; };
    double lo = 1.0, hi = 0.0;
    for (const auto& r : rows)
      if (r.layer == layer.name && !std::isnan(r.budget_x)) {
        lo = std::min(lo, fraction(r.budget_x));
        hi = std::max(hi, fraction(r.budget_x));
      }
    std::map<std::string, std::size_t> index;
    for (const auto& r : rows) {
      if (r.layer != layer.name) continue;
      if (!index.count(r.policy)) {
        index[r.policy] = p.series.size();
        p.series.push_back({r.policy, {}});
      }
      auto& series = p.series[index[r.policy]];
      double x = fraction(r.budget_x);
      if (std::isnan(r.budget_x)) {  // budget-free: where it ended up
        x = r.kept / static_cast<double>(layer.n);
        char note[64];
        std::snprintf(note, sizeof note, " (kept %.0f%%, error %.3g)", 100.0 * x, r.metrics.error);
        series.name = r.policy + note;
        if (x < lo || x > hi) continue;
      }
      series.points.emplace_back(x, r.metrics.error);
    }
    panels.push_back(std::move(p));
  }
  return eval::render_svg(panels);
}

std::vector<Budget> budgets(const Args& args) {
  std::vector<Budget> out;
  if (args.has("--ratios") && args.has("--budgets"))
    fail("--ratios", "either --ratios or --budgets", "both");
  if (args.has("--budgets")) {
    for (const auto& t : split(args.get("--budgets"), ','))
      out.push_back(Budget::tokens(parse_count("--budgets", t)));
  } else {
    for (const auto& t : split(args.get("--ratios", "0.1,0.2,0.3"), ','))
      out.push_back(Budget::ratio(kvevict::detail::parse_real("--ratios", t)));
  }
  return out;
}

}  // namespace

int eval_command(int argc, char** argv) {
  const Args args(argc, argv, 2, {});
  args.allow({"--workload",  "--workload-set", "--keys",   "--values",   "--queries",
              "--wo",        "--window",       "--future", "--policies", "--ratios",
              "--budgets",   "--mode",         "--set",    "--seed",     "--granularity",
              "--page-size", "--csv",          "--plot",   "--per-head", "--kv-format"});
  for (const char* option : {"--csv", "--plot", "--per-head"})
    if (args.has(option)) check_writable(option, args.get(option));
  Plan plan;
  plan.seed = seed(args);
  if (args.has("--granularity")) {
    plan.granularities.clear();
    std::string list = args.get("--granularity");
    for (std::size_t at = 0; at <= list.size();) {
      const std::size_t comma = std::min(list.find(',', at), list.size());
      plan.granularities.emplace_back(
          kvevict::detail::parse_value<Granularity>("--granularity", list.substr(at, comma - at)));
      at = comma + 1;
    }
  } else if (args.has("--shared")) {
    plan.granularities = {Granularity::shared};
  }
  plan.page_size = parse_count("--page-size", args.get("--page-size", "16"));
  if (plan.page_size < 1) fail("--page-size", "a page of at least 1 token", plan.page_size);
  plan.budgets = budgets(args);
  plan.kv_format = eval::parse_kv_format(args.get("--kv-format", "none"));
  const std::string mode = args.get("--mode", "one-shot");
  if (mode == "replay")
    plan.mode = eval::Mode::replay;
  else if (mode != "one-shot")
    fail("--mode", "one-shot or replay", "'", mode, "'");
  if (plan.mode == eval::Mode::replay && plan.kv_format != eval::KVFormat::none)
    fail("--kv-format", "one-shot mode (replays run on fp32)", eval::to_string(plan.kv_format));
  const auto names = policy_names();
  if (args.has("--policies")) {
    for (const auto& p : split(args.get("--policies"), ',')) plan.policies.push_back(p);
  } else {
    for (auto n : names) plan.policies.emplace_back(n);
  }
  for (const auto& [key, value] : settings(args)) {
    const auto dot = key.find('.');
    if (dot == std::string::npos)
      fail("--set", "policy.key=value (e.g. snapkv.window=16)", "'", key, "=", value, "'");
    plan.settings[key.substr(0, dot)].emplace_back(key.substr(dot + 1), value);
  }
  const index_t window = parse_count("--window", args.get("--window", "32"));
  plan.replay_window = window;
  if (args.has("--keys")) {
    if (args.has("--workload"))
      fail("--workload", "either --workload or --keys/--values/--queries", "both");
    plan.layers.push_back(
        layer_from_dump(args, window, parse_count("--future", args.get("--future", "16"))));
  } else {
    for (const auto& name : split(args.get("--workload", "default"), ',')) {
      eval::WorkloadSpec spec = eval::workload_preset(name);
      for (const std::string& s : args.all("--workload-set")) {
        const auto setting = kvevict::detail::split_setting(s);
        if (!setting) fail("--workload-set", "knob=value", "'", s, "'");
        eval::set_knob(spec, setting->first, setting->second);
      }
      plan.layers.push_back(eval::layer_from(eval::generate(spec)));
    }
  }
  // Build every policy once before running anything: a bad name or parameter fails early.
  for (const auto& name : plan.policies) {
    const auto it = plan.settings.find(name);
    const auto wo = plan.layers.front().projection();
    make_policy(name, {.settings = it == plan.settings.end() ? Settings{} : it->second,
                       .seed = plan.seed,
                       .granularity = plan.granularities.front(),
                       .wo = wo ? &*wo : nullptr});
  }
  for (const auto& [name, s] : plan.settings)
    if (std::find(plan.policies.begin(), plan.policies.end(), name) == plan.policies.end())
      fail("--set", "settings for a policy in --policies", "'", name, "'");

  const auto rows = execute(plan);
  print_table(rows, plan.mode);
  if (args.has("--csv")) write_file("--csv", args.get("--csv"), csv(rows));
  if (args.has("--per-head")) write_file("--per-head", args.get("--per-head"), per_head_csv(rows));
  if (args.has("--plot"))
    write_file("--plot", args.get("--plot"), plot(rows, plan.layers, plan.mode));
  return 0;
}

int demo(int argc, char** argv) {
  const Args args(argc, argv, 2, {});
  args.allow({"--out-dir"});
  const std::filesystem::path dir = args.get("--out-dir", ".");
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);  // a new directory is fine; a file is not
  if (!std::filesystem::is_directory(dir))
    fail("--out-dir", "a directory (it is created if missing)", "'", dir.string(), "'");
  const auto start = std::chrono::steady_clock::now();
  Plan plan;
  plan.layers.push_back(eval::layer_from(eval::generate(eval::workload_preset("default"))));
  for (auto n : policy_names()) plan.policies.emplace_back(n);
  plan.budgets = {Budget::ratio(0.1), Budget::ratio(0.2), Budget::ratio(0.3)};
  const auto& l = plan.layers.front();
  std::printf(
      "kvevict demo: %zu policies at 10/20/30%% of a %lld-token layer (%lld KV / %lld query "
      "heads, d = %lld; sinks, recency, heavy hitters, %zu needles asked after the context, "
      "varied value norms), one-shot compression, outputs compared on %lld held-out "
      "queries.\n\n",
      plan.policies.size(), static_cast<long long>(l.n), static_cast<long long>(l.kv_heads),
      static_cast<long long>(l.q_heads), static_cast<long long>(l.d), l.needles.size(),
      static_cast<long long>(l.future_count));
  const auto rows = execute(plan);
  print_table(rows, plan.mode);
  const auto csv_path = std::filesystem::absolute(dir / "kvevict-demo.csv");
  const auto svg_path = std::filesystem::absolute(dir / "kvevict-demo.svg");
  write_file("--out-dir", csv_path.string(), csv(rows));
  write_file("--out-dir", svg_path.string(), plot(rows, plan.layers, plan.mode));
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::printf(
      "\nerror: relative L2 error of each head's attention output on the held-out queries; "
      "err·W_o: of the layer output after W_o;\nmass: attention kept; recall: needles kept "
      "(question after the context); time: one select.\n\nwrote %s\n      %s\n(%.1f s)\n",
      csv_path.string().c_str(), svg_path.string().c_str(), seconds);
  return 0;
}

}  // namespace kvevict::cli
