#include "source.hpp"

#include <fnmatch.h>

#include <algorithm>
#include <functional>
#include <map>
#include <set>

#include "error.hpp"
#include "json_util.hpp"
#include "model_config.hpp"
#include "paths.hpp"
#include "sha256.hpp"

namespace st::source {

namespace {

bool matches_any(const std::vector<std::string>& globs, const std::string& name) {
  for (const auto& g : globs)
    if (::fnmatch(g.c_str(), name.c_str(), 0) == 0) return true;
  return false;
}

stream::TensorTable infos_of(const safetensors::Header& h, const std::string& path) {
  stream::TensorTable all;
  const stream::SharedString source(path);
  for (const auto& t : h.tensors) all.add(t.name, t.dtype, t.shape, source);
  return all;
}

// Indices (file order) of the tensors --include/--exclude select; tensors
// that belong to another follow its selection.
std::vector<uint32_t> select(const stream::TensorTable& all, const ListOptions& opt) {
  if (opt.include.empty() && opt.exclude.empty()) {  // all of them; no map of owners to build
    std::vector<uint32_t> every(all.size());
    for (uint32_t i = 0; i < every.size(); ++i) every[i] = i;
    return every;
  }
  const auto owner = scales::owners(all);
  auto chosen = [&](const std::string& n) {
    return (opt.include.empty() || matches_any(opt.include, n)) && !matches_any(opt.exclude, n);
  };
  std::vector<uint32_t> kept;
  for (uint32_t i = 0; i < all.size(); ++i) {
    const std::string name(all.name(i));
    auto o = owner.find(name);
    if (chosen(o == owner.end() ? name : o->second)) kept.push_back(i);
  }
  return kept;
}

constexpr size_t kReadPiece = 256u << 10;

// The manifest's table as the table a header is read into: each entry's
// name and shape go straight into `all`, where its bytes begin into
// `begins`, so st-list never holds a header's entries and the manifest's
// table at once (a million tensors). The ends are kept apart, for the
// header's checks only: once the entries are known to tile the data, each
// ends where the next begins.
class ManifestEntries : public safetensors::EntryTable {
 public:
  // `begins` holds a position per row of `all`: this file's from base_ on.
  ManifestEntries(stream::TensorTable& all, std::vector<uint64_t>& begins, stream::SharedString source)
      : all_(all), base_(all.size()), begins_(begins), source_(std::move(source)) {}
  void reserve(size_t n) override {
    begins_.reserve(base_ + n);
    lengths_.reserve(n);
  }
  void add(safetensors::TensorEntry&& e) override {
    all_.add(e.name, e.dtype, e.shape, source_);  // its size is checked before the table is used
    if (e.end >= e.begin && e.end - e.begin < kLong) {
      lengths_.push_back(static_cast<uint32_t>(e.end - e.begin));
    } else {
      lengths_.push_back(kLong);
      long_ends_.emplace_back(static_cast<uint32_t>(size()), e.end);
    }
    begins_.push_back(e.begin);
  }
  size_t size() const override { return begins_.size() - base_; }
  std::string_view name(size_t i) const override { return all_.name(base_ + i); }
  Dtype dtype(size_t i) const override { return all_.dtype(base_ + i); }
  const Shape& shape(size_t i) const override { return all_.shape(base_ + i); }
  uint64_t begin(size_t i) const override { return begins_[base_ + i]; }
  uint64_t end(size_t i) const override {
    if (lengths_[i] != kLong) return begin(i) + lengths_[i];
    const auto it = std::lower_bound(long_ends_.begin(), long_ends_.end(), std::pair<uint32_t, uint64_t>(static_cast<uint32_t>(i), 0));
    return it->second;
  }
  void reorder(const std::vector<uint32_t>& order) override {
    all_.reorder_from(base_, order);
    stream::permute_in_place(order, [&](size_t j) -> uint64_t& { return begins_[base_ + j]; });
    stream::permute_in_place(order, [&](size_t j) -> uint32_t& { return lengths_[j]; });
    if (!long_ends_.empty()) {  // their positions move too
      std::vector<uint32_t> now(order.size());
      for (uint32_t j = 0; j < order.size(); ++j) now[order[j]] = j;
      for (auto& [at, end] : long_ends_) at = now[at];
      std::sort(long_ends_.begin(), long_ends_.end());
    }
  }

 private:
  // An entry's length in 4 bytes (its end is begin + length); a longer one
  // (a tensor of 4 GiB or more) or a reversed one keeps its end apart.
  static constexpr uint32_t kLong = UINT32_MAX;
  stream::TensorTable& all_;
  size_t base_;
  std::vector<uint64_t>& begins_;
  std::vector<uint32_t> lengths_;
  std::vector<std::pair<uint32_t, uint64_t>> long_ends_;  // (position, end), by position
  stream::SharedString source_;
};

// Indices (file order) of the header's tensors that are in `names`.
std::vector<uint32_t> selected_in(const safetensors::Header& h, const std::set<std::string>& names) {
  std::vector<uint32_t> kept;
  for (uint32_t i = 0; i < h.tensors.size(); ++i)
    if (names.count(h.tensors[i].name)) kept.push_back(i);
  return kept;
}

}  // namespace

SafetensorsSource::SafetensorsSource(const std::string& path, const ListOptions& opt)
    : SafetensorsSource(model_input::resolve({path}), opt) {}

// `input` by value: an index's weight_map may list a million tensors, and
// callers that are done with it move it in.
SafetensorsSource::SafetensorsSource(model_input::ModelInput input, const ListOptions& opt)
    : input_(std::move(input)), opt_(opt) {
  if (!opt.expect_sha256.empty() && input_.files.size() != 1)
    usage_error("--expect-sha256 checks one file; this model has " + std::to_string(input_.files.size()));
  const auto missing = model_input::missing_shards(input_);
  if (!missing.empty() && !opt.lenient_index)
    fail(missing.front() + (missing.size() > 1 ? " (and " + std::to_string(missing.size() - 1) + " more)" : ""));
  for (const auto& msg : missing) index_problems_.push_back({scales::kIndexMismatch, "", msg});
  if (!missing.empty()) {  // lenient: read the shards that are there
    std::vector<std::string> named = std::move(input_.files);
    input_.files.clear();
    for (auto& f : named) {
      if (paths::is_regular_file(f)) input_.files.push_back(std::move(f));  // as missing_shards
    }
    if (input_.files.empty()) fail(input_.index + ": none of the shards it names exists");
  }
  // Every header first: a bad shard or index fails before any output.
  stream::TensorTable all;
  Places at;
  if (input_.files.size() > UINT16_MAX + 1) fail("a model of more than 65536 files is not supported");
  for (uint32_t s = 0; s < input_.files.size(); ++s) {
    Shard shard;
    shard.file = std::make_unique<io::InputFile>(input_.files[s]);
    // Name and shape go to the manifest's table as the header is read,
    // where the bytes begin to `at`.
    ManifestEntries entries(all, at.begin, stream::SharedString(paths::absolute(input_.files[s])));
    shard.header = safetensors::read_header_into(*shard.file, entries);
    if (input_.files.size() > 1) at.shard.resize(all.size(), static_cast<uint16_t>(s));
    shards_.push_back(std::move(shard));
  }
  if (input_.files.size() > 1) drop_repeated_tensors(all, at);  // read_header() refuses them within a file
  const auto problems = model_input::index_problems(
      input_, all.size(), [&](size_t i) { return all.name(i); },
      [&](size_t i) { return at.shard_of(i); });
  input_.weight_map.clear();  // needed for the index check only: a million names
  if (!problems.empty() && !opt.lenient_index)
    fail(problems.front() + (problems.size() > 1 ? " (and " + std::to_string(problems.size() - 1) + " more problems)" : ""));
  for (const auto& msg : problems) index_problems_.push_back({scales::kIndexMismatch, "", msg});

  if (!opt.include.empty() || !opt.exclude.empty()) {
    const auto kept = select(all, opt);
    if (kept.empty() && !all.empty())
      fail(input_.files.size() == 1 ? input_.files[0] + ": no tensor matches the --include/--exclude patterns"
                                   : "no tensor of the model matches the --include/--exclude patterns");
    keep_only(all, at, kept);
  }
  {
    const std::vector<uint32_t> order = scales::scales_first_order(all);
    all.reorder_from(0, order);
    stream::permute_in_place(order, [&](size_t j) -> uint64_t& { return at.begin[j]; });
    if (!at.shard.empty()) stream::permute_in_place(order, [&](size_t j) -> uint16_t& { return at.shard[j]; });
  }
  manifest_.tensors = std::move(all);
  at_ = std::move(at);
  manifest_.producer = std::string("st-list ") + ST_VERSION;
  manifest_.metadata = shards_.front().header.metadata;
  if (!opt.headers_only) manifest_.quantization_config = model_config::read_quantization_config(input_.files.front());
  if (input_.several())
    for (const auto& f : input_.files) manifest_.shards.push_back(paths::absolute(f));
  if (!input_.dir.empty()) manifest_.model_dir = paths::absolute(input_.dir);
}

uint64_t SafetensorsSource::input_bytes() const {
  uint64_t n = 0;
  for (const auto& s : shards_) n += s.file->size();
  return n;
}

std::vector<std::string> SafetensorsSource::write_stream(stream::Writer& w) const {
  w.begin(manifest_);
  // Read in pieces that stay in the CPU cache while they are hashed and
  // written to the pipe (one DATA frame each); 4 MiB pieces went through
  // memory three times and were measured slower. Into a pipe, the frame's
  // data is spliced from the file (no copy into the pipe), the piece read
  // only to be hashed.
  std::vector<uint8_t> buf(kReadPiece);
  const bool hashing = opt_.sha256 || !opt_.expect_sha256.empty();
  // Per file: its hash, and the tensors left out by --include/--exclude,
  // read for the hash only when the hash reaches them, so nothing large
  // waits in memory.
  struct HashState {
    std::unique_ptr<sha256::InOrderHasher> sha;
    std::map<uint64_t, Span> skipped;      // file offset -> where a left-out tensor is
    bool catching_up = false;              // a loop, not a recursion, over skipped runs
  };
  std::vector<HashState> hs(shards_.size());
  std::function<void(uint32_t)> catch_up;
  // Reads a tensor in chunks, passing each to `sink` and to its file's hash.
  auto read = [&](uint32_t s, const Span& t, auto&& sink) {
    const Shard& sh = shards_[s];
    uint64_t pos = sh.header.data_start + t.begin, left = t.nbytes();
    while (left > 0) {
      const size_t n = static_cast<size_t>(std::min<uint64_t>(left, buf.size()));
      sh.file->pread_exact(pos, buf.data(), n);
      sink(std::span<const uint8_t>(buf.data(), n), pos);
      if (hashing) {
        hs[s].sha->feed(pos, {buf.data(), n});
        catch_up(s);
      }
      pos += n;
      left -= n;
    }
  };
  catch_up = [&](uint32_t s) {
    HashState& h = hs[s];
    if (h.catching_up) return;
    h.catching_up = true;
    for (auto it = h.skipped.find(h.sha->covered()); it != h.skipped.end(); it = h.skipped.find(h.sha->covered())) {
      const Span left_out = it->second;
      h.skipped.erase(it);
      read(s, left_out, [](std::span<const uint8_t>, uint64_t) {});
    }
    h.catching_up = false;
  };
  if (hashing) {
    for (const auto& [name, place] : left_out_)  // what is not streamed
      if (place.span.nbytes() > 0) hs[place.shard].skipped.emplace(shards_[place.shard].header.data_start + place.span.begin, place.span);
    for (uint32_t s = 0; s < shards_.size(); ++s) {
      const Shard& sh = shards_[s];
      hs[s].sha = std::make_unique<sha256::InOrderHasher>();
      std::vector<uint8_t> head(sh.header.data_start);
      sh.file->pread_exact(0, head.data(), head.size());
      hs[s].sha->feed(0, head);
      catch_up(s);
    }
  }
  for (size_t i = 0; i < at_.begin.size(); ++i) {
    const io::InputFile& file = *shards_[shard_of(i)].file;
    read(shard_of(i), span_of(i), [&](std::span<const uint8_t> b, uint64_t pos) {
      w.data(static_cast<uint32_t>(i), b, stream::FileOrigin{file.fd(), file.path(), pos});
    });
    w.end_tensor(static_cast<uint32_t>(i));
  }
  std::vector<std::string> digests;
  if (hashing) {
    for (uint32_t s = 0; s < shards_.size(); ++s) digests.push_back(hs[s].sha->finish(shards_[s].file->size()));
    if (!opt_.expect_sha256.empty() && digests.front() != opt_.expect_sha256)
      fail(shards_.front().file->path() + ": SHA-256 mismatch: expected " + opt_.expect_sha256 + ", got " +
           digests.front() + " (incomplete or corrupt download?)");
  }
  w.finish();
  return digests;
}

// A tensor in two shards: refused, or with --lenient-index (st-scales)
// reported and left out, the first one kept. Found by sorting positions (4
// bytes a tensor), not with a map of every name; reported in file order.
void SafetensorsSource::drop_repeated_tensors(stream::TensorTable& all, Places& at) {
  const auto repeats =  // (a later copy, the first), in file order
      safetensors::repeats_by_name(all.size(), [&](size_t i) { return all.name(i); });
  if (repeats.empty()) return;
  for (const auto& [later, first] : repeats) {
    const std::string msg = input_.files[at.shard[later]] + ": tensor " + json::quote(all[later].name) + " is also in " +
                            input_.files[at.shard[first]] + "; a model holds each tensor once";
    if (!opt_.lenient_index) fail(msg);
    index_problems_.push_back({scales::kIndexMismatch, "", msg});
  }
  std::vector<uint32_t> kept;  // the others, as --include/--exclude would leave them
  kept.reserve(all.size() - repeats.size());
  for (uint32_t i = 0, r = 0; i < all.size(); ++i) {
    if (r < repeats.size() && repeats[r].first == i) ++r;
    else kept.push_back(i);
  }
  keep_only(all, at, kept);
}

// Keeps all[kept[j]] (kept ascending) at position j, in place: a header
// may list a million tensors. A tensor left out keeps its name in
// left_out_ (read_tensor finds it there).
void SafetensorsSource::keep_only(stream::TensorTable& all, Places& at, const std::vector<uint32_t>& kept) {
  if (kept.size() == all.size()) return;  // kept ascending: all of them, in order
  for (size_t i = 0, k = 0; i < all.size(); ++i) {
    if (k < kept.size() && kept[k] == i) {
      ++k;
      continue;
    }
    left_out_.emplace_back(std::string(all.name(i)), Place{at.shard_of(i), Span{at.begin[i], at.begin[i] + all.nbytes(i)}});
  }
  for (size_t j = 0; j < kept.size(); ++j) {
    at.begin[j] = at.begin[kept[j]];
    if (!at.shard.empty()) at.shard[j] = at.shard[kept[j]];
  }
  at.begin.resize(kept.size());
  if (!at.shard.empty()) at.shard.resize(kept.size());
  all.reorder_from(0, kept);
}

SafetensorsSource::~SafetensorsSource() = default;

std::vector<uint8_t> SafetensorsSource::read_tensor(const std::string& name) const {
  auto read = [](const Shard& sh, const Span& t) {
    std::vector<uint8_t> bytes(t.nbytes());
    sh.file->pread_exact(sh.header.data_start + t.begin, bytes.data(), bytes.size());
    return bytes;
  };
  // Made at the first call: a stream (st-list's usual work) never needs it.
  std::call_once(index_made_, [&] { index_ = std::make_unique<stream::NameIndex>(manifest_.tensors); });
  if (const long i = index_->find(name); i >= 0) {
    return read(shards_[shard_of(static_cast<size_t>(i))], span_of(static_cast<size_t>(i)));
  }
  for (const auto& [n, place] : left_out_)  // a tensor --include/--exclude left out
    if (n == name) return read(shards_[place.shard], place.span);
  throw Error("internal: no tensor " + name);
}

scales::MarkerData SafetensorsSource::read_markers() const {
  scales::MarkerData markers;
  for (const auto& t : manifest_.tensors)
    if (scales::is_marker_tensor(t)) markers[std::string(t.name)] = read_tensor(std::string(t.name));
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

void print_file_table(std::ostream& out, const std::string& path, const ListOptions& opt,
                      const std::set<std::string>* only) {
  const io::InputFile file(path);
  safetensors::Header h = safetensors::read_header(file);
  const auto kept = only ? selected_in(h, *only) : select(infos_of(h, path), opt);
  std::vector<safetensors::TensorEntry> chosen;
  for (size_t i : kept) chosen.push_back(h.tensors[i]);
  h.tensors = std::move(chosen);
  print_table(out, h);
}

void print_file_json(std::ostream& out, const std::string& path, const ListOptions& opt,
                     const std::set<std::string>* only) {
  const io::InputFile file(path);
  const safetensors::Header h = safetensors::read_header(file);
  const auto kept = only ? selected_in(h, *only) : select(infos_of(h, path), opt);
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

void print_files(std::ostream& out, const model_input::ModelInput& input, const ListOptions& opt, Listing how) {
  // The same checks as for the stream (index against shards, duplicates)
  // and the same selection (a scale in another shard follows its weight).
  ListOptions headers = opt;
  headers.headers_only = true;
  const SafetensorsSource src(input, headers);
  std::set<std::string> selected;
  for (const auto& t : src.manifest().tensors) selected.emplace(t.name);
  const bool several = input.files.size() > 1;
  if (how == Listing::Json && several) out << "[\n";
  for (size_t i = 0; i < input.files.size(); ++i) {
    const std::string& f = input.files[i];
    if (how == Listing::Json) {
      if (i) out << ",\n";
      print_file_json(out, f, opt, &selected);
    } else {
      if (several) out << (i ? "\n" : "") << "==> " << f << " <==\n";
      print_file_table(out, f, opt, &selected);
    }
  }
  if (how == Listing::Json && several) out << "]\n";
}

}  // namespace st::source
