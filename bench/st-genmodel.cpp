// st-genmodel: writes a FLUX-shaped FP8 checkpoint for benchmarks and demos
// (not installed). Per block i, with hidden size H:
//   blocks.i.qkv.weight [3H,H], .proj.weight [H,H], .mlp_in.weight [4H,H],
//   .mlp_out.weight [H,4H]: F8_E4M3 with F32 scalar weight_scale and input_scale,
//   F32 biases, BF16 norm scales (norm.query_norm.scale, as in FLUX).
// Tensors are in the reference writer's order (dtype descending, then name),
// so F8 weights come before their F32 scales, as in real files.
#include <unistd.h>

#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "cli.hpp"
#include "error.hpp"
#include "output_file.hpp"
#include "safetensors.hpp"

namespace {

struct Spec {
  std::string name;
  st::Dtype dtype;
  std::vector<uint64_t> shape;
};

uint64_t rng_state = 0x9E3779B97F4A7C15ull;
uint64_t next_rand() {  // xorshift64*: fast, deterministic
  rng_state ^= rng_state >> 12;
  rng_state ^= rng_state << 25;
  rng_state ^= rng_state >> 27;
  return rng_state * 0x2545F4914F6CDD1Dull;
}

void fill(const Spec& s, uint8_t* p, size_t n, uint64_t index_in_tensor) {
  if (s.dtype == st::Dtype::F8_E4M3) {
    for (size_t i = 0; i < n; i += 8) {
      uint64_t r = next_rand();
      for (size_t k = 0; k < 8 && i + k < n; ++k, r >>= 8) {
        uint8_t c = static_cast<uint8_t>(r);
        if ((c & 0x7F) == 0x7F) c ^= 0x01;  // quantisers clamp to +-448: no NaN codes
        p[i + k] = c;
      }
    }
  } else if (s.dtype == st::Dtype::F32) {
    const bool scale = s.name.find("scale") != std::string::npos;
    for (size_t i = 0; i + 4 <= n; i += 4) {
      const float v = scale ? 0.0002f + static_cast<float>((index_in_tensor + i) % 97) * 1e-6f
                            : static_cast<float>(static_cast<int64_t>(next_rand() % 2001) - 1000) * 1e-4f;
      std::memcpy(p + i, &v, 4);
    }
  } else {  // BF16 norms near 1.0
    for (size_t i = 0; i + 2 <= n; i += 2) {
      const uint16_t v = static_cast<uint16_t>(0x3F80 + next_rand() % 16);
      std::memcpy(p + i, &v, 2);
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  return st::cli::run("st-genmodel", [&] {
    st::cli::Options o("st-genmodel", "Write a FLUX-shaped FP8 test model.");
    o.value("hidden", "hidden size H", "N", "3072");
    o.value("blocks", "number of blocks (overrides --gib)", "N");
    o.value("gib", "approximate size in GiB", "GIB", "1");
    o.flag("f,force", "replace OUT");
    o.value("out", "output file", "");
    o.operands({"out"}, "OUT");
    const auto r = o.parse(argc, argv);
    if (st::cli::handle_help_version(o, r, "")) return 0;
    if (!r.count("out")) st::usage_error("no output file given");
    const auto whole = [&](const char* name) {  // a whole number, or a usage error
      const std::string& v = r.str(name);
      uint64_t x = 0;
      const auto [end, ec] = std::from_chars(v.data(), v.data() + v.size(), x);
      if (ec != std::errc() || end != v.data() + v.size()) st::usage_error(std::string("--") + name + " must be a whole number, not '" + v + "'");
      return x;
    };
    const uint64_t h = whole("hidden");
    if (h == 0) st::usage_error("--hidden must be at least 1");
    const uint64_t per_block = 12 * h * h;
    double gib = 0;
    if (!r.count("blocks")) {
      const std::string& v = r.str("gib");
      size_t used = 0;
      try {
        gib = std::stod(v, &used);
      } catch (const std::exception&) {
      }
      if (used == 0 || used != v.size() || !(gib >= 0 && gib < 1e6)) st::usage_error("--gib must be a number of GiB, not '" + v + "'");
    }
    const uint64_t blocks = r.count("blocks") ? whole("blocks")
                                              : std::max<uint64_t>(1, static_cast<uint64_t>(std::llround(gib * 1073741824.0 / static_cast<double>(per_block))));
    std::vector<Spec> specs;
    for (uint64_t b = 0; b < blocks; ++b) {
      const std::string p = "double_blocks." + std::to_string(b) + ".";
      const struct { const char* n; uint64_t rows, cols; } lin[] = {
          {"img_attn.qkv", 3 * h, h}, {"img_attn.proj", h, h}, {"img_mlp.0", 4 * h, h}, {"img_mlp.2", h, 4 * h}};
      for (const auto& l : lin) {
        specs.push_back({p + l.n + ".weight", st::Dtype::F8_E4M3, {l.rows, l.cols}});
        specs.push_back({p + l.n + ".weight_scale", st::Dtype::F32, {}});
        specs.push_back({p + l.n + ".input_scale", st::Dtype::F32, {}});
        specs.push_back({p + l.n + ".bias", st::Dtype::F32, {l.rows}});
      }
      specs.push_back({p + "img_attn.norm.query_norm.scale", st::Dtype::BF16, {128}});
      specs.push_back({p + "img_attn.norm.key_norm.scale", st::Dtype::BF16, {128}});
    }
    std::vector<st::safetensors::TensorEntry> entries;
    for (const auto& s : specs) {
      st::ByteSize size;
      st::tensor_size(s.dtype, s.shape.data(), s.shape.size(), size);
      entries.push_back({s.name, s.dtype, s.shape, 0, size.bytes});
    }
    st::safetensors::sort_reference_order(entries);
    uint64_t off = 0;
    for (auto& e : entries) {
      const uint64_t n = e.end;
      e.begin = off;
      e.end = off + n;
      off = e.end;
    }
    const auto header = st::safetensors::serialize_header(st::safetensors::Metadata{{"format", "pt"}}, entries);
    st::io::AtomicOutput out(r.str("out"), r.count("force") > 0);
    out.reserve(header.size() + off);
    out.pwrite_all(0, header.data(), header.size());
    std::vector<uint8_t> buf(8u << 20);
    for (const auto& e : entries) {
      const Spec spec{e.name, e.dtype, e.shape};
      for (uint64_t done = 0; done < e.end - e.begin;) {
        const size_t n = static_cast<size_t>(std::min<uint64_t>(buf.size(), e.end - e.begin - done));
        fill(spec, buf.data(), n, done);
        out.pwrite_all(header.size() + e.begin + done, buf.data(), n);
        done += n;
      }
    }
    out.commit();
    std::printf("%s: %llu blocks, H=%llu, %llu tensors, %llu bytes\n", r.str("out").c_str(),
                static_cast<unsigned long long>(blocks), static_cast<unsigned long long>(h),
                static_cast<unsigned long long>(entries.size()), static_cast<unsigned long long>(header.size() + off));
    return 0;
  });
}
