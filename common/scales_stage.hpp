// st-scales: a report on a file's FP8 weights and scales, or, inside a
// pipeline, the stage that records the pairing in the stream's manifest.
#pragma once

#include <ostream>
#include <string>

#include "scales.hpp"
#include "stream.hpp"

namespace st::scales {

enum class ReportFormat { Text, Json };

// Prints the report for a file; returns true when something needs attention
// (see needs_attention), which st-scales turns into exit status 1.
bool report_file(const std::string& path, const Options& opt, ReportFormat format, std::ostream& out);

// Copies the stream, adding the pairing to the manifest; prints the report
// to `report` (if not null) after the stream ended.
void match_stage(stream::Reader& in, stream::Writer& out, const Options& opt, std::ostream* report);

// Reads the marker tensors (is_marker_tensor) that lead the stream, as
// st-list sends them, so a stage can match before it writes its manifest.
// Returns their bytes; `count` is the number of leading tensors consumed.
MarkerData read_markers(stream::Reader& in, size_t& count);

}  // namespace st::scales
