// st-list: a .safetensors file -> st-stream on stdout (or a table with --table).
#include <unistd.h>

#include <iostream>

#include "cli.hpp"
#include "error.hpp"
#include "source.hpp"

int main(int argc, char** argv) {
  return st::cli::run("st-list", [&] {
    auto o = st::cli::make_options("st-list", "Read a .safetensors file and write it as an st-stream on stdout.");
    o.add_options()("t,table", "print a table (name, dtype, shape, bytes) instead of the stream")(
        "f,force", "write the binary stream even to a terminal")("file", "input file", cxxopts::value<std::string>());
    o.parse_positional({"file"});
    o.positional_help("FILE");
    const auto r = st::cli::parse(o, argc, argv);
    if (st::cli::handle_help_version(o, r, "")) return 0;
    if (!r.count("file")) st::usage_error("no input file given");
    const std::string path = r["file"].as<std::string>();
    if (path == "-") st::usage_error("reading a safetensors file from stdin is not supported (it must be seekable); give its path");
    if (r.count("table")) {
      st::source::print_file_table(std::cout, path);
      return 0;
    }
    st::cli::refuse_binary_to_tty(r.count("force") > 0);
    st::io::FdSink out(STDOUT_FILENO, "stdout");
    st::stream::Writer writer(out);  // on failure it tells the next stage to stop quietly
    const st::source::SafetensorsSource src(path);  // whole header validated before any output
    src.write_stream(writer);
    return 0;
  });
}
