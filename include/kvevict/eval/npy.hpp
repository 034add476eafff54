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
///
/// `read` memory-maps the file (POSIX; a private, pre-faulted mapping) and leaves the payload
/// where it is: a float32 array of a file written by NumPy (64-byte aligned header) is used in
/// place, with no copy. Elsewhere, or when the payload is misaligned, the payload is read once
/// into an owned buffer.

#include <Eigen/Core>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <iterator>
#include <limits>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "../element.hpp"
#include "../error.hpp"

#if __has_include(<sys/mman.h>) && __has_include(<sys/stat.h>) && __has_include(<fcntl.h>) && \
    __has_include(<unistd.h>)
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#define KVEVICT_NPY_MMAP 1
#else
#define KVEVICT_NPY_MMAP 0
#endif

namespace kvevict::npy {

/// The library's element types (float32 and float16 are what `.npy` files here hold).
using kvevict::DType;

constexpr std::size_t item_size(DType t) {
  return t == DType::float32 ? 4 : 2;
}
constexpr std::string_view descr(DType t) {
  return t == DType::float32 ? "<f4" : "<f2";
}

/// An n-dimensional array in C order with its raw little-endian bytes. `data` views the payload
/// where `owner` keeps it (a mapped file or a buffer); copies of an `Array` share it.
struct Array {
  DType dtype = DType::float32;
  std::vector<index_t> shape;
  std::span<std::byte> data;
  std::shared_ptr<void> owner;

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

namespace detail {
/// An uninitialised buffer of `bytes` bytes, 64-byte aligned, owned by a shared_ptr.
inline std::pair<std::byte*, std::shared_ptr<void>> buffer(std::size_t bytes) {
  auto* p = static_cast<std::byte*>(
      ::operator new (std::max<std::size_t>(bytes, 1), std::align_val_t{64}));
  return {p,
          std::shared_ptr<void>(p, [](void* q) { ::operator delete (q, std::align_val_t{64}); })};
}

/// The header of a `.npy` image: dtype, shape and where the payload starts (its size checked
/// against the image's).
struct Header {
  DType dtype = DType::float32;
  std::vector<index_t> shape;
  std::size_t offset = 0, bytes = 0;
};
inline Header parse_header(std::span<const std::byte> file, std::string_view argument);
}  // namespace detail

/// Parses a whole `.npy` file image, copying the payload into an owned buffer. Errors name
/// `argument`. O(size).
inline Array parse(std::span<const std::byte> file, std::string_view argument) {
  detail::Header h = detail::parse_header(file, argument);
  Array out;
  out.dtype = h.dtype;
  out.shape = std::move(h.shape);
  auto [p, owner] = detail::buffer(h.bytes);
  if (h.bytes > 0) std::memcpy(p, file.data() + h.offset, h.bytes);
  out.data = {p, h.bytes};
  out.owner = std::move(owner);
  return out;
}

inline detail::Header detail::parse_header(std::span<const std::byte> file,
                                           std::string_view argument) {
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
  Header out;
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
  out.offset = offset + header_len;
  out.bytes = bytes;
  return out;
}

/// Reads a `.npy` file: mapped and used in place where it can be (see the file comment), else
/// read once. Errors name `argument` (including a file that cannot be opened). O(size) page
/// faults or one read.
inline Array read(const std::string& path, std::string_view argument) {
#if KVEVICT_NPY_MMAP
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  struct stat st {};
  if (fd >= 0 && ::fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && st.st_size > 0) {
    const auto size = static_cast<std::size_t>(st.st_size);
    // Mapped read-only and pre-faulted (populating a writable private mapping would copy every
    // page), then made writable: the command hands views (T*) over it; nothing is written, and a
    // write would copy its page, never reach the file.
    void* map = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE | MAP_POPULATE, fd, 0);
    ::close(fd);
    if (map != MAP_FAILED && ::mprotect(map, size, PROT_READ | PROT_WRITE) != 0) {
      ::munmap(map, size);
      map = MAP_FAILED;
    }
    if (map != MAP_FAILED) {
      std::shared_ptr<void> mapping(map, [size](void* p) { ::munmap(p, size); });
      const std::span<const std::byte> file(static_cast<const std::byte*>(map), size);
      detail::Header h = detail::parse_header(file, argument);
      if (reinterpret_cast<std::uintptr_t>(file.data() + h.offset) % 4 != 0)
        return parse(file, argument);  // misaligned payload: one copy into a buffer
      Array out;
      out.dtype = h.dtype;
      out.shape = std::move(h.shape);
      out.data = {static_cast<std::byte*>(map) + h.offset, h.bytes};
      out.owner = std::move(mapping);
      return out;
    }
  } else if (fd >= 0) {
    ::close(fd);
  }
#endif
  std::ifstream in(path, std::ios::binary);
  if (!in) kvevict::detail::fail(argument, "a readable .npy file", "'", path, "'");
  in.seekg(0, std::ios::end);
  const auto end = in.tellg();
  in.seekg(0, std::ios::beg);
  if (end < 0) kvevict::detail::fail(argument, "a readable .npy file", "'", path, "'");
  auto [p, owner] = detail::buffer(static_cast<std::size_t>(end));
  in.read(reinterpret_cast<char*>(p), end);
  const std::span<const std::byte> file(p, static_cast<std::size_t>(in.gcount()));
  detail::Header h = detail::parse_header(file, argument);
  Array out;
  out.dtype = h.dtype;
  out.shape = std::move(h.shape);
  out.data = {p + h.offset, h.bytes};
  if (reinterpret_cast<std::uintptr_t>(out.data.data()) % 4 != 0) return parse(file, argument);
  out.owner = std::move(owner);
  return out;
}

/// Serialises an array as `.npy` format 1.0 (header padded to a multiple of 64 bytes).
/// float32 or float16 only (NumPy has no bfloat16).
inline std::vector<std::byte> serialize(DType dtype, std::span<const index_t> shape,
                                        const void* data) {
  if (dtype != DType::float32 && dtype != DType::float16)
    kvevict::detail::fail("dtype", "float32 or float16 (.npy has no bfloat16 or block formats)",
                          to_string(dtype));
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
