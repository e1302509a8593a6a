// Scale matching: which scale tensor goes with which FP8 weight, in which
// layout, and what else changes in the output (scales and markers dropped,
// storage names renamed, quantization metadata removed). Decided from the
// manifest (names, dtypes, shapes, metadata, config.json) plus the contents
// of ComfyUI's small comfy_quant marker tensors, so st-list, st-scales and
// st-dequant all run the same code before any weight data arrives.
//
// One table row per naming convention (scales.cpp, kConventions): a new
// convention is one row and a test.
#pragma once

#include <functional>
#include <map>
#include <optional>
#include <ostream>
#include <string>
#include <unordered_map>
#include <vector>

#include "manifest.hpp"

namespace st::scales {

struct BlockSize {
  uint64_t rows = 128;
  uint64_t cols = 128;
};

struct Options {
  std::optional<BlockSize> block;  // --block RxC (1xG for groups along a row)
  std::string convention;          // --convention NAME: use only this row ("" = all)
  std::optional<Dtype> u8_as;      // --u8-as: U8/I8 tensors with a scale hold this FP8 type
  bool keep_scales = false;        // --keep-scales: keep activation/KV scales
  bool strict = false;             // --strict: an FP8 weight without a scale is an error
};

// Problem kinds, as recorded in the stream and printed by st-scales.
inline constexpr const char* kNoScale = "no-scale";                 // FP8 weight cast with scale 1
inline constexpr const char* kOrphanScale = "orphan-scale";         // scale-named tensor, no weight
inline constexpr const char* kNonFp8Weight = "scale-of-non-fp8";    // its weight is not FP8: both kept
inline constexpr const char* kUnconverted = "unconverted-format";   // a layer format we leave as is
inline constexpr const char* kU8WithScale = "u8-with-scale";        // U8/I8 weight with a scale, no marker
inline constexpr const char* kUnusableScale = "unusable-scale";     // fatal: fits no layout / bad dtype
inline constexpr const char* kAmbiguous = "ambiguous-scale";        // several candidates: the first is used
inline constexpr const char* kNameCollision = "name-collision";     // fatal: two outputs, one name
inline constexpr const char* kBadMarker = "invalid-marker";         // fatal: a marker that is not JSON
inline constexpr const char* kIndexMismatch = "index-mismatch";     // fatal: index and shards disagree

// The conventions' names (for --convention and the reports).
std::vector<std::string> convention_names();
// Throws a usage error unless `name` is one of convention_names().
void check_convention(const std::string& name);
// "<name> (<producers>)" for a convention name.
std::string convention_description(const std::string& name);

// Parses "RxC" (e.g. 128x128); throws a usage error otherwise.
BlockSize parse_block(const std::string& text);
// Parses --u8-as: e4m3fn, e5m2, e4m3fnuz, e5m2fnuz; throws a usage error otherwise.
Dtype parse_fp8_format(const std::string& text);

// Tensors whose contents the matcher reads: ComfyUI `<layer>.comfy_quant`
// (U8 JSON). st-list streams them first; stages read them before planning.
bool is_marker_tensor(const stream::TensorView& t);
inline constexpr uint64_t kMaxMarkerBytes = 1 << 16;
using MarkerData = std::map<std::string, std::vector<uint8_t>>;

stream::Matching match(const stream::Manifest& m, const MarkerData& markers, const Options& opt);
// Names, dtypes and shapes only (no metadata, markers or config).
stream::Matching match(const stream::TensorTable& tensors, const Options& opt);

// ComfyUI MXFP8 scales: one E8M0 exponent per group of 32 along a row of a
// 2-D weight [M, N], stored as comfy-kitchen writes them for cuBLAS
// (torchao's to_blocked, "32_4_4"): the grid of M rows x ceil(N/32) groups
// is padded to roundup(M,128) x roundup(groups,4) and cut into tiles of 128
// rows x 4 groups, tiles in row-major order, 512 bytes each; row r of a tile
// is r = 32a + b, and its group c lies at byte 16b + 4a + c (fp8-conventions
// 4 and 13.4, from_blocked).
inline uint64_t mx_groups(uint64_t n) { return (n + 31) / 32; }
inline uint64_t mx_swizzled_numel(uint64_t m, uint64_t n) {
  return (m + 127) / 128 * 128 * ((mx_groups(n) + 3) / 4 * 4);
}
inline uint64_t mx_swizzled_index(uint64_t row, uint64_t group, uint64_t groups) {
  const uint64_t tiles_per_row = (groups + 3) / 4, r = row % 128;
  return ((row / 128) * tiles_per_row + group / 4) * 512 + (r % 32) * 16 + (r / 32) * 4 + group % 4;
}

// The layout a scale of `scale_shape` has for a weight of `weight_shape`, or
// nullopt with a reason. `block` is the block size to try for 2-D grids;
// `group` a group size to prefer for scales along a row ([..., M, k]).
// When the block size was not given (!block_given: neither --block nor
// config.json), a 2-D grid that `block` does not fit fixes it itself: per
// axis, the power of two that gives that many blocks.
std::optional<stream::ScalePairing> infer_layout(const std::vector<uint64_t>& weight_shape,
                                                 const std::vector<uint64_t>& scale_shape, BlockSize block,
                                                 std::string* why, std::optional<uint64_t> group = std::nullopt,
                                                 bool block_given = true);

// Checks a recorded pairing against the manifest (a stream from elsewhere is
// not trusted to index scales safely). Throws st::Error.
void validate(const stream::Manifest& m, const stream::Matching& mt);

// How the bytes of the tensors at `positions` (manifest indexes, in
// ascending order) decode when read as scales, one for each: the pairing's
// scale_format for a paired scale (U8 exponents are F8_E8M0), the tensor's
// own dtype otherwise (second factors).
std::vector<Dtype> scale_decode_formats(const stream::Manifest& m, const stream::Matching& mt,
                                        const std::vector<uint32_t>& positions);

// Fatal problems (st-dequant refuses to convert); with strict, an FP8
// weight without a scale is fatal too.
bool is_fatal(const stream::MatchProblem& p, bool strict = false);
// Whether st-scales should exit 1: any problem, except FP8 weights without a
// scale in a file that has no scales at all (a plain "raw cast" file).
bool needs_attention(const stream::Matching& mt, bool strict = false);

// Tensor names ending like a weight scale of any known convention.
bool is_weight_scale_name(std::string_view name);
// Count for the report's "Scale keys found" line: names ending in
// weight_scale, weight_scale_inv, scale_weight or input_scale.
size_t count_scale_keys(const stream::TensorTable& tensors);

// For tensors that belong to another (candidate scales and second factors,
// the activation scales and comfy_quant marker of a layer): the tensor they
// belong to. st-list --include/--exclude makes them follow its selection.
std::map<std::string, std::string> owners(const stream::TensorTable& tensors);

// Order in which st-list emits tensors: marker tensors, then every candidate
// scale of a weight (small, and st-dequant needs them before their weights),
// then the rest, each group in the given order.
std::vector<uint32_t> scales_first_order(const stream::TensorTable& tensors);

// The tensors that survive conversion, in output order, with their output
// names (for name-collision checks and st-dequant's output manifest): the
// input position of each, 4 bytes a tensor (a model may have a million),
// and the few names that differ from the input's, as views into `mt`.
class OutputNames {
 public:
  OutputNames(const stream::Manifest& m, const stream::Matching& mt);
  size_t size() const { return input_.size(); }
  size_t input(size_t k) const { return input_[k]; }  // input position of output k
  std::string_view name(size_t k) const;              // output k's name

 private:
  const stream::Manifest& m_;
  std::vector<uint32_t> input_;
  std::unordered_map<uint32_t, std::string_view> renamed_;  // input position -> output name
};

// Human report and JSON report. `scale_values(position)` returns a scale's
// decoded values (or an empty vector when unknown) for the min/max columns.
using ScaleValues = std::function<std::vector<float>(size_t scale)>;  // the scale's manifest position
void print_report(std::ostream& out, const stream::Manifest& m, const stream::Matching& mt,
                  const ScaleValues& scale_values);
void print_json(std::ostream& out, const std::string& file, const stream::Manifest& m, const stream::Matching& mt,
                const ScaleValues& scale_values, bool attention);

using st::shape_text;
std::string layout_text(const stream::ScalePairing& p, const stream::TensorTable& t);

}  // namespace st::scales
