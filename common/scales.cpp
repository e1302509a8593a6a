#include "scales.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <unordered_map>
#include <unordered_set>

#include "error.hpp"
#include "fp8.hpp"
#include "json_util.hpp"

namespace st::scales {

using stream::Matching;
using stream::MatchProblem;
using stream::ScaleLayout;
using stream::ScalePairing;
using stream::TensorInfo;

namespace {

bool ends_with(const std::string& s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// One row per naming convention: the scale of weight W is W + suffix.
// Checked in this order; two candidates for one weight is an error.
struct ScaleKeyRule {
  const char* suffix;
  const char* convention;
};
constexpr ScaleKeyRule kScaleKeyRules[] = {
    {"_scale_inv", "weight_scale_inv (DeepSeek/Qwen block scales, multiplied)"},
    {"_scale", "weight_scale"},
};

// Suffixes of weight-scale tensors in all known conventions, used to report
// scales that found no weight.
constexpr std::string_view kWeightScaleSuffixes[] = {
    "weight_scale", "weight_scale_inv", "scale_weight", "qscale_weight", ":scale", "_weight_scale",
};

// Activation/KV scales of a layer P (weight P.weight): not needed once the
// weight is dequantised.
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

}  // namespace

std::string shape_text(const std::vector<uint64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i) s += ",";
    s += std::to_string(shape[i]);
  }
  return s + "]";
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

bool is_weight_scale_name(const std::string& name) {
  for (auto s : kWeightScaleSuffixes)
    if (ends_with(name, s)) return true;
  return false;
}

size_t count_scale_keys(const std::vector<TensorInfo>& tensors) {
  size_t n = 0;
  for (const auto& t : tensors)
    if (ends_with(t.name, "weight_scale") || ends_with(t.name, "weight_scale_inv") ||
        ends_with(t.name, "scale_weight") || ends_with(t.name, "input_scale"))
      ++n;
  return n;
}

std::optional<ScalePairing> infer_layout(const std::vector<uint64_t>& w, const std::vector<uint64_t>& s,
                                         BlockSize block, std::string* why) {
  ScalePairing p;
  if (numel(s) == 1) {
    p.layout = ScaleLayout::PerTensor;
    return p;
  }
  if (w.size() >= 2) {
    // One scale per row: shape w[:-1] or w[:-1] + [1] ([out] or [out,1]).
    const std::vector<uint64_t> rows(w.begin(), w.end() - 1);
    std::vector<uint64_t> rows1 = rows;
    rows1.push_back(1);
    if (s == rows || s == rows1) {
      p.layout = ScaleLayout::PerRow;
      return p;
    }
    // Blocks over the last two dimensions, ragged last blocks allowed.
    if (s.size() == w.size() && std::equal(w.begin(), w.end() - 2, s.begin())) {
      const uint64_t m = w[w.size() - 2], n = w[w.size() - 1];
      if (s[s.size() - 2] == ceil_div(m, block.rows) && s[s.size() - 1] == ceil_div(n, block.cols)) {
        p.layout = ScaleLayout::Block;
        p.block_rows = block.rows;
        p.block_cols = block.cols;
        return p;
      }
      if (why)
        *why = "scale shape " + shape_text(s) + " is not the " + std::to_string(block.rows) + "x" +
               std::to_string(block.cols) + " block grid of weight " + shape_text(w) + " (which would be " +
               shape_text({ceil_div(m, block.rows), ceil_div(n, block.cols)}) + "); pass --block RxC if the blocks differ";
      return std::nullopt;
    }
  }
  if (why)
    *why = "scale shape " + shape_text(s) + " fits no layout (per-tensor, per-row, block) of weight " + shape_text(w);
  return std::nullopt;
}

Matching match(const std::vector<TensorInfo>& tensors, const Options& opt) {
  Matching mt;
  const BlockSize block = opt.block.value_or(BlockSize{});
  mt.block_rows = block.rows;
  mt.block_cols = block.cols;
  std::unordered_map<std::string, size_t> by_name;
  for (size_t i = 0; i < tensors.size(); ++i) by_name.emplace(tensors[i].name, i);
  std::unordered_set<std::string> used, dropped;

  for (const auto& w : tensors) {
    if (!is_fp8_weight_dtype(w.dtype)) continue;
    ScalePairing pair;
    pair.weight = w.name;
    std::vector<std::string> candidates;
    for (const auto& rule : kScaleKeyRules) {
      const std::string name = w.name + rule.suffix;
      if (by_name.count(name)) candidates.push_back(name);
    }
    if (candidates.size() > 1) {
      std::string list;
      for (const auto& c : candidates) list += (list.empty() ? "" : ", ") + c;
      mt.problems.push_back({kAmbiguous, w.name, "several candidate scales: " + list});
      for (const auto& c : candidates) used.insert(c);
    } else if (candidates.size() == 1) {
      const TensorInfo& s = tensors[by_name.at(candidates[0])];
      used.insert(s.name);
      std::string why;
      std::optional<ScalePairing> got;
      if (!fp8::is_scale_dtype(s.dtype))
        why = "scale " + s.name + " has dtype " + std::string(dtype_name(s.dtype)) + " (scales must be F32, BF16, F16 or F8_E8M0)";
      else
        got = infer_layout(w.shape, s.shape, block, &why);
      if (got) {
        pair = *got;
        pair.weight = w.name;
        pair.scale = s.name;
        dropped.insert(s.name);
        mt.drop.push_back(s.name);
      } else {
        mt.problems.push_back({kUnusableScale, w.name, why});
      }
    } else {
      mt.problems.push_back({kNoScale, w.name, "no scale found; cast with scale 1"});
    }
    mt.pairs.push_back(pair);
    // Activation scales of this layer are not needed after conversion.
    if (ends_with(w.name, ".weight")) {
      const std::string prefix = w.name.substr(0, w.name.size() - 6);
      for (auto a : kActivationScales) {
        const std::string name = prefix + std::string(a);
        if (by_name.count(name) && !dropped.count(name)) {
          dropped.insert(name);
          mt.drop.push_back(name);
        }
      }
    }
  }

  // Scale-named tensors that no FP8 weight took: report them (they pass through).
  for (const auto& t : tensors) {
    if (used.count(t.name) || !is_weight_scale_name(t.name)) continue;
    std::string weight;
    for (const auto& rule : kScaleKeyRules)
      if (ends_with(t.name, rule.suffix)) {
        const std::string w = t.name.substr(0, t.name.size() - std::string_view(rule.suffix).size());
        if (by_name.count(w)) weight = w;
        break;
      }
    if (!weight.empty())
      mt.problems.push_back({kNonFp8Weight, t.name,
                             "its weight " + weight + " is " + std::string(dtype_name(tensors[by_name.at(weight)].dtype)) +
                                 ", not FP8: both pass through unchanged"});
    else
      mt.problems.push_back({kOrphanScale, t.name, "looks like a weight scale but no FP8 weight uses it; passed through"});
  }
  // Keep drop in manifest order, for a deterministic stream.
  std::vector<std::string> ordered;
  for (const auto& t : tensors)
    if (dropped.count(t.name)) ordered.push_back(t.name);
  mt.drop = std::move(ordered);
  return mt;
}

void validate(const stream::Manifest& m, const Matching& mt) {
  auto find = [&](const std::string& name, const char* what) -> const TensorInfo& {
    const long i = m.find(name);
    if (i < 0) fail("stream matching names " + std::string(what) + " " + json::quote(name) + ", which is not in the manifest");
    return m.tensors[static_cast<size_t>(i)];
  };
  std::unordered_set<std::string> weights;
  for (const auto& p : mt.pairs) {
    const TensorInfo& w = find(p.weight, "weight");
    if (!is_fp8_weight_dtype(w.dtype)) fail("stream matching pairs non-FP8 tensor " + json::quote(p.weight));
    if (!weights.insert(p.weight).second) fail("stream matching lists weight " + json::quote(p.weight) + " twice");
    if (p.scale.empty()) continue;
    const TensorInfo& s = find(p.scale, "scale");
    if (!fp8::is_scale_dtype(s.dtype)) fail("stream matching uses " + json::quote(p.scale) + " of dtype " + std::string(dtype_name(s.dtype)) + " as a scale");
    if (std::find(mt.drop.begin(), mt.drop.end(), p.scale) == mt.drop.end())
      fail("stream matching keeps scale " + json::quote(p.scale) + " in the output");
    BlockSize b{p.block_rows ? p.block_rows : 1, p.block_cols ? p.block_cols : 1};
    auto got = infer_layout(w.shape, s.shape, b, nullptr);
    if (!got || got->layout != p.layout) fail("stream matching: scale " + json::quote(p.scale) + " does not have the recorded layout for " + json::quote(p.weight));
  }
  for (const auto& d : mt.drop) find(d, "dropped tensor");
  for (const auto& t : m.tensors)
    if (is_fp8_weight_dtype(t.dtype) && !weights.count(t.name))
      fail("stream matching has no entry for FP8 tensor " + json::quote(t.name));
}

bool is_fatal(const MatchProblem& p) { return p.kind == kUnusableScale || p.kind == kAmbiguous; }

bool needs_attention(const Matching& mt) {
  bool any_scale = false;
  for (const auto& p : mt.pairs) any_scale |= !p.scale.empty();
  for (const auto& p : mt.problems) {
    if (p.kind != kNoScale) return true;
    if (any_scale) return true;
  }
  return false;
}

std::vector<size_t> scales_first_order(const std::vector<TensorInfo>& tensors) {
  // Every candidate scale of an FP8 weight, whether or not its layout fits
  // with the default block size (st-dequant --block may make it fit), and
  // every tensor named like a weight scale.
  std::unordered_set<std::string> names, first;
  for (const auto& t : tensors) names.insert(t.name);
  for (const auto& t : tensors)
    if (is_fp8_weight_dtype(t.dtype))
      for (const auto& rule : kScaleKeyRules)
        if (names.count(t.name + rule.suffix)) first.insert(t.name + rule.suffix);
  std::vector<size_t> order;
  for (size_t i = 0; i < tensors.size(); ++i)
    if (first.count(tensors[i].name) || is_weight_scale_name(tensors[i].name)) order.push_back(i);
  std::unordered_set<size_t> taken(order.begin(), order.end());
  for (size_t i = 0; i < tensors.size(); ++i)
    if (!taken.count(i)) order.push_back(i);
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

}  // namespace

void print_report(std::ostream& out, const stream::Manifest& m, const Matching& mt, const ScaleValues& values) {
  out << "Total keys: " << m.tensors.size() << '\n';
  out << "Scale keys found: " << count_scale_keys(m.tensors) << '\n';
  size_t scaled = 0, unusable = 0;
  for (const auto& p : mt.pairs) scaled += !p.scale.empty();
  for (const auto& p : mt.problems) unusable += is_fatal(p);
  out << '\n' << "FP8 weights: " << mt.pairs.size() << " (" << scaled << " with a scale, "
      << mt.pairs.size() - scaled - unusable << " without";
  if (unusable) out << ", " << unusable << " with an unusable scale";
  out << ")\n";
  if (!mt.pairs.empty()) {
    std::vector<std::vector<std::string>> rows{
        {"WEIGHT", "DTYPE", "SHAPE", "SCALE", "SCALE_SHAPE", "SCALE_DTYPE", "MIN", "MAX", "LAYOUT"}};
    for (const auto& p : mt.pairs) {
      const TensorInfo& w = m.tensors[static_cast<size_t>(m.find(p.weight))];
      std::vector<std::string> r{p.weight, std::string(dtype_name(w.dtype)), shape_text(w.shape)};
      if (p.scale.empty()) {
        r.insert(r.end(), {"-", "-", "-", "-", "-", "none (scale 1)"});
      } else {
        const TensorInfo& s = m.tensors[static_cast<size_t>(m.find(p.scale))];
        r.insert(r.end(), {p.scale, shape_text(s.shape), std::string(dtype_name(s.dtype))});
        const std::vector<float> v = values ? values(p.scale) : std::vector<float>{};
        if (v.empty()) {
          r.insert(r.end(), {"?", "?"});
        } else {
          const auto [lo, hi] = std::minmax_element(v.begin(), v.end());
          r.push_back(fmt_value(*lo));
          r.push_back(fmt_value(*hi));
        }
        std::string layout(stream::layout_name(p.layout));
        if (p.layout == ScaleLayout::Block)
          layout += " " + std::to_string(p.block_rows) + "x" + std::to_string(p.block_cols);
        r.push_back(layout);
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
    for (const auto* p : list) out << "  " << p->tensor << (p->kind == std::string(kNoScale) ? "" : ": " + p->detail) << '\n';
  };
  section(kNoScale, "FP8 weights with no scale (cast with scale 1)");
  section(kOrphanScale, "Scales with no FP8 weight (passed through)");
  section(kNonFp8Weight, "Scales of weights that are not FP8 (passed through)");
  section(kUnusableScale, "Unusable scales (st-dequant refuses these)");
  section(kAmbiguous, "FP8 weights with several candidate scales (st-dequant refuses these)");
  std::vector<std::string> activations;
  std::unordered_set<std::string> scale_names;
  for (const auto& p : mt.pairs) scale_names.insert(p.scale);
  for (const auto& d : mt.drop)
    if (!scale_names.count(d)) activations.push_back(d);
  if (!activations.empty()) {
    out << '\n' << "Activation scales dropped after conversion: " << activations.size() << '\n';
    for (const auto& a : activations) out << "  " << a << '\n';
  }
}

}  // namespace st::scales
