// NEON kernel for fp8::convert_run on aarch64 (Apple Silicon, ARM servers).
// NEON is part of every aarch64 CPU, so no run-time check. The steps mirror
// fp8_x86.cpp: exact decode, the same f32 multiply, round to nearest even
// (integer rounding for BF16, the FCVT instruction for F16), canonical NaN.
// This relies on the default FPCR: round to nearest, no flush to zero.
// (The same assumption as the scalar multiply.)
#include "fp8_simd.hpp"

#if defined(__aarch64__) && !defined(__ARM_BIG_ENDIAN)

#include <arm_neon.h>

namespace st::fp8::simd {

namespace {

// Exact f32 values of 4 codes, built as decode8 in fp8_x86.cpp does: bit
// moves and an integer re-bias for normal codes, int -> f32 times a power of
// two for subnormal ones.
template <bool E5M2>
inline float32x4_t decode4(uint32x4_t c) {
  constexpr int man_bits = E5M2 ? 2 : 3;
  constexpr int bias = E5M2 ? 15 : 7;
  const uint32x4_t mag = vandq_u32(c, vdupq_n_u32(0x7F));
  const uint32x4_t sign = vshlq_n_u32(vandq_u32(c, vdupq_n_u32(0x80)), 24);
  const uint32x4_t normal = vaddq_u32(vshlq_n_u32(mag, 23 - man_bits), vdupq_n_u32((127 - bias) << 23));
  const float32x4_t sub = vmulq_f32(vcvtq_f32_u32(mag), vdupq_n_f32(E5M2 ? 0x1p-16f : 0x1p-9f));
  const uint32x4_t is_sub = vcltq_u32(mag, vdupq_n_u32(1u << man_bits));
  uint32x4_t f = vbslq_u32(is_sub, vreinterpretq_u32_f32(sub), normal);
  if constexpr (!E5M2) {
    f = vbslq_u32(vceqq_u32(mag, vdupq_n_u32(0x7F)), vdupq_n_u32(0x7FC00000), f);
  } else {
    const uint32x4_t special = vcgtq_u32(mag, vdupq_n_u32(0x7B));
    const uint32x4_t inf_nan =
        vorrq_u32(vdupq_n_u32(0x7F800000), vshlq_n_u32(vandq_u32(mag, vdupq_n_u32(3)), 21));
    f = vbslq_u32(special, inf_nan, f);
  }
  return vreinterpretq_f32_u32(vorrq_u32(f, sign));
}

template <Target T>
inline uint16x4_t narrow4(float32x4_t p) {
  if constexpr (T == Target::BF16) {
    const uint32x4_t b = vreinterpretq_u32_f32(p);
    const uint32x4_t lsb = vandq_u32(vshrq_n_u32(b, 16), vdupq_n_u32(1));
    const uint32x4_t r = vshrq_n_u32(vaddq_u32(b, vaddq_u32(lsb, vdupq_n_u32(0x7FFF))), 16);
    const uint32x4_t ordered = vceqq_f32(p, p);  // false only for NaN
    return vmovn_u32(vbslq_u32(ordered, r, vdupq_n_u32(0x7FC0)));
  } else {
    const uint16x4_t h = vreinterpret_u16_f16(vcvt_f16_f32(p));
    const uint16x4_t nan = vcgt_u16(vand_u16(h, vdup_n_u16(0x7FFF)), vdup_n_u16(0x7C00));
    return vbsl_u16(nan, vdup_n_u16(0x7E00), h);
  }
}

// Loss of 8 half-width results (same rules as fp8_x86.cpp count16).
inline void count8(uint16x8_t h, uint16x8_t in_zero, uint16x8_t in_inf, uint16_t inf_bits, Loss& loss) {
  const uint16x8_t abs = vandq_u16(h, vdupq_n_u16(0x7FFF));
  const uint16x8_t inf = vdupq_n_u16(inf_bits);
  const uint16x8_t nan = vcgtq_u16(abs, inf);
  const uint16x8_t over = vbicq_u16(vceqq_u16(abs, inf), in_inf);
  const uint16x8_t under = vbicq_u16(vceqq_u16(abs, vdupq_n_u16(0)), in_zero);
  if (vmaxvq_u16(vorrq_u16(nan, vorrq_u16(over, under))) == 0) return;
  loss.nan += vaddvq_u16(vshrq_n_u16(nan, 15));
  loss.overflow += vaddvq_u16(vshrq_n_u16(over, 15));
  loss.underflow += vaddvq_u16(vshrq_n_u16(under, 15));
}

// 4 products -> F32 bits with the canonical NaN, and their loss.
inline uint32x4_t f32x4(float32x4_t p, uint32x4_t code, Loss& loss, bool e5m2) {
  const uint32x4_t b = vbslq_u32(vceqq_f32(p, p), vreinterpretq_u32_f32(p), vdupq_n_u32(0x7FC00000));
  const uint32x4_t mag = vandq_u32(code, vdupq_n_u32(0x7F));
  const uint32x4_t in_zero = vceqq_u32(mag, vdupq_n_u32(0));
  const uint32x4_t in_inf = e5m2 ? vceqq_u32(mag, vdupq_n_u32(0x7C)) : vdupq_n_u32(0);
  const uint32x4_t abs = vandq_u32(b, vdupq_n_u32(0x7FFFFFFF));
  const uint32x4_t inf = vdupq_n_u32(0x7F800000);
  const uint32x4_t nan = vcgtq_u32(abs, inf);
  const uint32x4_t over = vbicq_u32(vceqq_u32(abs, inf), in_inf);
  const uint32x4_t under = vbicq_u32(vceqq_u32(abs, vdupq_n_u32(0)), in_zero);
  if (vmaxvq_u32(vorrq_u32(nan, vorrq_u32(over, under))) != 0) {
    loss.nan += vaddvq_u32(vshrq_n_u32(nan, 31));
    loss.overflow += vaddvq_u32(vshrq_n_u32(over, 31));
    loss.underflow += vaddvq_u32(vshrq_n_u32(under, 31));
  }
  return b;
}

template <bool E5M2, Target T>
size_t run(const uint8_t* in, size_t n, float scale, uint8_t* out, Loss& loss) {
  size_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const uint8x16_t x = vld1q_u8(in + i);
    const uint16x8_t w[2] = {vmovl_u8(vget_low_u8(x)), vmovl_u8(vget_high_u8(x))};
    const uint32x4_t c[4] = {vmovl_u16(vget_low_u16(w[0])), vmovl_u16(vget_high_u16(w[0])),
                             vmovl_u16(vget_low_u16(w[1])), vmovl_u16(vget_high_u16(w[1]))};
    float32x4_t p[4];
    for (int k = 0; k < 4; ++k) p[k] = vmulq_n_f32(decode4<E5M2>(c[k]), scale);
    if constexpr (T == Target::F32) {
      for (int k = 0; k < 4; ++k)
        vst1q_u8(out + 4 * i + 16 * k, vreinterpretq_u8_u32(f32x4(p[k], c[k], loss, E5M2)));
    } else {
      for (int k = 0; k < 2; ++k) {
        const uint16x8_t h = vcombine_u16(narrow4<T>(p[2 * k]), narrow4<T>(p[2 * k + 1]));
        const uint16x8_t mag = vandq_u16(w[k], vdupq_n_u16(0x7F));
        const uint16x8_t in_zero = vceqq_u16(mag, vdupq_n_u16(0));
        const uint16x8_t in_inf = E5M2 ? vceqq_u16(mag, vdupq_n_u16(0x7C)) : vdupq_n_u16(0);
        count8(h, in_zero, in_inf, T == Target::BF16 ? 0x7F80 : 0x7C00, loss);
        vst1q_u8(out + 2 * i + 16 * k, vreinterpretq_u8_u16(h));
      }
    }
  }
  return i;
}

// One byte of 16 table entries, for TBL.
inline uint8x16_t plane(const uint16_t* t, int shift) {
  uint8_t b[16];
  for (int i = 0; i < 16; ++i) b[i] = static_cast<uint8_t>(t[i] >> shift);
  return vld1q_u8(b);
}

// 16 codes at a time by TBL lookups from a NibbleTable, as nibbles() in
// fp8_x86.cpp does with pshufb: each 16-bit result is looked up as its low
// and its high byte.
template <bool E5M2>
size_t nibbles(const NibbleTable& nt, const uint8_t* in, size_t n, uint8_t* out, uint64_t& nan_codes) {
  const uint8x16_t lo_l = plane(nt.lo, 0), lo_h = plane(nt.lo, 8), hi_l = plane(nt.hi, 0), hi_h = plane(nt.hi, 8);
  const uint8x16_t sp_l = plane(nt.special, 0), sp_h = plane(nt.special, 8);
  const uint8x16_t nan_l = vdupq_n_u8(static_cast<uint8_t>(nt.nan)), nan_h = vdupq_n_u8(static_cast<uint8_t>(nt.nan >> 8));
  uint8x16_t nans = vdupq_n_u8(0);  // byte counters, added up at most every 255 rounds
  unsigned rounds = 0;
  size_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const uint8x16_t x = vld1q_u8(in + i);
    const uint8x16_t lo = vandq_u8(x, vdupq_n_u8(0x0F));
    const uint8x16_t hi = vshrq_n_u8(x, 4);
    uint8x16_t al = vqtbl1q_u8(lo_l, lo), ah = vqtbl1q_u8(lo_h, lo);
    uint8x16_t bl = vqtbl1q_u8(hi_l, hi), bh = vqtbl1q_u8(hi_h, hi);
    // the codes that are not ordinary (is_special, special_index in fp8_simd.hpp)
    uint8x16_t special, index, nan;
    if constexpr (E5M2) {
      const uint8x16_t e = vandq_u8(x, vdupq_n_u8(0x7C));
      const uint8x16_t top = vceqq_u8(e, vdupq_n_u8(0x7C));
      special = vorrq_u8(vceqzq_u8(e), top);
      index = vorrq_u8(vandq_u8(hi, vdupq_n_u8(0x0C)), vandq_u8(x, vdupq_n_u8(3)));
      nan = vbicq_u8(top, vceqzq_u8(vandq_u8(x, vdupq_n_u8(3))));
    } else {
      special = vceqzq_u8(vandq_u8(x, vdupq_n_u8(0x78)));
      index = vorrq_u8(vandq_u8(hi, vdupq_n_u8(8)), vandq_u8(x, vdupq_n_u8(7)));
      nan = vceqq_u8(vandq_u8(x, vdupq_n_u8(0x7F)), vdupq_n_u8(0x7F));
    }
    al = vbslq_u8(special, vqtbl1q_u8(sp_l, index), al);
    ah = vbslq_u8(special, vqtbl1q_u8(sp_h, index), ah);
    uint8x16_t whole = special;  // results that are all in a, none in b
    if constexpr (!E5M2) {
      al = vbslq_u8(nan, nan_l, al);
      ah = vbslq_u8(nan, nan_h, ah);
      whole = vorrq_u8(whole, nan);
    }
    bl = vbicq_u8(bl, whole);
    bh = vbicq_u8(bh, whole);
    const uint16x8_t r0 = vaddq_u16(vreinterpretq_u16_u8(vzip1q_u8(al, ah)), vreinterpretq_u16_u8(vzip1q_u8(bl, bh)));
    const uint16x8_t r1 = vaddq_u16(vreinterpretq_u16_u8(vzip2q_u8(al, ah)), vreinterpretq_u16_u8(vzip2q_u8(bl, bh)));
    vst1q_u8(out + 2 * i, vreinterpretq_u8_u16(r0));
    vst1q_u8(out + 2 * i + 16, vreinterpretq_u8_u16(r1));
    nans = vsubq_u8(nans, nan);  // a mask byte is 0xFF: minus one
    if (++rounds == 255) {
      nan_codes += vaddlvq_u8(nans);
      nans = vdupq_n_u8(0);
      rounds = 0;
    }
  }
  nan_codes += vaddlvq_u8(nans);
  return i;
}

}  // namespace

size_t nibble_neon(Dtype fp8, const NibbleTable& nt, const uint8_t* in, size_t n, uint8_t* out,
                   uint64_t& nan_codes) {
  if (fp8 == Dtype::F8_E4M3) return nibbles<false>(nt, in, n, out, nan_codes);
  if (fp8 == Dtype::F8_E5M2) return nibbles<true>(nt, in, n, out, nan_codes);
  return 0;
}

bool neon_supported() { return true; }

size_t convert_neon(Dtype fp8, const uint8_t* in, size_t n, float scale, Target t, uint8_t* out,
                    Loss& loss) {
  return by_format_and_target(fp8, t, [&](auto e5m2, auto target) {
    return run<decltype(e5m2)::value, decltype(target)::value>(in, n, scale, out, loss);
  });
}

}  // namespace st::fp8::simd

#else

namespace st::fp8::simd {
bool neon_supported() { return false; }
size_t convert_neon(Dtype, const uint8_t*, size_t, float, Target, uint8_t*, Loss&) { return 0; }
size_t nibble_neon(Dtype, const NibbleTable&, const uint8_t*, size_t, uint8_t*, uint64_t&) { return 0; }
}  // namespace st::fp8::simd

#endif
