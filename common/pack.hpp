// The st-pack stage: a stream becomes a .safetensors file. The header is
// written from the manifest; tensors are laid out in the reference writer's
// order (every tensor aligned to its element size); the file is verified
// against the stream's checksums before it is moved into place.
#pragma once

#include <string>

#include "stream.hpp"

namespace st::pack {

struct Options {
  std::string output;    // path, or "-" for stdout
  bool overwrite = false;
  bool verify = true;
  bool progress = false;
  std::string strip_prefix;  // removed from names that start with it
  std::string add_prefix;    // then put before every name
};

struct Result {
  uint64_t tensors = 0;
  uint64_t bytes = 0;    // file size
};

Result run(stream::Reader& in, const Options& opt);

// Fails when `output` is one of the manifest's source files (same inode).
void refuse_source_as_output(const stream::Manifest& m, const std::string& output);

// The size of the file run() would write for this manifest.
uint64_t output_size(const stream::Manifest& m, const Options& opt);

}  // namespace st::pack
