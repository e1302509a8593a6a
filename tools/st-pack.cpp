// st-pack: stream on stdin -> a verified .safetensors file, moved into place
// only when complete.
#include <unistd.h>

#include "cli.hpp"
#include "error.hpp"
#include "output_file.hpp"
#include "pack.hpp"

int main(int argc, char** argv) {
  return st::cli::run("st-pack", [&] {
    auto o = st::cli::make_options("st-pack", "Write an st-stream (stdin) as a .safetensors file.");
    o.add_options()("f,force", "replace an existing OUT; allow writing to a terminal with -")(
        "no-verify", "do not read the file back to check it against the stream's checksums")(
        "out", "output file, or - for stdout", cxxopts::value<std::string>());
    st::cli::add_progress_options(o);
    o.parse_positional({"out"});
    o.positional_help("OUT");
    const auto r = st::cli::parse(o, argc, argv);
    if (st::cli::handle_help_version(o, r, "")) return 0;
    if (!r.count("out")) st::usage_error("no output file given (use - for stdout)");
    st::pack::Options opt;
    opt.output = r["out"].as<std::string>();
    opt.overwrite = r.count("force") > 0;
    opt.verify = r.count("no-verify") == 0;
    opt.progress = st::cli::progress_enabled(r);
    if (opt.output == "-") st::cli::refuse_binary_to_tty(opt.overwrite);
    else st::io::check_output_path(opt.output, opt.overwrite);  // fail before reading the stream
    st::cli::refuse_tty_stdin();
    st::io::FdSource in(STDIN_FILENO, "stdin");
    st::stream::Reader reader(in, "stdin");
    st::pack::run(reader, opt);
    return 0;
  });
}
