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

class SafetensorsSource {
 public:
  explicit SafetensorsSource(const std::string& path);  // validates the whole header

  const safetensors::Header& header() const { return header_; }
  const io::InputFile& file() const { return file_; }
  // Tensors in the order st-list emits them: markers and weight scales
  // first, then the rest in file order (st-dequant needs a scale before its
  // weight's data). Carries the quantization_config of a config.json beside
  // the file.
  const stream::Manifest& manifest() const { return manifest_; }

  // Writes the whole stream: preamble, manifest, tensors, END.
  void write_stream(stream::Writer& w) const;
  // One tensor's bytes (for small tensors such as scales).
  std::vector<uint8_t> read_tensor(const std::string& name) const;
  // The contents of the marker tensors the matcher reads (comfy_quant).
  scales::MarkerData read_markers() const;

 private:
  io::InputFile file_;
  safetensors::Header header_;
  stream::Manifest manifest_;
  std::vector<size_t> header_index_;  // manifest index -> header tensor index
};

// "NAME DTYPE SHAPE BYTES" table, in file order.
void print_table(std::ostream& out, const safetensors::Header& h);
// The same for a file: only its header is read (no config.json, no data).
void print_file_table(std::ostream& out, const std::string& path);

}  // namespace st::source
