// The 22 safetensors dtypes (reference enum order; the reference writer sorts
// by it) with their bit sizes.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <optional>
#include <span>
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
// U8 and I8: containers that may hold FP8 bytes (a marker or --u8-as says
// which FP8 type).
inline bool is_fp8_container_dtype(Dtype d) { return d == Dtype::U8 || d == Dtype::I8; }

// Checked element count (left-to-right fold from 1, as the reference does) and
// byte size; nullopt on overflow or a sub-byte total that is not whole bytes.
struct ByteSize {
  uint64_t elements = 0;
  uint64_t bytes = 0;
};
enum class SizeError { None, Overflow, Misaligned };
SizeError tensor_size(Dtype d, const uint64_t* shape, size_t rank, ByteSize& out);

// A tensor's dimensions, interned: each distinct shape is stored once per
// process (never freed) and a tensor holds a pointer to it. A model of a
// million tensors has few distinct shapes, and a vector per tensor cost 56
// bytes a tensor in every table a stage holds. Read-only; thread-safe.
class Shape {
 public:
  using const_iterator = std::vector<uint64_t>::const_iterator;
  Shape();  // [] (a scalar)
  Shape(const std::vector<uint64_t>& dims);  // NOLINT: converts like a vector
  Shape(std::initializer_list<uint64_t> dims) : Shape(std::vector<uint64_t>(dims)) {}

  operator const std::vector<uint64_t>&() const { return *dims_; }  // NOLINT
  operator std::span<const uint64_t>() const { return *dims_; }     // NOLINT
  size_t size() const { return dims_->size(); }
  bool empty() const { return dims_->empty(); }
  uint64_t operator[](size_t i) const { return (*dims_)[i]; }
  uint64_t back() const { return dims_->back(); }
  const uint64_t* data() const { return dims_->data(); }
  const_iterator begin() const { return dims_->begin(); }
  const_iterator end() const { return dims_->end(); }

  // Interned: equal shapes are the same object, which id() names.
  friend bool operator==(const Shape& a, const Shape& b) { return a.dims_ == b.dims_; }
  const void* id() const { return dims_; }
  friend bool operator==(const Shape& a, const std::vector<uint64_t>& b) { return *a.dims_ == b; }

  // Frees every interned shape. Only where no Shape but [] is alive: a fuzz
  // target between inputs, whose process would otherwise keep each one.
  static void clear_pool();

 private:
  const std::vector<uint64_t>* dims_;
};

// "[2,3]" for messages and reports.
std::string shape_text(const std::vector<uint64_t>& shape);

}  // namespace st
