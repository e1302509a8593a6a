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
  // Sharded output (docs/sharding.md): --shard-size (0: not given),
  // --keep-sharding, and --no-copy (copy_files false).
  uint64_t shard_size = 0;
  bool keep_sharding = false;
  bool copy_files = true;
};

// Hugging Face's default shard size (huggingface_hub "5GB").
constexpr uint64_t kDefaultShardSize = 5'000'000'000ull;

// Whether `opt` writes a set of shards (a folder, a trailing '/', or a
// shard option) rather than one file.
bool sharded(const Options& opt);
// "5GB", "500MB", "2GiB", "100" (bytes): decimal units as Hugging Face
// parses them, binary ones with "i"; a usage error otherwise.
uint64_t parse_size(const std::string& text);

struct Result {
  uint64_t tensors = 0;
  uint64_t bytes = 0;    // file size
};

Result run(stream::Reader& in, const Options& opt);

// Fails when `output` is one of the manifest's source files (same inode).
void refuse_source_as_output(const stream::Manifest& m, const std::string& output);

// What run() would write for this manifest: the bytes of its safetensors
// files (without an index and copied files), and how many there are.
struct OutputSize {
  uint64_t bytes = 0;
  size_t files = 0;
};

// Plans the output (a rename collision fails here) and checks every file a
// sharded or single-file output would create, before any data is read: each
// may be written (absent, or -f). Fails naming one. Nothing is checked for
// "-" (stdout).
OutputSize check_output(const stream::Manifest& m, const Options& opt);

}  // namespace st::pack
