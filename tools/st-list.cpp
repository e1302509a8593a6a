// st-list: a .safetensors file, several shards, an index or a model folder
// -> one st-stream on stdout (or a table / JSON).
#include <unistd.h>

#include <iostream>
#include <utility>

#include "cli.hpp"
#include "error.hpp"
#include "sha256.hpp"
#include "source.hpp"

int main(int argc, char** argv) {
  return st::cli::run("st-list", [&] {
    auto o = st::cli::make_options("st-list", "Read a .safetensors file (or a model's shards, its index, or its folder) and write it as one st-stream on stdout.");
    using Globs = std::vector<std::string>;
    o.add_options()("t,table", "print a table (name, dtype, shape, bytes) instead of the stream")(
        "json", "print the header as one JSON document instead of the stream (schema in st-list(1))")(
        "include", "only tensors whose full name matches this shell pattern (repeatable)", cxxopts::value<Globs>(),
        "GLOB")("exclude", "leave out tensors whose name matches (repeatable; after --include)",
                cxxopts::value<Globs>(), "GLOB")(
        "sha256", "print the file's SHA-256 on stderr, computed while streaming")(
        "expect-sha256", "fail (and end the stream so nothing downstream accepts it) unless the file's SHA-256 is HEX",
        cxxopts::value<std::string>(), "HEX")("f,force", "write the binary stream even to a terminal")(
        "files", "input files", cxxopts::value<Globs>());
    o.parse_positional({"files"});
    o.positional_help("FILE... | INDEX.json | FOLDER");
    const auto r = st::cli::parse(o, argc, argv);
    if (st::cli::handle_help_version(o, r, "")) return 0;
    if (!r.count("files")) st::usage_error("no input file given");
    const Globs args = r["files"].as<Globs>();
    for (const auto& a : args)
      if (a == "-") st::usage_error("reading a safetensors file from stdin is not supported (it must be seekable); give its path");
    if (!r.count("table") && !r.count("json")) st::cli::set_stream_output();
    st::source::ListOptions opt;
    if (r.count("include")) opt.include = r["include"].as<Globs>();
    if (r.count("exclude")) opt.exclude = r["exclude"].as<Globs>();
    opt.sha256 = r.count("sha256") > 0;
    if (r.count("expect-sha256")) opt.expect_sha256 = st::sha256::parse_hex_digest(r["expect-sha256"].as<std::string>());
    if ((r.count("table") || r.count("json")) && (opt.sha256 || !opt.expect_sha256.empty()))
      st::usage_error("--sha256 and --expect-sha256 hash the file while streaming it; they do not go with --table or --json");
    st::model_input::ModelInput input = st::model_input::resolve(args);
    if (r.count("table") || r.count("json")) {
      st::source::print_files(std::cout, input, opt, r.count("json") ? st::source::Listing::Json : st::source::Listing::Table);
      return 0;
    }
    st::cli::refuse_binary_to_tty(r.count("force") > 0);
    st::io::FdSink out(STDOUT_FILENO, "stdout");
    st::stream::Writer writer(out);  // on failure it tells the next stage to stop quietly
    const st::source::SafetensorsSource src(std::move(input), opt);  // every header validated before any output
    const auto digests = src.write_stream(writer);
    if (opt.sha256)
      for (size_t i = 0; i < digests.size(); ++i)
        std::cerr << digests[i] << "  " << src.files()[i] << '\n';  // as sha256sum prints it
    return 0;
  });
}
