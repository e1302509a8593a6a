#include "dtype.hpp"

#include <array>

#include "intern.hpp"

namespace st {

namespace {
struct DtypeRow {
  std::string_view name;
  unsigned bits;
};
constexpr std::array<DtypeRow, kDtypeCount> kRows{{
    {"BOOL", 8}, {"F4", 4}, {"F6_E2M3", 6}, {"F6_E3M2", 6}, {"U8", 8}, {"I8", 8},
    {"F8_E5M2", 8}, {"F8_E4M3", 8}, {"F8_E8M0", 8}, {"F8_E4M3FNUZ", 8},
    {"F8_E5M2FNUZ", 8}, {"I16", 16}, {"U16", 16}, {"F16", 16}, {"BF16", 16},
    {"I32", 32}, {"U32", 32}, {"F32", 32}, {"C64", 64}, {"F64", 64}, {"I64", 64},
    {"U64", 64},
}};
}  // namespace

std::string_view dtype_name(Dtype d) { return kRows[static_cast<size_t>(d)].name; }
unsigned dtype_bits(Dtype d) { return kRows[static_cast<size_t>(d)].bits; }

std::optional<Dtype> dtype_from_name(std::string_view name) {
  for (size_t i = 0; i < kRows.size(); ++i)
    if (kRows[i].name == name) return static_cast<Dtype>(i);
  return std::nullopt;
}

bool is_fp8_weight_dtype(Dtype d) {
  return d == Dtype::F8_E4M3 || d == Dtype::F8_E5M2 || d == Dtype::F8_E4M3FNUZ ||
         d == Dtype::F8_E5M2FNUZ;
}

namespace {
// [] is common (every scalar, and every Shape made before its value) and
// needs no lock: it is one object outside the pool.
const std::vector<uint64_t>& scalar_dims() {
  static const std::vector<uint64_t> none;
  return none;
}
}  // namespace

Shape::Shape() : dims_(&scalar_dims()) {}

Shape::Shape(const std::vector<uint64_t>& dims)
    : dims_(dims.empty() ? &scalar_dims() : InternPool<std::vector<uint64_t>>::intern(dims)) {}

void Shape::clear_pool() { InternPool<std::vector<uint64_t>>::clear(); }

std::string shape_text(const std::vector<uint64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i) s += ",";
    s += std::to_string(shape[i]);
  }
  return s + "]";
}

SizeError tensor_size(Dtype d, const uint64_t* shape, size_t rank, ByteSize& out) {
  uint64_t n = 1;
  for (size_t i = 0; i < rank; ++i)
    if (__builtin_mul_overflow(n, shape[i], &n)) return SizeError::Overflow;
  uint64_t bits = 0;
  if (__builtin_mul_overflow(n, uint64_t{dtype_bits(d)}, &bits)) return SizeError::Overflow;
  if (bits % 8 != 0) return SizeError::Misaligned;
  out.elements = n;
  out.bytes = bits / 8;
  return SizeError::None;
}

}  // namespace st
