// AVX2 + F16C kernel for fp8::convert_run. Compiled for every x86-64 build
// with per-function target attributes and chosen at run time, so one binary
// still runs on CPUs without AVX2. Every step is an exact operation or the
// same IEEE operation as the scalar path (one f32 multiply, then round to
// nearest even), so the bits are identical; tests/unit/test_fp8.cpp checks.
#include "fp8_simd.hpp"

#if defined(__x86_64__)

#include <cpuid.h>
#include <immintrin.h>

#include <bit>

#define ST_AVX2 __attribute__((target("avx2,f16c,popcnt")))

namespace st::fp8::simd {

namespace {

// Exact f32 values of 8 codes, built without arithmetic on subnormals
// (which costs a microcode assist per instruction on many x86 CPUs): a
// normal code becomes an f32 by moving its exponent and mantissa bits into
// place and re-biasing the exponent with an integer add; a subnormal code
// m * 2^(1-bias-M) is the integer m converted to f32 and multiplied by a
// power of two, exact and normal.
template <bool E5M2>
ST_AVX2 inline __m256 decode8(__m256i c) {
  constexpr int man_bits = E5M2 ? 2 : 3;
  constexpr int bias = E5M2 ? 15 : 7;
  const __m256i mag = _mm256_and_si256(c, _mm256_set1_epi32(0x7F));
  const __m256 sign = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_and_si256(c, _mm256_set1_epi32(0x80)), 24));
  const __m256i normal = _mm256_add_epi32(_mm256_slli_epi32(mag, 23 - man_bits), _mm256_set1_epi32((127 - bias) << 23));
  const __m256 sub = _mm256_mul_ps(_mm256_cvtepi32_ps(mag), _mm256_set1_ps(E5M2 ? 0x1p-16f : 0x1p-9f));
  const __m256i is_sub = _mm256_cmpgt_epi32(_mm256_set1_epi32(1 << man_bits), mag);
  __m256 f = _mm256_blendv_ps(_mm256_castsi256_ps(normal), sub, _mm256_castsi256_ps(is_sub));
  if constexpr (!E5M2) {  // e4m3fn: no inf, S.1111.111 is NaN
    const __m256i nan = _mm256_cmpeq_epi32(mag, _mm256_set1_epi32(0x7F));
    f = _mm256_blendv_ps(f, _mm256_castsi256_ps(_mm256_set1_epi32(0x7FC00000)), _mm256_castsi256_ps(nan));
  } else {  // e5m2: exponent 11111 is inf (m = 0) or NaN, as in IEEE
    const __m256i special = _mm256_cmpgt_epi32(mag, _mm256_set1_epi32(0x7B));
    const __m256i inf_nan = _mm256_or_si256(_mm256_set1_epi32(0x7F800000),
                                            _mm256_slli_epi32(_mm256_and_si256(mag, _mm256_set1_epi32(3)), 21));
    f = _mm256_blendv_ps(f, _mm256_castsi256_ps(inf_nan), _mm256_castsi256_ps(special));
  }
  return _mm256_or_ps(f, sign);
}

// f32 -> BF16 bits (in the low half of each lane), round to nearest even;
// NaN becomes 0x7FC0 as in fp8::f32_to_bf16.
ST_AVX2 inline __m256i bf16x8(__m256 p) {
  const __m256i b = _mm256_castps_si256(p);
  const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(b, 16), _mm256_set1_epi32(1));
  const __m256i r = _mm256_srli_epi32(_mm256_add_epi32(b, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7FFF))), 16);
  const __m256 nan = _mm256_cmp_ps(p, p, _CMP_UNORD_Q);
  return _mm256_blendv_epi8(r, _mm256_set1_epi32(0x7FC0), _mm256_castps_si256(nan));
}

// 16 products -> 16 BF16 or F16 values in element order.
template <Target T>
ST_AVX2 inline __m256i narrow16(__m256 p0, __m256 p1) {
  if constexpr (T == Target::BF16) {
    // packus interleaves 128-bit lanes (a0-3 b0-3 a4-7 b4-7); the permute undoes it
    return _mm256_permute4x64_epi64(_mm256_packus_epi32(bf16x8(p0), bf16x8(p1)), 0xD8);
  } else {
    // F16C conversion with round-to-nearest-even from the immediate, not MXCSR
    const __m256i h = _mm256_set_m128i(_mm256_cvtps_ph(p1, _MM_FROUND_TO_NEAREST_INT),
                                       _mm256_cvtps_ph(p0, _MM_FROUND_TO_NEAREST_INT));
    const __m256i nan = _mm256_cmpgt_epi16(_mm256_and_si256(h, _mm256_set1_epi16(0x7FFF)),
                                           _mm256_set1_epi16(0x7C00));
    return _mm256_blendv_epi8(h, _mm256_set1_epi16(0x7E00), nan);
  }
}

int lanes(int byte_mask, int lane_bytes) {
  return std::popcount(static_cast<uint32_t>(byte_mask)) / lane_bytes;
}

// Loss of 16 half-width results: NaN; +-inf from a finite code (overflow);
// +-0 from a non-zero code (underflow). One test per vector; counting only
// when something was lost, which is rare.
ST_AVX2 inline void count16(__m256i h, __m256i in_zero, __m256i in_inf, short inf_bits, Loss& loss) {
  const __m256i abs = _mm256_and_si256(h, _mm256_set1_epi16(0x7FFF));
  const __m256i inf = _mm256_set1_epi16(inf_bits);
  const __m256i nan = _mm256_cmpgt_epi16(abs, inf);
  const __m256i over = _mm256_andnot_si256(in_inf, _mm256_cmpeq_epi16(abs, inf));
  const __m256i under = _mm256_andnot_si256(in_zero, _mm256_cmpeq_epi16(abs, _mm256_setzero_si256()));
  const __m256i any = _mm256_or_si256(nan, _mm256_or_si256(over, under));
  if (_mm256_testz_si256(any, any)) return;
  loss.nan += static_cast<uint64_t>(lanes(_mm256_movemask_epi8(nan), 2));
  loss.overflow += static_cast<uint64_t>(lanes(_mm256_movemask_epi8(over), 2));
  loss.underflow += static_cast<uint64_t>(lanes(_mm256_movemask_epi8(under), 2));
}

// 8 products -> F32 bits with the canonical NaN, and their loss.
ST_AVX2 inline __m256i f32x8(__m256 p, __m256i in_zero, __m256i in_inf, Loss& loss) {
  const __m256 unord = _mm256_cmp_ps(p, p, _CMP_UNORD_Q);
  const __m256i b = _mm256_blendv_epi8(_mm256_castps_si256(p), _mm256_set1_epi32(0x7FC00000), _mm256_castps_si256(unord));
  const __m256i abs = _mm256_and_si256(b, _mm256_set1_epi32(0x7FFFFFFF));
  const __m256i inf = _mm256_set1_epi32(0x7F800000);
  const __m256i nan = _mm256_cmpgt_epi32(abs, inf);
  const __m256i over = _mm256_andnot_si256(in_inf, _mm256_cmpeq_epi32(abs, inf));
  const __m256i under = _mm256_andnot_si256(in_zero, _mm256_cmpeq_epi32(abs, _mm256_setzero_si256()));
  const __m256i any = _mm256_or_si256(nan, _mm256_or_si256(over, under));
  if (!_mm256_testz_si256(any, any)) {
    loss.nan += static_cast<uint64_t>(lanes(_mm256_movemask_epi8(nan), 4));
    loss.overflow += static_cast<uint64_t>(lanes(_mm256_movemask_epi8(over), 4));
    loss.underflow += static_cast<uint64_t>(lanes(_mm256_movemask_epi8(under), 4));
  }
  return b;
}

template <bool E5M2, Target T>
ST_AVX2 size_t run(const uint8_t* in, size_t n, float scale, uint8_t* out, Loss& loss) {
  const __m256 s = _mm256_set1_ps(scale);
  size_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m128i x = _mm_loadu_si128(reinterpret_cast<const __m128i*>(in + i));
    const __m256 p0 = _mm256_mul_ps(decode8<E5M2>(_mm256_cvtepu8_epi32(x)), s);
    const __m256 p1 = _mm256_mul_ps(decode8<E5M2>(_mm256_cvtepu8_epi32(_mm_srli_si128(x, 8))), s);
    // which codes are +-0, and (e5m2) +-inf: those lose nothing by becoming 0 or inf
    const __m128i mag = _mm_and_si128(x, _mm_set1_epi8(0x7F));
    const __m128i in_zero = _mm_cmpeq_epi8(mag, _mm_setzero_si128());
    const __m128i in_inf = E5M2 ? _mm_cmpeq_epi8(mag, _mm_set1_epi8(0x7C)) : _mm_setzero_si128();
    if constexpr (T == Target::F32) {
      const __m256i b0 = f32x8(p0, _mm256_cvtepi8_epi32(in_zero), _mm256_cvtepi8_epi32(in_inf), loss);
      const __m256i b1 = f32x8(p1, _mm256_cvtepi8_epi32(_mm_srli_si128(in_zero, 8)),
                               _mm256_cvtepi8_epi32(_mm_srli_si128(in_inf, 8)), loss);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + 4 * i), b0);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + 4 * i + 32), b1);
    } else {
      const __m256i h = narrow16<T>(p0, p1);
      count16(h, _mm256_cvtepi8_epi16(in_zero), _mm256_cvtepi8_epi16(in_inf),
              T == Target::BF16 ? short{0x7F80} : short{0x7C00}, loss);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + 2 * i), h);
    }
  }
  return i;
}

// Long runs: one gather per 8 codes from the 256 results of this scale.
template <Target T>
ST_AVX2 size_t lookup(const uint32_t* table, const uint8_t* in, size_t n, uint8_t* out) {
  const int* t = reinterpret_cast<const int*>(table);
  size_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m128i x = _mm_loadu_si128(reinterpret_cast<const __m128i*>(in + i));
    const __m256i a = _mm256_i32gather_epi32(t, _mm256_cvtepu8_epi32(x), 4);
    const __m256i b = _mm256_i32gather_epi32(t, _mm256_cvtepu8_epi32(_mm_srli_si128(x, 8)), 4);
    if constexpr (T == Target::F32) {
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + 4 * i), a);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + 4 * i + 32), b);
    } else {
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + 2 * i),
                          _mm256_permute4x64_epi64(_mm256_packus_epi32(a, b), 0xD8));
    }
  }
  return i;
}

// 32 codes at a time by byte shuffles from a NibbleTable: each 16-bit
// result is looked up as its low and its high byte. The same results as
// the table (make_nibble_table checked every code), at a fraction of the
// gather's cost.
// One byte of 16 table entries, in both 128-bit lanes (pshufb looks up within a lane).
ST_AVX2 inline __m256i plane(const uint16_t* t, int shift) {
  alignas(16) uint8_t b[16];
  for (int i = 0; i < 16; ++i) b[i] = static_cast<uint8_t>(t[i] >> shift);
  return _mm256_broadcastsi128_si256(_mm_load_si128(reinterpret_cast<const __m128i*>(b)));
}

template <bool E5M2>
ST_AVX2 size_t nibbles(const NibbleTable& nt, const uint8_t* in, size_t n, uint8_t* out, uint64_t& nan_codes) {
  const __m256i lo_l = plane(nt.lo, 0), lo_h = plane(nt.lo, 8), hi_l = plane(nt.hi, 0), hi_h = plane(nt.hi, 8);
  const __m256i sp_l = plane(nt.special, 0), sp_h = plane(nt.special, 8);
  const __m256i nan_l = _mm256_set1_epi8(static_cast<char>(nt.nan & 0xFF));
  const __m256i nan_h = _mm256_set1_epi8(static_cast<char>(nt.nan >> 8));
  const __m256i nibble = _mm256_set1_epi8(0x0F);
  uint64_t nans = 0;
  size_t i = 0;
  for (; i + 32 <= n; i += 32) {
    const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(in + i));
    const __m256i lo = _mm256_and_si256(x, nibble);
    const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(x, 4), nibble);
    __m256i al = _mm256_shuffle_epi8(lo_l, lo), ah = _mm256_shuffle_epi8(lo_h, lo);
    __m256i bl = _mm256_shuffle_epi8(hi_l, hi), bh = _mm256_shuffle_epi8(hi_h, hi);
    // the codes that are not ordinary (is_special, special_index in fp8_simd.hpp)
    __m256i special, index;
    if constexpr (E5M2) {
      const __m256i e = _mm256_and_si256(x, _mm256_set1_epi8(0x7C));
      const __m256i top = _mm256_cmpeq_epi8(e, _mm256_set1_epi8(0x7C));
      special = _mm256_or_si256(_mm256_cmpeq_epi8(e, _mm256_setzero_si256()), top);
      index = _mm256_or_si256(_mm256_and_si256(hi, _mm256_set1_epi8(0x0C)), _mm256_and_si256(x, _mm256_set1_epi8(3)));
      const __m256i inf = _mm256_cmpeq_epi8(_mm256_and_si256(x, _mm256_set1_epi8(3)), _mm256_setzero_si256());
      nans += static_cast<unsigned>(std::popcount(static_cast<uint32_t>(_mm256_movemask_epi8(_mm256_andnot_si256(inf, top)))));
    } else {
      special = _mm256_cmpeq_epi8(_mm256_and_si256(x, _mm256_set1_epi8(0x78)), _mm256_setzero_si256());
      index = _mm256_or_si256(_mm256_and_si256(hi, _mm256_set1_epi8(8)), _mm256_and_si256(x, _mm256_set1_epi8(7)));
    }
    al = _mm256_blendv_epi8(al, _mm256_shuffle_epi8(sp_l, index), special);
    ah = _mm256_blendv_epi8(ah, _mm256_shuffle_epi8(sp_h, index), special);
    __m256i whole = special;  // results that are all in a, none in b
    if constexpr (!E5M2) {
      const __m256i nan = _mm256_cmpeq_epi8(_mm256_and_si256(x, _mm256_set1_epi8(0x7F)), _mm256_set1_epi8(0x7F));
      al = _mm256_blendv_epi8(al, nan_l, nan);
      ah = _mm256_blendv_epi8(ah, nan_h, nan);
      whole = _mm256_or_si256(whole, nan);
      nans += static_cast<unsigned>(std::popcount(static_cast<uint32_t>(_mm256_movemask_epi8(nan))));
    }
    bl = _mm256_andnot_si256(whole, bl);
    bh = _mm256_andnot_si256(whole, bh);
    // bytes to 16-bit sums; unpack works within 128-bit lanes, so r0 holds
    // elements 0-7 and 16-23, r1 8-15 and 24-31
    const __m256i r0 = _mm256_add_epi16(_mm256_unpacklo_epi8(al, ah), _mm256_unpacklo_epi8(bl, bh));
    const __m256i r1 = _mm256_add_epi16(_mm256_unpackhi_epi8(al, ah), _mm256_unpackhi_epi8(bl, bh));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + 2 * i), _mm256_permute2x128_si256(r0, r1, 0x20));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + 2 * i + 32), _mm256_permute2x128_si256(r0, r1, 0x31));
  }
  nan_codes += nans;
  return i;
}

}  // namespace

// CPUID says the CPU has AVX2 and F16C, and XGETBV that the OS saves the
// YMM registers. (clang 14's __builtin_cpu_supports does not know "f16c".)
bool avx2_supported() {
  static const bool ok = [] {
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return false;
    const bool f16c = c & (1u << 29), osxsave = c & (1u << 27), avx = c & (1u << 28), popcnt = c & (1u << 23);
    if (!(f16c && osxsave && avx && popcnt)) return false;
    unsigned xcr0_lo, xcr0_hi;
    __asm__("xgetbv" : "=a"(xcr0_lo), "=d"(xcr0_hi) : "c"(0));
    if ((xcr0_lo & 0x6u) != 0x6u) return false;  // XMM and YMM state enabled
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return false;
    return (b & (1u << 5)) != 0;  // AVX2
  }();
  return ok;
}

size_t convert_avx2(Dtype fp8, const uint8_t* in, size_t n, float scale, Target t, uint8_t* out,
                    Loss& loss) {
  return by_format_and_target(fp8, t, [&](auto e5m2, auto target) {
    return run<decltype(e5m2)::value, decltype(target)::value>(in, n, scale, out, loss);
  });
}

size_t lookup_avx2(const uint32_t* table, const uint8_t* in, size_t n, Target t, uint8_t* out) {
  switch (t) {
    case Target::BF16:
    case Target::F16: return lookup<Target::BF16>(table, in, n, out);  // same 16-bit packing
    case Target::F32: return lookup<Target::F32>(table, in, n, out);
  }
  return 0;
}

size_t nibble_avx2(Dtype fp8, const NibbleTable& nt, const uint8_t* in, size_t n, uint8_t* out,
                   uint64_t& nan_codes) {
  if (fp8 == Dtype::F8_E4M3) return nibbles<false>(nt, in, n, out, nan_codes);
  if (fp8 == Dtype::F8_E5M2) return nibbles<true>(nt, in, n, out, nan_codes);
  return 0;
}

}  // namespace st::fp8::simd

#else

namespace st::fp8::simd {
bool avx2_supported() { return false; }
size_t convert_avx2(Dtype, const uint8_t*, size_t, float, Target, uint8_t*, Loss&) { return 0; }
size_t lookup_avx2(const uint32_t*, const uint8_t*, size_t, Target, uint8_t*) { return 0; }
size_t nibble_avx2(Dtype, const NibbleTable&, const uint8_t*, size_t, uint8_t*, uint64_t&) { return 0; }
}  // namespace st::fp8::simd

#endif
