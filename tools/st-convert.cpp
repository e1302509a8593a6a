// st-convert: IN.safetensors -> IN-bf16.safetensors in one command
// (st-list IN | st-dequant | st-pack OUT, in one process).
#include "cli.hpp"
#include "error.hpp"
#include "pipeline.hpp"

int main(int argc, char** argv) {
  return st::cli::run("st-convert", [&] {
    auto o = st::cli::make_options("st-convert", "Convert an FP8 .safetensors file to BF16 (or F16/F32).");
    o.add_options()("to", "output type: bf16, f16 or f32", cxxopts::value<std::string>()->default_value("bf16"), "TYPE")(
        "f,force", "replace an existing OUT (and allow OUT - on a terminal)")("no-verify", "do not read the output back to verify it")(
        "in", "input file", cxxopts::value<std::string>())("out", "output file", cxxopts::value<std::string>());
    st::cli::add_progress_options(o);
    st::cli::add_match_options(o);
    o.parse_positional({"in", "out"});
    o.positional_help("IN [OUT]");
    const auto r = st::cli::parse(o, argc, argv);
    if (st::cli::handle_help_version(o, r, "")) return 0;
    if (!r.count("in")) st::usage_error("no input file given");
    st::dequant::Options dq;
    const auto target = st::fp8::target_from_name(r["to"].as<std::string>());
    if (!target) st::usage_error("--to must be bf16, f16 or f32, not '" + r["to"].as<std::string>() + "'");
    dq.target = *target;
    dq.match = st::cli::match_options(r);
    const std::string in = r["in"].as<std::string>();
    st::pack::Options pk;
    pk.output = r.count("out") ? r["out"].as<std::string>() : st::pipeline::default_output(in, dq.target);
    pk.overwrite = r.count("force") > 0;
    pk.verify = r.count("no-verify") == 0;
    pk.progress = st::cli::progress_enabled(r);
    if (pk.output == "-") st::cli::refuse_binary_to_tty(pk.overwrite);
    st::pipeline::convert(in, dq, pk, st::cli::warn);
    return 0;
  });
}
