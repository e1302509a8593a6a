// st::dequant::convert_chunk: per-tensor, per-row and block scale layouts
// (ragged last blocks, a 3-D weight), hand-checkable values, and chunking at
// arbitrary element offsets giving the same bytes as one whole call.
#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "catch.hpp"
#include "dequant.hpp"
#include "io.hpp"
#include "stream.hpp"
#include "oracle.hpp"

using st::Dtype;
using st::fp8::Target;
using st::stream::ScaleLayout;
using st::stream::ScalePairing;
using st::stream::TensorInfo;

namespace {

// Loss counts are checked by their own test; elsewhere they are not the point.
st::fp8::Loss loss_sink;

// Hand table of e4m3fn codes (fp8-conventions.md §1 test vectors).
constexpr uint8_t kOne = 0x38, kTwo = 0x40, kThree = 0x44, kFour = 0x48, kMinusOne = 0xB8,
                  kHalf = 0x30, kZero = 0x00;
float e4m3_hand(uint8_t c) {
  switch (c) {
    case kOne: return 1.0f;
    case kTwo: return 2.0f;
    case kThree: return 3.0f;
    case kFour: return 4.0f;
    case kMinusOne: return -1.0f;
    case kHalf: return 0.5f;
    default: return 0.0f;
  }
}
const uint8_t kCycle[] = {kOne, kTwo, kThree, kFour, kMinusOne, kHalf, kZero};

uint64_t numel(const std::vector<uint64_t>& shape) {
  uint64_t n = 1;
  for (auto d : shape) n *= d;
  return n;
}

TensorInfo weight(Dtype d, std::vector<uint64_t> shape) {
  TensorInfo t;
  t.name = "layer.weight";
  t.dtype = d;
  t.shape = std::move(shape);
  t.nbytes = numel(t.shape);
  return t;
}

ScalePairing pairing(ScaleLayout l, uint64_t br = 0, uint64_t bc = 0) {
  ScalePairing p;
  p.weight = 0;  // positions in a manifest: convert_chunk only asks whether there is a scale
  p.scale = 1;
  p.layout = l;
  p.block_rows = br;
  p.block_cols = bc;
  return p;
}

size_t tbytes(Target t) { return t == Target::F32 ? 4 : 2; }

std::vector<uint8_t> run(const TensorInfo& w, const ScalePairing& p, const std::vector<float>& s,
                         Target t, uint64_t first, const uint8_t* in, size_t n) {
  std::vector<uint8_t> out(n * tbytes(t) + 8, 0xCD);
  st::dequant::convert_chunk(w.view(), p, s, t, first, in, n, out.data(), loss_sink);
  for (size_t i = n * tbytes(t); i < out.size(); ++i) REQUIRE(out[i] == 0xCD);  // no overrun
  out.resize(n * tbytes(t));
  return out;
}

std::vector<float> as_f32(const std::vector<uint8_t>& b) {
  std::vector<float> v(b.size() / 4);
  std::memcpy(v.data(), b.data(), b.size());  // little-endian host
  return v;
}

// Expected bytes from element-wise value*scale, rounded by the oracle.
std::vector<uint8_t> expected(const std::vector<float>& values, const std::vector<float>& scale_of,
                              Target t) {
  std::vector<uint8_t> out;
  for (size_t i = 0; i < values.size(); ++i) {
    const float p = oracle::mul_f32(values[i], scale_of[i]);
    if (t == Target::F32) {
      uint32_t b = oracle::canonical_f32_bits(p);
      for (int k = 0; k < 4; ++k) out.push_back(uint8_t(b >> (8 * k)));
    } else {
      uint16_t h = t == Target::BF16 ? oracle::bf16().round(p) : oracle::f16().round(p);
      out.push_back(uint8_t(h));
      out.push_back(uint8_t(h >> 8));
    }
  }
  return out;
}

// Every split into runs of k elements, and every (first, n) sub-range,
// must give the bytes of the whole call.
void check_chunking(const TensorInfo& w, const ScalePairing& p, const std::vector<float>& s,
                    Target t, const std::vector<uint8_t>& codes) {
  const size_t n = codes.size();
  const size_t tb = tbytes(t);
  const auto whole = run(w, p, s, t, 0, codes.data(), n);
  for (size_t k = 1; k <= n; ++k) {
    std::vector<uint8_t> cat;
    for (size_t f = 0; f < n; f += k) {
      const size_t m = std::min(k, n - f);
      auto part = run(w, p, s, t, f, codes.data() + f, m);
      cat.insert(cat.end(), part.begin(), part.end());
    }
    INFO("chunks of " << k);
    REQUIRE(cat == whole);
  }
  for (size_t f = 0; f < n; ++f) {
    for (size_t m = 0; f + m <= n; m += 1 + m / 3) {
      // copy so the input pointer is exactly the chunk (no reads before it)
      std::vector<uint8_t> chunk(codes.begin() + long(f), codes.begin() + long(f + m));
      auto part = run(w, p, s, t, f, chunk.data(), m);
      INFO("first " << f << " n " << m);
      REQUIRE(std::equal(part.begin(), part.end(), whole.begin() + long(f * tb)));
    }
  }
}

}  // namespace

TEST_CASE("per-tensor scale, hand-checked", "[dequant]") {
  const auto w = weight(Dtype::F8_E4M3, {2, 3});
  const std::vector<uint8_t> in = {kOne, kTwo, kThree, kFour, kMinusOne, 0x80};
  const auto p = pairing(ScaleLayout::PerTensor);
  SECTION("F32") {
    auto v = as_f32(run(w, p, {0.5f}, Target::F32, 0, in.data(), in.size()));
    REQUIRE(v.size() == 6);
    CHECK(v[0] == 0.5f);
    CHECK(v[1] == 1.0f);
    CHECK(v[2] == 1.5f);
    CHECK(v[3] == 2.0f);
    CHECK(v[4] == -0.5f);
    CHECK(oracle::bits(v[5]) == 0x80000000u);  // -0 stays -0
  }
  SECTION("BF16") {
    auto b = run(w, p, {0.5f}, Target::BF16, 0, in.data(), in.size());
    const std::vector<uint8_t> want = {0x00, 0x3F, 0x80, 0x3F, 0xC0, 0x3F,
                                       0x00, 0x40, 0x00, 0xBF, 0x00, 0x80};
    CHECK(b == want);
  }
  SECTION("F16") {
    auto b = run(w, p, {0.5f}, Target::F16, 0, in.data(), in.size());
    const std::vector<uint8_t> want = {0x00, 0x38, 0x00, 0x3C, 0x00, 0x3E,
                                       0x00, 0x40, 0x00, 0xB8, 0x00, 0x80};
    CHECK(b == want);
  }
  SECTION("chunking") {
    check_chunking(w, p, {0.5f}, Target::BF16, in);
  }
}

TEST_CASE("the weight's FP8 dtype selects the decoding", "[dequant]") {
  const auto p = pairing(ScaleLayout::PerTensor);
  SECTION("F8_E5M2: 0x3C=1, 0x7B=57344, 0x7C=inf") {
    const std::vector<uint8_t> in = {0x3C, 0x7B, 0x7C};
    auto v = as_f32(run(weight(Dtype::F8_E5M2, {3}), p, {2.0f}, Target::F32, 0, in.data(), 3));
    CHECK(v[0] == 2.0f);
    CHECK(v[1] == 114688.0f);
    CHECK(std::isinf(v[2]));
  }
  SECTION("F8_E4M3FNUZ: 0x40=1, 0x7F=240, 0x80=NaN") {
    const std::vector<uint8_t> in = {0x40, 0x7F, 0x80};
    auto b = run(weight(Dtype::F8_E4M3FNUZ, {3}), p, {1.0f}, Target::F32, 0, in.data(), 3);
    auto v = as_f32(b);
    CHECK(v[0] == 1.0f);
    CHECK(v[1] == 240.0f);
    CHECK(oracle::bits(v[2]) == 0x7FC00000u);
  }
  SECTION("F8_E5M2FNUZ: 0x40=1") {
    const std::vector<uint8_t> in = {0x40, 0x44};
    auto v = as_f32(run(weight(Dtype::F8_E5M2FNUZ, {2}), p, {3.0f}, Target::F32, 0, in.data(), 2));
    CHECK(v[0] == 3.0f);
    CHECK(v[1] == 6.0f);
  }
}

TEST_CASE("per-row scales ([out,1] and [out]), hand-checked", "[dequant]") {
  // weight [3,4]; every element is code 2.0; row r is scaled by s[r]
  const auto w = weight(Dtype::F8_E4M3, {3, 4});
  const std::vector<uint8_t> in(12, kTwo);
  const std::vector<float> s = {1.0f, 0.25f, -3.0f};
  const auto p = pairing(ScaleLayout::PerRow);
  auto v = as_f32(run(w, p, s, Target::F32, 0, in.data(), in.size()));
  const std::vector<float> want = {2, 2, 2, 2, 0.5f, 0.5f, 0.5f, 0.5f, -6, -6, -6, -6};
  CHECK(v == want);

  SECTION("the pairing from infer_layout for [out,1] and [out] converts the same") {
    for (std::vector<uint64_t> sshape : {std::vector<uint64_t>{3, 1}, std::vector<uint64_t>{3}}) {
      std::string why;
      auto inferred = st::scales::infer_layout(w.shape, sshape, {}, &why);
      REQUIRE(inferred.has_value());
      CHECK(inferred->layout == ScaleLayout::PerRow);
      inferred->weight = p.weight;
      inferred->scale = p.scale;
      CHECK(as_f32(run(w, *inferred, s, Target::F32, 0, in.data(), in.size())) == want);
    }
  }
  SECTION("chunk starting mid-row") {
    // elements 3..8: row 0 col 3, row 1 cols 0-3, row 2 col 0
    auto part = as_f32(run(w, p, s, Target::F32, 3, in.data() + 3, 6));
    const std::vector<float> pw = {2, 0.5f, 0.5f, 0.5f, 0.5f, -6};
    CHECK(part == pw);
  }
  SECTION("chunking, mixed codes") {
    std::vector<uint8_t> mixed(12);
    for (size_t i = 0; i < 12; ++i) mixed[i] = kCycle[i % 7];
    check_chunking(w, p, s, Target::F16, mixed);
  }
}

TEST_CASE("per-row scales of a 3-D weight (leading expert dimension)", "[dequant]") {
  // weight [2,3,4], scale [2,3] (or [2,3,1]): 6 rows of 4
  const auto w = weight(Dtype::F8_E4M3, {2, 3, 4});
  std::vector<uint8_t> in(24, kOne);
  const std::vector<float> s = {1, 2, 3, 4, 5, 6};
  auto v = as_f32(run(w, pairing(ScaleLayout::PerRow), s, Target::F32, 0, in.data(), 24));
  REQUIRE(v.size() == 24);
  for (size_t i = 0; i < 24; ++i) {
    INFO("element " << i);
    CHECK(v[i] == float(i / 4 + 1));
  }
}

TEST_CASE("block scales with ragged last blocks, hand-checked", "[dequant]") {
  // weight [5,7], block 2x3 -> grid [3,3]; scale (i,j) = 3i+j+1 (1..9)
  const auto w = weight(Dtype::F8_E4M3, {5, 7});
  const auto p = pairing(ScaleLayout::Block, 2, 3);
  std::vector<float> s(9);
  for (size_t i = 0; i < 9; ++i) s[i] = float(i + 1);
  std::vector<uint8_t> in(35);
  for (size_t i = 0; i < 35; ++i) in[i] = kCycle[i % 7];
  auto v = as_f32(run(w, p, s, Target::F32, 0, in.data(), 35));
  REQUIRE(v.size() == 35);
  for (size_t r = 0; r < 5; ++r)
    for (size_t c = 0; c < 7; ++c) {
      INFO("r " << r << " c " << c);
      CHECK(v[r * 7 + c] == e4m3_hand(in[r * 7 + c]) * s[(r / 2) * 3 + c / 3]);
    }
  // by hand: (0,0) index 0 -> 1 x s(0,0)=1; (1,3) index 10 -> kCycle[3]=4 x s(0,1)=2
  CHECK(v[0] == 1.0f);
  CHECK(v[1 * 7 + 3] == 8.0f);
  // (4,6): index 34 -> kCycle[6]=0 -> 0; (4,5): index 33 -> kCycle[5]=0.5 x s(2,1)=8 -> 4
  CHECK(v[4 * 7 + 6] == 0.0f);
  CHECK(v[4 * 7 + 5] == 4.0f);
  // (4,0): index 28 -> kCycle[0]=1 x s(2,0)=7 -> 7 (last, one-row block)
  CHECK(v[4 * 7 + 0] == 7.0f);
  // (3,5): index 26 -> kCycle[5]=0.5 x s(1,1)=5
  CHECK(v[3 * 7 + 5] == 2.5f);

  SECTION("chunking") { check_chunking(w, p, s, Target::F32, in); }
}

TEST_CASE("block scales of a 3-D weight with a leading dimension", "[dequant]") {
  // weight [2,5,7], block 2x3 -> grid [2,3,3]; scale (e,i,j) = 9e+3i+j+1
  const auto w = weight(Dtype::F8_E4M3, {2, 5, 7});
  const auto p = pairing(ScaleLayout::Block, 2, 3);
  std::vector<float> s(18);
  for (size_t i = 0; i < 18; ++i) s[i] = float(i + 1);
  std::vector<uint8_t> in(70, kOne);
  auto v = as_f32(run(w, p, s, Target::F32, 0, in.data(), 70));
  REQUIRE(v.size() == 70);
  for (size_t e = 0; e < 2; ++e)
    for (size_t r = 0; r < 5; ++r)
      for (size_t c = 0; c < 7; ++c) {
        INFO("e " << e << " r " << r << " c " << c);
        CHECK(v[e * 35 + r * 7 + c] == s[e * 9 + (r / 2) * 3 + c / 3]);
      }
  CHECK(v[35] == 10.0f);      // (1,0,0)
  CHECK(v[69] == 18.0f);      // (1,4,6)
  CHECK(v[34] == 9.0f);       // (0,4,6)
  SECTION("chunking") {
    for (size_t i = 0; i < 70; ++i) in[i] = kCycle[(i * 3) % 7];
    check_chunking(w, p, s, Target::BF16, in);
  }
}

TEST_CASE("large block-scaled weight: chunks across rows equal one call and the oracle",
          "[dequant]") {
  // [300,260] with 128x128 blocks: grid [3,3], ragged 44 rows and 4 columns
  const auto w = weight(Dtype::F8_E4M3, {300, 260});
  const auto p = pairing(ScaleLayout::Block, 128, 128);
  std::mt19937 rng(99);
  std::vector<float> s(9);
  for (auto& x : s) x = float(std::ldexp(1.0 + double(rng() % 1000) / 997.0, int(rng() % 40) - 30));
  std::vector<uint8_t> in(300 * 260);
  for (auto& c : in) c = uint8_t(rng());
  const auto lut = oracle::fp8_table(Dtype::F8_E4M3);
  std::vector<float> vals(in.size()), sc(in.size());
  for (size_t i = 0; i < in.size(); ++i) {
    vals[i] = lut[in[i]];
    const size_t r = i / 260, c = i % 260;
    sc[i] = s[(r / 128) * 3 + c / 128];
  }
  for (Target t : {Target::BF16, Target::F16, Target::F32}) {
    INFO("target " << int(t));
    const auto want = expected(vals, sc, t);
    const auto whole = run(w, p, s, t, 0, in.data(), in.size());
    CHECK(whole == want);
    for (size_t k : {1000ul, 1023ul, 1024ul, 4097ul, 77ul}) {
      std::vector<uint8_t> cat;
      for (size_t f = 0; f < in.size(); f += k) {
        const size_t m = std::min(k, in.size() - f);
        auto part = run(w, p, s, t, f, in.data() + f, m);
        cat.insert(cat.end(), part.begin(), part.end());
      }
      INFO("chunks of " << k);
      CHECK(cat == whole);
    }
  }
}

// A recorded matching may list its pairs in any order (st-dequant finds a
// weight's pair by binary search over the pairs sorted by weight): the
// values are those of the pairs in manifest order, hand-checked.
TEST_CASE("run: a recorded matching with pairs out of weight order converts each weight with its own scale",
          "[dequant][run]") {
  namespace stream = st::stream;
  stream::Manifest m;
  m.producer = "test";
  // Scales first (positions 0-2), then the weights (3-5); E4M3 0x40 is 2.0.
  m.tensors = {TensorInfo("a.weight_scale", Dtype::F32, {}, 4), TensorInfo("b.weight_scale", Dtype::F32, {}, 4),
               TensorInfo("c.weight_scale", Dtype::F32, {}, 4), TensorInfo("a.weight", Dtype::F8_E4M3, {2}, 2),
               TensorInfo("b.weight", Dtype::F8_E4M3, {2}, 2), TensorInfo("c.weight", Dtype::F8_E4M3, {2}, 2)};
  const float scale[3] = {0.5f, 3.0f, -0.25f};
  stream::Matching mt;
  for (uint32_t w : {5u, 3u, 4u}) {  // c, a, b
    ScalePairing p;
    p.weight = w;
    p.scale = static_cast<int32_t>(w - 3);
    p.layout = ScaleLayout::PerTensor;
    p.convention = "weight_scale";
    mt.pairs.push_back(p);
  }
  mt.drop = {0, 1, 2};
  m.matching = mt;
  st::io::MemorySink in_bytes;
  {
    stream::Writer w(in_bytes);
    w.begin(m);
    for (uint32_t i = 0; i < 6; ++i) {
      std::vector<uint8_t> b(4);
      if (i < 3) std::memcpy(b.data(), &scale[i], 4);
      else b = {0x40, 0x40};
      w.data(i, b);
      w.end_tensor(i);
    }
    w.finish();
  }
  st::io::MemorySource src(in_bytes.bytes);
  stream::Reader r(src, "in");
  st::io::MemorySink out_bytes;
  stream::Writer w(out_bytes);
  st::dequant::Options opt;
  opt.target = Target::F32;
  const auto sum = st::dequant::run(r, w, opt, {});
  CHECK(sum.converted == 3);
  st::io::MemorySource back_src(out_bytes.bytes);
  stream::Reader back(back_src, "out");
  REQUIRE(back.manifest().tensors.size() == 3);
  std::vector<std::vector<float>> got(3);
  for (stream::Event ev = back.next(); ev.kind != stream::Event::Kind::End; ev = back.next())
    if (ev.kind == stream::Event::Kind::Data)
      for (size_t k = 0; k + 4 <= ev.data.size(); k += 4) {
        float f;
        std::memcpy(&f, ev.data.data() + k, 4);
        got[ev.tensor].push_back(f);
      }
  CHECK(back.manifest().tensors[0].name == "a.weight");
  CHECK(got[0] == std::vector<float>{1.0f, 1.0f});    // 2 x 0.5
  CHECK(got[1] == std::vector<float>{6.0f, 6.0f});    // 2 x 3
  CHECK(got[2] == std::vector<float>{-0.5f, -0.5f});  // 2 x -0.25
}
