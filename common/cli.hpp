// What every tool shares: the single exit point (errors -> messages and exit
// codes), the standard options, TTY manners and warnings on stderr.
#pragma once

#include <cxxopts.hpp>
#include <functional>
#include <string>

#include "fp8.hpp"
#include "pack.hpp"
#include "scales.hpp"
#include "stream.hpp"

namespace st::cli {

enum ExitCode { kOk = 0, kDataError = 1, kUsageError = 2 };

// Runs body(); maps st::Error to "tool: message" on stderr and exit 1 (data)
// or 2 (usage, followed by "Try 'tool --help'."); checks that stdout was
// written out cleanly. Restores default SIGPIPE so a closed reader ends the
// process quietly, as for any Unix filter.
int run(const char* tool, const std::function<int()>& body);

// Options every tool has: -h/--help, -V/--version, -q/--quiet.
cxxopts::Options make_options(const std::string& tool, const std::string& synopsis);
// Parses; a cxxopts error or an operand beyond the positional options
// becomes a usage error.
cxxopts::ParseResult parse(cxxopts::Options& o, int argc, char** argv);
// Prints help or version if asked; returns true when the tool should exit 0.
bool handle_help_version(cxxopts::Options& o, const cxxopts::ParseResult& r, const std::string& extra_help);

// Adds --progress / --no-progress; progress_enabled() resolves the default
// (stderr is a terminal) and --quiet.
void add_progress_options(cxxopts::Options& o);
bool progress_enabled(const cxxopts::ParseResult& r);

// The output options of st-pack and st-convert: -f, --no-verify,
// --progress/--no-progress.
void add_output_options(cxxopts::Options& o);
// Resolves them for `output` ("-" is stdout: refused on a terminal unless
// -f); checks early that a file may be written.
// With check false (a dry run), nothing about the output path is checked.
pack::Options output_options(const cxxopts::ParseResult& r, const std::string& output, bool check = true);

// --to bf16|f16|f32 (st-dequant, st-convert).
void add_target_option(cxxopts::Options& o);
fp8::Target target_option(const cxxopts::ParseResult& r);

// A stage that reads a stream on stdin and writes one on stdout: refuses a
// terminal on either side (unless force, for stdout), then creates the
// writer before the reader, so any failure, even a bad input stream, ends
// the output with ABORT.
void run_stream_filter(bool force, const std::function<void(stream::Reader&, stream::Writer&)>& stage);

// The matching options shared by st-scales, st-dequant and st-convert:
// --block, --convention, --u8-as, --strict, --keep-scales.
void add_match_options(cxxopts::Options& o);
scales::Options match_options(const cxxopts::ParseResult& r);

// Binary output to a terminal is refused unless forced (-f).
void refuse_binary_to_tty(bool force);
// A stage that reads a stream refuses a terminal on stdin.
void refuse_tty_stdin();

// Declares that this tool writes a stream on stdout (known once its options
// are parsed): an error before the stream began still ends stdout with an
// ABORT frame, so the next stage exits quietly instead of adding an error.
void set_stream_output();

// Warnings go to stderr as "tool: warning: ..." unless --quiet.
void set_quiet(bool quiet);
void warn(const std::string& message);
const std::string& tool_name();

}  // namespace st::cli
