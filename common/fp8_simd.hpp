// Vector kernels behind fp8::convert_run (internal to common/). convert_*
// converts a prefix of a run of F8_E4M3 or F8_E5M2 codes, adds what was lost to
// `loss` exactly as the scalar path counts it, and returns how many elements
// it did; convert_run finishes the tail with the scalar path. On other
// architectures the functions exist and do nothing.
#pragma once

#include <cstddef>
#include <cstdint>

#include "fp8.hpp"

namespace st::fp8::simd {

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
