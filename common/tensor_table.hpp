// The manifest's table of tensors (name, dtype, shape, size, source file),
// stored compactly: a stage holds one of these for every tensor of a model,
// and a header may list a million.
#pragma once

#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "dtype.hpp"

namespace st::stream {

// Text that many tensors hold the same of (the file they came from):
// interned, like Shape, so a million-tensor table holds a pointer per tensor,
// not a million paths. Read-only; thread-safe.
class SharedString {
 public:
  SharedString() = default;
  SharedString(const std::string& s);  // NOLINT: converts like a string
  SharedString(const char* s) : SharedString(std::string(s)) {}  // NOLINT

  const std::string& str() const { return p_ ? *p_ : empty_string(); }
  operator const std::string&() const { return str(); }  // NOLINT
  bool empty() const { return !p_; }
  const char* c_str() const { return str().c_str(); }

  // Interned: equal texts are the same object (&str() names it).
  friend bool operator==(const SharedString& a, const SharedString& b) { return a.p_ == b.p_; }
  friend bool operator==(const SharedString& a, const std::string& b) { return a.str() == b; }
  friend bool operator==(const SharedString& a, const char* b) { return a.str() == b; }

  // Frees every interned text. Only where no non-empty SharedString is
  // alive: a fuzz target between inputs.
  static void clear_pool();

 private:
  static const std::string& empty_string();
  const std::string* p_ = nullptr;
};

// Puts the element at(order[k]) at position k, for every k (order a
// permutation of 0..n-1), in place, cycle by cycle: no second copy of a
// table that may have a million entries, only a bit per entry.
template <class At>
void permute_in_place(const std::vector<uint32_t>& order, At at) {
  std::vector<bool> placed(order.size());
  for (size_t i = 0; i < order.size(); ++i) {
    if (placed[i]) continue;
    auto first = at(i);
    size_t j = i;
    for (; order[j] != i; j = order[j]) {
      at(j) = at(order[j]);
      placed[j] = true;
    }
    at(j) = first;
    placed[j] = true;
  }
}

// One tensor of a table as read from it: the name points into the table,
// so a view is valid while the table lives and is not cleared.
struct TensorView {
  std::string_view name;
  Dtype dtype = Dtype::U8;
  Shape shape;
  uint64_t nbytes = 0;
  SharedString source;  // file it came from ("" when unknown)
};

// One tensor as a value of its own, to build a table from or to make an
// entry that is not in one.
struct TensorInfo {
  std::string name;
  Dtype dtype = Dtype::U8;
  Shape shape;
  uint64_t nbytes = 0;
  SharedString source;

  TensorInfo() = default;
  TensorInfo(std::string name_, Dtype dtype_, Shape shape_, uint64_t nbytes_, SharedString source_ = {})
      : name(std::move(name_)), dtype(dtype_), shape(shape_), nbytes(nbytes_), source(source_) {}
  explicit TensorInfo(const TensorView& v)
      : name(v.name), dtype(v.dtype), shape(v.shape), nbytes(v.nbytes), source(v.source) {}
  TensorView view() const { return {name, dtype, shape, nbytes, source}; }
};

// The tensors in order, 16 bytes each plus the name's bytes. A
// std::vector<TensorInfo> took 64 bytes a tensor, and a heap block for
// every name longer than 15 bytes. Rows and names live in blocks that are
// never moved (no doubling copies while a table of unknown size is read),
// each block its own mapping so that freeing it gives the memory back.
// A tensor's byte size is not stored: the table holds only tensors whose
// size is their dtype's times their shape's (push_back checks).
class TensorTable {
 public:
  TensorTable();
  ~TensorTable();
  TensorTable(TensorTable&&) noexcept;
  TensorTable& operator=(TensorTable&&) noexcept;
  TensorTable(const TensorTable& other);
  TensorTable& operator=(const TensorTable& other);
  TensorTable(std::initializer_list<TensorInfo> tensors);  // NOLINT: built like a vector
  TensorTable(const std::vector<TensorInfo>& tensors);       // NOLINT

  size_t size() const { return size_; }
  bool empty() const { return size_ == 0; }
  TensorView operator[](size_t i) const;
  std::string_view name(size_t i) const {
    const Row& r = row(i);
    if (r.name_size == 0) return {};
    return {name_blocks_[r.name >> kNameOffsetBits] + (r.name & (kNameBlock - 1)), r.name_size};
  }
  Dtype dtype(size_t i) const { return row(i).dtype; }
  const Shape& shape(size_t i) const { return shapes_[row(i).shape]; }
  uint64_t nbytes(size_t i) const;

  // Throws st::Error when nbytes is not the size of dtype x shape.
  void push_back(const TensorInfo& t) { push_back(t.view()); }
  void push_back(const TensorView& t);
  // The same without the check, for a header's entries as they are read:
  // the reader checks every size before the table is used.
  void add(std::string_view name, Dtype dtype, const Shape& shape, const SharedString& source);
  void clear();
  // Keeps rows [0, base) and puts after them the rows base + order[k]: a
  // permutation of the rest, or an increasing subset of it; in place.
  // Names of rows left out stay in the table's blocks until it is cleared.
  void reorder_from(size_t base, const std::vector<uint32_t>& order);

  class const_iterator {
   public:
    using value_type = TensorView;
    using difference_type = std::ptrdiff_t;
    const_iterator() = default;
    const_iterator(const TensorTable* t, size_t i) : t_(t), i_(i) {}
    TensorView operator*() const { return (*t_)[i_]; }
    const_iterator& operator++() {
      ++i_;
      return *this;
    }
    friend bool operator==(const const_iterator& a, const const_iterator& b) { return a.i_ == b.i_; }

   private:
    const TensorTable* t_ = nullptr;
    size_t i_ = 0;
  };
  const_iterator begin() const { return {this, 0}; }
  const_iterator end() const { return {this, size_}; }

 private:
  // Indexes instead of pointers: 16 bytes a row, not 24.
  struct Row {
    uint32_t name;  // name block (high bits) and offset in it (kNameOffsetBits)
    uint32_t name_size;
    uint32_t shape;   // index in shapes_
    uint16_t source;  // index in sources_
    Dtype dtype;
  };
  static_assert(sizeof(Row) == 16);
  static constexpr size_t kRowBits = 16;  // 65536 rows (1 MiB) a block
  static constexpr size_t kRowsPerBlock = size_t{1} << kRowBits;
  static constexpr size_t kNameOffsetBits = 20;
  static constexpr size_t kNameBlock = size_t{1} << kNameOffsetBits;
  static constexpr size_t kMaxNameBlocks = size_t{1} << (32 - kNameOffsetBits);

  struct Block;  // one mapping
  const Row& row(size_t i) const { return rows_[i >> kRowBits][i & (kRowsPerBlock - 1)]; }
  Row& row(size_t i) { return rows_[i >> kRowBits][i & (kRowsPerBlock - 1)]; }
  Row* new_row();
  uint32_t store_name(std::string_view name);
  uint16_t source_index(const SharedString& s);
  uint32_t shape_index(const Shape& s);

  std::vector<Row*> rows_;
  std::vector<std::unique_ptr<Block>> blocks_;  // owns the row and name blocks
  std::vector<char*> name_blocks_;  // by the index a row's name holds
  size_t current_ = SIZE_MAX;       // the name block that takes short names
  size_t names_used_ = 0;           // its bytes in use
  std::vector<SharedString> sources_;
  std::unordered_map<const std::string*, uint16_t> source_index_;  // by interned text
  std::vector<Shape> shapes_;  // the distinct shapes (few), by index
  std::unordered_map<const void*, uint32_t> shape_index_;
  size_t size_ = 0;
};

}  // namespace st::stream
