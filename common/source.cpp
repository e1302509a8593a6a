#include "source.hpp"

#include <algorithm>

#include "error.hpp"
#include "model_config.hpp"

namespace st::source {

SafetensorsSource::SafetensorsSource(const std::string& path)
    : file_(path), header_(safetensors::read_header(file_)) {
  std::vector<stream::TensorInfo> infos;
  for (const auto& t : header_.tensors) infos.push_back({t.name, t.dtype, t.shape, t.nbytes(), path});
  const auto order = scales::scales_first_order(infos);
  manifest_.producer = std::string("st-list ") + ST_VERSION;
  manifest_.metadata = header_.metadata;
  manifest_.quantization_config = model_config::read_quantization_config(path);
  for (size_t i : order) {
    manifest_.tensors.push_back(infos[i]);
    header_index_.push_back(i);
  }
}

void SafetensorsSource::write_stream(stream::Writer& w) const {
  w.begin(manifest_);
  std::vector<uint8_t> buf(stream::kDefaultChunkBytes);
  for (size_t i = 0; i < header_index_.size(); ++i) {
    const auto& t = header_.tensors[header_index_[i]];
    uint64_t pos = header_.data_start + t.begin, left = t.nbytes();
    while (left > 0) {
      const size_t n = static_cast<size_t>(std::min<uint64_t>(left, buf.size()));
      file_.pread_exact(pos, buf.data(), n);
      w.data(static_cast<uint32_t>(i), {buf.data(), n});
      pos += n;
      left -= n;
    }
    w.end_tensor(static_cast<uint32_t>(i));
  }
  w.finish();
}

std::vector<uint8_t> SafetensorsSource::read_tensor(const std::string& name) const {
  for (const auto& t : header_.tensors)
    if (t.name == name) {
      std::vector<uint8_t> bytes(t.nbytes());
      file_.pread_exact(header_.data_start + t.begin, bytes.data(), bytes.size());
      return bytes;
    }
  throw Error("internal: no tensor " + name);
}

scales::MarkerData SafetensorsSource::read_markers() const {
  scales::MarkerData markers;
  for (const auto& t : manifest_.tensors)
    if (scales::is_marker_tensor(t)) markers[t.name] = read_tensor(t.name);
  return markers;
}

void print_table(std::ostream& out, const safetensors::Header& h) {
  size_t wname = 4, wdtype = 5, wshape = 5;
  for (const auto& t : h.tensors) {
    wname = std::max(wname, t.name.size());
    wdtype = std::max(wdtype, dtype_name(t.dtype).size());
    wshape = std::max(wshape, scales::shape_text(t.shape).size());
  }
  auto row = [&](const std::string& a, const std::string& b, const std::string& c, const std::string& d) {
    out << a << std::string(wname - a.size() + 2, ' ') << b << std::string(wdtype - b.size() + 2, ' ') << c
        << std::string(wshape - c.size() + 2, ' ') << d << '\n';
  };
  row("NAME", "DTYPE", "SHAPE", "BYTES");
  for (const auto& t : h.tensors)
    row(t.name, std::string(dtype_name(t.dtype)), scales::shape_text(t.shape), std::to_string(t.nbytes()));
}

void print_file_table(std::ostream& out, const std::string& path) {
  const io::InputFile file(path);
  print_table(out, safetensors::read_header(file));
}

}  // namespace st::source
