// Fuzz target: the safetensors header reader (safetensors::parse_header).
//
// Input: HEADER_JSON [ '\0' SIZE ]. The bytes before the first NUL are the
// header JSON (a header with a NUL is rejected anyway, and the whole input is
// also tried as a header so that path is fuzzed too). SIZE is up to 8 bytes,
// little-endian: the size of the data section, so file_size = 8 + len(JSON)
// + SIZE. Without a NUL the data size is 0.
//
// st::Error is the normal outcome for bad input. Also checked: a header that
// parses is written back with serialize_header() and must parse again to
// the same tensors (the round trip st-pack relies on).
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <span>
#include <vector>

#include "error.hpp"
#include "forget_interned.hpp"
#include "safetensors.hpp"

namespace {

[[noreturn]] void finding(const char* what) {
  std::fprintf(stderr, "fuzz_safetensors_header: %s\n", what);
  std::abort();
}

void check_round_trip(const st::safetensors::Header& h) {
  std::vector<uint8_t> out;
  try {
    out = st::safetensors::serialize_header(h.metadata, h.tensors);
  } catch (const st::Error&) {
    return;  // over the header size limit: refused with a message
  }
  const std::span<const uint8_t> json(out.data() + 8, out.size() - 8);
  st::safetensors::Header again;
  try {
    again = st::safetensors::parse_header(json, out.size() + h.data_size);
  } catch (const st::Error& e) {
    std::fprintf(stderr, "re-parse error: %s\n", e.what());
    finding("a header written by serialize_header() does not parse");
  }
  if (again.tensors.size() != h.tensors.size()) finding("round trip changed the tensor count");
  for (size_t i = 0; i < h.tensors.size(); ++i) {
    const auto& a = h.tensors[i];
    const auto& b = again.tensors[i];
    if (a.name != b.name || a.dtype != b.dtype || a.shape != b.shape || a.begin != b.begin || a.end != b.end)
      finding("round trip changed a tensor");
  }
  if (again.metadata != h.metadata) finding("round trip changed the metadata");
  if (again.data_size != h.data_size) finding("round trip changed the data size");
}

void one(std::span<const uint8_t> json, uint64_t data_size) {
  const uint64_t base = 8 + static_cast<uint64_t>(json.size());
  if (data_size > UINT64_MAX - base) data_size = UINT64_MAX - base;  // read_header never passes more
  try {
    const auto h = st::safetensors::parse_header(json, base + data_size);
    if (h.data_start != base || h.data_size != data_size) finding("wrong data_start or data_size");
    uint64_t covered = 0;
    for (const auto& t : h.tensors) {
      if (t.begin != covered || t.end < t.begin) finding("accepted tensors that do not tile the data");
      covered = t.end;
    }
    if (covered != data_size) finding("accepted tensors that do not cover the data section");
    check_round_trip(h);
  } catch (const st::Error&) {
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const ForgetInterned forget;  // last to go
  const std::span<const uint8_t> in(data, size);
  const void* nul = std::memchr(data, 0, size);
  if (!nul) {
    one(in, 0);
    return 0;
  }
  const size_t n = static_cast<size_t>(static_cast<const uint8_t*>(nul) - data);
  uint64_t data_size = 0;
  for (size_t i = 0; i < 8 && n + 1 + i < size; ++i) data_size |= uint64_t{data[n + 1 + i]} << (8 * i);
  one(in.first(n), data_size);
  one(in, data_size);  // with the NUL: must be refused cleanly
  return 0;
}
