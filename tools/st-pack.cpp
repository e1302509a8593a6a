// st-pack: stream on stdin -> a verified .safetensors file, moved into place
// only when complete.
#include <unistd.h>

#include "cli.hpp"
#include "error.hpp"
#include "pack.hpp"

int main(int argc, char** argv) {
  return st::cli::run("st-pack", [&] {
    auto o = st::cli::make_options("st-pack", "Write an st-stream (stdin) as a .safetensors file, or as shards and an index in a folder.");
    st::cli::add_output_options(o);
    o.add_options()("out", "output file, - for stdout, or a folder (OUTDIR/) for shards", cxxopts::value<std::string>());
    o.parse_positional({"out"});
    o.positional_help("OUT | OUTDIR/");
    const auto r = st::cli::parse(o, argc, argv);
    if (st::cli::handle_help_version(o, r, "")) return 0;
    if (!r.count("out")) st::usage_error("no output file given (use - for stdout)");
    const st::pack::Options opt = st::cli::output_options(r, r["out"].as<std::string>());
    st::cli::refuse_tty_stdin();
    st::io::FdSource in(STDIN_FILENO, "stdin");
    st::stream::Reader reader(in, "stdin");
    st::pack::run(reader, opt);
    return 0;
  });
}
