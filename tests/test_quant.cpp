// Quantized formats: bit layouts and codecs against hand-computed blocks (ggml q8_0 / q4_0
// reference functions, OCP fp8 e4m3fn / e5m2 encodings, symmetric int8).
// SPDX-License-Identifier: Apache-2.0
#include <gtest/gtest.h>

#include <kvevict/quant.hpp>

#include <array>
#include <cmath>
#include <limits>
#include <vector>

namespace {

using namespace kvevict;

TEST(Quant, Q8_0BlockWithUnitScale) {
  // amax = 127 → d = 1 exactly (fp16 0x3C00); q = roundf(x), halves away from zero.
  std::array<float, 32> x{};
  x[0] = 127.0f, x[1] = -127.0f, x[2] = 63.5f, x[3] = -63.5f, x[4] = 0.49f, x[5] = -0.5f;
  x[6] = 2.5f, x[31] = 1.0f;
  q8_0 b{};
  quant::quantize(x.data(), 32, &b);
  EXPECT_EQ(b.d, 0x3C00);
  const std::array<int, 8> want{127, -127, 64, -64, 0, -1, 3, 0};
  for (int j = 0; j < 8; ++j) EXPECT_EQ(b.qs[j], want[static_cast<std::size_t>(j)]) << j;
  EXPECT_EQ(b.qs[31], 1);
  std::array<float, 32> y{};
  quant::dequantize(&b, 32, y.data());
  EXPECT_EQ(y[0], 127.0f);
  EXPECT_EQ(y[3], -64.0f);
  EXPECT_EQ(y[31], 1.0f);
}

TEST(Quant, Q8_0ScaleIsStoredAsHalf) {
  // amax = 1: d = 1/127 rounds to fp16 0x2008 = 2^-7 · (1 + 8/1024) = 0.0078735352; the quants use
  // the fp32 d (x · 127 → 127), the values the fp16 one.
  std::array<float, 32> x{};
  x[7] = 1.0f;
  q8_0 b{};
  quant::quantize(x.data(), 32, &b);
  EXPECT_EQ(b.d, 0x2008);
  EXPECT_EQ(b.qs[7], 127);
  std::array<float, 32> y{};
  quant::dequantize(&b, 32, y.data());
  EXPECT_EQ(y[7], 127.0f * 0.0078735352f);
  EXPECT_EQ(y[0], 0.0f);
}

TEST(Quant, Q8_0ZeroBlockAndSeveralBlocks) {
  std::vector<float> x(64, 0.0f);
  x[40] = -254.0f;  // second block: d = 2
  std::array<q8_0, 2> b{};
  quant::quantize(x.data(), 64, b.data());
  EXPECT_EQ(b[0].d, 0);
  for (int j = 0; j < 32; ++j) EXPECT_EQ(b[0].qs[j], 0);
  EXPECT_EQ(b[1].d, 0x4000);  // 2.0
  EXPECT_EQ(b[1].qs[8], -127);
  std::vector<float> y(64, 1.0f);
  quant::dequantize(b.data(), 64, y.data());
  EXPECT_EQ(y[0], 0.0f);
  EXPECT_EQ(y[40], -254.0f);
}

TEST(Quant, Q4_0NibblesAndScale) {
  // max-magnitude value 8 (first on ties with −8) → d = −1 (fp16 0xBC00), id = −1;
  // q = min(15, (int8)(−x + 8.5)), value = (q − 8) · d.
  std::array<float, 32> x{};
  x[0] = 8.0f, x[1] = -8.0f, x[2] = -7.0f, x[3] = 1.4f, x[4] = 1.6f, x[16] = 3.0f, x[17] = -2.0f;
  q4_0 b{};
  quant::quantize(x.data(), 32, &b);
  EXPECT_EQ(b.d, 0xBC00);
  // (q of value j) | (q of value j + 16) << 4
  EXPECT_EQ(b.qs[0], 0 | (5 << 4));    // 8 → 0;  3 → (int8)5.5 = 5
  EXPECT_EQ(b.qs[1], 15 | (10 << 4));  // −8 → 16 clamped to 15; −2 → 10
  EXPECT_EQ(b.qs[2], 15 | (8 << 4));   // −7 → 15; 0 → 8
  EXPECT_EQ(b.qs[3], 7 | (8 << 4));    // 1.4 → (int8)7.1 = 7
  EXPECT_EQ(b.qs[4], 6 | (8 << 4));    // 1.6 → 6
  std::array<float, 32> y{};
  quant::dequantize(&b, 32, y.data());
  const std::array<float, 5> want{8.0f, -7.0f, -7.0f, 1.0f, 2.0f};
  for (int j = 0; j < 5; ++j)
    EXPECT_EQ(y[static_cast<std::size_t>(j)], want[static_cast<std::size_t>(j)]) << j;
  EXPECT_EQ(y[16], 3.0f);
  EXPECT_EQ(y[17], -2.0f);
  EXPECT_EQ(y[31], 0.0f);
}

TEST(Quant, Fp8E4m3Encodings) {
  auto enc = [](float x) { return quant::to_fp8_e4m3(x).bits; };
  EXPECT_EQ(enc(1.0f), 0x38);
  EXPECT_EQ(enc(-2.0f), 0xC0);
  EXPECT_EQ(enc(448.0f), 0x7E);
  EXPECT_EQ(enc(500.0f), 0x7E);  // saturates
  EXPECT_EQ(enc(std::numeric_limits<float>::infinity()), 0x7E);
  EXPECT_EQ(enc(-std::numeric_limits<float>::infinity()), 0xFE);
  EXPECT_EQ(enc(std::numeric_limits<float>::quiet_NaN()), 0x7F);
  EXPECT_EQ(enc(0.015625f), 0x08);              // 2^-6, smallest normal
  EXPECT_EQ(enc(std::ldexp(1.0f, -9)), 0x01);   // smallest subnormal
  EXPECT_EQ(enc(std::ldexp(1.0f, -10)), 0x00);  // tie between 0 and 2^-9 → even code 0
  EXPECT_EQ(enc(std::ldexp(3.0f, -10)), 0x02);  // tie between codes 1 and 2 → 2
  EXPECT_EQ(enc(1.0625f), 0x38);                // tie between 1 (0x38) and 1.125 (0x39)
  EXPECT_EQ(enc(1.1875f), 0x3A);                // tie between 1.125 and 1.25 (0x3A)
  EXPECT_EQ(enc(1.05f), 0x38);
  EXPECT_EQ(enc(1.08f), 0x39);
  EXPECT_EQ(quant::to_float(fp8_e4m3{0x07}), 7.0f / 512.0f);
  EXPECT_EQ(quant::to_float(fp8_e4m3{0x7E}), 448.0f);
  EXPECT_TRUE(std::isnan(quant::to_float(fp8_e4m3{0xFF})));
}

TEST(Quant, Fp8E5m2Encodings) {
  auto enc = [](float x) { return quant::to_fp8_e5m2(x).bits; };
  EXPECT_EQ(enc(1.0f), 0x3C);
  EXPECT_EQ(enc(57344.0f), 0x7B);
  EXPECT_EQ(enc(1e6f), 0x7B);
  EXPECT_EQ(enc(-std::numeric_limits<float>::infinity()), 0xFB);
  EXPECT_EQ(enc(std::ldexp(1.0f, -16)), 0x01);
  EXPECT_EQ(enc(1.125f), 0x3C);  // tie between 1 and 1.25 → even code 0x3C
  EXPECT_EQ(enc(1.375f), 0x3E);  // tie between 1.25 (0x3D) and 1.5 (0x3E) → 0x3E
  EXPECT_TRUE(std::isinf(quant::to_float(fp8_e5m2{0x7C})));
  EXPECT_TRUE(std::isnan(quant::to_float(fp8_e5m2{0x7D})));
}

TEST(Quant, Fp8EveryFiniteCodeRoundTrips) {
  for (int c = 0; c < 256; ++c) {
    const auto bits = static_cast<std::uint8_t>(c);
    const float a = quant::to_float(fp8_e4m3{bits});
    if (!std::isnan(a)) {
      EXPECT_EQ(quant::to_fp8_e4m3(a).bits, bits) << c;
    }
    const float b = quant::to_float(fp8_e5m2{bits});
    if (std::isfinite(b)) {
      EXPECT_EQ(quant::to_fp8_e5m2(b).bits, bits) << c;
    }
  }
}

TEST(Quant, Fp8RowsApplyTheScale) {
  const std::array<float, 3> x{2.0f, -896.0f, 0.25f};
  std::array<fp8_e4m3, 3> q{};
  quant::quantize(x.data(), 3, 2.0f, q.data());  // stored: x / 2
  EXPECT_EQ(q[0].bits, 0x38);
  EXPECT_EQ(q[1].bits, 0xFE);  // −448
  std::array<float, 3> y{};
  quant::dequantize(q.data(), 3, 2.0f, y.data());
  EXPECT_EQ(y[0], 2.0f);
  EXPECT_EQ(y[1], -896.0f);
  EXPECT_EQ(y[2], 0.25f);
}

TEST(Quant, Int8RowScale) {
  // s = amax / 127 = 2; q = rint(x · (1 / s)), ties to even, saturated to [−128, 127].
  const std::array<float, 5> x{254.0f, -127.0f, 0.5f, 1.0f, 3.0f};
  std::array<int8, 5> q{};
  EXPECT_EQ(quant::quantize(x.data(), 5, q.data()), 2.0f);
  EXPECT_EQ(q[0].q, 127);
  EXPECT_EQ(q[1].q, -64);  // −63.5 → −64 (even)
  EXPECT_EQ(q[2].q, 0);    // 0.25
  EXPECT_EQ(q[3].q, 0);    // 0.5 → 0 (even)
  EXPECT_EQ(q[4].q, 2);    // 1.5 → 2 (even)
  std::array<float, 5> y{};
  quant::dequantize(q.data(), 5, 2.0f, y.data());
  EXPECT_EQ(y[1], -128.0f);
  EXPECT_EQ(y[4], 4.0f);
  const std::array<float, 2> zero{0.0f, -0.0f};
  EXPECT_EQ(quant::quantize(zero.data(), 2, q.data()), 0.0f);
  EXPECT_EQ(q[0].q, 0);
  // A given (per-tensor) scale saturates: TensorRT-LLM's cvt.rni.sat.s8.
  const std::array<float, 3> big{1000.0f, -1000.0f, 2.5f};
  quant::quantize(big.data(), 3, 1.0f, q.data());
  EXPECT_EQ(q[0].q, 127);
  EXPECT_EQ(q[1].q, -128);
  EXPECT_EQ(q[2].q, 2);
}

}  // namespace
