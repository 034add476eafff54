// kvevict — KV-cache eviction policies for LLM inference.
// SPDX-License-Identifier: Apache-2.0
#pragma once

/// \file
/// \brief The one `.npy` reader and writer of the library (NumPy format 1.0–3.0, C order,
/// little-endian float32 / float16 — the layout of `shared` dumps and the `kvevict` command).
///
/// The reader is strict: a truncated or malformed header, a dtype other than `<f4`/`<f2`, a
/// big-endian or Fortran-order array, a data size that does not match the shape — each is a
/// `kvevict::error` naming the argument (e.g. `keys`) and what was expected. Nothing is read
/// past the buffer; the parser is fuzzed.

#include <Eigen/Core>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <iterator>
#include <limits>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "../element.hpp"
#include "../error.hpp"

namespace kvevict::npy {

/// The library's element types (float32 and float16 are what `.npy` files here hold).
using kvevict::DType;

constexpr std::size_t item_size(DType t) {
  return t == DType::float32 ? 4 : 2;
}
constexpr std::string_view descr(DType t) {
  return t == DType::float32 ? "<f4" : "<f2";
}

/// An n-dimensional array in C order with its raw little-endian bytes.
struct Array {
  DType dtype = DType::float32;
  std::vector<index_t> shape;
  std::vector<std::byte> data;

  index_t size() const noexcept {
    index_t n = 1;
    for (index_t s : shape) n *= s;
    return n;
  }
  /// The elements as `T` (`float` for float32, `Eigen::half` for float16).
  template <class T>
  const T* as() const noexcept {
    return reinterpret_cast<const T*>(data.data());
  }
  /// Element i converted to fp32.
  float at(index_t i) const noexcept {
    if (dtype == DType::float32) {
      float x;
      std::memcpy(&x, data.data() + i * 4, 4);
      return x;
    }
    std::uint16_t bits;
    std::memcpy(&bits, data.data() + i * 2, 2);
    return static_cast<float>(Eigen::numext::bit_cast<Eigen::half>(bits));
  }
};

namespace detail {

/// A cursor over the header's Python dict literal.
class HeaderParser {
 public:
  HeaderParser(std::string_view text, std::string_view argument) : s_(text), arg_(argument) {}

  void skip_space() {
    while (i_ < s_.size() && (s_[i_] == ' ' || s_[i_] == '\t' || s_[i_] == '\n')) ++i_;
  }
  bool eat(char c) {
    skip_space();
    if (i_ < s_.size() && s_[i_] == c) {
      ++i_;
      return true;
    }
    return false;
  }
  void expect(char c) {
    if (!eat(c)) bad(std::string("'") + c + "'");
  }
  std::string quoted() {
    skip_space();
    if (i_ >= s_.size() || (s_[i_] != '\'' && s_[i_] != '"')) bad("a quoted string");
    const char q = s_[i_++];
    const std::size_t start = i_;
    while (i_ < s_.size() && s_[i_] != q) ++i_;
    if (i_ >= s_.size()) bad("a closing quote");
    return std::string(s_.substr(start, (i_++) - start));
  }
  bool boolean() {
    skip_space();
    for (std::string_view word : {"True", "False"})
      if (s_.substr(i_, word.size()) == word) {
        i_ += word.size();
        return word == "True";
      }
    bad("True or False");
  }
  std::vector<index_t> tuple() {
    std::vector<index_t> out;
    expect('(');
    while (!eat(')')) {
      skip_space();
      index_t v = 0;
      std::size_t digits = 0;
      while (i_ < s_.size() && s_[i_] >= '0' && s_[i_] <= '9') {
        if (v > (std::numeric_limits<index_t>::max() - 9) / 10) bad("a dimension below 2^63");
        v = v * 10 + (s_[i_++] - '0');
        ++digits;
      }
      if (digits == 0) bad("a dimension (a non-negative integer)");
      while (i_ < s_.size() && s_[i_] == 'L') ++i_;  // Python 2 longs
      out.push_back(v);
      if (!eat(',')) {
        expect(')');
        break;
      }
    }
    return out;
  }
  bool at_end() {
    skip_space();
    return i_ == s_.size();
  }
  [[noreturn]] void bad(const std::string& what) const {
    kvevict::detail::fail(arg_, "a valid .npy header dict with " + what, "'",
                          std::string(s_.substr(0, 80)), "' at character ", i_);
  }

 private:
  std::string_view s_;
  std::string_view arg_;
  std::size_t i_ = 0;
};

}  // namespace detail

/// Parses a whole `.npy` file image. Errors name `argument`. O(size); allocates the array.
inline Array parse(std::span<const std::byte> file, std::string_view argument) {
  using kvevict::detail::cat;
  using kvevict::detail::fail;
  constexpr unsigned char magic[] = {0x93, 'N', 'U', 'M', 'P', 'Y'};
  if (file.size() < 10 || std::memcmp(file.data(), magic, 6) != 0)
    fail(argument, "a .npy file (magic \\x93NUMPY)", "a file of ", file.size(),
         " bytes without it");
  const auto major = static_cast<unsigned>(file[6]);
  if (major < 1 || major > 3)
    fail(argument, "a .npy format version 1, 2 or 3", "version ", major, ".",
         static_cast<unsigned>(file[7]));
  std::size_t header_len = 0, offset = 0;
  if (major == 1) {
    header_len = static_cast<std::size_t>(file[8]) | (static_cast<std::size_t>(file[9]) << 8);
    offset = 10;
  } else {
    if (file.size() < 12)
      fail(argument, "a complete .npy preamble", "a file of ", file.size(), " bytes");
    for (int b = 0; b < 4; ++b) header_len |= static_cast<std::size_t>(file[8 + b]) << (8 * b);
    offset = 12;
  }
  if (header_len > file.size() - offset)
    fail(argument, cat("a header of ", header_len, " bytes"), "only ", file.size() - offset,
         " bytes after the preamble (truncated file)");
  const std::string_view text(reinterpret_cast<const char*>(file.data() + offset), header_len);

  detail::HeaderParser p(text, argument);
  std::string dtype;
  bool fortran = false, have_descr = false, have_order = false, have_shape = false;
  std::vector<index_t> shape;
  p.expect('{');
  while (!p.eat('}')) {
    const std::string key = p.quoted();
    p.expect(':');
    if (key == "descr") {
      dtype = p.quoted();
      have_descr = true;
    } else if (key == "fortran_order") {
      fortran = p.boolean();
      have_order = true;
    } else if (key == "shape") {
      shape = p.tuple();
      have_shape = true;
    } else {
      p.bad("only the keys descr, fortran_order and shape (found '" + key + "')");
    }
    if (!p.eat(',')) {
      p.expect('}');
      break;
    }
  }
  if (!p.at_end()) p.bad("nothing after the closing brace but spaces");
  if (!have_descr || !have_order || !have_shape)
    fail(argument, "a header with descr, fortran_order and shape", "'", std::string(text), "'");
  Array out;
  if (dtype == "<f4") {
    out.dtype = DType::float32;
  } else if (dtype == "<f2") {
    out.dtype = DType::float16;
  } else if (dtype == ">f4" || dtype == ">f2") {
    fail(argument, "little-endian float32 or float16 ('<f4' or '<f2')", "big-endian '", dtype, "'");
  } else {
    fail(argument, "dtype float32 or float16 ('<f4' or '<f2')", "'", dtype, "'");
  }
  if (fortran) fail(argument, "C order (fortran_order False)", "a Fortran-order array");
  index_t count = 1;
  for (index_t d : shape) {
    if (d != 0 && count > std::numeric_limits<index_t>::max() / 4 / d)
      fail(argument, "an array below 2^61 elements", "shape too large");
    count *= d;
  }
  out.shape = std::move(shape);
  const std::size_t bytes = static_cast<std::size_t>(count) * item_size(out.dtype);
  const std::size_t have = file.size() - offset - header_len;
  if (have != bytes)
    fail(argument, cat(bytes, " bytes of data for its shape"), have,
         have < bytes ? " (truncated)" : " (trailing bytes)");
  out.data.assign(file.begin() + static_cast<std::ptrdiff_t>(offset + header_len), file.end());
  return out;
}

/// Reads a `.npy` file. Errors name `argument` (including a file that cannot be opened).
inline Array read(const std::string& path, std::string_view argument) {
  std::ifstream in(path, std::ios::binary);
  if (!in) kvevict::detail::fail(argument, "a readable .npy file", "'", path, "'");
  std::vector<char> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  return parse(std::as_bytes(std::span<const char>(bytes)), argument);
}

/// Serialises an array as `.npy` format 1.0 (header padded to a multiple of 64 bytes).
/// float32 or float16 only (NumPy has no bfloat16).
inline std::vector<std::byte> serialize(DType dtype, std::span<const index_t> shape,
                                        const void* data) {
  if (dtype == DType::bfloat16)
    kvevict::detail::fail("dtype", "float32 or float16 (.npy has no bfloat16)", "bfloat16");
  std::string dims;
  index_t count = 1;
  for (std::size_t i = 0; i < shape.size(); ++i) {
    dims += std::to_string(shape[i]);
    if (shape.size() == 1)
      dims += ",";  // Python's one-element tuple
    else if (i + 1 < shape.size())
      dims += ", ";
    count *= shape[i];
  }
  std::string header = "{'descr': '" + std::string(descr(dtype)) +
                       "', 'fortran_order': False, 'shape': (" + dims + "), }";
  while ((10 + header.size() + 1) % 64 != 0) header += ' ';
  header += '\n';
  std::vector<std::byte> out(10 + header.size());
  const unsigned char preamble[] = {0x93,
                                    'N',
                                    'U',
                                    'M',
                                    'P',
                                    'Y',
                                    1,
                                    0,
                                    static_cast<unsigned char>(header.size() & 0xff),
                                    static_cast<unsigned char>(header.size() >> 8)};
  std::memcpy(out.data(), preamble, 10);
  std::memcpy(out.data() + 10, header.data(), header.size());
  const auto* bytes = static_cast<const std::byte*>(data);
  out.insert(out.end(), bytes, bytes + static_cast<std::size_t>(count) * item_size(dtype));
  return out;
}

/// Writes an array as a `.npy` file; throws `kvevict::error` naming `path` if it cannot.
inline void write(const std::string& path, DType dtype, std::span<const index_t> shape,
                  const void* data) {
  const auto bytes = serialize(dtype, shape, data);
  std::ofstream out(path, std::ios::binary);
  out.write(reinterpret_cast<const char*>(bytes.data()),
            static_cast<std::streamsize>(bytes.size()));
  if (!out) kvevict::detail::fail("path", "a writable file", "'", path, "'");
}

}  // namespace kvevict::npy
