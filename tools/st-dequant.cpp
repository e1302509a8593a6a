// st-dequant: stream in, FP8 weights dequantised to BF16/F16/F32, stream out.
#include <unistd.h>

#include "cli.hpp"
#include "dequant.hpp"
#include "error.hpp"

int main(int argc, char** argv) {
  return st::cli::run("st-dequant", [&] {
    auto o = st::cli::make_options("st-dequant", "Dequantise the FP8 weights of an st-stream (stdin -> stdout).");
    o.add_options()("to", "output type: bf16, f16 or f32", cxxopts::value<std::string>()->default_value("bf16"), "TYPE")(
        "f,force", "write the binary stream even to a terminal");
    st::cli::add_match_options(o);
    const auto r = st::cli::parse(o, argc, argv);
    if (st::cli::handle_help_version(o, r, "")) return 0;
    if (!r.unmatched().empty()) st::usage_error("unexpected argument '" + r.unmatched()[0] + "' (st-dequant reads stdin)");
    st::dequant::Options opt;
    const auto target = st::fp8::target_from_name(r["to"].as<std::string>());
    if (!target) st::usage_error("--to must be bf16, f16 or f32, not '" + r["to"].as<std::string>() + "'");
    opt.target = *target;
    opt.match = st::cli::match_options(r);
    st::cli::refuse_tty_stdin();
    st::cli::refuse_binary_to_tty(r.count("force") > 0);
    st::io::FdSource in(STDIN_FILENO, "stdin");
    st::io::FdSink out(STDOUT_FILENO, "stdout");
    st::stream::Writer writer(out);  // created first: any failure ends our output with ABORT
    st::stream::Reader reader(in, "stdin");
    st::dequant::run(reader, writer, opt, st::cli::warn);
    return 0;
  });
}
