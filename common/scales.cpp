#include "scales.hpp"

#include <rapidjson/document.h>
#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <set>
#include <unordered_map>
#include <unordered_set>

#include "error.hpp"
#include "fp8.hpp"
#include "json_util.hpp"
#include "model_config.hpp"

namespace st::scales {

using stream::Matching;
using stream::MatchProblem;
using stream::ScaleLayout;
using stream::ScalePairing;
using stream::TensorInfo;
using stream::TensorTable;
using stream::TensorView;

namespace {

bool ends_with(std::string_view s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.substr(s.size() - suffix.size()) == suffix;
}

// One row per naming convention. For a weight W ending in weight_suffix, with
// P = W minus that suffix, the scale is P + scale_suffix, an optional second
// scalar factor P + second_suffix, and the converted tensor is named
// P + output_suffix. Two rows finding a scale for one weight is an error.
struct Convention {
  const char* name;
  const char* weight_suffix;
  const char* scale_suffix;
  const char* output_suffix;
  const char* second_suffix;  // nullptr: none
  const char* producers;
  // Only F8_E8M0/U8 exponent scales: for a name as common as ".scale",
  // which also names ordinary parameters (FLUX's norm.query_norm.scale).
  bool exponents_only = false;
};
constexpr Convention kConventions[] = {
    {"weight_scale_inv", "", "_scale_inv", "", nullptr,
     "DeepSeek-V3/R1, Qwen3-FP8, HF fine-grained FP8 (block scales, multiplied)"},
    {"weight_scale", "", "_scale", "", nullptr,
     "ComfyUI mixed precision, FLUX.2, compressed-tensors, ModelOpt, FBGEMM, AutoFP8"},
    {"scale_weight", ".weight", ".scale_weight", ".weight", ".scale_weight_tensor",
     "ComfyUI scaled_fp8, musubi-tuner"},
    {"qscale_weight", ".weight", ".qscale_weight", ".weight", nullptr, "Mistral native"},
    {"scale", ".weight", ".scale", ".weight", nullptr, "DeepSeek-V4, HF MXFP8 (E8M0 group scales)", true},
    {"torchao", ":qdata", ":scale", "", nullptr, "pytorch/ao Float8Tensor"},
    {"torchao", "._weight_qdata", "._weight_scale", ".weight", nullptr, "pytorch/ao Float8Tensor"},
};

// Suffixes of weight-scale tensors, to report scales that found no weight.
constexpr std::string_view kWeightScaleSuffixes[] = {
    "weight_scale", "weight_scale_inv", "scale_weight", "qscale_weight", ":scale", "_weight_scale",
    "scale_weight_tensor",
};

// Activation/KV scales of a layer P: not needed once its weight is dequantised.
constexpr std::string_view kActivationScales[] = {
    "input_scale", "scale_input", "activation_scale", "qscale_act", "input_scale_ub",
    "k_scale", "v_scale", "kv_scale", "output_scale",
};

uint64_t ceil_div(uint64_t a, uint64_t b) { return a / b + (a % b != 0); }

uint64_t numel(const std::vector<uint64_t>& s) {
  uint64_t n = 1;
  for (uint64_t d : s) n *= d;  // shapes in a valid manifest do not overflow
  return n;
}

// The layer a weight belongs to: W minus its storage suffix and ".weight".
std::string layer_of(std::string_view w) {
  if (ends_with(w, "._weight_qdata")) return std::string(w.substr(0, w.size() - 14));
  std::string p(w);
  if (ends_with(p, ":qdata")) p.resize(p.size() - 6);
  if (ends_with(p, ".weight")) p.resize(p.size() - 7);
  return p;
}

std::optional<Dtype> fp8_of_comfy_format(const std::string& f) {
  if (f == "float8_e4m3fn") return Dtype::F8_E4M3;
  if (f == "float8_e5m2") return Dtype::F8_E5M2;
  return std::nullopt;
}

// ComfyUI per-layer formats, from __metadata__._quantization_metadata
// ({"layers": {"<layer>": {"format": ...} or "<format>"}}) and from
// `<layer>.comfy_quant` tensors (U8 bytes of {"format": ...}).
std::map<std::string, std::string> comfy_layer_formats(const stream::Manifest& m, const MarkerData& markers,
                                                       std::vector<MatchProblem>& problems) {
  std::map<std::string, std::string> formats;
  auto format_of = [](const rapidjson::Value& v) -> std::string {
    if (v.IsString()) return v.GetString();
    if (v.IsObject())
      if (auto f = v.FindMember("format"); f != v.MemberEnd() && f->value.IsString()) return f->value.GetString();
    return "";
  };
  if (m.metadata)
    for (const auto& [k, v] : *m.metadata)
      if (k == "_quantization_metadata") {
        rapidjson::Document d;
        if (!json::parse_json(d, v) || !d.IsObject()) {
          problems.push_back({kBadMarker, "__metadata__._quantization_metadata", "is not valid JSON (or nests too deep)"});
          continue;
        }
        if (auto l = d.FindMember("layers"); l != d.MemberEnd() && l->value.IsObject())
          for (auto it = l->value.MemberBegin(); it != l->value.MemberEnd(); ++it)
            formats[it->name.GetString()] = format_of(it->value);
      }
  for (const auto& [name, bytes] : markers) {
    rapidjson::Document d;
    const std::string layer = name.size() > 12 ? name.substr(0, name.size() - 12) : "";
    if (!json::parse_json(d, std::string_view(reinterpret_cast<const char*>(bytes.data()), bytes.size()))) {
      problems.push_back({kBadMarker, name, "comfy_quant marker is not valid JSON"});
      continue;
    }
    formats[layer] = format_of(d);
  }
  return formats;
}

// torchao's metadata: `tensor_names` (a JSON list) plus, per name, keys
// named by it or starting with "<name>:".
std::vector<std::string> torchao_tensor_names(const stream::Manifest& m) {
  std::vector<std::string> names;
  if (!m.metadata) return names;
  for (const auto& [k, v] : *m.metadata)
    if (k == "tensor_names") {
      rapidjson::Document d;
      if (json::parse_json(d, v) && d.IsArray())
        for (const auto& n : d.GetArray())
          if (n.IsString()) names.emplace_back(n.GetString(), n.GetStringLength());
    }
  return names;
}

bool is_scaled_fp8_marker(std::string_view n) { return n == "scaled_fp8" || ends_with(n, ".scaled_fp8"); }

// Tensors that match() never takes as weights, whatever their dtype: markers,
// and the scale of another tensor (NVFP4 block scales are F8_E4M3 tensors
// named weight_scale). validate() uses the same test. `has(name)` tells
// whether the manifest has a tensor of that name.
template <class Has>
bool never_a_weight(const TensorView& t, const Has& has) {
  if (is_marker_tensor(t) || is_scaled_fp8_marker(t.name) || is_weight_scale_name(t.name)) return true;
  for (const auto& row : kConventions)
    for (const char* suffix : {row.scale_suffix, row.second_suffix}) {
      if (!suffix || !ends_with(t.name, suffix)) continue;
      const std::string p(t.name.substr(0, t.name.size() - std::string_view(suffix).size()));
      if (has(p + row.weight_suffix) && p + row.weight_suffix != t.name) return true;
    }
  return false;
}

}  // namespace

std::vector<std::string> convention_names() {
  std::vector<std::string> out;
  for (const auto& c : kConventions)
    if (std::find(out.begin(), out.end(), c.name) == out.end()) out.push_back(c.name);
  return out;
}

void check_convention(const std::string& name) {
  const auto names = convention_names();
  if (std::find(names.begin(), names.end(), name) != names.end()) return;
  std::string list;
  for (const auto& n : names) list += (list.empty() ? "" : ", ") + n;
  usage_error("--convention must be one of " + list + ", not '" + name + "'");
}

std::string convention_description(const std::string& name) {
  for (const auto& c : kConventions)
    if (name == c.name) return name + " (" + c.producers + ")";
  return name;
}

std::string layout_text(const ScalePairing& p, const TensorTable& t) {
  if (!p.has_scale()) return "none (scale 1)";
  std::string s(stream::layout_name(p.layout));
  if (p.layout == ScaleLayout::Block)
    s = (p.block_rows == 1 ? "group " : "block ") + std::to_string(p.block_rows) + "x" + std::to_string(p.block_cols);
  if (p.layout == ScaleLayout::MxSwizzled) s = "group 1x32, cuBLAS tiles (ComfyUI mxfp8)";
  if (p.scale2 != ScalePairing::kNone) s += " x " + std::string(t.name(static_cast<size_t>(p.scale2)));
  return s;
}

BlockSize parse_block(const std::string& text) {
  const auto x = text.find_first_of("xX");
  std::string why;
  if (x != std::string::npos) {
    auto r = json::parse_u64(std::string_view(text).substr(0, x), &why);
    auto c = json::parse_u64(std::string_view(text).substr(x + 1), &why);
    if (r && c && *r > 0 && *c > 0) return {*r, *c};
  }
  usage_error("--block wants ROWSxCOLS with positive integers, e.g. 128x128, not '" + text + "'");
}

Dtype parse_fp8_format(const std::string& t) {
  if (t == "e4m3fn" || t == "e4m3" || t == "F8_E4M3" || t == "float8_e4m3fn") return Dtype::F8_E4M3;
  if (t == "e5m2" || t == "F8_E5M2" || t == "float8_e5m2") return Dtype::F8_E5M2;
  if (t == "e4m3fnuz" || t == "F8_E4M3FNUZ" || t == "float8_e4m3fnuz") return Dtype::F8_E4M3FNUZ;
  if (t == "e5m2fnuz" || t == "F8_E5M2FNUZ" || t == "float8_e5m2fnuz") return Dtype::F8_E5M2FNUZ;
  usage_error("--u8-as wants e4m3fn, e5m2, e4m3fnuz or e5m2fnuz, not '" + t + "'");
}

bool is_marker_tensor(const TensorView& t) {
  return (t.name == "comfy_quant" || ends_with(t.name, ".comfy_quant")) && t.dtype == Dtype::U8 &&
         t.shape.size() == 1 && t.nbytes <= kMaxMarkerBytes;
}

bool is_weight_scale_name(std::string_view name) {
  for (auto s : kWeightScaleSuffixes)
    if (ends_with(name, s)) return true;
  return false;
}

size_t count_scale_keys(const TensorTable& tensors) {
  size_t n = 0;
  for (const auto& t : tensors)
    if (ends_with(t.name, "weight_scale") || ends_with(t.name, "weight_scale_inv") ||
        ends_with(t.name, "scale_weight") || ends_with(t.name, "input_scale"))
      ++n;
  return n;
}

namespace {

// The block edge that makes `k` blocks of `dim`, when none was given: the
// even split when it is a power of two, else the smallest power of two
// that gives k blocks (DeepSeek's 128 for 130 in 2; the reference rounds an
// ambiguous edge up to a power of two).
std::optional<uint64_t> derived_block(uint64_t dim, uint64_t k) {
  if (dim == 0 || k == 0 || k > dim) return std::nullopt;
  const uint64_t even = ceil_div(dim, k);
  for (uint64_t p = 1; p != 0 && p <= dim; p <<= 1)
    if (p >= even && ceil_div(dim, p) == k) return p;
  return std::nullopt;
}

}  // namespace

std::optional<ScalePairing> infer_layout(const std::vector<uint64_t>& w, const std::vector<uint64_t>& s,
                                         BlockSize block, std::string* why, std::optional<uint64_t> group,
                                         bool block_given) {
  ScalePairing p;
  if (numel(s) == 1) {
    p.layout = ScaleLayout::PerTensor;
    return p;
  }
  // ModelOpt FP8_PB_WO: [out/b, 1, in/b, 1] is the 2-D block grid with unit
  // axes (TensorRT-LLM squeezes it so); the same bytes in the same order.
  if (w.size() == 2 && s.size() == 4 && s[1] == 1 && s[3] == 1)
    return infer_layout(w, {s[0], s[2]}, block, why, group, block_given);
  auto set_block = [&](uint64_t r, uint64_t c) -> std::optional<ScalePairing> {
    if (r > UINT32_MAX || c > UINT32_MAX) {  // a pairing holds 32-bit block sizes
      if (why) *why = "a block of " + std::to_string(r) + "x" + std::to_string(c) + " is larger than 2^32-1";
      return std::nullopt;
    }
    p.layout = ScaleLayout::Block;
    p.block_rows = static_cast<uint32_t>(r);
    p.block_cols = static_cast<uint32_t>(c);
    return p;
  };
  if (w.size() >= 2) {
    const uint64_t m = w[w.size() - 2], n = w[w.size() - 1];
    const std::vector<uint64_t> rows(w.begin(), w.end() - 1);
    // One scale per row: w[:-1] or w[:-1] + [1] ([out] or [out,1]).
    std::vector<uint64_t> rows1 = rows;
    rows1.push_back(1);
    if (s == rows || s == rows1) {
      p.layout = ScaleLayout::PerRow;
      return p;
    }
    // musubi-tuner blocks along a row: w[:-1] + [n/bs, 1], bs dividing n.
    if (s.size() == w.size() + 1 && std::equal(rows.begin(), rows.end(), s.begin()) && s.back() == 1 &&
        n > 0 && s[s.size() - 2] > 0 && n % s[s.size() - 2] == 0)
      return set_block(1, n / s[s.size() - 2]);
    if (s.size() == w.size() && std::equal(w.begin(), w.end() - 2, s.begin())) {
      const uint64_t sr = s[s.size() - 2], sc = s[s.size() - 1];
      // Groups along a row (compressed-tensors GROUP, MX): w[:-1] + [ceil(n/g)].
      if (sr == m && sc > 0) {
        // The size comes from --block 1xG or config.json; else n/k when that
        // is a power of two: then it is the only power-of-two size that
        // gives k groups (a ragged size such as 128 for 300 columns in 3
        // groups is not guessed).
        std::optional<uint64_t> g;
        if (block.rows == 1 && ceil_div(n, block.cols) == sc) g = block.cols;
        else if (group && ceil_div(n, *group) == sc) g = group;
        else if (n > 0 && n % sc == 0 && ((n / sc) & (n / sc - 1)) == 0) g = n / sc;
        if (g) return set_block(1, *g);
        // One row (m == 1): its block grid has one row too, the same thing.
        if (m == 1 && sc == ceil_div(n, block.cols)) return set_block(block.rows, block.cols);
        if (why)
          *why = "scale shape " + shape_text(s) + " has " + std::to_string(sc) + " groups per row of " +
                 std::to_string(n) + ", which fixes no group size; pass --block 1xG";
        return std::nullopt;
      }
      // 2-D blocks over the last two dimensions, ragged last blocks allowed.
      if (sr == ceil_div(m, block.rows) && sc == ceil_div(n, block.cols)) return set_block(block.rows, block.cols);
      // No size from --block or config.json: the shapes fix it.
      if (!block_given)
        if (auto br = derived_block(m, sr), bc = derived_block(n, sc); br && bc) return set_block(*br, *bc);
      if (why)
        *why = "scale shape " + shape_text(s) + " is not the " + std::to_string(block.rows) + "x" +
               std::to_string(block.cols) + " block grid of weight " + shape_text(w) + " (which would be " +
               shape_text([&] {
                 std::vector<uint64_t> g(w.begin(), w.end() - 2);
                 g.push_back(ceil_div(m, block.rows));
                 g.push_back(ceil_div(n, block.cols));
                 return g;
               }()) + "); pass --block RxC if the blocks differ";
      return std::nullopt;
    }
  }
  if (why)
    *why = "scale shape " + shape_text(s) + " fits no layout (per-tensor, per-row, group, block) of weight " + shape_text(w);
  return std::nullopt;
}

Matching match(const TensorTable& tensors, const Options& opt) {
  stream::Manifest m;
  m.tensors = tensors;
  return match(m, {}, opt);
}

Matching match(const stream::Manifest& m, const MarkerData& markers, const Options& opt) {
  const auto& tensors = m.tensors;
  Matching mt;
  const auto sizes = model_config::quant_sizes(m.quantization_config);
  BlockSize block;
  if (sizes.block) block = {sizes.block->first, sizes.block->second};
  if (opt.block) block = *opt.block;
  const bool block_given = sizes.block || opt.block;
  mt.block_rows = block.rows;
  mt.block_cols = block.cols;
  if (!opt.convention.empty()) check_convention(opt.convention);

  const stream::NameIndex by_name(tensors);
  auto has = [&](std::string_view n) { return by_name.find(n) >= 0; };
  const auto comfy = comfy_layer_formats(m, markers, mt.problems);
  bool comfy_mxfp8 = false;  // __metadata__.quant_format == "mxfp8" (ComfyUI, as sglang reads it)
  if (m.metadata)
    for (const auto& [k, v] : *m.metadata) comfy_mxfp8 |= k == "quant_format" && v == "mxfp8";
  // Roles by manifest position, a byte each (sets of names would copy
  // every name of a model that may have a million).
  enum : uint8_t { kUsed = 1, kDropped = 2, kConverted = 4 };
  std::vector<uint8_t> role(tensors.size(), 0);
  auto mark = [&](std::string_view n, uint8_t r) { role[by_name.position(n)] |= r; };
  std::set<std::string> converted_comfy_layers;  // layers with a comfy_quant marker that are converted
  std::set<std::string> converted_keys;  // their keys in _quantization_metadata
  std::unordered_set<std::string> kept_layers;  // layers in formats we leave as they are
  auto drop = [&](std::string_view n) { mark(n, kDropped); };
  {  // room for a pair per FP8 weight at most (U8/I8 may hold FP8 too)
    size_t most = 0;
    for (const auto& t : tensors)
      most += is_fp8_weight_dtype(t.dtype) || (is_fp8_container_dtype(t.dtype) && !is_marker_tensor(t));
    mt.pairs.reserve(most);
  }
  auto problem = [&](const char* kind, std::string_view t, std::string detail) {
    mt.problems.push_back({kind, std::string(t), std::move(detail)});
  };

  // Candidate scales of a tensor, by every (allowed) row.
  struct Candidate {
    const Convention* row;
    std::string scale, second, output;
  };
  auto candidates = [&](std::string_view w) {
    std::vector<Candidate> out;
    for (const auto& row : kConventions) {
      if (!opt.convention.empty() && opt.convention != row.name) continue;
      if (!ends_with(w, row.weight_suffix)) continue;
      const std::string p(w.substr(0, w.size() - std::string_view(row.weight_suffix).size()));
      if (!has(p + row.scale_suffix)) continue;
      if (row.exponents_only) {
        const Dtype sd = by_name.at(p + row.scale_suffix).dtype;
        if (sd != Dtype::F8_E8M0 && sd != Dtype::U8) continue;
      }
      Candidate c{&row, p + row.scale_suffix, "", p + row.output_suffix};
      if (row.second_suffix && has(p + row.second_suffix)) c.second = p + row.second_suffix;
      out.push_back(std::move(c));
    }
    return out;
  };

  for (uint32_t wi = 0; wi < tensors.size(); ++wi) {
    const TensorView w = tensors[wi];
    if (never_a_weight(w, has)) continue;
    const std::string layer = layer_of(w.name);
    // What the weight's bytes are: its FP8 dtype, or for a U8/I8 container
    // the FP8 type a marker (or --u8-as) names. Never a guess.
    std::optional<Dtype> format;
    // Layer keys may lack the state-dict prefix (third-party files write
    // "blocks.0.lin" for "model.diffusion_model.blocks.0.lin"): try the
    // layer name, then ever shorter dotted suffixes of it.
    auto cf = comfy.find(layer);
    for (size_t dot = layer.find('.'); cf == comfy.end() && dot != std::string::npos; dot = layer.find('.', dot + 1))
      cf = comfy.find(layer.substr(dot + 1));
    const bool comfy_marked = cf != comfy.end() && ends_with(w.name, ".weight");
    const bool comfy_mx_layer = comfy_marked && cf->second == "mxfp8";
    if (comfy_marked && !comfy_mx_layer && !fp8_of_comfy_format(cf->second)) {
      if (is_fp8_weight_dtype(w.dtype) || is_fp8_container_dtype(w.dtype)) {
        problem(kUnconverted, w.name, "layer format '" + cf->second + "' is not converted: the layer is left as it is");
        kept_layers.insert(layer);
      }
      continue;
    }
    auto cands = candidates(w.name);
    if (is_fp8_weight_dtype(w.dtype)) {
      format = w.dtype;
    } else if (is_fp8_container_dtype(w.dtype)) {
      if (comfy_marked) format = comfy_mx_layer ? Dtype::F8_E4M3 : *fp8_of_comfy_format(cf->second);
      else if (opt.u8_as && !cands.empty()) format = opt.u8_as;
      else if (!cands.empty()) {
        problem(kU8WithScale, w.name,
                std::string(dtype_name(w.dtype)) + " tensor with a scale: if it holds FP8 bytes, pass --u8-as e4m3fn (or e5m2)");
        for (const auto& c : cands) mark(c.scale, kUsed);
        kept_layers.insert(layer);  // left as it is, with its activation scales
        continue;
      }
    }
    if (!format) continue;

    ScalePairing pair;
    pair.weight = wi;
    pair.format = *format;
    if (cands.size() > 1) {
      // fp8-conventions 13.2 checks the suffixes in one order, the order of
      // kConventions: the first is paired, the others pass through (as
      // orphan-scale), and the choice is reported.
      std::string list;
      for (const auto& c : cands) list += (list.empty() ? "" : ", ") + c.scale;
      problem(kAmbiguous, w.name,
              "several candidate scales: " + list + "; using " + cands[0].scale +
                  " (the first in convention order; --convention chooses another)");
      cands.erase(cands.begin() + 1, cands.end());
    }
    if (cands.size() == 1) {
      const Candidate& c = cands[0];
      const TensorView s = by_name.at(c.scale);
      mark(s.name, kUsed);
      std::string why;
      std::optional<ScalePairing> got = infer_layout(w.shape, s.shape, block, &why, sizes.group, block_given);
      Dtype scale_format = s.dtype;
      // ComfyUI MXFP8 (a comfy_quant "mxfp8" layer, or quant_format mxfp8
      // metadata with exponent scales): the scales are in cuBLAS tiles, not
      // row-major, whatever the shape says (fp8-conventions 4, 13.4).
      if (comfy_mx_layer || (comfy_mxfp8 && (s.dtype == Dtype::U8 || s.dtype == Dtype::F8_E8M0))) {
        const bool fits = w.shape.size() == 2 && s.shape.size() == 2 &&
                          (s.dtype == Dtype::U8 || s.dtype == Dtype::F8_E8M0) &&
                          numel(s.shape) == mx_swizzled_numel(w.shape[0], w.shape[1]) &&
                          (s.shape[0] == (w.shape[0] + 127) / 128 * 128 || s.shape[0] == w.shape[0]);
        if (!fits) {
          problem(kUnconverted, w.name,
                  "ComfyUI mxfp8 scale " + c.scale + " " + shape_text(s.shape) + " (" + std::string(dtype_name(s.dtype)) +
                      ") is not the cuBLAS tile grid of weight " + shape_text(w.shape) + ": the layer is left as it is");
          kept_layers.insert(layer);
          continue;
        }
        got = ScalePairing{};
        got->layout = ScaleLayout::MxSwizzled;
        got->block_rows = 1;
        got->block_cols = 32;
        scale_format = Dtype::F8_E8M0;
      } else if (s.dtype == Dtype::U8 && got && got->layout == ScaleLayout::Block && got->block_rows == 1 &&
          got->block_cols == 32) {
        scale_format = Dtype::F8_E8M0;  // MX (compressed-tensors): U8 exponents of 1x32 groups, row-major
      } else if (!fp8::is_scale_dtype(s.dtype)) {
        got.reset();
        why = "scale " + c.scale + " has dtype " + std::string(dtype_name(s.dtype)) +
              " (scales must be F32, BF16, F16, F8_E8M0, or U8 exponents of 1x32 groups)";
      }
      if (got && !c.second.empty()) {
        const TensorView s2 = by_name.at(c.second);
        mark(s2.name, kUsed);
        if (numel(s2.shape) != 1 || !fp8::is_scale_dtype(s2.dtype)) {
          got.reset();
          why = "second scale " + c.second + " is not a single F32/BF16/F16 value";
        }
      }
      if (!got) {
        problem(kUnusableScale, w.name, why);
        continue;
      }
      ScalePairing p = *got;
      p.weight = wi;
      p.format = *format;
      p.scale = static_cast<int32_t>(by_name.position(c.scale));
      p.scale_format = scale_format;
      if (!c.second.empty()) p.scale2 = static_cast<int32_t>(by_name.position(c.second));
      p.convention = c.row->name;
      if (!c.output.empty() && c.output != w.name) {  // "" would mean the weight's own name
        p.output = static_cast<int32_t>(mt.outputs.size());
        mt.outputs.push_back(c.output);
      }
      pair = std::move(p);
      drop(s.name);
      if (!c.second.empty()) drop(c.second);
    } else {
      problem(kNoScale, w.name, "no scale found; cast with scale 1");
    }
    mark(w.name, kConverted);
    mt.pairs.push_back(std::move(pair));
    if (comfy_marked) {
      converted_comfy_layers.insert(layer);
      converted_keys.insert(cf->first);
    }
  }

  // Everything of a layer left as it is stays, unreported.
  if (!kept_layers.empty())
    for (size_t i = 0; i < tensors.size(); ++i) {
      const auto dot = tensors.name(i).rfind('.');
      if (dot != std::string::npos && kept_layers.count(std::string(tensors.name(i).substr(0, dot)))) role[i] |= kUsed;
    }

  // ComfyUI markers of converted layers, and activation and KV scales;
  // never a tensor that is converted itself (an FP8 tensor named like one).
  auto drop_part = [&](std::string_view n) {
    if (const long i = by_name.find(n); i >= 0 && !(role[static_cast<size_t>(i)] & kConverted))
      role[static_cast<size_t>(i)] |= kDropped;
  };
  for (const auto& layer : converted_comfy_layers) drop_part(layer + ".comfy_quant");

  if (!mt.pairs.empty())
    for (const auto& t : tensors)
      if (is_scaled_fp8_marker(t.name)) drop(t.name);

  // __metadata__: ComfyUI's layer list loses the converted layers; torchao's
  // bookkeeping goes with its storage names; quant_format goes once nothing
  // is left quantized.
  if (m.metadata) {
    const bool left_quantized = std::any_of(mt.problems.begin(), mt.problems.end(), [](const MatchProblem& p) {
      return p.kind == kUnconverted || p.kind == kU8WithScale;
    });
    if (!mt.pairs.empty() && !left_quantized)
      for (const auto& [k, v] : *m.metadata)
        if (k == "quant_format") mt.metadata_edits.push_back({k, std::nullopt});
    for (const auto& [k, v] : *m.metadata) {
      if (k != "_quantization_metadata" || converted_keys.empty()) continue;
      rapidjson::Document d;
      if (!json::parse_json(d, v) || !d.IsObject()) continue;
      auto l = d.FindMember("layers");
      if (l == d.MemberEnd() || !l->value.IsObject()) continue;
      for (const auto& key : converted_keys) l->value.RemoveMember(key.c_str());
      if (l->value.MemberCount() == 0) {
        mt.metadata_edits.push_back({k, std::nullopt});
      } else {
        rapidjson::StringBuffer sb;
        rapidjson::Writer<rapidjson::StringBuffer> wr(sb);
        d.Accept(wr);
        mt.metadata_edits.push_back({k, std::string(sb.GetString(), sb.GetSize())});
      }
    }
    bool torchao = false;
    for (const auto& p : mt.pairs) torchao |= p.convention == "torchao";
    if (torchao) {
      const auto names = torchao_tensor_names(m);
      for (const auto& [k, v] : *m.metadata) {
        bool remove = k == "tensor_names";
        for (const auto& n : names) remove |= k == n || k.rfind(n + ":", 0) == 0;
        if (remove) mt.metadata_edits.push_back({k, std::nullopt});
      }
      for (const auto& n : names)
        if (has(n + ":data") && !has(n)) mt.renames.push_back({n + ":data", n});
    }
  }

  // Scale-named tensors that no weight took: report them (they pass through).
  std::vector<int32_t> pair_at;  // weight position -> its pair, made for the first such scale
  for (size_t ti = 0; ti < tensors.size(); ++ti) {
    const TensorView t = tensors[ti];
    if ((role[ti] & (kUsed | kDropped)) || !is_weight_scale_name(t.name)) continue;
    std::string weight;
    for (const auto& row : kConventions) {
      if (!ends_with(t.name, row.scale_suffix)) continue;
      const std::string p(t.name.substr(0, t.name.size() - std::string_view(row.scale_suffix).size()));
      if (has(p + row.weight_suffix) && p + row.weight_suffix != t.name) {
        weight = p + row.weight_suffix;
        break;
      }
    }
    if (pair_at.empty() && !mt.pairs.empty()) {
      pair_at.assign(tensors.size(), -1);
      for (size_t k = 0; k < mt.pairs.size(); ++k) pair_at[mt.pairs[k].weight] = static_cast<int32_t>(k);
    }
    const long wi = weight.empty() ? -1 : by_name.find(weight);
    const ScalePairing* wp =
        wi >= 0 && !pair_at.empty() && pair_at[static_cast<size_t>(wi)] >= 0 ? &mt.pairs[static_cast<size_t>(pair_at[static_cast<size_t>(wi)])] : nullptr;
    if (wp)
      problem(kOrphanScale, t.name,
              "not used: its weight " + weight +
                  (!wp->has_scale() ? " was cast with scale 1" : " uses " + std::string(tensors.name(static_cast<size_t>(wp->scale)))) +
                  "; passed through");
    else if (!weight.empty())
      problem(kNonFp8Weight, t.name,
              "its weight " + weight + " is " + std::string(dtype_name(by_name.at(weight).dtype)) +
                  ", not FP8: both pass through unchanged");
    else
      problem(kOrphanScale, t.name, "looks like a weight scale but no FP8 weight uses it; passed through");
  }
  // Activation and KV scales belong to the quantized model rather than to
  // one weight (compressed-tensors' self_attn.k_scale, Mistral's
  // kv_fake_quantizer.qscale_act): once its FP8 weights are converted none
  // is used (fp8-conventions §0, §13.5). Kept: those of a layer left as it
  // is, or whose non-FP8 weight has a scale (both pass through, as reported).
  if (!opt.keep_scales && !mt.pairs.empty()) {
    // A name's parent and last part, as views: "a.b.k_scale" is "a.b" and
    // "k_scale"; "k_scale" is "" and itself.
    auto split_last = [](std::string_view n) {
      const auto dot = n.rfind('.');
      return dot == std::string_view::npos ? std::pair(std::string_view(), n) : std::pair(n.substr(0, dot), n.substr(dot + 1));
    };
    std::unordered_set<std::string> keep = kept_layers;
    for (const auto& p : mt.problems)
      if (p.kind == kNonFp8Weight) keep.emplace(split_last(p.tensor).first);
    for (const auto& t : tensors) {
      const auto [parent, last] = split_last(t.name);
      if (std::find(std::begin(kActivationScales), std::end(kActivationScales), last) == std::end(kActivationScales)) continue;
      if (!keep.count(std::string(parent))) drop_part(t.name);
    }
  }
  // Drop in manifest order, for a deterministic stream.
  for (size_t i = 0; i < tensors.size(); ++i)
    if (role[i] & kDropped) mt.drop.push_back(static_cast<uint32_t>(i));

  // Output names written twice: every later tensor against the first that
  // has the name, in output order. Views into m.tensors, mt.pairs and
  // mt.renames, sorted by name (adding a problem moves none of them).
  const OutputNames names(m, mt);
  const auto repeats = safetensors::repeats_by_name(names.size(), [&](size_t k) { return names.name(k); });
  for (const auto& [later, first] : repeats) {
    const std::string_view name = names.name(later);
    problem(kNameCollision, std::string(name),
            json::quote(tensors[names.input(first)].name) + " and " + json::quote(tensors[names.input(later)].name) +
                " would both be written as " + json::quote(name));
  }
  return mt;
}

OutputNames::OutputNames(const stream::Manifest& m, const Matching& mt) : m_(m) {
  const size_t n = m.tensors.size();
  std::vector<bool> dropped(n, false);  // a bit a tensor, not a set of names
  size_t ndropped = 0;
  for (uint32_t d : mt.drop)
    if (d < n && !dropped[d]) {
      dropped[d] = true;
      ++ndropped;
    }
  for (const auto& p : mt.pairs)
    if (p.output != ScalePairing::kNone && p.weight < n && !dropped[p.weight]) renamed_[p.weight] = mt.output_name(p, m.tensors);
  std::unordered_map<std::string_view, std::string_view> rename;  // the few tensors passed on under another name
  for (const auto& r : mt.renames) rename[r.from] = r.to;
  input_.reserve(n - ndropped);
  for (uint32_t i = 0; i < n; ++i) {
    if (dropped[i]) continue;
    if (!rename.empty())
      if (auto it = rename.find(m.tensors.name(i)); it != rename.end()) renamed_[i] = it->second;
    input_.push_back(i);
  }
}

std::string_view OutputNames::name(size_t k) const {
  const uint32_t i = input_[k];
  if (renamed_.empty()) return m_.tensors[i].name;
  const auto it = renamed_.find(i);
  return it == renamed_.end() ? std::string_view(m_.tensors[i].name) : it->second;
}

void validate(const stream::Manifest& m, const Matching& mt) {
  // Roles by manifest position, bits of a byte: a stream may list a
  // million tensors, and sets of their names would copy every one.
  const size_t n = m.tensors.size();
  // Positions come from a decoded stream (checked there) or from code: a
  // matching made for another manifest is refused here.
  auto at = [&](int64_t i, const char* what) -> size_t {
    if (i < 0 || static_cast<uint64_t>(i) >= n)
      fail("stream matching names " + std::string(what) + " #" + std::to_string(i) + ", which is not in the manifest");
    return static_cast<size_t>(i);
  };
  auto q = [&](size_t i) { return json::quote(m.tensors.name(i)); };
  enum : uint8_t { kDroppedRole = 1, kWeightRole = 2, kScaleRole = 4, kLeftRole = 8 };
  std::vector<uint8_t> role(n, 0);
  auto dropped = [&](size_t i) { return (role[i] & kDroppedRole) != 0; };
  // Names are looked up only for renames and some problems: made when needed.
  std::optional<stream::NameIndex> by_name;
  auto index = [&]() -> const stream::NameIndex& {
    if (!by_name) by_name.emplace(m);
    return *by_name;
  };
  for (uint32_t d : mt.drop) role[at(d, "dropped tensor")] |= kDroppedRole;
  for (const auto& p : mt.pairs) {
    const size_t wi = at(p.weight, "weight");
    const TensorView w = m.tensors[wi];
    const bool container = is_fp8_container_dtype(w.dtype);
    if (!is_fp8_weight_dtype(p.format) || (!container && w.dtype != p.format))
      fail("stream matching decodes " + q(wi) + " (" + std::string(dtype_name(w.dtype)) + ") as " +
           std::string(dtype_name(p.format)));
    if (role[wi] & kWeightRole) fail("stream matching lists weight " + q(wi) + " twice");
    role[wi] |= kWeightRole;
    if (p.output != ScalePairing::kNone && static_cast<size_t>(p.output) >= mt.outputs.size())
      fail("stream matching names output #" + std::to_string(p.output) + ", which it does not have");
    if (!p.has_scale()) {
      if (p.scale2 != ScalePairing::kNone) fail("stream matching gives " + q(wi) + " a second scale but no scale");
      continue;
    }
    const size_t si = at(p.scale, "scale");
    const TensorView s = m.tensors[si];
    const bool mx = s.dtype == Dtype::U8 && p.scale_format == Dtype::F8_E8M0 &&
                    ((p.layout == ScaleLayout::Block && p.block_rows == 1) || p.layout == ScaleLayout::MxSwizzled);
    if (!(fp8::is_scale_dtype(s.dtype) && s.dtype == p.scale_format) && !mx)
      fail("stream matching uses " + q(si) + " of dtype " + std::string(dtype_name(s.dtype)) + " as a scale");
    if (!dropped(si)) fail("stream matching keeps scale " + q(si) + " in the output");
    if (p.scale2 != ScalePairing::kNone) {
      const size_t s2i = at(p.scale2, "scale");
      const TensorView s2 = m.tensors[s2i];
      if (numel(s2.shape) != 1 || !fp8::is_scale_dtype(s2.dtype) || !dropped(s2i))
        fail("stream matching: second scale " + q(s2i) + " is not a dropped single value");
    }
    // The recorded layout must index exactly the scale's elements.
    bool ok = false;
    switch (p.layout) {
      case ScaleLayout::PerTensor: ok = numel(s.shape) == 1; break;
      case ScaleLayout::PerRow:  // one scale per row: the product of all but the last dimension (which may be 0)
        ok = w.shape.size() >= 2 && numel(s.shape) == numel(std::vector<uint64_t>(w.shape.begin(), w.shape.end() - 1));
        break;
      case ScaleLayout::MxSwizzled:
        ok = w.shape.size() == 2 && numel(s.shape) == mx_swizzled_numel(w.shape[0], w.shape[1]);
        break;
      case ScaleLayout::Block:
        if (w.shape.size() >= 2 && p.block_rows > 0 && p.block_cols > 0) {
          const uint64_t mm = w.shape[w.shape.size() - 2], nn = w.shape.back();
          const uint64_t lead = numel(w.shape) / (mm * nn == 0 ? 1 : mm * nn);
          ok = numel(s.shape) == lead * ceil_div(mm, p.block_rows) * ceil_div(nn, p.block_cols);
        }
        break;
    }
    if (!ok) fail("stream matching: scale " + q(si) + " does not have the recorded layout for " + q(wi));
  }
  auto renamed = [&](const std::string& name) -> size_t {
    const long i = index().find(name);
    if (i < 0) fail("stream matching names renamed tensor " + json::quote(name) + ", which is not in the manifest");
    return static_cast<size_t>(i);
  };
  for (const auto& r : mt.renames) renamed(r.from);
  // Each tensor has one role: a scale serves one weight (a second factor is
  // folded into it), and a converted weight is neither dropped, renamed
  // separately, nor another weight's scale.
  for (const auto& p : mt.pairs)
    for (const int32_t s : {p.scale, p.scale2}) {
      if (s == ScalePairing::kNone) continue;
      const auto si = static_cast<size_t>(s);
      if (role[si] & kScaleRole) fail("stream matching uses " + q(si) + " as the scale of more than one weight");
      role[si] |= kScaleRole;
    }
  for (const auto& p : mt.pairs)
    if (role[p.weight] & (kDroppedRole | kScaleRole)) fail("stream matching both converts and drops " + q(p.weight));
  for (const auto& r : mt.renames)
    if (role[renamed(r.from)] & kWeightRole) fail("stream matching renames converted weight " + json::quote(r.from) + " twice");
  // An FP8 weight is either converted or deliberately left as it is.
  for (const auto& p : mt.problems)
    if (const long i = p.kind == kUnconverted ? index().find(p.tensor) : -1; i >= 0) role[static_cast<size_t>(i)] |= kLeftRole;
  auto has = [&](std::string_view name) { return index().find(name) >= 0; };
  for (size_t i = 0; i < n; ++i) {
    const TensorView t = m.tensors[i];
    if (is_fp8_weight_dtype(t.dtype) && !(role[i] & (kWeightRole | kLeftRole | kDroppedRole)) && !never_a_weight(t, has)) {
      // st-scales before stream 1.2 refused a weight with several
      // candidate scales and paired nothing for it.
      const bool refused = std::any_of(mt.problems.begin(), mt.problems.end(),
                                       [&](const MatchProblem& p) { return p.kind == kAmbiguous && p.tensor == t.name; });
      fail("stream matching has no entry for FP8 tensor " + json::quote(t.name) +
           (refused ? " (several candidate scales, recorded by an older st-scales: run st-scales again)" : ""));
    }
  }
  const OutputNames out(m, mt);
  if (const auto r = safetensors::first_repeat(out.size(), [&](size_t k) { return out.name(k); }))
    fail("stream matching gives two output tensors the name " + json::quote(out.name(r->second)));
}

std::vector<Dtype> scale_decode_formats(const stream::Manifest& m, const Matching& mt,
                                        const std::vector<uint32_t>& positions) {
  std::vector<Dtype> formats(positions.size());
  for (size_t j = 0; j < positions.size(); ++j) formats[j] = m.tensors.dtype(positions[j]);
  for (const auto& p : mt.pairs) {
    if (!p.has_scale()) continue;
    const auto it = std::lower_bound(positions.begin(), positions.end(), static_cast<uint32_t>(p.scale));
    if (it != positions.end() && *it == static_cast<uint32_t>(p.scale)) formats[static_cast<size_t>(it - positions.begin())] = p.scale_format;
  }
  return formats;
}

bool is_fatal(const MatchProblem& p, bool strict) {
  return p.kind == kUnusableScale || p.kind == kNameCollision || p.kind == kBadMarker ||
         p.kind == kIndexMismatch || (strict && p.kind == kNoScale);
}

bool needs_attention(const Matching& mt, bool strict) {
  bool any_scale = false;
  for (const auto& p : mt.pairs) any_scale |= p.has_scale();
  for (const auto& p : mt.problems) {
    if (p.kind != kNoScale || strict || any_scale) return true;
  }
  return false;
}

std::map<std::string, std::string> owners(const TensorTable& tensors) {
  std::unordered_set<std::string_view> names;  // views: a header may list a million names
  names.reserve(tensors.size());
  for (const auto& t : tensors) names.insert(t.name);
  std::map<std::string, std::string> owner;
  for (const auto& t : tensors) {
    const std::string n(t.name);
    for (const auto& row : kConventions)
      for (const char* suffix : {row.scale_suffix, row.second_suffix}) {
        if (!suffix || !ends_with(n, suffix) || owner.count(n)) continue;
        const std::string w = n.substr(0, n.size() - std::string_view(suffix).size()) + row.weight_suffix;
        if (w != n && names.count(w)) owner[n] = w;
      }
    if (owner.count(n)) continue;
    std::vector<std::string_view> layer_parts(std::begin(kActivationScales), std::end(kActivationScales));
    layer_parts.push_back("comfy_quant");
    for (auto a : layer_parts) {
      const std::string suffix = "." + std::string(a);
      if (!ends_with(n, suffix)) continue;
      const std::string w = n.substr(0, n.size() - suffix.size()) + ".weight";
      if (names.count(w)) owner[n] = w;
      break;
    }
  }
  return owner;
}

std::vector<uint32_t> scales_first_order(const TensorTable& tensors) {
  // Markers; then every candidate scale of any tensor by any row, whether or
  // not its layout fits with the default block size (st-dequant --block may
  // make it fit) and whatever the weight's dtype (--u8-as); then the rest.
  // 4 bytes a tensor (a header may list a million names), made only when a
  // name ends like a scale of some convention.
  std::optional<stream::NameIndex> names;
  auto is_scale = [&](std::string_view n) {
    if (is_weight_scale_name(n)) return true;
    for (const auto& row : kConventions)
      for (const char* suffix : {row.scale_suffix, row.second_suffix}) {
        if (!suffix || !ends_with(n, suffix)) continue;
        const std::string w = std::string(n.substr(0, n.size() - std::string_view(suffix).size())) + row.weight_suffix;
        if (!names) names.emplace(tensors);
        if (w != n && names->find(w) >= 0) return true;
      }
    return false;
  };
  std::vector<uint32_t> order;
  order.reserve(tensors.size());
  for (uint32_t i = 0; i < tensors.size(); ++i)
    if (is_marker_tensor(tensors[i])) order.push_back(i);
  for (uint32_t i = 0; i < tensors.size(); ++i)
    if (!is_marker_tensor(tensors[i]) && is_scale(tensors.name(i))) order.push_back(i);
  std::vector<bool> taken(tensors.size());
  for (uint32_t i : order) taken[i] = true;
  for (uint32_t i = 0; i < tensors.size(); ++i)
    if (!taken[i]) order.push_back(i);
  return order;
}

namespace {

std::string fmt_value(float v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.6g", static_cast<double>(v));
  return buf;
}

void print_table(std::ostream& out, const std::vector<std::vector<std::string>>& rows) {
  std::vector<size_t> width;
  for (const auto& r : rows)
    for (size_t i = 0; i < r.size(); ++i) {
      if (width.size() <= i) width.push_back(0);
      width[i] = std::max(width[i], r[i].size());
    }
  for (const auto& r : rows) {
    std::string line;
    for (size_t i = 0; i < r.size(); ++i) {
      line += r[i];
      if (i + 1 < r.size()) line += std::string(width[i] - r[i].size() + 2, ' ');
    }
    out << line << '\n';
  }
}

struct Counts {
  size_t scaled = 0, unscaled = 0, fatal = 0;
  std::map<std::string, size_t> by_convention;
};

Counts count(const Matching& mt) {
  Counts c;
  for (const auto& p : mt.pairs) {
    if (!p.has_scale()) {
      ++c.unscaled;
      ++c.by_convention["raw cast (no scale)"];
    } else {
      ++c.scaled;
      ++c.by_convention[convention_description(p.convention)];
    }
  }
  for (const auto& p : mt.problems) c.fatal += p.kind == kUnusableScale;  // one per weight
  return c;
}

// Activation scales and markers: what is dropped besides paired scales.
std::vector<uint32_t> other_drops(const Matching& mt, size_t ntensors) {
  std::vector<bool> scale(ntensors, false);
  for (const auto& p : mt.pairs)
    for (const int32_t s : {p.scale, p.scale2})
      if (s != ScalePairing::kNone) scale[static_cast<size_t>(s)] = true;
  std::vector<uint32_t> out;
  for (uint32_t d : mt.drop)
    if (!scale[d]) out.push_back(d);
  return out;
}

}  // namespace

void print_report(std::ostream& out, const stream::Manifest& m, const Matching& mt, const ScaleValues& values) {
  const TensorTable& ts = m.tensors;
  out << "Total keys: " << m.tensors.size() << '\n';
  out << "Scale keys found: " << count_scale_keys(m.tensors) << '\n';
  const Counts c = count(mt);
  out << '\n' << "FP8 weights: " << c.scaled + c.unscaled + c.fatal << " (" << c.scaled << " with a scale, " << c.unscaled
      << " without";
  if (c.fatal) out << ", " << c.fatal << " with an unusable scale";
  out << ")\n";
  for (const auto& [name, n] : c.by_convention) out << "  " << name << ": " << n << '\n';
  if (!mt.pairs.empty()) {
    std::vector<std::vector<std::string>> rows{
        {"WEIGHT", "DTYPE", "SHAPE", "SCALE", "SCALE_SHAPE", "SCALE_DTYPE", "MIN", "MAX", "LAYOUT", "CONVENTION"}};
    for (const auto& p : mt.pairs) {
      const TensorView w = ts[p.weight];
      std::string dt(dtype_name(w.dtype));
      if (w.dtype != p.format) dt += " as " + std::string(dtype_name(p.format));
      std::vector<std::string> r{std::string(w.name), dt, shape_text(w.shape)};
      if (!p.has_scale()) {
        r.insert(r.end(), {"-", "-", "-", "-", "-", layout_text(p, ts), "raw cast"});
      } else {
        const TensorView s = ts[static_cast<size_t>(p.scale)];
        r.insert(r.end(), {std::string(s.name), shape_text(s.shape), std::string(dtype_name(s.dtype))});
        const std::vector<float> v = values ? values(static_cast<size_t>(p.scale)) : std::vector<float>{};
        if (v.empty()) {
          r.insert(r.end(), {"?", "?"});
        } else {
          const auto [lo, hi] = std::minmax_element(v.begin(), v.end());
          r.push_back(fmt_value(*lo));
          r.push_back(fmt_value(*hi));
        }
        r.push_back(layout_text(p, ts));
        r.push_back(p.convention);
      }
      rows.push_back(std::move(r));
    }
    print_table(out, rows);
  }
  auto section = [&](const char* kind, const char* title) {
    std::vector<const MatchProblem*> list;
    for (const auto& p : mt.problems)
      if (p.kind == std::string(kind)) list.push_back(&p);
    if (list.empty()) return;
    out << '\n' << title << ": " << list.size() << '\n';
    for (const auto* p : list) {
      if (p->tensor.empty()) out << "  " << p->detail << '\n';
      else out << "  " << p->tensor << (p->kind == std::string(kNoScale) ? "" : ": " + p->detail) << '\n';
    }
  };
  section(kNoScale, "FP8 weights with no scale (cast with scale 1)");
  section(kOrphanScale, "Scales with no FP8 weight (passed through)");
  section(kNonFp8Weight, "Scales of weights that are not FP8 (passed through)");
  section(kU8WithScale, "U8/I8 weights with a scale (not converted)");
  section(kUnconverted, "Layers in formats that are not converted (left as they are)");
  section(kUnusableScale, "Unusable scales (st-dequant refuses these)");
  section(kAmbiguous, "FP8 weights with several candidate scales (the first in convention order is used)");
  section(kNameCollision, "Output name collisions (st-dequant refuses these)");
  section(kBadMarker, "Invalid quantization markers (st-dequant refuses these)");
  section(kIndexMismatch, "Index and shards disagree (st-list refuses this model)");
  const auto others = other_drops(mt, ts.size());
  if (!others.empty()) {
    out << '\n' << "Activation scales and markers dropped after conversion: " << others.size() << '\n';
    for (uint32_t a : others) out << "  " << ts.name(a) << '\n';
  }
  std::vector<stream::Rename> renames;
  for (const auto& p : mt.pairs)
    if (p.output != ScalePairing::kNone) renames.push_back({std::string(ts.name(p.weight)), std::string(mt.output_name(p, ts))});
  renames.insert(renames.end(), mt.renames.begin(), mt.renames.end());
  if (!renames.empty()) {
    out << '\n' << "Renamed in the output: " << renames.size() << '\n';
    for (const auto& r : renames) out << "  " << r.from << " -> " << r.to << '\n';
  }
  if (!mt.metadata_edits.empty()) {
    out << '\n' << "Metadata changed: " << mt.metadata_edits.size() << '\n';
    for (const auto& e : mt.metadata_edits) out << "  " << e.key << (e.value ? ": rewritten" : ": removed") << '\n';
  }
}

void print_json(std::ostream& out, const std::string& file, const stream::Manifest& m, const Matching& mt,
                const ScaleValues& values, bool attention) {
  rapidjson::StringBuffer sb;
  rapidjson::Writer<rapidjson::StringBuffer> w(sb);
  auto str = [&](std::string_view s) { w.String(s.data(), static_cast<rapidjson::SizeType>(s.size())); };
  auto shape = [&](const std::vector<uint64_t>& s) {
    w.StartArray();
    for (uint64_t d : s) w.Uint64(d);
    w.EndArray();
  };
  const Counts c = count(mt);
  const TensorTable& ts = m.tensors;
  w.StartObject();
  w.Key("file");
  str(file);
  w.Key("total_keys");
  w.Uint64(m.tensors.size());
  w.Key("scale_keys");
  w.Uint64(count_scale_keys(m.tensors));
  w.Key("needs_attention");
  w.Bool(attention);
  w.Key("conventions");
  w.StartObject();
  for (const auto& [name, n] : c.by_convention) {
    w.Key(name.c_str());
    w.Uint64(n);
  }
  w.EndObject();
  w.Key("weights");
  w.StartArray();
  for (const auto& p : mt.pairs) {
    const TensorView wt = ts[p.weight];
    w.StartObject();
    w.Key("name");
    str(wt.name);
    w.Key("dtype");
    str(std::string(dtype_name(wt.dtype)));
    w.Key("format");
    str(std::string(dtype_name(p.format)));
    w.Key("shape");
    shape(wt.shape);
    w.Key("output");
    str(mt.output_name(p, ts));
    w.Key("scale");
    if (!p.has_scale()) {
      w.Null();
    } else {
      const TensorView s = ts[static_cast<size_t>(p.scale)];
      w.StartObject();
      w.Key("name");
      str(s.name);
      w.Key("dtype");
      str(std::string(dtype_name(s.dtype)));
      w.Key("shape");
      shape(s.shape);
      const std::vector<float> v = values ? values(static_cast<size_t>(p.scale)) : std::vector<float>{};
      // JSON has no NaN or infinity: such a bound is null, and non_finite counts them.
      size_t non_finite = 0;
      float lo = INFINITY, hi = -INFINITY;
      for (float x : v) {
        if (!std::isfinite(x)) ++non_finite;
        else lo = std::min(lo, x), hi = std::max(hi, x);
      }
      w.Key("min");
      if (v.empty() || non_finite == v.size()) w.Null();
      else w.Double(static_cast<double>(lo));
      w.Key("max");
      if (v.empty() || non_finite == v.size()) w.Null();
      else w.Double(static_cast<double>(hi));
      w.Key("non_finite");
      w.Uint64(non_finite);
      w.Key("second");
      if (p.scale2 == ScalePairing::kNone) w.Null();
      else str(ts.name(static_cast<size_t>(p.scale2)));
      w.EndObject();
    }
    w.Key("layout");
    str(!p.has_scale() ? "none" : stream::layout_name(p.layout));
    w.Key("block");
    if (p.layout == ScaleLayout::Block && p.has_scale()) {
      w.StartArray();
      w.Uint64(p.block_rows);
      w.Uint64(p.block_cols);
      w.EndArray();
    } else {
      w.Null();
    }
    w.Key("convention");
    if (!p.has_scale()) w.Null();
    else str(p.convention.str());
    w.EndObject();
  }
  w.EndArray();
  w.Key("problems");
  w.StartArray();
  for (const auto& p : mt.problems) {
    w.StartObject();
    w.Key("kind");
    str(p.kind);
    w.Key("tensor");
    str(p.tensor);
    w.Key("detail");
    str(p.detail);
    w.Key("fatal");
    w.Bool(is_fatal(p));
    w.EndObject();
  }
  w.EndArray();
  w.Key("dropped");
  w.StartArray();
  for (uint32_t d : mt.drop) str(ts.name(d));
  w.EndArray();
  w.Key("renamed");
  w.StartArray();
  for (const auto& r : mt.renames) {
    w.StartObject();
    w.Key("from");
    str(r.from);
    w.Key("to");
    str(r.to);
    w.EndObject();
  }
  w.EndArray();
  w.Key("metadata_removed");
  w.StartArray();
  for (const auto& e : mt.metadata_edits)
    if (!e.value) str(e.key);
  w.EndArray();
  w.EndObject();
  out << std::string(sb.GetString(), sb.GetSize()) << '\n';
}

}  // namespace st::scales
