// st-convert: the three-stage pipeline st-list | st-dequant | st-pack run in
// one process, each stage in its own thread joined by pipes, so it is the
// same code and the same checked stream as the shell pipeline.
#pragma once

#include <string>

#include "dequant.hpp"
#include "pack.hpp"

namespace st::pipeline {

// IN with ".safetensors" replaced by "-bf16.safetensors" (or -f16/-f32).
std::string default_output(const std::string& input, fp8::Target t);

void convert(const std::string& input, const dequant::Options& dq, const pack::Options& pk, const dequant::Warn& warn);

// What convert() would do, printed to `out`; reads only the header and the
// small marker tensors, and writes nothing. Fails as convert() would for a
// bad input or a fatal matching problem.
void dry_run(const std::string& input, const dequant::Options& dq, const pack::Options& pk, std::ostream& out);

}  // namespace st::pipeline
