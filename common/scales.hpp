// Scale matching: which scale tensor goes with which FP8 weight, in which
// layout, and which tensors are not needed after conversion. Decided from the
// manifest alone (names, dtypes, shapes), so st-list, st-scales and
// st-dequant all run the same code before any data arrives.
#pragma once

#include <functional>
#include <optional>
#include <ostream>
#include <string>
#include <vector>

#include "manifest.hpp"

namespace st::scales {

struct BlockSize {
  uint64_t rows = 128;
  uint64_t cols = 128;
};

struct Options {
  std::optional<BlockSize> block;  // --block RxC; default 128x128 for block grids
};

// Problem kinds, as recorded in the stream and printed by st-scales.
inline constexpr const char* kNoScale = "no-scale";              // FP8 weight cast with scale 1
inline constexpr const char* kOrphanScale = "orphan-scale";      // scale-named tensor, no weight
inline constexpr const char* kNonFp8Weight = "scale-of-non-fp8"; // its weight is not FP8: both kept
inline constexpr const char* kUnusableScale = "unusable-scale";  // fatal: shape/dtype fits no layout
inline constexpr const char* kAmbiguous = "ambiguous-scale";     // fatal: several candidates

// Parses "RxC" (e.g. 128x128); throws a usage error otherwise.
BlockSize parse_block(const std::string& text);

stream::Matching match(const std::vector<stream::TensorInfo>& tensors, const Options& opt);

// The layout a scale of `scale_shape` has for a weight of `weight_shape`, or
// nullopt with a reason. `block` is the block size to try for 2-D grids.
std::optional<stream::ScalePairing> infer_layout(const std::vector<uint64_t>& weight_shape,
                                                 const std::vector<uint64_t>& scale_shape,
                                                 BlockSize block, std::string* why);

// Checks a recorded pairing against the manifest (a stream from elsewhere is
// not trusted to index scales safely). Throws st::Error.
void validate(const stream::Manifest& m, const stream::Matching& mt);

// Fatal problems (st-dequant refuses to convert).
bool is_fatal(const stream::MatchProblem& p);
// Whether st-scales should exit 1: any problem, except FP8 weights without a
// scale in a file that has no scales at all (a plain "raw cast" file).
bool needs_attention(const stream::Matching& mt);

// Tensor names ending like a weight scale of any known convention.
bool is_weight_scale_name(const std::string& name);
// Count for the report's "Scale keys found" line: names ending in
// weight_scale, weight_scale_inv, scale_weight or input_scale.
size_t count_scale_keys(const std::vector<stream::TensorInfo>& tensors);

// Order in which st-list emits tensors: every scale first (they are small and
// st-dequant needs them before their weights), then the rest, each group in
// the given order.
std::vector<size_t> scales_first_order(const std::vector<stream::TensorInfo>& tensors);

// Human report. `scale_values(name)` returns a scale's decoded values (or an
// empty vector when unknown) for the min/max columns.
using ScaleValues = std::function<std::vector<float>(const std::string& name)>;
void print_report(std::ostream& out, const stream::Manifest& m, const stream::Matching& mt,
                  const ScaleValues& scale_values);

std::string shape_text(const std::vector<uint64_t>& shape);

}  // namespace st::scales
