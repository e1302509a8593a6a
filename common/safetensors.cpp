#include "safetensors.hpp"

#include <rapidjson/reader.h>

#include <algorithm>
#include <charconv>
#include <cstring>
#include <functional>

#include "error.hpp"
#include "json_util.hpp"

namespace st::safetensors {

namespace {

using json::quote;

// SAX handler building a Header while enforcing the schema: one object whose
// "__metadata__" is a string map (or null) and whose other keys are tensor
// entries {dtype, shape, data_offsets} (unknown fields ignored, as the
// reference does). Numbers arrive as raw text so they stay exact.
class HeaderHandler : public rapidjson::BaseReaderHandler<rapidjson::UTF8<>, HeaderHandler> {
 public:
  explicit HeaderHandler(EntryTable& table) : table_(table) {}
  std::string error;
  HeaderInfo header;  // all but the entries, which go to the table

  bool Null() { return value_kind("null"); }
  bool Bool(bool) { return value_kind("a boolean"); }
  bool RawNumber(const char* s, rapidjson::SizeType n, bool) {
    const std::string_view text(s, n);
    if (state_ == State::Skip) return true;
    if (state_ == State::ShapeArray || state_ == State::OffsetsArray) {
      std::string why;
      auto v = json::parse_u64(text, &why);
      if (!v) return bad("tensor " + quote(name_) + ": " + field_name() + " value " +
                         std::string(text) + " " + why);
      if (state_ == State::ShapeArray) {
        dims_.push_back(*v);
      } else {
        if (offsets_seen_ == 2) return bad("tensor " + quote(name_) + ": data_offsets must have exactly 2 elements");
        (offsets_seen_ == 0 ? cur_.begin : cur_.end) = *v;
        ++offsets_seen_;
      }
      return true;
    }
    return value_kind("a number");
  }
  bool String(const char* s, rapidjson::SizeType n, bool) {
    const std::string_view text(s, n);
    if (!json::valid_utf8(text)) return bad("invalid UTF-8 (lone surrogate escape) in a string");
    switch (state_) {
      case State::Skip: return true;
      case State::MetadataObject:
        for (auto& kv : *header.metadata)
          if (kv.first == key_) {  // duplicate metadata key: last wins, like the reference
            kv.second = std::string(text);
            return true;
          }
        header.metadata->emplace_back(key_, std::string(text));
        return true;
      case State::TensorObject:
        if (field_ == Field::Dtype) {
          auto d = dtype_from_name(text);
          if (!d) return bad("tensor " + quote(name_) + ": unknown dtype " + quote(text));
          cur_.dtype = *d;
          return true;
        }
        break;
      default: break;
    }
    return value_kind("a string");
  }
  bool Key(const char* s, rapidjson::SizeType n, bool) {
    const std::string_view text(s, n);
    if (!json::valid_utf8(text)) return bad("invalid UTF-8 (lone surrogate escape) in a key");
    switch (state_) {
      case State::Skip: return true;
      case State::Root:
        key_ = std::string(text);
        return true;
      case State::MetadataObject:
        key_ = std::string(text);
        return true;
      case State::TensorObject: {
        Field f = Field::Unknown;
        if (text == "dtype") f = Field::Dtype;
        else if (text == "shape") f = Field::Shape;
        else if (text == "data_offsets") f = Field::Offsets;
        if (f != Field::Unknown) {
          const unsigned bit = 1u << static_cast<unsigned>(f);
          if (fields_seen_ & bit) return bad("tensor " + quote(name_) + ": duplicate field " + quote(text));
          fields_seen_ |= bit;
        }
        field_ = f;
        return true;
      }
      default: return bad("unexpected key");
    }
  }
  bool StartObject() {
    if (++depth_ > kMaxJsonDepth) return bad("JSON nested more than 127 levels deep");
    switch (state_) {
      case State::Start:
        state_ = State::Root;
        return true;
      case State::Skip:
        ++skip_depth_;
        return true;
      case State::Root:
        if (key_ == "__metadata__") {
          if (metadata_seen_) return bad("duplicate field '__metadata__'");
          metadata_seen_ = true;
          header.metadata.emplace();
          state_ = State::MetadataObject;
          return true;
        }
        name_ = key_;
        cur_ = TensorEntry{};
        cur_.name = key_;
        fields_seen_ = 0;
        offsets_seen_ = 0;
        state_ = State::TensorObject;
        return true;
      case State::TensorObject:
        if (field_ == Field::Unknown) return start_skip();
        break;
      default: break;
    }
    return value_kind("an object");
  }
  bool EndObject(rapidjson::SizeType) {
    --depth_;
    switch (state_) {
      case State::Skip: return end_skip();
      case State::MetadataObject: state_ = State::Root; return true;
      case State::TensorObject:
        for (Field f : {Field::Dtype, Field::Shape, Field::Offsets})
          if (!(fields_seen_ & (1u << static_cast<unsigned>(f)))) {
            field_ = f;
            return bad("tensor " + quote(name_) + ": missing field '" + field_name() + "'");
          }
        table_.add(std::move(cur_));
        state_ = State::Root;
        return true;
      case State::Root: state_ = State::Done; return true;
      default: return bad("unexpected end of object");
    }
  }
  bool StartArray() {
    if (++depth_ > kMaxJsonDepth) return bad("JSON nested more than 127 levels deep");
    if (state_ == State::Skip) {
      ++skip_depth_;
      return true;
    }
    if (state_ == State::TensorObject) {
      if (field_ == Field::Shape) {
        state_ = State::ShapeArray;
        dims_.clear();
        return true;
      }
      if (field_ == Field::Offsets) {
        state_ = State::OffsetsArray;
        return true;
      }
      if (field_ == Field::Unknown) return start_skip();
    }
    return value_kind("an array");
  }
  bool EndArray(rapidjson::SizeType) {
    --depth_;
    if (state_ == State::Skip) return end_skip();
    if (state_ == State::OffsetsArray && offsets_seen_ != 2)
      return bad("tensor " + quote(name_) + ": data_offsets must have exactly 2 elements");
    if (state_ == State::ShapeArray) cur_.shape = Shape(dims_);
    state_ = State::TensorObject;
    return true;
  }

 private:
  enum class State { Start, Root, MetadataObject, TensorObject, ShapeArray, OffsetsArray, Skip, Done };
  enum class Field : unsigned { Dtype = 0, Shape = 1, Offsets = 2, Unknown = 3 };

  bool bad(std::string msg) {
    if (error.empty()) error = std::move(msg);
    return false;
  }
  std::string field_name() const {
    switch (field_) {
      case Field::Dtype: return "dtype";
      case Field::Shape: return "shape";
      case Field::Offsets: return "data_offsets";
      default: return "?";
    }
  }
  bool start_skip() {
    resume_ = state_;
    state_ = State::Skip;
    skip_depth_ = 1;
    return true;
  }
  bool end_skip() {
    if (--skip_depth_ == 0) state_ = resume_;
    return true;
  }
  // A scalar or container where the schema wants something else.
  bool value_kind(const char* what) {
    switch (state_) {
      case State::Skip: return true;
      case State::Start: return bad(std::string("header is ") + what + ", not a JSON object");
      case State::Root:
        if (key_ == "__metadata__") {
          if (metadata_seen_) return bad("duplicate field '__metadata__'");
          metadata_seen_ = true;
          if (std::strcmp(what, "null") == 0) return true;  // null is the same as absent
          return bad(std::string("__metadata__ is ") + what + ", not an object of strings");
        }
        return bad("entry for tensor " + quote(key_) + " is " + what + ", not an object");
      case State::MetadataObject:
        return bad("__metadata__ value for " + quote(key_) + " is " + what + ", not a string");
      case State::TensorObject:
        if (field_ == Field::Unknown) return true;  // unknown scalar field: ignored
        return bad("tensor " + quote(name_) + ": " + field_name() + " is " + what +
                   (field_ == Field::Dtype ? ", not a string" : ", not an array of integers"));
      case State::ShapeArray:
      case State::OffsetsArray:
        return bad("tensor " + quote(name_) + ": " + field_name() + " contains " + what +
                   ", not an integer");
      default: return bad("unexpected value");
    }
  }

  State state_ = State::Start;
  State resume_ = State::Root;
  Field field_ = Field::Unknown;
  int depth_ = 0;
  int skip_depth_ = 0;
  unsigned fields_seen_ = 0;
  int offsets_seen_ = 0;
  bool metadata_seen_ = false;
  std::string key_;
  std::string name_;
  TensorEntry cur_;
  std::vector<uint64_t> dims_;  // the shape being read (interned at its end)
  EntryTable& table_;
};

// The header text in pieces: bytes [at, at + n) of it, as a view that stays
// valid until the next call. A file's header is read so, a piece at a time,
// instead of being held whole next to the table made from it (the header of
// a million tensors is ~70-100 MB).
using HeaderPiece = std::function<std::string_view(uint64_t at, size_t n)>;
constexpr size_t kHeaderPiece = 1 << 20;

// A RapidJSON input stream over the pieces. Peek() gives '\0' at the end,
// which cannot be confused with a byte of the text: check_header_text()
// refuses a NUL first, and next() refuses one that appeared since.
class PieceStream {
 public:
  using Ch = char;
  PieceStream(const HeaderPiece& piece, uint64_t size) : piece_(piece), size_(size) {}
  Ch Peek() {
    if (at_ == view_.size() && !next()) return '\0';
    return view_[at_];
  }
  Ch Take() {
    const Ch c = Peek();
    if (at_ < view_.size()) ++at_;
    return c;
  }
  size_t Tell() const { return static_cast<size_t>(start_ + at_); }
  // Write side of the stream concept, unused by a non-in-situ parse.
  Ch* PutBegin() { return nullptr; }
  void Put(Ch) {}
  void Flush() {}
  size_t PutEnd(Ch*) { return 0; }

 private:
  bool next() {
    start_ += view_.size();
    at_ = 0;
    view_ = {};
    if (start_ >= size_) return false;
    view_ = piece_(start_, static_cast<size_t>(std::min<uint64_t>(kHeaderPiece, size_ - start_)));
    // A file is read twice (checks, then this parse): bytes that changed in
    // between must not turn into an early end.
    if (view_.find('\0') != std::string_view::npos) fail("header changed while it was read (a NUL byte appeared)");
    return !view_.empty();
  }
  const HeaderPiece& piece_;
  uint64_t size_;
  uint64_t start_ = 0;
  std::string_view view_;
  size_t at_ = 0;
};

// Checks on the whole text before JSON, in the reference's order (UTF-8
// first), a piece at a time; returns how many "data_offsets" keys it holds
// (room to reserve for the entries).
size_t check_header_text(const HeaderPiece& piece, uint64_t size) {
  static constexpr std::string_view kKey = "\"data_offsets\"";
  size_t keys = 0;
  std::string tail;  // the last kKey.size() - 1 bytes, for a key cut by a piece boundary
  bool nul = false;
  for (uint64_t at = 0; at < size;) {
    const uint64_t left = size - at;
    std::string_view v = piece(at, static_cast<size_t>(std::min<uint64_t>(kHeaderPiece, left)));
    // Leave a UTF-8 sequence cut by the piece's end to the next piece.
    if (v.size() < left) {
      for (size_t back = 1; back <= 4 && back <= v.size(); ++back) {
        const auto c = static_cast<unsigned char>(v[v.size() - back]);
        if ((c & 0xC0) == 0x80) continue;  // a continuation byte: look further back
        const size_t len = json::utf8_length(c);
        if (len > back) v.remove_suffix(back);
        break;
      }
    }
    if (!json::valid_utf8(v)) fail("header is not valid UTF-8");
    // The stream's end reads as NUL; a raw NUL can only be invalid JSON here
    // (it is neither whitespace nor allowed unescaped inside a string), so
    // it is refused before it could look like the end, once the whole text
    // is known to be UTF-8 (that error comes first, as in the reference).
    nul |= v.find('\0') != std::string_view::npos;
    const std::string seam = tail + std::string(v.substr(0, kKey.size() - 1));
    if (seam.find(kKey) != std::string::npos) ++keys;
    for (size_t k = v.find(kKey); k != std::string_view::npos; k = v.find(kKey, k + kKey.size())) ++keys;
    tail = std::string(v.substr(v.size() - std::min(v.size(), kKey.size() - 1)));
    at += v.size();
  }
  if (nul) fail("header contains a NUL byte (not JSON)");
  return keys;
}

// The checks over all entries, in the reference's order: unique names, then
// (in data order) offsets that tile the data section with sizes that match.
void check_entries(EntryTable& t, uint64_t data_size) {
  const size_t n = t.size();
  // Names are unique (the reference keeps the last of a repeated one; we refuse).
  if (const auto twice = repeated_name(n, [&](size_t i) { return t.name(i); }))
    fail("invalid header: duplicate tensor name " + quote(*twice));

  // Data order (usually already so: no sort, no sort buffer), then the
  // reference's contiguity walk.
  auto before = [&](size_t a, size_t b) {
    return t.begin(a) != t.begin(b) ? t.begin(a) < t.begin(b) : t.end(a) < t.end(b);
  };
  bool sorted = true;
  for (size_t i = 1; i < n && sorted; ++i) sorted = !before(i, i - 1);
  if (!sorted) {
    std::vector<uint32_t> order(n);
    for (uint32_t i = 0; i < n; ++i) order[i] = i;
    std::stable_sort(order.begin(), order.end(), before);
    t.reorder(order);
  }
  uint64_t cursor = 0;
  for (size_t i = 0; i < n; ++i) {
    const std::string_view name = t.name(i);
    const uint64_t begin = t.begin(i), end = t.end(i);
    const Dtype dtype = t.dtype(i);
    const Shape& shape = t.shape(i);
    if (begin != cursor || end < begin)
      fail("tensor " + quote(name) + ": data_offsets [" + std::to_string(begin) + "," + std::to_string(end) + "] " +
           (end < begin ? "are reversed" : begin < cursor ? "overlap the previous tensor" : "leave a hole before this tensor") +
           " (expected to start at " + std::to_string(cursor) + ")");
    ByteSize size;
    switch (tensor_size(dtype, shape.data(), shape.size(), size)) {
      case SizeError::Overflow:
        fail("tensor " + quote(name) + ": shape " + shape_text(shape) + " overflows 64 bits");
      case SizeError::Misaligned:
        fail("tensor " + quote(name) + ": " + std::string(dtype_name(dtype)) + " shape " + shape_text(shape) +
             " is not a whole number of bytes");
      case SizeError::None: break;
    }
    if (end - begin != size.bytes)
      fail("tensor " + quote(name) + ": data_offsets cover " + std::to_string(end - begin) + " bytes but " +
           std::string(dtype_name(dtype)) + " " + shape_text(shape) + " needs " + std::to_string(size.bytes));
    cursor = end;
  }
  if (cursor != data_size)
    fail("tensors cover " + std::to_string(cursor) + " data bytes but the file has " + std::to_string(data_size) +
         (data_size < cursor ? " (file truncated?)" : " (trailing bytes after the last tensor)"));
}

HeaderInfo parse_header_pieces(uint64_t size, const HeaderPiece& piece, uint64_t file_size, EntryTable& table) {
  const size_t keys = check_header_text(piece, size);
  PieceStream stream(piece, size);
  rapidjson::Reader reader;
  HeaderHandler handler(table);
  // Room for every entry up front (capped by the smallest entry), so a
  // million entries are not copied while the table grows.
  constexpr size_t kSmallestEntry = sizeof R"("":{"dtype":"U8","shape":[],"data_offsets":[0,0]},)" - 1;
  table.reserve(std::min<uint64_t>(keys, size / kSmallestEntry + 1));
  constexpr unsigned kFlags = rapidjson::kParseIterativeFlag | rapidjson::kParseNumbersAsStringsFlag |
                              rapidjson::kParseValidateEncodingFlag;
  if (!reader.Parse<kFlags>(stream, handler)) {
    if (!handler.error.empty()) fail("invalid header: " + handler.error);
    const auto code = reader.GetParseErrorCode();
    const size_t at = reader.GetErrorOffset();
    std::string what;
    switch (code) {
      case rapidjson::kParseErrorDocumentEmpty: what = "header is empty (no JSON object)"; break;
      case rapidjson::kParseErrorDocumentRootNotSingular:
        what = "trailing characters after the JSON object (only spaces, tabs and newlines may pad it)";
        break;
      default: what = "invalid JSON at byte " + std::to_string(at); break;
    }
    fail("invalid header: " + what);
  }
  HeaderInfo h = std::move(handler.header);
  h.data_start = 8 + size;
  h.data_size = file_size - h.data_start;
  check_entries(table, h.data_size);
  return h;
}

// A Header's own vector as the table.
class VectorTable : public EntryTable {
 public:
  explicit VectorTable(std::vector<TensorEntry>& v) : v_(v) {}
  void reserve(size_t n) override { v_.reserve(n); }
  void add(TensorEntry&& e) override { v_.push_back(std::move(e)); }
  size_t size() const override { return v_.size(); }
  std::string_view name(size_t i) const override { return v_[i].name; }
  Dtype dtype(size_t i) const override { return v_[i].dtype; }
  const Shape& shape(size_t i) const override { return v_[i].shape; }
  uint64_t begin(size_t i) const override { return v_[i].begin; }
  uint64_t end(size_t i) const override { return v_[i].end; }
  void reorder(const std::vector<uint32_t>& order) override {
    std::vector<TensorEntry> sorted;
    sorted.reserve(v_.size());
    for (uint32_t i : order) sorted.push_back(std::move(v_[i]));
    v_ = std::move(sorted);
  }

 private:
  std::vector<TensorEntry>& v_;
};

Header with_entries(HeaderInfo info, std::vector<TensorEntry>&& tensors) {
  Header h;
  h.metadata = std::move(info.metadata);
  h.tensors = std::move(tensors);
  h.data_start = info.data_start;
  h.data_size = info.data_size;
  return h;
}

}  // namespace

Header parse_header(std::span<const uint8_t> bytes, uint64_t file_size) {
  const std::string_view text(reinterpret_cast<const char*>(bytes.data()), bytes.size());
  std::vector<TensorEntry> tensors;
  VectorTable table(tensors);
  HeaderInfo info =
      parse_header_pieces(text.size(), [&](uint64_t at, size_t n) { return text.substr(at, n); }, file_size, table);
  return with_entries(std::move(info), std::move(tensors));
}

Header read_header(const io::InputFile& file) {
  std::vector<TensorEntry> tensors;
  VectorTable table(tensors);
  HeaderInfo info = read_header_into(file, table);
  return with_entries(std::move(info), std::move(tensors));
}

HeaderInfo read_header_into(const io::InputFile& file, EntryTable& table) {
  const uint64_t size = file.size();
  try {
    if (size < 8) fail("file too small to be safetensors (" + std::to_string(size) + " bytes, need at least 8)");
    uint8_t len_bytes[8];
    file.pread_exact(0, len_bytes, 8);
    uint64_t n = 0;
    for (int i = 7; i >= 0; --i) n = (n << 8) | len_bytes[i];
    if (n > kMaxHeaderBytes && std::memcmp(len_bytes, "\x89STS\r\n\x1a\n", 8) == 0)
      fail("this is an st-stream, not a safetensors file; pipe it into a stage (e.g. st-scales < FILE)");
    if (n > kMaxHeaderBytes)
      fail("header length " + std::to_string(n) + " exceeds the 100000000-byte limit (not a safetensors file?)");
    if (8 + n > size)
      fail("header length " + std::to_string(n) + " runs past the end of the " + std::to_string(size) +
           "-byte file (truncated?)");
    std::string piece;
    return parse_header_pieces(
        n,
        [&](uint64_t at, size_t len) {
          piece.resize(len);
          file.pread_exact(8 + at, piece.data(), len);
          return std::string_view(piece);
        },
        size, table);
  } catch (const BrokenPipe&) {
    throw;
  } catch (const Error& e) {
    const std::string msg = e.what();
    if (msg.rfind(file.path() + ":", 0) == 0) throw;
    fail(file.path() + ": " + msg);
  }
}

void sort_reference_order(std::vector<TensorEntry>& tensors) {
  std::stable_sort(tensors.begin(), tensors.end(), [](const TensorEntry& a, const TensorEntry& b) {
    return reference_order_less(a.dtype, a.name, b.dtype, b.name);
  });
}

namespace {

// The header's JSON, compact as the reference writer (serde_json) prints it,
// without the length prefix and the padding.
void header_json(const std::optional<Metadata>& metadata, size_t count, const EntryAt& entry,
                 const std::function<void(std::string_view)>& out) {
  constexpr size_t kPiece = 64 << 10;
  std::string json = "{";
  json.reserve(kPiece + 4096);
  bool first = true;
  if (metadata) {
    json += "\"__metadata__\":{";
    for (size_t i = 0; i < metadata->size(); ++i) {
      if (i) json += ',';
      json::append_json_string(json, (*metadata)[i].first);
      json += ':';
      json::append_json_string(json, (*metadata)[i].second);
    }
    json += '}';
    first = false;
  }
  EntryRef e;
  char num[24];
  auto number = [&](uint64_t v) {
    const auto r = std::to_chars(num, num + sizeof num, v);
    json.append(num, r.ptr);
  };
  for (size_t k = 0; k < count; ++k) {
    entry(k, e);
    if (!first) json += ',';
    first = false;
    json::append_json_string(json, e.name);
    json += ":{\"dtype\":\"";
    json += dtype_name(e.dtype);
    json += "\",\"shape\":[";
    for (size_t i = 0; i < e.shape.size(); ++i) {
      if (i) json += ',';
      number(e.shape[i]);
    }
    json += "],\"data_offsets\":[";
    number(e.begin);
    json += ',';
    number(e.end);
    json += "]}";
    if (json.size() >= kPiece) {
      out(json);
      json.clear();
    }
  }
  json += '}';
  out(json);
}

}  // namespace

uint64_t header_pieces(const std::optional<Metadata>& metadata, size_t count, const EntryAt& entry,
                       const std::function<void(std::string_view)>& out) {
  uint64_t len = 0;
  header_json(metadata, count, entry, [&](std::string_view s) { len += s.size(); });
  const uint64_t padded = (len + 7) / 8 * 8;  // spaces, so the data starts at a multiple of 8
  if (padded > kMaxHeaderBytes) fail("output header would exceed the 100000000-byte limit");
  if (!out) return 8 + padded;
  uint8_t prefix[8];
  for (int i = 0; i < 8; ++i) prefix[i] = static_cast<uint8_t>(padded >> (8 * i));
  out({reinterpret_cast<const char*>(prefix), sizeof prefix});
  uint64_t written = 0;
  header_json(metadata, count, entry, [&](std::string_view s) {
    out(s);
    written += s.size();
  });
  if (written != len) throw Error("internal: the header encoded to different lengths");
  out(std::string_view("        ", padded - len));
  return 8 + padded;
}

std::vector<uint8_t> serialize_header(const std::optional<Metadata>& metadata,
                                      const std::vector<TensorEntry>& tensors) {
  std::vector<uint8_t> bytes;
  header_pieces(
      metadata, tensors.size(),
      [&](size_t k, EntryRef& e) {
        const TensorEntry& t = tensors[k];
        e.name = t.name;
        e.dtype = t.dtype;
        e.shape = t.shape;
        e.begin = t.begin;
        e.end = t.end;
      },
      [&](std::string_view s) { bytes.insert(bytes.end(), s.begin(), s.end()); });
  return bytes;
}

}  // namespace st::safetensors
