// What every tool shares: the single exit point (errors -> messages and exit
// codes), the standard options, TTY manners and warnings on stderr.
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

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

// A parsed command line: each option's count and its values, by long name.
class Args {
 public:
  // Throws std::logic_error for a name no option was declared with.
  size_t count(const std::string& name) const;
  // The value of an option that takes one (its default when not given);
  // throws std::logic_error for an option without one.
  const std::string& str(const std::string& name) const;
  // Every value of a repeatable option or operand list (empty when none).
  std::vector<std::string> strs(const std::string& name) const;

 private:
  friend class Options;
  std::map<std::string, size_t> counts_;
  std::map<std::string, std::vector<std::string>> values_;
};

// The options of a tool. cxxopts stays behind this (only cli.cpp includes
// it): its header costs some 12 s of compile time in every file that does.
// `names` is "l,long" or "long"; Args are looked up by the long name.
class Options {
 public:
  // With the options every tool has: -h/--help, -V/--version, -q/--quiet.
  Options(const std::string& tool, const std::string& synopsis);
  ~Options();
  Options(const Options&) = delete;
  Options& operator=(const Options&) = delete;

  // Options added after this are listed under `name` in --help.
  Options& group(const std::string& name);
  Options& flag(const std::string& names, const std::string& help);
  Options& value(const std::string& names, const std::string& help, const std::string& arg,
                 const std::string& default_value = "");
  Options& values(const std::string& names, const std::string& help, const std::string& arg);  // repeatable
  // Operands in order (each declared first with value() or values()), and
  // how --help shows them.
  void operands(const std::vector<std::string>& names, const std::string& synopsis);

  // A cxxopts error, or an operand beyond the declared ones, is a usage error.
  Args parse(int argc, char** argv);
  std::string help() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  std::string group_;
};

// Prints help or version if asked; returns true when the tool should exit 0.
bool handle_help_version(const Options& o, const Args& r, const std::string& extra_help);

// Adds --progress / --no-progress; progress_enabled() resolves the default
// (stderr is a terminal) and --quiet.
void add_progress_options(Options& o);
bool progress_enabled(const Args& r);

// The output options of st-pack and st-convert: -f, --no-verify,
// --progress/--no-progress.
void add_output_options(Options& o);
// Resolves them for `output` ("-" is stdout: refused on a terminal unless
// -f); checks early that a file may be written.
// With check false (a dry run), nothing about the output path is checked.
pack::Options output_options(const Args& r, const std::string& output, bool check = true);

// --to bf16|f16|f32 (st-dequant, st-convert).
void add_target_option(Options& o);
fp8::Target target_option(const Args& r);

// A stage that reads a stream on stdin and writes one on stdout: refuses a
// terminal on either side (unless force, for stdout), then creates the
// writer before the reader, so any failure, even a bad input stream, ends
// the output with ABORT.
void run_stream_filter(bool force, const std::function<void(stream::Reader&, stream::Writer&)>& stage);

// The matching options shared by st-scales, st-dequant and st-convert:
// --block, --convention, --u8-as, --strict, --keep-scales.
void add_match_options(Options& o);
scales::Options match_options(const Args& r);

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
