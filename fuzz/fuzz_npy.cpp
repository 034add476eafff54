// libFuzzer target: the .npy reader. Any bytes either parse into an array whose shape, dtype and
// data agree, or fail with a kvevict::error naming the argument. Nothing else may happen: no
// crash, no other exception, no allocation the file's size does not justify.
// SPDX-License-Identifier: Apache-2.0
#include <kvevict/eval/npy.hpp>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "fuzz_common.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace kvevict;
  using fuzz::broken;
  const std::span<const std::byte> file(reinterpret_cast<const std::byte*>(data), size);
  npy::Array a;
  try {
    a = npy::parse(file, "keys");
  } catch (const kvevict::error& e) {
    if (std::string(e.what()).rfind("keys: expected ", 0) != 0)
      broken("message names the argument");
    return 0;
  }
  // Accepted: the data is exactly what the shape and dtype say, and no bigger than the file.
  const index_t element = a.dtype == npy::DType::float32 ? 4 : 2;
  if (a.size() < 0) broken("non-negative size");
  if (static_cast<index_t>(a.data.size()) != a.size() * element) broken("data matches the shape");
  if (a.data.size() > size) broken("data no larger than the file");
  double sum = 0;  // every element is readable
  for (index_t i = 0; i < a.size(); ++i) sum += static_cast<double>(a.at(i) == a.at(i));
  // Round trip: what we write, we read back identically.
  const auto again = npy::parse(npy::serialize(a.dtype, a.shape, a.data.data()), "keys");
  if (again.shape != a.shape || again.dtype != a.dtype ||
      !std::equal(again.data.begin(), again.data.end(), a.data.begin(), a.data.end()))
    broken("serialize then parse is the identity");
  return sum < 0 ? 1 : 0;
}
