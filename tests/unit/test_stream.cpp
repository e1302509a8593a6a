// st::stream Writer/Reader against docs/stream-format.md: round trips through
// memory (also one byte per read), the byte layout checked field by field by
// an independent parser, hand-built streams written from the spec alone,
// detection of every single-byte flip and every truncation, and ABORT.
#include <rapidjson/document.h>
#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>
#include <xxhash.h>

#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include <sys/resource.h>

#include "catch.hpp"
#include "error.hpp"
#include "hash.hpp"
#include "io.hpp"
#include "stream.hpp"

using st::Dtype;
namespace stream = st::stream;
using Bytes = std::vector<uint8_t>;

namespace {

// ------------------------------------------------------------ primitives

uint64_t xxh(const void* p, size_t n) {
  static const uint8_t dummy = 0;
  return XXH3_64bits(n ? p : &dummy, n);
}
uint64_t xxh(const Bytes& b) { return xxh(b.data(), b.size()); }

uint64_t rd(const uint8_t* p, int n) {
  uint64_t v = 0;
  for (int i = 0; i < n; ++i) v |= uint64_t(p[i]) << (8 * i);
  return v;
}
void put(Bytes& b, uint64_t v, int n) {
  for (int i = 0; i < n; ++i) b.push_back(uint8_t(v >> (8 * i)));
}
Bytes str_bytes(const std::string& s) { return Bytes(s.begin(), s.end()); }

// Tensor_Checksum (§6): XXH3-64 of the tensor's DATA checksums, each the
// XXH3-64 of one chunk's data, as u64 LE, in order.
uint64_t chain(const std::vector<Bytes>& chunks) {
  Bytes hashes;
  for (const Bytes& c : chunks) put(hashes, xxh(c), 8);
  return xxh(hashes);
}
uint64_t chain_chunks(const Bytes& d, size_t chunk) {
  std::vector<Bytes> parts;
  for (size_t i = 0; i < d.size(); i += chunk)
    parts.emplace_back(d.begin() + long(i), d.begin() + long(std::min(d.size(), i + chunk)));
  return chain(parts);
}

// ------------------------------------------------- independent stream parser

struct Frame {
  size_t pos = 0;
  uint32_t type = 0, flags = 0;
  uint64_t len = 0, checksum = 0;
  Bytes payload;
};

// Parses a whole stream by the spec, checking the rules that are visible in
// the bytes (magic, version, checksums, flags, padding, alignment). Returns
// an error description, or "" when the layout is valid.
std::string parse_layout(const Bytes& s, std::vector<Frame>& frames) {
  frames.clear();
  if (s.size() < 24) return "short preamble";
  const uint8_t magic[8] = {0x89, 'S', 'T', 'S', 0x0D, 0x0A, 0x1A, 0x0A};
  if (std::memcmp(s.data(), magic, 8) != 0) return "magic";
  if (rd(&s[8], 2) != 1) return "major version";
  if (rd(&s[10], 2) != 2) return "minor version";  // this writer implements 1.2
  if (rd(&s[12], 4) != 0) return "preamble reserved";
  if (rd(&s[16], 8) != xxh(s.data(), 16)) return "preamble checksum";
  size_t p = 24;
  while (p < s.size()) {
    if (p % 8 != 0) return "frame not 8-aligned at " + std::to_string(p);
    if (s.size() - p < 24) return "short frame header at " + std::to_string(p);
    Frame f;
    f.pos = p;
    f.type = uint32_t(rd(&s[p], 4));
    f.flags = uint32_t(rd(&s[p + 4], 4));
    f.len = rd(&s[p + 8], 8);
    f.checksum = rd(&s[p + 16], 8);
    if (f.flags != 0) return "flags at " + std::to_string(p);
    if (f.len > s.size() - p - 24) return "payload past end at " + std::to_string(p);
    f.payload.assign(s.begin() + long(p + 24), s.begin() + long(p + 24 + f.len));
    Bytes h(s.begin() + long(p), s.begin() + long(p + 16));
    // A DATA frame's checksum covers its 24-byte sub-header; the sub-header's
    // data checksum covers the data.
    const size_t hashed = f.type == stream::kFrameData ? std::min<size_t>(f.payload.size(), 24) : f.payload.size();
    h.insert(h.end(), f.payload.begin(), f.payload.begin() + long(hashed));
    if (xxh(h) != f.checksum) return "frame checksum at " + std::to_string(p);
    if (f.type == stream::kFrameData && f.payload.size() >= 24 &&
        rd(&f.payload[16], 8) != xxh(f.payload.data() + 24, f.payload.size() - 24))
      return "data checksum at " + std::to_string(p);
    size_t end = p + 24 + size_t(f.len);
    size_t padded = (end + 7) / 8 * 8;
    if (padded > s.size()) return "padding past end at " + std::to_string(p);
    for (size_t i = end; i < padded; ++i)
      if (s[i] != 0) return "non-zero padding at " + std::to_string(i);
    frames.push_back(std::move(f));
    p = padded;
  }
  return "";
}

// ------------------------------------------------------ hand-built streams

struct F {
  uint32_t type;
  Bytes payload;
  uint32_t flags = 0;
};

Bytes preamble(uint16_t major = 1, uint16_t minor = 0, uint32_t reserved = 0) {
  Bytes b = {0x89, 'S', 'T', 'S', 0x0D, 0x0A, 0x1A, 0x0A};
  put(b, major, 2);
  put(b, minor, 2);
  put(b, reserved, 4);
  put(b, xxh(b), 8);
  return b;
}

void append_frame(Bytes& s, const F& f) {
  Bytes h;
  put(h, f.type, 4);
  put(h, f.flags, 4);
  put(h, f.payload.size(), 8);
  Bytes c = h;
  const size_t hashed = f.type == stream::kFrameData ? std::min<size_t>(f.payload.size(), 24) : f.payload.size();
  c.insert(c.end(), f.payload.begin(), f.payload.begin() + long(hashed));
  put(h, xxh(c), 8);
  s.insert(s.end(), h.begin(), h.end());
  s.insert(s.end(), f.payload.begin(), f.payload.end());
  while (s.size() % 8) s.push_back(0);
}

Bytes assemble(const std::vector<F>& frames, Bytes pre = preamble()) {
  for (const F& f : frames) append_frame(pre, f);
  return pre;
}

F manifest_frame(const std::string& json) { return {stream::kFrameManifest, str_bytes(json)}; }

F data_frame(uint32_t idx, uint64_t off, const Bytes& d, uint32_t reserved = 0) {
  F f{stream::kFrameData, {}};
  put(f.payload, idx, 4);
  put(f.payload, reserved, 4);
  put(f.payload, off, 8);
  put(f.payload, xxh(d), 8);
  f.payload.insert(f.payload.end(), d.begin(), d.end());
  return f;
}

F tensor_end_frame(uint32_t idx, uint64_t size, uint64_t hash, uint32_t reserved = 0) {
  F f{stream::kFrameTensorEnd, {}};
  put(f.payload, idx, 4);
  put(f.payload, reserved, 4);
  put(f.payload, size, 8);
  put(f.payload, hash, 8);
  return f;
}

F end_frame(uint64_t count, uint64_t data_bytes, uint64_t frame_count, uint64_t checksum) {
  F f{stream::kFrameEnd, {}};
  put(f.payload, count, 8);
  put(f.payload, data_bytes, 8);
  put(f.payload, frame_count, 8);
  put(f.payload, checksum, 8);
  return f;
}

// The END that agrees with `frames` (counts TENSOR_ENDs, DATA bytes, frames,
// and hashes the TENSOR_END checksums in order).
F end_for(const std::vector<F>& frames) {
  uint64_t count = 0, bytes = 0;
  Bytes hashes;
  for (const F& f : frames) {
    if (f.type == stream::kFrameTensorEnd) {
      ++count;
      hashes.insert(hashes.end(), f.payload.begin() + 16, f.payload.begin() + 24);
    }
    if (f.type == stream::kFrameData) bytes += f.payload.size() - 24;
  }
  return end_frame(count, bytes, frames.size(), xxh(hashes));
}

std::vector<F> with_end(std::vector<F> frames) {
  frames.push_back(end_for(frames));
  return frames;
}

const std::string kHandManifest =
    R"({"format":"st-stream","version":"1.0","producer":"hand","metadata":null,"tensors":[)"
    R"({"name":"t0","dtype":"U8","shape":[3],"nbytes":3},)"
    R"({"name":"t1","dtype":"F32","shape":[],"nbytes":4}]})";
const Bytes kT0 = {1, 2, 3};
const Bytes kT1 = {0, 0, 0x80, 0x3F};

// A valid stream of two tensors written from the spec alone (without END).
std::vector<F> hand_frames() {
  return {manifest_frame(kHandManifest), data_frame(0, 0, kT0), tensor_end_frame(0, 3, chain({kT0})),
          data_frame(1, 0, kT1), tensor_end_frame(1, 4, chain({kT1}))};
}

// ------------------------------------------------------------- reading

struct Ev {
  stream::Event::Kind kind;
  uint32_t tensor;
  uint64_t offset;
  Bytes data;
  uint64_t hash;
  bool operator==(const Ev& o) const {
    return kind == o.kind && tensor == o.tensor && offset == o.offset && data == o.data &&
           hash == o.hash;
  }
};

struct ReadBack {
  stream::Manifest manifest;
  std::vector<Ev> events;
  std::vector<Bytes> tensors;
  std::vector<uint64_t> hashes;
};

// Reads a whole stream until END; throws what the Reader throws.
ReadBack read_all(const Bytes& s, size_t max_read = SIZE_MAX) {
  st::io::MemorySource src(s, max_read);
  stream::Reader r(src, "test-stream");
  ReadBack out;
  out.manifest = r.manifest();
  out.tensors.resize(out.manifest.tensors.size());
  for (int guard = 0; guard < 1'000'000; ++guard) {
    stream::Event e = r.next();
    Ev ev{e.kind, e.tensor, e.offset, Bytes(e.data.begin(), e.data.end()), e.hash};
    out.events.push_back(ev);
    if (e.kind == stream::Event::Kind::Data) {
      if (e.tensor >= out.tensors.size()) throw std::logic_error("event for a tensor out of range");
      out.tensors[e.tensor].insert(out.tensors[e.tensor].end(), e.data.begin(), e.data.end());
    } else if (e.kind == stream::Event::Kind::TensorEnd) {
      out.hashes.push_back(e.hash);
    } else {
      return out;
    }
  }
  throw std::logic_error("reader never reached END");
}

// Whether a Reader reports the stream as invalid: st::Error from construction
// or next(). st::UpstreamFailed does not count: it means a valid ABORT frame,
// which none of the corrupted streams contains.
bool rejected(const Bytes& s, size_t max_read = SIZE_MAX, std::string* message = nullptr) {
  try {
    read_all(s, max_read);
  } catch (const st::UpstreamFailed&) {
    return false;
  } catch (const st::Error& e) {
    if (message) *message = e.what();
    return true;
  }
  return false;
}

bool upstream_failed(const Bytes& s) {
  try {
    read_all(s);
  } catch (const st::UpstreamFailed&) {
    return true;
  } catch (const st::Error&) {
    return false;
  }
  return false;
}

// --------------------------------------------------------- a test stream

stream::TensorInfo ti(std::string name, Dtype d, std::vector<uint64_t> shape, uint64_t nbytes,
                      std::string source = "") {
  stream::TensorInfo t;
  t.name = std::move(name);
  t.dtype = d;
  t.shape = std::move(shape);
  t.nbytes = nbytes;
  t.source = std::move(source);
  return t;
}

stream::Manifest test_manifest() {
  stream::Manifest m;
  m.producer = "unit-test 0.1.0";
  m.metadata = st::safetensors::Metadata{
      {"format", "pt"}, {"\xD0\xBA\xD0\xBB\xD1\x8E\xD1\x87", "\xE2\x9C\x93 \"q\" \\ \n\t \xF0\x9F\x98\x80"}};
  m.tensors = {ti("a.weight", Dtype::F32, {2, 3}, 24, "model-00001-of-00002.safetensors"),
               ti("empty", Dtype::F32, {0, 4}, 0),
               ti("scalar", Dtype::I32, {}, 4),
               ti("\xC3\xA9/\xE5\x90\x8D", Dtype::U8, {37}, 37, "b.safetensors"),
               ti("", Dtype::BF16, {3}, 6)};
  return m;
}

std::vector<Bytes> test_data(const stream::Manifest& m) {
  std::vector<Bytes> d;
  uint32_t x = 12345;
  for (const auto& t : m.tensors) {
    Bytes b(t.nbytes);
    for (auto& c : b) {
      x = x * 1103515245u + 12345u;
      c = uint8_t(x >> 16);
    }
    d.push_back(std::move(b));
  }
  return d;
}

constexpr size_t kChunk = 16;

// The chunks write_test_stream() gives tensor data: pieces of 5, 20 and the
// rest, each split into kChunk-byte DATA frames.
std::vector<Bytes> test_chunks(const Bytes& d) {
  std::vector<Bytes> out;
  size_t at = 0;
  for (size_t piece : {size_t(5), size_t(20), d.size()}) {
    const size_t n = std::min(piece, d.size() - at);
    for (size_t k = 0; k < n; k += kChunk)
      out.emplace_back(d.begin() + long(at + k), d.begin() + long(at + std::min(n, k + kChunk)));
    at += n;
  }
  return out;
}

// Where the test data also is: a file holding the tensors' bytes one after
// another (for Writer::data with a FileOrigin).
struct DataFile {
  int fd;
  std::string name;
};

// Writes the test stream to `sink`; with `file`, each piece of data is
// given with its place in that file.
void write_test_stream_to(st::io::Sink& sink, const DataFile* file) {
  const auto m = test_manifest();
  const auto d = test_data(m);
  stream::Writer w(sink, kChunk);
  w.begin(m);
  uint64_t base = 0;
  for (uint32_t i = 0; i < d.size(); ++i) {
    std::span<const uint8_t> all(d[i]);
    // uneven pieces: 5, 20, rest
    size_t at = 0;
    for (size_t piece : {size_t(5), size_t(20), all.size()}) {
      const size_t n = std::min(piece, all.size() - at);
      if (n && file) w.data(i, all.subspan(at, n), stream::FileOrigin{file->fd, file->name, base + at});
      else if (n) w.data(i, all.subspan(at, n));
      at += n;
    }
    base += all.size();
    w.end_tensor(i);
  }
  w.finish();
}

Bytes write_test_stream() {
  st::io::MemorySink sink;
  write_test_stream_to(sink, nullptr);
  return sink.bytes;
}

void check_manifest_equal(const stream::Manifest& got, const stream::Manifest& want) {
  CHECK(got.producer == want.producer);
  REQUIRE(got.metadata.has_value() == want.metadata.has_value());
  if (want.metadata) CHECK(*got.metadata == *want.metadata);
  REQUIRE(got.tensors.size() == want.tensors.size());
  for (size_t i = 0; i < want.tensors.size(); ++i) {
    INFO("tensor " << i);
    CHECK(got.tensors[i].name == want.tensors[i].name);
    CHECK(got.tensors[i].dtype == want.tensors[i].dtype);
    CHECK(got.tensors[i].shape == want.tensors[i].shape);
    CHECK(got.tensors[i].nbytes == want.tensors[i].nbytes);
    CHECK(got.tensors[i].source == want.tensors[i].source);
  }
}

}  // namespace

// ================================================================== tests

TEST_CASE("Writer -> Reader round trip through memory", "[stream]") {
  const auto m = test_manifest();
  const auto d = test_data(m);
  const Bytes s = write_test_stream();
  for (size_t max_read : {SIZE_MAX, size_t(1), size_t(3), size_t(8), size_t(25)}) {
    INFO("max_read " << max_read);
    ReadBack rb = read_all(s, max_read);
    check_manifest_equal(rb.manifest, m);
    CHECK(!rb.manifest.matching.has_value());
    CHECK(rb.tensors == d);
    REQUIRE(rb.hashes.size() == d.size());
    for (size_t i = 0; i < d.size(); ++i) CHECK(rb.hashes[i] == chain(test_chunks(d[i])));
    // event order: per tensor, DATA in order (offsets contiguous), one TENSOR_END; then END
    uint32_t cur = 0;
    uint64_t got = 0;
    for (size_t k = 0; k < rb.events.size(); ++k) {
      const Ev& e = rb.events[k];
      INFO("event " << k);
      if (e.kind == stream::Event::Kind::Data) {
        CHECK(e.tensor == cur);
        CHECK(e.offset == got);
        CHECK(!e.data.empty());
        got += e.data.size();
      } else if (e.kind == stream::Event::Kind::TensorEnd) {
        CHECK(e.tensor == cur);
        CHECK(got == d[cur].size());
        ++cur;
        got = 0;
      } else {
        CHECK(k + 1 == rb.events.size());
        CHECK(cur == d.size());
      }
    }
    CHECK(rb.events.back().kind == stream::Event::Kind::End);
  }
  // one byte per read gives the same events as one read
  CHECK(read_all(s, 1).events == read_all(s).events);
}

TEST_CASE("byte layout follows docs/stream-format.md", "[stream][layout]") {
  const auto m = test_manifest();
  const auto d = test_data(m);
  const Bytes s = write_test_stream();
  std::vector<Frame> fr;
  const std::string err = parse_layout(s, fr);
  INFO(err);
  REQUIRE(err.empty());

  SECTION("preamble") {
    const uint8_t magic[8] = {0x89, 0x53, 0x54, 0x53, 0x0D, 0x0A, 0x1A, 0x0A};
    CHECK(std::memcmp(s.data(), magic, 8) == 0);
    CHECK(rd(&s[8], 2) == 1);
    CHECK(rd(&s[10], 2) == 2);
    CHECK(rd(&s[12], 4) == 0);
    CHECK(rd(&s[16], 8) == xxh(s.data(), 16));
    CHECK(fr.front().pos == 24);
  }
  SECTION("frame sequence, DATA and TENSOR_END payloads, END") {
    REQUIRE(fr.size() >= 2);
    CHECK(fr.front().type == stream::kFrameManifest);
    CHECK(fr.back().type == stream::kFrameEnd);
    uint32_t cur = 0;
    uint64_t got = 0, data_bytes = 0;
    Bytes hashes, chunk_hashes;
    for (size_t i = 1; i + 1 < fr.size(); ++i) {
      const Frame& f = fr[i];
      INFO("frame " << i << " at " << f.pos);
      CHECK(f.pos % 8 == 0);
      if (f.type == stream::kFrameData) {
        REQUIRE(f.len > 24);
        CHECK(f.len - 24 <= kChunk);
        CHECK(rd(&f.payload[0], 4) == cur);
        CHECK(rd(&f.payload[4], 4) == 0);
        CHECK(rd(&f.payload[8], 8) == got);
        CHECK(rd(&f.payload[16], 8) == xxh(f.payload.data() + 24, f.len - 24));
        REQUIRE(cur < d.size());
        REQUIRE(got + (f.len - 24) <= d[cur].size());
        CHECK(std::equal(f.payload.begin() + 24, f.payload.end(), d[cur].begin() + long(got)));
        chunk_hashes.insert(chunk_hashes.end(), f.payload.begin() + 16, f.payload.begin() + 24);
        got += f.len - 24;
        data_bytes += f.len - 24;
      } else {
        REQUIRE(f.type == stream::kFrameTensorEnd);
        REQUIRE(f.len == 24);
        CHECK(rd(&f.payload[0], 4) == cur);
        CHECK(rd(&f.payload[4], 4) == 0);
        CHECK(rd(&f.payload[8], 8) == d[cur].size());
        CHECK(got == d[cur].size());
        CHECK(rd(&f.payload[16], 8) == xxh(chunk_hashes));
        CHECK(rd(&f.payload[16], 8) == chain(test_chunks(d[cur])));
        chunk_hashes.clear();
        hashes.insert(hashes.end(), f.payload.begin() + 16, f.payload.end());
        ++cur;
        got = 0;
      }
    }
    CHECK(cur == d.size());
    const Frame& e = fr.back();
    REQUIRE(e.len == 32);
    CHECK(rd(&e.payload[0], 8) == d.size());
    CHECK(rd(&e.payload[8], 8) == data_bytes);
    CHECK(data_bytes == 24 + 0 + 4 + 37 + 6);
    CHECK(rd(&e.payload[16], 8) == fr.size() - 1);
    CHECK(rd(&e.payload[24], 8) == xxh(hashes));
    CHECK(e.pos + 24 + 32 == s.size());  // nothing after END
  }
  SECTION("manifest JSON (§5)") {
    const Frame& mf = fr.front();
    rapidjson::Document doc;
    doc.Parse(reinterpret_cast<const char*>(mf.payload.data()), mf.payload.size());
    REQUIRE(!doc.HasParseError());
    REQUIRE(doc.IsObject());
    REQUIRE(doc.HasMember("format"));
    CHECK(std::string(doc["format"].GetString()) == "st-stream");
    REQUIRE(doc.HasMember("version"));
    CHECK(std::string(doc["version"].GetString()) == "1.2");
    REQUIRE(doc.HasMember("producer"));
    CHECK(std::string(doc["producer"].GetString()) == m.producer);
    REQUIRE(doc.HasMember("metadata"));
    REQUIRE(doc["metadata"].IsObject());
    size_t k = 0;
    for (auto it = doc["metadata"].MemberBegin(); it != doc["metadata"].MemberEnd(); ++it, ++k) {
      REQUIRE(k < m.metadata->size());
      CHECK(std::string(it->name.GetString(), it->name.GetStringLength()) == (*m.metadata)[k].first);
      CHECK(std::string(it->value.GetString(), it->value.GetStringLength()) == (*m.metadata)[k].second);
    }
    CHECK(k == m.metadata->size());
    REQUIRE(doc.HasMember("tensors"));
    const auto& ts = doc["tensors"];
    REQUIRE(ts.IsArray());
    REQUIRE(ts.Size() == m.tensors.size());
    for (rapidjson::SizeType i = 0; i < ts.Size(); ++i) {
      INFO("tensor " << i);
      const auto& t = ts[i];
      CHECK(std::string(t["name"].GetString(), t["name"].GetStringLength()) == m.tensors[i].name);
      CHECK(std::string(t["dtype"].GetString()) == std::string(st::dtype_name(m.tensors[i].dtype)));
      REQUIRE(t["shape"].IsArray());
      CHECK(t["shape"].Size() == m.tensors[i].shape.size());
      for (rapidjson::SizeType j = 0; j < t["shape"].Size(); ++j)
        CHECK(t["shape"][j].GetUint64() == m.tensors[i].shape[j]);
      CHECK(t["nbytes"].GetUint64() == m.tensors[i].nbytes);
      if (!m.tensors[i].source.empty()) {
        REQUIRE(t.HasMember("source"));
        CHECK(std::string(t["source"].GetString()) == m.tensors[i].source);
      }
    }
    CHECK(!doc.HasMember("matching"));
  }
}

TEST_CASE("smallest stream (§12): no tensors, null metadata", "[stream][layout]") {
  stream::Manifest m;
  m.producer = "x";
  st::io::MemorySink sink;
  {
    stream::Writer w(sink);
    w.begin(m);
    w.finish();
  }
  std::vector<Frame> fr;
  const std::string err = parse_layout(sink.bytes, fr);
  INFO(err);
  REQUIRE(err.empty());
  REQUIRE(fr.size() == 2);
  CHECK(fr[0].type == stream::kFrameManifest);
  rapidjson::Document doc;
  doc.Parse(reinterpret_cast<const char*>(fr[0].payload.data()), fr[0].payload.size());
  REQUIRE(!doc.HasParseError());
  REQUIRE(doc.HasMember("metadata"));
  CHECK(doc["metadata"].IsNull());
  REQUIRE(doc.HasMember("tensors"));
  CHECK(doc["tensors"].IsArray());
  CHECK(doc["tensors"].Size() == 0);
  CHECK(fr[1].type == stream::kFrameEnd);
  REQUIRE(fr[1].len == 32);
  CHECK(rd(&fr[1].payload[0], 8) == 0);
  CHECK(rd(&fr[1].payload[8], 8) == 0);
  CHECK(rd(&fr[1].payload[16], 8) == 1);
  CHECK(rd(&fr[1].payload[24], 8) == xxh(nullptr, 0));
  auto rb = read_all(sink.bytes);
  CHECK(rb.manifest.tensors.empty());
  CHECK(!rb.manifest.metadata.has_value());
  CHECK(rb.events.size() == 1);
}

TEST_CASE("matching survives the manifest round trip", "[stream]") {
  stream::Manifest m;
  m.producer = "st-scales test";
  m.tensors = {ti("w", Dtype::F8_E4M3, {4, 8}, 32), ti("w_scale", Dtype::F32, {4, 1}, 16),
               ti("b.weight", Dtype::F8_E4M3, {200, 130}, 26000),
               ti("b.weight_scale_inv", Dtype::F32, {2, 2}, 16), ti("c.weight", Dtype::F8_E5M2, {2}, 2)};
  stream::Matching mt;
  // Tensors by position in m.tensors: 0 w, 1 w_scale, 2 b.weight, 3 b.weight_scale_inv, 4 c.weight.
  auto pair = [](uint32_t w, int32_t s, stream::ScaleLayout l, uint64_t br, uint64_t bc, Dtype f) {
    stream::ScalePairing p;
    p.weight = w;
    p.scale = s;
    p.layout = l;
    p.block_rows = br;
    p.block_cols = bc;
    p.format = f;
    if (s >= 0) p.convention = "weight_scale";
    return p;
  };
  mt.pairs = {pair(0, 1, stream::ScaleLayout::PerRow, 0, 0, Dtype::F8_E4M3),
              pair(2, 3, stream::ScaleLayout::Block, 128, 128, Dtype::F8_E4M3),
              pair(4, stream::ScalePairing::kNone, stream::ScaleLayout::PerTensor, 0, 0, Dtype::F8_E5M2)};
  mt.outputs = {"b.renamed"};
  mt.pairs[1].output = 0;
  mt.drop = {1, 3};
  mt.problems = {{"no-scale", "c.weight", "no scale found; cast with scale 1 \xC3\xA9"}};
  mt.block_rows = 128;
  mt.block_cols = 128;
  m.matching = mt;

  auto check = [&](const stream::Manifest& g) {
    REQUIRE(g.matching.has_value());
    const auto& x = *g.matching;
    REQUIRE(x.pairs.size() == 3);
    for (size_t i = 0; i < 3; ++i) {
      INFO("pair " << i);
      CHECK(x.pairs[i].weight == mt.pairs[i].weight);
      CHECK(x.pairs[i].scale == mt.pairs[i].scale);
      CHECK(x.pairs[i].format == mt.pairs[i].format);
      CHECK(x.pairs[i].scale2 == stream::ScalePairing::kNone);
      if (mt.pairs[i].has_scale()) CHECK(x.pairs[i].layout == mt.pairs[i].layout);
      CHECK(x.output_name(x.pairs[i], g.tensors) == (i == 1 ? "b.renamed" : g.tensors[x.pairs[i].weight].name));
    }
    CHECK(g.tensors.name(x.pairs[1].scale) == "b.weight_scale_inv");
    CHECK(x.pairs[1].block_rows == 128);
    CHECK(x.pairs[1].block_cols == 128);
    CHECK(x.drop == mt.drop);
    REQUIRE(x.problems.size() == 1);
    CHECK(x.problems[0].kind == "no-scale");
    CHECK(x.problems[0].tensor == "c.weight");
    CHECK(x.problems[0].detail == mt.problems[0].detail);
    CHECK(x.block_rows == 128);
    CHECK(x.block_cols == 128);
  };
  SECTION("encode_manifest / decode_manifest") {
    auto g = stream::decode_manifest(stream::encode_manifest(m));
    check_manifest_equal(g, m);
    check(g);
  }
  // The pairs are read as they arrive when the tensors came first (as
  // stages write them), or from the whole document when the matching came
  // first (JSON objects are unordered): the same result, the same errors.
  rapidjson::Document doc;
  doc.Parse(stream::encode_manifest(m).c_str());
  REQUIRE(doc.IsObject());
  auto reordered = [&](bool matching_first) {
    rapidjson::StringBuffer sb;
    rapidjson::Writer<rapidjson::StringBuffer> w(sb);
    w.StartObject();
    auto put_member = [&](const rapidjson::Value& name, const rapidjson::Value& value) {
      name.Accept(w);
      value.Accept(w);
    };
    for (int pass = 0; pass < 2; ++pass)
      for (auto it = doc.MemberBegin(); it != doc.MemberEnd(); ++it)
        if ((std::string(it->name.GetString()) == "matching") == (pass == (matching_first ? 0 : 1))) put_member(it->name, it->value);
    w.EndObject();
    return std::string(sb.GetString(), sb.GetSize());
  };
  for (bool first : {false, true}) {
    const std::string text = reordered(first);
    INFO("matching first: " << first);
    REQUIRE((text.find("\"matching\"") < text.find("\"tensors\"")) == first);
    SECTION(first ? "matching before tensors" : "matching after tensors") {
      check(stream::decode_manifest(text));
      for (const std::string from : {"\"drop\":[\"w_scale", "\"scale\":\"w_scale", "\"weight\":\"c.weight"}) {
        std::string bad = text;
        const size_t at = bad.find(from);
        REQUIRE(at != std::string::npos);
        bad.insert(at + from.size(), "_nope");  // a name the manifest lacks
        INFO(bad);
        try {
          stream::decode_manifest(bad);
          FAIL("decoded a matching that names a tensor the manifest lacks");
        } catch (const st::Error& e) {
          CHECK(std::string(e.what()).find("_nope', which is not in the manifest") != std::string::npos);
        }
      }
    }
  }
  SECTION("through Writer and Reader") {
    st::io::MemorySink sink;
    {
      stream::Writer w(sink);
      w.begin(m);
      for (uint32_t i = 0; i < m.tensors.size(); ++i) {
        Bytes b(m.tensors[i].nbytes, uint8_t(i));
        w.data(i, b);
        w.end_tensor(i);
      }
      w.finish();
    }
    auto rb = read_all(sink.bytes);
    check(rb.manifest);
  }
}

TEST_CASE("hand-built streams written from the spec are read", "[stream][spec]") {
  SECTION("two tensors") {
    auto rb = read_all(assemble(with_end(hand_frames())));
    REQUIRE(rb.manifest.tensors.size() == 2);
    CHECK(rb.manifest.producer == "hand");
    CHECK(rb.manifest.tensors[0].name == "t0");
    CHECK(rb.manifest.tensors[1].dtype == Dtype::F32);
    CHECK(rb.tensors[0] == kT0);
    CHECK(rb.tensors[1] == kT1);
    CHECK(rb.hashes == std::vector<uint64_t>{chain({kT0}), chain({kT1})});
  }
  SECTION("re-chunked into one-byte DATA frames, a skippable frame, minor version 7, unknown fields") {
    std::string json = kHandManifest;
    json.insert(json.size() - 1, R"(,"future":{"x":[1,2]})");
    json.replace(json.find(R"("nbytes":3})"), 11, R"("nbytes":3,"later":true})");
    std::vector<F> fr = {manifest_frame(json), F{0x80000000u, str_bytes("ignore me")}};
    for (uint64_t i = 0; i < 3; ++i) fr.push_back(data_frame(0, i, {kT0[i]}));
    fr.push_back(tensor_end_frame(0, 3, chain({{kT0[0]}, {kT0[1]}, {kT0[2]}})));
    fr.push_back(F{0xFFFFFFFFu, {}});
    fr.push_back(data_frame(1, 0, {kT1[0], kT1[1]}));
    fr.push_back(data_frame(1, 2, {kT1[2], kT1[3]}));
    fr.push_back(tensor_end_frame(1, 4, chain({{kT1[0], kT1[1]}, {kT1[2], kT1[3]}})));
    auto rb = read_all(assemble(with_end(fr), preamble(1, 7)));
    CHECK(rb.tensors[0] == kT0);
    CHECK(rb.tensors[1] == kT1);
    size_t data_events = 0;
    for (auto& e : rb.events) data_events += e.kind == stream::Event::Kind::Data;
    CHECK(data_events >= 5);
  }
  SECTION("an empty tensor is just a TENSOR_END") {
    const std::string json =
        R"({"format":"st-stream","version":"1.0","producer":"hand","metadata":{"k":"v"},"tensors":[)"
        R"({"name":"z","dtype":"F16","shape":[0],"nbytes":0}]})";
    auto rb = read_all(assemble(with_end({manifest_frame(json), tensor_end_frame(0, 0, xxh(nullptr, 0))})));
    REQUIRE(rb.manifest.tensors.size() == 1);
    CHECK(rb.tensors[0].empty());
    REQUIRE(rb.manifest.metadata.has_value());
    CHECK(rb.manifest.metadata->at(0).second == "v");
  }
}

TEST_CASE("hand-built streams that break a §10 rule are rejected", "[stream][spec]") {
  const auto base = hand_frames();
  REQUIRE(!rejected(assemble(with_end(base))));  // control

  auto replaced = [&](size_t i, F f) {
    auto fr = base;
    fr[i] = std::move(f);
    return assemble(with_end(fr));
  };
  const std::string good = kHandManifest;
  auto manifest_with = [&](const std::string& from, const std::string& to) {
    std::string j = good;
    REQUIRE(j.find(from) != std::string::npos);
    j.replace(j.find(from), from.size(), to);
    return replaced(0, manifest_frame(j));
  };
  Bytes after_end = assemble(with_end(base));
  append_frame(after_end, F{0x80000000u, {}});
  Bytes zeros_after_end = assemble(with_end(base));
  zeros_after_end.resize(zeros_after_end.size() + 8, 0);
  auto wrong_end = [&](int field) {
    F e = end_for(base);
    e.payload[size_t(field) * 8] ^= 1;
    auto fr = base;
    fr.push_back(e);
    return assemble(fr);
  };
  F flagged = base[1];
  flagged.flags = 1;
  auto no_te = base;
  no_te.erase(no_te.begin() + 2);
  auto two_manifests = base;
  two_manifests.insert(two_manifests.begin() + 1, manifest_frame(kHandManifest));
  auto data_first = base;
  std::swap(data_first[0], data_first[1]);
  auto empty_data = base;
  empty_data.insert(empty_data.begin() + 1, data_frame(0, 0, {}));

  const struct { const char* name; Bytes s; } cases[] = {
      {"major version 2", assemble(with_end(base), preamble(2, 0))},
      {"major version 0", assemble(with_end(base), preamble(0, 0))},
      {"preamble reserved", assemble(with_end(base), preamble(1, 0, 1))},
      {"frame flags", replaced(1, flagged)},
      {"unknown type 6", assemble(with_end([&] { auto f = base; f.insert(f.begin() + 1, F{6, {}}); return f; }()))},
      {"unknown type 0", assemble(with_end([&] { auto f = base; f.insert(f.begin() + 1, F{0, {}}); return f; }()))},
      {"TENSOR_END length 25", replaced(2, [&] { F f = base[2]; f.payload.push_back(0); return f; }())},
      {"skippable over 16 MiB", assemble(with_end([&] { auto f = base; f.insert(f.begin() + 1, F{0x80000001u, Bytes((16u << 20) + 1)}); return f; }()))},
      {"ABORT over 64 KiB", assemble({manifest_frame(good), F{stream::kFrameAbort, Bytes((64u << 10) + 1, 'x')}})},
      {"DATA with no bytes", assemble(with_end(empty_data))},
      {"DATA wrong tensor", replaced(1, data_frame(1, 0, kT0))},
      {"DATA reserved", replaced(1, data_frame(0, 0, kT0, 1))},
      {"DATA offset gap", replaced(1, data_frame(0, 1, kT0))},
      {"DATA past size", replaced(1, data_frame(0, 0, {1, 2, 3, 4}))},
      {"TENSOR_END wrong size", replaced(2, tensor_end_frame(0, 2, chain({kT0})))},
      {"TENSOR_END wrong checksum", replaced(2, tensor_end_frame(0, 3, chain({kT1})))},
      {"TENSOR_END plain data hash", replaced(2, tensor_end_frame(0, 3, xxh(kT0)))},
      {"TENSOR_END wrong index", replaced(2, tensor_end_frame(1, 3, chain({kT0})))},
      {"TENSOR_END reserved", replaced(2, tensor_end_frame(0, 3, chain({kT0}), 1))},
      {"missing TENSOR_END", assemble(with_end(no_te))},
      {"END tensor count", wrong_end(0)},
      {"END data bytes", wrong_end(1)},
      {"END frame count", wrong_end(2)},
      {"END stream checksum", wrong_end(3)},
      {"no END", assemble(base)},
      {"frame after END", after_end},
      {"zero bytes after END", zeros_after_end},
      {"second MANIFEST", assemble(with_end(two_manifests))},
      {"DATA before MANIFEST", assemble(with_end(data_first))},
      {"no MANIFEST", assemble({end_frame(0, 0, 0, xxh(nullptr, 0))})},
      {"manifest format", manifest_with(R"("format":"st-stream")", R"("format":"st-streams")")},
      {"manifest not JSON", replaced(0, manifest_frame("{\"format\":\"st-stream\","))},
      {"manifest nbytes", manifest_with(R"("nbytes":3)", R"("nbytes":4)")},
      {"manifest dtype", manifest_with(R"("dtype":"U8")", R"("dtype":"U9")")},
      {"manifest shape", manifest_with(R"("shape":[3])", R"("shape":[-3])")},
      {"manifest nbytes float", manifest_with(R"("nbytes":3)", R"("nbytes":3.0)")},
      {"manifest duplicate name", manifest_with(R"("name":"t1")", R"("name":"t0")")},
      {"manifest bad UTF-8", manifest_with(R"("producer":"hand")", "\"producer\":\"h\xC0\xAF\"")},
      {"manifest no tensors", manifest_with(R"(,"tensors":[)", R"(,"tensorz":[)")},
      {"manifest surrogate bytes", manifest_with(R"("producer":"hand")", "\"producer\":\"h\xED\xA0\x80\"")},
      {"manifest NUL after the object", replaced(0, manifest_frame(good + std::string(1, '\0') + "xx"))},
      {"manifest NUL in a string", manifest_with(R"("producer":"hand")", std::string("\"producer\":\"h\0d\"", 16))},
      {"manifest trailing text", replaced(0, manifest_frame(good + " x"))},
  };
  for (const auto& c : cases) {
    INFO(c.name);
    CHECK(rejected(c.s));
  }
}

TEST_CASE("a corrupt manifest is reported as corrupt, not as bad JSON", "[stream][spec]") {
  // The manifest is decoded as it arrives; its frame checksum is still
  // checked before anything decoded counts, so a flipped byte that breaks
  // the JSON says "checksum", and a cut one says "truncated".
  const Bytes s = assemble(with_end(hand_frames()));
  const std::string text(s.begin(), s.end());
  const size_t at = text.find("\"tensors\"");
  REQUIRE(at != std::string::npos);
  Bytes flipped = s;
  flipped[at] = '{';  // now not JSON at all
  std::string why;
  REQUIRE(rejected(flipped, SIZE_MAX, &why));
  CHECK_THAT(why, Catch::Contains("frame checksum mismatch"));
  const Bytes cut(s.begin(), s.begin() + long(at));
  REQUIRE(rejected(cut, SIZE_MAX, &why));
  CHECK_THAT(why, Catch::Contains("truncated"));
  // Read in pieces of 1 to 7 bytes, the same stream decodes the same.
  for (size_t piece = 1; piece < 8; ++piece) {
    INFO("max read " << piece);
    const auto rb = read_all(s, piece);
    REQUIRE(rb.manifest.tensors.size() == 2);
    CHECK(rb.manifest.tensors[1].name == "t1");
  }
}

TEST_CASE("claimed payload lengths over a type's limit are refused before allocating",
          "[stream][spec]") {
  // Frame headers only, with a valid checksum over header + (absent) payload:
  // the reader must refuse the length, not try to allocate or read it.
  auto header_only = [](uint32_t type, uint64_t len) {
    Bytes s = preamble();
    if (type != stream::kFrameManifest) append_frame(s, manifest_frame(kHandManifest));
    Bytes h;
    put(h, type, 4);
    put(h, 0, 4);
    put(h, len, 8);
    put(h, xxh(h), 8);
    s.insert(s.end(), h.begin(), h.end());
    return s;
  };
  const struct { const char* name; uint32_t type; uint64_t len; } cases[] = {
      {"MANIFEST 2^63", stream::kFrameManifest, 1ull << 63},
      {"MANIFEST 256 MiB + 1", stream::kFrameManifest, (256ull << 20) + 1},
      {"DATA 2^63", stream::kFrameData, 1ull << 63},
      {"DATA 24 + 16 MiB + 1", stream::kFrameData, 24 + (16ull << 20) + 1},
      {"TENSOR_END 2^62", stream::kFrameTensorEnd, 1ull << 62},
      {"END 2^62", stream::kFrameEnd, 1ull << 62},
      {"ABORT 2^63", stream::kFrameAbort, 1ull << 63},
      {"skippable 2^64-1", 0x80000000u, ~0ull},
  };
  for (const auto& c : cases) {
    INFO(c.name);
    CHECK(rejected(header_only(c.type, c.len)));
  }
  SECTION("a length within the limit costs the bytes that arrive, not the claim") {
    // MANIFEST claiming 250 MiB, then 10 bytes and the end of the stream:
    // rejected as truncated, and the process's peak memory must not jump by
    // the claimed size (memory follows what arrives: #6's memory bound).
    Bytes s = header_only(stream::kFrameManifest, 250ull << 20);
    s.insert(s.end(), 10, 0x20);
    struct rusage before, after;
    getrusage(RUSAGE_SELF, &before);
    CHECK(rejected(s));
    getrusage(RUSAGE_SELF, &after);
    const long grew_kib = after.ru_maxrss - before.ru_maxrss;  // KiB on Linux
    INFO("peak RSS grew by " << grew_kib << " KiB");
    CHECK(grew_kib < 64 * 1024);
  }
  SECTION("a skippable frame of exactly 16 MiB is accepted") {
    auto fr = hand_frames();
    fr.insert(fr.begin() + 1, F{0x80000002u, Bytes(16u << 20, 0x5A)});
    auto rb = read_all(assemble(with_end(fr)));
    CHECK(rb.tensors[0] == kT0);
  }
}

TEST_CASE("the default Writer splits a large tensor into DATA frames of at most 4 MiB",
          "[stream][layout]") {
  stream::Manifest m;
  m.producer = "big";
  m.tensors = {ti("big", Dtype::U8, {9u << 20}, 9u << 20)};
  Bytes d(9u << 20);
  for (size_t i = 0; i < d.size(); ++i) d[i] = uint8_t(i * 31 + (i >> 12));
  st::io::MemorySink sink;
  {
    stream::Writer w(sink);
    w.begin(m);
    w.data(0, d);
    w.end_tensor(0);
    w.finish();
  }
  std::vector<Frame> fr;
  REQUIRE(parse_layout(sink.bytes, fr).empty());
  size_t data_frames = 0;
  for (const Frame& f : fr)
    if (f.type == stream::kFrameData) {
      ++data_frames;
      CHECK(f.len - 24 <= stream::kDefaultChunkBytes);
    }
  CHECK(data_frames >= 3);
  auto rb = read_all(sink.bytes);
  CHECK(rb.tensors[0] == d);
  CHECK(rb.hashes[0] == chain_chunks(d, stream::kDefaultChunkBytes));
}

TEST_CASE("every single-byte flip is detected", "[stream][corruption]") {
  const Bytes s = write_test_stream();
  REQUIRE(!rejected(s));
  CHECK(s.size() > 600);  // preamble, manifest, 11 frames
  size_t undetected = 0, unnamed = 0;
  std::string where, unnamed_example;
  for (size_t i = 0; i < s.size(); ++i) {
    Bytes c = s;
    c[i] ^= 0xFF;
    std::string msg;
    if (!rejected(c, SIZE_MAX, &msg)) {
      if (undetected++ < 10) where += std::to_string(i) + " ";
    } else if (msg.find("test-stream") == std::string::npos) {
      // §10: the message names the input
      if (unnamed++ == 0) unnamed_example = "byte " + std::to_string(i) + ": " + msg;
    }
  }
  INFO("stream size " << s.size() << "; undetected flips at byte " << where);
  CHECK(undetected == 0);
  INFO("first message without the input's name: " << unnamed_example);
  CHECK(unnamed == 0);
}

TEST_CASE("every truncation is detected", "[stream][corruption]") {
  const Bytes s = write_test_stream();
  size_t undetected = 0;
  std::string where;
  for (size_t n = 0; n < s.size(); ++n) {
    Bytes c(s.begin(), s.begin() + long(n));
    if (!rejected(c, n % 2 ? 1 : SIZE_MAX)) {
      if (undetected++ < 10) where += std::to_string(n) + " ";
    }
  }
  INFO("stream size " << s.size() << "; undetected truncation lengths " << where);
  CHECK(undetected == 0);
}

TEST_CASE("a Writer destroyed before finish() leaves an ABORT frame", "[stream][abort]") {
  const auto m = test_manifest();
  const auto d = test_data(m);
  auto check_abort_tail = [](const Bytes& s) {
    std::vector<Frame> fr;
    const std::string err = parse_layout(s, fr);
    INFO(err);
    REQUIRE(err.empty());
    REQUIRE(!fr.empty());
    CHECK(fr.back().type == stream::kFrameAbort);
    CHECK(fr.back().len <= 65536);
  };
  SECTION("before begin(): preamble + ABORT") {
    st::io::MemorySink sink;
    { stream::Writer w(sink); }
    check_abort_tail(sink.bytes);
    CHECK(upstream_failed(sink.bytes));
    CHECK(sink.bytes.size() >= 48);
  }
  SECTION("after some data") {
    st::io::MemorySink sink;
    {
      stream::Writer w(sink, kChunk);
      w.begin(m);
      w.data(0, d[0]);
      w.end_tensor(0);
      w.end_tensor(1);
      w.data(2, std::span<const uint8_t>(d[2]).first(2));
    }
    check_abort_tail(sink.bytes);
    CHECK(upstream_failed(sink.bytes));
  }
  SECTION("unwinding an exception") {
    st::io::MemorySink sink;
    try {
      stream::Writer w(sink, kChunk);
      w.begin(m);
      w.data(0, std::span<const uint8_t>(d[0]).first(7));
      throw std::runtime_error("stage failed");
    } catch (const std::runtime_error&) {
    }
    check_abort_tail(sink.bytes);
    CHECK(upstream_failed(sink.bytes));
  }
  SECTION("a hand-built ABORT right after the preamble") {
    CHECK(upstream_failed(assemble({F{stream::kFrameAbort, str_bytes("reason")}})));
  }
  SECTION("nothing is added after finish()") {
    st::io::MemorySink sink;
    Bytes at_finish;
    {
      stream::Writer w(sink);
      w.begin(m);
      for (uint32_t i = 0; i < d.size(); ++i) {
        w.data(i, d[i]);
        w.end_tensor(i);
      }
      w.finish();
      at_finish = sink.bytes;
    }
    CHECK(sink.bytes == at_finish);
    CHECK(!rejected(sink.bytes));
  }
}

TEST_CASE("Writer refuses data for the wrong tensor", "[stream][writer]") {
  const auto m = test_manifest();
  const auto d = test_data(m);
  st::io::MemorySink sink;
  stream::Writer w(sink);
  w.begin(m);
  const Bytes one = {1};
  CHECK_THROWS(w.data(1, one));   // tensor 0 is current
  CHECK_THROWS(w.data(4, one));
  CHECK_THROWS(w.data(99, one));  // no such tensor
  w.data(0, d[0]);
  w.end_tensor(0);
  CHECK_THROWS(w.data(0, one));   // already ended
}

TEST_CASE("Writer never produces an invalid stream from a misuse", "[stream][writer]") {
  const auto m = test_manifest();
  const auto d = test_data(m);
  auto outcome = [&](auto&& ops) {
    st::io::MemorySink sink;
    bool threw = false;
    try {
      stream::Writer w(sink, kChunk);
      w.begin(m);
      ops(w);
      w.finish();
    } catch (const std::exception&) {
      threw = true;
    }
    return threw || rejected(sink.bytes);
  };
  CHECK(outcome([&](stream::Writer& w) {  // too many bytes
    Bytes more = d[0];
    more.push_back(0);
    w.data(0, more);
  }));
  CHECK(outcome([&](stream::Writer& w) {  // end_tensor before all bytes
    w.data(0, std::span<const uint8_t>(d[0]).first(10));
    w.end_tensor(0);
  }));
  CHECK(outcome([&](stream::Writer& w) {  // finish before all tensors
    w.data(0, d[0]);
    w.end_tensor(0);
  }));
  SECTION("an empty data() call writes no empty DATA frame") {
    st::io::MemorySink sink;
    {
      stream::Writer w(sink);
      w.begin(m);
      for (uint32_t i = 0; i < d.size(); ++i) {
        w.data(i, Bytes{});
        w.data(i, d[i]);
        w.end_tensor(i);
      }
      w.finish();
    }
    std::vector<Frame> fr;
    REQUIRE(parse_layout(sink.bytes, fr).empty());
    for (const Frame& f : fr)
      if (f.type == stream::kFrameData) CHECK(f.len > 24);
    CHECK(read_all(sink.bytes).tensors == d);
  }
}

TEST_CASE("looks_like_safetensors", "[stream]") {
  std::string st_file = std::string("\x50\0\0\0\0\0\0\0", 8) + R"({"__metadata__":{}})";
  Bytes sf(st_file.begin(), st_file.end());
  CHECK(stream::looks_like_safetensors(std::span<const uint8_t>(sf).first(16)));
  const Bytes s = write_test_stream();
  CHECK(!stream::looks_like_safetensors(std::span<const uint8_t>(s).first(16)));
}

TEST_CASE("1.1 model fields survive the manifest round trip", "[stream][manifest]") {
  stream::Manifest m;
  m.producer = "st-dequant test";
  m.tensors = {ti("a", Dtype::BF16, {2}, 4)};
  m.tensors[0].source = "/m/model-00002-of-00002.safetensors";
  m.shards = {"/m/model-00001-of-00002.safetensors", "/m/model-00002-of-00002.safetensors"};
  m.model_dir = "/m";
  m.converted_to = Dtype::F16;
  const auto g = stream::decode_manifest(stream::encode_manifest(m));
  CHECK(g.shards == m.shards);
  CHECK(g.model_dir == "/m");
  REQUIRE(g.converted_to);
  CHECK(*g.converted_to == Dtype::F16);
  CHECK(g.tensors[0].source == m.tensors[0].source);
  SECTION("absent fields stay absent") {
    const auto plain = stream::decode_manifest(
        R"({"format":"st-stream","version":"1.0","producer":"p","metadata":null,"tensors":[]})");
    CHECK(plain.shards.empty());
    CHECK(plain.model_dir.empty());
    CHECK(!plain.converted_to);
  }
  SECTION("a converted_to that is not a float target is refused") {
    for (const char* bad : {R"("F8_E4M3")", R"("bf16")", "3", "null"})
      CHECK_THROWS(stream::decode_manifest(
          std::string(R"({"format":"st-stream","version":"1.1","producer":"p","metadata":null,"tensors":[],"converted_to":)") +
          bad + "}"));
    CHECK_THROWS(stream::decode_manifest(
        R"({"format":"st-stream","version":"1.1","producer":"p","metadata":null,"tensors":[],"shards":"x"})"));
  }
  SECTION("with shards, each tensor's source is one of them (an absent source is unknown)") {
    const std::string head = R"({"format":"st-stream","producer":"p","metadata":null,"shards":["/m/a","/m/b"],"tensors":[)";
    const std::string t1 = R"({"name":"x","dtype":"U8","shape":[1],"nbytes":1,"source":"/m/b"})";
    const std::string t2 = R"({"name":"y","dtype":"U8","shape":[1],"nbytes":1})";
    CHECK(stream::decode_manifest(head + t1 + "," + t2 + "]}").tensors.size() == 2);
    CHECK_THROWS_WITH(
        stream::decode_manifest(head + t1 + R"(,{"name":"z","dtype":"U8","shape":[1],"nbytes":1,"source":"/m/c"}]})"),
        Catch::Contains("tensor 'z' has source '/m/c', which is not one of shards"));
  }
}

TEST_CASE("manifest tensor entries: any field order, unknown fields skipped, each error named", "[stream][manifest]") {
  // §5: a tensor entry has name, dtype, shape, nbytes (and source); readers
  // ignore unknown fields. Entries are decoded as they stream by, so these
  // pin down what a DOM walk would give.
  auto with = [](const std::string& tensors, const std::string& after = "") {
    return R"({"format":"st-stream","producer":"p","metadata":null,"tensors":)" + tensors + after + "}";
  };
  SECTION("accepted") {
    const auto m = stream::decode_manifest(with(
        R"([{"nbytes":12,"x":{"a":[1,{"b":[]}],"shape":"no"},"shape":[3,2],"source":"s.safetensors","dtype":"BF16","name":"b"},)"
        R"({"name":"a","dtype":"F8_E4M3","shape":[],"nbytes":1,"y":[[["deep"]]],"z":null},)"
        R"({"name":"c","dtype":"U8","shape":[0,5],"nbytes":0}])",
        R"(,"later":{"tensors":[1,2]})"));
    REQUIRE(m.tensors.size() == 3);
    CHECK(m.tensors[0].name == "b");
    CHECK(m.tensors[0].dtype == Dtype::BF16);
    CHECK(m.tensors[0].shape == std::vector<uint64_t>{3, 2});
    CHECK(m.tensors[0].nbytes == 12);
    CHECK(m.tensors[0].source == "s.safetensors");
    CHECK(m.tensors[1].name == "a");
    CHECK(m.tensors[1].shape.empty());
    CHECK(m.tensors[1].source.empty());
    CHECK(m.tensors[2].name == "c");
    CHECK(stream::decode_manifest(with("[]")).tensors.empty());
  }
  SECTION("refused, with the reason") {
    const std::pair<std::string, std::string> cases[] = {
        {with("{}"), "tensors is not an array"},
        {with("[1]"), "a tensor entry is not an object"},
        {with("[[]]"), "a tensor entry is not an object"},
        {with(R"(["t"])"), "a tensor entry is not an object"},
        {with(R"([{"dtype":"U8","shape":[1],"nbytes":1}])"), "a tensor entry has no 'name'"},
        {with(R"([{"name":7,"dtype":"U8","shape":[1],"nbytes":1}])"), "tensor name is not a string"},
        {with(R"([{"name":"t","shape":[1],"nbytes":1}])"), "tensor 't' has no 'dtype'"},
        {with(R"([{"name":"t","dtype":["U8"],"shape":[1],"nbytes":1}])"), "tensor 't' dtype is not a string"},
        {with(R"([{"name":"t","dtype":"u8","shape":[1],"nbytes":1}])"), "tensor 't': unknown dtype 'u8'"},
        {with(R"([{"name":"t","dtype":"U8","nbytes":1}])"), "tensor 't' has no 'shape'"},
        {with(R"([{"name":"t","dtype":"U8","shape":1,"nbytes":1}])"), "tensor 't': shape is not an array"},
        {with(R"([{"name":"t","dtype":"U8","shape":[-1],"nbytes":1}])"), "tensor 't' shape is not a non-negative integer"},
        {with(R"([{"name":"t","dtype":"U8","shape":[[1]],"nbytes":1}])"), "tensor 't' shape is not a non-negative integer"},
        {with(R"([{"name":"t","dtype":"U8","shape":[1.5],"nbytes":1}])"), "tensor 't' shape is not a non-negative integer"},
        {with(R"([{"name":"t","dtype":"U8","shape":[1]}])"), "tensor 't' has no 'nbytes'"},
        {with(R"([{"name":"t","dtype":"U8","shape":[1],"nbytes":"1"}])"), "tensor 't' nbytes is not a non-negative integer"},
        {with(R"([{"name":"t","dtype":"U8","shape":[1],"nbytes":-1}])"), "tensor 't' nbytes is not a non-negative integer"},
        {with(R"([{"name":"t","dtype":"U8","shape":[2],"nbytes":1}])"), "tensor 't': nbytes does not match dtype and shape"},
        {with(R"([{"name":"t","dtype":"U8","shape":[1],"nbytes":1,"source":{}}])"), "tensor 't' source is not a string"},
        {with(R"([{"name":"t","dtype":"U8","shape":[1],"nbytes":1},{"name":"t","dtype":"U8","shape":[1],"nbytes":1}])"),
         "duplicate tensor name 't'"},
        {with("[]", R"(,"tensors":[])"), "tensors appears twice"},
        // Repeated keys: readers differ on which wins (RFC 8259), so none is chosen.
        {with(R"([{"name":"c","name":"other","dtype":"U8","shape":[1],"nbytes":1}])"),
         "a tensor entry has the key 'name' twice"},
        {with(R"([{"name":"c","dtype":"U8","shape":[1],"shape":[1],"nbytes":1}])"),
         "a tensor entry has the key 'shape' twice"},
        {with("[]", R"(,"producer":"q")"), "an object has the key 'producer' twice"},
        {R"({"format":"st-stream","producer":"p","metadata":{"k":"1","k":"2"},"tensors":[]})",
         "an object has the key 'k' twice"},
        {with(R"([{"name":"t","dtype":"U8","shape":[1],"nbytes":1,"source":"\udc00"}])"), "not valid UTF-8"},
    };
    for (const auto& [json, why] : cases) {
      INFO(json);
      CHECK_THROWS_WITH(stream::decode_manifest(json), Catch::Contains(why));
    }
  }
}

TEST_CASE("a manifest whose strings are not UTF-8 is refused, escapes included", "[stream][manifest]") {
  // RFC 8259 §8.1: JSON text is UTF-8. A lone surrogate escape decodes to
  // no Unicode scalar, so a manifest holding one anywhere (here where
  // nothing else looks: a key of quantization_config) cannot be re-encoded
  // as UTF-8 and is refused (found by fuzz_scale_matcher).
  const std::string head = R"({"format":"st-stream","producer":"p","metadata":null,"tensors":[],"quantization_config":)";
  CHECK_NOTHROW(stream::decode_manifest(head + R"({"k\ud83d\ude00":1}})"));  // a surrogate pair is fine
  for (const char* bad : {R"({"k\udd0b":1}})", R"({"k":"\ud83d"}})", R"({"k":["x\udc00"]}})", "{\"k\xff\":1}}"}) {
    INFO(bad);
    CHECK_THROWS_AS(stream::decode_manifest(head + bad), st::Error);
  }
}

TEST_CASE("Writer::data with a known hash writes the same stream as without", "[stream][writer]") {
  // A stage that passes a checked DATA event on gives its hash; the stream
  // must be the one the Writer would have written, and a large span (more
  // than one frame) is hashed per frame as usual.
  stream::Manifest m;
  m.producer = "pass";
  m.tensors = {ti("small", Dtype::U8, {1000}, 1000), ti("big", Dtype::U8, {5u << 20}, 5u << 20)};
  Bytes small(1000), big(5u << 20);
  for (size_t i = 0; i < small.size(); ++i) small[i] = uint8_t(i * 7);
  for (size_t i = 0; i < big.size(); ++i) big[i] = uint8_t(i * 13 + (i >> 10));
  auto write = [&](bool known) {
    st::io::MemorySink sink;
    stream::Writer w(sink);
    w.begin(m);
    if (known) w.data(0, small, xxh(small.data(), small.size()));
    else w.data(0, small);
    w.end_tensor(0);
    if (known) w.data(1, big, 12345);  // more than one frame: the given hash cannot apply, and is not used
    else w.data(1, big);
    w.end_tensor(1);
    w.finish();
    return sink.bytes;
  };
  const Bytes plain = write(false), with_hash = write(true);
  CHECK(plain == with_hash);
  const auto rb = read_all(with_hash);
  CHECK(rb.tensors.at(0) == small);
  CHECK(rb.tensors.at(1) == big);
  SECTION("a wrong known hash is caught by the next reader") {
    st::io::MemorySink sink;
    {
      stream::Writer w(sink);
      w.begin(m);
      w.data(0, small, 42);
      w.end_tensor(0);
      w.data(1, big);
      w.end_tensor(1);
      w.finish();
    }
    CHECK_THROWS_AS(read_all(sink.bytes), st::Error);
  }
}

#ifdef __linux__
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>

namespace {

// An empty temp file, already unlinked (gone when closed).
int unlinked_temp_file() {
  char path[] = "/tmp/st-unit-XXXXXX";
  const int fd = ::mkstemp(path);
  REQUIRE(fd >= 0);
  ::unlink(path);
  return fd;
}

// Reads the test stream from a real pipe with splicing into a temp file
// (tensor i at the sum of the sizes before it), writing non-spliced bytes
// itself as st-pack does. Returns the file's bytes; `pieces` gets, per DATA
// event, whether the file's bytes at its position hash to Event::hash.
// With `append` the file is opened O_APPEND, which splice(2) refuses
// (EINVAL), as a file system without splice support would. pwrite() then
// appends whatever its offset says; the data comes in order from offset 0,
// so the file is right, but offsets are not checked this way (the copy's
// own test does that).
Bytes splice_through_pipe(const Bytes& stream_bytes, std::vector<bool>& pieces, uint64_t& spliced,
                          bool append = false) {
  int p[2];
  REQUIRE(::pipe(p) == 0);
  REQUIRE(::write(p[1], stream_bytes.data(), stream_bytes.size()) == ssize_t(stream_bytes.size()));  // fits the pipe
  ::close(p[1]);
  const int fd = unlinked_temp_file();
  if (append) REQUIRE(::fcntl(fd, F_SETFL, O_APPEND) == 0);
  const std::string name = "splice-target";
  st::io::FdSource src(p[0], "pipe");
  stream::Reader r(src, "pipe");
  std::vector<uint64_t> base{0};
  for (const auto& t : r.manifest().tensors) base.push_back(base.back() + t.nbytes);
  r.splice_data_to([&](uint32_t t, uint64_t off) { return stream::SpliceTarget{fd, base[t] + off, &name}; });
  spliced = 0;
  for (;;) {
    const auto ev = r.next();
    if (ev.kind == stream::Event::Kind::End) break;
    if (ev.kind != stream::Event::Kind::Data) continue;
    const uint64_t pos = base[ev.tensor] + ev.offset, n = ev.spliced + ev.data.size();
    REQUIRE(::pwrite(fd, ev.data.data(), ev.data.size(), off_t(pos + ev.spliced)) == ssize_t(ev.data.size()));
    Bytes back(n);
    REQUIRE(::pread(fd, back.data(), n, off_t(pos)) == ssize_t(n));
    pieces.push_back(XXH3_64bits(back.data(), n) == ev.hash);
    spliced += ev.spliced;
  }
  Bytes out(base.back());
  REQUIRE(::pread(fd, out.data(), out.size(), 0) == ssize_t(out.size()));
  ::close(fd);
  ::close(p[0]);
  return out;
}

// The test data in a temp file (unlinked; closed by the caller), with one
// byte flipped at `flip` if given.
DataFile test_data_file(long flip = -1) {
  Bytes all;
  for (const auto& d : test_data(test_manifest())) all.insert(all.end(), d.begin(), d.end());
  if (flip >= 0) all[size_t(flip)] ^= 0x01;
  const int fd = unlinked_temp_file();
  REQUIRE(::write(fd, all.data(), all.size()) == ssize_t(all.size()));
  return {fd, "origin.safetensors"};
}

// Writes the test stream into a pipe through an FdSink (it fits the pipe)
// and returns what came out.
Bytes stream_through_pipe(const DataFile& file) {
  int p[2];
  REQUIRE(::pipe(p) == 0);
  {
    st::io::FdSink sink(p[1], "pipe");
    write_test_stream_to(sink, &file);
  }
  ::close(p[1]);
  Bytes out;
  uint8_t buf[4096];
  for (ssize_t r; (r = ::read(p[0], buf, sizeof buf)) > 0;) out.insert(out.end(), buf, buf + r);
  ::close(p[0]);
  return out;
}

}  // namespace

TEST_CASE("Writer sends data from its file by splice into a pipe: the same stream", "[stream][splice]") {
  const Bytes want = write_test_stream();
  ::unsetenv("ST_NO_SPLICE");
  const DataFile same = test_data_file();
  st::io::MemorySink memory;  // cannot splice: writes the bytes it was given
  write_test_stream_to(memory, &same);
  CHECK(memory.bytes == want);
  CHECK(stream_through_pipe(same) == want);
  ::close(same.fd);

  // The file's bytes are what goes into the pipe, not the ones hashed: a
  // file changed between the two gives a stream the next reader refuses.
  const DataFile changed = test_data_file(30);  // the third byte of the fourth tensor (bytes 28-64)
  const Bytes got = stream_through_pipe(changed);
  CHECK(got != want);
  st::io::MemorySource src(got);
  CHECK_THROWS_WITH(
      [&] {
        stream::Reader r(src, "pipe");
        while (r.next().kind != stream::Event::Kind::End) {
        }
      }(),
      Catch::Contains("data checksum mismatch"));
  ::setenv("ST_NO_SPLICE", "1", 1);  // written from memory again
  CHECK(stream_through_pipe(changed) == want);
  ::unsetenv("ST_NO_SPLICE");
  ::close(changed.fd);
}

TEST_CASE("copy_into_file writes what a pipe holds at the given offset, and nothing else", "[stream][splice]") {
  int p[2];
  REQUIRE(::pipe(p) == 0);
  st::io::grow_pipe(p[1]);
  const size_t n = ::fcntl(p[1], F_GETPIPE_SZ) >= (1 << 20) ? (64u << 10) * 2 + 1000 : 40000;  // several 64 KiB pieces if it fits
  Bytes data(n);
  for (size_t i = 0; i < n; ++i) data[i] = uint8_t(i * 131 + 7);
  REQUIRE(::write(p[1], data.data(), n) == ssize_t(n));
  const int fd = unlinked_temp_file();
  const size_t size = n + 20000, at = 5000;
  const Bytes before(size, 0xEE);
  REQUIRE(::write(fd, before.data(), size) == ssize_t(size));
  st::io::copy_into_file(p[0], fd, "copy-target", at, n);
  Bytes got(size + 1);
  REQUIRE(::pread(fd, got.data(), got.size(), 0) == ssize_t(size));  // no longer than before
  got.resize(size);
  Bytes want = before;
  std::copy(data.begin(), data.end(), want.begin() + long(at));
  CHECK(got == want);
  // asked for more than the pipe holds (its writer closed): refused, not waited for
  REQUIRE(::write(p[1], data.data(), 10) == 10);
  ::close(p[1]);
  CHECK_THROWS_WITH(st::io::copy_into_file(p[0], fd, "copy-target", 0, 11), Catch::Contains("staging pipe"));
  ::close(p[0]);
  ::close(fd);
}

TEST_CASE("Reader splices DATA bytes from a pipe and leaves their check to the caller", "[stream][splice]") {
  const auto m = test_manifest();
  Bytes want;
  for (const auto& d : test_data(m)) want.insert(want.end(), d.begin(), d.end());
  const Bytes s = write_test_stream();
  std::vector<bool> pieces;
  uint64_t spliced = 0;
  ::unsetenv("ST_NO_SPLICE");
  CHECK(splice_through_pipe(s, pieces, spliced) == want);
  CHECK(spliced == want.size());  // every data byte went through splice(2)
  CHECK(std::count(pieces.begin(), pieces.end(), false) == 0);

  // A flipped data byte passes the reader (it never saw the byte) but not
  // the caller's check of the file against Event::hash.
  const Bytes first = test_data(m)[0];
  auto at = std::search(s.begin(), s.end(), first.begin(), first.begin() + 5);
  REQUIRE(at != s.end());
  Bytes bad = s;
  bad[size_t(at - s.begin()) + 2] ^= 0x40;
  pieces.clear();
  CHECK(splice_through_pipe(bad, pieces, spliced) != want);
  CHECK(std::count(pieces.begin(), pieces.end(), false) == 1);

  // A file that refuses splice(2): the bytes already taken from the pipe
  // are copied into it, the rest read as without splicing.
  pieces.clear();
  CHECK(splice_through_pipe(s, pieces, spliced, true) == want);
  CHECK(spliced > 0);
  CHECK(spliced < want.size());
  CHECK(std::count(pieces.begin(), pieces.end(), false) == 0);

  // Without splicing the reader itself refuses that stream.
  ::setenv("ST_NO_SPLICE", "1", 1);
  pieces.clear();
  CHECK_THROWS_WITH(splice_through_pipe(bad, pieces, spliced), Catch::Contains("data checksum mismatch"));
  CHECK(splice_through_pipe(s, pieces, spliced) == want);
  CHECK(spliced == 0);
  ::unsetenv("ST_NO_SPLICE");
}
#endif

// The data checksum's fast path (AVX2 XXH3 on x86-64, chosen at run time)
// must give the library's XXH3 on every length class XXH3 treats apart
// (0, 1-3, 4-8, 9-16, 17-128, 129-240, long inputs with a partial last
// stripe and block) and from unaligned starts.
TEST_CASE("data checksum: the AVX2 path gives the library's XXH3") {
  namespace hash = st::hash;
  REQUIRE(hash::library_xxh3(nullptr, 0) == 0x2D06800538D394C2ull);  // XXH3-64 of no bytes, seed 0
  CHECK(std::string(hash::xxh3_path()) == (hash::avx2_usable() ? "avx2" : "library"));
  Bytes buf((1u << 20) + 4096);
  uint64_t x = 0x9E3779B97F4A7C15ull;
  for (auto& b : buf) {
    x ^= x << 13, x ^= x >> 7, x ^= x << 17;
    b = static_cast<uint8_t>(x >> 32);
  }
  std::vector<size_t> lengths;
  for (size_t n = 0; n <= 260; ++n) lengths.push_back(n);
  for (size_t n : {1023u, 1024u, 1025u, 4095u, 65536u, 65537u, 262144u, 262145u, (1u << 20) + 7u}) lengths.push_back(n);
  for (size_t start : {0u, 1u, 3u, 31u}) {
    for (size_t n : lengths) {
      const uint8_t* p = buf.data() + start;
      const uint64_t want = hash::library_xxh3(p, n);
      CHECK(hash::xxh3(p, n) == want);
      if (hash::avx2_usable()) CHECK(hash::avx2_xxh3(p, n) == want);
    }
  }
}

TEST_CASE("NameIndex: the first of a repeated name, -1 for an absent one") {
  stream::TensorTable t;
  const char* names[] = {"b", "a", "c", "a", "a.b"};
  for (uint64_t i = 0; i < 5; ++i) t.push_back(stream::TensorInfo(names[i], Dtype::U8, {i}, i));  // the size tells the two "a" apart
  const stream::NameIndex index(t);
  CHECK(index.find("b") == 0);
  CHECK(index.find("a") == 1);
  CHECK(index.at("a").nbytes == 1);
  CHECK(index.find("c") == 2);
  CHECK(index.find("a.b") == 4);
  CHECK(index.find("") == -1);
  CHECK(index.find("aa") == -1);
  CHECK(index.find("d") == -1);
  CHECK_THROWS_AS(index.position("d"), st::Error);
  const stream::TensorTable none;
  CHECK(stream::NameIndex(none).find("a") == -1);
}

TEST_CASE("SharedString: reads and compares as the text it holds") {
  const stream::SharedString none;
  CHECK(none.empty());
  CHECK(none.str().empty());
  CHECK(none == "");
  CHECK(stream::SharedString(std::string()).empty());
  const stream::SharedString a(std::string("/m/x.safetensors"));
  const stream::SharedString copy = a;
  const stream::SharedString same_text("/m/x.safetensors");
  CHECK_FALSE(a.empty());
  CHECK(copy == a);
  CHECK(same_text == a);
  CHECK(same_text.c_str() == a.c_str());  // interned: one copy of the text
  CHECK(stream::SharedString("/m/y.safetensors").c_str() != a.c_str());
  CHECK(a == std::string("/m/x.safetensors"));
  CHECK(std::string("/m/x.safetensors") == a);
  CHECK_FALSE(a == "/m/y.safetensors");
  CHECK(std::string(a.c_str()) == "/m/x.safetensors");
  const std::string& s = a;
  CHECK(s.size() == 16);
}

TEST_CASE("TensorTable: rows and names across blocks, in place reorders, copies", "[stream][table]") {
  // Enough rows for several row blocks and names for several name blocks,
  // plus one name longer than a name block's quarter (its own block).
  const size_t n = 100'000;
  auto name_of = [](size_t i) { return "layer." + std::to_string(i) + std::string(i % 37, 'x') + ".weight"; };
  const std::string huge(300'000, 'h');
  stream::TensorTable t;
  for (size_t i = 0; i < n; ++i) {
    const uint64_t d = i % 5;
    t.push_back(stream::TensorInfo(name_of(i), i % 2 ? Dtype::F32 : Dtype::BF16, {d, 3}, d * 3 * (i % 2 ? 4 : 2),
                                   i < n / 2 ? "/m/a.safetensors" : "/m/b.safetensors"));
  }
  t.push_back(stream::TensorInfo(huge, Dtype::U8, {7}, 7));
  t.push_back(stream::TensorInfo("", Dtype::F8_E4M3, {}, 1));
  REQUIRE(t.size() == n + 2);
  auto row_ok = [&](const stream::TensorTable& x, size_t at, size_t i) {
    const stream::TensorView v = x[at];
    const uint64_t d = i % 5;
    return v.name == name_of(i) && v.dtype == (i % 2 ? Dtype::F32 : Dtype::BF16) && v.shape == std::vector<uint64_t>{d, 3} &&
           v.nbytes == d * 3 * (i % 2 ? 4 : 2) && v.source == (i < n / 2 ? "/m/a.safetensors" : "/m/b.safetensors") &&
           x.name(at) == v.name && x.nbytes(at) == v.nbytes && x.dtype(at) == v.dtype && x.shape(at) == v.shape;
  };
  for (size_t i = 0; i < n; ++i) REQUIRE(row_ok(t, i, i));
  CHECK(t[n].name == huge);
  CHECK(t[n].nbytes == 7);
  CHECK(t[n + 1].name.empty());
  CHECK(t[n + 1].source.empty());
  size_t seen = 0;
  for (const stream::TensorView v : t) seen += !v.name.empty();
  CHECK(seen == n + 1);

  SECTION("a copy is deep, a move empties the source") {
    stream::TensorTable c = t;
    t.clear();
    CHECK(t.empty());
    REQUIRE(c.size() == n + 2);
    for (size_t i = 0; i < n; i += 997) CHECK(row_ok(c, i, i));
    CHECK(c[n].name == huge);
    stream::TensorTable moved = std::move(c);
    CHECK(c.empty());  // NOLINT: moved-from state is specified
    CHECK(moved.size() == n + 2);
    CHECK(row_ok(moved, n - 1, n - 1));
  }
  SECTION("a permutation after a fixed prefix") {
    const size_t base = 10;
    std::vector<uint32_t> order(t.size() - base);  // reversed, with two rows swapped back
    for (size_t k = 0; k < order.size(); ++k) order[k] = static_cast<uint32_t>(order.size() - 1 - k);
    std::swap(order[3], order[4]);
    t.reorder_from(base, order);
    REQUIRE(t.size() == n + 2);
    for (size_t i = 0; i < base; ++i) REQUIRE(row_ok(t, i, i));
    CHECK(t[base].name.empty());  // was last
    CHECK(t[base + 1].name == huge);
    CHECK(row_ok(t, base + 2, n - 1));
    CHECK(row_ok(t, base + 3, n - 3));  // the swapped pair
    CHECK(row_ok(t, base + 4, n - 2));
    for (size_t k = 5; k < order.size(); ++k) REQUIRE(row_ok(t, base + k, base + order[k]));
  }
  SECTION("an increasing subset, and rows added after it") {
    std::vector<uint32_t> kept;
    for (uint32_t i = 0; i < n; i += 3) kept.push_back(i);
    t.reorder_from(0, kept);
    REQUIRE(t.size() == kept.size());
    for (size_t k = 0; k < kept.size(); ++k) REQUIRE(row_ok(t, k, kept[k]));
    t.push_back(stream::TensorInfo("after", Dtype::I64, {2}, 16));
    CHECK(t[kept.size()].name == "after");
    CHECK(t[kept.size()].nbytes == 16);
    CHECK(row_ok(t, kept.size() - 1, kept.back()));
  }
}

TEST_CASE("TensorTable refuses a size that is not dtype x shape", "[stream][table]") {
  stream::TensorTable t;
  CHECK_THROWS_AS(t.push_back(stream::TensorInfo("a", Dtype::F32, {2}, 4)), st::Error);
  CHECK_THROWS_AS(t.push_back(stream::TensorInfo("b", Dtype::F4, {3}, 1)), st::Error);  // 12 bits: not whole bytes
  CHECK(t.empty());
  t.push_back(stream::TensorInfo("c", Dtype::F4, {4}, 2));
  CHECK(t.nbytes(0) == 2);
}

TEST_CASE("permute_in_place puts at(order[k]) at k", "[stream][table]") {
  const std::vector<uint32_t> order = {2, 0, 1, 5, 4, 3};
  std::vector<char> v = {'a', 'b', 'c', 'd', 'e', 'f'};
  stream::permute_in_place(order, [&](size_t j) -> char& { return v[j]; });
  CHECK(v == std::vector<char>{'c', 'a', 'b', 'f', 'e', 'd'});
}

TEST_CASE("a matching's own errors come after the manifest's; an empty output is the weight's name", "[stream]") {
  const std::string good =
      R"({"format":"st-stream","version":"1.2","producer":"p","metadata":null,"tensors":[)"
      R"({"name":"w","dtype":"F8_E4M3","shape":[2],"nbytes":2},{"name":"s","dtype":"F32","shape":[],"nbytes":4}],)"
      R"("matching":{"block":[128,128],"pairs":[{"weight":"w","format":"F8_E4M3","output":"","scale":"s",)"
      R"("scale_format":"F32","convention":"weight_scale","layout":"per-tensor"}],"drop":["s"],"rename":[],)"
      R"("metadata_edits":[],"problems":[]}})";
  const auto g = stream::decode_manifest(good);
  REQUIRE(g.matching);
  REQUIRE(g.matching->pairs.size() == 1);
  CHECK(g.matching->pairs[0].output == stream::ScalePairing::kNone);
  CHECK(g.matching->output_name(g.matching->pairs[0], g.tensors) == "w");
  CHECK(stream::encode_manifest(g).find("\"output\"") == std::string::npos);

  auto edit = [](std::string s, const std::string& from, const std::string& to) {
    const size_t at = s.find(from);
    REQUIRE(at != std::string::npos);
    return s.replace(at, from.size(), to);
  };
  auto error_of = [](const std::string& text) {
    try {
      stream::decode_manifest(text);
    } catch (const st::Error& e) {
      return std::string(e.what());
    }
    return std::string("decoded");
  };
  const std::string bad_pair = edit(good, R"("weight":"w")", R"("weight":"zz")");
  CHECK(error_of(bad_pair).find("'zz', which is not in the manifest") != std::string::npos);
  // Errors a reader finds before the matching still come first.
  CHECK(error_of(edit(bad_pair, "st-stream", "st-strem")).find("format is not 'st-stream'") != std::string::npos);
  CHECK(error_of(edit(bad_pair, R"("name":"s")", R"("name":"w")")).find("duplicate tensor name 'w'") != std::string::npos);
  CHECK(error_of(edit(bad_pair, R"("rename":[])", R"("rename":[],,)")).find("not valid JSON") != std::string::npos);
  // Within the matching, in document order: its block before its pairs.
  CHECK(error_of(edit(bad_pair, R"("block":[128,128])", R"("block":[128])")).find("matching block") != std::string::npos);
}
