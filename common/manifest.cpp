#include "manifest.hpp"

#include <rapidjson/document.h>
#include <rapidjson/reader.h>
#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>

#include <algorithm>
#include <cstring>
#include <exception>
#include <memory>

#include "error.hpp"
#include "intern.hpp"
#include "json_util.hpp"
#include "stream_format.hpp"

namespace st::stream {

namespace {

using Value = rapidjson::Value;

// Output stream for rapidjson::Writer that hands the text on in pieces, so
// a manifest of a million tensors (~100 MB) is never held whole.
struct PieceOut {
  using Ch = char;
  static constexpr size_t kPiece = 64u << 10;
  const std::function<void(std::string_view)>& out;
  std::string buf;
  void Put(char c) {
    buf.push_back(c);
    if (buf.size() == kPiece) Flush();
  }
  void Flush() {
    if (!buf.empty()) out(buf);
    buf.clear();
  }
};

// JSON text arriving in pieces, as a RapidJSON input stream. A raw NUL
// byte (never valid JSON) ends the text where it is and is reported, so it
// cannot pass for the end RapidJSON sees in a '\0'.
class PieceInput {
 public:
  using Ch = char;
  explicit PieceInput(const std::function<size_t(char*, size_t)>& more) : more_(more) {}
  Ch Peek() {
    if (at_ == end_) fill();
    return at_ < end_ ? buf_[at_] : '\0';
  }
  Ch Take() {
    const Ch c = Peek();
    if (at_ < end_) {
      ++at_;
      ++taken_;
    }
    return c;
  }
  size_t Tell() const { return taken_; }
  Ch* PutBegin() { return nullptr; }
  void Put(Ch) {}
  void Flush() {}
  size_t PutEnd(Ch*) { return 0; }
  bool saw_nul() const { return nul_; }

 private:
  void fill() {
    if (nul_ || done_) return;
    at_ = 0;
    end_ = more_(buf_, sizeof buf_);
    if (end_ == 0) done_ = true;
    if (const void* z = std::memchr(buf_, 0, end_)) {
      end_ = static_cast<size_t>(static_cast<const char*>(z) - buf_);
      nul_ = true;
    }
  }
  const std::function<size_t(char*, size_t)>& more_;
  char buf_[64u << 10];
  size_t at_ = 0, end_ = 0, taken_ = 0;
  bool nul_ = false, done_ = false;
};

template <class W>
void put(W& w, std::string_view s) { w.String(s.data(), static_cast<rapidjson::SizeType>(s.size())); }
template <class W>
void key(W& w, std::string_view s) { w.Key(s.data(), static_cast<rapidjson::SizeType>(s.size())); }

[[noreturn]] void bad(const std::string& what) { fail("invalid manifest: " + what); }

// A key that one object of `v` has twice (readers differ on which wins:
// RFC 8259 leaves it open), or nullopt. Depth is bounded by the parser.
std::optional<std::string> repeated_key(const Value& v) {
  if (v.IsObject()) {
    std::vector<std::string_view> keys;
    for (auto it = v.MemberBegin(); it != v.MemberEnd(); ++it)
      keys.emplace_back(it->name.GetString(), it->name.GetStringLength());
    std::sort(keys.begin(), keys.end());
    if (auto r = std::adjacent_find(keys.begin(), keys.end()); r != keys.end()) return std::string(*r);
    for (auto it = v.MemberBegin(); it != v.MemberEnd(); ++it)
      if (auto k = repeated_key(it->value)) return k;
  } else if (v.IsArray()) {
    for (const Value& e : v.GetArray())
      if (auto k = repeated_key(e)) return k;
  }
  return std::nullopt;
}

const Value& member(const Value& obj, const char* name, const std::string& where) {
  auto it = obj.FindMember(name);
  if (it == obj.MemberEnd()) bad(where + " has no '" + name + "'");
  return it->value;
}

std::string get_string(const Value& v, const std::string& what) {
  if (!v.IsString()) bad(what + " is not a string");
  return std::string(v.GetString(), v.GetStringLength());
}

uint64_t get_u64(const Value& v, const std::string& what) {
  // RapidJSON keeps integers up to 2^64-1 exact; fractions, exponents,
  // negatives and larger numbers are not Uint64.
  if (!v.IsUint64()) bad(what + " is not a non-negative integer");
  return v.GetUint64();
}

ScaleLayout layout_from(const std::string& s) {
  if (s == "per-tensor") return ScaleLayout::PerTensor;
  if (s == "per-row") return ScaleLayout::PerRow;
  if (s == "block") return ScaleLayout::Block;
  if (s == "mx-swizzled") return ScaleLayout::MxSwizzled;
  bad("unknown scale layout " + json::quote(s));
}

// One entry of the "tensors" array as its SAX events arrive. Fields may
// come in any order, so what is wrong is noted and reported at the end of
// the entry, in the order (and words) a DOM walk would: name first.
struct TensorFields {
  enum class Got { Absent, Ok, Wrong };
  Got name = Got::Absent, dtype = Got::Absent, shape = Got::Absent, nbytes = Got::Absent, source = Got::Absent;
  bool shape_element_wrong = false;  // an array, but not of integers
  std::string dtype_name;
  TensorInfo info;
};

// The SAX events of one JSON value, replayed into a Document of its own.
// An element of matching's pairs or drop array is made a small DOM, checked
// and converted as it arrives, and dropped: a DOM of every pair cost some
// 300 bytes a pair.
class ValueRecorder {
 public:
  enum class Ev : uint8_t { Null, Bool, Uint64, Int64, Double, String, Key, StartObject, EndObject, StartArray, EndArray };
  void clear() {
    events_.clear();
    text_.clear();
  }
  void add(Ev ev, uint64_t u = 0, double d = 0) { events_.push_back({ev, u, d, 0, 0}); }
  void add_text(Ev ev, const char* s, size_t n) {
    events_.push_back({ev, 0, 0, text_.size(), n});
    text_.append(s, n);
  }
  template <class H>
  bool replay(H& h) const {
    for (const Event& e : events_) {
      bool ok = true;
      const auto n = static_cast<rapidjson::SizeType>(e.len);
      switch (e.ev) {
        case Ev::Null: ok = h.Null(); break;
        case Ev::Bool: ok = h.Bool(e.u != 0); break;
        case Ev::Uint64: ok = h.Uint64(e.u); break;
        case Ev::Int64: ok = h.Int64(static_cast<int64_t>(e.u)); break;
        case Ev::Double: ok = h.Double(e.d); break;
        case Ev::String: ok = h.String(text_.data() + e.at, n, true); break;
        case Ev::Key: ok = h.Key(text_.data() + e.at, n, true); break;
        case Ev::StartObject: ok = h.StartObject(); break;
        case Ev::EndObject: ok = h.EndObject(static_cast<rapidjson::SizeType>(e.u)); break;
        case Ev::StartArray: ok = h.StartArray(); break;
        case Ev::EndArray: ok = h.EndArray(static_cast<rapidjson::SizeType>(e.u)); break;
      }
      if (!ok) return false;
    }
    return true;
  }

 private:
  struct Event {
    Ev ev;
    uint64_t u;
    double d;
    size_t at, len;  // a string's bytes in text_
  };
  std::vector<Event> events_;
  std::string text_;
};

Dtype get_dtype(const Value& v, const std::string& what) {
  const std::string n = get_string(v, what);
  auto d = dtype_from_name(n);
  if (!d) bad(what + " is not a dtype: " + json::quote(n));
  return *d;
}

// Tensor names of the matching as positions in the manifest's table.
class PositionOf {
 public:
  explicit PositionOf(const TensorTable& t) : index_(t) {}
  uint32_t operator()(const Value& v, const std::string& what) const {
    const std::string name = get_string(v, what);
    const long i = index_.find(name);
    if (i < 0) bad("matching names " + what + " " + json::quote(name) + ", which is not in the manifest");
    return static_cast<uint32_t>(i);
  }

 private:
  NameIndex index_;
};

// One element of matching.pairs (a DOM of its own, or of the whole
// manifest's) as a pairing; a new output name goes to mt.outputs.
ScalePairing pair_from(const Value& p, const PositionOf& position, Matching& mt) {
  if (!p.IsObject()) bad("a matching pair is not an object");
  ScalePairing sp;
  sp.weight = position(member(p, "weight", "a matching pair"), "pair weight");
  sp.format = get_dtype(member(p, "format", "a matching pair"), "pair format");
  if (auto o = p.FindMember("output"); o != p.MemberEnd()) {
    std::string output = get_string(o->value, "pair output");
    if (!output.empty()) {  // "" is the weight's own name, as when absent
      sp.output = static_cast<int32_t>(mt.outputs.size());
      mt.outputs.push_back(std::move(output));
    }
  }
  if (auto s = p.FindMember("scale"); s != p.MemberEnd()) {
    sp.scale = static_cast<int32_t>(position(s->value, "pair scale"));
    sp.scale_format = get_dtype(member(p, "scale_format", "a matching pair"), "pair scale_format");
    if (auto s2 = p.FindMember("scale2"); s2 != p.MemberEnd()) sp.scale2 = static_cast<int32_t>(position(s2->value, "pair scale2"));
    sp.convention = get_string(member(p, "convention", "a matching pair"), "pair convention");
    sp.layout = layout_from(get_string(member(p, "layout", "a matching pair"), "pair layout"));
    if (sp.layout == ScaleLayout::Block) {
      const Value& b = member(p, "block", "a block pair");
      if (!b.IsArray() || b.Size() != 2) bad("pair block is not [rows, cols]");
      const uint64_t r = get_u64(b[0], "pair block"), c = get_u64(b[1], "pair block");
      if (r > UINT32_MAX || c > UINT32_MAX) bad("pair block is larger than 2^32-1");
      sp.block_rows = static_cast<uint32_t>(r);
      sp.block_cols = static_cast<uint32_t>(c);
    } else if (sp.layout == ScaleLayout::MxSwizzled) {
      sp.block_rows = 1;  // groups of 32 along a row, by definition
      sp.block_cols = 32;
    }
  }
  return sp;
}

// SAX handler for a whole manifest: the "tensors" array of the root object
// becomes rows of the table directly, everything else is forwarded to a
// Document. A manifest of a million tensors then never exists as a DOM
// (which costs several times the JSON text).
class ManifestHandler {
 public:
  ManifestHandler(rapidjson::Document& doc, TensorTable& out) : doc_(doc), out_(out) {}
  const std::string& error() const { return error_; }
  // What the conversion of the first bad collected element threw
  // (st::Error), or null.
  std::exception_ptr thrown() const { return thrown_; }
  // The pairs and drop entries converted as they arrived (none when the
  // matching came before the tensors: then they are in the Document).
  Matching take_collected() { return std::move(collected_); }

  bool Null() {
    if (collecting()) return scalar(ValueRecorder::Ev::Null);
    return in_tensors() ? wrong_value() : doc_.Null();
  }
  bool Bool(bool b) {
    if (collecting()) return scalar(ValueRecorder::Ev::Bool, b);
    return in_tensors() ? wrong_value() : doc_.Bool(b);
  }
  bool Int(int i) { return Int64(i); }
  bool Int64(int64_t i) {
    if (collecting()) return scalar(ValueRecorder::Ev::Int64, static_cast<uint64_t>(i));
    return in_tensors() ? wrong_value() : doc_.Int64(i);
  }
  bool Double(double d) {
    if (collecting()) return scalar(ValueRecorder::Ev::Double, 0, d);
    return in_tensors() ? wrong_value() : doc_.Double(d);
  }
  bool RawNumber(const char*, rapidjson::SizeType, bool) { return false; }  // not asked for
  bool Uint(unsigned u) { return Uint64(u); }
  bool Uint64(uint64_t u) {
    if (collecting()) return scalar(ValueRecorder::Ev::Uint64, u);
    return in_tensors() ? number(u) : doc_.Uint64(u);
  }
  bool String(const char* str, rapidjson::SizeType n, bool copy) {
    if (collecting()) {
      if (!json::valid_utf8(std::string_view(str, n))) return fail_utf8();
      if (collect_depth_ == 0) rec_.clear();
      rec_.add_text(ValueRecorder::Ev::String, str, n);
      return collect_depth_ == 0 ? finish_element() : true;
    }
    if (!in_tensors()) return doc_.String(str, n, copy);
    const std::string_view v(str, n);
    if (!json::valid_utf8(v)) return fail_utf8();
    if (skip_ > 0 || level_ != 2) return wrong_value();
    switch (field_) {
      case Field::Name: set(cur_.name, [&] { cur_.info.name.assign(v); }); break;
      case Field::Dtype: set(cur_.dtype, [&] { cur_.dtype_name.assign(v); }); break;
      case Field::Source: set(cur_.source, [&] { cur_.info.source = shared_source(v); }); break;
      case Field::Shape:
      case Field::Nbytes: wrong_value(); break;
      case Field::Other: break;
    }
    return true;
  }
  bool Key(const char* str, rapidjson::SizeType n, bool copy) {
    if (collecting()) {
      if (!json::valid_utf8(std::string_view(str, n))) return fail_utf8();
      rec_.add_text(ValueRecorder::Ev::Key, str, n);
      return true;
    }
    if (!in_tensors()) {
      const std::string_view k(str, n);
      if (depth_ == 1) {
        root_key_tensors_ = k == "tensors";
        root_key_matching_ = k == "matching";
      }
      if (depth_ == 2 && in_matching_) matching_key_ = k == "pairs" ? Collect::Pairs : k == "drop" ? Collect::Drop : Collect::None;
      return doc_.Key(str, n, copy);
    }
    const std::string_view k(str, n);
    if (!json::valid_utf8(k)) return fail_utf8();
    if (skip_ == 0 && level_ == 2) {
      field_ = k == "name" ? Field::Name : k == "dtype" ? Field::Dtype : k == "shape" ? Field::Shape
             : k == "nbytes" ? Field::Nbytes : k == "source" ? Field::Source : Field::Other;
      // Readers differ on which of two equal keys wins (RFC 8259 leaves it
      // open), so a repeated one is an error, as in safetensors headers.
      if (const TensorFields::Got* got = got_of(field_); got && *got != TensorFields::Got::Absent)
        return fail("a tensor entry has the key " + json::quote(k) + " twice");
    }
    return true;
  }
  bool StartObject() {
    if (!deeper()) return false;
    if (collecting()) return open_collected(ValueRecorder::Ev::StartObject);
    if (!in_tensors()) {
      ++depth_;
      if (depth_ == 2) in_matching_ = root_key_matching_;
      return doc_.StartObject();
    }
    if (skip_ > 0 || level_ > 1) return open_nested();
    level_ = 2;  // a tensor entry
    cur_ = TensorFields();
    field_ = Field::Other;
    return true;
  }
  bool EndObject(rapidjson::SizeType n) {
    if (collecting()) return close_collected(ValueRecorder::Ev::EndObject, n);
    if (!in_tensors()) {
      if (depth_ == 2) in_matching_ = false;
      --depth_;
      return doc_.EndObject(n);
    }
    if (skip_ > 0) return close_nested();
    level_ = 1;
    return finish_entry();
  }
  bool StartArray() {
    if (!deeper()) return false;
    if (collecting()) return open_collected(ValueRecorder::Ev::StartArray);
    if (!in_tensors()) {
      if (depth_ == 1 && root_key_tensors_) {
        if (tensors_seen_) return fail("tensors appears twice");
        tensors_seen_ = true;
        level_ = 1;  // inside the tensors array; the Document gets it empty
        return doc_.StartArray();
      }
      ++depth_;
      // matching's pairs and drop, once every tensor is in: each element is
      // converted as it arrives; the Document gets the array empty.
      if (in_matching_ && depth_ == 3 && matching_key_ != Collect::None && tensors_seen_ && level_ == 0) {
        collecting_ = matching_key_;
        collect_depth_ = 0;
      }
      return doc_.StartArray();
    }
    if (level_ == 2 && skip_ == 0 && field_ == Field::Shape && cur_.shape == TensorFields::Got::Absent) {
      cur_.shape = TensorFields::Got::Ok;
      in_shape_ = true;
      dims_.clear();
      return true;
    }
    return open_nested();
  }
  bool EndArray(rapidjson::SizeType n) {
    if (collecting()) {
      if (collect_depth_ > 0) return close_collected(ValueRecorder::Ev::EndArray, n);
      collecting_ = Collect::None;  // the end of pairs or drop
      --depth_;
      return doc_.EndArray(0);
    }
    if (!in_tensors()) {
      --depth_;
      return doc_.EndArray(n);
    }
    if (level_ == 1 && skip_ == 0) {  // the end of the tensors array
      level_ = 0;
      root_key_tensors_ = false;
      return doc_.EndArray(0);
    }
    if (in_shape_ && skip_ == 0) {
      in_shape_ = false;
      field_ = Field::Other;
      cur_.info.shape = Shape(dims_);
      return true;
    }
    return close_nested();
  }

 private:
  enum class Field { Name, Dtype, Shape, Nbytes, Source, Other };

  enum class Collect { None, Pairs, Drop };

  bool in_tensors() const { return level_ > 0; }
  bool collecting() const { return collecting_ != Collect::None; }
  // An element of pairs or drop: recorded, then made a DOM, checked and
  // converted when it is complete.
  bool scalar(ValueRecorder::Ev ev, uint64_t u = 0, double d = 0) {
    if (collect_depth_ == 0) rec_.clear();
    rec_.add(ev, u, d);
    return collect_depth_ == 0 ? finish_element() : true;
  }
  bool open_collected(ValueRecorder::Ev ev) {
    if (collect_depth_ == 0) rec_.clear();
    ++collect_depth_;
    rec_.add(ev);
    return true;
  }
  bool close_collected(ValueRecorder::Ev ev, rapidjson::SizeType n) {
    rec_.add(ev, n);
    return --collect_depth_ == 0 ? finish_element() : true;
  }
  bool finish_element() {
    pool_.Clear();
    rapidjson::Document elem(&pool_);
    auto replay = [&](rapidjson::Document& d) { return rec_.replay(d); };
    elem.Populate(replay);
    try {
      if (const auto k = repeated_key(elem)) bad("an object has the key " + json::quote(*k) + " twice");
      if (!position_) position_ = std::make_unique<PositionOf>(out_);
      // Room for the most there can be (pages never written cost nothing):
      // no doubling of a vector of a million entries.
      if (collecting_ == Collect::Drop && collected_.drop.capacity() == 0) collected_.drop.reserve(out_.size());
      if (collecting_ == Collect::Pairs && collected_.pairs.capacity() == 0) {
        // Room for a pair per tensor that may be a weight (FP8, or U8/I8
        // holding FP8): no doubling of a vector of a million pairs.
        size_t weights = 0;
        for (size_t i = 0; i < out_.size(); ++i) {
          const Dtype d = out_.dtype(i);
          weights += is_fp8_weight_dtype(d) || is_fp8_container_dtype(d);
        }
        collected_.pairs.reserve(weights);
      }
      if (collecting_ == Collect::Pairs) collected_.pairs.push_back(pair_from(elem, *position_, collected_));
      else collected_.drop.push_back((*position_)(elem, "drop entry"));
    } catch (const Error&) {
      // Reported where the document path would report it (after the
      // syntax and the manifest's other fields): parsing goes on.
      if (!thrown_) thrown_ = std::current_exception();
    }
    return true;
  }

  // Nesting is limited (json::kMaxDepth) so that walking the Document
  // cannot exhaust the stack; the parser itself is iterative.
  bool deeper() {
    const int open = depth_ + (level_ > 0 ? 1 : 0) + (level_ > 1 ? 1 : 0) + (in_shape_ ? 1 : 0) + skip_ + collect_depth_;
    if (open + 1 > json::kMaxDepth) return fail("nested more than " + std::to_string(json::kMaxDepth) + " levels deep");
    return true;
  }

  TensorFields::Got* got_of(Field f) {
    return f == Field::Name ? &cur_.name : f == Field::Dtype ? &cur_.dtype : f == Field::Shape ? &cur_.shape
         : f == Field::Nbytes ? &cur_.nbytes : f == Field::Source ? &cur_.source : nullptr;
  }
  template <class F>
  void set(TensorFields::Got& got, F&& assign) {
    if (got != TensorFields::Got::Absent) return;  // a repeated key fails in Key() first
    got = TensorFields::Got::Ok;
    assign();
  }
  // A value the current field cannot have (the entry itself, if the array
  // holds something other than objects).
  bool wrong_value() {
    if (level_ == 1 && skip_ == 0) return fail("a tensor entry is not an object");
    if (skip_ > 0) return true;
    if (in_shape_) {
      cur_.shape = TensorFields::Got::Wrong;
      cur_.shape_element_wrong = true;
      return true;
    }
    TensorFields::Got* got = got_of(field_);
    if (got && *got == TensorFields::Got::Absent) *got = TensorFields::Got::Wrong;
    return true;
  }
  bool number(uint64_t u) {
    if (skip_ == 0 && in_shape_) {
      dims_.push_back(u);
      return true;
    }
    if (skip_ == 0 && level_ == 2 && field_ == Field::Nbytes) {
      set(cur_.nbytes, [&] { cur_.info.nbytes = u; });
      return true;
    }
    return wrong_value();
  }
  // An object or array where a known field wants a scalar, or inside an
  // unknown field: skipped (nesting is bounded by within_depth()).
  bool open_nested() {
    if (level_ == 1 && skip_ == 0) return fail("a tensor entry is not an object");
    if (skip_ == 0) wrong_value();
    ++skip_;
    return true;
  }
  bool close_nested() {
    --skip_;
    return true;
  }
  bool finish_entry() {
    using Got = TensorFields::Got;
    TensorInfo& info = cur_.info;
    if (cur_.name == Got::Absent) return fail("a tensor entry has no 'name'");
    if (cur_.name == Got::Wrong) return fail("tensor name is not a string");
    const std::string where = "tensor " + json::quote(info.name);
    auto need = [&](Got g, const char* field, const std::string& wrong) {
      if (g == Got::Absent) return fail(where + " has no '" + field + "'");
      if (g == Got::Wrong) return fail(wrong);
      return true;
    };
    if (!need(cur_.dtype, "dtype", where + " dtype is not a string")) return false;
    auto d = dtype_from_name(cur_.dtype_name);
    if (!d) return fail(where + ": unknown dtype " + json::quote(cur_.dtype_name));
    info.dtype = *d;
    if (cur_.shape == Got::Absent) return fail(where + " has no 'shape'");
    if (cur_.shape == Got::Wrong)
      return fail(cur_.shape_element_wrong ? where + " shape is not a non-negative integer" : where + ": shape is not an array");
    if (!need(cur_.nbytes, "nbytes", where + " nbytes is not a non-negative integer")) return false;
    ByteSize size;
    if (tensor_size(info.dtype, info.shape.data(), info.shape.size(), size) != SizeError::None || size.bytes != info.nbytes)
      return fail(where + ": nbytes does not match dtype and shape");
    if (cur_.source == Got::Wrong) return fail(where + " source is not a string");
    try {
      out_.add(info.name, info.dtype, info.shape, info.source);  // its size was checked just above
    } catch (const Error& e) {  // more sources than a table holds
      return fail(e.what());
    }
    return true;
  }
  bool fail(const std::string& what) {
    if (error_.empty()) error_ = what;
    return false;
  }
  bool fail_utf8() { return fail("a string escape is not valid UTF-8 (lone surrogate)"); }

  rapidjson::Document& doc_;
  TensorTable& out_;
  SharedString last_source_;  // tensors of one file follow each other: no lock and pool search for each

  SharedString shared_source(std::string_view v) {
    if (last_source_.str() != v) last_source_ = SharedString(std::string(v));
    return last_source_;
  }
  std::string error_;
  int depth_ = 0;            // open containers of the Document
  bool root_key_matching_ = false;
  bool in_matching_ = false;  // directly in the root's "matching" object
  Collect matching_key_ = Collect::None;  // the key just read there
  Collect collecting_ = Collect::None;
  int collect_depth_ = 0;    // open containers of the element being recorded
  ValueRecorder rec_;
  rapidjson::MemoryPoolAllocator<> pool_;  // the element's DOM, reused
  std::unique_ptr<PositionOf> position_;   // made when the first element is converted
  Matching collected_;
  std::exception_ptr thrown_;
  bool root_key_tensors_ = false;
  bool tensors_seen_ = false;
  int level_ = 0;            // 0 outside the tensors array, 1 in it, 2 in an entry
  int skip_ = 0;             // nesting inside a value being skipped
  bool in_shape_ = false;
  std::vector<uint64_t> dims_;  // the shape being read (interned at its end)
  Field field_ = Field::Other;
  TensorFields cur_;
};

}  // namespace

std::string_view layout_name(ScaleLayout l) {
  switch (l) {
    case ScaleLayout::PerTensor: return "per-tensor";
    case ScaleLayout::PerRow: return "per-row";
    case ScaleLayout::Block: return "block";
    case ScaleLayout::MxSwizzled: return "mx-swizzled";
  }
  return "?";
}

NameIndex::NameIndex(const TensorTable& tensors)
    : tensors_(tensors),
      by_name_(safetensors::positions_by_name(tensors.size(), [&](size_t i) { return tensors.name(i); })) {}

long NameIndex::find(std::string_view name) const {
  return safetensors::find_by_name(by_name_, [&](size_t i) { return tensors_.name(i); }, name);
}

size_t NameIndex::position(std::string_view name) const {
  const long i = find(name);
  if (i < 0) throw Error("internal: no tensor " + std::string(name) + " in the manifest");
  return static_cast<size_t>(i);
}

TensorView NameIndex::at(std::string_view name) const { return tensors_[position(name)]; }

uint64_t Manifest::total_bytes() const {
  uint64_t n = 0;
  for (size_t i = 0; i < tensors.size(); ++i) n += tensors.nbytes(i);
  return n;
}

namespace {

template <class W>
void write_manifest(W& w, const Manifest& m, const ManifestChanges* changes) {
  w.StartObject();
  key(w, "format");
  put(w, "st-stream");
  key(w, "version");
  put(w, std::to_string(kVersionMajor) + "." + std::to_string(kVersionMinor));
  key(w, "producer");
  put(w, changes ? changes->producer : m.producer);
  key(w, "metadata");
  if (m.metadata) {
    w.StartObject();
    for (const auto& [k, v] : *m.metadata) {
      key(w, k);
      put(w, v);
    }
    w.EndObject();
  } else {
    w.Null();
  }
  key(w, "tensors");
  w.StartArray();
  const bool replaced = changes && changes->tensor_at;
  const size_t count = replaced ? changes->count : m.tensors.size();
  for (size_t k = 0; k < count; ++k) {
    const TensorView t = replaced ? changes->tensor_at(k) : m.tensors[k];
    w.StartObject();
    key(w, "name");
    put(w, t.name);
    key(w, "dtype");
    put(w, dtype_name(t.dtype));
    key(w, "shape");
    w.StartArray();
    for (uint64_t d : t.shape) w.Uint64(d);
    w.EndArray();
    key(w, "nbytes");
    w.Uint64(t.nbytes);
    if (!t.source.empty()) {
      key(w, "source");
      put(w, t.source.str());
    }
    w.EndObject();
  }
  w.EndArray();
  if (!m.quantization_config.empty()) {
    key(w, "quantization_config");
    w.RawValue(m.quantization_config.data(), m.quantization_config.size(), rapidjson::kObjectType);
  }
  if (!m.shards.empty()) {
    key(w, "shards");
    w.StartArray();
    for (const auto& f : m.shards) put(w, f);
    w.EndArray();
  }
  if (!m.model_dir.empty()) {
    key(w, "model_dir");
    put(w, m.model_dir);
  }
  if (m.converted_to) {
    key(w, "converted_to");
    put(w, dtype_name(*m.converted_to));
  }
  const Matching* matching = changes && changes->matching ? changes->matching : m.matching ? &*m.matching : nullptr;
  if (matching) {
    const Matching& mt = *matching;
    key(w, "matching");
    w.StartObject();
    key(w, "block");
    w.StartArray();
    w.Uint64(mt.block_rows);
    w.Uint64(mt.block_cols);
    w.EndArray();
    key(w, "pairs");
    w.StartArray();
    // Positions are in m.tensors (the input's table when a stage replaces
    // the tensors it writes).
    const TensorTable& ts = m.tensors;
    for (const auto& p : mt.pairs) {
      w.StartObject();
      key(w, "weight");
      put(w, ts.name(p.weight));
      key(w, "format");
      put(w, dtype_name(p.format));
      if (p.output != ScalePairing::kNone) {
        key(w, "output");
        put(w, mt.outputs[static_cast<size_t>(p.output)]);
      }
      if (p.has_scale()) {
        key(w, "scale");
        put(w, ts.name(static_cast<size_t>(p.scale)));
        key(w, "scale_format");
        put(w, dtype_name(p.scale_format));
        if (p.scale2 != ScalePairing::kNone) {
          key(w, "scale2");
          put(w, ts.name(static_cast<size_t>(p.scale2)));
        }
        key(w, "convention");
        put(w, p.convention.str());
        key(w, "layout");
        put(w, layout_name(p.layout));
        if (p.layout == ScaleLayout::Block) {
          key(w, "block");
          w.StartArray();
          w.Uint64(p.block_rows);
          w.Uint64(p.block_cols);
          w.EndArray();
        }
      }
      w.EndObject();
    }
    w.EndArray();
    key(w, "drop");
    w.StartArray();
    for (uint32_t d : mt.drop) put(w, ts.name(d));
    w.EndArray();
    key(w, "rename");
    w.StartArray();
    for (const auto& r : mt.renames) {
      w.StartObject();
      key(w, "from");
      put(w, r.from);
      key(w, "to");
      put(w, r.to);
      w.EndObject();
    }
    w.EndArray();
    key(w, "metadata_edits");
    w.StartArray();
    for (const auto& e : mt.metadata_edits) {
      w.StartObject();
      key(w, "key");
      put(w, e.key);
      key(w, "value");
      if (e.value) put(w, *e.value);
      else w.Null();
      w.EndObject();
    }
    w.EndArray();
    key(w, "problems");
    w.StartArray();
    for (const auto& p : mt.problems) {
      w.StartObject();
      key(w, "kind");
      put(w, p.kind);
      key(w, "tensor");
      put(w, p.tensor);
      key(w, "detail");
      put(w, p.detail);
      w.EndObject();
    }
    w.EndArray();
    w.EndObject();
  }
  w.EndObject();
}

}  // namespace

std::string encode_manifest(const Manifest& m, const ManifestChanges* changes) {
  size_t len = 0;  // sized first: no growing buffer for a big manifest
  encode_manifest_pieces(m, changes, [&](std::string_view s) { len += s.size(); });
  std::string out;
  out.reserve(len);
  encode_manifest_pieces(m, changes, [&](std::string_view s) { out.append(s); });
  return out;
}

void encode_manifest_pieces(const Manifest& m, const ManifestChanges* changes,
                            const std::function<void(std::string_view)>& out) {
  PieceOut to{out, {}};
  to.buf.reserve(PieceOut::kPiece);
  rapidjson::Writer<PieceOut> w(to);
  write_manifest(w, m, changes);
  to.Flush();
}

Manifest decode_manifest(std::string_view json) {
  size_t at = 0;
  return decode_manifest([&](char* buf, size_t n) {
    n = std::min(n, json.size() - at);
    if (n) std::memcpy(buf, json.data() + at, n);
    at += n;
    return n;
  });
}

// Text outside strings that is not ASCII is a syntax error, strings are
// validated as UTF-8 by the parser (kParseValidateEncodingFlag) and, after
// unescaping, by json::valid_utf8; nesting is limited by the handler.
Manifest decode_manifest(const std::function<size_t(char*, size_t)>& more) {
  Manifest m;
  // No room is reserved from the frame's length: memory follows the
  // entries that arrive, not what a frame claims.
  rapidjson::Document doc;
  rapidjson::Reader reader;
  ManifestHandler handler(doc, m.tensors);
  PieceInput in(more);
  auto generate = [&](rapidjson::Document&) {
    return !reader.Parse<rapidjson::kParseIterativeFlag | rapidjson::kParseValidateEncodingFlag>(in, handler).IsError();
  };
  doc.Populate(generate);
  if (in.saw_nul()) bad("contains a NUL byte (not JSON)");
  if (!handler.error().empty()) bad(handler.error());
  if (reader.HasParseError()) {
    if (reader.GetParseErrorCode() == rapidjson::kParseErrorStringInvalidEncoding) bad("not valid UTF-8");
    bad("not valid JSON (byte " + std::to_string(reader.GetErrorOffset()) + ")");
  }
  if (!json::strings_valid_utf8(doc)) bad("a string escape is not valid UTF-8 (lone surrogate)");
  if (!doc.IsObject()) bad("not a JSON object");
  if (const auto k = repeated_key(doc)) bad("an object has the key " + json::quote(*k) + " twice");
  if (get_string(member(doc, "format", "manifest"), "format") != "st-stream") bad("format is not 'st-stream'");

  m.producer = get_string(member(doc, "producer", "manifest"), "producer");
  const Value& md = member(doc, "metadata", "manifest");
  if (md.IsObject()) {
    m.metadata.emplace();
    for (auto it = md.MemberBegin(); it != md.MemberEnd(); ++it)
      m.metadata->emplace_back(std::string(it->name.GetString(), it->name.GetStringLength()),
                               get_string(it->value, "metadata value"));
  } else if (!md.IsNull()) {
    bad("metadata is neither an object nor null");
  }

  // The entries themselves were checked and built by the handler.
  if (!member(doc, "tensors", "manifest").IsArray()) bad("tensors is not an array");
  if (const auto twice = safetensors::repeated_name(m.tensors.size(), [&](size_t i) { return m.tensors.name(i); }))
    bad("duplicate tensor name " + json::quote(*twice));

  if (auto it = doc.FindMember("quantization_config"); it != doc.MemberEnd() && !it->value.IsNull()) {
    if (!it->value.IsObject()) bad("quantization_config is not an object");
    rapidjson::StringBuffer qb;  // within kMaxDepth: Accept's recursion is bounded
    rapidjson::Writer<rapidjson::StringBuffer> qw(qb);
    it->value.Accept(qw);
    m.quantization_config.assign(qb.GetString(), qb.GetSize());
  }

  if (auto it = doc.FindMember("shards"); it != doc.MemberEnd()) {
    if (!it->value.IsArray()) bad("shards is not an array");
    for (const Value& f : it->value.GetArray()) m.shards.push_back(get_string(f, "a shard"));
    // Each tensor's source is one of them (§5): st-pack --keep-sharding
    // makes one output file per source.
    std::vector<std::string_view> files(m.shards.begin(), m.shards.end());
    std::sort(files.begin(), files.end());
    const std::string* last = nullptr;
    for (const auto& t : m.tensors) {
      const std::string& s = t.source.str();
      if (s.empty() || (last && *last == s)) continue;
      if (!std::binary_search(files.begin(), files.end(), std::string_view(s)))
        bad("tensor " + json::quote(t.name) + " has source " + json::quote(s) + ", which is not one of shards");
      last = &s;
    }
  }
  if (auto it = doc.FindMember("model_dir"); it != doc.MemberEnd()) m.model_dir = get_string(it->value, "model_dir");
  if (auto it = doc.FindMember("converted_to"); it != doc.MemberEnd()) {
    const std::string n = get_string(it->value, "converted_to");
    auto d = dtype_from_name(n);
    if (!d || (*d != Dtype::BF16 && *d != Dtype::F16 && *d != Dtype::F32))
      bad("converted_to is not BF16, F16 or F32: " + json::quote(n));
    m.converted_to = *d;
  }

  if (auto it = doc.FindMember("matching"); it != doc.MemberEnd()) {
    const Value& mv = it->value;
    if (!mv.IsObject()) bad("matching is not an object");
    // Pairs and drop entries were converted as they arrived, unless the
    // matching came before the tensors: then they are converted here.
    Matching mt = handler.take_collected();
    const Value& block = member(mv, "block", "matching");
    if (!block.IsArray() || block.Size() != 2) bad("matching block is not [rows, cols]");
    mt.block_rows = get_u64(block[0], "matching block");
    mt.block_cols = get_u64(block[1], "matching block");
    auto array_of = [&](const char* name) -> const Value& {
      const Value& a = member(mv, name, "matching");
      if (!a.IsArray()) bad(std::string("matching ") + name + " is not an array");
      return a;
    };
    const Value& pairs = array_of("pairs");
    const Value& drop = array_of("drop");
    if (handler.thrown()) std::rethrow_exception(handler.thrown());  // a collected pair or drop entry
    if (!pairs.Empty() || !drop.Empty()) {
      const PositionOf position(m.tensors);
      mt.pairs.reserve(mt.pairs.size() + pairs.Size());  // entries that arrived, not a claimed count
      for (const Value& p : pairs.GetArray()) mt.pairs.push_back(pair_from(p, position, mt));
      for (const Value& d : drop.GetArray()) mt.drop.push_back(position(d, "drop entry"));
    }
    for (const Value& r : array_of("rename").GetArray()) {
      if (!r.IsObject()) bad("a rename is not an object");
      mt.renames.push_back({get_string(member(r, "from", "a rename"), "rename from"),
                            get_string(member(r, "to", "a rename"), "rename to")});
    }
    for (const Value& e : array_of("metadata_edits").GetArray()) {
      if (!e.IsObject()) bad("a metadata edit is not an object");
      MetadataEdit me;
      me.key = get_string(member(e, "key", "a metadata edit"), "metadata edit key");
      const Value& v = member(e, "value", "a metadata edit");
      if (!v.IsNull()) me.value = get_string(v, "metadata edit value");
      mt.metadata_edits.push_back(std::move(me));
    }
    for (const Value& p : array_of("problems").GetArray()) {
      if (!p.IsObject()) bad("a problem is not an object");
      mt.problems.push_back({get_string(member(p, "kind", "a problem"), "problem kind"),
                             get_string(member(p, "tensor", "a problem"), "problem tensor"),
                             get_string(member(p, "detail", "a problem"), "problem detail")});
    }
    m.matching = std::move(mt);
  }
  return m;
}

}  // namespace st::stream
