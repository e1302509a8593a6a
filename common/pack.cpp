#include "pack.hpp"

#include <unistd.h>
#include <xxhash.h>

#include <algorithm>
#include <cstring>

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

Layout plan(const stream::Manifest& m, bool reference_order) {
  std::vector<safetensors::TensorEntry> entries;
  for (const auto& t : m.tensors) entries.push_back({t.name, t.dtype, t.shape, 0, t.nbytes});
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
  const Layout l = plan(in.manifest(), false);  // stdout cannot seek: stream order
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

Result run(stream::Reader& in, const Options& opt) {
  if (opt.output == "-") return to_stdout(in, opt);
  const stream::Manifest& m = in.manifest();
  const Layout l = plan(m, true);
  const uint64_t data_start = l.header.size();
  const uint64_t total = data_start + l.data_bytes;

  io::AtomicOutput file(opt.output, opt.overwrite);
  file.reserve(total);
  file.pwrite_all(0, l.header.data(), l.header.size());
  std::vector<uint64_t> hashes(m.tensors.size());
  cli::Progress progress(cli::tool_name(), opt.progress, l.data_bytes);
  for (;;) {
    const Event ev = in.next();  // checks every frame and tensor checksum
    if (ev.kind == Event::Kind::End) break;
    if (ev.kind == Event::Kind::Data) {
      file.pwrite_all(data_start + l.offset[ev.tensor] + ev.offset, ev.data.data(), ev.data.size());
      progress.add(ev.data.size());
    } else {
      hashes[ev.tensor] = ev.hash;
    }
  }
  progress.finish();

  if (opt.verify) {
    // Read back what the file now holds and compare with the stream's checksums.
    std::vector<uint8_t> buf(std::max<size_t>(l.header.size(), 4u << 20));
    file.pread_all(0, buf.data(), l.header.size());
    if (std::memcmp(buf.data(), l.header.data(), l.header.size()) != 0)
      fail(opt.output + ": verification failed: the header read back differs from the one written");
    XXH3_state_t* st = XXH3_createState();
    if (!st) throw std::bad_alloc();
    cli::Progress checking(cli::tool_name() + " (verifying)", opt.progress, l.data_bytes);
    try {
      for (size_t i = 0; i < m.tensors.size(); ++i) {
        XXH3_64bits_reset(st);
        uint64_t left = m.tensors[i].nbytes, pos = data_start + l.offset[i];
        while (left > 0) {
          const size_t n = static_cast<size_t>(std::min<uint64_t>(left, buf.size()));
          file.pread_all(pos, buf.data(), n);
          XXH3_64bits_update(st, buf.data(), n);
          checking.add(n);
          pos += n;
          left -= n;
        }
        if (XXH3_64bits_digest(st) != hashes[i])
          fail(opt.output + ": verification failed: tensor '" + m.tensors[i].name + "' read back differs from the stream");
      }
    } catch (...) {
      XXH3_freeState(st);
      throw;
    }
    XXH3_freeState(st);
    checking.finish();
  }
  file.commit();
  return {m.tensors.size(), total};
}

}  // namespace st::pack
