// st-pack: stream on stdin -> a verified .safetensors file, moved into place
// only when complete.
#include <unistd.h>

#include "cli.hpp"
#include "error.hpp"
#include "pack.hpp"

int main(int argc, char** argv) {
  return st::cli::run("st-pack", [&] {
    st::cli::Options o("st-pack", "Write an st-stream (stdin) as a .safetensors file, or as shards and an index in a folder.");
    st::cli::add_output_options(o);
    o.value("out", "output file, - for stdout, or a folder (OUTDIR/) for shards", "");
    o.operands({"out"}, "OUT | OUTDIR/");
    const auto r = o.parse(argc, argv);
    if (st::cli::handle_help_version(o, r, "")) return 0;
    if (!r.count("out")) st::usage_error("no output file given (use - for stdout)");
    const st::pack::Options opt = st::cli::output_options(r, r.str("out"));
    st::cli::refuse_tty_stdin();
    st::io::FdSource in(STDIN_FILENO, "stdin");
    st::stream::Reader reader(in, "stdin");
    st::pack::run(reader, opt);
    return 0;
  });
}
