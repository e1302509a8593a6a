// st::scales: scale layout inference from shapes, matching scales to FP8
// weights by name, and --block parsing (fp8-conventions.md §13,
// docs/stream-format.md §5.1).
#include <algorithm>
#include <string>
#include <vector>

#include "catch.hpp"
#include "error.hpp"
#include "scales.hpp"

using st::Dtype;
using st::stream::ScaleLayout;
using st::stream::TensorInfo;
namespace sc = st::scales;
using Shape = std::vector<uint64_t>;

namespace {

uint64_t bits_of(Dtype d) {
  switch (d) {
    case Dtype::F32: return 32;
    case Dtype::BF16:
    case Dtype::F16: return 16;
    default: return 8;
  }
}

TensorInfo ti(const std::string& name, Dtype d, Shape shape) {
  TensorInfo t;
  t.name = name;
  t.dtype = d;
  t.shape = shape;
  uint64_t n = 1;
  for (auto x : shape) n *= x;
  t.nbytes = n * bits_of(d) / 8;
  return t;
}

std::optional<st::stream::ScalePairing> infer(const Shape& w, const Shape& s, sc::BlockSize b = {}) {
  std::string why;
  auto r = sc::infer_layout(w, s, b, &why);
  if (!r) {
    INFO("weight " << sc::shape_text(w) << " scale " << sc::shape_text(s));
    CHECK(!why.empty());  // a reason is given
  }
  return r;
}

// Matchings name tensors by their position in the input: the names, for checks.
std::string name_at(const std::vector<TensorInfo>& t, int64_t i) { return i < 0 ? "" : t.at(static_cast<size_t>(i)).name; }

bool drops(const st::stream::Matching& m, const std::vector<TensorInfo>& t, const std::string& x) {
  return std::any_of(m.drop.begin(), m.drop.end(), [&](uint32_t d) { return name_at(t, d) == x; });
}

bool has_problem(const st::stream::Matching& m, const char* kind, const std::string& about) {
  for (const auto& p : m.problems)
    if (p.kind == kind && p.tensor.find(about) != std::string::npos) return true;
  return false;
}

const st::stream::ScalePairing* pair_of(const st::stream::Matching& m, const std::vector<TensorInfo>& t,
                                        const std::string& w) {
  for (const auto& p : m.pairs)
    if (name_at(t, p.weight) == w) return &p;
  return nullptr;
}

}  // namespace

TEST_CASE("infer_layout: per-tensor", "[scales][layout]") {
  for (Shape s : {Shape{}, Shape{1}, Shape{1, 1}}) {
    INFO("scale " << sc::shape_text(s));
    auto r = infer({4, 8}, s);
    REQUIRE(r.has_value());
    CHECK(r->layout == ScaleLayout::PerTensor);
  }
  auto r3 = infer({2, 4, 8}, {});
  REQUIRE(r3.has_value());
  CHECK(r3->layout == ScaleLayout::PerTensor);
}

TEST_CASE("infer_layout: per-row [out] and [out,1]", "[scales][layout]") {
  for (Shape s : {Shape{4}, Shape{4, 1}}) {
    INFO("scale " << sc::shape_text(s));
    auto r = infer({4, 8}, s);
    REQUIRE(r.has_value());
    CHECK(r->layout == ScaleLayout::PerRow);
  }
  SECTION("3-D weight: W[:-1] and W[:-1]+[1]") {
    for (Shape s : {Shape{2, 300}, Shape{2, 300, 1}}) {
      INFO("scale " << sc::shape_text(s));
      auto r = infer({2, 300, 64}, s);
      REQUIRE(r.has_value());
      CHECK(r->layout == ScaleLayout::PerRow);
    }
  }
}

TEST_CASE("infer_layout: block grids, ragged edges, --block override", "[scales][layout]") {
  struct C { Shape w, s; };
  const C fits[] = {
      {{256, 384}, {2, 3}},   // exact
      {{300, 200}, {3, 2}},   // ragged rows and cols
      {{129, 129}, {2, 2}},   // one element into the last block
      {{7168, 2112}, {56, 17}},  // DeepSeek-V3 shape (2112 = 16*128 + 64)
      {{4, 256, 300}, {4, 2, 3}},  // leading dimension
  };
  for (const C& c : fits) {
    INFO("weight " << sc::shape_text(c.w) << " scale " << sc::shape_text(c.s));
    auto r = infer(c.w, c.s);
    REQUIRE(r.has_value());
    CHECK(r->layout == ScaleLayout::Block);
    CHECK(r->block_rows == 128);
    CHECK(r->block_cols == 128);
  }
  SECTION("--block 64x32") {
    auto r = infer({100, 100}, {2, 4}, {64, 32});
    REQUIRE(r.has_value());
    CHECK(r->layout == ScaleLayout::Block);
    CHECK(r->block_rows == 64);
    CHECK(r->block_cols == 32);
    CHECK(!infer({100, 100}, {2, 4}).has_value());  // does not fit 128x128
    auto r2 = infer({100, 100}, {1, 1}, {64, 32});  // one element: still per tensor
    REQUIRE(r2.has_value());
    CHECK(r2->layout == ScaleLayout::PerTensor);
  }
}

TEST_CASE("infer_layout: groups along a row (compressed-tensors GROUP, MX, musubi)", "[scales][layout]") {
  // [out, k]: groups of N/k along each row when k divides N.
  auto g = infer({4, 8}, {4, 2});
  REQUIRE(g.has_value());
  CHECK(g->layout == ScaleLayout::Block);
  CHECK(g->block_rows == 1);
  CHECK(g->block_cols == 4);
  // musubi [out, in/bs, 1]
  auto mb = infer({6, 64}, {6, 2, 1});
  REQUIRE(mb.has_value());
  CHECK(mb->block_rows == 1);
  CHECK(mb->block_cols == 32);
  // Without a size from the config or --block, k groups over N columns are
  // N/k wide only when that is a power of two (the one power-of-two size that
  // gives k groups); 3 groups over 300 columns could be 100 or 128: refused.
  auto exact = infer({4, 256}, {4, 2});
  REQUIRE(exact.has_value());
  CHECK(exact->block_cols == 128);
  CHECK(!infer({4, 300}, {4, 3}).has_value());
  CHECK(!infer({4, 301}, {4, 3}).has_value());
  auto hinted = sc::infer_layout({4, 301}, {4, 3}, sc::BlockSize{}, nullptr, uint64_t{128});
  REQUIRE(hinted.has_value());
  CHECK(hinted->block_cols == 128);
  auto forced = sc::infer_layout({4, 301}, {4, 3}, sc::BlockSize{1, 101}, nullptr);
  REQUIRE(forced.has_value());
  CHECK(forced->block_cols == 101);
}

TEST_CASE("infer_layout: a block size nobody gave comes from the grid (fp8-conventions 13.3)", "[scales][layout]") {
  auto derived = [](const Shape& w, const Shape& s) { return sc::infer_layout(w, s, sc::BlockSize{}, nullptr, std::nullopt, false); };
  // Per axis: the even split when it is a power of two, else the smallest
  // power of two giving that many blocks (worked by hand).
  struct C { Shape w, s; uint64_t rows, cols; };
  const C ok[] = {
      {{256, 256}, {4, 4}, 64, 64},     // 256/4 = 64
      {{100, 70}, {2, 3}, 64, 32},      // 50 -> 64 (ceil(100/64) = 2); 24 -> 32 (ceil(70/32) = 3)
      {{130, 300}, {2, 3}, 128, 128},   // 65 -> 128; 100 -> 128 (ceil(300/128) = 3)
      {{8, 512, 256}, {8, 8, 2}, 64, 128},  // experts lead
  };
  for (const C& c : ok) {
    INFO(sc::shape_text(c.w) << " " << sc::shape_text(c.s));
    auto p = derived(c.w, c.s);
    REQUIRE(p.has_value());
    CHECK(p->layout == ScaleLayout::Block);
    CHECK(p->block_rows == c.rows);
    CHECK(p->block_cols == c.cols);
  }
  CHECK(!derived({100, 70}, {3, 3}).has_value());  // 3 blocks of 100: 34..49 would do, no power of two
  // The 128x128 default still comes first, and a size that was given is not replaced.
  CHECK(derived({256, 256}, {2, 2})->block_rows == 128);
  CHECK(!infer({256, 256}, {4, 4}).has_value());
  // ModelOpt FP8_PB_WO: [out/b,1,in/b,1] is the same grid.
  auto pbwo = infer({256, 384}, {2, 1, 3, 1});
  REQUIRE(pbwo.has_value());
  CHECK(pbwo->layout == ScaleLayout::Block);
  CHECK(pbwo->block_rows == 128);
  CHECK(pbwo->block_cols == 128);
  // One row: [1, ceil(n/128)] is one row of 128x128 blocks.
  auto row = infer({1, 130}, {1, 2});
  REQUIRE(row.has_value());
  CHECK(row->block_cols == 128);
}

TEST_CASE("infer_layout: shapes that fit nothing", "[scales][layout]") {
  struct C { Shape w, s; };
  const C bad[] = {
      {{4, 8}, {3}},
      {{4, 8}, {8}},         // columns, not rows
      {{4, 8}, {5, 1}},
      {{4, 8}, {1, 8}},
      {{4, 8}, {2, 2, 2}},
      {{256, 384}, {2, 4}},  // one column block too many
      {{256, 384}, {3, 3}},
      {{256, 384}, {1, 3}},
      {{4, 256, 300}, {3, 2, 3}},  // leading dims differ
      {{4, 256, 300}, {2, 3}},
      {{4, 8}, {2}},
      {{4, 8}, {0}},
  };
  for (const C& c : bad) {
    INFO("weight " << sc::shape_text(c.w) << " scale " << sc::shape_text(c.s));
    CHECK(!infer(c.w, c.s).has_value());
  }
}

TEST_CASE("match: pairs, drops and problems", "[scales][match]") {
  const std::vector<TensorInfo> t = {
      ti("l1.weight", Dtype::F8_E4M3, {4, 8}),
      ti("l1.weight_scale", Dtype::F32, {}),
      ti("l1.input_scale", Dtype::F32, {}),
      ti("l2.weight", Dtype::F8_E4M3, {256, 200}),
      ti("l2.weight_scale_inv", Dtype::F32, {2, 2}),
      ti("l4.weight", Dtype::BF16, {4, 8}),          // not FP8, has a scale
      ti("l4.weight_scale", Dtype::F32, {}),
      ti("l4.input_scale", Dtype::F32, {}),
      ti("l5.weight_scale", Dtype::F32, {}),         // no weight
      ti("l6.weight", Dtype::F8_E5M2, {4, 8}),       // no scale
      ti("l8.weight", Dtype::F8_E4M3FNUZ, {4, 8}),
      ti("l8.weight_scale", Dtype::BF16, {4, 1}),
      ti("l9.input_scale", Dtype::F32, {}),          // activation scale, no weight
      ti("l10.weight", Dtype::F8_E8M0, {4, 8}),      // E8M0 is a scale type, not a weight
      ti("l10.weight_scale", Dtype::F32, {}),
      ti("l11.weight", Dtype::F16, {4, 8}),
      ti("l11.weight_scale_inv", Dtype::F32, {1}),
      ti("bias", Dtype::F8_E4M3, {8}),               // FP8 tensor that is no ".weight"
  };
  const auto m = sc::match(t, {});

  SECTION("one pair per FP8 weight, in manifest order") {
    std::vector<std::string> w;
    for (const auto& p : m.pairs) w.push_back(name_at(t, p.weight));
    CHECK(w == std::vector<std::string>{"l1.weight", "l2.weight", "l6.weight", "l8.weight", "bias"});
  }
  SECTION("W_scale, W_scale_inv, per-row, none") {
    auto p1 = pair_of(m, t, "l1.weight");
    REQUIRE(p1);
    CHECK(name_at(t, p1->scale) == "l1.weight_scale");
    CHECK(p1->layout == ScaleLayout::PerTensor);
    auto p2 = pair_of(m, t, "l2.weight");
    REQUIRE(p2);
    CHECK(name_at(t, p2->scale) == "l2.weight_scale_inv");
    CHECK(p2->layout == ScaleLayout::Block);
    CHECK(p2->block_rows == 128);
    CHECK(p2->block_cols == 128);
    auto p6 = pair_of(m, t, "l6.weight");
    REQUIRE(p6);
    CHECK(!p6->has_scale());
    auto p8 = pair_of(m, t, "l8.weight");
    REQUIRE(p8);
    CHECK(name_at(t, p8->scale) == "l8.weight_scale");
    CHECK(p8->layout == ScaleLayout::PerRow);
    CHECK(m.block_rows == 128);
    CHECK(m.block_cols == 128);
  }
  SECTION("non-FP8 tensors are never weights") {
    CHECK(!pair_of(m, t, "l4.weight"));
    CHECK(!pair_of(m, t, "l10.weight"));
    CHECK(!pair_of(m, t, "l11.weight"));
    CHECK(has_problem(m, sc::kNonFp8Weight, "l4."));
    CHECK(has_problem(m, sc::kNonFp8Weight, "l10."));
    CHECK(has_problem(m, sc::kNonFp8Weight, "l11."));
  }
  SECTION("drop: paired scales, and activation scales unless their layer passes through") {
    CHECK(drops(m, t, "l1.weight_scale"));
    CHECK(drops(m, t, "l1.input_scale"));
    CHECK(drops(m, t, "l2.weight_scale_inv"));
    CHECK(drops(m, t, "l8.weight_scale"));
    CHECK(drops(m, t, "l9.input_scale"));  // no weight of its own, as self_attn.k_scale
    for (const char* kept : {"l4.weight", "l4.weight_scale", "l4.input_scale", "l5.weight_scale",
                             "l10.weight", "l10.weight_scale", "l11.weight_scale_inv",
                             "l1.weight", "l6.weight", "bias"}) {
      INFO(kept);
      CHECK(!drops(m, t, kept));
    }
  }
  SECTION("problems: no scale, orphan scale; none fatal") {
    CHECK(has_problem(m, sc::kNoScale, "l6.weight"));
    CHECK(has_problem(m, sc::kOrphanScale, "l5.weight_scale"));
    CHECK(!has_problem(m, sc::kNoScale, "l1."));
    CHECK(!has_problem(m, sc::kOrphanScale, "l1."));
    for (const auto& p : m.problems) {
      INFO(p.kind << " " << p.tensor);
      CHECK(!sc::is_fatal(p));
    }
    CHECK(sc::needs_attention(m));
  }
  SECTION("the matching validates against its manifest; tampering is caught") {
    st::stream::Manifest man;
    man.tensors = t;
    CHECK_NOTHROW(sc::validate(man, m));
    auto bad_layout = m;
    for (auto& p : bad_layout.pairs)
      if (name_at(t, p.weight) == "l8.weight") {
        p.layout = ScaleLayout::Block;
        p.block_rows = p.block_cols = 128;
      }
    CHECK_THROWS_AS(sc::validate(man, bad_layout), st::Error);
    auto missing = m;
    missing.pairs.erase(missing.pairs.begin() + 1);
    CHECK_THROWS_AS(sc::validate(man, missing), st::Error);
    auto unknown = m;
    unknown.pairs[0].scale = static_cast<int32_t>(t.size());  // no such tensor
    CHECK_THROWS_AS(sc::validate(man, unknown), st::Error);
    auto per_tensor_lie = m;
    for (auto& p : per_tensor_lie.pairs)
      if (name_at(t, p.weight) == "l2.weight") p.layout = ScaleLayout::PerTensor;
    CHECK_THROWS_AS(sc::validate(man, per_tensor_lie), st::Error);
  }
  SECTION("count_scale_keys and is_weight_scale_name") {
    CHECK(sc::count_scale_keys(t) == 10);
    CHECK(sc::is_weight_scale_name("a.weight_scale"));
    CHECK(sc::is_weight_scale_name("a.weight_scale_inv"));
    CHECK(sc::is_weight_scale_name("a.scale_weight"));
    CHECK(!sc::is_weight_scale_name("a.weight"));
    CHECK(!sc::is_weight_scale_name("a.bias"));
  }
}

TEST_CASE("match: ComfyUI legacy scale_weight pairs with its weight", "[scales][match]") {
  const std::vector<TensorInfo> t = {
      ti("m.weight", Dtype::F8_E4M3, {4, 8}),
      ti("m.scale_weight", Dtype::F32, {}),
  };
  const auto m = sc::match(t, {});
  std::string problems;
  for (const auto& q : m.problems) problems += q.kind + "(" + q.tensor + ") ";
  INFO("problems: " << problems);
  CHECK(sc::is_weight_scale_name("m.scale_weight"));
  auto p = pair_of(m, t, "m.weight");
  REQUIRE(p);
  CHECK(name_at(t, p->scale) == "m.scale_weight");
  CHECK(p->layout == ScaleLayout::PerTensor);
  CHECK(drops(m, t, "m.scale_weight"));
}

TEST_CASE("match: a weight with both W_scale and W_scale_inv takes W_scale_inv (fp8-conventions 13.2)", "[scales][match]") {
  const std::vector<TensorInfo> t = {
      ti("l3.weight", Dtype::F8_E4M3, {4, 8}),
      ti("l3.weight_scale", Dtype::F32, {}),
      ti("l3.weight_scale_inv", Dtype::F32, {}),
  };
  const auto m = sc::match(t, {});
  auto p = pair_of(m, t, "l3.weight");
  REQUIRE(p);
  CHECK(name_at(t, p->scale) == "l3.weight_scale_inv");  // the reference's order: _scale_inv before _scale
  CHECK(has_problem(m, sc::kAmbiguous, "l3."));
  CHECK(has_problem(m, sc::kOrphanScale, "l3.weight_scale"));  // the other passes through, reported
  CHECK(!drops(m, t, "l3.weight_scale"));
  for (const auto& q : m.problems) {
    INFO(q.kind << " " << q.tensor);
    CHECK(!sc::is_fatal(q));
  }
  CHECK(sc::needs_attention(m));
}

TEST_CASE("match: a scale that fits no layout is unusable and fatal", "[scales][match]") {
  const std::vector<TensorInfo> t = {
      ti("l7.weight", Dtype::F8_E4M3, {4, 8}),
      ti("l7.weight_scale", Dtype::F32, {3}),
  };
  const auto m = sc::match(t, {});
  REQUIRE(has_problem(m, sc::kUnusableScale, "l7."));
  for (const auto& p : m.problems)
    if (p.kind == std::string(sc::kUnusableScale)) CHECK(sc::is_fatal(p));
  CHECK(!drops(m, t, "l7.weight_scale"));
}

TEST_CASE("match: --block override", "[scales][match]") {
  const std::vector<TensorInfo> t = {
      ti("l2.weight", Dtype::F8_E4M3, {256, 200}),
      ti("l2.weight_scale_inv", Dtype::F32, {2, 2}),
  };
  sc::Options o;
  o.block = sc::BlockSize{128, 100};
  auto m = sc::match(t, o);
  auto p = pair_of(m, t, "l2.weight");
  REQUIRE(p);
  CHECK(p->layout == ScaleLayout::Block);
  CHECK(p->block_rows == 128);
  CHECK(p->block_cols == 100);
  CHECK(m.block_rows == 128);
  CHECK(m.block_cols == 100);
  o.block = sc::BlockSize{64, 64};  // would need a [4,4] grid
  auto m2 = sc::match(t, o);
  CHECK(has_problem(m2, sc::kUnusableScale, "l2."));
}

TEST_CASE("match: a raw-cast file (FP8, no scales at all) needs no attention", "[scales][match]") {
  const std::vector<TensorInfo> t = {
      ti("a.weight", Dtype::F8_E4M3, {4, 8}),
      ti("a.bias", Dtype::F8_E4M3, {4}),
      ti("norm.scale", Dtype::BF16, {4}),
  };
  const auto m = sc::match(t, {});
  CHECK(m.pairs.size() == 2);
  CHECK(m.drop.empty());
  for (const auto& p : m.pairs) CHECK(!p.has_scale());
  CHECK(!sc::needs_attention(m));
}

TEST_CASE("scales_first_order puts weight scales first, each group in order", "[scales]") {
  const std::vector<TensorInfo> t = {
      ti("w1.weight", Dtype::F8_E4M3, {4, 8}),
      ti("w1.weight_scale", Dtype::F32, {}),
      ti("b", Dtype::BF16, {4}),
      ti("w2.weight", Dtype::F8_E4M3, {256, 256}),
      ti("w2.weight_scale_inv", Dtype::F32, {2, 2}),
  };
  CHECK(sc::scales_first_order(t) == std::vector<uint32_t>{1, 4, 0, 2, 3});
}

TEST_CASE("parse_block", "[scales]") {
  auto b = sc::parse_block("128x128");
  CHECK(b.rows == 128);
  CHECK(b.cols == 128);
  auto c = sc::parse_block("64x32");
  CHECK(c.rows == 64);
  CHECK(c.cols == 32);
  auto d = sc::parse_block("1x1");
  CHECK(d.rows == 1);
  CHECK(d.cols == 1);
  for (const char* bad : {"0x5", "5x0", "abc", "", "128", "x128", "128x", "-1x5", "12x3x4", "1.5x2",
                          "128X128 ", " 128x128", "99999999999999999999x1"}) {
    INFO("'" << bad << "'");
    CHECK_THROWS_AS(sc::parse_block(bad), st::Error);
    try {
      sc::parse_block(bad);
    } catch (const st::Error& e) {
      CHECK(e.kind() == st::ErrorKind::Usage);
    }
  }
}

// JSON must be UTF-8 (RFC 8259 §8.1); a marker that is not is refused like
// one with a syntax error, so its bytes never reach a message or the
// manifest st-scales writes (found by fuzz_scale_matcher).
TEST_CASE("match: a comfy_quant marker that is not UTF-8 is an invalid marker", "[scales][match]") {
  st::stream::Manifest man;
  man.tensors = {ti("l.comfy_quant", Dtype::U8, {16}), ti("l.weight", Dtype::F8_E4M3, {2, 2})};
  const std::string raw_byte = "{\"format\":\"\xff\"}";            // a byte that starts no UTF-8 sequence
  const std::string lone_low = "{\"format\":\"\\udc00\"}";          // an escape for half a surrogate pair
  const std::string good = "{\"format\":\"float8_e4m3fn\"}";
  for (const std::string& content : {raw_byte, lone_low, good}) {
    INFO("marker " << content);
    sc::MarkerData markers;
    markers["l.comfy_quant"].assign(content.begin(), content.end());
    st::stream::Manifest out = man;
    out.matching = sc::match(man, markers, sc::Options{});
    CHECK(has_problem(*out.matching, sc::kBadMarker, "l.comfy_quant") == (content != good));
    // What st-scales would write still decodes as st-dequant reads it.
    const auto back = st::stream::decode_manifest(st::stream::encode_manifest(out));
    CHECK(back.matching->problems.size() == out.matching->problems.size());
  }
}

TEST_CASE("mx_swizzled_index: ComfyUI's cuBLAS tiles, worked from fp8-conventions 13.4", "[scales][layout]") {
  // from_blocked views a 512-byte tile as (32,16) -> (32,4,4) [b][a][c] and
  // transposes to (4,32,4) [a][b][c]: byte 16b + 4a + c is row 32a + b,
  // group c of the tile; tiles run over (128-row bands, 4-group bands).
  CHECK(sc::mx_swizzled_index(0, 0, 4) == 0);
  CHECK(sc::mx_swizzled_index(0, 3, 4) == 3);
  CHECK(sc::mx_swizzled_index(1, 0, 4) == 16);
  CHECK(sc::mx_swizzled_index(31, 2, 4) == 31 * 16 + 2);
  CHECK(sc::mx_swizzled_index(32, 0, 4) == 4);
  CHECK(sc::mx_swizzled_index(33, 1, 4) == 16 + 4 + 1);
  CHECK(sc::mx_swizzled_index(127, 3, 4) == 511);
  CHECK(sc::mx_swizzled_index(0, 4, 8) == 512);     // second tile of the band
  CHECK(sc::mx_swizzled_index(128, 0, 8) == 1024);  // next band: after both tiles
  CHECK(sc::mx_swizzled_index(128, 0, 2) == 512);   // 2 groups pad to one tile a band
  // Padded grid: 130 rows, 2 groups -> 256 x 4.
  CHECK(sc::mx_swizzled_numel(130, 64) == 256 * 4);
  CHECK(sc::mx_swizzled_numel(128, 128) == 128 * 4);
  CHECK(sc::mx_swizzled_numel(128, 160) == 128 * 8);  // 5 groups pad to 8
}
