// An output file that appears at its final path only when complete: data
// goes to a temporary file beside the target (".NAME.st-pack-XXXXXX"),
// which commit() renames into place; on error, destruction, SIGINT, SIGTERM
// or SIGHUP the temporary file is removed and the target is untouched.
#pragma once

#include <cstdint>
#include <string>

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
  // fsync, then move into place (refusing to replace a file that appeared
  // meanwhile unless overwrite), then fsync the directory.
  void commit();

 private:
  void cleanup() noexcept;

  std::string target_;
  std::string temp_;
  bool overwrite_;
  int fd_ = -1;
  bool committed_ = false;
};

// Checks that `target` may be written (for a fail-fast check before reading
// any input); throws st::Error naming it otherwise.
void check_output_path(const std::string& target, bool overwrite);

}  // namespace st::io
