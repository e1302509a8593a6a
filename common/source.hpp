// A .safetensors file as the start of a pipeline: its manifest (scales
// first), its tensors streamed in chunks with bounded memory, a human table.
#pragma once

#include <ostream>
#include <string>
#include <vector>

#include "io.hpp"
#include "safetensors.hpp"
#include "scales.hpp"
#include "stream.hpp"

namespace st::source {

// What st-list selects and checks.
struct ListOptions {
  std::vector<std::string> include;  // shell globs on full names; empty: all
  std::vector<std::string> exclude;  // applied after include
  bool sha256 = false;               // compute the file's SHA-256 while streaming
  std::string expect_sha256;         // lowercase hex; a mismatch fails before END
};

class SafetensorsSource {
 public:
  // Validates the whole header; selects tensors (a scale, activation scale
  // or marker follows the selection of the weight it belongs to).
  explicit SafetensorsSource(const std::string& path, const ListOptions& opt = {});

  const safetensors::Header& header() const { return header_; }
  const io::InputFile& file() const { return file_; }
  // Tensors in the order st-list emits them: markers and weight scales
  // first, then the rest in file order (st-dequant needs a scale before its
  // weight's data). Carries the quantization_config of a config.json beside
  // the file.
  const stream::Manifest& manifest() const { return manifest_; }

  // Writes the whole stream: preamble, manifest, tensors, END. With sha256
  // or expect_sha256, every byte of the file is hashed as it is read
  // (unselected tensors too); returns the hex digest ("" otherwise). A digest
  // that differs from expect_sha256 fails before the END frame, so no later
  // stage accepts the stream.
  std::string write_stream(stream::Writer& w) const;
  // One tensor's bytes (for small tensors such as scales).
  std::vector<uint8_t> read_tensor(const std::string& name) const;
  // The contents of the marker tensors the matcher reads (comfy_quant).
  scales::MarkerData read_markers() const;

 private:
  io::InputFile file_;
  ListOptions opt_;
  safetensors::Header header_;
  stream::Manifest manifest_;
  std::vector<size_t> header_index_;  // manifest index -> header tensor index
};

// "NAME DTYPE SHAPE BYTES" table, in file order.
void print_table(std::ostream& out, const safetensors::Header& h);
// The same for a file: only its header is read (no config.json, no data).
void print_file_table(std::ostream& out, const std::string& path, const ListOptions& opt = {});
// One JSON document: file, size, header_bytes, metadata (object or null),
// tensors [{name, dtype, shape, bytes, data_offsets, file_offset}] in file order.
void print_file_json(std::ostream& out, const std::string& path, const ListOptions& opt = {});

}  // namespace st::source
