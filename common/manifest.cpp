#include "manifest.hpp"

#include <rapidjson/document.h>
#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>

#include <unordered_set>

#include "error.hpp"
#include "json_util.hpp"
#include "stream_format.hpp"

namespace st::stream {

namespace {

using Writer = rapidjson::Writer<rapidjson::StringBuffer>;
using Value = rapidjson::Value;

void put(Writer& w, std::string_view s) { w.String(s.data(), static_cast<rapidjson::SizeType>(s.size())); }
void key(Writer& w, std::string_view s) { w.Key(s.data(), static_cast<rapidjson::SizeType>(s.size())); }

[[noreturn]] void bad(const std::string& what) { fail("invalid manifest: " + what); }

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
  bad("unknown scale layout " + json::quote(s));
}

}  // namespace

std::string_view layout_name(ScaleLayout l) {
  switch (l) {
    case ScaleLayout::PerTensor: return "per-tensor";
    case ScaleLayout::PerRow: return "per-row";
    case ScaleLayout::Block: return "block";
  }
  return "?";
}

long Manifest::find(const std::string& name) const {
  for (size_t i = 0; i < tensors.size(); ++i)
    if (tensors[i].name == name) return static_cast<long>(i);
  return -1;
}

NameIndex::NameIndex(const Manifest& m) : m_(m) {
  index_.reserve(m.tensors.size());
  for (size_t i = 0; i < m.tensors.size(); ++i) index_.emplace(m.tensors[i].name, i);
}

long NameIndex::find(const std::string& name) const {
  auto it = index_.find(name);
  return it == index_.end() ? -1 : static_cast<long>(it->second);
}

size_t NameIndex::position(const std::string& name) const {
  auto it = index_.find(name);
  if (it == index_.end()) throw Error("internal: no tensor " + name + " in the manifest");
  return it->second;
}

const TensorInfo& NameIndex::at(const std::string& name) const { return m_.tensors[position(name)]; }

uint64_t Manifest::total_bytes() const {
  uint64_t n = 0;
  for (const auto& t : tensors) n += t.nbytes;
  return n;
}

std::string encode_manifest(const Manifest& m) {
  rapidjson::StringBuffer sb;
  Writer w(sb);
  w.StartObject();
  key(w, "format");
  put(w, "st-stream");
  key(w, "version");
  put(w, std::to_string(kVersionMajor) + "." + std::to_string(kVersionMinor));
  key(w, "producer");
  put(w, m.producer);
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
  for (const auto& t : m.tensors) {
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
      put(w, t.source);
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
  if (m.matching) {
    const Matching& mt = *m.matching;
    key(w, "matching");
    w.StartObject();
    key(w, "block");
    w.StartArray();
    w.Uint64(mt.block_rows);
    w.Uint64(mt.block_cols);
    w.EndArray();
    key(w, "pairs");
    w.StartArray();
    for (const auto& p : mt.pairs) {
      w.StartObject();
      key(w, "weight");
      put(w, p.weight);
      key(w, "format");
      put(w, dtype_name(p.format));
      if (!p.output.empty()) {
        key(w, "output");
        put(w, p.output);
      }
      if (!p.scale.empty()) {
        key(w, "scale");
        put(w, p.scale);
        key(w, "scale_format");
        put(w, dtype_name(p.scale_format));
        if (!p.scale2.empty()) {
          key(w, "scale2");
          put(w, p.scale2);
        }
        key(w, "convention");
        put(w, p.convention);
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
    for (const auto& d : mt.drop) put(w, d);
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
  return std::string(sb.GetString(), sb.GetSize());
}

Manifest decode_manifest(std::string_view json) {
  if (!json::valid_utf8(json)) bad("not valid UTF-8");
  rapidjson::Document doc;
  if (!json::within_depth(json)) bad("nested more than " + std::to_string(json::kMaxDepth) + " levels deep");
  doc.Parse<rapidjson::kParseIterativeFlag | rapidjson::kParseValidateEncodingFlag>(json.data(), json.size());
  if (doc.HasParseError()) bad("not valid JSON (byte " + std::to_string(doc.GetErrorOffset()) + ")");
  if (!json::strings_valid_utf8(doc)) bad("a string escape is not valid UTF-8 (lone surrogate)");
  if (!doc.IsObject()) bad("not a JSON object");
  if (get_string(member(doc, "format", "manifest"), "format") != "st-stream") bad("format is not 'st-stream'");

  Manifest m;
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

  const Value& ts = member(doc, "tensors", "manifest");
  if (!ts.IsArray()) bad("tensors is not an array");
  std::unordered_set<std::string> names;
  for (const Value& t : ts.GetArray()) {
    if (!t.IsObject()) bad("a tensor entry is not an object");
    TensorInfo info;
    info.name = get_string(member(t, "name", "a tensor entry"), "tensor name");
    const std::string where = "tensor " + json::quote(info.name);
    if (!json::valid_utf8(info.name)) bad(where + ": name is not valid UTF-8");
    if (!names.insert(info.name).second) bad("duplicate tensor name " + json::quote(info.name));
    const std::string dn = get_string(member(t, "dtype", where), where + " dtype");
    auto d = dtype_from_name(dn);
    if (!d) bad(where + ": unknown dtype " + json::quote(dn));
    info.dtype = *d;
    const Value& shape = member(t, "shape", where);
    if (!shape.IsArray()) bad(where + ": shape is not an array");
    for (const Value& v : shape.GetArray()) info.shape.push_back(get_u64(v, where + " shape"));
    info.nbytes = get_u64(member(t, "nbytes", where), where + " nbytes");
    ByteSize size;
    if (tensor_size(info.dtype, info.shape.data(), info.shape.size(), size) != SizeError::None ||
        size.bytes != info.nbytes)
      bad(where + ": nbytes does not match dtype and shape");
    if (auto it = t.FindMember("source"); it != t.MemberEnd()) info.source = get_string(it->value, where + " source");
    m.tensors.push_back(std::move(info));
  }

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
    Matching mt;
    const Value& block = member(mv, "block", "matching");
    if (!block.IsArray() || block.Size() != 2) bad("matching block is not [rows, cols]");
    mt.block_rows = get_u64(block[0], "matching block");
    mt.block_cols = get_u64(block[1], "matching block");
    auto get_dtype = [](const Value& v, const std::string& what) {
      const std::string n = get_string(v, what);
      auto d = dtype_from_name(n);
      if (!d) bad(what + " is not a dtype: " + json::quote(n));
      return *d;
    };
    auto array_of = [&](const char* name) -> const Value& {
      const Value& a = member(mv, name, "matching");
      if (!a.IsArray()) bad(std::string("matching ") + name + " is not an array");
      return a;
    };
    for (const Value& p : array_of("pairs").GetArray()) {
      if (!p.IsObject()) bad("a matching pair is not an object");
      ScalePairing sp;
      sp.weight = get_string(member(p, "weight", "a matching pair"), "pair weight");
      sp.format = get_dtype(member(p, "format", "a matching pair"), "pair format");
      if (auto o = p.FindMember("output"); o != p.MemberEnd()) sp.output = get_string(o->value, "pair output");
      if (auto s = p.FindMember("scale"); s != p.MemberEnd()) {
        sp.scale = get_string(s->value, "pair scale");
        sp.scale_format = get_dtype(member(p, "scale_format", "a matching pair"), "pair scale_format");
        if (auto s2 = p.FindMember("scale2"); s2 != p.MemberEnd()) sp.scale2 = get_string(s2->value, "pair scale2");
        sp.convention = get_string(member(p, "convention", "a matching pair"), "pair convention");
        sp.layout = layout_from(get_string(member(p, "layout", "a matching pair"), "pair layout"));
        if (sp.layout == ScaleLayout::Block) {
          const Value& b = member(p, "block", "a block pair");
          if (!b.IsArray() || b.Size() != 2) bad("pair block is not [rows, cols]");
          sp.block_rows = get_u64(b[0], "pair block");
          sp.block_cols = get_u64(b[1], "pair block");
        }
      }
      mt.pairs.push_back(std::move(sp));
    }
    for (const Value& d : array_of("drop").GetArray()) mt.drop.push_back(get_string(d, "drop entry"));
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
