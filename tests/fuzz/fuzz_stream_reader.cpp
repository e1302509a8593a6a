// Fuzz target: the st-stream reader (stream::Reader over io::MemorySource).
//
// Input: a whole stream. It is read three times, each time constructing the
// Reader and calling next() until Event::Kind::End or an st::Error:
//  1. as it is (every checksum must match, so random bytes mostly stop at
//     the preamble or the first frame);
//  2. "repaired": the harness walks the frames and rewrites every checksum
//     and the END frame's counts so that they match the bytes, letting the
//     fuzzer reach the reader's order, size and limit checks past the
//     checksums;
//  3. the repaired stream again through a source that returns at most a few
//     bytes per read (short reads, as from a pipe): the events and the
//     outcome must be the same as in 2.
// Also checked on every run: events come in manifest order, DATA offsets
// are contiguous, each tensor gets exactly nbytes, and End comes only after
// every tensor ended.
#include <xxhash.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "error.hpp"
#include "forget_interned.hpp"
#include "io.hpp"
#include "stream.hpp"
#include "stream_format.hpp"

namespace {

namespace sf = st::stream;

[[noreturn]] void finding(const char* what) {
  std::fprintf(stderr, "fuzz_stream_reader: %s\n", what);
  std::abort();
}

uint32_t get_u32(const uint8_t* p) { return uint32_t{p[0]} | uint32_t{p[1]} << 8 | uint32_t{p[2]} << 16 | uint32_t{p[3]} << 24; }
uint64_t get_u64(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}
void put_u64(uint8_t* p, uint64_t v) {
  for (int i = 0; i < 8; ++i) p[i] = static_cast<uint8_t>(v >> (8 * i));
}

// Rewrites the checksums (and END counts) of a stream in place, following
// docs/stream-format.md; stops at the first frame that does not fit.
void repair(std::vector<uint8_t>& b) {
  if (b.size() < sf::kPreambleBytes) return;
  put_u64(b.data() + 16, XXH3_64bits(b.data(), 16));
  size_t pos = sf::kPreambleBytes;
  XXH3_state_t* tensor = XXH3_createState();
  XXH3_state_t* combined = XXH3_createState();
  if (!tensor || !combined) finding("out of memory in the harness");
  XXH3_64bits_reset(tensor);
  XXH3_64bits_reset(combined);
  uint64_t frames = 0, tensors = 0, data_bytes = 0;
  while (b.size() - pos >= sf::kFrameHeaderBytes) {
    uint8_t* hdr = b.data() + pos;
    const uint32_t type = get_u32(hdr);
    const uint64_t len = get_u64(hdr + 8);
    const size_t room = b.size() - pos - sf::kFrameHeaderBytes;
    if (len > room) break;
    uint8_t* p = hdr + sf::kFrameHeaderBytes;
    if (type == sf::kFrameData && len > sf::kDataSubheaderBytes) {
      const uint64_t n = len - sf::kDataSubheaderBytes;
      put_u64(p + 16, XXH3_64bits(p + sf::kDataSubheaderBytes, n));
      XXH3_64bits_update(tensor, p + 16, 8);
      data_bytes += n;
    } else if (type == sf::kFrameTensorEnd && len == sf::kTensorEndBytes) {
      const uint64_t h = XXH3_64bits_digest(tensor);
      put_u64(p + 16, h);
      uint8_t le[8];
      put_u64(le, h);
      XXH3_64bits_update(combined, le, 8);
      XXH3_64bits_reset(tensor);
      ++tensors;
    } else if (type == sf::kFrameEnd && len == sf::kEndBytes) {
      put_u64(p, tensors);
      put_u64(p + 8, data_bytes);
      put_u64(p + 16, frames);
      put_u64(p + 24, XXH3_64bits_digest(combined));
    }
    const uint64_t hashed = type == sf::kFrameData ? std::min<uint64_t>(len, sf::kDataSubheaderBytes) : len;
    XXH3_state_t* f = XXH3_createState();
    if (!f) finding("out of memory in the harness");
    XXH3_64bits_reset(f);
    XXH3_64bits_update(f, hdr, 16);
    XXH3_64bits_update(f, p, static_cast<size_t>(hashed));
    put_u64(hdr + 16, XXH3_64bits_digest(f));
    XXH3_freeState(f);
    ++frames;
    const uint64_t padded = len + (sf::kAlign - len % sf::kAlign) % sf::kAlign;
    if (padded > room) break;
    pos += sf::kFrameHeaderBytes + static_cast<size_t>(padded);
  }
  XXH3_freeState(tensor);
  XXH3_freeState(combined);
}

// What one read of a stream produced, for comparing two reads.
struct Trace {
  std::vector<uint64_t> events;  // kind, tensor, offset, size, hash per event
  std::string error;             // "" when the stream ended cleanly
  bool upstream_failed = false;
  bool operator==(const Trace&) const = default;
};

Trace read_all(const std::vector<uint8_t>& bytes, size_t max_read) {
  Trace tr;
  st::io::MemorySource src(bytes, max_read);
  try {
    sf::Reader r(src, "fuzz");
    const auto& ts = r.manifest().tensors;
    uint32_t current = 0;
    uint64_t received = 0;
    for (;;) {
      const sf::Event ev = r.next();
      tr.events.insert(tr.events.end(), {static_cast<uint64_t>(ev.kind), ev.tensor, ev.offset, ev.data.size(), ev.hash});
      switch (ev.kind) {
        case sf::Event::Kind::Data:
          if (ev.tensor != current || current >= ts.size()) finding("DATA event for a tensor out of order");
          if (ev.offset != received || ev.data.empty()) finding("DATA event at a wrong offset or empty");
          if (ev.data.size() > ts[current].nbytes - received) finding("more DATA than the tensor holds");
          if (XXH3_64bits(ev.data.data(), ev.data.size()) != ev.hash) finding("DATA event whose hash does not match");
          received += ev.data.size();
          break;
        case sf::Event::Kind::TensorEnd:
          if (ev.tensor != current || current >= ts.size()) finding("TENSOR_END event out of order");
          if (received != ts[current].nbytes) finding("TENSOR_END before all the tensor's bytes");
          ++current;
          received = 0;
          break;
        case sf::Event::Kind::End:
          if (current != ts.size()) finding("End before every tensor ended");
          try {
            r.next();
            finding("next() after End did not throw");
          } catch (const st::Error&) {
          }
          return tr;
      }
    }
  } catch (const st::UpstreamFailed& e) {
    tr.upstream_failed = true;
    tr.error = e.what();
  } catch (const st::Error& e) {
    tr.error = e.what();
    if (tr.error.empty()) finding("an st::Error without a message");
  }
  return tr;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const ForgetInterned forget;  // last to go
  std::vector<uint8_t> bytes(data, data + size);
  read_all(bytes, SIZE_MAX);
  repair(bytes);
  const Trace whole = read_all(bytes, SIZE_MAX);
  const size_t max_read = 1 + size % 61;
  const Trace pieces = read_all(bytes, max_read);
  if (!(whole == pieces)) {
    std::fprintf(stderr, "whole reads: '%s'\nshort reads of %zu: '%s'\n", whole.error.c_str(), max_read,
                 pieces.error.c_str());
    finding("short reads change what the reader reports");
  }
  return 0;
}
