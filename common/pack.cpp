#include "pack.hpp"

#include <dirent.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <unordered_map>
#include <fstream>
#include <memory>
#include <sstream>
#include <cctype>
#include <cstdio>

#include "cli.hpp"
#include "error.hpp"
#include "hash.hpp"
#include "io.hpp"
#include "json_util.hpp"
#include "model_config.hpp"
#include "output_file.hpp"
#include "paths.hpp"
#include "progress.hpp"
#include "safetensors.hpp"

namespace st::pack {

using stream::Event;
using stream::TensorInfo;
using stream::TensorView;

namespace {

// Output layout of a file holding the manifest tensors `part` (indices),
// by position in `part`. The header is not held: header_pieces() makes it
// again when it is written (a million tensors make ~100 MB of JSON).
struct Layout {
  std::vector<uint64_t> offset;  // relative to the data section
  std::vector<uint32_t> order;   // positions in the file's order
  uint64_t header_bytes = 0;     // length prefix, JSON and padding
  uint64_t data_bytes = 0;
};

// A tensor's output name under --strip-prefix/--add-prefix is add_prefix +
// this view; every name gets the same add_prefix, so views order and
// compare as the output names do.
std::string_view stripped(std::string_view name, const Options& opt) {
  if (!opt.strip_prefix.empty() && name.starts_with(opt.strip_prefix)) name.remove_prefix(opt.strip_prefix.size());
  return name;
}

std::string renamed(std::string_view name, const Options& opt) {
  return opt.add_prefix + std::string(stripped(name, opt));
}

// Renaming must not give a tensor the reserved name, nor two tensors one
// name (manifest names are unique, renamed ones may not be). Positions
// sorted by name, not a set of a million names.
void check_renamed_names(const stream::Manifest& m, const Options& opt) {
  const auto& ts = m.tensors;
  for (const auto& t : ts) {
    const std::string_view s = stripped(t.name, opt);
    if (opt.add_prefix.size() + s.size() == 12 && opt.add_prefix + std::string(s) == "__metadata__")
      fail("renaming gives '" + std::string(t.name) + "' the name '__metadata__', which safetensors reserves");
  }
  if (opt.strip_prefix.empty() && opt.add_prefix.empty()) return;
  if (const auto r = safetensors::first_repeat(ts.size(), [&](size_t i) { return stripped(ts[i].name, opt); })) {
    const auto& [a, b] = *r;
    fail("renaming gives '" + std::string(ts.name(a)) + "' and '" + std::string(ts.name(b)) + "' the same name '" +
         renamed(ts.name(b), opt) + "'");
  }
}

std::vector<uint32_t> all_tensors(const stream::Manifest& m) {
  std::vector<uint32_t> v(m.tensors.size());
  for (uint32_t i = 0; i < v.size(); ++i) v[i] = i;
  return v;
}

// The header of a file laid out as `l`, to `out` in pieces (or only its
// size, with `out` empty).
uint64_t header_pieces(const stream::Manifest& m, const std::vector<uint32_t>& part, const Layout& l,
                       const Options& opt, const std::function<void(std::string_view)>& out) {
  return safetensors::header_pieces(
      m.metadata, l.order.size(),
      [&](size_t k, safetensors::EntryRef& e) {
        const uint32_t i = l.order[k];
        const TensorView t = m.tensors[part[i]];
        e.name.assign(opt.add_prefix).append(stripped(t.name, opt));
        e.dtype = t.dtype;
        e.shape = t.shape;
        e.begin = l.offset[i];
        e.end = e.begin + t.nbytes;
      },
      out);
}

Layout plan(const stream::Manifest& m, const std::vector<uint32_t>& part, bool reference_order, const Options& opt) {
  Layout l;
  l.order.resize(part.size());
  for (uint32_t k = 0; k < l.order.size(); ++k) l.order[k] = k;
  if (reference_order)
    std::stable_sort(l.order.begin(), l.order.end(), [&](uint32_t a, uint32_t b) {
      const TensorView x = m.tensors[part[a]];
      const TensorView y = m.tensors[part[b]];
      return safetensors::reference_order_less(x.dtype, stripped(x.name, opt), y.dtype, stripped(y.name, opt));
    });
  l.offset.resize(part.size());
  for (uint32_t k : l.order) {
    l.offset[k] = l.data_bytes;
    l.data_bytes += m.tensors[part[k]].nbytes;
  }
  l.header_bytes = header_pieces(m, part, l, opt, {});
  return l;
}

Result to_stdout(stream::Reader& in, const Options& opt) {
  const stream::Manifest& m = in.manifest();
  check_renamed_names(m, opt);
  const std::vector<uint32_t> part = all_tensors(m);
  const Layout l = plan(m, part, false, opt);  // stdout cannot seek: stream order
  io::FdSink out(STDOUT_FILENO, "stdout");
  header_pieces(m, part, l, opt, [&](std::string_view s) { out.write(s.data(), s.size()); });
  cli::Progress progress(cli::tool_name(), opt.progress, l.data_bytes);
  for (;;) {
    const Event ev = in.next();
    if (ev.kind == Event::Kind::End) break;
    if (ev.kind == Event::Kind::Data) {
      out.write(ev.data.data(), ev.data.size());
      progress.add(ev.data.size());
    }
  }
  progress.finish();
  return {m.tensors.size(), l.header_bytes + l.data_bytes};
}

}  // namespace

// Replacing a file that the stream is being read from would destroy the
// input of a conversion that may still fail; the manifest names the sources.
void refuse_source_as_output(const stream::Manifest& m, const std::string& output) {
  struct stat out;
  if (::stat(output.c_str(), &out) != 0) return;
  std::string last;
  for (const auto& t : m.tensors) {
    if (t.source.empty() || t.source == last) continue;
    last = t.source;
    struct stat src;
    if (::stat(t.source.c_str(), &src) == 0 && src.st_dev == out.st_dev && src.st_ino == out.st_ino)
      fail(output + ": is the input file " + t.source.str() + "; write to another file");
  }
}

bool sharded(const Options& opt) {
  if (opt.output == "-") return false;
  if (opt.shard_size > 0 || opt.keep_sharding) return true;
  // A folder must be said with a trailing '/': a plain existing folder is
  // more likely a mistake ("is a directory", as for a single file).
  return !opt.output.empty() && opt.output.back() == '/';
}

uint64_t parse_size(const std::string& text) {
  // digits, an optional fraction ("1.5GB", as Hugging Face accepts), a unit
  size_t i = 0;
  while (i < text.size() && (std::isdigit(static_cast<unsigned char>(text[i])) || text[i] == '.')) ++i;
  const std::string number = text.substr(0, i);
  if (number.empty() || number == "." || std::count(number.begin(), number.end(), '.') > 1)
    usage_error("not a size: '" + text + "' (e.g. 5GB, 1.5GB, 500MB, 2GiB)");
  std::string unit = text.substr(i);
  for (char& c : unit) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  static const std::pair<const char*, uint64_t> units[] = {
      {"", 1},           {"B", 1},
      {"KB", 1000},      {"MB", 1000'000},      {"GB", 1000'000'000},      {"TB", 1000'000'000'000},
      {"KIB", 1ull << 10}, {"MIB", 1ull << 20}, {"GIB", 1ull << 30}, {"TIB", 1ull << 40}};
  for (const auto& [name, factor] : units) {
    if (unit != name) continue;
    // Whole part and fraction separately, so "5GB" is exactly 5e9 (no double).
    const auto dot = number.find('.');
    const std::string whole = number.substr(0, dot), frac = dot == std::string::npos ? "" : number.substr(dot + 1);
    uint64_t n = 0;
    for (char c : whole) {
      if (n > (UINT64_MAX - 9) / 10) usage_error("size too large: " + text);
      n = n * 10 + static_cast<uint64_t>(c - '0');
    }
    if (n >= UINT64_MAX / factor) usage_error("size too large: " + text);  // room for the fraction (< factor)
    n *= factor;
    // The fraction, to whole bytes rounded down as int() does: digits * factor / 10^digits.
    unsigned __int128 digits = 0, ten_pow = 1;
    for (size_t k = 0; k < frac.size() && k < 12; ++k) {
      digits = digits * 10 + static_cast<unsigned>(frac[k] - '0');
      ten_pow *= 10;
    }
    n += static_cast<uint64_t>(digits * factor / ten_pow);
    if (n == 0) usage_error("the shard size must be positive: " + text);
    return n;
  }
  usage_error("unknown size unit in '" + text + "' (use KB, MB, GB, TB, or KiB, MiB, GiB, TiB)");
}

namespace {

// What a sharded output writes, planned from the manifest before any data.
struct ShardPlan {
  std::string path;
  std::vector<uint32_t> tensors;  // manifest indices
  Layout layout;                  // offsets by position in `tensors`
  uint64_t size() const { return layout.header_bytes + layout.data_bytes; }
};

struct ExtraFile {
  std::string target;
  std::string source;    // copy this file ...
  std::string contents;  // ... or write these bytes
};

struct OutputPlan {
  std::string dir;  // for sharded output
  std::vector<ShardPlan> shards;
  // Manifest index -> its shard, and its position in the shard's
  // `tensors`; both empty for one file (shard 0, the same position), so a
  // million tensors do not cost 8 bytes each for nothing.
  std::vector<uint32_t> shard_of_;
  std::vector<uint32_t> position_;
  uint32_t shard_of(size_t tensor) const { return shard_of_.empty() ? 0 : shard_of_[tensor]; }
  uint32_t position(size_t tensor) const { return position_.empty() ? static_cast<uint32_t>(tensor) : position_[tensor]; }
  std::vector<ExtraFile> extras;   // index, config.json, copied files
};

std::string torch_dtype_name(Dtype d) {
  switch (d) {
    case Dtype::F16: return "float16";
    case Dtype::F32: return "float32";
    default: return "bfloat16";
  }
}

// Groups of manifest indices, one per shard.
std::vector<std::vector<uint32_t>> split(const stream::Manifest& m, const Options& opt) {
  std::vector<std::vector<uint32_t>> groups;
  if (opt.keep_sharding) {
    // One output shard per input shard that still has tensors, in input order.
    std::vector<std::string> order = m.shards;
    for (const auto& t : m.tensors)
      if (std::find(order.begin(), order.end(), t.source) == order.end()) order.push_back(t.source);
    groups.resize(order.size());
    for (uint32_t i = 0; i < m.tensors.size(); ++i)
      groups[static_cast<size_t>(std::find(order.begin(), order.end(), m.tensors[i].source) - order.begin())].push_back(i);
    groups.erase(std::remove_if(groups.begin(), groups.end(), [](const auto& g) { return g.empty(); }), groups.end());
  } else {
    // Hugging Face's split_state_dict_into_shards: greedy in order; a tensor
    // larger than the limit gets a shard of its own, appended at once.
    const uint64_t limit = opt.shard_size ? opt.shard_size : kDefaultShardSize;
    std::vector<uint32_t> current;
    uint64_t current_bytes = 0;
    for (uint32_t i = 0; i < m.tensors.size(); ++i) {
      const uint64_t n = m.tensors[i].nbytes;
      if (n > limit) {
        groups.push_back({i});
        continue;
      }
      if (current_bytes + n > limit && !current.empty()) {
        groups.push_back(std::move(current));
        current.clear();
        current_bytes = 0;
      }
      current.push_back(i);
      current_bytes += n;
    }
    if (!current.empty()) groups.push_back(std::move(current));
  }
  if (groups.empty()) groups.emplace_back();  // a model with no tensors is one empty file
  return groups;
}

std::string index_json(const stream::Manifest& m, const OutputPlan& p, const Options& opt) {
  std::vector<std::pair<std::string, std::string>> entries;
  uint64_t total = 0;
  for (const auto& sh : p.shards) {
    const std::string file = paths::base_name(sh.path);
    for (size_t i : sh.tensors) {
      entries.emplace_back(renamed(m.tensors.name(i), opt), file);
      total += m.tensors.nbytes(i);
    }
  }
  std::sort(entries.begin(), entries.end());
  // As transformers writes it (json.dumps): sorted keys, two-space indent,
  // non-ASCII escaped, final newline.
  std::string j = "{\n  \"metadata\": {\n    \"total_size\": " + std::to_string(total) + "\n  },\n  \"weight_map\": {";
  for (size_t k = 0; k < entries.size(); ++k) {
    j += k ? ",\n    " : "\n    ";
    json::append_json_string_ascii(j, entries[k].first);
    j += ": ";
    json::append_json_string_ascii(j, entries[k].second);
  }
  j += entries.empty() ? "}\n}\n" : "\n  }\n}\n";
  return j;
}

bool under(const std::string& path, const std::string& dir) {
  return !dir.empty() && path.size() > dir.size() && path.compare(0, dir.size(), dir) == 0 &&
         (dir.back() == '/' || path[dir.size()] == '/');
}

// A file of the model folder may be a link (the Hugging Face cache links
// snapshots/<rev>/NAME to ../../blobs/<hash>), but only to a file in the
// folder or in that cache's blobs: a link elsewhere (~/.ssh/...) is not
// copied into an output that may be uploaded.
bool inside_model(const std::string& model_dir, const std::string& file) {
  const std::string dir = paths::real_path(model_dir), target = paths::real_path(file);
  if (target.empty() || dir.empty()) return false;
  return under(target, dir) || under(target, paths::real_path(model_dir + "/../../blobs"));
}

// model_dir comes from the stream: copy from it only if it is where the
// stream's tensors came from (a stored or crafted stream cannot make st-pack
// copy the files of some other folder).
bool model_dir_trusted(const stream::Manifest& m) {
  const std::string dir = paths::real_path(m.model_dir);
  bool any = false;
  std::string last;
  for (const auto& t : m.tensors) {
    if (t.source == last) continue;
    last = t.source;
    if (!under(paths::real_path(t.source), dir)) {
      cli::warn("not copying the files of " + m.model_dir + ": the stream's tensors did not all come from it");
      return false;
    }
    any = true;
  }
  for (const auto& f : m.shards)
    if (!under(paths::real_path(f), dir)) {
      cli::warn("not copying the files of " + m.model_dir + ": the stream's shards are not all in it");
      return false;
    }
  return any || !m.shards.empty();
}

OutputPlan plan_outputs(const stream::Manifest& m, const Options& opt) {
  OutputPlan p;
  check_renamed_names(m, opt);  // of the whole model, once
  if (!sharded(opt)) {
    ShardPlan sh;
    sh.path = opt.output;
    sh.tensors = all_tensors(m);
    sh.layout = plan(m, sh.tensors, true, opt);
    p.shards.push_back(std::move(sh));
    return p;
  }
  p.shard_of_.assign(m.tensors.size(), 0);
  p.position_.assign(m.tensors.size(), 0);
  // OUTDIR/ (shards named model-*) or DIR/NAME.safetensors (NAME-*).
  std::string prefix = "model";
  p.dir = opt.output;
  if (!paths::is_dir(opt.output) && opt.output.back() != '/' && paths::ends_with(opt.output, ".safetensors")) {
    p.dir = paths::dir_name(opt.output);
    prefix = paths::base_name(opt.output);
    prefix.resize(prefix.size() - std::string(".safetensors").size());
  }
  while (p.dir.size() > 1 && p.dir.back() == '/') p.dir.pop_back();
  const auto groups = split(m, opt);
  const size_t n = groups.size();
  for (size_t s = 0; s < n; ++s) {
    ShardPlan sh;
    char suffix[48];  // two u64s at most: 46 bytes
    std::snprintf(suffix, sizeof suffix, "-%05zu-of-%05zu", s + 1, n);
    sh.path = paths::join(p.dir, prefix + (n == 1 ? "" : suffix) + ".safetensors");
    sh.tensors = groups[s];
    sh.layout = plan(m, sh.tensors, true, opt);
    for (size_t k = 0; k < sh.tensors.size(); ++k) {
      p.shard_of_[sh.tensors[k]] = static_cast<uint32_t>(s);
      p.position_[sh.tensors[k]] = static_cast<uint32_t>(k);
    }
    p.shards.push_back(std::move(sh));
  }
  if (n > 1) p.extras.push_back({paths::join(p.dir, prefix + ".safetensors.index.json"), "", index_json(m, p, opt)});
  // A model folder: its config.json (converted) and other files come along.
  if (!m.model_dir.empty() && opt.copy_files && model_dir_trusted(m)) {
    std::vector<std::string> names;
    if (DIR* d = ::opendir(m.model_dir.c_str())) {
      while (const dirent* e = ::readdir(d)) names.emplace_back(e->d_name);
      ::closedir(d);
    } else {
      fail(m.model_dir + ": cannot read the model folder: " + io::errno_text(errno));
    }
    std::sort(names.begin(), names.end());
    for (const auto& name : names) {
      const std::string src = paths::join(m.model_dir, name);
      if (name.empty() || name[0] == '.' || !paths::is_regular_file(src)) continue;
      if (!inside_model(m.model_dir, src)) {
        cli::warn("not copying " + src + ": a link to a file outside the model folder");
        continue;
      }
      if (paths::ends_with(name, ".safetensors") || paths::ends_with(name, ".safetensors.index.json")) continue;
      // ModelOpt's quantization record: loaders that find it treat the
      // model as FP8, so it goes with quantization_config (fp8-conventions §13.5).
      if (name == "hf_quant_config.json" && m.converted_to) continue;
      const std::string target = paths::join(p.dir, name);
      if (name == "config.json" && m.converted_to) {
        std::ifstream f(src, std::ios::binary);
        std::stringstream text;
        text << f.rdbuf();
        if (!f) fail(src + ": cannot read");
        p.extras.push_back({target, "", model_config::converted_config(src, text.str(), torch_dtype_name(*m.converted_to))});
      } else {
        p.extras.push_back({target, src, ""});
      }
    }
  }
  return p;
}

std::vector<std::string> planned_files(const OutputPlan& p) {
  std::vector<std::string> files;
  for (const auto& sh : p.shards) files.push_back(sh.path);
  for (const auto& e : p.extras) files.push_back(e.target);
  return files;
}


}  // namespace

// Shards written into the input model's folder would mix two models in one
// folder (and -f would replace its config.json, which is input too).
void refuse_source_folder(const stream::Manifest& m, const std::string& dir) {
  struct stat out;
  if (::stat(dir.c_str(), &out) != 0) return;
  // The model folder, or the folder of input shards given one by one; files
  // beside a single input file are fine (their names differ).
  std::vector<std::string> inputs;
  if (!m.model_dir.empty()) inputs.push_back(m.model_dir);
  for (const auto& f : m.shards) inputs.push_back(paths::dir_name(f));
  for (const auto& in : inputs) {
    struct stat sb;
    if (::stat(in.c_str(), &sb) == 0 && sb.st_dev == out.st_dev && sb.st_ino == out.st_ino)
      fail(dir + ": is the folder of the input model; write the shards to another folder");
  }
}

namespace {

void check_plan(const stream::Manifest& m, const Options& opt, const OutputPlan& p) {
  if (!p.dir.empty()) {
    struct stat sb;
    if (::stat(p.dir.c_str(), &sb) == 0 && !S_ISDIR(sb.st_mode)) fail(p.dir + ": exists and is not a folder");
    refuse_source_folder(m, p.dir);
    if (::stat(p.dir.c_str(), &sb) != 0) {
      const std::string parent = paths::dir_name(p.dir);
      if (::access(parent.c_str(), W_OK) != 0)
        fail(p.dir + ": cannot create the output folder in " + parent + ": " + io::errno_text(errno));
      return;  // a new folder: nothing in it to replace
    }
  }
  for (const auto& f : planned_files(p)) {
    io::check_output_path(f, opt.overwrite);
    refuse_source_as_output(m, f);
  }
}

}  // namespace

OutputSize check_output(const stream::Manifest& m, const Options& opt) {
  if (opt.output == "-") {
    check_renamed_names(m, opt);
    const Layout l = plan(m, all_tensors(m), false, opt);
    return {l.header_bytes + l.data_bytes, 1};
  }
  const OutputPlan p = plan_outputs(m, opt);
  check_plan(m, opt, p);
  OutputSize size;
  for (const auto& sh : p.shards) size.bytes += sh.size();
  size.files = p.shards.size();
  return size;
}

Result run(stream::Reader& in, const Options& opt) {
  if (opt.output == "-") return to_stdout(in, opt);
  const stream::Manifest& m = in.manifest();
  const OutputPlan p = plan_outputs(m, opt);
  check_plan(m, opt, p);  // every file of the set, before any data is read
  io::OutputFolder dir(p.dir);
  if (!p.dir.empty()) {  // the whole set at once (each file also reserves its own space)
    uint64_t set_bytes = 0;
    for (const auto& sh : p.shards) set_bytes += sh.size();
    for (const auto& e : p.extras) {
      struct stat sb;
      set_bytes += e.source.empty() ? e.contents.size() : (::stat(e.source.c_str(), &sb) == 0 ? static_cast<uint64_t>(sb.st_size) : 0);
    }
    io::check_free_space(p.dir, set_bytes, p.dir);
  }

  // With verification on, every piece is read back right after it is
  // written, while it is still in the page cache and often in the CPU's
  // cache, and compared with the stream's checksum; a pass over the whole
  // output at the end was measured as most of st-pack's time
  // (docs/performance.md). Checking early checks what the file will hold:
  // writes never overlap (the layout gives each tensor its own range after
  // the header, and the reader makes each tensor's frames contiguous). What
  // it checks is the page cache; the end pass read from the disk only what
  // the cache had already dropped, so neither ever checked the disk.
  std::vector<uint8_t> back;
  auto check_back = [&](const io::AtomicOutput& f, uint64_t pos, uint64_t n, uint64_t want) {
    f.with_bytes(pos, n, back, [&](const uint8_t* q) {
      if (hash::xxh3(q, n) != want)
        fail(f.target() + ": verification failed: bytes read back at offsets " + std::to_string(pos) + "-" +
             std::to_string(pos + n) + " do not match the stream's checksums (corrupt stream or a write error)");
    });
  };
  std::vector<std::unique_ptr<io::AtomicOutput>> files;
  uint64_t data_total = 0;
  for (const auto& sh : p.shards) {
    files.push_back(std::make_unique<io::AtomicOutput>(sh.path, opt.overwrite));
    io::AtomicOutput& f = *files.back();
    f.reserve(sh.size());
    uint64_t pos = 0;
    header_pieces(m, sh.tensors, sh.layout, opt, [&](std::string_view piece) {
      f.pwrite_all(pos, piece.data(), piece.size());
      if (opt.verify)
        f.with_bytes(pos, piece.size(), back, [&](const uint8_t* q) {
          if (std::memcmp(q, piece.data(), piece.size()) != 0)
            fail(sh.path + ": verification failed: the header read back differs from the one written");
        });
      pos += piece.size();
    });
    if (pos != sh.layout.header_bytes) throw Error("internal: the header changed size between planning and writing");
    data_total += sh.layout.data_bytes;
  }
  auto file_pos = [&](uint32_t tensor, uint64_t offset) {
    const Layout& l = p.shards[p.shard_of(tensor)].layout;
    return l.header_bytes + l.offset[p.position(tensor)] + offset;
  };
  // Data from a pipe goes straight into the files (splice) when the files
  // are read back: the read-back then checks the data checksums the reader
  // leaves unchecked, before anything is renamed into place.
  if (opt.verify)
    in.splice_data_to([&](uint32_t tensor, uint64_t offset) {
      const auto& f = *files[p.shard_of(tensor)];
      return stream::SpliceTarget{f.fd(), file_pos(tensor, offset), &f.target()};
    });
  constexpr uint64_t kWritebackBytes = 64u << 20;
  uint64_t unwritten = 0;
  cli::Progress progress(cli::tool_name(), opt.progress, data_total);
  for (;;) {
    const Event ev = in.next();  // checks every frame, and the data checksums of bytes not spliced
    if (ev.kind == Event::Kind::End) break;
    if (ev.kind == Event::Kind::Data) {
      io::AtomicOutput& f = *files[p.shard_of(ev.tensor)];
      const uint64_t pos = file_pos(ev.tensor, ev.offset), n = ev.spliced + ev.data.size();
      f.pwrite_all(pos + ev.spliced, ev.data.data(), ev.data.size());
      if (opt.verify) check_back(f, pos, n, ev.hash);
      progress.add(n);
      if ((unwritten += n) >= kWritebackBytes) {
        f.start_writeback();  // overlap the disk writes with the stream
        unwritten = 0;
      }
    }
  }
  progress.finish();

  // The index, config.json and the model folder's other files, checked
  // like the shards.
  for (const auto& e : p.extras) {
    files.push_back(std::make_unique<io::AtomicOutput>(e.target, opt.overwrite));
    io::AtomicOutput& f = *files.back();
    if (e.source.empty()) {
      f.pwrite_all(0, e.contents.data(), e.contents.size());
      if (opt.verify && !e.contents.empty()) check_back(f, 0, e.contents.size(), hash::xxh3(e.contents.data(), e.contents.size()));
      continue;
    }
    const io::InputFile src(e.source);
    std::vector<uint8_t> buf(std::min<uint64_t>(src.size(), 4u << 20));
    f.reserve(src.size());
    for (uint64_t off = 0; off < src.size();) {
      const size_t n = static_cast<size_t>(std::min<uint64_t>(buf.size(), src.size() - off));
      src.pread_exact(off, buf.data(), n);
      f.pwrite_all(off, buf.data(), n);
      if (opt.verify) check_back(f, off, n, hash::xxh3(buf.data(), n));
      off += n;
    }
  }
  // Into place as a set: if one cannot be committed, the ones already in
  // place are removed again (they did not exist before, or -f was given).
  for (auto& f : files) f->sync();  // the slow part, still interruptible
  size_t committed = 0;
  {
    const io::SignalsHeld held;  // renames only: a Ctrl-C now lands after the whole set
    try {
      for (; committed < files.size(); ++committed) files[committed]->commit();
    } catch (...) {
      for (size_t k = 0; k < committed; ++k) files[k]->uncommit();
      throw;
    }
  }
  dir.keep();
  uint64_t total = 0;
  for (const auto& sh : p.shards) total += sh.size();
  return {m.tensors.size(), total};
}

}  // namespace st::pack
