#include "scales_stage.hpp"

#include <algorithm>
#include <unordered_map>

#include "error.hpp"
#include "fp8.hpp"
#include "json_util.hpp"
#include "source.hpp"

namespace st::scales {

namespace {

// Scale values for the report: decoded as the pairing says (one lookup per scale).
class ScaleDecoder {
 public:
  ScaleDecoder(const stream::Manifest& m, const stream::Matching& mt)
      : scales_(paired_scales(mt)), formats_(scale_decode_formats(m, mt, scales_)) {}
  std::vector<float> operator()(size_t scale, const std::vector<uint8_t>& bytes) const {
    const auto it = std::lower_bound(scales_.begin(), scales_.end(), static_cast<uint32_t>(scale));
    if (it == scales_.end() || *it != scale) return {};
    const Dtype d = formats_[static_cast<size_t>(it - scales_.begin())];
    return fp8::is_scale_dtype(d) ? fp8::decode_scales(d, bytes) : std::vector<float>{};
  }

 private:
  // The positions of the pairs' scales, ascending (the report asks for no other).
  static std::vector<uint32_t> paired_scales(const stream::Matching& mt) {
    std::vector<uint32_t> s;
    for (const auto& p : mt.pairs)
      if (p.has_scale()) s.push_back(static_cast<uint32_t>(p.scale));
    std::sort(s.begin(), s.end());
    s.erase(std::unique(s.begin(), s.end()), s.end());
    return s;
  }
  std::vector<uint32_t> scales_;
  std::vector<Dtype> formats_;
};

}  // namespace

MarkerData read_markers(stream::Reader& in, size_t& count) {
  const auto& ts = in.manifest().tensors;
  count = 0;
  while (count < ts.size() && is_marker_tensor(ts[count])) ++count;
  for (size_t i = count; i < ts.size(); ++i)
    if (is_marker_tensor(ts[i]))
      fail("stream order: marker " + json::quote(ts[i].name) + " comes after tensor data; st-list sends markers first");
  MarkerData markers;
  for (size_t done = 0; done < count;) {
    const stream::Event ev = in.next();
    if (ev.kind == stream::Event::Kind::Data) {
      auto& b = markers[std::string(ts.name(ev.tensor))];
      b.insert(b.end(), ev.data.begin(), ev.data.end());
    } else if (ev.kind == stream::Event::Kind::TensorEnd) {
      markers[std::string(ts.name(ev.tensor))];  // an empty marker still counts
      ++done;
    }
  }
  return markers;
}

bool report_file(const std::string& path, const Options& opt, ReportFormat format, std::ostream& out) {
  source::ListOptions lo;
  lo.lenient_index = true;  // index problems go into the report
  std::vector<std::string> bad_names;
  const source::SafetensorsSource src(model_input::resolve({path}, &bad_names), lo);
  const stream::Manifest& m = src.manifest();
  stream::Matching mt = match(m, src.read_markers(), opt);
  for (const auto& msg : bad_names) mt.problems.push_back({kIndexMismatch, "", msg});
  mt.problems.insert(mt.problems.end(), src.index_problems().begin(), src.index_problems().end());
  const ScaleDecoder decode(m, mt);
  const ScaleValues values = [&](size_t scale) { return decode(scale, src.read_tensor(std::string(m.tensors.name(scale)))); };
  const bool attention = needs_attention(mt, opt.strict);
  if (format == ReportFormat::Json) print_json(out, path, m, mt, values, attention);
  else print_report(out, m, mt, values);
  return attention;
}

void match_stage(stream::Reader& in, stream::Writer& out, const Options& opt, std::ostream* report) {
  const stream::Manifest& m = in.manifest();
  size_t nmarkers = 0;
  const MarkerData markers = read_markers(in, nmarkers);
  const stream::Matching mt = match(m, markers, opt);
  stream::ManifestChanges changes;
  changes.producer = std::string("st-scales ") + ST_VERSION;
  changes.matching = &mt;
  out.begin(m, &changes);
  for (size_t i = 0; i < nmarkers; ++i) {
    const auto& b = markers.at(std::string(m.tensors.name(i)));
    out.data(static_cast<uint32_t>(i), b);
    out.end_tensor(static_cast<uint32_t>(i));
  }
  // Scales are small; keep their bytes for the report's min/max.
  std::unordered_map<size_t, std::vector<uint8_t>> scale_bytes;
  const ScaleDecoder decode(m, mt);
  if (report)
    for (const auto& p : mt.pairs)
      if (p.has_scale()) scale_bytes[static_cast<size_t>(p.scale)];
  for (;;) {
    const stream::Event ev = in.next();
    if (ev.kind == stream::Event::Kind::End) break;
    if (ev.kind == stream::Event::Kind::Data) {
      out.data(ev.tensor, ev.data, ev.hash);  // checked by the reader: not hashed again
      if (auto it = scale_bytes.find(ev.tensor); it != scale_bytes.end())
        it->second.insert(it->second.end(), ev.data.begin(), ev.data.end());
    } else {
      out.end_tensor(ev.tensor);
    }
  }
  out.finish();
  if (report)
    print_report(*report, m, mt, [&](size_t scale) { return decode(scale, scale_bytes.at(scale)); });
}

}  // namespace st::scales
