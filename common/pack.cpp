#include "pack.hpp"

#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include <algorithm>
#include <cstring>
#include <unordered_map>

#include "cli.hpp"
#include "error.hpp"
#include "output_file.hpp"
#include "progress.hpp"
#include "safetensors.hpp"

namespace st::pack {

using stream::Event;

namespace {

// Output layout: data offsets per manifest index, and the header bytes.
struct Layout {
  std::vector<uint64_t> offset;  // relative to the data section
  std::vector<uint8_t> header;
  uint64_t data_bytes = 0;
};

// The output name of a tensor under --strip-prefix/--add-prefix.
std::string renamed(const std::string& name, const Options& opt) {
  std::string n = name;
  if (!opt.strip_prefix.empty() && n.rfind(opt.strip_prefix, 0) == 0) n.erase(0, opt.strip_prefix.size());
  return opt.add_prefix + n;
}

Layout plan(const stream::Manifest& m, bool reference_order, const Options& opt) {
  std::vector<safetensors::TensorEntry> entries;
  std::unordered_map<std::string, std::string> seen;  // output name -> input name
  for (const auto& t : m.tensors) {
    const std::string name = renamed(t.name, opt);
    if (name == "__metadata__") fail("renaming gives '" + t.name + "' the name '__metadata__', which safetensors reserves");
    if (auto [it, fresh] = seen.emplace(name, t.name); !fresh)
      fail("renaming gives '" + it->second + "' and '" + t.name + "' the same name '" + name + "'");
    entries.push_back({name, t.dtype, t.shape, 0, t.nbytes});
  }
  std::vector<size_t> order(entries.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  if (reference_order)
    std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
      if (entries[a].dtype != entries[b].dtype) return entries[a].dtype > entries[b].dtype;
      return entries[a].name < entries[b].name;
    });
  Layout l;
  l.offset.resize(entries.size());
  std::vector<safetensors::TensorEntry> sorted;
  for (size_t i : order) {
    auto e = entries[i];
    e.begin = l.data_bytes;
    e.end = l.data_bytes + e.end;  // end held nbytes
    l.data_bytes = e.end;
    l.offset[i] = e.begin;
    sorted.push_back(std::move(e));
  }
  l.header = safetensors::serialize_header(m.metadata, sorted);
  return l;
}

Result to_stdout(stream::Reader& in, const Options& opt) {
  const Layout l = plan(in.manifest(), false, opt);  // stdout cannot seek: stream order
  io::FdSink out(STDOUT_FILENO, "stdout");
  out.write(l.header.data(), l.header.size());
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
  return {in.manifest().tensors.size(), l.header.size() + l.data_bytes};
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
      fail(output + ": is the input file " + t.source + "; write to another file");
  }
}


uint64_t output_size(const stream::Manifest& m, const Options& opt) {
  const Layout l = plan(m, opt.output != "-", opt);
  return l.header.size() + l.data_bytes;
}

Result run(stream::Reader& in, const Options& opt) {
  if (opt.output == "-") return to_stdout(in, opt);
  const stream::Manifest& m = in.manifest();
  refuse_source_as_output(m, opt.output);
  const Layout l = plan(m, true, opt);
  const uint64_t data_start = l.header.size();
  const uint64_t total = data_start + l.data_bytes;

  io::AtomicOutput file(opt.output, opt.overwrite);
  file.reserve(total);
  file.pwrite_all(0, l.header.data(), l.header.size());
  // Where each checked chunk went, to read it back: 24 bytes per 4 MiB.
  struct Chunk {
    uint64_t pos, len, hash;
  };
  std::vector<Chunk> chunks;
  constexpr uint64_t kWritebackBytes = 64u << 20;
  uint64_t unwritten = 0;
  cli::Progress progress(cli::tool_name(), opt.progress, l.data_bytes);
  for (;;) {
    const Event ev = in.next();  // checks every frame and data checksum
    if (ev.kind == Event::Kind::End) break;
    if (ev.kind == Event::Kind::Data) {
      const uint64_t pos = data_start + l.offset[ev.tensor] + ev.offset;
      file.pwrite_all(pos, ev.data.data(), ev.data.size());
      if (opt.verify) chunks.push_back({pos, ev.data.size(), ev.hash});
      progress.add(ev.data.size());
      if ((unwritten += ev.data.size()) >= kWritebackBytes) {
        file.start_writeback();  // overlap the disk writes with the stream
        unwritten = 0;
      }
    }
  }
  progress.finish();

  if (opt.verify) {
    // Read back what the file now holds and compare with the stream's checksums.
    std::vector<uint8_t> buf(std::max<size_t>(l.header.size(), stream::kMaxChunkBytes));
    file.pread_all(0, buf.data(), l.header.size());
    if (std::memcmp(buf.data(), l.header.data(), l.header.size()) != 0)
      fail(opt.output + ": verification failed: the header read back differs from the one written");
    cli::Progress checking(cli::tool_name() + " (verifying)", opt.progress, l.data_bytes);
    for (const Chunk& c : chunks) {
      file.with_bytes(c.pos, c.len, buf, [&](const uint8_t* p) {
        if (XXH3_64bits(p, c.len) != c.hash)
          fail(opt.output + ": verification failed: bytes read back at offset " + std::to_string(c.pos) +
               " differ from the stream");
      });
      checking.add(c.len);
    }
    checking.finish();
  }
  file.commit();
  return {m.tensors.size(), total};
}

}  // namespace st::pack
