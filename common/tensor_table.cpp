#include "tensor_table.hpp"

#include <sys/mman.h>

#include <algorithm>
#include <cstring>
#include <new>

#include "error.hpp"
#include "intern.hpp"

namespace st::stream {

const std::string& SharedString::empty_string() {
  static const std::string none;
  return none;
}

SharedString::SharedString(const std::string& s) {
  if (!s.empty()) p_ = InternPool<std::string>::intern(s);
}

void SharedString::clear_pool() { InternPool<std::string>::clear(); }

// Memory straight from mmap, given back with munmap. malloc may keep a
// freed block of a MiB in its heap (glibc raises its mapping threshold as
// mappings are freed, and each thread of st-convert has its own arena):
// on a million tensors st-convert peaked at 348 MiB with malloc'd blocks
// and 281 MiB with mappings. Only the pages written become resident, so a
// small table costs a page or two.
struct TensorTable::Block {
  explicit Block(size_t n) : size(n) {
    void* p = ::mmap(nullptr, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) throw std::bad_alloc();
    data = static_cast<char*>(p);
  }
  ~Block() { ::munmap(data, size); }
  Block(const Block&) = delete;
  Block& operator=(const Block&) = delete;
  char* data;
  size_t size;
};

TensorTable::TensorTable() = default;
TensorTable::~TensorTable() = default;
TensorTable::TensorTable(TensorTable&& o) noexcept { *this = std::move(o); }

TensorTable& TensorTable::operator=(TensorTable&& o) noexcept {
  if (this != &o) {
    rows_ = std::move(o.rows_);
    blocks_ = std::move(o.blocks_);
    name_blocks_ = std::move(o.name_blocks_);
    current_ = o.current_;
    names_used_ = o.names_used_;
    sources_ = std::move(o.sources_);
    source_index_ = std::move(o.source_index_);
    shapes_ = std::move(o.shapes_);
    shape_index_ = std::move(o.shape_index_);
    size_ = o.size_;
    o.clear();
  }
  return *this;
}

TensorTable::TensorTable(const TensorTable& other) {
  for (const TensorView& t : other) push_back(t);
}

TensorTable& TensorTable::operator=(const TensorTable& other) {
  if (this != &other) {
    TensorTable copy(other);
    *this = std::move(copy);
  }
  return *this;
}

TensorTable::TensorTable(std::initializer_list<TensorInfo> tensors) {
  for (const auto& t : tensors) push_back(t);
}

TensorTable::TensorTable(const std::vector<TensorInfo>& tensors) {
  for (const auto& t : tensors) push_back(t);
}

TensorView TensorTable::operator[](size_t i) const {
  const Row& r = row(i);
  return {name(i), r.dtype, shapes_[r.shape], nbytes(i), sources_[r.source]};
}

uint64_t TensorTable::nbytes(size_t i) const {
  const Row& r = row(i);
  const Shape& shape = shapes_[r.shape];
  ByteSize size;
  tensor_size(r.dtype, shape.data(), shape.size(), size);  // checked when the row was added
  return size.bytes;
}

void TensorTable::clear() {
  rows_.clear();
  blocks_.clear();
  name_blocks_.clear();
  current_ = SIZE_MAX;
  names_used_ = 0;
  sources_.clear();
  source_index_.clear();
  shapes_.clear();
  shape_index_.clear();
  size_ = 0;
}

TensorTable::Row* TensorTable::new_row() {
  if ((size_ & (kRowsPerBlock - 1)) == 0 && (size_ >> kRowBits) == rows_.size()) {
    blocks_.push_back(std::make_unique<Block>(kRowsPerBlock * sizeof(Row)));
    rows_.push_back(reinterpret_cast<Row*>(blocks_.back()->data));
  }
  return &row(size_++);
}

uint32_t TensorTable::store_name(std::string_view name) {
  if (name.empty()) return 0;
  // A name longer than a quarter block gets a block of its own (at offset
  // 0); the others fill the current block, never straddling two.
  const bool own = name.size() > kNameBlock / 4;
  if (own || current_ == SIZE_MAX || name.size() > kNameBlock - names_used_) {
    if (name_blocks_.size() == kMaxNameBlocks) throw Error("the tensor names take more than 4 GiB");
    blocks_.push_back(std::make_unique<Block>(own ? name.size() : kNameBlock));
    name_blocks_.push_back(blocks_.back()->data);
    const size_t index = name_blocks_.size() - 1;
    if (own) {
      std::memcpy(name_blocks_[index], name.data(), name.size());
      return static_cast<uint32_t>(index << kNameOffsetBits);
    }
    current_ = index;
    names_used_ = 0;
  }
  std::memcpy(name_blocks_[current_] + names_used_, name.data(), name.size());
  const auto ref = static_cast<uint32_t>((current_ << kNameOffsetBits) | names_used_);
  names_used_ += name.size();
  return ref;
}

uint32_t TensorTable::shape_index(const Shape& s) {
  const auto [it, added] = shape_index_.try_emplace(s.id(), static_cast<uint32_t>(shapes_.size()));
  if (added) shapes_.push_back(s);
  return it->second;
}

uint16_t TensorTable::source_index(const SharedString& s) {
  // Tensors of one file follow each other: the last one is nearly always it.
  if (!sources_.empty() && sources_.back() == s) return static_cast<uint16_t>(sources_.size() - 1);
  const auto it = source_index_.find(&s.str());
  if (it != source_index_.end()) return it->second;
  if (sources_.size() > UINT16_MAX) throw Error("more than 65536 source files are not supported");
  const auto index = static_cast<uint16_t>(sources_.size());
  source_index_.emplace(&s.str(), index);
  sources_.push_back(s);
  return index;
}

void TensorTable::push_back(const TensorView& t) {
  ByteSize size;
  if (tensor_size(t.dtype, t.shape.data(), t.shape.size(), size) != SizeError::None || size.bytes != t.nbytes)
    throw Error("internal: tensor " + std::string(t.name) + ": nbytes does not match dtype and shape");
  add(t.name, t.dtype, t.shape, t.source);
}

void TensorTable::add(std::string_view name, Dtype dtype, const Shape& shape, const SharedString& source) {
  if (name.size() > UINT32_MAX) throw Error("a tensor name is longer than 4 GiB");
  const uint16_t from = source_index(source);
  const uint32_t shape_at = shape_index(shape);
  const uint32_t stored = store_name(name);
  Row* r = new_row();
  new (r) Row{stored, static_cast<uint32_t>(name.size()), shape_at, from, dtype};
}

void TensorTable::reorder_from(size_t base, const std::vector<uint32_t>& order) {
  if (std::is_sorted(order.begin(), order.end())) {  // a subset (or all), in place
    for (size_t k = 0; k < order.size(); ++k) row(base + k) = row(base + order[k]);
  } else {
    if (order.size() != size_ - base) throw Error("internal: TensorTable::reorder_from: not a permutation");
    permute_in_place(order, [&](size_t j) -> Row& { return row(base + j); });
  }
  size_ = base + order.size();
  // Row blocks past the new end are no longer needed.
  while (rows_.size() > (size_ + kRowsPerBlock - 1) / kRowsPerBlock) {
    Row* last = rows_.back();
    rows_.pop_back();
    auto it = std::find_if(blocks_.begin(), blocks_.end(), [&](const auto& b) { return b->data == reinterpret_cast<char*>(last); });
    blocks_.erase(it);
  }
}

}  // namespace st::stream
