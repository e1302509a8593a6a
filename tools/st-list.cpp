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
    st::cli::Options o("st-list", "Read a .safetensors file (or a model's shards, its index, or its folder) and write it as one st-stream on stdout.");
    o.flag("t,table", "print a table (name, dtype, shape, bytes) instead of the stream");
    o.flag("json", "print the header as one JSON document instead of the stream (schema in st-list(1))");
    o.values("include", "only tensors whose full name matches this shell pattern (repeatable)", "GLOB");
    o.values("exclude", "leave out tensors whose name matches (repeatable; after --include)", "GLOB");
    o.flag("sha256", "print the file's SHA-256 on stderr, computed while streaming");
    o.value("expect-sha256", "fail (and end the stream so nothing downstream accepts it) unless the file's SHA-256 is HEX", "HEX");
    o.flag("f,force", "write the binary stream even to a terminal");
    o.values("files", "input files", "");
    o.operands({"files"}, "FILE... | INDEX.json | FOLDER");
    const auto r = o.parse(argc, argv);
    if (st::cli::handle_help_version(o, r, "")) return 0;
    if (!r.count("files")) st::usage_error("no input file given");
    const std::vector<std::string> args = r.strs("files");
    if (!r.count("table") && !r.count("json")) st::cli::set_stream_output();
    st::source::ListOptions opt;
    opt.include = r.strs("include");
    opt.exclude = r.strs("exclude");
    opt.sha256 = r.count("sha256") > 0;
    if (r.count("expect-sha256")) opt.expect_sha256 = st::sha256::parse_hex_digest(r.str("expect-sha256"));
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
