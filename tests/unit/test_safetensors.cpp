// st::safetensors: the strict header reader (valid edge cases of
// safetensors-format.md §10 accepted, malformed inputs of §9 rejected) and
// the reference writer's exact output and order (§5).
#include <fcntl.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <span>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "catch.hpp"
#include "error.hpp"
#include "json_util.hpp"
#include "safetensors.hpp"

using st::Dtype;
namespace sf = st::safetensors;

namespace {

std::vector<uint8_t> bytes_of(const std::string& s) { return {s.begin(), s.end()}; }

// Parses header text for a file with `data` bytes after the header.
sf::Header parse(const std::string& json, uint64_t data) {
  auto b = bytes_of(json);
  return sf::parse_header(b, 8 + b.size() + data);
}

std::string u64le(uint64_t v) {
  std::string s;
  for (int i = 0; i < 8; ++i) s.push_back(char(uint8_t(v >> (8 * i))));
  return s;
}

// Concatenation by appending (GCC 12 warns falsely, -Wrestrict, on
// "literal" + std::string temporaries).
template <class... A>
std::string cat(const A&... a) {
  std::string s;
  (s.append(std::string_view(a)), ...);
  return s;
}

std::string entry(const std::string& name, const std::string& dtype, const std::string& shape,
                  const std::string& offsets) {
  return cat("\"", name, "\":{\"dtype\":\"", dtype, "\",\"shape\":", shape, ",\"data_offsets\":",
             offsets, "}");
}

// {e1,e2,...}
std::string obj(std::initializer_list<std::string> entries) {
  std::string s = "{";
  for (const auto& e : entries) {
    if (s.size() > 1) s += ',';
    s += e;
  }
  s += '}';
  return s;
}

sf::TensorEntry te(std::string name, Dtype d, std::vector<uint64_t> shape, uint64_t begin, uint64_t end) {
  sf::TensorEntry e;
  e.name = std::move(name);
  e.dtype = d;
  e.shape = std::move(shape);
  e.begin = begin;
  e.end = end;
  return e;
}

const std::string T = obj({entry("t", "F32", "[2]", "[0,8]")});

struct TempFile {
  std::string path;
  explicit TempFile(const std::string& content) {
    char tmpl[] = "/tmp/st-unit-safetensors-XXXXXX";
    int fd = mkstemp(tmpl);
    REQUIRE(fd >= 0);
    path = tmpl;
    size_t done = 0;
    while (done < content.size()) {
      ssize_t w = ::write(fd, content.data() + done, content.size() - done);
      REQUIRE(w > 0);
      done += size_t(w);
    }
    ::close(fd);
  }
  ~TempFile() { ::unlink(path.c_str()); }
};

}  // namespace

// ------------------------------------------------------------------ accept

TEST_CASE("parse_header accepts the valid edge cases of §10", "[safetensors][accept]") {
  SECTION("1: empty header {} and the reference writer's padded form") {
    auto h = parse("{}", 0);
    CHECK(h.tensors.empty());
    CHECK(!h.metadata.has_value());
    CHECK(h.data_start == 10);
    CHECK(h.data_size == 0);
    auto h2 = parse("{}      ", 0);
    CHECK(h2.tensors.empty());
    CHECK(h2.data_start == 16);
  }
  SECTION("2: metadata only; empty and null metadata") {
    auto h = parse(R"({"__metadata__":{"format":"pt"}})", 0);
    REQUIRE(h.metadata.has_value());
    REQUIRE(h.metadata->size() == 1);
    CHECK((*h.metadata)[0].first == "format");
    CHECK((*h.metadata)[0].second == "pt");
    CHECK(h.tensors.empty());
    auto e = parse(R"({"__metadata__":{}})", 0);
    CHECK((!e.metadata.has_value() || e.metadata->empty()));
    auto n = parse(R"({"__metadata__":null})", 0);
    CHECK(!n.metadata.has_value());
  }
  SECTION("metadata keeps the source order") {
    auto h = parse(R"({"__metadata__":{"z":"1","a":"2","m":"3"}})", 0);
    REQUIRE(h.metadata.has_value());
    REQUIRE(h.metadata->size() == 3);
    CHECK((*h.metadata)[0].first == "z");
    CHECK((*h.metadata)[1].first == "a");
    CHECK((*h.metadata)[2].first == "m");
    CHECK((*h.metadata)[2].second == "3");
  }
  SECTION("3: scalar") {
    auto h = parse(obj({entry("t", "I32", "[]", "[0,4]")}), 4);
    REQUIRE(h.tensors.size() == 1);
    CHECK(h.tensors[0].dtype == Dtype::I32);
    CHECK(h.tensors[0].shape.empty());
    CHECK(h.tensors[0].nbytes() == 4);
  }
  SECTION("4: zero-element tensors") {
    auto a = parse(obj({entry("t", "F32", "[2,0]", "[0,0]")}), 0);
    REQUIRE(a.tensors.size() == 1);
    CHECK(a.tensors[0].shape == std::vector<uint64_t>{2, 0});
    auto b = parse(obj({entry("x", "F32", "[0]", "[0,0]"), entry("y", "U8", "[0]", "[0,0]")}), 0);
    CHECK(b.tensors.size() == 2);
    auto c = parse(obj({entry("a", "F32", "[2]", "[0,8]"), entry("z", "F32", "[0]", "[8,8]")}), 8);
    REQUIRE(c.tensors.size() == 2);
    CHECK(c.tensors[0].name == "a");
    CHECK(c.tensors[1].name == "z");
    CHECK(c.tensors[1].begin == 8);
    auto d = parse(obj({entry("t", "F32", "[0,18446744073709551615]", "[0,0]")}), 0);
    REQUIRE(d.tensors.size() == 1);
    CHECK(d.tensors[0].shape[1] == 18446744073709551615ull);
  }
  SECTION("5: whitespace padding after and before the object") {
    CHECK(parse("{}\r\n\t ", 0).tensors.empty());
    CHECK(parse("\t\n{}\r ", 0).tensors.empty());
    CHECK(parse("      {}", 0).tensors.empty());
    CHECK(parse(cat("  ", T, "  "), 8).tensors.size() == 1);
  }
  SECTION("6: JSON order differs from offset order; tensors come back in data order") {
    auto h = parse(obj({entry("b", "F32", "[2]", "[8,16]"), entry("a", "F32", "[2]", "[0,8]")}), 16);
    REQUIRE(h.tensors.size() == 2);
    CHECK(h.tensors[0].name == "a");
    CHECK(h.tensors[0].begin == 0);
    CHECK(h.tensors[0].end == 8);
    CHECK(h.tensors[1].name == "b");
    CHECK(h.tensors[1].begin == 8);
    CHECK(h.tensors[1].end == 16);
  }
  SECTION("7: pretty-printed JSON") {
    const std::string pretty =
        "{\n  \"__metadata__\": {\n    \"format\": \"pt\"\n  },\n  \"t\": {\n    \"dtype\": \"F32\",\n"
        "    \"shape\": [\n      2\n    ],\n    \"data_offsets\": [\n      0,\n      8\n    ]\n  }\n}";
    auto h = parse(pretty, 8);
    REQUIRE(h.tensors.size() == 1);
    CHECK(h.metadata.has_value());
  }
  SECTION("8: N not a multiple of 8 (N = 55)") {
    std::string j = T;
    j.resize(55, ' ');
    auto h = parse(j, 8);
    CHECK(h.data_start == 63);
    CHECK(h.data_size == 8);
    REQUIRE(h.tensors.size() == 1);
  }
  SECTION("9: names: empty, non-ASCII raw and escaped, embedded NUL, escaped __metadata__") {
    auto h = parse(obj({entry("", "U8", "[1]", "[0,1]"), entry("é", "U8", "[1]", "[1,2]"),
                        entry("\\u00e8", "U8", "[1]", "[2,3]"), entry("a\\u0000b", "U8", "[1]", "[3,4]"),
                        entry("a", "U8", "[1]", "[4,5]"), "\"__meta\\u0064ata__\":{\"k\":\"v\"}"}),
                   5);
    REQUIRE(h.tensors.size() == 5);
    CHECK(h.tensors[0].name.empty());
    CHECK(h.tensors[1].name == "\xC3\xA9");
    CHECK(h.tensors[2].name == "\xC3\xA8");
    CHECK(h.tensors[3].name == std::string("a\0b", 3));
    CHECK(h.tensors[4].name == "a");
    REQUIRE(h.metadata.has_value());
    CHECK(h.metadata->at(0).first == "k");
  }
  SECTION("10: every dtype; F4 [2] in 1 byte; F6 [4] in 3 bytes") {
    struct D { const char* name; Dtype d; unsigned bits; };
    const D all[] = {
        {"BOOL", Dtype::BOOL, 8}, {"F4", Dtype::F4, 4}, {"F6_E2M3", Dtype::F6_E2M3, 6},
        {"F6_E3M2", Dtype::F6_E3M2, 6}, {"U8", Dtype::U8, 8}, {"I8", Dtype::I8, 8},
        {"F8_E5M2", Dtype::F8_E5M2, 8}, {"F8_E4M3", Dtype::F8_E4M3, 8},
        {"F8_E8M0", Dtype::F8_E8M0, 8}, {"F8_E4M3FNUZ", Dtype::F8_E4M3FNUZ, 8},
        {"F8_E5M2FNUZ", Dtype::F8_E5M2FNUZ, 8}, {"I16", Dtype::I16, 16}, {"U16", Dtype::U16, 16},
        {"F16", Dtype::F16, 16}, {"BF16", Dtype::BF16, 16}, {"I32", Dtype::I32, 32},
        {"U32", Dtype::U32, 32}, {"F32", Dtype::F32, 32}, {"C64", Dtype::C64, 64},
        {"F64", Dtype::F64, 64}, {"I64", Dtype::I64, 64}, {"U64", Dtype::U64, 64}};
    std::string j = "{";
    uint64_t off = 0;
    std::vector<uint64_t> begins;
    for (const D& d : all) {
      const uint64_t n = d.bits == 4 ? 2 : d.bits == 6 ? 4 : 3;
      const uint64_t nb = n * d.bits / 8;
      if (off) j += ",";
      j += entry(cat("t_", d.name), d.name, cat("[", std::to_string(n), "]"),
                 cat("[", std::to_string(off), ",", std::to_string(off + nb), "]"));
      begins.push_back(off);
      off += nb;
    }
    j += "}";
    auto h = parse(j, off);
    REQUIRE(h.tensors.size() == 22);
    for (size_t i = 0; i < 22; ++i) {
      INFO(all[i].name);
      CHECK(h.tensors[i].dtype == all[i].d);
      CHECK(h.tensors[i].begin == begins[i]);
      CHECK(h.tensors[i].name == std::string("t_") + all[i].name);
    }
    CHECK(h.tensors[18].nbytes() == 24);  // C64 [3]
  }
  SECTION("11: 1000-dim shape of 1s, unknown extra fields") {
    std::string shape = "[";
    for (int i = 0; i < 1000; ++i) shape += i ? ",1" : "1";
    shape += "]";
    auto h = parse(obj({entry("t", "U8", shape, "[0,1]")}), 1);
    REQUIRE(h.tensors.size() == 1);
    CHECK(h.tensors[0].shape.size() == 1000);
    auto x = parse(R"({"t":{"dtype":"F32","foo":1,"shape":[2],"bar":{"x":[1,2]},"data_offsets":[0,8]}})", 8);
    CHECK(x.tensors.size() == 1);
  }
  SECTION("11: N = 100,000,000 exactly is accepted") {
    std::vector<uint8_t> big(100'000'000, ' ');
    big[0] = '{';
    big[1] = '}';
    auto h = sf::parse_header(big, 8 + big.size());
    CHECK(h.tensors.empty());
    TempFile f(u64le(100'000'000) + "{}" + std::string(99'999'998, ' '));
    st::io::InputFile in(f.path);
    CHECK(sf::read_header(in).data_start == 100'000'008);
  }
}

// ------------------------------------------------------------------ reject

TEST_CASE("parse_header rejects the malformed headers of §9", "[safetensors][reject]") {
  const std::string u8t = entry("t", "U8", "[1]", "[0,1]");
  const std::string nest = cat("{\"t\":", std::string(200, '['), std::string(200, ']'), "}");
  auto f32 = [](const std::string& shape, const std::string& offsets) {
    return obj({entry("t", "F32", shape, offsets)});
  };
  const struct { const char* row; std::string json; uint64_t data; } rows[] = {
      {"7 empty header", "", 0},
      {"8 0xff in a key", "{\"\xff\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}", 1},
      {"9 overlong /", "{\"\xc0\xaf\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}", 1},
      {"10 encoded surrogate", "{\"\xed\xa0\x80\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}", 1},
      {"11 BOM", "\xEF\xBB\xBF{}", 0},
      {"12 NUL padding", std::string("{}\0\0\0\0\0\0", 8), 0},
      {"13 VT", "{}\x0b", 0},
      {"13 FF", "{}\x0c", 0},
      {"13 NBSP", "{}\xc2\xa0", 0},
      {"14 two objects", "{}{}", 0},
      {"14 trailing x", "{} x", 0},
      {"15 N swallows the data", T + std::string(8, '\0'), 0},
      {"16 N one short", T.substr(0, T.size() - 1), 9},
      {"17 whitespace only", "        ", 0},
      {"18 array root", "[]", 0},
      {"18 null root", "null", 0},
      {"18 number root", "12345678", 0},
      {"18 string root", "\"abcdef\"", 0},
      {"19 comment", "{/*c*/}", 0},
      {"19 single quotes", "{'t':{}}", 0},
      {"19 trailing comma", cat("{", entry("t", "F32", "[2]", "[0,8]"), ",}"), 8},
      {"19 NaN", f32("[NaN]", "[0,8]"), 8},
      {"20 raw control char", "{\"a\x01" "b\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}", 1},
      {"21 lone surrogate", "{\"\\ud800\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}", 1},
      {"22 nesting 200", nest, 0},
      {"23 string entry", "{\"t\":\"x\"}", 0},
      {"23 null entry", "{\"t\":null}", 0},
      {"24 no dtype", R"({"t":{"shape":[1],"data_offsets":[0,1]}})", 1},
      {"24 no shape", R"({"t":{"dtype":"U8","data_offsets":[0,1]}})", 1},
      {"24 no data_offsets", R"({"t":{"dtype":"U8","shape":[1]}})", 1},
      {"25 dtype twice", R"({"t":{"dtype":"U8","dtype":"U8","shape":[1],"data_offsets":[0,1]}})", 1},
      {"26 __metadata__ twice", R"({"__metadata__":{"a":"b"},"__metadata__":{"c":"d"}})", 0},
      {"27 F33", obj({entry("t", "F33", "[1]", "[0,1]")}), 1},
      {"27 f32", obj({entry("t", "f32", "[1]", "[0,4]")}), 4},
      {"27 F8_E4M3FN", obj({entry("t", "F8_E4M3FN", "[1]", "[0,1]")}), 1},
      {"27 C128", obj({entry("t", "C128", "[1]", "[0,16]")}), 16},
      {"27 'F32 '", obj({entry("t", "F32 ", "[1]", "[0,4]")}), 4},
      {"28 dtype 4", R"({"t":{"dtype":4,"shape":[1],"data_offsets":[0,4]}})", 4},
      {"29 shape [-2]", f32("[-2]", "[0,8]"), 8},
      {"29 shape [2.0]", f32("[2.0]", "[0,8]"), 8},
      {"29 shape [2e0]", f32("[2e0]", "[0,8]"), 8},
      {"29 shape [\"2\"]", f32("[\"2\"]", "[0,8]"), 8},
      {"29 shape [true]", f32("[true]", "[0,8]"), 8},
      {"29 shape [[1]]", f32("[[1]]", "[0,4]"), 4},
      {"29 shape 2", f32("2", "[0,8]"), 8},
      {"29 shape null", f32("null", "[0,4]"), 4},
      {"30 shape 2^64", f32("[18446744073709551616]", "[0,0]"), 0},
      {"30 shape [-0]", f32("[-0]", "[0,0]"), 0},
      {"31 shape [02]", f32("[02]", "[0,8]"), 8},
      {"32 offsets []", f32("[2]", "[]"), 8},
      {"32 offsets [8]", f32("[2]", "[8]"), 8},
      {"32 offsets [0,8,8]", f32("[2]", "[0,8,8]"), 8},
      {"33 offsets [-1,8]", f32("[2]", "[-1,8]"), 8},
      {"33 offsets [0,8.0]", f32("[2]", "[0,8.0]"), 8},
      {"33 offsets strings", f32("[2]", "[\"0\",\"8\"]"), 8},
      {"33 offsets object", f32("[2]", "{\"a\":0,\"b\":8}"), 8},
      {"34 metadata string", R"({"__metadata__":"x"})", 0},
      {"34 metadata array", R"({"__metadata__":["a"]})", 0},
      {"35 metadata integer value", R"({"__metadata__":{"a":1}})", 0},
      {"35 metadata object value", R"({"__metadata__":{"a":{"b":"c"}}})", 0},
      {"35 metadata null value", R"({"__metadata__":{"k":null}})", 0},
      {"36 top-level format", obj({"\"format\":\"pt\"", entry("t", "F32", "[2]", "[0,8]")}), 8},
      {"37 __METADATA__", R"({"__METADATA__":{"k":"v"}})", 0},
      {"38 first tensor not at 0", f32("[2]", "[4,12]"), 12},
      {"39 hole", obj({entry("a", "F32", "[2]", "[0,8]"), entry("b", "F32", "[2]", "[12,20]")}), 20},
      {"40 overlap", obj({entry("a", "F32", "[4]", "[0,16]"), entry("b", "F32", "[2]", "[8,16]")}), 16},
      {"41 alias", obj({entry("a", "F32", "[2]", "[0,8]"), entry("b", "F32", "[2]", "[0,8]")}), 8},
      {"42 reversed second", obj({entry("a", "F32", "[2]", "[0,8]"), entry("b", "F32", "[2]", "[8,0]")}), 8},
      {"42 reversed single", f32("[2]", "[8,0]"), 8},
      {"43 zero-size inside", obj({entry("a", "F32", "[4]", "[0,16]"), entry("b", "F32", "[0]", "[8,8]")}), 16},
      {"44 zero-size not at cursor", f32("[0]", "[8,8]"), 0},
      {"44 zero-size at 2^64-1", f32("[0]", "[18446744073709551615,18446744073709551615]"), 0},
      {"45 [3] in 8 bytes", f32("[3]", "[0,8]"), 8},
      {"45 [1] in 8 bytes", f32("[1]", "[0,8]"), 8},
      {"46 huge end", f32("[2]", "[0,18446744073709551615]"), 8},
      {"47 [2,2^64-2]", f32("[2,18446744073709551614]", "[0,0]"), 0},
      {"47 [2^32,2^32]", f32("[4294967296,4294967296]", "[0,0]"), 0},
      {"47 bits overflow", f32("[4611686018427387904]", "[0,0]"), 0},
      {"48 [2^64-1,2,0]", f32("[18446744073709551615,2,0]", "[0,0]"), 0},
      {"49 F4 [3]", obj({entry("t", "F4", "[3]", "[0,2]")}), 2},
      {"49 F6_E3M2 [3]", obj({entry("t", "F6_E3M2", "[3]", "[0,3]")}), 3},
      {"50 polyglot tail", T, 9},
      {"51 7 data bytes", T, 7},
      {"51 no data", T, 0},
      {"52 {} with data", "{}", 8},
      {"53 duplicate leaves a gap",
       obj({entry("a", "F32", "[2]", "[0,8]"), entry("a", "F32", "[1]", "[0,4]")}), 8},
  };
  // Control: the base construction is valid.
  CHECK(parse(T, 8).tensors.size() == 1);
  CHECK(parse(obj({u8t}), 1).tensors.size() == 1);
  for (const auto& r : rows) {
    INFO("row " << r.row);
    CHECK_THROWS_AS(parse(r.json, r.data), st::Error);
  }
}

namespace {

constexpr size_t kMiB = size_t(1) << 20;  // read_header reads the header in pieces of this size

// A safetensors file (no data) whose header text has `body` starting at byte
// `at` of the JSON: `{"__metadata__":{"p":"<pad>"},` + body.
std::string file_with_body_at(size_t at, const std::string& body) {
  const std::string head = R"({"__metadata__":{"p":")";
  const std::string mid = R"("},)";
  REQUIRE(at >= head.size() + mid.size());
  const std::string json = head + std::string(at - head.size() - mid.size(), 'x') + mid + body;
  return u64le(json.size()) + json;
}

bool has(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

std::string read_error(const std::string& content) {
  TempFile f(content);
  st::io::InputFile in(f.path);
  try {
    sf::read_header(in);
  } catch (const st::Error& e) {
    return e.what();
  }
  return "(accepted)";
}

}  // namespace

TEST_CASE("read_header reads a header larger than one piece", "[safetensors][accept]") {
  SECTION("a UTF-8 sequence cut at every byte by the piece boundary") {
    const std::string raw = "a\xC3\xA9\xE2\x82\xAC\xF0\x9F\x98\x80z";  // a, U+00E9, U+20AC, U+1F600, z
    for (size_t back = 0; back <= raw.size() + 1; ++back) {
      const size_t quote_at = kMiB - back;  // the name's opening quote
      TempFile f(file_with_body_at(quote_at, "\"" + raw + R"(":{"dtype":"U8","shape":[0],"data_offsets":[0,0]}})"));
      st::io::InputFile in(f.path);
      const auto h = sf::read_header(in);
      INFO("name starts " << back << " bytes before the boundary");
      REQUIRE(h.tensors.size() == 1);
      CHECK(h.tensors[0].name == raw);
      REQUIRE(h.metadata);
      CHECK((*h.metadata)[0].second.size() == quote_at - std::string(R"({"__metadata__":{"p":""},)").size());
    }
  }
  SECTION("a \"data_offsets\" key cut by the boundary still counts for the room reserved") {
    // The entry "b"'s "data_offsets" key begins at every offset
    // around the boundary. Room for exactly the entries means the count was right.
    // Three entries: had the cut key not counted, room for two would grow to four.
    const std::string first = R"("a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"c":{"dtype":"U8","shape":[1],"data_offsets":[2,3]},)";
    const std::string second_head = R"("b":{"dtype":"U8","shape":[1],)";
    for (size_t back = 0; back <= 16; ++back) {
      const size_t key_at = kMiB - back;
      const size_t body_at = key_at - first.size() - second_head.size();
      std::string content = file_with_body_at(body_at, first + second_head + R"("data_offsets":[1,2]}})") + "xxx";
      TempFile f(content);
      st::io::InputFile in(f.path);
      const auto h = sf::read_header(in);
      INFO("key starts " << back << " bytes before the boundary");
      REQUIRE(h.tensors.size() == 3);
      CHECK(h.tensors[1].name == "b");
      CHECK(h.tensors.capacity() == 3);
    }
  }
}

TEST_CASE("read_header finds errors past the first piece", "[safetensors][reject]") {
  const std::string ok = R"("t":{"dtype":"U8","shape":[0],"data_offsets":[0,0]}})";
  const size_t at = kMiB + kMiB / 2;
  SECTION("invalid UTF-8") {
    std::string content = file_with_body_at(at, ok);
    content[8 + at - 10] = '\xFF';  // inside the pad string
    const std::string e = read_error(content);
    INFO(e);
    CHECK(has(e, "header is not valid UTF-8"));
  }
  SECTION("a NUL byte") {
    std::string content = file_with_body_at(at, ok);
    content[8 + at - 10] = '\0';
    const std::string e = read_error(content);
    INFO(e);
    CHECK(has(e, "header contains a NUL byte"));
  }
  SECTION("invalid UTF-8 in a later piece is reported before a NUL in an earlier one") {
    std::string content = file_with_body_at(at, ok);
    content[8 + 100] = '\0';
    content[8 + at - 10] = '\xFF';
    const std::string e = read_error(content);
    INFO(e);
    CHECK(has(e, "header is not valid UTF-8"));
  }
  SECTION("a JSON syntax error is reported at its byte, counted from the header's start") {
    // The same error in a small header, where it is at byte `small`, is at
    // byte small + shift when the header is padded by `shift` more bytes.
    const std::string bad = R"("t":{"dtype":"U8","shape":[],"data_offsets":[0,0]},"u":tru})";
    const size_t small_at = 30;
    const std::string small = read_error(file_with_body_at(small_at, bad));
    const std::string prefix = "invalid JSON at byte ";
    const auto p = small.find(prefix);
    REQUIRE(p != std::string::npos);
    const size_t small_byte = std::stoul(small.substr(p + prefix.size()));
    CHECK(small_byte > small_at);
    const std::string big = read_error(file_with_body_at(at, bad));
    INFO(small << " / " << big);
    CHECK(has(big, prefix + std::to_string(small_byte + (at - small_at))));
  }
  SECTION("trailing characters after the object") {
    const std::string e = read_error(file_with_body_at(at, ok + "  x"));
    INFO(e);
    CHECK(has(e, "trailing characters"));
  }
}

TEST_CASE("read_header rejects files that are too small or whose N is wrong (§9 rows 1-6)",
          "[safetensors][reject]") {
  SECTION("1: empty file") {
    TempFile f("");
    st::io::InputFile in(f.path);
    CHECK_THROWS_AS(sf::read_header(in), st::Error);
  }
  SECTION("2: 7 bytes") {
    TempFile f(std::string("\x02\0\0\0\0\0\0", 7));
    st::io::InputFile in(f.path);
    CHECK_THROWS_AS(sf::read_header(in), st::Error);
  }
  SECTION("3: N=2, nothing after") {
    TempFile f(u64le(2));
    st::io::InputFile in(f.path);
    CHECK_THROWS_AS(sf::read_header(in), st::Error);
  }
  SECTION("4: N=1000 with a 2-byte header") {
    TempFile f(u64le(1000) + "{}");
    st::io::InputFile in(f.path);
    CHECK_THROWS_AS(sf::read_header(in), st::Error);
  }
  SECTION("5: N = 2^64-1") {
    TempFile f(std::string(8, '\xff') + "{}");
    st::io::InputFile in(f.path);
    CHECK_THROWS_AS(sf::read_header(in), st::Error);
  }
  SECTION("6: N = 100,000,001: {} + 99,999,999 spaces") {
    TempFile f(u64le(100'000'001) + "{}" + std::string(99'999'999, ' '));
    st::io::InputFile in(f.path);
    CHECK_THROWS_AS(sf::read_header(in), st::Error);
  }
  SECTION("a valid file is read, and errors name the path") {
    TempFile ok(u64le(T.size()) + T + std::string(8, '\x01'));
    st::io::InputFile in(ok.path);
    auto h = sf::read_header(in);
    REQUIRE(h.tensors.size() == 1);
    CHECK(h.data_start == 8 + T.size());
    CHECK(h.data_size == 8);
    TempFile bad(u64le(T.size()) + T + std::string(7, '\x01'));
    st::io::InputFile in2(bad.path);
    try {
      sf::read_header(in2);
      FAIL("no exception");
    } catch (const st::Error& e) {
      CHECK(std::string(e.what()).rfind(bad.path, 0) == 0);
    }
  }
}

// ------------------------------------------------------------------ writer

TEST_CASE("serialize_header produces the reference writer's bytes (§5)", "[safetensors][writer]") {
  auto as_string = [](const std::vector<uint8_t>& v) { return std::string(v.begin(), v.end()); };
  SECTION("no tensors, no metadata: u64 8 + {} + 6 spaces") {
    CHECK(as_string(sf::serialize_header(std::nullopt, {})) == u64le(8) + "{}      ");
  }
  SECTION("metadata {\"framework\":\"pt\"}: N = 40") {
    sf::Metadata m = {{"framework", "pt"}};
    CHECK(as_string(sf::serialize_header(m, {})) ==
          u64le(40) + R"({"__metadata__":{"framework":"pt"}})" + "     ");
  }
  SECTION("empty metadata map is still written first") {
    CHECK(as_string(sf::serialize_header(sf::Metadata{}, {})) ==
          u64le(24) + R"({"__metadata__":{}})" + "     ");
  }
  SECTION("tensors in the given order, metadata first, compact, source metadata order") {
    sf::Metadata m = {{"z", "1"}, {"a", "2"}};
    std::vector<sf::TensorEntry> t(2);
    t[0].name = "w";
    t[0].dtype = Dtype::F32;
    t[0].shape = {2, 3};
    t[0].begin = 0;
    t[0].end = 24;
    t[1].name = "s";
    t[1].dtype = Dtype::U8;
    t[1].shape = {};
    t[1].begin = 24;
    t[1].end = 25;
    const std::string json =
        R"({"__metadata__":{"z":"1","a":"2"},"w":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]},)"
        R"("s":{"dtype":"U8","shape":[],"data_offsets":[24,25]}})";
    REQUIRE(json.size() == 143);
    CHECK(as_string(sf::serialize_header(m, t)) == u64le(144) + json + " ");
  }
  SECTION("escaping: quote, backslash, newline, control char; / and non-ASCII raw") {
    std::vector<sf::TensorEntry> t(1);
    t[0].name = std::string("q\"b\\s/\xC3\xA9\n\x01");
    t[0].dtype = Dtype::BF16;
    t[0].shape = {0};
    const std::string json =
        "{\"q\\\"b\\\\s/\xC3\xA9\\n\\u0001\":{\"dtype\":\"BF16\",\"shape\":[0],\"data_offsets\":[0,0]}}";
    const size_t n = (json.size() + 7) / 8 * 8;
    CHECK(as_string(sf::serialize_header(std::nullopt, t)) ==
          u64le(n) + json + std::string(n - json.size(), ' '));
  }
  SECTION("serde_json escapes: \\t \\r short forms, other controls as lowercase \\u00xx, DEL raw") {
    std::vector<sf::TensorEntry> t = {te(std::string("a\tb\rc\x1f" "d\x7f"), Dtype::U8, {0}, 0, 0)};
    sf::Metadata m = {{"\xE2\x9C\x93", "\xD0\xB6\x08"}};
    const std::string json =
        "{\"__metadata__\":{\"\xE2\x9C\x93\":\"\xD0\xB6\\b\"},"
        "\"a\\tb\\rc\\u001fd\x7f\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[0,0]}}";
    const size_t n = (json.size() + 7) / 8 * 8;
    CHECK(as_string(sf::serialize_header(m, t)) ==
          cat(u64le(n), json, std::string(n - json.size(), ' ')));
  }
  SECTION("padding to a multiple of 8 for every JSON length; round trip through parse_header") {
    for (size_t len = 0; len < 24; ++len) {
      std::vector<sf::TensorEntry> t = {te(std::string(len, 'n'), Dtype::I16, {3}, 0, 6),
                                        te("b", Dtype::U64, {1, 2}, 6, 22)};
      auto b = sf::serialize_header(len % 2 ? std::optional<sf::Metadata>(sf::Metadata{{"k", "v"}})
                                            : std::nullopt, t);
      INFO("name length " << len);
      REQUIRE(b.size() >= 8);
      uint64_t n = 0;
      for (int i = 0; i < 8; ++i) n |= uint64_t(b[size_t(i)]) << (8 * i);
      CHECK(n + 8 == b.size());
      CHECK(n % 8 == 0);
      size_t last = b.size();
      while (last > 8 && b[last - 1] == ' ') --last;
      CHECK(b[last - 1] == '}');
      CHECK(b.size() - last < 8);
      auto h = sf::parse_header(std::span<const uint8_t>(b).subspan(8), b.size() + 22);
      REQUIRE(h.tensors.size() == 2);
      CHECK(h.tensors[0].name == t[0].name);
      CHECK(h.tensors[1].shape == t[1].shape);
      CHECK(h.tensors[1].dtype == Dtype::U64);
      CHECK(h.metadata.has_value() == bool(len % 2));
    }
  }
}

TEST_CASE("sort_reference_order: descending dtype enum, then name bytes (§5)", "[safetensors][writer]") {
  auto mk = [](const std::string& name, Dtype d) {
    sf::TensorEntry e;
    e.name = name;
    e.dtype = d;
    return e;
  };
  auto names = [](const std::vector<sf::TensorEntry>& v) {
    std::vector<std::string> n;
    for (auto& e : v) n.push_back(e.name);
    return n;
  };
  SECTION("the §5 example") {
    std::vector<sf::TensorEntry> v = {mk("i", Dtype::F4),   mk("b", Dtype::F32), mk("Zbool", Dtype::BOOL),
                                      mk("c", Dtype::U8),   mk("a", Dtype::F32), mk("d", Dtype::F64),
                                      mk("e", Dtype::BF16), mk("f", Dtype::F16), mk("g", Dtype::I64),
                                      mk("h", Dtype::C64)};
    sf::sort_reference_order(v);
    CHECK(names(v) == std::vector<std::string>{"g", "d", "h", "a", "b", "e", "f", "c", "i", "Zbool"});
  }
  SECTION("the full dtype group order") {
    const Dtype order[] = {Dtype::U64, Dtype::I64, Dtype::F64, Dtype::C64, Dtype::F32, Dtype::U32,
                           Dtype::I32, Dtype::BF16, Dtype::F16, Dtype::U16, Dtype::I16,
                           Dtype::F8_E5M2FNUZ, Dtype::F8_E4M3FNUZ, Dtype::F8_E8M0, Dtype::F8_E4M3,
                           Dtype::F8_E5M2, Dtype::I8, Dtype::U8, Dtype::F6_E3M2, Dtype::F6_E2M3,
                           Dtype::F4, Dtype::BOOL};
    std::vector<sf::TensorEntry> v;
    for (int i = 21; i >= 0; --i) v.push_back(mk(cat("x", std::to_string(i)), order[i]));
    std::swap(v[3], v[17]);
    sf::sort_reference_order(v);
    REQUIRE(v.size() == 22);
    for (size_t i = 0; i < 22; ++i) {
      INFO(i);
      CHECK(v[i].dtype == order[i]);
    }
  }
  SECTION("names compare as bytes (unsigned), within one dtype") {
    std::vector<sf::TensorEntry> v = {mk("b", Dtype::F32), mk("\xC3\xA9", Dtype::F32), mk("a0", Dtype::F32),
                                      mk("", Dtype::F32),  mk("z", Dtype::F32),        mk("B", Dtype::F32),
                                      mk("a", Dtype::F32)};
    sf::sort_reference_order(v);
    CHECK(names(v) == std::vector<std::string>{"", "B", "a", "a0", "b", "z", "\xC3\xA9"});
  }
}

TEST_CASE("Shape: equal dimensions are one interned object", "[safetensors][shape]") {
  const st::Shape scalar;
  CHECK(scalar.empty());
  CHECK(scalar == st::Shape(std::vector<uint64_t>{}));
  const st::Shape a{3072, 3072};
  const st::Shape b(std::vector<uint64_t>{3072, 3072});
  CHECK(a.data() == b.data());  // the same storage, not a copy
  CHECK(a == b);
  const st::Shape c{3072, 1};
  CHECK_FALSE(a == c);
  CHECK(a.data() != c.data());
  CHECK(c == std::vector<uint64_t>{3072, 1});
  CHECK(c.size() == 2);
  CHECK(c[0] == 3072);
  CHECK(c.back() == 1);
  const std::span<const uint64_t> view = c;
  CHECK(view.size() == 2);
  CHECK(view[1] == 1);
  CHECK(st::shape_text(c) == "[3072,1]");

  SECTION("from several threads at once") {
    // Each thread interns the same 200 shapes; every thread must get the
    // storage the first did.
    std::vector<std::vector<const uint64_t*>> got(4);
    std::vector<std::thread> threads;
    for (size_t t = 0; t < got.size(); ++t)
      threads.emplace_back([&got, t] {
        for (uint64_t i = 0; i < 200; ++i) got[t].push_back(st::Shape{i, 7, i * 3}.data());
      });
    for (auto& th : threads) th.join();
    for (size_t t = 1; t < got.size(); ++t) CHECK(got[t] == got[0]);
    for (uint64_t i = 0; i < 200; ++i) CHECK(*got[0][i] == i);
  }
}

TEST_CASE("JSON strings as serde_json writes them, and as Python's json.dumps does", "[safetensors][json]") {
  // e-acute, DEL, U+1F600, a quote, a newline, U+0001, a slash.
  const std::string text = "\xC3\xA9\x7F\xF0\x9F\x98\x80\"\n\x01/";
  std::string serde;
  st::json::append_json_string(serde, text);
  // serde_json: non-ASCII and DEL as they are (safetensors-format.md §5).
  CHECK(serde == "\"\xC3\xA9\x7F\xF0\x9F\x98\x80\\\"\\n\\u0001/\"");
  std::string python;
  st::json::append_json_string_ascii(python, text);
  // json.dumps("\u00e9\x7f\U0001F600\"\n\x01/") in Python 3.
  CHECK(python == R"("\u00e9\u007f\ud83d\ude00\"\n\u0001/")");
}
