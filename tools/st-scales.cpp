// st-scales: report which FP8 weights have which scales (FILE), or pair them
// inside a pipeline (stream on stdin -> stream with the pairing on stdout).

#include <iostream>

#include "cli.hpp"
#include "error.hpp"
#include "scales_stage.hpp"

int main(int argc, char** argv) {
  return st::cli::run("st-scales", [&] {
    st::cli::Options o("st-scales", "Report FP8 weights and their scales, or pair them in a pipeline.");
    o.flag("json", "print the report as one JSON document (schema in st-scales(1))");
    o.flag("report", "in a pipeline, also print the report on stderr");
    o.flag("f,force", "write the binary stream even to a terminal");
    o.value("file", "input file", "");
    st::cli::add_match_options(o);
    o.operands({"file"}, "[FILE | INDEX.json | FOLDER | -]");
    const auto r = o.parse(argc, argv);
    if (st::cli::handle_help_version(o, r, "")) return 0;
    const st::scales::Options opt = st::cli::match_options(r);
    const std::string file = r.count("file") ? r.str("file") : "-";
    const auto format = r.count("json") ? st::scales::ReportFormat::Json : st::scales::ReportFormat::Text;
    if (file != "-") return st::scales::report_file(file, opt, format, std::cout) ? 1 : 0;
    st::cli::set_stream_output();
    st::cli::run_stream_filter(r.count("force") > 0, [&](st::stream::Reader& in, st::stream::Writer& out) {
      st::scales::match_stage(in, out, opt, r.count("report") ? &std::cerr : nullptr);
    });
    return 0;
  });
}
