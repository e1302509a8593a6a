// st::fp8: FP8 decode tables, f32 -> BF16/F16 rounding, the dequantisation
// kernel convert_run and scale decoding, against the independent oracle in
// oracle.hpp and hand-worked values from fp8-conventions.md §1 and §11.
#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "catch.hpp"
#include "fp8.hpp"
#include "fp8_simd.hpp"
#include "oracle.hpp"

using st::Dtype;
using st::fp8::Target;
namespace fp8 = st::fp8;

namespace {

// Loss counts are checked by their own test; elsewhere they are not the point.
st::fp8::Loss loss_sink;

const Dtype kFp8Types[] = {Dtype::F8_E4M3, Dtype::F8_E5M2, Dtype::F8_E4M3FNUZ,
                           Dtype::F8_E5M2FNUZ, Dtype::F8_E8M0};

std::string hex(uint64_t v) {
  std::ostringstream o;
  o << "0x" << std::hex << v;
  return o.str();
}

// Same float, bit for bit (so -0 != +0); any NaN equals any NaN.
bool same(float a, float b) {
  if (std::isnan(a) || std::isnan(b)) return std::isnan(a) && std::isnan(b);
  return oracle::bits(a) == oracle::bits(b);
}

float p2(int e) { return static_cast<float>(std::ldexp(1.0, e)); }

}  // namespace

// ---------------------------------------------------------------- tables

TEST_CASE("decode_table matches a decoder written from the FP8 definitions", "[fp8][table]") {
  for (Dtype d : kFp8Types) {
    INFO("dtype " << st::dtype_name(d));
    const auto& got = fp8::decode_table(d);
    const auto want = oracle::fp8_table(d);
    int bad = 0;
    std::string first;
    for (int c = 0; c < 256; ++c) {
      if (!same(got[size_t(c)], want[size_t(c)])) {
        if (bad++ == 0)
          first = "code " + hex(unsigned(c)) + ": got " + std::to_string(got[size_t(c)]) +
                  " want " + std::to_string(want[size_t(c)]);
      }
    }
    INFO(first);
    CHECK(bad == 0);
  }
}

TEST_CASE("decode_table hand-written spot values", "[fp8][table]") {
  SECTION("F8_E4M3 (e4m3fn)") {
    const auto& t = fp8::decode_table(Dtype::F8_E4M3);
    CHECK(t[0x38] == 1.0f);
    CHECK(t[0x40] == 2.0f);
    CHECK(t[0x44] == 3.0f);
    CHECK(t[0x48] == 4.0f);
    CHECK(t[0x7E] == 448.0f);
    CHECK(t[0xFE] == -448.0f);
    CHECK(t[0x01] == p2(-9));
    CHECK(t[0x08] == p2(-6));  // min normal
    CHECK(t[0x00] == 0.0f);
    CHECK(!std::signbit(t[0x00]));
    CHECK(t[0x80] == 0.0f);
    CHECK(std::signbit(t[0x80]));
    CHECK(std::isnan(t[0x7F]));
    CHECK(std::isnan(t[0xFF]));
    CHECK(t[0xB8] == -1.0f);
  }
  SECTION("F8_E5M2") {
    const auto& t = fp8::decode_table(Dtype::F8_E5M2);
    CHECK(t[0x3C] == 1.0f);
    CHECK(t[0x40] == 2.0f);
    CHECK(t[0x44] == 4.0f);
    CHECK(t[0x48] == 8.0f);
    CHECK(t[0x7B] == 57344.0f);
    CHECK(std::isinf(t[0x7C]));
    CHECK(t[0x7C] > 0);
    CHECK(std::isinf(t[0xFC]));
    CHECK(t[0xFC] < 0);
    CHECK(std::isnan(t[0x7D]));
    CHECK(std::isnan(t[0x7E]));
    CHECK(std::isnan(t[0x7F]));
    CHECK(std::isnan(t[0xFD]));
    CHECK(std::isnan(t[0xFF]));
    CHECK(t[0x01] == p2(-16));
    CHECK(t[0x04] == p2(-14));
    CHECK(std::signbit(t[0x80]));
    CHECK(t[0x80] == 0.0f);
  }
  SECTION("F8_E4M3FNUZ") {
    const auto& t = fp8::decode_table(Dtype::F8_E4M3FNUZ);
    CHECK(t[0x7F] == 240.0f);
    CHECK(t[0xFF] == -240.0f);
    CHECK(std::isnan(t[0x80]));
    CHECK(t[0x40] == 1.0f);
    CHECK(t[0x01] == p2(-10));
    CHECK(t[0x00] == 0.0f);
    CHECK(!std::signbit(t[0x00]));
    int nans = 0;
    for (int c = 0; c < 256; ++c) nans += std::isnan(t[size_t(c)]) ? 1 : 0;
    CHECK(nans == 1);
  }
  SECTION("F8_E5M2FNUZ") {
    const auto& t = fp8::decode_table(Dtype::F8_E5M2FNUZ);
    CHECK(std::isnan(t[0x80]));
    CHECK(t[0x40] == 1.0f);
    CHECK(t[0x7F] == 57344.0f);
    CHECK(t[0x01] == p2(-17));
    int specials = 0;
    for (int c = 0; c < 256; ++c) specials += std::isfinite(t[size_t(c)]) ? 0 : 1;
    CHECK(specials == 1);  // no inf, one NaN
  }
  SECTION("F8_E8M0") {
    const auto& t = fp8::decode_table(Dtype::F8_E8M0);
    CHECK(t[0x7F] == 1.0f);
    CHECK(t[0x80] == 2.0f);
    CHECK(t[0x7E] == 0.5f);
    CHECK(t[0x00] == p2(-127));
    CHECK(t[0x00] > 0.0f);
    CHECK(t[0xFE] == p2(127));
    CHECK(std::isnan(t[0xFF]));
  }
}

// --------------------------------------------------------- 16-bit rounding

TEST_CASE("oracle self-check against hand-worked roundings", "[fp8][oracle]") {
  // Guards the oracle used below: these are worked by hand from the formats.
  const auto& b = oracle::bf16();
  const auto& h = oracle::f16();
  CHECK(b.round(1.0f) == 0x3F80);
  CHECK(b.round(oracle::from_bits(0x3F808000)) == 0x3F80);  // tie -> even
  CHECK(b.round(oracle::from_bits(0x3F818000)) == 0x3F82);  // tie -> even (up)
  CHECK(b.round(oracle::from_bits(0x7F7F8000)) == 0x7F80);  // tie at max -> inf
  CHECK(b.round(oracle::from_bits(0x00008000)) == 0x0000);
  CHECK(h.round(65504.0f) == 0x7BFF);
  CHECK(h.round(65520.0f) == 0x7C00);
  CHECK(h.round(p2(-25)) == 0x0000);
  CHECK(h.round(3 * p2(-25)) == 0x0002);
  CHECK(h.round(0.1f) == 0x2E66);
  CHECK(h.round(-0.0f) == 0x8000);
  CHECK(h.decode(0x3C00) == 1.0);
  CHECK(b.decode(0x3F80) == 1.0);
}

TEST_CASE("f32_to_bf16 hand-worked values", "[fp8][bf16]") {
  using oracle::from_bits;
  CHECK(fp8::f32_to_bf16(1.0f) == 0x3F80);
  CHECK(fp8::f32_to_bf16(-2.0f) == 0xC000);
  CHECK(fp8::f32_to_bf16(0.0f) == 0x0000);
  CHECK(fp8::f32_to_bf16(-0.0f) == 0x8000);
  CHECK(fp8::f32_to_bf16(from_bits(0x3F808000)) == 0x3F80);  // 1+2^-8: tie, stays even
  CHECK(fp8::f32_to_bf16(from_bits(0x3F818000)) == 0x3F82);  // tie, rounds up to even
  CHECK(fp8::f32_to_bf16(from_bits(0x3F808001)) == 0x3F81);  // just above tie
  CHECK(fp8::f32_to_bf16(from_bits(0x3F807FFF)) == 0x3F80);  // just below tie
  CHECK(fp8::f32_to_bf16(from_bits(0x3F80FFFF)) == 0x3F81);
  CHECK(fp8::f32_to_bf16(from_bits(0x7F7F7FFF)) == 0x7F7F);  // stays at max 3.3895e38
  CHECK(fp8::f32_to_bf16(from_bits(0x7F7F8000)) == 0x7F80);  // tie at max -> +inf
  CHECK(fp8::f32_to_bf16(from_bits(0xFF7F8000)) == 0xFF80);  // -> -inf
  CHECK(fp8::f32_to_bf16(3.4e38f) == 0x7F80);
  CHECK(fp8::f32_to_bf16(oracle::inf()) == 0x7F80);
  CHECK(fp8::f32_to_bf16(-oracle::inf()) == 0xFF80);
  CHECK(fp8::f32_to_bf16(from_bits(0x00000001)) == 0x0000);  // f32 denorm_min
  CHECK(fp8::f32_to_bf16(from_bits(0x00008000)) == 0x0000);  // tie -> even 0
  CHECK(fp8::f32_to_bf16(from_bits(0x00018000)) == 0x0002);  // tie -> even 2
  CHECK(fp8::f32_to_bf16(from_bits(0x00008001)) == 0x0001);
  CHECK(fp8::f32_to_bf16(from_bits(0x807FFFFF)) == 0x8080);  // rounds up into min normal
  CHECK(fp8::f32_to_bf16(oracle::qnan()) == 0x7FC0);
  CHECK(fp8::f32_to_bf16(from_bits(0x7F800001)) == 0x7FC0);  // signalling NaN
  CHECK(fp8::f32_to_bf16(from_bits(0xFFC00000)) == 0x7FC0);  // negative NaN
  CHECK(fp8::f32_to_bf16(from_bits(0x7FFFFFFF)) == 0x7FC0);  // would round-carry into inf
}

TEST_CASE("f32_to_f16 hand-worked values", "[fp8][f16]") {
  CHECK(fp8::f32_to_f16(1.0f) == 0x3C00);
  CHECK(fp8::f32_to_f16(-2.0f) == 0xC000);
  CHECK(fp8::f32_to_f16(0.5f) == 0x3800);
  CHECK(fp8::f32_to_f16(0.1f) == 0x2E66);
  CHECK(fp8::f32_to_f16(1.0f / 3.0f) == 0x3555);
  CHECK(fp8::f32_to_f16(0.0f) == 0x0000);
  CHECK(fp8::f32_to_f16(-0.0f) == 0x8000);
  CHECK(fp8::f32_to_f16(1.0f + p2(-11)) == 0x3C00);      // tie -> even
  CHECK(fp8::f32_to_f16(1.0f + 3 * p2(-11)) == 0x3C02);  // tie -> even (up)
  CHECK(fp8::f32_to_f16(std::nextafter(1.0f + p2(-11), 2.0f)) == 0x3C01);
  CHECK(fp8::f32_to_f16(65504.0f) == 0x7BFF);
  CHECK(fp8::f32_to_f16(65519.99f) == 0x7BFF);
  CHECK(fp8::f32_to_f16(std::nextafter(65520.0f, 0.0f)) == 0x7BFF);
  CHECK(fp8::f32_to_f16(65520.0f) == 0x7C00);
  CHECK(fp8::f32_to_f16(-65520.0f) == 0xFC00);
  CHECK(fp8::f32_to_f16(65536.0f) == 0x7C00);
  CHECK(fp8::f32_to_f16(1e10f) == 0x7C00);
  CHECK(fp8::f32_to_f16(oracle::inf()) == 0x7C00);
  CHECK(fp8::f32_to_f16(-oracle::inf()) == 0xFC00);
  CHECK(fp8::f32_to_f16(p2(-14)) == 0x0400);  // min normal
  CHECK(fp8::f32_to_f16(p2(-24)) == 0x0001);  // min subnormal
  CHECK(fp8::f32_to_f16(-p2(-24)) == 0x8001);
  CHECK(fp8::f32_to_f16(p2(-25)) == 0x0000);  // tie -> even 0
  CHECK(fp8::f32_to_f16(-p2(-25)) == 0x8000);
  CHECK(fp8::f32_to_f16(std::nextafter(p2(-25), 1.0f)) == 0x0001);
  CHECK(fp8::f32_to_f16(3 * p2(-25)) == 0x0002);  // tie between 1 and 2 -> 2
  CHECK(fp8::f32_to_f16(5 * p2(-25)) == 0x0002);  // tie between 2 and 3 -> 2
  CHECK(fp8::f32_to_f16(p2(-14) - p2(-25)) == 0x0400);  // tie 0x3FF/0x400 -> 0x400
  CHECK(fp8::f32_to_f16(1e-10f) == 0x0000);
  CHECK(fp8::f32_to_f16(oracle::from_bits(0x00000001)) == 0x0000);
  CHECK(fp8::f32_to_f16(oracle::qnan()) == 0x7E00);
  CHECK(fp8::f32_to_f16(oracle::from_bits(0x7F800001)) == 0x7E00);
  CHECK(fp8::f32_to_f16(oracle::from_bits(0xFFC00000)) == 0x7E00);
  CHECK(fp8::f32_to_f16(oracle::from_bits(0x7F801234)) == 0x7E00);
}

namespace {

struct RoundStats {
  long checked = 0;
  long bad = 0;
  std::string first;
};

template <class F>
void check_round(RoundStats& st, const oracle::Half& o, F conv, float x) {
  ++st.checked;
  const uint16_t want = o.round(x);
  const uint16_t got = conv(x);
  if (got != want) {
    if (st.bad++ < 5)
      st.first += "x=" + hex(oracle::bits(x)) + " got " + hex(got) + " want " + hex(want) + "; ";
  }
}

}  // namespace

TEST_CASE("f32_to_bf16 against the brute-force oracle", "[fp8][bf16]") {
  const auto& o = oracle::bf16();
  auto conv = [](float f) { return fp8::f32_to_bf16(f); };
  RoundStats st;
  SECTION("every bf16 code with low halves at, around and off the tie") {
    const uint32_t lows[] = {0x0000, 0x0001, 0x7FFF, 0x8000, 0x8001, 0xFFFF, 0x4000, 0xC000};
    for (uint32_t hi = 0; hi < 65536; ++hi)
      for (uint32_t lo : lows) check_round(st, o, conv, oracle::from_bits(hi << 16 | lo));
  }
  SECTION("pseudo-random bit patterns") {
    std::mt19937 rng(12345);
    for (int i = 0; i < 400000; ++i) check_round(st, o, conv, oracle::from_bits(uint32_t(rng())));
  }
  INFO(st.first);
  CHECK(st.checked > 0);
  CHECK(st.bad == 0);
}

TEST_CASE("f32_to_f16 against the brute-force oracle", "[fp8][f16]") {
  const auto& o = oracle::f16();
  auto conv = [](float f) { return fp8::f32_to_f16(f); };
  RoundStats st;
  SECTION("every f16 value, every midpoint, and their f32 neighbours") {
    for (uint32_t c = 0; c < 0x7C00; ++c) {
      const double v = o.mag(uint16_t(c));
      const double next = o.mag(uint16_t(c + 1));  // c+1 == 0x7C00 stands at 65536
      const float pts[] = {float(v), float(v + (next - v) / 2)};
      for (float p : pts) {
        for (float s : {1.0f, -1.0f}) {
          float x = s * p;
          check_round(st, o, conv, x);
          check_round(st, o, conv, std::nextafter(x, oracle::inf()));
          check_round(st, o, conv, std::nextafter(x, -oracle::inf()));
        }
      }
    }
  }
  SECTION("overflow boundary") {
    for (float x : {65504.0f, 65519.99f, 65520.0f, 65520.01f, 65535.0f, 65536.0f, 3.39e38f}) {
      check_round(st, o, conv, x);
      check_round(st, o, conv, -x);
    }
    CHECK(o.round(65519.99f) == 0x7BFF);
    CHECK(o.round(65520.0f) == 0x7C00);
  }
  SECTION("pseudo-random floats: any bit pattern, and in the f16 range") {
    std::mt19937 rng(777);
    for (int i = 0; i < 200000; ++i) check_round(st, o, conv, oracle::from_bits(uint32_t(rng())));
    for (int i = 0; i < 300000; ++i) {
      uint32_t r = uint32_t(rng());
      uint32_t exp = 127 - 27 + (r >> 24) % 45;  // 2^-27 .. 2^17
      uint32_t x = (r & 0x80000000u) | exp << 23 | (uint32_t(rng()) & 0x7FFFFF);
      check_round(st, o, conv, oracle::from_bits(x));
    }
  }
  INFO(st.first);
  CHECK(st.checked > 0);
  CHECK(st.bad == 0);
}

TEST_CASE("bf16_to_f32 and f16_to_f32 decode every code; round trips are exact", "[fp8][decode]") {
  int bad_b = 0, bad_h = 0, bad_rt_b = 0, bad_rt_h = 0;
  std::string first;
  for (uint32_t c = 0; c < 65536; ++c) {
    const uint16_t h = uint16_t(c);
    const float wb = float(oracle::bf16().value[c]);
    const float wh = float(oracle::f16().value[c]);
    const float gb = fp8::bf16_to_f32(h);
    const float gh = fp8::f16_to_f32(h);
    if (!same(gb, wb)) {
      if (bad_b++ == 0) first += "bf16 " + hex(c) + "; ";
    }
    if (!same(gh, wh)) {
      if (bad_h++ == 0) first += "f16 " + hex(c) + "; ";
    }
    if (!std::isnan(wb) && fp8::f32_to_bf16(gb) != h) {
      if (bad_rt_b++ == 0) first += "bf16 round trip " + hex(c) + "; ";
    }
    if (!std::isnan(wh) && fp8::f32_to_f16(gh) != h) {
      if (bad_rt_h++ == 0) first += "f16 round trip " + hex(c) + "; ";
    }
  }
  INFO(first);
  CHECK(bad_b == 0);
  CHECK(bad_h == 0);
  CHECK(bad_rt_b == 0);
  CHECK(bad_rt_h == 0);
  // the bf16 decode is the upper half of an f32
  CHECK(oracle::bits(fp8::bf16_to_f32(0x3F80)) == 0x3F800000u);
  CHECK(oracle::bits(fp8::bf16_to_f32(0x8001)) == 0x80010000u);
  CHECK(fp8::f16_to_f32(0x7BFF) == 65504.0f);
  CHECK(fp8::f16_to_f32(0x0001) == p2(-24));
}

TEST_CASE("canonical_f32 and target helpers", "[fp8]") {
  CHECK(oracle::bits(fp8::canonical_f32(oracle::from_bits(0xFFC00001))) == 0x7FC00000u);
  CHECK(oracle::bits(fp8::canonical_f32(oracle::from_bits(0x7F800001))) == 0x7FC00000u);
  CHECK(oracle::bits(fp8::canonical_f32(-0.0f)) == 0x80000000u);
  CHECK(oracle::bits(fp8::canonical_f32(oracle::from_bits(0x00000001))) == 0x00000001u);
  CHECK(fp8::canonical_f32(-oracle::inf()) == -oracle::inf());

  CHECK(fp8::target_from_name("bf16") == Target::BF16);
  CHECK(fp8::target_from_name("f16") == Target::F16);
  CHECK(fp8::target_from_name("fp16") == Target::F16);
  CHECK(fp8::target_from_name("f32") == Target::F32);
  CHECK(fp8::target_from_name("fp32") == Target::F32);
  CHECK(!fp8::target_from_name("f64").has_value());
  CHECK(!fp8::target_from_name("").has_value());
  CHECK(fp8::target_bytes(Target::BF16) == 2);
  CHECK(fp8::target_bytes(Target::F16) == 2);
  CHECK(fp8::target_bytes(Target::F32) == 4);
  CHECK(fp8::target_dtype(Target::BF16) == Dtype::BF16);
  CHECK(fp8::target_dtype(Target::F16) == Dtype::F16);
  CHECK(fp8::target_dtype(Target::F32) == Dtype::F32);
  CHECK(fp8::target_suffix(Target::BF16) == "bf16");
  CHECK(fp8::target_suffix(Target::F16) == "f16");
  CHECK(fp8::target_suffix(Target::F32) == "f32");
}

// -------------------------------------------------------------- convert_run

namespace {

// Expected little-endian output bytes of one element.
std::vector<uint8_t> expect_bytes(float code_value, float scale, Target t) {
  const float p = oracle::mul_f32(code_value, scale);
  std::vector<uint8_t> out;
  if (t == Target::F32) {
    uint32_t b = oracle::canonical_f32_bits(p);
    for (int i = 0; i < 4; ++i) out.push_back(uint8_t(b >> (8 * i)));
  } else {
    uint16_t h = t == Target::BF16 ? oracle::bf16().round(p) : oracle::f16().round(p);
    out.push_back(uint8_t(h));
    out.push_back(uint8_t(h >> 8));
  }
  return out;
}

const char* tname(Target t) {
  return t == Target::BF16 ? "BF16" : t == Target::F16 ? "F16" : "F32";
}

}  // namespace

TEST_CASE("convert_run equals f32(code)*scale rounded by the oracle, every kernel and path", "[fp8][convert]") {
  const float scales[] = {
      1.0f, -1.0f, 0.0f, -0.0f, 0.5f, 3.0f, 0.1f, 7.0f / 3.0f, 1e-3f,
      p2(-20), p2(-30), p2(-120), p2(-130), p2(-140), p2(-149),  // subnormal results
      1.0f + p2(-8), 1.0f + p2(-11), 1.0f + 3 * p2(-9),          // exact ties
      146.25f,                                                   // 448*146.25 = 65520: f16 tie to inf
      1000.0f, 1e6f, 3e38f, std::numeric_limits<float>::max(),   // overflow
      oracle::inf(), oracle::qnan(), 0.0003906f};
  // short runs, vector widths and their neighbours, both sides of the table path
  const size_t lengths[] = {0, 1, 2, 7, 15, 16, 17, 33, 255, 1023, 1024, 1025, 2051, 4099};
  const struct { size_t in_off, out_off; } offsets[] = {{0, 0}, {1, 3}, {3, 1}};
  long calls = 0, bad = 0, clobbered = 0;
  std::string first;
  for (fp8::Kernel kern : fp8::available_kernels())
  for (Dtype d : kFp8Types) {
    const auto lut = oracle::fp8_table(d);
    for (float scale : scales) {
      for (Target t : {Target::BF16, Target::F16, Target::F32}) {
        const size_t tb = t == Target::F32 ? 4 : 2;
        std::vector<std::vector<uint8_t>> want(256);
        for (int c = 0; c < 256; ++c) want[size_t(c)] = expect_bytes(lut[size_t(c)], scale, t);
        for (size_t n : lengths) {
          for (auto off : offsets) {
            // enough runs of n codes to cover all 256 codes (97 is odd: a
            // permutation of the bytes), at least one run
            const size_t runs = n == 0 ? 1 : (256 + n - 1) / n;
            for (size_t r = 0; r < runs; ++r) {
              std::vector<uint8_t> in(off.in_off + n + 1);
              for (size_t i = 0; i < n; ++i) in[off.in_off + i] = uint8_t(((r * n + i) * 97 + 5) & 0xFF);
              std::vector<uint8_t> out(off.out_off + n * tb + 16, 0xAB);
              fp8::convert_run(kern, d, in.data() + off.in_off, n, scale, t, out.data() + off.out_off, loss_sink);
              ++calls;
              for (size_t i = 0; i < n; ++i) {
                const uint8_t c = in[off.in_off + i];
                if (std::memcmp(out.data() + off.out_off + i * tb, want[c].data(), tb) != 0) {
                  if (bad++ < 3) {
                    uint64_t g = 0, w = 0;
                    for (size_t k = 0; k < tb; ++k) {
                      g |= uint64_t(out[off.out_off + i * tb + k]) << (8 * k);
                      w |= uint64_t(want[c][k]) << (8 * k);
                    }
                    first += std::string(fp8::kernel_name(kern)) + ": " + std::string(st::dtype_name(d)) +
                             " code " + hex(c) + " scale " +
                             hex(oracle::bits(scale)) + " -> " + tname(t) + " n=" +
                             std::to_string(n) + ": got " + hex(g) + " want " + hex(w) + "; ";
                  }
                }
              }
              for (size_t i = 0; i < off.out_off; ++i) clobbered += out[i] != 0xAB;
              for (size_t i = off.out_off + n * tb; i < out.size(); ++i) clobbered += out[i] != 0xAB;
            }
          }
        }
      }
    }
  }
  INFO(first);
  CHECK(calls > 1000);
  CHECK(bad == 0);
  CHECK(clobbered == 0);
}

TEST_CASE("convert_run hand-worked outputs", "[fp8][convert]") {
  const Dtype e4 = Dtype::F8_E4M3;
  const uint8_t in[] = {0x38, 0x40, 0x80, 0x7F, 0x7E};
  SECTION("BF16, scale 0.5") {
    uint8_t out[10];
    fp8::convert_run(e4, in, 5, 0.5f, Target::BF16, out, loss_sink);
    const uint16_t want[] = {0x3F00, 0x3F80, 0x8000, 0x7FC0, 0x4360};  // .5, 1, -0, NaN, 224
    for (int i = 0; i < 5; ++i) CHECK((out[2 * i] | out[2 * i + 1] << 8) == want[i]);
  }
  SECTION("F16, scale 146.25 overflows 448 to inf exactly at the tie") {
    uint8_t out[10];
    fp8::convert_run(e4, in, 5, 146.25f, Target::F16, out, loss_sink);
    CHECK((out[8] | out[9] << 8) == 0x7C00);
    CHECK((out[4] | out[5] << 8) == 0x8000);
    CHECK((out[6] | out[7] << 8) == 0x7E00);
  }
  SECTION("F32, scale 3") {
    uint8_t out[20];
    fp8::convert_run(e4, in, 5, 3.0f, Target::F32, out, loss_sink);
    auto word = [&](int i) {
      return uint32_t(out[4 * i]) | uint32_t(out[4 * i + 1]) << 8 | uint32_t(out[4 * i + 2]) << 16 |
             uint32_t(out[4 * i + 3]) << 24;
    };
    CHECK(word(0) == oracle::bits(3.0f));
    CHECK(word(1) == oracle::bits(6.0f));
    CHECK(word(2) == 0x80000000u);
    CHECK(word(3) == 0x7FC00000u);
    CHECK(word(4) == oracle::bits(1344.0f));
  }
}

// ------------------------------------------------------------ decode_scales

TEST_CASE("decode_scales for F32, BF16, F16 and F8_E8M0 bytes", "[fp8][scales]") {
  CHECK(fp8::is_scale_dtype(Dtype::F32));
  CHECK(fp8::is_scale_dtype(Dtype::BF16));
  CHECK(fp8::is_scale_dtype(Dtype::F16));
  CHECK(fp8::is_scale_dtype(Dtype::F8_E8M0));
  CHECK(!fp8::is_scale_dtype(Dtype::I32));
  CHECK(!fp8::is_scale_dtype(Dtype::BOOL));
  CHECK(!fp8::is_scale_dtype(Dtype::C64));

  SECTION("F32 little-endian") {
    std::vector<uint8_t> b;
    for (uint32_t w : {0x3F800000u, 0xC0200000u, 0x00000001u, 0x7F7FFFFFu, 0x39CCCCCDu}) {
      for (int i = 0; i < 4; ++i) b.push_back(uint8_t(w >> (8 * i)));
    }
    auto v = fp8::decode_scales(Dtype::F32, b);
    REQUIRE(v.size() == 5);
    CHECK(v[0] == 1.0f);
    CHECK(v[1] == -2.5f);
    CHECK(oracle::bits(v[2]) == 0x00000001u);
    CHECK(v[3] == std::numeric_limits<float>::max());
    CHECK(oracle::bits(v[4]) == 0x39CCCCCDu);
  }
  SECTION("BF16 little-endian") {
    const std::vector<uint8_t> b = {0x80, 0x3F, 0x20, 0xC0, 0x01, 0x00, 0x80, 0x7F, 0x00, 0x80};
    auto v = fp8::decode_scales(Dtype::BF16, b);
    REQUIRE(v.size() == 5);
    CHECK(v[0] == 1.0f);
    CHECK(v[1] == -2.5f);
    CHECK(v[2] == p2(-133));
    CHECK(v[3] == oracle::inf());
    CHECK(v[4] == 0.0f);
    CHECK(std::signbit(v[4]));
  }
  SECTION("F16 little-endian") {
    const std::vector<uint8_t> b = {0x00, 0x3C, 0x01, 0x00, 0xFF, 0x7B, 0x00, 0xFC, 0x66, 0x2E};
    auto v = fp8::decode_scales(Dtype::F16, b);
    REQUIRE(v.size() == 5);
    CHECK(v[0] == 1.0f);
    CHECK(v[1] == p2(-24));
    CHECK(v[2] == 65504.0f);
    CHECK(v[3] == -oracle::inf());
    CHECK(v[4] == float(oracle::f16().decode(0x2E66)));
  }
  SECTION("F8_E8M0") {
    const std::vector<uint8_t> b = {0x7F, 0x00, 0xFE, 0xFF, 0x80, 0x76};
    auto v = fp8::decode_scales(Dtype::F8_E8M0, b);
    REQUIRE(v.size() == 6);
    CHECK(v[0] == 1.0f);
    CHECK(v[1] == p2(-127));
    CHECK(v[2] == p2(127));
    CHECK(std::isnan(v[3]));
    CHECK(v[4] == 2.0f);
    CHECK(v[5] == p2(-9));
  }
  SECTION("empty input") {
    CHECK(fp8::decode_scales(Dtype::F32, {}).empty());
  }
}

TEST_CASE("convert_run counts overflow, underflow and NaN as the oracle rounds them", "[fp8][loss]") {
  // Expected counts from the oracle: a finite code whose rounded product is
  // +-inf overflowed; a non-zero code whose rounded product is +-0
  // underflowed; a NaN code is NaN.
  const struct {
    Dtype type;
    float scale;
    Target target;
  } cases[] = {
      {Dtype::F8_E4M3, 300.0f, Target::F16},    // 448 * 300 > 65504: overflow
      {Dtype::F8_E4M3, 1e-6f, Target::F16},     // tiny values: underflow
      {Dtype::F8_E5M2, 1e35f, Target::BF16},    // 57344 * 1e35 > bf16 max (3.4e38): overflow
      {Dtype::F8_E5M2, 1e-38f, Target::BF16},   // underflow in bf16
      {Dtype::F8_E4M3FNUZ, 2.0f, Target::F32},  // nothing lost but the NaN code
      {Dtype::F8_E5M2, 1e-44f, Target::F32},    // f32 underflow (subnormal products round to 0)
      {Dtype::F8_E4M3, 1e-44f, Target::F32},
      {Dtype::F8_E4M3, 1e38f, Target::F32},     // f32 overflow
      {Dtype::F8_E5M2, 300.0f, Target::F16},    // e5m2 inf codes stay inf: not counted
      {Dtype::F8_E4M3, 1e-40f, Target::BF16},   // bf16 underflow
      {Dtype::F8_E5M2, 0.0f, Target::BF16},     // every non-zero finite code underflows, inf*0 is NaN
      {Dtype::F8_E4M3, oracle::inf(), Target::F16},  // 0*inf is NaN, the rest inf from finite
      {Dtype::F8_E4M3, 0.01f, Target::BF16},    // only the 2 NaN codes (counted by the nibble kernel)
      {Dtype::F8_E5M2, -0.5f, Target::BF16},    // only the 6 NaN codes
      {Dtype::F8_E4M3, 2.0f, Target::F16},
  };
  for (const auto& c : cases) {
    INFO(st::dtype_name(c.type) << " x " << c.scale);
    uint64_t over = 0, under = 0, nan = 0;
    for (int code = 0; code < 256; ++code) {
      const float v = oracle::fp8_decode(oracle::fp8_format(c.type), uint8_t(code));
      const float p = oracle::mul_f32(v, c.scale);
      if (std::isnan(v) || std::isnan(p)) {  // a NaN code, or 0 * inf, inf * 0
        ++nan;
        continue;
      }
      double r;
      if (c.target == Target::F32) r = p;
      else r = (c.target == Target::F16 ? oracle::f16() : oracle::bf16()).decode(
               (c.target == Target::F16 ? oracle::f16() : oracle::bf16()).round(p));
      if (std::isinf(r) && !std::isinf(v)) ++over;
      else if (r == 0 && v != 0) ++under;
    }
    std::vector<uint8_t> in;
    for (int rep = 0; rep < 5; ++rep)  // 1280 codes: the table path, and 200 on the direct path
      for (int code = 0; code < 256; ++code) in.push_back(uint8_t(code));
    std::vector<uint8_t> out(in.size() * 4);
    for (fp8::Kernel kern : fp8::available_kernels()) {
      INFO("kernel " << fp8::kernel_name(kern));
      fp8::Loss big, small, odd;
      fp8::convert_run(kern, c.type, in.data(), in.size(), c.scale, c.target, out.data(), big);
      CHECK(big.overflow == 5 * over);
      CHECK(big.underflow == 5 * under);
      CHECK(big.nan == 5 * nan);
      for (int k = 0; k < 5; ++k)
        fp8::convert_run(kern, c.type, in.data() + 256 * k, 256, c.scale, c.target, out.data(), small);
      CHECK(small.overflow == big.overflow);
      CHECK(small.underflow == big.underflow);
      CHECK(small.nan == big.nan);
      // runs of 37 (vector body plus scalar tail) count the same
      for (size_t k = 0; k < in.size(); k += 37)
        fp8::convert_run(kern, c.type, in.data() + k, std::min<size_t>(37, in.size() - k), c.scale,
                         c.target, out.data(), odd);
      CHECK(odd.overflow == big.overflow);
      CHECK(odd.underflow == big.underflow);
      CHECK(odd.nan == big.nan);
      if (std::fabs(c.scale) > 100 || std::fabs(c.scale) < 1e-5f) CHECK(big.overflow + big.underflow > 0);  // not vacuous
    }
  }
}

TEST_CASE("every kernel gives the scalar kernel's bits and loss on random data", "[fp8][kernel]") {
  // Random codes and scales (finite, subnormal, huge, zero, inf, NaN), odd
  // lengths and unaligned starts of both buffers; the scalar kernel is the
  // reference, itself checked against the oracle above.
  std::mt19937_64 rng(20261130);
  const auto kernels = fp8::available_kernels();
  INFO("kernels on this CPU: " << kernels.size());
  REQUIRE(kernels.front() == fp8::Kernel::Scalar);
  const float special[] = {0.0f, -0.0f, oracle::inf(), oracle::qnan(), p2(-149), p2(-126), 3e38f, 146.25f};
  long compared = 0, bad = 0, bad_loss = 0;
  std::string first;
  for (int trial = 0; trial < 400; ++trial) {
    const Dtype d = trial % 2 ? Dtype::F8_E5M2 : Dtype::F8_E4M3;
    const Target t = trial % 3 == 0 ? Target::BF16 : trial % 3 == 1 ? Target::F16 : Target::F32;
    const size_t tb = fp8::target_bytes(t);
    const size_t n = size_t(rng() % 3000) | 1;  // odd
    const size_t in_off = rng() % 16, out_off = rng() % 16;
    float scale;
    if (trial % 8 == 7) scale = special[rng() % std::size(special)];
    else scale = std::bit_cast<float>(uint32_t(rng()) & 0xBFFFFFFFu);  // any finite-ish exponent and sign
    std::vector<uint8_t> in(in_off + n);
    for (auto& b : in) b = uint8_t(rng());
    std::vector<uint8_t> want(out_off + n * tb), got(out_off + n * tb);
    fp8::Loss want_loss, got_loss;
    fp8::convert_run(fp8::Kernel::Scalar, d, in.data() + in_off, n, scale, t, want.data() + out_off, want_loss);
    for (fp8::Kernel k : kernels) {
      std::fill(got.begin(), got.end(), uint8_t(0));
      got_loss = {};
      fp8::convert_run(k, d, in.data() + in_off, n, scale, t, got.data() + out_off, got_loss);
      ++compared;
      if (got != want) {
        if (bad++ == 0)
          first = std::string(fp8::kernel_name(k)) + " " + std::string(st::dtype_name(d)) + " -> " +
                  tname(t) + " scale " + hex(oracle::bits(scale)) + " n=" + std::to_string(n);
      }
      bad_loss += got_loss.overflow != want_loss.overflow || got_loss.underflow != want_loss.underflow ||
                  got_loss.nan != want_loss.nan;
    }
  }
  INFO(first);
  CHECK(compared >= 400);
  CHECK(bad == 0);
  CHECK(bad_loss == 0);
}

TEST_CASE("loss counts of long runs equal those of short runs", "[fp8][loss]") {
  // A long run takes the table path and counts lossy codes in bulk (with
  // counters flushed every 255 rows); runs of 100 take the per-element path.
  std::mt19937 rng(7);
  std::vector<uint8_t> in(70001);
  for (auto& b : in) b = uint8_t(rng());
  std::vector<uint8_t> out(in.size() * 4);
  for (Dtype d : {Dtype::F8_E4M3, Dtype::F8_E5M2, Dtype::F8_E4M3FNUZ})
    for (float scale : {1.0f, 1e-6f, 1e35f, 0.0f})
      for (fp8::Kernel k : fp8::available_kernels()) {
        INFO(st::dtype_name(d) << " scale " << scale << " kernel " << fp8::kernel_name(k));
        fp8::Loss whole, pieces;
        fp8::convert_run(k, d, in.data(), in.size(), scale, Target::F16, out.data(), whole);
        for (size_t i = 0; i < in.size(); i += 100)
          fp8::convert_run(fp8::Kernel::Scalar, d, in.data() + i, std::min<size_t>(100, in.size() - i),
                           scale, Target::F16, out.data(), pieces);
        CHECK(whole.nan > 0);
        CHECK(whole.nan == pieces.nan);
        CHECK(whole.overflow == pieces.overflow);
        CHECK(whole.underflow == pieces.underflow);
      }
}

// ------------------------------------------------------------ nibble tables

namespace {

// The 256 results of one scale, from the oracle.
std::vector<uint32_t> oracle_results(Dtype d, float scale, Target t) {
  std::vector<uint32_t> r(256);
  const auto lut = oracle::fp8_table(d);
  for (int c = 0; c < 256; ++c) {
    const auto b = expect_bytes(lut[size_t(c)], scale, t);
    for (size_t k = 0; k < b.size(); ++k) r[size_t(c)] |= uint32_t(b[k]) << (8 * k);
  }
  return r;
}

}  // namespace

TEST_CASE("nibble tables are made for ordinary scales and refused for any table they cannot reproduce", "[fp8][kernel]") {
  namespace simd = st::fp8::simd;
  // Scales of real checkpoints: every BF16 result is normal or zero, so the
  // table splits into nibble tables (the AVX2 kernel then looks them up).
  const float scales[] = {1.0f, 0.01f, -0.37f, 7.0f / 3.0f, p2(-20), 1000.0f, 0.0f};
  for (Dtype d : {Dtype::F8_E4M3, Dtype::F8_E5M2}) {
    const bool e5m2 = d == Dtype::F8_E5M2;
    for (float scale : scales) {
      INFO(st::dtype_name(d) << " x " << scale);
      auto table = oracle_results(d, scale, Target::BF16);
      simd::NibbleTable nt;
      REQUIRE(simd::make_nibble_table(d, table.data(), nt));
      for (int c = 0; c < 256; ++c) CHECK(simd::nibble_result(e5m2, nt, uint8_t(c)) == table[size_t(c)]);
      // One result changed: a special code's is its own entry, so the
      // change is reproduced; any other is no longer a sum of nibble
      // entries (nor, for E4M3's NaN codes, equal to the other), and the
      // table is refused.
      long wrong = 0;
      for (int c = 0; c < 256; ++c) {
        auto changed = table;
        changed[size_t(c)] ^= 1u << (c % 16);
        const bool made = simd::make_nibble_table(d, changed.data(), nt);
        if (simd::is_special(e5m2, uint8_t(c))) wrong += !made || simd::nibble_result(e5m2, nt, uint8_t(c)) != changed[size_t(c)];
        else wrong += made;
      }
      CHECK(wrong == 0);
    }
  }
  // F16 results that are subnormal (a small scale) or infinite (a large
  // one) do not split: those tables go to the gather.
  simd::NibbleTable nt;
  CHECK_FALSE(simd::make_nibble_table(Dtype::F8_E4M3, oracle_results(Dtype::F8_E4M3, 1e-6f, Target::F16).data(), nt));
  CHECK_FALSE(simd::make_nibble_table(Dtype::F8_E4M3, oracle_results(Dtype::F8_E4M3, 300.0f, Target::F16).data(), nt));
  CHECK_FALSE(simd::make_nibble_table(Dtype::F8_E4M3FNUZ, oracle_results(Dtype::F8_E4M3FNUZ, 1.0f, Target::BF16).data(), nt));
}

namespace {

// The nibble kernel of vector kernel k (AVX2 or NEON), and how many codes
// it converts a round.
size_t run_nibbles(fp8::Kernel k, Dtype d, const st::fp8::simd::NibbleTable& nt, const uint8_t* in, size_t n,
                   uint8_t* out, uint64_t& nans) {
  return k == fp8::Kernel::Avx2 ? st::fp8::simd::nibble_avx2(d, nt, in, n, out, nans)
                                : st::fp8::simd::nibble_neon(d, nt, in, n, out, nans);
}
size_t nibble_width(fp8::Kernel k) { return k == fp8::Kernel::Avx2 ? 32 : 16; }

}  // namespace

TEST_CASE("the nibble kernels compute nibble_result for every code, and count NaN codes", "[fp8][kernel]") {
  namespace simd = st::fp8::simd;
  std::mt19937_64 rng(20261201);
  long kernels = 0;
  for (fp8::Kernel k : fp8::available_kernels()) {
    if (k == fp8::Kernel::Scalar) continue;
    ++kernels;
    const size_t width = nibble_width(k);
    for (int trial = 0; trial < 40; ++trial) {
      const Dtype d = trial % 2 ? Dtype::F8_E5M2 : Dtype::F8_E4M3;
      const bool e5m2 = d == Dtype::F8_E5M2;
      simd::NibbleTable nt;  // arbitrary entries: the kernel must not depend on what they are
      for (auto* t : {nt.lo, nt.hi, nt.special})
        for (int j = 0; j < 16; ++j) t[j] = uint16_t(rng());
      nt.nan = uint16_t(rng());
      const size_t n = 256 * 3 + size_t(rng() % 200), in_off = rng() % 32, out_off = rng() % 32;
      std::vector<uint8_t> in(in_off + n);
      for (size_t i = 0; i < n; ++i) in[in_off + i] = uint8_t(i < 768 ? (i * 97 + size_t(trial)) & 0xFF : rng());
      std::vector<uint8_t> out(out_off + 2 * n, 0xAB);
      uint64_t nans = 7;  // added to, not set
      const size_t done = run_nibbles(k, d, nt, in.data() + in_off, n, out.data() + out_off, nans);
      INFO(fp8::kernel_name(k) << " " << st::dtype_name(d) << " trial " << trial << " n=" << n);
      CHECK(done > n - width);
      CHECK(done % width == 0);
      long bad = 0;
      uint64_t want_nans = 7;
      for (size_t i = 0; i < done; ++i) {
        const uint8_t c = in[in_off + i];
        const uint16_t got = uint16_t(out[out_off + 2 * i] | out[out_off + 2 * i + 1] << 8);
        bad += got != simd::nibble_result(e5m2, nt, c);
        want_nans += simd::is_nan_code(e5m2, c);
      }
      CHECK(bad == 0);
      CHECK(nans == want_nans);
      long clobbered = 0;
      for (size_t i = 0; i < out_off; ++i) clobbered += out[i] != 0xAB;
      for (size_t i = out_off + 2 * done; i < out.size(); ++i) clobbered += out[i] != 0xAB;
      CHECK(clobbered == 0);
    }
    // Long runs of NaN codes only: the counts pass through the kernels'
    // accumulators (NEON's byte counters are added up every 255 rounds).
    for (Dtype d : {Dtype::F8_E4M3, Dtype::F8_E5M2}) {
      const bool e5m2 = d == Dtype::F8_E5M2;
      const uint8_t nan_codes[] = {0x7F, 0xFF, 0x7D, 0x7E, 0xFD, 0xFE};
      const size_t n = 16 * 255 * 3 + 37;
      std::vector<uint8_t> in(n);
      for (size_t i = 0; i < n; ++i) in[i] = e5m2 ? nan_codes[i % 6] : nan_codes[i % 2];
      std::vector<uint8_t> out(2 * n);
      simd::NibbleTable nt{};
      uint64_t nans = 0;
      const size_t done = run_nibbles(k, d, nt, in.data(), n, out.data(), nans);
      INFO(fp8::kernel_name(k) << " " << st::dtype_name(d));
      CHECK(done == n / width * width);
      CHECK(nans == done);
    }
  }
#if defined(__aarch64__)
  CHECK(kernels == 1);  // NEON is part of every aarch64 CPU
#endif
  if (kernels == 0) SUCCEED("no vector kernel on this CPU: nothing to check");
}
