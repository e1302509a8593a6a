#include "pipeline.hpp"

#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <exception>
#include <ostream>
#include <thread>
#include <unordered_set>

#include "error.hpp"
#include "output_file.hpp"
#include "paths.hpp"
#include "source.hpp"

namespace st::pipeline {

std::string default_output(const std::string& input, fp8::Target t) {
  std::string suffix = "-";  // (not "-" + std::string: GCC 12 warns falsely of -Wrestrict)
  suffix += fp8::target_suffix(t);
  // A model folder (or its index) becomes a folder beside it.
  std::string folder;
  if (paths::is_dir(input)) folder = input;
  else if (paths::ends_with(input, ".json")) folder = paths::dir_name(input);
  if (!folder.empty()) {
    // Its name, lexically: "m/", "m/." and "m/./" are m; "..", "m/.." and
    // "/" have none to derive one from.
    for (;;) {
      while (folder.size() > 1 && folder.back() == '/') folder.pop_back();
      if (folder.size() > 2 && folder.compare(folder.size() - 2, 2, "/.") == 0) folder.resize(folder.size() - 2);
      else break;
    }
    const std::string last = paths::base_name(folder);
    if (folder == "/" || last == "." || last == "..")
      usage_error("give the output folder (there is no name beside " + input + " to derive it from)");
    return folder + suffix + "/";
  }
  const std::string ext = ".safetensors";
  std::string stem = input;
  if (stem.size() > ext.size() && stem.compare(stem.size() - ext.size(), ext.size(), ext) == 0)
    stem.resize(stem.size() - ext.size());
  return stem + suffix + ext;
}

namespace {

struct Pipe {
  int r = -1, w = -1;
  Pipe() {
    int fds[2];
    if (::pipe(fds) != 0) fail("cannot create a pipe");
    r = fds[0];
    w = fds[1];
    io::grow_pipe(w);
  }
};

// Runs f, closing the given fds afterwards (so the neighbours see EOF or
// EPIPE), and keeps its exception.
template <typename F>
std::thread stage(std::exception_ptr& err, int fd_a, int fd_b, F f) {
  return std::thread([&err, fd_a, fd_b, f]() {
    try {
      f();
    } catch (...) {
      err = std::current_exception();
    }
    if (fd_a >= 0) ::close(fd_a);
    if (fd_b >= 0) ::close(fd_b);
  });
}

}  // namespace

void convert(const std::string& input, const dequant::Options& dq, const pack::Options& pk, const dequant::Warn& warn) {
  // Before reading gigabytes (st-pack checks every file of a sharded output
  // when the manifest arrives, before any data).
  if (pk.output != "-" && !pack::sharded(pk)) io::check_output_path(pk.output, pk.overwrite);
  const source::SafetensorsSource src(input);       // a bad header fails here, with nothing started
  // The input as the output, too, before a stage starts (and warns).
  if (pk.output != "-" && !pack::sharded(pk)) pack::refuse_source_as_output(src.manifest(), pk.output);
  ::signal(SIGPIPE, SIG_IGN);  // a stage that dies must not kill the process: its error is reported
  // SIGINT, SIGTERM and SIGHUP go to the pack thread only: its temporary
  // files are removed by the handler in the thread that owns them, and while
  // it moves a set of shards into place (signals held) no other thread can
  // take the signal and end the process halfway. Main, list and dequant
  // threads block them (the threads inherit the mask).
  const io::SignalsHeld held_here;
  Pipe a, b;
  std::exception_ptr e_list, e_dequant, e_pack;
  std::thread t1 = stage(e_list, a.w, -1, [&] {
    io::FdSink sink(a.w, "pipe");
    stream::Writer writer(sink);
    src.write_stream(writer);
  });
  std::thread t2 = stage(e_dequant, a.r, b.w, [&] {
    io::FdSource in(a.r, "st-list output");
    io::FdSink sink(b.w, "pipe");
    stream::Reader reader(in, "st-list output");
    stream::Writer writer(sink);
    dequant::run(reader, writer, dq, warn);
  });
  std::thread t3 = stage(e_pack, b.r, -1, [&] {
    io::SignalsHeld::release_in_this_thread();
    io::FdSource in(b.r, "st-dequant output");
    stream::Reader reader(in, "st-dequant output");
    pack::run(reader, pk);
  });
  t1.join();
  t2.join();
  t3.join();
  // Report the first stage that failed for a reason of its own; the later
  // ones only saw an ABORT, the earlier ones a closed pipe.
  bool broken_pipe = false;
  for (auto* e : {&e_list, &e_dequant, &e_pack}) {
    if (!*e) continue;
    try {
      std::rethrow_exception(*e);
    } catch (const BrokenPipe&) {
      broken_pipe = true;
    } catch (const UpstreamFailed&) {
    }
  }
  // Only a reader of our stdout going away leaves nothing but closed pipes.
  if (broken_pipe) throw BrokenPipe();
}

void dry_run(const std::string& input, const dequant::Options& dq, const pack::Options& pk, std::ostream& out) {
  const source::SafetensorsSource src(input);
  const stream::Manifest& m = src.manifest();
  const stream::Matching mt = scales::match(m, src.read_markers(), dq.match);
  dequant::check_problems(mt, dq);
  const stream::Manifest om = dequant::output_manifest(m, mt, dq.target);
  const pack::OutputSize size = pack::check_output(om, pk);  // a rename collision fails here, before any output
  if (pk.output != "-" && !pack::sharded(pk)) pack::refuse_source_as_output(m, pk.output);
  const std::string target(fp8::target_suffix(dq.target));
  out << "Dry run: nothing is written.\n";
  out << "input:  " << input << " (" << m.tensors.size() << " tensors, " << src.input_bytes() << " bytes";
  if (src.files().size() > 1) out << " in " << src.files().size() << " files";
  out << ")\n";
  out << "output: " << pk.output << " (" << om.tensors.size() << " tensors, " << size.bytes << " bytes";
  if (size.files > 1) out << " in " << size.files << " files";
  out << ")\n";
  out << "\nconverted to " << target << ": " << mt.pairs.size() << '\n';
  for (const auto& p : mt.pairs) {
    const auto w = m.tensors[p.weight];
    out << "  " << w.name << " " << dtype_name(w.dtype) << " " << shape_text(w.shape);
    if (p.output != stream::ScalePairing::kNone) out << " -> " << mt.output_name(p, m.tensors);
    if (p.has_scale()) out << ", scale " << m.tensors.name(static_cast<size_t>(p.scale)) << " (" << scales::layout_text(p, m.tensors) << ")\n";
    else out << ", no scale (cast)\n";
  }
  std::vector<std::string> passed;
  std::vector<bool> converted(m.tensors.size(), false);
  for (const auto& p : mt.pairs) converted[p.weight] = true;
  const scales::OutputNames names(m, mt);
  for (size_t k = 0; k < names.size(); ++k) {
    const std::string in(m.tensors.name(names.input(k)));
    const std::string_view name = names.name(k);
    if (!converted[names.input(k)]) passed.push_back(name == in ? in : in + " -> " + std::string(name));
  }
  out << "\npassed through unchanged: " << passed.size() << '\n';
  for (const auto& n : passed) out << "  " << n << '\n';
  out << "\ndropped: " << mt.drop.size() << '\n';
  for (uint32_t d : mt.drop) out << "  " << m.tensors.name(d) << '\n';
  if (!mt.metadata_edits.empty()) {
    out << "\nmetadata:\n";
    for (const auto& e : mt.metadata_edits) out << "  " << e.key << (e.value ? " rewritten" : " removed") << '\n';
  }
  size_t notes = 0;
  for (const auto& p : mt.problems) notes += !scales::is_fatal(p, dq.match.strict);
  if (notes) {
    out << "\nnotes: " << notes << '\n';
    for (const auto& p : mt.problems)
      if (!scales::is_fatal(p, dq.match.strict)) out << "  " << p.kind << ": " << p.tensor << ": " << p.detail << '\n';
  }
}

}  // namespace st::pipeline
