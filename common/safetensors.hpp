// The .safetensors file format: a strict header reader that follows the
// reference implementation's validation order (8-byte LE length, <= 1e8
// header bytes, strict UTF-8, strict JSON with exact u64 numbers, contiguous
// data_offsets covering the data section exactly), and the header writer.
#pragma once

#include <algorithm>
#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "dtype.hpp"
#include "io.hpp"

namespace st::safetensors {

inline constexpr uint64_t kMaxHeaderBytes = 100'000'000;  // reference MAX_HEADER_SIZE (inclusive)
inline constexpr int kMaxJsonDepth = 127;                 // serde_json's recursion limit of 128

// Metadata keeps the source order so output is deterministic.
using Metadata = std::vector<std::pair<std::string, std::string>>;

struct TensorEntry {
  std::string name;
  Dtype dtype = Dtype::U8;
  Shape shape;
  uint64_t begin = 0;  // relative to the data section
  uint64_t end = 0;
  uint64_t nbytes() const { return end - begin; }
};

struct Header {
  std::optional<Metadata> metadata;  // absent and JSON null are the same
  std::vector<TensorEntry> tensors;  // in data (offset) order
  uint64_t data_start = 0;           // 8 + N
  uint64_t data_size = 0;
};

// Parses and validates a header. `file_size` is the whole file's size.
// Throws st::Error with a message that does not name the file.
Header parse_header(std::span<const uint8_t> header_json, uint64_t file_size);

// Reads the length prefix and header from a file and validates them;
// error messages start with the file's path.
Header read_header(const io::InputFile& file);

// Where a header's entries go while it is read, for a reader that keeps
// its own table (st-list moves them into the manifest's): each entry is
// added as it is parsed, in header order, and read back by position for the
// checks over all of them (unique names, offsets that tile the data). So the
// entries are never held twice.
class EntryTable {
 public:
  virtual ~EntryTable() = default;
  virtual void reserve(size_t n) = 0;  // a hint, before the first add
  virtual void add(TensorEntry&& e) = 0;
  virtual size_t size() const = 0;
  virtual std::string_view name(size_t i) const = 0;
  virtual Dtype dtype(size_t i) const = 0;
  virtual const Shape& shape(size_t i) const = 0;
  virtual uint64_t begin(size_t i) const = 0;
  virtual uint64_t end(size_t i) const = 0;
  // Puts the entries in this order (positions in data order); called only
  // when they were not in data order already.
  virtual void reorder(const std::vector<uint32_t>& order) = 0;
};

// The rest of a header.
struct HeaderInfo {
  std::optional<Metadata> metadata;
  uint64_t data_start = 0;
  uint64_t data_size = 0;
};

// read_header with the entries going to `table`, in data order when it
// returns; the same checks, in the same order, with the same messages.
HeaderInfo read_header_into(const io::InputFile& file, EntryTable& table);

// The exact bytes of a header (8-byte length + JSON padded with spaces so the
// data starts at a multiple of 8), for tensors laid out in the given order.
// `tensors[i].begin/end` must already be assigned.
std::vector<uint8_t> serialize_header(const std::optional<Metadata>& metadata,
                                      const std::vector<TensorEntry>& tensors);

// One entry of a header being written, filled in by the caller for the k-th
// tensor (the name in a buffer that is reused), so that a writer of a
// million tensors need not hold a table of them.
struct EntryRef {
  std::string name;
  Dtype dtype = Dtype::U8;
  std::span<const uint64_t> shape;
  uint64_t begin = 0;
  uint64_t end = 0;
};
using EntryAt = std::function<void(size_t k, EntryRef& e)>;

// The same bytes as serialize_header, for `count` entries, given to `out`
// in pieces of about 64 KiB (the JSON is made twice: for the length prefix,
// then to write it). Returns the whole size; with `out` empty it only
// measures. Throws st::Error when the header would exceed the limit.
uint64_t header_pieces(const std::optional<Metadata>& metadata, size_t count, const EntryAt& entry,
                       const std::function<void(std::string_view)>& out);

// The reference writer's data order: descending dtype enum, then name bytes.
inline bool reference_order_less(Dtype da, std::string_view a, Dtype db, std::string_view b) {
  if (da != db) return da > db;
  return a < b;  // string_view compares bytes as unsigned char
}
void sort_reference_order(std::vector<TensorEntry>& tensors);

// Positions 0..n-1 ordered by name_of(i), equal names in position order.
// How names are indexed and repeats found everywhere: 4 bytes a tensor,
// where a set or map of names would copy every name of a header that may
// list a million.
template <class NameOf>
std::vector<uint32_t> positions_by_name(size_t n, NameOf name_of) {
  std::vector<uint32_t> by_name(n);
  for (uint32_t i = 0; i < by_name.size(); ++i) by_name[i] = i;
  std::stable_sort(by_name.begin(), by_name.end(), [&](uint32_t a, uint32_t b) { return name_of(a) < name_of(b); });
  return by_name;
}

// The first position named t in by_name (positions_by_name's result for
// the same name_of), or -1.
template <class NameOf>
long find_by_name(const std::vector<uint32_t>& by_name, NameOf name_of, std::string_view t) {
  const auto it = std::lower_bound(by_name.begin(), by_name.end(), t,
                                   [&](uint32_t k, std::string_view n) { return name_of(k) < n; });
  return it != by_name.end() && name_of(*it) == t ? static_cast<long>(*it) : -1;
}

// Every position whose name an earlier position had, as (that later
// position, the first position with the name), in position order. Found by
// sorting positions, not with a set.
template <class NameOf>
std::vector<std::pair<size_t, size_t>> repeats_by_name(size_t n, NameOf name_of) {
  const std::vector<uint32_t> by_name = positions_by_name(n, name_of);
  std::vector<std::pair<size_t, size_t>> repeats;
  for (size_t k = 1, first = by_name.empty() ? 0 : by_name[0]; k < by_name.size(); ++k) {
    if (name_of(by_name[k]) != name_of(by_name[k - 1])) first = by_name[k];
    else repeats.emplace_back(by_name[k], first);
  }
  std::sort(repeats.begin(), repeats.end());
  return repeats;
}

// The first repeat in position order of a name among name_of(0..n-1), as
// (the first position with the name, the repeater), or nullopt.
template <class NameOf>
std::optional<std::pair<size_t, size_t>> first_repeat(size_t n, NameOf name_of) {
  const auto repeats = repeats_by_name(n, name_of);
  if (repeats.empty()) return std::nullopt;
  return std::pair<size_t, size_t>(repeats.front().second, repeats.front().first);
}

// A name that `n` tensors (name_of(i) for i < n) share, or nullopt: the
// manifest and the header both refuse repeated names.
template <class NameOf>
std::optional<std::string> repeated_name(size_t n, NameOf name_of) {
  // Not a stable sort: equal names are equal, and std::sort needs no
  // buffer of another 4 bytes a tensor. The smallest repeated name is found.
  std::vector<uint32_t> by_name(n);
  for (uint32_t i = 0; i < by_name.size(); ++i) by_name[i] = i;
  std::sort(by_name.begin(), by_name.end(), [&](uint32_t a, uint32_t b) { return name_of(a) < name_of(b); });
  for (size_t i = 1; i < by_name.size(); ++i)
    if (name_of(by_name[i]) == name_of(by_name[i - 1])) return std::string(name_of(by_name[i]));
  return std::nullopt;
}

}  // namespace st::safetensors
