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

bool neon_supported();  // aarch64 (little-endian): always
size_t convert_neon(Dtype fp8, const uint8_t* in, size_t n, float scale, Target t, uint8_t* out,
                    Loss& loss);

}  // namespace st::fp8::simd
