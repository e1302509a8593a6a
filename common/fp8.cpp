#include "fp8.hpp"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>

#include "error.hpp"
#include "fp8_simd.hpp"

namespace st::fp8 {

namespace {

// Builds the decode table of a 1-sign/E-exponent/M-mantissa format from its
// definition: normal (-1)^s (1 + m/2^M) 2^(e-bias), subnormal (e = 0)
// (-1)^s (m/2^M) 2^(1-bias). The "fn" formats have no infinities; "fnuz"
// ones have no negative zero (0x80 is their only NaN).
struct Format {
  int exp_bits;
  int man_bits;
  int bias;
  bool has_inf;       // IEEE-style e5m2: all-ones exponent with m = 0 is inf
  bool ieee_nan;      // all-ones exponent with m != 0 is NaN (e5m2)
  bool fn_nan;        // only all-ones exponent and mantissa is NaN (e4m3fn)
  bool fnuz;          // 0x80 is NaN, no negative zero, no inf
};

std::array<float, 256> build(const Format& f) {
  std::array<float, 256> t{};
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const int emax = (1 << f.exp_bits) - 1;
  const int mmax = (1 << f.man_bits) - 1;
  for (int code = 0; code < 256; ++code) {
    const int s = code >> 7;
    const int e = (code >> f.man_bits) & emax;
    const int m = code & mmax;
    float v;
    if (f.fnuz && code == 0x80) {
      v = nan;
    } else if (f.has_inf && e == emax && m == 0) {
      v = std::numeric_limits<float>::infinity();
    } else if (f.ieee_nan && e == emax) {
      v = nan;
    } else if (f.fn_nan && e == emax && m == mmax) {
      v = nan;
    } else if (e == 0) {
      v = std::ldexp(static_cast<float>(m), 1 - f.bias - f.man_bits);
    } else {
      v = std::ldexp(static_cast<float>(m + (1 << f.man_bits)), e - f.bias - f.man_bits);
    }
    t[static_cast<size_t>(code)] = (s && !std::isnan(v)) ? -v : v;
  }
  return t;
}

std::array<float, 256> build_e8m0() {
  std::array<float, 256> t{};
  for (int e = 0; e < 255; ++e) t[static_cast<size_t>(e)] = std::ldexp(1.0f, e - 127);
  t[255] = std::numeric_limits<float>::quiet_NaN();
  return t;
}

const std::array<float, 256> kE4M3 = build({4, 3, 7, false, false, true, false});
const std::array<float, 256> kE5M2 = build({5, 2, 15, true, true, false, false});
const std::array<float, 256> kE4M3Fnuz = build({4, 3, 8, false, false, false, true});
const std::array<float, 256> kE5M2Fnuz = build({5, 2, 16, false, false, false, true});
const std::array<float, 256> kE8M0 = build_e8m0();

template <typename T>
void store_le(uint8_t* out, T v) {
  static_assert(std::endian::native == std::endian::little || std::endian::native == std::endian::big);
  if constexpr (std::endian::native == std::endian::little) {
    std::memcpy(out, &v, sizeof v);
  } else {
    for (size_t i = 0; i < sizeof v; ++i) out[i] = static_cast<uint8_t>(v >> (8 * i));
  }
}

}  // namespace

std::optional<Target> target_from_name(std::string_view n) {
  if (n == "bf16" || n == "BF16" || n == "bfloat16") return Target::BF16;
  if (n == "f16" || n == "fp16" || n == "F16" || n == "float16") return Target::F16;
  if (n == "f32" || n == "fp32" || n == "F32" || n == "float32") return Target::F32;
  return std::nullopt;
}

Dtype target_dtype(Target t) {
  switch (t) {
    case Target::BF16: return Dtype::BF16;
    case Target::F16: return Dtype::F16;
    case Target::F32: return Dtype::F32;
  }
  return Dtype::BF16;
}

size_t target_bytes(Target t) { return t == Target::F32 ? 4 : 2; }

std::string_view target_suffix(Target t) {
  switch (t) {
    case Target::BF16: return "bf16";
    case Target::F16: return "f16";
    case Target::F32: return "f32";
  }
  return "bf16";
}

const std::array<float, 256>& decode_table(Dtype d) {
  switch (d) {
    case Dtype::F8_E4M3: return kE4M3;
    case Dtype::F8_E5M2: return kE5M2;
    case Dtype::F8_E4M3FNUZ: return kE4M3Fnuz;
    case Dtype::F8_E5M2FNUZ: return kE5M2Fnuz;
    case Dtype::F8_E8M0: return kE8M0;
    default: break;
  }
  throw Error("internal: no FP8 decode table for " + std::string(dtype_name(d)));
}

uint16_t f32_to_bf16(float f) {
  uint32_t x = std::bit_cast<uint32_t>(f);
  if ((x & 0x7FFFFFFFu) > 0x7F800000u) return 0x7FC0;
  x += 0x7FFFu + ((x >> 16) & 1u);  // round to nearest, ties to even
  return static_cast<uint16_t>(x >> 16);
}

uint16_t f32_to_f16(float f) {
  const uint32_t x = std::bit_cast<uint32_t>(f);
  const uint16_t sign = static_cast<uint16_t>((x >> 16) & 0x8000u);
  const uint32_t ax = x & 0x7FFFFFFFu;
  if (ax > 0x7F800000u) return 0x7E00;                    // NaN
  if (ax >= 0x47800000u) return sign | 0x7C00;            // >= 65536 (or inf): inf
  if (ax <= 0x33000000u) return sign;                     // <= 2^-25: ties to even give 0
  const uint32_t e = ax >> 23;
  if (e < 113) {                                          // below 2^-14: F16 subnormal
    const uint32_t m = (ax & 0x7FFFFFu) | 0x800000u;      // value = m * 2^(e-150)
    const uint32_t shift = 126 - e;                       // in units of 2^-24
    uint32_t q = m >> shift;
    const uint32_t rem = m & ((1u << shift) - 1);
    const uint32_t half = 1u << (shift - 1);
    if (rem > half || (rem == half && (q & 1u))) ++q;
    return static_cast<uint16_t>(sign | q);
  }
  uint32_t q = ((e - 112) << 10) | ((ax & 0x7FFFFFu) >> 13);
  const uint32_t rem = ax & 0x1FFFu;
  if (rem > 0x1000u || (rem == 0x1000u && (q & 1u))) ++q;  // a carry may reach inf: correct
  return static_cast<uint16_t>(sign | q);
}

float bf16_to_f32(uint16_t h) { return std::bit_cast<float>(static_cast<uint32_t>(h) << 16); }

float f16_to_f32(uint16_t h) {
  const uint32_t sign = (h & 0x8000u) << 16;
  const uint32_t e = (h >> 10) & 0x1Fu;
  const uint32_t m = h & 0x3FFu;
  if (e == 0x1F) return std::bit_cast<float>(sign | 0x7F800000u | (m << 13));
  if (e == 0) {
    const float v = std::ldexp(static_cast<float>(m), -24);
    return sign ? -v : v;
  }
  return std::bit_cast<float>(sign | ((e + 112) << 23) | (m << 13));
}

float canonical_f32(float f) {
  return std::isnan(f) ? std::bit_cast<float>(0x7FC00000u) : f;
}

bool is_scale_dtype(Dtype d) {
  return d == Dtype::F32 || d == Dtype::BF16 || d == Dtype::F16 || d == Dtype::F8_E8M0;
}

std::vector<float> decode_scales(Dtype d, std::span<const uint8_t> b) {
  std::vector<float> out;
  switch (d) {
    case Dtype::F32:
      out.resize(b.size() / 4);
      for (size_t i = 0; i < out.size(); ++i) {
        uint32_t v = uint32_t{b[4 * i]} | uint32_t{b[4 * i + 1]} << 8 |
                     uint32_t{b[4 * i + 2]} << 16 | uint32_t{b[4 * i + 3]} << 24;
        out[i] = std::bit_cast<float>(v);
      }
      break;
    case Dtype::BF16:
    case Dtype::F16:
      out.resize(b.size() / 2);
      for (size_t i = 0; i < out.size(); ++i) {
        const uint16_t v = static_cast<uint16_t>(b[2 * i] | b[2 * i + 1] << 8);
        out[i] = d == Dtype::BF16 ? bf16_to_f32(v) : f16_to_f32(v);
      }
      break;
    case Dtype::F8_E8M0: {
      const auto& t = decode_table(d);
      out.resize(b.size());
      for (size_t i = 0; i < b.size(); ++i) out[i] = t[b[i]];
      break;
    }
    default:
      throw Error("a " + std::string(dtype_name(d)) + " tensor cannot be a scale");
  }
  return out;
}

namespace {

// The result bits of one code under one scale, and what it lost.
enum LossKind : uint8_t { kExact = 0, kOverflow = 1, kUnderflow = 2, kNanIn = 3 };

template <typename Bits>
LossKind classify(float in, Bits out_bits, Target t) {
  const uint32_t b = static_cast<uint32_t>(out_bits);
  bool inf, zero, nan;
  if (t == Target::F32) {
    inf = (b & 0x7FFFFFFFu) == 0x7F800000u;
    nan = (b & 0x7FFFFFFFu) > 0x7F800000u;
    zero = (b & 0x7FFFFFFFu) == 0;
  } else if (t == Target::BF16) {
    inf = (b & 0x7FFFu) == 0x7F80u;
    nan = (b & 0x7FFFu) > 0x7F80u;
    zero = (b & 0x7FFFu) == 0;
  } else {
    inf = (b & 0x7FFFu) == 0x7C00u;
    nan = (b & 0x7FFFu) > 0x7C00u;
    zero = (b & 0x7FFFu) == 0;
  }
  if (nan || std::isnan(in)) return kNanIn;  // a NaN input, or a NaN/inf scale
  if (inf && !std::isinf(in)) return kOverflow;
  if (zero && in != 0.0f) return kUnderflow;
  return kExact;
}

uint32_t result_bits(float v, Target t) {
  switch (t) {
    case Target::BF16: return f32_to_bf16(v);
    case Target::F16: return f32_to_f16(v);
    case Target::F32: return std::bit_cast<uint32_t>(canonical_f32(v));
  }
  return 0;
}

void add_loss(Loss& loss, LossKind k, uint64_t n) {
  if (k == kOverflow) loss.overflow += n;
  else if (k == kUnderflow) loss.underflow += n;
  else if (k == kNanIn) loss.nan += n;
}

}  // namespace

namespace {

// How many of n bytes equal each of k <= 16 codes, in one pass. Byte-wide
// counters over rows of 64 bytes (at most 255 rows between flushes) let
// compilers vectorise it 16-64 bytes per instruction; std::count widens to
// 64-bit counters and was measured as slow as the conversion itself.
constexpr size_t kMaxCountedCodes = 16;
void count_codes(const uint8_t* in, size_t n, const uint8_t* codes, size_t k, uint64_t* counts) {
  constexpr size_t kLanes = 64;
  size_t i = 0;
  while (n - i >= kLanes) {
    uint8_t acc[kMaxCountedCodes][kLanes] = {};
    const size_t rows = std::min<size_t>((n - i) / kLanes, 255);
    for (size_t r = 0; r < rows; ++r, i += kLanes)
      for (size_t j = 0; j < k; ++j)
        for (size_t l = 0; l < kLanes; ++l) acc[j][l] = static_cast<uint8_t>(acc[j][l] + (in[i + l] == codes[j]));
    for (size_t j = 0; j < k; ++j)
      for (size_t l = 0; l < kLanes; ++l) counts[j] += acc[j][l];
  }
  for (; i < n; ++i)
    for (size_t j = 0; j < k; ++j) counts[j] += in[i] == codes[j];
}

// Runs at least this long go through a table of the 256 results of their
// scale: the same function of the same inputs, so the bits are identical.
constexpr size_t kTableRun = 1024;

// Returns false, having done nothing, where the kernel computes faster
// than a table can be looked up (NEON, but for the nibble tables).
bool convert_table(Kernel k, Dtype fp8, const std::array<float, 256>& lut, const uint8_t* in, size_t n,
                   float scale, Target t, uint8_t* out, Loss& loss) {
  if (k == Kernel::Neon && t == Target::F32) return false;
  std::array<uint32_t, 256> table;
  std::array<uint8_t, 256> kind;
  bool lossy = false;
  for (size_t c = 0; c < 256; ++c) {
    table[c] = result_bits(lut[c] * scale, t);
    kind[c] = classify(lut[c], table[c], t);
    lossy |= kind[c] != kExact;
  }
  size_t done = 0;
  uint64_t nan_codes = 0;
  bool nans_counted = false;  // and no other code loses anything: nothing more to count
  if (k == Kernel::Avx2 || k == Kernel::Neon) {
    simd::NibbleTable nt;
    if (t != Target::F32 && simd::make_nibble_table(fp8, table.data(), nt)) {
      done = k == Kernel::Avx2 ? simd::nibble_avx2(fp8, nt, in, n, out, nan_codes)
                               : simd::nibble_neon(fp8, nt, in, n, out, nan_codes);
      const bool e5m2 = fp8 == Dtype::F8_E5M2;
      nans_counted = true;
      for (size_t c = 0; c < 256; ++c)
        nans_counted &= kind[c] == (simd::is_nan_code(e5m2, static_cast<uint8_t>(c)) ? kNanIn : kExact);
      if (nans_counted)
        for (size_t i = done; i < n; ++i) nan_codes += simd::is_nan_code(e5m2, in[i]);
    } else if (k == Kernel::Avx2) {
      done = simd::lookup_avx2(table.data(), in, n, t, out);
    } else {
      return false;
    }
  }
  if (t == Target::F32) {
    for (size_t i = done; i < n; ++i) store_le(out + 4 * i, table[in[i]]);
  } else {
    std::array<uint16_t, 256> table16;  // a 16-bit table is faster for the scalar loop
    for (size_t c = 0; c < 256; ++c) table16[c] = static_cast<uint16_t>(table[c]);
    for (size_t i = done; i < n; ++i) store_le(out + 2 * i, table16[in[i]]);
  }
  // The nibble kernels counted the NaN codes as they went. Otherwise count
  // the codes that lose something (usually just the NaN codes) with a byte
  // count per code, which vectorises; a counter bumped per element chains
  // every iteration through memory (measured 5x slower).
  if (nans_counted) {
    loss.nan += nan_codes;
  } else if (lossy) {
    std::array<uint8_t, 256> lossy_codes;
    size_t k = 0;
    for (size_t c = 0; c < 256; ++c)
      if (kind[c] != kExact) lossy_codes[k++] = static_cast<uint8_t>(c);
    std::array<uint64_t, 256> hist{};
    if (k <= kMaxCountedCodes) {
      std::array<uint64_t, kMaxCountedCodes> counts{};
      count_codes(in, n, lossy_codes.data(), k, counts.data());
      for (size_t j = 0; j < k; ++j) hist[lossy_codes[j]] = counts[j];
    } else {
      for (size_t i = 0; i < n; ++i) ++hist[in[i]];
    }
    for (size_t c = 0; c < 256; ++c)
      if (hist[c]) add_loss(loss, static_cast<LossKind>(kind[c]), hist[c]);
  }
  return true;
}

// Short runs (e.g. one row of a 128x128 scale block): one multiply each.
void convert_direct(const std::array<float, 256>& lut, const uint8_t* in, size_t n, float scale,
                    Target t, uint8_t* out, Loss& loss) {
  for (size_t i = 0; i < n; ++i) {
    const float v = lut[in[i]];
    const uint32_t bits = result_bits(v * scale, t);
    if (t == Target::F32) store_le(out + 4 * i, bits);
    else store_le(out + 2 * i, static_cast<uint16_t>(bits));
    add_loss(loss, classify(v, bits, t), 1);
  }
}

}  // namespace

namespace simd {

bool make_nibble_table(Dtype fp8, const uint32_t* table, NibbleTable& nt) {
  const bool e5m2 = fp8 == Dtype::F8_E5M2;
  if (!e5m2 && fp8 != Dtype::F8_E4M3) return false;
  nt = NibbleTable{};
  auto result = [&](unsigned c) { return static_cast<uint16_t>(table[c]); };
  auto ordinary = [&](unsigned c) {
    return !is_special(e5m2, static_cast<uint8_t>(c)) && !is_e4m3_nan(e5m2, static_cast<uint8_t>(c));
  };
  for (unsigned j = 0; j < 16; ++j) {  // row 1 is ordinary in both formats
    if (!ordinary(0x10 | j)) return false;
    nt.lo[j] = result(0x10 | j);
  }
  for (unsigned h = 0; h < 16; ++h) {  // each row from one of its ordinary codes
    unsigned j = 0;
    while (j < 16 && !ordinary(h << 4 | j)) ++j;
    if (j == 16) return false;
    nt.hi[h] = static_cast<uint16_t>(result(h << 4 | j) - nt.lo[j]);
  }
  for (unsigned c = 0; c < 256; ++c)
    if (is_special(e5m2, static_cast<uint8_t>(c))) nt.special[special_index(e5m2, static_cast<uint8_t>(c))] = result(c);
  if (!e5m2) nt.nan = result(0x7F);
  for (unsigned c = 0; c < 256; ++c)
    if (nibble_result(e5m2, nt, static_cast<uint8_t>(c)) != result(c)) return false;
  return true;
}

}  // namespace simd

std::string_view kernel_name(Kernel k) {
  switch (k) {
    case Kernel::Scalar: return "scalar";
    case Kernel::Avx2: return "avx2";
    case Kernel::Neon: return "neon";
  }
  return "scalar";
}

std::vector<Kernel> available_kernels() {
  std::vector<Kernel> ks{Kernel::Scalar};
  if (simd::avx2_supported()) ks.push_back(Kernel::Avx2);
  if (simd::neon_supported()) ks.push_back(Kernel::Neon);
  return ks;
}

Kernel active_kernel() {
  static const Kernel chosen = [] {
    const auto ks = available_kernels();
    if (const char* want = std::getenv("ST_FP8_KERNEL")) {
      for (Kernel k : ks)
        if (kernel_name(k) == want) return k;
    }
    return ks.back();
  }();
  return chosen;
}

void convert_run(Kernel k, Dtype fp8, const uint8_t* in, size_t n, float scale, Target t,
                 uint8_t* out, Loss& loss) {
  const auto& lut = decode_table(fp8);
  const size_t ob = target_bytes(t);
  // Long runs go through the table of their scale's 256 results, looked up
  // by nibbles (AVX2, NEON) or by gathers (AVX2): measured faster than
  // computing. Short runs, and NEON where the nibble tables cannot be
  // made, are computed.
  if (n >= kTableRun && convert_table(k, fp8, lut, in, n, scale, t, out, loss)) return;
  size_t done = 0;
  if (k == Kernel::Avx2) done = simd::convert_avx2(fp8, in, n, scale, t, out, loss);
  if (k == Kernel::Neon) done = simd::convert_neon(fp8, in, n, scale, t, out, loss);
  convert_direct(lut, in + done, n - done, scale, t, out + done * ob, loss);
}

void convert_run(Dtype fp8, const uint8_t* in, size_t n, float scale, Target t, uint8_t* out,
                 Loss& loss) {
  convert_run(active_kernel(), fp8, in, n, scale, t, out, loss);
}

}  // namespace st::fp8
