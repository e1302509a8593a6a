#include "source.hpp"

#include <fnmatch.h>
#include <limits.h>
#include <stdlib.h>

#include <algorithm>
#include <functional>
#include <map>
#include <set>

#include "error.hpp"
#include "json_util.hpp"
#include "model_config.hpp"
#include "sha256.hpp"

namespace st::source {

namespace {

bool matches_any(const std::vector<std::string>& globs, const std::string& name) {
  for (const auto& g : globs)
    if (::fnmatch(g.c_str(), name.c_str(), 0) == 0) return true;
  return false;
}

// The source path as the manifest records it: absolute, so that a stage
// running elsewhere (st-pack refusing to replace its input) finds the file.
std::string canonical(const std::string& path) {
  char* real = ::realpath(path.c_str(), nullptr);
  if (!real) return path;
  std::string out(real);
  std::free(real);
  return out;
}

std::vector<stream::TensorInfo> infos_of(const safetensors::Header& h, const std::string& path) {
  std::vector<stream::TensorInfo> all;
  for (const auto& t : h.tensors) all.push_back({t.name, t.dtype, t.shape, t.nbytes(), path});
  return all;
}

// Indices (file order) of the tensors --include/--exclude select; tensors
// that belong to another follow its selection.
std::vector<size_t> select(const std::vector<stream::TensorInfo>& all, const ListOptions& opt) {
  const auto owner = scales::owners(all);
  auto chosen = [&](const std::string& n) {
    return (opt.include.empty() || matches_any(opt.include, n)) && !matches_any(opt.exclude, n);
  };
  std::vector<size_t> kept;
  for (size_t i = 0; i < all.size(); ++i) {
    auto o = owner.find(all[i].name);
    if (chosen(o == owner.end() ? all[i].name : o->second)) kept.push_back(i);
  }
  return kept;
}

}  // namespace

SafetensorsSource::SafetensorsSource(const std::string& path, const ListOptions& opt)
    : file_(path), opt_(opt), header_(safetensors::read_header(file_)) {
  const auto all = infos_of(header_, canonical(path));
  const auto kept = select(all, opt);
  if (kept.empty() && !all.empty())
    fail(path + ": no tensor matches the --include/--exclude patterns");
  std::vector<stream::TensorInfo> infos;
  for (size_t i : kept) infos.push_back(all[i]);
  manifest_.producer = std::string("st-list ") + ST_VERSION;
  manifest_.metadata = header_.metadata;
  manifest_.quantization_config = model_config::read_quantization_config(path);
  for (size_t i : scales::scales_first_order(infos)) {
    manifest_.tensors.push_back(infos[i]);
    header_index_.push_back(kept[i]);
  }
}

std::string SafetensorsSource::write_stream(stream::Writer& w) const {
  w.begin(manifest_);
  std::vector<uint8_t> buf(stream::kDefaultChunkBytes);
  std::unique_ptr<sha256::InOrderHasher> sha;
  if (opt_.sha256 || !opt_.expect_sha256.empty()) {
    sha = std::make_unique<sha256::InOrderHasher>();
    std::vector<uint8_t> head(header_.data_start);
    file_.pread_exact(0, head.data(), head.size());
    sha->feed(0, head);
  }
  // Tensors left out by --include/--exclude are read for the hash only, at
  // the moment the hash reaches them, so nothing large waits in memory.
  std::map<uint64_t, size_t> skipped;  // file offset -> header index
  if (sha) {
    const std::set<size_t> streamed(header_index_.begin(), header_index_.end());
    for (size_t k = 0; k < header_.tensors.size(); ++k)
      if (!streamed.count(k) && header_.tensors[k].nbytes() > 0)
        skipped.emplace(header_.data_start + header_.tensors[k].begin, k);
  }
  std::function<void()> catch_up;
  // Reads a tensor in chunks, passing each to `sink` and to the hash.
  auto read = [&](const safetensors::TensorEntry& t, auto&& sink) {
    uint64_t pos = header_.data_start + t.begin, left = t.nbytes();
    while (left > 0) {
      const size_t n = static_cast<size_t>(std::min<uint64_t>(left, buf.size()));
      file_.pread_exact(pos, buf.data(), n);
      sink(std::span<const uint8_t>(buf.data(), n));
      if (sha) {
        sha->feed(pos, {buf.data(), n});
        catch_up();
      }
      pos += n;
      left -= n;
    }
  };
  bool catching_up = false;  // a loop, not a recursion, over runs of skipped tensors
  catch_up = [&] {
    if (catching_up) return;
    catching_up = true;
    for (auto it = skipped.find(sha->covered()); it != skipped.end(); it = skipped.find(sha->covered())) {
      const size_t k = it->second;
      skipped.erase(it);
      read(header_.tensors[k], [](std::span<const uint8_t>) {});
    }
    catching_up = false;
  };
  if (sha) catch_up();
  for (size_t i = 0; i < header_index_.size(); ++i) {
    read(header_.tensors[header_index_[i]], [&](std::span<const uint8_t> b) { w.data(static_cast<uint32_t>(i), b); });
    w.end_tensor(static_cast<uint32_t>(i));
  }
  std::string digest;
  if (sha) {
    digest = sha->finish(file_.size());
    if (!opt_.expect_sha256.empty() && digest != opt_.expect_sha256)
      fail(file_.path() + ": SHA-256 mismatch: expected " + opt_.expect_sha256 + ", got " + digest +
           " (incomplete or corrupt download?)");
  }
  w.finish();
  return digest;
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

void print_file_table(std::ostream& out, const std::string& path, const ListOptions& opt) {
  const io::InputFile file(path);
  safetensors::Header h = safetensors::read_header(file);
  const auto kept = select(infos_of(h, path), opt);
  std::vector<safetensors::TensorEntry> chosen;
  for (size_t i : kept) chosen.push_back(h.tensors[i]);
  h.tensors = std::move(chosen);
  print_table(out, h);
}

void print_file_json(std::ostream& out, const std::string& path, const ListOptions& opt) {
  const io::InputFile file(path);
  const safetensors::Header h = safetensors::read_header(file);
  const auto kept = select(infos_of(h, path), opt);
  std::string j = "{\"file\":";
  json::append_json_string(j, path);
  j += ",\"size\":" + std::to_string(file.size()) + ",\"header_bytes\":" + std::to_string(h.data_start) +
       ",\"metadata\":";
  if (h.metadata) {
    j += "{";
    for (size_t i = 0; i < h.metadata->size(); ++i) {
      if (i) j += ",";
      json::append_json_string(j, (*h.metadata)[i].first);
      j += ":";
      json::append_json_string(j, (*h.metadata)[i].second);
    }
    j += "}";
  } else {
    j += "null";
  }
  j += ",\"tensors\":[";
  for (size_t k = 0; k < kept.size(); ++k) {
    const auto& t = h.tensors[kept[k]];
    if (k) j += ",";
    j += "{\"name\":";
    json::append_json_string(j, t.name);
    j += ",\"dtype\":\"" + std::string(dtype_name(t.dtype)) + "\",\"shape\":" + shape_text(t.shape) +
         ",\"bytes\":" + std::to_string(t.nbytes()) + ",\"data_offsets\":[" + std::to_string(t.begin) + "," +
         std::to_string(t.end) + "],\"file_offset\":" + std::to_string(h.data_start + t.begin) + "}";
  }
  j += "]}\n";
  out << j;
}

}  // namespace st::source
