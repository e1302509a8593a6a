// The st-dequant stage: FP8 weights become fp8_value * scale in BF16/F16/F32,
// their scales, activation scales and quantization markers are dropped,
// storage names are renamed, everything else passes through bit for bit.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "fp8.hpp"
#include "scales.hpp"
#include "stream.hpp"

namespace st::dequant {

struct Options {
  fp8::Target target = fp8::Target::BF16;
  // Matching options. Any of them set (block, convention, u8_as,
  // keep_scales) re-matches even when the stream carries a pairing.
  // match.strict also makes any overflow to infinity an error.
  scales::Options match;
};

struct Summary {
  size_t converted = 0;               // FP8 tensors converted with a scale
  fp8::Loss loss;                     // over all tensors
  size_t lossy_tensors = 0;
  std::vector<std::string> unscaled;  // FP8 tensors cast with scale 1
  size_t dropped = 0;
  size_t passed = 0;
};

using Warn = std::function<void(const std::string&)>;

// The output manifest and per-tensor plan are decided from the input
// manifest (and the leading marker tensors) before any weight data is read;
// then data streams through chunk by chunk.
Summary run(stream::Reader& in, stream::Writer& out, const Options& opt, const Warn& warn);

// Throws for a fatal matching problem (st-dequant refuses the stream).
void check_problems(const stream::Matching& mt, const Options& opt);

// The output manifest for a matching: converted weights in the target type
// under their output names, dropped tensors gone, metadata edited.
// (run() writes the same without holding it.)
stream::Manifest output_manifest(const stream::Manifest& m, const stream::Matching& mt, fp8::Target target);

// Dequantises `n` FP8 codes that start at element `first` of `weight`, using
// the layout in `pair` and the decoded `scale` values; writes target bytes.
// The codes decode as the weight's FP8 dtype, or as pair.format when the
// weight is a U8/I8 container.
void convert_chunk(const stream::TensorView& weight, const stream::ScalePairing& pair,
                   const std::vector<float>& scale, fp8::Target target, uint64_t first,
                   const uint8_t* in, size_t n, uint8_t* out, fp8::Loss& loss);

}  // namespace st::dequant
