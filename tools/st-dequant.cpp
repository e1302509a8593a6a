// st-dequant: stream in, FP8 weights dequantised to BF16/F16/F32, stream out.

#include "cli.hpp"
#include "dequant.hpp"
#include "error.hpp"

int main(int argc, char** argv) {
  return st::cli::run("st-dequant", [&] {
    st::cli::Options o("st-dequant", "Dequantise the FP8 weights of an st-stream (stdin -> stdout).");
    st::cli::add_target_option(o);
    o.flag("f,force", "write the binary stream even to a terminal");
    st::cli::add_match_options(o);
    const auto r = o.parse(argc, argv);
    if (st::cli::handle_help_version(o, r, "")) return 0;
    st::cli::set_stream_output();
    st::dequant::Options opt;
    opt.target = st::cli::target_option(r);
    opt.match = st::cli::match_options(r);
    st::cli::run_stream_filter(r.count("force") > 0, [&](st::stream::Reader& in, st::stream::Writer& out) {
      st::dequant::run(in, out, opt, st::cli::warn);
    });
    return 0;
  });
}
