// The .npy reader and writer: round trips, and every malformed input named.
// SPDX-License-Identifier: Apache-2.0
#include <kvevict/eval/npy.hpp>

#include "support.hpp"

namespace kvevict::test {
namespace {

std::vector<std::byte> bytes_of(std::string_view s) {
  const auto* p = reinterpret_cast<const std::byte*>(s.data());
  return {p, p + s.size()};
}

/// A file image with the given header dict and `data_bytes` zero bytes of data.
std::vector<std::byte> file_with_header(const std::string& dict, std::size_t data_bytes,
                                        unsigned char version = 1) {
  std::string h = dict;
  while ((10 + h.size() + 1) % 64 != 0) h += ' ';
  h += '\n';
  std::string f = "\x93NUMPY";
  f += static_cast<char>(version);
  f += '\0';
  f += static_cast<char>(h.size() & 0xff);
  f += static_cast<char>(h.size() >> 8);
  if (version > 1) f += std::string(2, '\0');
  f += h;
  f += std::string(data_bytes, '\0');
  return bytes_of(f);
}

TEST(Npy, RoundTripsFloat32AndFloat16) {
  const std::vector<float> x{1.5f, -2.0f, 3.25f, 0.0f, 7.0f, -8.5f};
  const std::vector<index_t> shape{2, 3};
  const auto file = npy::serialize(npy::DType::float32, shape, x.data());
  EXPECT_EQ(file.size() % 64, 24u);  // header padded to 64 bytes, then 24 data bytes
  const npy::Array a = npy::parse(file, "keys");
  EXPECT_EQ(a.shape, shape);
  for (index_t i = 0; i < 6; ++i) EXPECT_EQ(a.at(i), x[static_cast<std::size_t>(i)]);

  const std::vector<Eigen::half> h{Eigen::half(1.0f), Eigen::half(-0.5f)};
  const std::vector<index_t> one{2};
  const npy::Array b = npy::parse(npy::serialize(npy::DType::float16, one, h.data()), "values");
  EXPECT_EQ(b.dtype, npy::DType::float16);
  EXPECT_EQ(b.shape, one);
  EXPECT_EQ(b.at(1), -0.5f);
}

TEST(Npy, AcceptsWhatNumpyWrites) {
  // numpy 1.24's header for np.zeros((2, 3), '<f4'), and a version 2.0 file.
  EXPECT_EQ(
      npy::parse(
          file_with_header("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }", 24), "k")
          .size(),
      6);
  EXPECT_EQ(
      npy::parse(
          file_with_header("{'descr': '<f2', 'fortran_order': False, 'shape': (5,), }", 10, 2), "k")
          .size(),
      5);
  EXPECT_EQ(
      npy::parse(file_with_header(
                     "{\"shape\": (1, 1, 2), \"fortran_order\": False, \"descr\": \"<f4\"}", 8),
                 "k")
          .size(),
      2);
}

TEST(Npy, RejectsMalformedInputNamingTheArgument) {
  expect_error([] { npy::parse(bytes_of("hello world, not npy"), "keys"); },
               "keys: expected a .npy file (magic \\x93NUMPY), got a file of 20 bytes without it");
  auto truncated =
      file_with_header("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }", 20);
  expect_error([&] { npy::parse(truncated, "keys"); },
               "keys: expected 24 bytes of data for its shape, got 20 (truncated)");
  auto trailing = file_with_header("{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }", 12);
  expect_error([&] { npy::parse(trailing, "values"); },
               "values: expected 8 bytes of data for its shape, got 12 (trailing bytes)");
  auto big = file_with_header("{'descr': '>f4', 'fortran_order': False, 'shape': (2,), }", 8);
  expect_error([&] { npy::parse(big, "queries"); },
               "queries: expected little-endian float32 or float16 ('<f4' or '<f2'), got "
               "big-endian '>f4'");
  auto f64 = file_with_header("{'descr': '<f8', 'fortran_order': False, 'shape': (2,), }", 16);
  expect_error([&] { npy::parse(f64, "keys"); },
               "keys: expected dtype float32 or float16 ('<f4' or '<f2'), got '<f8'");
  auto fortran = file_with_header("{'descr': '<f4', 'fortran_order': True, 'shape': (2, 2), }", 16);
  expect_error([&] { npy::parse(fortran, "keys"); },
               "keys: expected C order (fortran_order False), got a Fortran-order array");
  auto header_cut =
      file_with_header("{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }", 8);
  header_cut.resize(40);
  expect_error([&] { npy::parse(header_cut, "keys"); },
               "keys: expected a header of 118 bytes, got only 30 bytes after the preamble "
               "(truncated file)");
  auto version =
      file_with_header("{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }", 8, 9);
  expect_error([&] { npy::parse(version, "keys"); },
               "keys: expected a .npy format version 1, 2 or 3, got version 9.0");
  for (const char* dict : {"{'descr': '<f4', 'fortran_order': False}",
                           "{'descr': '<f4', 'fortran_order': False, 'shape': (2,", "['descr']",
                           "{'descr': '<f4', 'fortran_order': Maybe, 'shape': (2,), }",
                           "{'descr': '<f4', 'fortran_order': False, 'shape': (-2,), }",
                           "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), 'x': 1}",
                           "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), } junk"}) {
    auto bad = file_with_header(dict, 8);
    try {
      npy::parse(bad, "keys");
      ADD_FAILURE() << "accepted " << dict;
    } catch (const kvevict::error& e) {
      EXPECT_EQ(std::string(e.what()).rfind("keys: expected ", 0), 0u) << e.what();
    }
  }
  expect_error([] { npy::read("/nonexistent/k.npy", "keys"); },
               "keys: expected a readable .npy file, got '/nonexistent/k.npy'");
}

}  // namespace
}  // namespace kvevict::test
