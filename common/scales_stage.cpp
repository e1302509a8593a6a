#include "scales_stage.hpp"

#include <unordered_map>

#include "fp8.hpp"
#include "source.hpp"

namespace st::scales {

bool report_file(const std::string& path, const Options& opt, std::ostream& out) {
  const source::SafetensorsSource src(path);
  const stream::Manifest& m = src.manifest();
  const stream::Matching mt = match(m.tensors, opt);
  print_report(out, m, mt, [&](const std::string& name) {
    const auto& t = m.tensors[static_cast<size_t>(m.find(name))];
    return fp8::is_scale_dtype(t.dtype) ? fp8::decode_scales(t.dtype, src.read_tensor(name)) : std::vector<float>{};
  });
  return needs_attention(mt);
}

void match_stage(stream::Reader& in, stream::Writer& out, const Options& opt, std::ostream* report) {
  stream::Manifest m = in.manifest();
  m.matching = match(m.tensors, opt);
  m.producer = std::string("st-scales ") + ST_VERSION;
  out.begin(m);
  // Scales are small; keep their bytes for the report's min/max.
  std::unordered_map<size_t, std::vector<uint8_t>> scale_bytes;
  if (report)
    for (const auto& p : m.matching->pairs)
      if (!p.scale.empty()) scale_bytes[static_cast<size_t>(m.find(p.scale))];
  for (;;) {
    const stream::Event ev = in.next();
    if (ev.kind == stream::Event::Kind::End) break;
    if (ev.kind == stream::Event::Kind::Data) {
      out.data(ev.tensor, ev.data);
      if (auto it = scale_bytes.find(ev.tensor); it != scale_bytes.end())
        it->second.insert(it->second.end(), ev.data.begin(), ev.data.end());
    } else {
      out.end_tensor(ev.tensor);
    }
  }
  out.finish();
  if (report)
    print_report(*report, m, *m.matching, [&](const std::string& name) {
      const size_t i = static_cast<size_t>(m.find(name));
      return fp8::decode_scales(m.tensors[i].dtype, scale_bytes.at(i));
    });
}

}  // namespace st::scales
