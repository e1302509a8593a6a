// Independent reference numerics for the unit tests, written from the
// definitions in fp8-conventions.md §1 and §11 (not from common/*.cpp):
//  - FP8 decoding from the sign/exponent/mantissa fields with std::ldexp;
//  - a 16-bit rounding oracle that decodes every code of F16/BF16 and picks
//    the nearest one to an f32, ties to the even code, with infinity as the
//    code after the largest finite value (IEEE round-to-nearest-even).
#pragma once

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "dtype.hpp"

namespace oracle {

inline uint32_t bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
inline float from_bits(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline float qnan() { return std::numeric_limits<float>::quiet_NaN(); }
inline float inf() { return std::numeric_limits<float>::infinity(); }

// ---- FP8 --------------------------------------------------------------

enum class Special { FN, IEEE, FNUZ, E8M0 };
struct Fp8Format {
  int ebits, mbits, bias;
  Special special;
};

inline Fp8Format fp8_format(st::Dtype d) {
  switch (d) {
    case st::Dtype::F8_E4M3: return {4, 3, 7, Special::FN};
    case st::Dtype::F8_E5M2: return {5, 2, 15, Special::IEEE};
    case st::Dtype::F8_E4M3FNUZ: return {4, 3, 8, Special::FNUZ};
    case st::Dtype::F8_E5M2FNUZ: return {5, 2, 16, Special::FNUZ};
    default: return {8, 0, 127, Special::E8M0};
  }
}

// Value of one code; NaN codes give a quiet NaN.
inline float fp8_decode(Fp8Format f, uint8_t c) {
  if (f.special == Special::E8M0) {
    if (c == 0xFF) return qnan();
    return static_cast<float>(std::ldexp(1.0, int(c) - 127));
  }
  const int s = c >> 7;
  const int e = (c >> f.mbits) & ((1 << f.ebits) - 1);
  const int m = c & ((1 << f.mbits) - 1);
  const int emax = (1 << f.ebits) - 1;
  const int mmax = (1 << f.mbits) - 1;
  switch (f.special) {
    case Special::FN:
      if (e == emax && m == mmax) return qnan();
      break;
    case Special::IEEE:
      if (e == emax) return m == 0 ? (s ? -inf() : inf()) : qnan();
      break;
    case Special::FNUZ:
      if (c == 0x80) return qnan();
      break;
    case Special::E8M0: break;
  }
  double mag = e == 0 ? std::ldexp(double(m), 1 - f.bias - f.mbits)
                      : std::ldexp(double((1 << f.mbits) + m), e - f.bias - f.mbits);
  return static_cast<float>(s ? -mag : mag);
}

inline std::array<float, 256> fp8_table(st::Dtype d) {
  std::array<float, 256> t{};
  const Fp8Format f = fp8_format(d);
  for (int c = 0; c < 256; ++c) t[size_t(c)] = fp8_decode(f, uint8_t(c));
  return t;
}

// ---- 16-bit floats ----------------------------------------------------

struct Half {
  int ebits, mbits, bias;
  uint16_t canonical_nan;
  std::vector<double> value;  // all 65536 codes decoded (NaN codes: NaN)

  Half(int e, int m, int b, uint16_t nan) : ebits(e), mbits(m), bias(b), canonical_nan(nan) {
    value.resize(65536);
    for (uint32_t h = 0; h < 65536; ++h) value[h] = decode(uint16_t(h));
  }

  uint16_t inf_code() const { return uint16_t(((1u << ebits) - 1) << mbits); }

  // From the fields: subnormal M*2^(1-bias-m), normal (2^m+M)*2^(E-bias-m).
  double decode(uint16_t h) const {
    const int s = h >> 15;
    const int e = (h >> mbits) & ((1 << ebits) - 1);
    const int m = h & ((1 << mbits) - 1);
    double mag;
    if (e == (1 << ebits) - 1) {
      mag = m == 0 ? std::numeric_limits<double>::infinity()
                   : std::numeric_limits<double>::quiet_NaN();
    } else if (e == 0) {
      mag = std::ldexp(double(m), 1 - bias - mbits);
    } else {
      mag = std::ldexp(double((1 << mbits) + m), e - bias - mbits);
    }
    return s ? -mag : mag;
  }

  // Magnitude of positive code c in [0, inf_code]; inf_code stands at
  // 2^(emax+1-bias), where the next binade would start (IEEE overflow rule).
  double mag(uint16_t c) const {
    if (c == inf_code()) return std::ldexp(1.0, ((1 << ebits) - 1) - bias);
    return value[c];
  }

  // Nearest code to f, ties to even; NaN -> canonical NaN.
  uint16_t round(float f) const {
    if (std::isnan(f)) return canonical_nan;
    const uint16_t sign = std::signbit(f) ? 0x8000 : 0;
    const double a = std::fabs(double(f));
    const uint16_t top = inf_code();
    if (a >= mag(top)) return uint16_t(sign | top);
    // Largest code lo with mag(lo) <= a (codes are monotonic in magnitude).
    uint32_t lo = 0, hi = top;  // mag(lo) <= a < mag(hi)
    while (hi - lo > 1) {
      uint32_t mid = (lo + hi) / 2;
      if (mag(uint16_t(mid)) <= a) lo = mid; else hi = mid;
    }
    const double vlo = mag(uint16_t(lo)), vhi = mag(uint16_t(hi));
    uint32_t code;
    if (a == vlo) {
      code = lo;
    } else {
      const double midpoint = vlo + (vhi - vlo) / 2;  // exact in double
      if (a < midpoint) code = lo;
      else if (a > midpoint) code = hi;
      else code = (lo & 1) ? hi : lo;
    }
    return uint16_t(sign | code);
  }
};

inline const Half& f16() {
  static const Half h(5, 10, 15, 0x7E00);
  return h;
}
inline const Half& bf16() {
  static const Half h(8, 7, 127, 0x7FC0);
  return h;
}

// f32 product as the reference path computes it: one f32 multiply, correctly
// rounded (the double product of two 24-bit significands is exact).
inline float mul_f32(float a, float b) { return static_cast<float>(double(a) * double(b)); }

inline uint32_t canonical_f32_bits(float f) { return std::isnan(f) ? 0x7FC00000u : bits(f); }

}  // namespace oracle
