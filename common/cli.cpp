#include "cli.hpp"

#include <limits.h>
#include <signal.h>
#include <sys/resource.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cxxopts.hpp>
#include <iostream>
#include <stdexcept>

#include "error.hpp"
#include "io.hpp"
#include "output_file.hpp"
#include "stream_format.hpp"

namespace st::cli {

namespace {
std::string g_tool = "st-tools";
bool g_quiet = false;
bool g_stream_output = false;

// After an error: a stream stage that never started its output tells the
// next stage, with a bare preamble + ABORT (not on a terminal).
void abort_empty_stream() noexcept {
  if (!g_stream_output || stream::output_started() || io::is_tty(STDOUT_FILENO)) return;
  try {
    io::FdSink out(STDOUT_FILENO, "stdout");
    stream::Writer w(out);  // destroyed unfinished: writes the ABORT
  } catch (...) {
  }
}
}  // namespace

void set_stream_output() { g_stream_output = true; }

const std::string& tool_name() { return g_tool; }
void set_quiet(bool q) { g_quiet = q; }

void warn(const std::string& message) {
  if (g_quiet) return;
  std::cout.flush();
  std::cerr << g_tool << ": warning: " << message << '\n';
}

namespace {

// A sharded model keeps one descriptor per input shard (st-list) and per
// output shard until the set is complete (st-pack); st-convert has both.
// DeepSeek-V3 is 163 shards in, ~270 out at 5 GB: more than macOS's default
// soft limit of 256. Raise the soft limit to the hard one (capped at
// OPEN_MAX on macOS, where RLIM_INFINITY is refused).
void raise_fd_limit() {
  struct rlimit rl;
  if (::getrlimit(RLIMIT_NOFILE, &rl) != 0) return;
  rlim_t want = rl.rlim_max;
#ifdef OPEN_MAX
  if (want == RLIM_INFINITY || want > static_cast<rlim_t>(OPEN_MAX)) want = OPEN_MAX;
#endif
  if (want == RLIM_INFINITY) want = 1u << 16;
  if (rl.rlim_cur >= want) return;
  rl.rlim_cur = want;
  ::setrlimit(RLIMIT_NOFILE, &rl);  // best effort
}

}  // namespace

int run(const char* tool, const std::function<int()>& body) {
  g_tool = tool;
  ::signal(SIGPIPE, SIG_DFL);
  // A file size limit (ulimit -f) makes write() fail with EFBIG instead of
  // killing us, so the error is reported and the temporary file removed.
  ::signal(SIGXFSZ, SIG_IGN);
  raise_fd_limit();
  int code;
  try {
    code = body();
    std::cout.flush();
    if (!std::cout) throw Error("error writing standard output");
  } catch (const BrokenPipe&) {
    // The reader went away while SIGPIPE was ignored (st-convert's threads):
    // end the way any filter does, by SIGPIPE, without a message.
    ::signal(SIGPIPE, SIG_DFL);
    ::raise(SIGPIPE);
    return kDataError;
  } catch (const UpstreamFailed&) {
    return kDataError;  // the stage that failed has said why
  } catch (const Error& e) {
    abort_empty_stream();
    std::cout.flush();
    std::cerr << g_tool << ": " << e.what() << '\n';
    if (e.kind() == ErrorKind::Usage) {
      std::cerr << "Try '" << g_tool << " --help' for more information.\n";
      return kUsageError;
    }
    return kDataError;
  } catch (const std::bad_alloc&) {
    std::cerr << g_tool << ": out of memory\n";
    return kDataError;
  } catch (const std::exception& e) {
    std::cerr << g_tool << ": " << e.what() << '\n';
    return kDataError;
  }
  if (std::fflush(stdout) != 0 || (::close(STDOUT_FILENO) != 0 && errno != EBADF)) {
    std::cerr << g_tool << ": closing standard output failed: " << io::errno_text(errno) << '\n';
    return kDataError;
  }
  return code;
}

size_t Args::count(const std::string& name) const {
  const auto it = counts_.find(name);
  // Every declared option has a count, 0 included: a name without one is a
  // typo in the code, which must not read as "not given".
  if (it == counts_.end()) throw std::logic_error("option --" + name + " was never declared");
  return it->second;
}

const std::string& Args::str(const std::string& name) const {
  const auto it = values_.find(name);
  if (it == values_.end() || it->second.size() != 1) throw std::logic_error("option --" + name + " has no value");
  return it->second.front();
}

std::vector<std::string> Args::strs(const std::string& name) const {
  const auto it = values_.find(name);
  return it == values_.end() ? std::vector<std::string>{} : it->second;
}

struct Options::Impl {
  enum class Kind { Flag, Value, Values };
  cxxopts::Options cx;
  std::vector<std::pair<std::string, Kind>> declared;  // long names
  Impl(const std::string& tool, const std::string& synopsis) : cx(tool, synopsis) {}

  void add(const std::string& group, const std::string& names, const std::string& help, Kind kind,
           const std::string& arg, const std::string& default_value) {
    auto adder = cx.add_options(group);
    if (kind == Kind::Flag) {
      adder(names, help);
    } else if (kind == Kind::Values) {
      adder(names, help, cxxopts::value<std::vector<std::string>>(), arg);
    } else {
      auto v = cxxopts::value<std::string>();
      if (!default_value.empty()) v->default_value(default_value);
      adder(names, help, v, arg);
    }
    const auto comma = names.find(',');
    declared.emplace_back(comma == std::string::npos ? names : names.substr(comma + 1), kind);
  }
};

Options::Options(const std::string& tool, const std::string& synopsis)
    : impl_(std::make_unique<Impl>(tool, synopsis)) {
  flag("h,help", "print this help and exit");
  flag("V,version", "print the version and exit");
  flag("q,quiet", "print no warnings (and no progress)");
  impl_->cx.set_width(100);
}

Options::~Options() = default;

Options& Options::group(const std::string& name) {
  group_ = name;
  return *this;
}

Options& Options::flag(const std::string& names, const std::string& help) {
  impl_->add(group_, names, help, Impl::Kind::Flag, "", "");
  return *this;
}

Options& Options::value(const std::string& names, const std::string& help, const std::string& arg,
                        const std::string& default_value) {
  impl_->add(group_, names, help, Impl::Kind::Value, arg, default_value);
  return *this;
}

Options& Options::values(const std::string& names, const std::string& help, const std::string& arg) {
  impl_->add(group_, names, help, Impl::Kind::Values, arg, "");
  return *this;
}

void Options::operands(const std::vector<std::string>& names, const std::string& synopsis) {
  impl_->cx.parse_positional(names);
  impl_->cx.positional_help(synopsis);
}

std::string Options::help() const { return impl_->cx.help(); }

Args Options::parse(int argc, char** argv) {
  Args args;
  try {
    const auto r = impl_->cx.parse(argc, argv);
    set_quiet(r.count("quiet") > 0);
    // More operands than the synopsis has: never ignore one (st-convert A B C
    // would otherwise write A's conversion over B).
    if (!r.unmatched().empty()) usage_error("unexpected argument '" + r.unmatched()[0] + "'");
    for (const auto& [name, kind] : impl_->declared) {
      const size_t n = r.count(name);
      args.counts_[name] = n;
      if (kind == Impl::Kind::Values && n) args.values_[name] = r[name].as<std::vector<std::string>>();
      if (kind == Impl::Kind::Value && (n || r[name].has_default())) args.values_[name] = {r[name].as<std::string>()};
    }
  } catch (const cxxopts::exceptions::exception& e) {
    usage_error(e.what());
  }
  return args;
}

bool handle_help_version(const Options& o, const Args& r, const std::string& extra) {
  if (r.count("help")) {
    std::cout << o.help() << extra
              << "\nExit status: 0 success, 1 bad input or failure, 2 usage error.\n"
              << "See the manual page " << g_tool << "(1).\n";
    return true;
  }
  if (r.count("version")) {
    std::cout << g_tool << " (st-tools) " << ST_VERSION << "\n"
              << "stream format " << stream::kVersionMajor << "." << stream::kVersionMinor << "\n"
              << "fp8 kernel " << fp8::kernel_name(fp8::active_kernel()) << " (of";
    for (fp8::Kernel k : fp8::available_kernels()) std::cout << ' ' << fp8::kernel_name(k);
    std::cout << ")\n";
    return true;
  }
  return false;
}

void add_progress_options(Options& o) {
  o.flag("progress", "show progress on stderr even when it is not a terminal");
  o.flag("no-progress", "never show progress");
}

void add_output_options(Options& o) {
  o.flag("f,force", "replace an existing output file; allow - (stdout) on a terminal");
  o.flag("no-verify", "do not read the file back to check it against the stream's checksums");
  o.value("strip-prefix", "remove P from the start of tensor names (e.g. model.diffusion_model.)", "P");
  o.value("add-prefix", "put P before every tensor name (after --strip-prefix)", "P");
  o.value("shard-size", "write shards of at most SIZE bytes of tensors (5GB, 500MB, 2GiB) and an index into a folder", "SIZE");
  o.flag("keep-sharding", "write one shard per input shard, as the input was split");
  o.flag("no-copy", "with a model folder as input, do not copy config.json and its other files");
  add_progress_options(o);
}

pack::Options output_options(const Args& r, const std::string& output, bool check) {
  pack::Options opt;
  opt.output = output;
  opt.overwrite = r.count("force") > 0;
  opt.verify = r.count("no-verify") == 0;
  opt.progress = progress_enabled(r);
  if (r.count("strip-prefix")) opt.strip_prefix = r.str("strip-prefix");
  if (r.count("add-prefix")) opt.add_prefix = r.str("add-prefix");
  if (r.count("shard-size")) opt.shard_size = pack::parse_size(r.str("shard-size"));
  opt.keep_sharding = r.count("keep-sharding") > 0;
  opt.copy_files = r.count("no-copy") == 0;
  if (opt.keep_sharding && opt.shard_size) usage_error("--shard-size and --keep-sharding do not go together");
  if (output == "-" && (opt.shard_size || opt.keep_sharding))
    usage_error("shards cannot go to stdout; give an output folder");
  if (!check) return opt;
  if (output == "-") {
    refuse_binary_to_tty(opt.overwrite);
  } else if (!pack::sharded(opt)) {
    io::check_output_path(output, opt.overwrite);  // before reading any input
  }
  return opt;
}

void add_target_option(Options& o) { o.value("to", "output type: bf16, f16 or f32", "TYPE", "bf16"); }

fp8::Target target_option(const Args& r) {
  const std::string name = r.str("to");
  const auto target = fp8::target_from_name(name);
  if (!target) usage_error("--to must be bf16, f16 or f32, not '" + name + "'");
  return *target;
}

void run_stream_filter(bool force, const std::function<void(stream::Reader&, stream::Writer&)>& stage) {
  refuse_tty_stdin();
  refuse_binary_to_tty(force);
  io::FdSource in(STDIN_FILENO, "stdin");
  io::FdSink out(STDOUT_FILENO, "stdout");
  stream::Writer writer(out);
  stream::Reader reader(in, "stdin");
  stage(reader, writer);
}

void add_match_options(Options& o) {
  std::string names;
  for (const auto& n : scales::convention_names()) names += (names.empty() ? "" : ", ") + n;
  o.group("matching");
  o.value("block", "block size of 2-D scale grids, or 1xG for groups along a row (default: config.json, else 128x128 if it fits the grid, else derived from it)", "RxC");
  o.value("convention", "use only this naming convention: " + names, "NAME");
  o.value("u8-as", "U8/I8 tensors that have a scale hold FP8 bytes of this type: e4m3fn, e5m2, e4m3fnuz, e5m2fnuz", "TYPE");
  o.flag("strict", "an FP8 weight without a scale, or (st-dequant) a value overflowing to infinity, is an error");
  o.flag("keep-scales", "keep the activation and KV scales (input_scale, k_scale, ...) of converted layers");
  o.group("");
}

scales::Options match_options(const Args& r) {
  scales::Options opt;
  if (r.count("block")) opt.block = scales::parse_block(r.str("block"));
  if (r.count("convention")) {
    opt.convention = r.str("convention");
    scales::check_convention(opt.convention);
  }
  if (r.count("u8-as")) opt.u8_as = scales::parse_fp8_format(r.str("u8-as"));
  opt.strict = r.count("strict") > 0;
  opt.keep_scales = r.count("keep-scales") > 0;
  return opt;
}

bool progress_enabled(const Args& r) {
  if (r.count("no-progress") || r.count("quiet")) return false;
  if (r.count("progress")) return true;
  return io::is_tty(STDERR_FILENO);
}

void refuse_binary_to_tty(bool force) {
  if (!force && io::is_tty(STDOUT_FILENO))
    usage_error("refusing to write a binary stream to a terminal; pipe it to another stage (or use -f)");
}

void refuse_tty_stdin() {
  if (io::is_tty(STDIN_FILENO))
    usage_error("standard input is a terminal; pipe a stream in, e.g. st-list FILE | " + g_tool);
}

}  // namespace st::cli
