// The stream's manifest: the source metadata and every tensor's name, dtype,
// shape and size, plus (after the match stage) which scale goes with which
// FP8 weight. Sent as the first frame so every stage can plan before data.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "dtype.hpp"
#include "safetensors.hpp"
#include "tensor_table.hpp"

namespace st::stream {

// MxSwizzled: ComfyUI MXFP8, 1x32 groups of a 2-D weight whose exponents
// lie in cuBLAS tiles (scales::mx_swizzled_index), not row by row.
enum class ScaleLayout { PerTensor, PerRow, Block, MxSwizzled };

// One FP8 weight with its scale tensor (or none: cast with scale 1).
// Tensors are positions in the manifest's table: a model may pair hundreds
// of thousands of weights, whose names the table holds already. (In the
// stream they are names: docs/stream-format.md.)
struct ScalePairing {
  static constexpr int32_t kNone = -1;
  uint32_t weight = 0;
  int32_t scale = kNone;        // kNone when the weight has no scale
  int32_t scale2 = kNone;       // a second, scalar factor (musubi scale_weight_tensor), or kNone
  int32_t output = kNone;       // the converted tensor's name: Matching::outputs[output], or kNone for the weight's
  bool has_scale() const { return scale != kNone; }
  SharedString convention;      // the matcher row that paired them ("" when no scale); a few names, interned
  Dtype format = Dtype::F8_E4M3;        // how the weight's bytes decode (its dtype, or the
                                         // FP8 type of a U8/I8 container)
  Dtype scale_format = Dtype::F32;      // how the scale's bytes decode (U8 exponents: F8_E8M0)
  ScaleLayout layout = ScaleLayout::PerTensor;
  uint32_t block_rows = 0;      // Block only; groups along a row are blocks of 1 x G
  uint32_t block_cols = 0;      // (32 bits: 40 bytes a pair, not 48)
};

// Something the matcher wants a person to know about.
struct MatchProblem {
  std::string kind;    // see the kinds in scales.hpp
  std::string tensor;
  std::string detail;
};

struct Rename {
  std::string from, to;
};

// A change to the output's __metadata__: set `key` to `value`, or remove it.
struct MetadataEdit {
  std::string key;
  std::optional<std::string> value;
};

struct Matching {
  std::vector<ScalePairing> pairs;  // every FP8 weight converted, in manifest order
  std::vector<uint32_t> drop;       // tensors not needed after conversion (scales, markers, ...), in manifest order
  std::vector<std::string> outputs;  // the names of converted weights written under another name
  std::vector<Rename> renames;      // tensors that pass through under another name
  std::vector<MetadataEdit> metadata_edits;
  std::vector<MatchProblem> problems;
  uint64_t block_rows = 128;        // block size used for 2-D scale grids
  uint64_t block_cols = 128;

  // The name pair p's weight is written under.
  std::string_view output_name(const ScalePairing& p, const TensorTable& t) const {
    return p.output == ScalePairing::kNone ? t.name(p.weight) : std::string_view(outputs[static_cast<size_t>(p.output)]);
  }
};

struct Manifest {
  std::string producer;
  std::optional<safetensors::Metadata> metadata;
  TensorTable tensors;
  // The quantization_config object of the model's config.json, when the
  // source had one beside it (compact JSON text).
  std::string quantization_config;
  std::optional<Matching> matching;
  // A model read from several files: the files in order (tensors name theirs
  // in `source`), and the model folder when st-list was given a folder or an
  // index (st-pack copies its other files). Empty for a single file.
  std::vector<std::string> shards;
  std::string model_dir;
  // The dtype st-dequant converted FP8 weights to (config.json's torch_dtype).
  std::optional<Dtype> converted_to;

  uint64_t total_bytes() const;
};

// Tensor name -> manifest index, built once for code that looks up every
// pair of a model (tens of thousands of tensors for DeepSeek-V3).
// A name that occurs twice finds the first. Positions sorted by name, 4
// bytes a tensor: a hash map cost some 50 bytes a tensor, which counts at a
// million tensors.
class NameIndex {
 public:
  explicit NameIndex(const Manifest& m) : NameIndex(m.tensors) {}
  explicit NameIndex(const TensorTable& tensors);
  explicit NameIndex(TensorTable&&) = delete;  // it refers to the table
  long find(std::string_view name) const;  // -1 when absent
  TensorView at(std::string_view name) const;  // throws st::Error when absent
  size_t position(std::string_view name) const;  // the same, its index

 private:
  const TensorTable& tensors_;
  std::vector<uint32_t> by_name_;
};

// What a stage changes in the manifest it passes on, so that it need not
// copy one of a million tensors to change two fields.
struct ManifestChanges {
  std::string producer;
  const Matching* matching = nullptr;  // replaces m.matching when set
  // Replaces m.tensors when set: `count` tensors, the k-th made by
  // tensor_at(k), which may fill and return one buffer it reuses (a stage
  // that converts or drops tensors then never holds a second table).
  size_t count = 0;
  std::function<TensorView(size_t k)> tensor_at;
};

std::string encode_manifest(const Manifest& m, const ManifestChanges* changes = nullptr);
// The same text, given to `out` in pieces of at most 64 KiB as it is made,
// so a manifest of a million tensors (~100 MB of JSON) is never held whole.
void encode_manifest_pieces(const Manifest& m, const ManifestChanges* changes,
                            const std::function<void(std::string_view)>& out);
// Throws st::Error (message without a file name) on anything malformed.
Manifest decode_manifest(std::string_view json);
// The same for text that arrives in pieces: `more(buf, n)` gives up to n
// next bytes, 0 at the end. The text is never held whole (the Reader
// decodes a manifest frame as it arrives).
Manifest decode_manifest(const std::function<size_t(char*, size_t)>& more);

std::string_view layout_name(ScaleLayout l);

}  // namespace st::stream
