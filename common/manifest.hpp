// The stream's manifest: the source metadata and every tensor's name, dtype,
// shape and size, plus (after the match stage) which scale goes with which
// FP8 weight. Sent as the first frame so every stage can plan before data.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "dtype.hpp"
#include "safetensors.hpp"

namespace st::stream {

struct TensorInfo {
  std::string name;
  Dtype dtype = Dtype::U8;
  std::vector<uint64_t> shape;
  uint64_t nbytes = 0;
  std::string source;  // file it came from ("" when unknown)
};

enum class ScaleLayout { PerTensor, PerRow, Block };

// One FP8 weight with its scale tensor (or none: cast with scale 1).
struct ScalePairing {
  std::string weight;
  std::string scale;            // "" when the weight has no scale
  ScaleLayout layout = ScaleLayout::PerTensor;
  uint64_t block_rows = 0;      // Block only
  uint64_t block_cols = 0;
};

// Something the matcher wants a person to know about.
struct MatchProblem {
  std::string kind;    // see ProblemKind strings in scales.hpp
  std::string tensor;
  std::string detail;
};

struct Matching {
  std::vector<ScalePairing> pairs;  // every FP8 weight, in manifest order
  std::vector<std::string> drop;    // activation scales etc. not needed after conversion
  std::vector<MatchProblem> problems;
  uint64_t block_rows = 128;        // block size used for weight_scale_inv grids
  uint64_t block_cols = 128;
};

struct Manifest {
  std::string producer;
  std::optional<safetensors::Metadata> metadata;
  std::vector<TensorInfo> tensors;
  std::optional<Matching> matching;

  // Index of a tensor by name, or -1.
  long find(const std::string& name) const;
  uint64_t total_bytes() const;
};

std::string encode_manifest(const Manifest& m);
// Throws st::Error (message without a file name) on anything malformed.
Manifest decode_manifest(std::string_view json);

std::string_view layout_name(ScaleLayout l);

}  // namespace st::stream
