// The 22 safetensors dtypes (reference enum order; the reference writer sorts
// by it) with their bit sizes.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace st {

enum class Dtype : uint8_t {
  BOOL, F4, F6_E2M3, F6_E3M2, U8, I8, F8_E5M2, F8_E4M3, F8_E8M0, F8_E4M3FNUZ,
  F8_E5M2FNUZ, I16, U16, F16, BF16, I32, U32, F32, C64, F64, I64, U64,
};

inline constexpr int kDtypeCount = 22;

std::string_view dtype_name(Dtype d);
std::optional<Dtype> dtype_from_name(std::string_view name);
unsigned dtype_bits(Dtype d);

// FP8 storage types whose tensors are weights to dequantise (F8_E8M0 is a
// scale type, not a weight type).
bool is_fp8_weight_dtype(Dtype d);

// Checked element count (left-to-right fold from 1, as the reference does) and
// byte size; nullopt on overflow or a sub-byte total that is not whole bytes.
struct ByteSize {
  uint64_t elements = 0;
  uint64_t bytes = 0;
};
enum class SizeError { None, Overflow, Misaligned };
SizeError tensor_size(Dtype d, const uint64_t* shape, size_t rank, ByteSize& out);

// "[2,3]" for messages and reports.
std::string shape_text(const std::vector<uint64_t>& shape);

}  // namespace st
