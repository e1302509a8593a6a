// Vector kernels behind fp8::convert_run (internal to common/). convert_*
// converts a prefix of a run of F8_E4M3 or F8_E5M2 codes, adds what was lost to
// `loss` exactly as the scalar path counts it, and returns how many elements
// it did; convert_run finishes the tail with the scalar path. On other
// architectures the functions exist and do nothing.
#pragma once

#include <cstddef>
#include <cstdint>
#include <type_traits>

#include "fp8.hpp"

namespace st::fp8::simd {

// Calls run(E5M2, TARGET) with both as compile-time constants
// (std::bool_constant, std::integral_constant<Target, ...>) for the FP8 types
// the vector kernels handle; 0 (nothing done) for any other type.
template <typename Run>
size_t by_format_and_target(Dtype fp8, Target t, Run&& run) {
  auto for_target = [&](auto e5m2) -> size_t {
    switch (t) {
      case Target::BF16: return run(e5m2, std::integral_constant<Target, Target::BF16>{});
      case Target::F16: return run(e5m2, std::integral_constant<Target, Target::F16>{});
      case Target::F32: return run(e5m2, std::integral_constant<Target, Target::F32>{});
    }
    return 0;
  };
  if (fp8 == Dtype::F8_E4M3) return for_target(std::false_type{});
  if (fp8 == Dtype::F8_E5M2) return for_target(std::true_type{});
  return 0;
}

bool avx2_supported();  // x86-64 CPU with AVX2 and F16C (checked at run time)
size_t convert_avx2(Dtype fp8, const uint8_t* in, size_t n, float scale, Target t, uint8_t* out,
                    Loss& loss);
// The table path: out[i] = table[in[i]] (the low 16 bits for BF16/F16), for
// a prefix of the run; loss is counted by the caller from the codes.
size_t lookup_avx2(const uint32_t* table, const uint8_t* in, size_t n, Target t, uint8_t* out);

// A table of 256 16-bit results in the form byte shuffles (pshufb, tbl) can
// look up 32 at a time. Within a row of equal exponent, results differ by
// the mantissa's rounding; between rows, by exponent and sign: so for an
// ordinary code c the result is lo[c & 15] + hi[c >> 4] (mod 2^16). The
// codes that are not ordinary (the lowest exponent: zeros and subnormals;
// for E5M2 also the highest: inf and NaN) take special[special_index(c)],
// E4M3's two NaN codes take nan. Made only when that reproduces all 256
// results exactly (not when a scale makes some overflow, say); then the
// kernels are table lookups, as the gather is.
struct NibbleTable {
  uint16_t lo[16], hi[16], special[16], nan;
};
inline bool is_special(bool e5m2, uint8_t c) {
  const uint8_t e = e5m2 ? (c & 0x7C) : (c & 0x78);
  return e == 0 || (e5m2 && e == 0x7C);
}
inline unsigned special_index(bool e5m2, uint8_t c) {  // sign, and the exponent's top bit for E5M2, and mantissa
  return e5m2 ? ((c >> 4) & 0xC) | (c & 3) : ((c >> 4) & 8) | (c & 7);
}
inline bool is_e4m3_nan(bool e5m2, uint8_t c) { return !e5m2 && (c & 0x7F) == 0x7F; }
inline bool is_nan_code(bool e5m2, uint8_t c) { return e5m2 ? (c & 0x7C) == 0x7C && (c & 3) != 0 : (c & 0x7F) == 0x7F; }
inline uint16_t nibble_result(bool e5m2, const NibbleTable& nt, uint8_t c) {
  if (is_e4m3_nan(e5m2, c)) return nt.nan;
  if (is_special(e5m2, c)) return nt.special[special_index(e5m2, c)];
  return static_cast<uint16_t>(nt.lo[c & 15] + nt.hi[c >> 4]);
}
// Fills nt from the 256 results (their low 16 bits); false unless
// nibble_result() gives every one of them.
bool make_nibble_table(Dtype fp8, const uint32_t* table, NibbleTable& nt);
// out[i] = nibble_result(in[i]) for a prefix of the run (BF16 or F16); adds
// the number of NaN codes in that prefix to nan_codes (usually the only
// codes that lose something, so the caller need not count in a second pass).
size_t nibble_avx2(Dtype fp8, const NibbleTable& nt, const uint8_t* in, size_t n, uint8_t* out,
                   uint64_t& nan_codes);

bool neon_supported();  // aarch64 (little-endian): always
size_t convert_neon(Dtype fp8, const uint8_t* in, size_t n, float scale, Target t, uint8_t* out,
                    Loss& loss);
// nibble_avx2 with TBL.
size_t nibble_neon(Dtype fp8, const NibbleTable& nt, const uint8_t* in, size_t n, uint8_t* out,
                   uint64_t& nan_codes);

}  // namespace st::fp8::simd
