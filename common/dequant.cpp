#include "dequant.hpp"

#include <algorithm>
#include <unordered_map>
#include <unordered_set>

#include "error.hpp"
#include "json_util.hpp"
#include "scales_stage.hpp"

namespace st::dequant {

using stream::Event;
using stream::ScaleLayout;
using stream::ScalePairing;
using stream::TensorInfo;
using stream::TensorView;

void convert_chunk(const stream::TensorView& w, const ScalePairing& pair, const std::vector<float>& scale,
                   fp8::Target target, uint64_t first, const uint8_t* in, size_t n, uint8_t* out,
                   fp8::Loss& loss) {
  const Dtype format = is_fp8_weight_dtype(w.dtype) ? w.dtype : pair.format;
  const size_t ob = fp8::target_bytes(target);
  if (!pair.has_scale() || pair.layout == ScaleLayout::PerTensor) {
    fp8::convert_run(format, in, n, !pair.has_scale() ? 1.0f : scale.at(0), target, out, loss);
    return;
  }
  // Rank >= 2 from here: N columns per row, scale constant over runs.
  const uint64_t cols = w.shape.back();
  const uint64_t rows_per_matrix = w.shape[w.shape.size() - 2];
  const uint64_t bm = pair.block_rows, bn = pair.block_cols;
  const uint64_t grid_cols = pair.layout == ScaleLayout::Block ? (cols + bn - 1) / bn : 1;
  const uint64_t grid_rows = pair.layout == ScaleLayout::Block ? (rows_per_matrix + bm - 1) / bm : 1;
  size_t done = 0;
  while (done < n) {
    const uint64_t idx = first + done;
    const uint64_t row = idx / cols, col = idx % cols;
    uint64_t run_end = cols;  // end column of the run with one scale
    uint64_t s;
    if (pair.layout == ScaleLayout::PerRow) {
      s = row;
    } else if (pair.layout == ScaleLayout::MxSwizzled) {  // 2-D only (validated)
      s = scales::mx_swizzled_index(row, col / 32, scales::mx_groups(cols));
      run_end = std::min(cols, (col / 32 + 1) * 32);
    } else {
      const uint64_t matrix = row / rows_per_matrix, r = row % rows_per_matrix;
      s = matrix * grid_rows * grid_cols + (r / bm) * grid_cols + col / bn;
      run_end = std::min(cols, (col / bn + 1) * bn);
    }
    const size_t len = static_cast<size_t>(std::min<uint64_t>(run_end - col, n - done));
    fp8::convert_run(format, in + done, len, scale.at(s), target, out + done * ob, loss);
    done += len;
  }
}

namespace {

enum class Action { Pass, Convert, HoldScale, Drop };

constexpr size_t kConvertPiece = 256u << 10;  // FP8 codes per output DATA frame: one per st-list frame

std::string name_list(const std::vector<std::string>& names) {
  std::string s;
  const size_t shown = std::min<size_t>(names.size(), 5);
  for (size_t i = 0; i < shown; ++i) s += (i ? ", " : "") + names[i];
  if (names.size() > shown) s += ", ... (" + std::to_string(names.size() - shown) + " more)";
  return s;
}

// "3 overflowed to infinity, 1 NaN": only what happened.
std::string loss_text(const fp8::Loss& l) {
  std::string s;
  auto part = [&](uint64_t n, const char* what) {
    if (n) s += (s.empty() ? "" : ", ") + std::to_string(n) + what;
  };
  part(l.overflow, " value(s) overflowed to infinity");
  part(l.underflow, " non-zero value(s) underflowed to zero");
  part(l.nan, " NaN value(s)");
  return s;
}

bool rematch_requested(const scales::Options& o) {
  return o.block || !o.convention.empty() || o.u8_as || o.keep_scales;
}

}  // namespace

void check_problems(const stream::Matching& mt, const Options& opt) {
  for (const auto& p : mt.problems)
    if (scales::is_fatal(p, opt.match.strict))
      fail("tensor " + json::quote(p.tensor) + ": " + (p.kind == scales::kNoScale ? "FP8 weight without a scale (--strict)" : p.detail));
}

namespace {

// The decoded scales, by slot. Scales come first in the stream, so every
// scale of a model is held at once: a scale of one value (the usual case)
// takes 4 bytes here, not a vector and a heap block of its own.
class HeldScales {
 public:
  explicit HeldScales(size_t slots) : one_(slots), is_one_(slots, false) {}
  void set(size_t slot, std::vector<float>&& v) {
    if (v.size() == 1) {
      one_[slot] = v[0];
      is_one_[slot] = true;
    } else {
      many_[slot] = std::move(v);
    }
  }
  // The values, for convert_chunk (valid until the next call); none when
  // the scale never arrived.
  const std::vector<float>& values(size_t slot) {
    if (is_one_[slot]) {
      one_buf_.assign(1, one_[slot]);
      return one_buf_;
    }
    const auto it = many_.find(slot);
    return it == many_.end() ? none_ : it->second;
  }
  float first(size_t slot) const { return is_one_[slot] ? one_[slot] : many_.at(slot).at(0); }
  void multiply(size_t slot, float f) {
    if (is_one_[slot]) one_[slot] *= f;
    else if (auto it = many_.find(slot); it != many_.end())
      for (float& v : it->second) v *= f;
  }

 private:
  std::vector<float> one_;
  std::vector<bool> is_one_;
  std::unordered_map<size_t, std::vector<float>> many_;
  std::vector<float> one_buf_;
  const std::vector<float> none_;
};

// The output manifest without its tensors: producer, edited metadata, and
// what st-pack needs of the model folder.
stream::Manifest output_fields(const stream::Manifest& m, const stream::Matching& mt, fp8::Target target) {
  stream::Manifest om;
  om.producer = std::string("st-dequant ") + ST_VERSION;
  om.metadata = m.metadata;
  om.shards = m.shards;
  om.model_dir = m.model_dir;
  // Only a model whose FP8 weights were all converted loses its
  // quantization_config (st-pack's config.json): none converted, or layers
  // left in a format we do not convert, keep the config as it was.
  const bool left_quantized = std::any_of(mt.problems.begin(), mt.problems.end(), [](const auto& p) {
    return p.kind == scales::kUnconverted || p.kind == scales::kU8WithScale;  // as the matcher's quant_format rule
  });
  if (!mt.pairs.empty() && !left_quantized) om.converted_to = fp8::target_dtype(target);
  if (om.metadata)
    for (const auto& e : mt.metadata_edits) {
      auto& md = *om.metadata;
      auto it = std::find_if(md.begin(), md.end(), [&](const auto& kv) { return kv.first == e.key; });
      if (it == md.end()) continue;
      if (e.value) it->second = *e.value;
      else md.erase(it);
    }
  return om;
}

// Input tensor `in` as it is written: under `name`, in the target type when converted.
void output_tensor(const TensorView& in, std::string_view name, bool converted, fp8::Target target, TensorInfo& out) {
  out.name.assign(name);
  out.dtype = converted ? fp8::target_dtype(target) : in.dtype;
  out.shape = in.shape;
  out.nbytes = converted ? in.nbytes * fp8::target_bytes(target) : in.nbytes;
  out.source = in.source;
}

}  // namespace

stream::Manifest output_manifest(const stream::Manifest& m, const stream::Matching& mt, fp8::Target target) {
  stream::Manifest om = output_fields(m, mt, target);
  std::vector<bool> converted(m.tensors.size(), false);
  for (const auto& p : mt.pairs) converted[p.weight] = true;
  const scales::OutputNames names(m, mt);
  TensorInfo t;
  for (size_t k = 0; k < names.size(); ++k) {
    const size_t i = names.input(k);
    output_tensor(m.tensors[i], names.name(k), converted[i], target, t);
    om.tensors.push_back(t);
  }
  return om;
}

Summary run(stream::Reader& in, stream::Writer& out, const Options& opt, const Warn& warn) {
  const stream::Manifest& m = in.manifest();
  size_t nmarkers = 0;
  const scales::MarkerData markers = scales::read_markers(in, nmarkers);
  const bool recorded = m.matching && !rematch_requested(opt.match);
  stream::Matching matched;  // when there is no recorded pairing to use (not copied: it may be large)
  if (!recorded) matched = scales::match(m, markers, opt.match);
  const stream::Matching& mt = recorded ? *m.matching : matched;
  check_problems(mt, opt);
  if (recorded) scales::validate(m, mt);

  // Per input tensor, a byte and a bit: a million tensors count. A
  // weight's pair and a scale's slot are found by binary search instead.
  const size_t n = m.tensors.size();
  std::vector<Action> action(n, Action::Pass);
  {
    auto name = [&](size_t i) { return json::quote(m.tensors.name(i)); };
    for (uint32_t d : mt.drop) action[d] = Action::Drop;
    for (const auto& p : mt.pairs) {
      const size_t w = p.weight;
      // (validate() and the matcher make sure that no tensor is both)
      if (action[w] == Action::HoldScale) fail("internal: " + name(w) + " is both a weight and a scale");
      action[w] = Action::Convert;
      for (const int32_t sp : {p.scale, p.scale2}) {
        if (sp == ScalePairing::kNone) continue;
        const auto s = static_cast<size_t>(sp);
        if (action[s] == Action::Convert) fail("internal: " + name(s) + " is both a weight and a scale");
        action[s] = Action::HoldScale;
        if (s > w)
          fail("stream order: scale " + name(s) + " comes after its weight " + name(w) +
               "; stages need scales first (st-list orders them so)");
      }
    }
  }
  // Pairs by weight position: as the matcher makes them, or put so here.
  std::vector<uint32_t> by_weight;  // empty when mt.pairs is in that order
  auto weight_at = [&](size_t k) { return mt.pairs[by_weight.empty() ? k : by_weight[k]].weight; };
  for (size_t k = 1; k < mt.pairs.size() && by_weight.empty(); ++k)
    if (mt.pairs[k].weight < mt.pairs[k - 1].weight) {
      by_weight.resize(mt.pairs.size());
      for (uint32_t j = 0; j < by_weight.size(); ++j) by_weight[j] = j;
      std::stable_sort(by_weight.begin(), by_weight.end(), [&](uint32_t a, uint32_t b) { return mt.pairs[a].weight < mt.pairs[b].weight; });
    }
  auto pair_of = [&](size_t w) -> const ScalePairing& {  // w converts: it has one
    size_t lo = 0, hi = mt.pairs.size();
    while (hi - lo > 1) {
      const size_t mid = lo + (hi - lo) / 2;
      (weight_at(mid) <= w ? lo : hi) = mid;
    }
    return mt.pairs[by_weight.empty() ? lo : by_weight[lo]];
  };
  // The scales held, by position: a scale's slot is its index here.
  std::vector<uint32_t> held_at;
  for (uint32_t i = 0; i < n; ++i)
    if (action[i] == Action::HoldScale) held_at.push_back(i);
  const size_t nslots = held_at.size();
  auto slot_of = [&](size_t scale) {
    return static_cast<size_t>(std::lower_bound(held_at.begin(), held_at.end(), scale) - held_at.begin());
  };
  const std::vector<Dtype> slot_format = scales::scale_decode_formats(m, mt, held_at);
  Summary sum;
  // Which input tensors are written: the output is the input in order,
  // less the dropped ones, so an output index is a count as they arrive.
  std::vector<bool> written(n, false);
  // The output manifest is made from the input's table as it is written,
  // never held as a second table (the writer also asks it each output
  // tensor's size as it comes).
  const scales::OutputNames names(m, mt);
  for (size_t k = 0; k < names.size(); ++k) {
    const size_t i = names.input(k);
    if (k > 0 && i <= names.input(k - 1)) fail("internal: output tensors out of input order");
    written[i] = true;
    if (action[i] != Action::Convert) ++sum.passed;
    else if (!pair_of(i).has_scale()) sum.unscaled.emplace_back(m.tensors.name(i));
    else ++sum.converted;
  }
  sum.dropped = n - names.size();
  for (size_t i = 0; i < n; ++i)
    if (written[i] != (action[i] == Action::Pass || action[i] == Action::Convert))
      fail("internal: tensor " + json::quote(m.tensors.name(i)) + (written[i] ? " is written but not passed on" : " is converted but not written"));
  const stream::Manifest fields = output_fields(m, mt, opt.target);
  TensorInfo scratch;
  stream::ManifestChanges changes;
  changes.producer = fields.producer;
  changes.count = names.size();
  changes.tensor_at = [&](size_t k) {
    const size_t i = names.input(k);
    output_tensor(m.tensors[i], names.name(k), action[i] == Action::Convert, opt.target, scratch);
    return scratch.view();
  };
  out.begin(fields, &changes);

  std::vector<uint8_t> receiving;  // the bytes of the scale arriving (tensors arrive one after another)
  HeldScales held(nslots);
  fp8::Loss tensor_loss;  // of the weight being converted
  uint32_t out_index = 0;  // of the tensor arriving, when it is written
  std::vector<uint8_t> buf;
  const size_t ob = fp8::target_bytes(opt.target);
  auto handle = [&](const Event& ev) {
    const size_t i = ev.tensor;
    if (ev.kind == Event::Kind::Data) {
      switch (action[i]) {
        case Action::Pass: out.data(out_index, ev.data, ev.hash); break;
        case Action::HoldScale: receiving.insert(receiving.end(), ev.data.begin(), ev.data.end()); break;
        case Action::Drop: break;
        case Action::Convert: {
          static const std::vector<float> kNoScale;
          const ScalePairing& pair = pair_of(i);
          const auto& scale = pair.has_scale() ? held.values(slot_of(static_cast<size_t>(pair.scale))) : kNoScale;
          // In pieces whose output stays in the CPU cache while it is
          // converted, hashed and written to the pipe (one DATA frame each),
          // instead of one 8-16 MiB buffer that goes through memory 3 times.
          for (size_t done = 0; done < ev.data.size(); done += kConvertPiece) {
            const size_t len = std::min(kConvertPiece, ev.data.size() - done);
            buf.resize(len * ob);
            convert_chunk(m.tensors[i], pair, scale, opt.target,
                          ev.offset + done, ev.data.data() + done, len, buf.data(), tensor_loss);
            if (opt.match.strict && tensor_loss.overflow)
              fail("tensor " + json::quote(m.tensors[i].name) + ": values overflow to infinity in " +
                   std::string(fp8::target_suffix(opt.target)) + " (--strict)");
            out.data(out_index, buf);
          }
          break;
        }
      }
      return;
    }
    if (action[i] == Action::HoldScale) {
      const size_t slot = slot_of(i);
      held.set(slot, fp8::decode_scales(slot_format[slot], receiving));
      receiving.clear();
      return;
    }
    if (action[i] == Action::Convert && tensor_loss.any()) {
      if (warn) warn(std::string(m.tensors.name(i)) + ": " + loss_text(tensor_loss) + " in " + std::string(fp8::target_suffix(opt.target)));
      sum.loss += tensor_loss;
      ++sum.lossy_tensors;
      tensor_loss = fp8::Loss{};
    }
    if (written[i]) out.end_tensor(out_index++);
  };
  // Fold each second-level scale into its first before the weight's data
  // (musubi: the scale is scale_weight * scale_weight_tensor, in f32).
  std::vector<bool> folded(mt.pairs.size(), false);
  auto fold = [&](size_t w) {
    const ScalePairing& p = pair_of(w);
    const auto k = static_cast<size_t>(&p - mt.pairs.data());
    if (folded[k] || p.scale2 == ScalePairing::kNone || !p.has_scale()) return;
    folded[k] = true;
    held.multiply(slot_of(static_cast<size_t>(p.scale)), held.first(slot_of(static_cast<size_t>(p.scale2))));
  };

  for (size_t i = 0; i < nmarkers; ++i) {  // markers were read before planning
    const auto& b = markers.at(std::string(m.tensors.name(i)));
    Event ev;
    ev.tensor = static_cast<uint32_t>(i);
    if (!b.empty()) {
      ev.kind = Event::Kind::Data;
      ev.data = b;
      ev.hash = stream::data_hash(b);  // as if read: handle() passes it on
      handle(ev);
    }
    ev.kind = Event::Kind::TensorEnd;
    handle(ev);
  }
  for (;;) {
    const Event ev = in.next();
    if (ev.kind == Event::Kind::End) break;
    if (ev.kind == Event::Kind::Data && ev.offset == 0 && action[ev.tensor] == Action::Convert) fold(ev.tensor);
    handle(ev);
  }
  out.finish();

  if (sum.lossy_tensors > 1 && warn)
    warn("in all, " + loss_text(sum.loss) + " in " + std::to_string(sum.lossy_tensors) + " tensors");
  if (!sum.unscaled.empty() && warn)
    warn(std::to_string(sum.unscaled.size()) + " FP8 tensor(s) had no scale and were cast with scale 1: " +
         name_list(sum.unscaled));
  std::vector<std::string> orphans, kept;
  for (const auto& p : mt.problems) {
    if (p.kind == scales::kOrphanScale || p.kind == scales::kNonFp8Weight) orphans.push_back(p.tensor);
    if (p.kind == scales::kUnconverted || p.kind == scales::kU8WithScale) kept.push_back(p.tensor);
  }
  if (!orphans.empty() && warn)
    warn(std::to_string(orphans.size()) + " scale-like tensor(s) used by no FP8 weight passed through unchanged: " +
         name_list(orphans));
  if (!kept.empty() && warn)
    warn(std::to_string(kept.size()) + " quantized tensor(s) left as they are (format not converted, or U8 without --u8-as): " +
         name_list(kept));
  return sum;
}

}  // namespace st::dequant
