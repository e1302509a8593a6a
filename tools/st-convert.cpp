// st-convert: IN.safetensors -> IN-bf16.safetensors in one command
// (st-list IN | st-dequant | st-pack OUT, in one process).
#include <iostream>

#include "cli.hpp"
#include "error.hpp"
#include "pipeline.hpp"

int main(int argc, char** argv) {
  return st::cli::run("st-convert", [&] {
    st::cli::Options o("st-convert", "Convert an FP8 .safetensors file, or a sharded model folder, to BF16 (or F16/F32).");
    st::cli::add_target_option(o);
    st::cli::add_output_options(o);
    o.flag("n,dry-run", "print what would be converted, passed through and dropped, and the output size; write nothing");
    o.value("in", "input file, index or model folder", "");
    o.value("out", "output file, - for stdout, or a folder", "");
    st::cli::add_match_options(o);
    o.operands({"in", "out"}, "IN [OUT]");
    const auto r = o.parse(argc, argv);
    if (st::cli::handle_help_version(o, r, "")) return 0;
    if (!r.count("in")) st::usage_error("no input file given");
    st::dequant::Options dq;
    dq.target = st::cli::target_option(r);
    dq.match = st::cli::match_options(r);
    const std::string in = r.str("in");
    const std::string out = r.count("out") ? r.str("out") : st::pipeline::default_output(in, dq.target);
    if (r.count("dry-run")) {
      // The same output options, but the dry run does its own checks (and
      // prints text, so "-" on a terminal is fine).
      st::pipeline::dry_run(in, dq, st::cli::output_options(r, out, false), std::cout);
      return 0;
    }
    st::pipeline::convert(in, dq, st::cli::output_options(r, out), st::cli::warn);
    return 0;
  });
}
