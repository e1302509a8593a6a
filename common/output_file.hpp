// An output file that appears at its final path only when complete: data
// goes to a temporary file beside the target (".NAME.st-pack-XXXXXX"),
// which commit() renames into place; on error, destruction, SIGINT, SIGTERM
// or SIGHUP the temporary file is removed and the target is untouched.
#pragma once

#include <signal.h>

#include <cstdint>
#include <string>
#include <vector>

namespace st::io {

class AtomicOutput {
 public:
  // Fails early if `target` exists and !overwrite, or is a directory, or its
  // directory is not writable.
  AtomicOutput(const std::string& target, bool overwrite);
  ~AtomicOutput();
  AtomicOutput(const AtomicOutput&) = delete;
  AtomicOutput& operator=(const AtomicOutput&) = delete;

  int fd() const { return fd_; }
  const std::string& target() const { return target_; }
  const std::string& temp_path() const { return temp_; }

  // Reserves `bytes` on disk so a full disk fails now, not halfway.
  void reserve(uint64_t bytes);
  void pwrite_all(uint64_t offset, const void* p, size_t n);
  void pread_all(uint64_t offset, void* p, size_t n) const;
  // Starts writing dirty pages to disk in the background (Linux), so the
  // fsync in commit() has little left to do; a no-op elsewhere.
  void start_writeback();
  // Calls f(pointer) with the n bytes at `offset` of the file. Up to 1 MiB
  // (a piece just written, still in the CPU's cache) they are read into
  // `buf`: cheaper than mapping and unmapping them (measured). Larger
  // windows are mapped read-only for the call (no copy, and no more memory
  // than the window stays resident), or read where mapping fails.
  template <typename F>
  void with_bytes(uint64_t offset, size_t n, std::vector<uint8_t>& buf, F f) const {
    constexpr size_t kCopyAtMost = 1u << 20;
    if (const uint8_t* p = n > kCopyAtMost ? map_window(offset, n) : nullptr) {
      struct Unmap {  // also when f throws (a failed check)
        const AtomicOutput& out;
        const uint8_t* p;
        uint64_t offset;
        size_t n;
        ~Unmap() { out.unmap_window(p, offset, n); }
      } unmap{*this, p, offset, n};
      f(p);
    } else {
      buf.resize(n);
      pread_all(offset, buf.data(), n);
      f(buf.data());
    }
  }
  // fsync (commit() does it too; calling it first for every file of a set
  // keeps the slow part out of the moment the set is moved into place).
  void sync();
  // fsync, then move into place (refusing to replace a file that appeared
  // meanwhile unless overwrite), then fsync the directory.
  void commit();
  // Removes the committed target again (a set of files that failed to
  // commit as a whole); only for a target that did not exist before.
  void uncommit() noexcept;

 private:
  void cleanup() noexcept;
  const uint8_t* map_window(uint64_t offset, size_t n) const;
  void unmap_window(const uint8_t* p, uint64_t offset, size_t n) const;

  std::string target_;
  std::string temp_;
  bool overwrite_;
  int fd_ = -1;
  bool committed_ = false;
  bool uncommitted_ = false;
  bool synced_ = false;
  long slot_ = -1;  // in the signal handler's table of temporary files
};

// SIGINT, SIGTERM and SIGHUP held back (in this thread) for its lifetime:
// a set of files is moved into place whole, and a signal that arrived
// meanwhile takes effect after.
class SignalsHeld {
 public:
  SignalsHeld();
  ~SignalsHeld();
  // Unblocks them in the calling thread (a thread that inherited a block
  // and is the one that should take them).
  static void release_in_this_thread();
  SignalsHeld(const SignalsHeld&) = delete;
  SignalsHeld& operator=(const SignalsHeld&) = delete;

 private:
  sigset_t old_;
};

// The folder of a sharded output: made here when it does not exist (its
// parent must), and then removed again, if still empty, when the run fails
// or a signal ends it (the signal handler removes it after the temporary
// files); keep() once the files are in place. "" does nothing.
class OutputFolder {
 public:
  explicit OutputFolder(const std::string& dir);
  ~OutputFolder();
  void keep() { keep_ = true; }
  OutputFolder(const OutputFolder&) = delete;
  OutputFolder& operator=(const OutputFolder&) = delete;

 private:
  std::string dir_;
  bool keep_ = false;
};

// Fails, naming `what`, when the filesystem of `dir` has fewer than `bytes`
// free (for a set of files: each file's reserve() alone cannot see the sum
// where space is not preallocated, e.g. on macOS).
void check_free_space(const std::string& dir, uint64_t bytes, const std::string& what);

// Checks that `target` may be written (for a fail-fast check before reading
// any input); throws st::Error naming it otherwise.
void check_output_path(const std::string& target, bool overwrite);

}  // namespace st::io
