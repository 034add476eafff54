// The kvevict command: argument parsing, inputs from .npy, JSON output.
// SPDX-License-Identifier: Apache-2.0
#pragma once

#include <kvevict/eval/npy.hpp>
#include <kvevict/eval/stored.hpp>
#include <kvevict/kvevict.hpp>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

namespace kvevict::cli {

using kvevict::detail::cat;
using kvevict::detail::fail;

/// Command-line options: `--name value` pairs (repeatable ones keep every value) and flags.
class Args {
 public:
  /// Parses argv[first…]. `flags` take no value; every other option takes one.
  Args(int argc, char** argv, int first, std::vector<std::string> flags)
      : flags_(std::move(flags)) {
    for (int i = first; i < argc; ++i) {
      const std::string a = argv[i];
      if (a.rfind("--", 0) != 0) fail("arguments", "options of the form --name", "'", a, "'");
      if (std::find(flags_.begin(), flags_.end(), a) != flags_.end()) {
        values_[a].push_back("");
        continue;
      }
      if (i + 1 >= argc) fail(a, "a value", "nothing");
      values_[a].push_back(argv[++i]);
    }
  }
  /// Fails on any option not in `known`.
  void allow(const std::vector<std::string>& known) const {
    for (const auto& [name, v] : values_)
      if (std::find(known.begin(), known.end(), name) == known.end()) {
        std::string list;
        for (const auto& k : known) list += (list.empty() ? "" : " ") + k;
        fail("arguments", cat("one of ", list), "'", name, "'");
      }
  }
  bool has(const std::string& name) const { return values_.count(name) != 0; }
  std::string get(const std::string& name) const {
    const auto it = values_.find(name);
    if (it == values_.end()) fail(name, "to be given", "nothing");
    if (it->second.size() > 1) fail(name, "to be given once", it->second.size(), " times");
    return it->second.front();
  }
  std::string get(const std::string& name, const std::string& fallback) const {
    return has(name) ? get(name) : fallback;
  }
  std::vector<std::string> all(const std::string& name) const {
    const auto it = values_.find(name);
    return it == values_.end() ? std::vector<std::string>{} : it->second;
  }

 private:
  std::vector<std::string> flags_;
  std::map<std::string, std::vector<std::string>> values_;
};

/// `--set key=value` settings.
inline std::vector<std::pair<std::string, std::string>> settings(const Args& args) {
  std::vector<std::pair<std::string, std::string>> out;
  for (const std::string& s : args.all("--set")) {
    auto setting = kvevict::detail::split_setting(s);
    if (!setting) fail("--set", "key=value", "'", s, "'");
    out.push_back(std::move(*setting));
  }
  return out;
}

inline index_t parse_count(const std::string& option, const std::string& text) {
  return kvevict::detail::parse_int(option, text);
}

/// `--seed S` (default 0).
inline std::uint64_t seed(const Args& args) {
  const index_t s = parse_count("--seed", args.get("--seed", "0"));
  if (s < 0) fail("--seed", "a non-negative integer", s);
  return static_cast<std::uint64_t>(s);
}

/// `--granularity per_head|equal|shared|layers|pages` (or `--shared`), when given.
inline std::optional<Granularity> granularity(const Args& args) {
  if (args.has("--granularity")) {
    if (args.has("--shared")) fail("--granularity", "either --granularity or --shared", "both");
    return kvevict::detail::parse_value<Granularity>("--granularity", args.get("--granularity"));
  }
  if (args.has("--shared")) return Granularity::shared;
  return std::nullopt;
}

/// The policy of `--policy` — a config string as the library parses it (`snapkv:window=16`) —
/// with `--set` settings before the string's, `--seed`, `--granularity`/`--shared` and W_o.
inline AnyPolicy policy_from(const Args& args, const OutputProjection* wo) {
  const std::string spec = args.get("--policy");
  const std::string_view name =
      kvevict::detail::trim(std::string_view(spec).substr(0, spec.find(':')));
  if ((policy_info(name).reads & reads_output_projection) != 0 && wo == nullptr)
    fail("--wo", cat("the output projection W_o for ", name), "none");
  return parse_policy(
      spec,
      {.settings = settings(args), .seed = seed(args), .granularity = granularity(args), .wo = wo});
}

/// `--budget N` or `--ratio R`, exactly one; a budget-free policy may take neither.
inline Budget budget(const Args& args, bool budget_free = false) {
  if (budget_free && !args.has("--budget") && !args.has("--ratio")) return Budget::none();
  if (args.has("--budget") == args.has("--ratio"))
    fail("--budget", "exactly one of --budget N and --ratio R",
         args.has("--budget") ? "both" : "neither");
  if (args.has("--budget")) return Budget::tokens(parse_count("--budget", args.get("--budget")));
  return Budget::ratio(kvevict::detail::parse_real("--ratio", args.get("--ratio")));
}

/// Checks that every element is finite; names the argument and the first bad index.
/// True when every element of `a` is finite: a branch-free pass over the raw bits (an exponent
/// of all ones is inf or NaN), which the compiler vectorises. O(size).
inline bool all_finite(const npy::Array& a) {
  const auto run = [&](const auto* bits, auto mask) {
    using B = decltype(mask);
    B bad = 0;
    for (index_t i = 0; i < a.size(); ++i)
      bad |= static_cast<B>((bits[i] & mask) == mask);  // NOLINT: 0/1 accumulation
    return bad == 0;
  };
  if (a.dtype == npy::DType::float32)
    return run(reinterpret_cast<const std::uint32_t*>(a.data.data()), std::uint32_t{0x7F800000});
  return run(reinterpret_cast<const std::uint16_t*>(a.data.data()), std::uint16_t{0x7C00});
}

inline void check_finite(const npy::Array& a, std::string_view argument) {
  if (all_finite(a)) return;
  for (index_t i = 0; i < a.size(); ++i) {
    const float x = a.at(i);
    if (!std::isfinite(x)) {
      std::string where;
      index_t rest = i;
      for (std::size_t d = a.shape.size(); d-- > 0;) {
        where = std::to_string(rest % a.shape[d]) + (where.empty() ? "" : ", ") + where;
        rest /= a.shape[d];
      }
      fail(argument, "finite values", x, " at [", where, "]");
    }
  }
}

inline void check_rank3(const npy::Array& a, std::string_view argument, std::string_view layout) {
  if (a.shape.size() != 3)
    fail(argument, cat("a 3-d array ", layout), a.shape.size(), " dimensions");
  for (index_t s : a.shape)
    if (s < 1) fail(argument, cat("a non-empty array ", layout), "a dimension of 0");
}

inline std::string shape_text(const npy::Array& a) {
  std::string s = "[";
  for (std::size_t i = 0; i < a.shape.size(); ++i)
    s += (i ? ", " : "") + std::to_string(a.shape[i]);
  return s + "]";
}

/// K, V and Q read from .npy, validated against each other, with views in the storage type:
/// `Eigen::half` when all of them are float16, float otherwise (float16 → float32 is exact).
struct Inputs {
  npy::Array k, v, q;
  index_t kv_heads = 0, n = 0, d = 0, dv = 0, q_heads = 0, w = 0;
  bool half = false;

  /// `q_layout` describes Q's expected shape in messages.
  Inputs(const Args& args, std::string_view q_layout) {
    k = npy::read(args.get("--keys"), "keys");
    v = npy::read(args.get("--values"), "values");
    q = npy::read(args.get("--queries"), "queries");
    check_rank3(k, "keys", "[kv_heads, n, d]");
    check_rank3(v, "values", "[kv_heads, n, d_v]");
    check_rank3(q, "queries", q_layout);
    kv_heads = k.shape[0];
    n = k.shape[1];
    d = k.shape[2];
    dv = v.shape[2];
    q_heads = q.shape[0];
    w = q.shape[1];
    if (v.shape[0] != kv_heads || v.shape[1] != n)
      fail("values", cat("shape [", kv_heads, ", ", n, ", d_v] to match the keys"), shape_text(v));
    if (q.shape[2] != d) fail("queries", cat("head_dim ", d, " (the keys')"), shape_text(q));
    if (q_heads % kv_heads != 0)
      fail("queries", cat("q_heads a multiple of kv_heads (", kv_heads, ")"), shape_text(q));
    check_finite(k, "keys");
    check_finite(v, "values");
    check_finite(q, "queries");
    half = k.dtype == npy::DType::float16 && v.dtype == npy::DType::float16 &&
           q.dtype == npy::DType::float16;
  }

  /// K, V and Q as fp32: a float32 file's own (mapped) data, no copy; a float16 one converted
  /// once, on first use.
  std::span<const float> kf() { return floats(k, kf_); }
  std::span<const float> vf() { return floats(v, vf_); }
  std::span<const float> qf() { return floats(q, qf_); }

  static std::span<const float> floats(const npy::Array& a, std::vector<float>& converted) {
    if (a.dtype == npy::DType::float32) return {a.as<float>(), static_cast<std::size_t>(a.size())};
    if (converted.empty()) {
      converted.resize(static_cast<std::size_t>(a.size()));
      to_float(a.as<Eigen::half>(), converted.data(), a.size());
    }
    return converted;
  }

  /// Calls `f(kv, queries)` with views over the inputs in their storage type.
  template <class F>
  decltype(auto) with_views(F&& f) {
    auto run = [&](auto* kp, auto* vp, const auto* qp) -> decltype(auto) {
      using T = std::remove_const_t<std::remove_pointer_t<decltype(kp)>>;
      const KVCache<T> kv(Storage<T>::hnd(kp, n, d), Storage<T>::hnd(vp, n, dv),
                          {kv_heads, n, d, dv});
      const QueryWindow<T> queries(qp, q_heads, w, d);
      return f(kv, queries);
    };
    if (half) {
      auto* kp = reinterpret_cast<Eigen::half*>(k.data.data());
      auto* vp = reinterpret_cast<Eigen::half*>(v.data.data());
      return run(kp, vp, q.as<Eigen::half>());
    }
    return run(const_cast<float*>(kf().data()), const_cast<float*>(vf().data()), qf().data());
  }

 private:
  std::vector<float> kf_, vf_, qf_;
};

/// `--wo WO.npy` ([q_heads, d_v, hidden], float32 or float16), checked against the inputs; the
/// view points into `array`, which must outlive it.
inline std::optional<OutputProjection> output_projection(const Args& args, npy::Array& array,
                                                         const Inputs& in) {
  if (!args.has("--wo")) return std::nullopt;
  array = npy::read(args.get("--wo"), "wo");
  check_rank3(array, "wo", "[q_heads, d_v, hidden]");
  if (array.shape[0] != in.q_heads || array.shape[1] != in.dv)
    fail("wo", cat("shape [", in.q_heads, ", ", in.dv, ", hidden] (q_heads and d_v of the inputs)"),
         shape_text(array));
  check_finite(array, "wo");
  if (array.dtype == npy::DType::float16)
    return OutputProjection::dense(array.as<Eigen::half>(), array.shape[0], array.shape[1],
                                   array.shape[2]);
  return OutputProjection::dense(array.as<float>(), array.shape[0], array.shape[1], array.shape[2]);
}

/// A small JSON writer: enough for the command's outputs.
class Json {
 public:
  Json& raw(std::string_view s) {
    out_ << s;
    return *this;
  }
  Json& key(std::string_view k) {
    out_ << '"' << k << "\": ";
    return *this;
  }
  Json& str(std::string_view s) {
    out_ << '"';
    for (char c : s) {
      if (c == '"' || c == '\\') out_ << '\\';
      out_ << c;
    }
    out_ << '"';
    return *this;
  }
  template <class Range>
  Json& list(const Range& values) {
    out_ << '[';
    bool first = true;
    for (const auto& v : values) {
      out_ << (first ? "" : ", ") << v;
      first = false;
    }
    out_ << ']';
    return *this;
  }
  std::string text() const { return out_.str(); }

 private:
  std::ostringstream out_;
};

/// The "params" object of a policy.
inline void params_json(Json& j, const AnyPolicy& policy) {
  j.raw("{");
  bool first = true;
  for (const auto& [name, value] : policy.describe()) {
    j.raw(first ? "" : ", ").key(name).raw(value);
    first = false;
  }
  j.raw("}");
}

/// Fails unless `path` can be written as a file: not a directory, in a directory that exists.
/// Called before any work, so a bad output path costs nothing and nothing is written.
inline void check_writable(const std::string& option, const std::string& path) {
  namespace fs = std::filesystem;
  std::error_code ec;
  const fs::path p(path);
  if (path.empty() || fs::is_directory(p, ec))
    fail(option, "a file path (not a directory)", "'", path, "'");
  const fs::path dir = p.has_parent_path() ? p.parent_path() : fs::path(".");
  if (!fs::is_directory(dir, ec)) fail(option, "a file in an existing directory", "'", path, "'");
}

/// Writes `text` to `path` whole or not at all: into a temporary file beside it, renamed over
/// `path` once complete (a reader never sees half a file; a failed write leaves no file).
inline void write_file(const std::string& option, const std::string& path,
                       const std::string& text) {
  const std::string tmp = path + ".kvevict-tmp";
  {
    std::ofstream out(tmp, std::ios::binary);
    out << text;
    out.flush();
    if (!out) {
      std::remove(tmp.c_str());
      fail(option, "a writable file", "'", path, "'");
    }
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    std::remove(tmp.c_str());
    fail(option, "a writable file", "'", path, "'");
  }
}

/// Writes `text` to `--out` (or stdout) only now that everything succeeded.
inline void emit(const Args& args, const std::string& text) {
  if (!args.has("--out")) {
    std::fwrite(text.data(), 1, text.size(), stdout);
    return;
  }
  write_file("--out", args.get("--out"), text);
}

/// `kvevict list`.
int list();
/// `kvevict select …`.
int select(int argc, char** argv);
/// `kvevict replay …`.
int replay(int argc, char** argv);
/// `kvevict eval …`.
int eval_command(int argc, char** argv);
/// `kvevict demo [--out-dir DIR]`.
int demo(int argc, char** argv);

}  // namespace kvevict::cli
