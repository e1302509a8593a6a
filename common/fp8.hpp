// FP8 numerics: exact decoding of the FP8 formats to f32, correctly rounded
// f32 -> BF16/F16 conversion, and the dequantisation kernel
//   out = round_to_target( f32(fp8) * f32(scale) )
// which is the reference path of DeepSeek, torchao, compressed-tensors and
// PyTorch: one f32 multiply, then one round-to-nearest-even to the target.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string_view>
#include <vector>

#include "dtype.hpp"

namespace st::fp8 {

// Output type of dequantisation.
enum class Target { BF16, F16, F32 };

std::optional<Target> target_from_name(std::string_view name);  // bf16, f16/fp16, f32/fp32
Dtype target_dtype(Target t);
size_t target_bytes(Target t);
std::string_view target_suffix(Target t);  // "bf16", "f16", "f32"

// 256-entry decode table of an 8-bit float type (F8_E4M3, F8_E5M2,
// F8_E4M3FNUZ, F8_E5M2FNUZ, F8_E8M0). Every finite code is exact in f32.
const std::array<float, 256>& decode_table(Dtype d);

// Round-to-nearest-even conversions. NaN becomes the canonical positive quiet
// NaN of the target (BF16 0x7FC0 as PyTorch does, F16 0x7E00), so output
// bits do not depend on the CPU's NaN propagation.
uint16_t f32_to_bf16(float f);
uint16_t f32_to_f16(float f);
float bf16_to_f32(uint16_t h);
float f16_to_f32(uint16_t h);
float canonical_f32(float f);  // NaN -> 0x7FC00000, anything else unchanged

// Decode a scale tensor's bytes (F32, BF16, F16 or F8_E8M0) to f32.
// Returns false for a dtype that cannot hold a scale.
bool is_scale_dtype(Dtype d);
std::vector<float> decode_scales(Dtype d, std::span<const uint8_t> bytes);

// What a conversion lost: finite inputs that became +-inf (overflow),
// non-zero inputs that became +-0 (underflow), and NaN values (NaN inputs,
// or NaN results of a NaN or infinite scale).
struct Loss {
  uint64_t overflow = 0;
  uint64_t underflow = 0;
  uint64_t nan = 0;
  bool any() const { return overflow || underflow || nan; }
  Loss& operator+=(const Loss& o) {
    overflow += o.overflow;
    underflow += o.underflow;
    nan += o.nan;
    return *this;
  }
};

// Implementations of the dequantisation kernel. Scalar is portable; Avx2
// (x86-64 with AVX2 and F16C, detected at run time) and Neon (aarch64) do
// F8_E4M3 and F8_E5M2 runs with vector instructions and give the same bits
// and the same loss counts as Scalar (the unit tests compare all three).
enum class Kernel { Scalar, Avx2, Neon };
std::string_view kernel_name(Kernel k);  // "scalar", "avx2", "neon"
std::vector<Kernel> available_kernels();  // what this CPU runs, Scalar first
// The kernel convert_run uses: the fastest available, unless the environment
// variable ST_FP8_KERNEL names another available one (for benchmarks).
Kernel active_kernel();

// Dequantise n codes of the FP8 type `fp8` with one scale; writes
// n * target_bytes(t) bytes (little-endian) to out and adds what was lost to
// `loss`. Any alignment of in and out.
void convert_run(Dtype fp8, const uint8_t* in, size_t n, float scale, Target t, uint8_t* out,
                 Loss& loss);
void convert_run(Kernel k, Dtype fp8, const uint8_t* in, size_t n, float scale, Target t,
                 uint8_t* out, Loss& loss);

}  // namespace st::fp8
