// Byte sources and sinks over file descriptors (and memory, for tests), with
// the EINTR/short-I/O loops every stage needs. "-" is stdin/stdout.
#pragma once

#include <sys/uio.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace st::io {

// strerror(errno) as a string.
std::string errno_text(int err);

class Source {
 public:
  virtual ~Source() = default;
  // Reads up to n bytes; returns 0 only at end of input.
  virtual size_t read_some(void* buf, size_t n) = 0;
  // Reads until n bytes or end of input; returns the count read.
  size_t read_full(void* buf, size_t n);
  // Whether splice_some() may move bytes from this source into a file.
  virtual bool can_splice() const { return false; }
  // Moves up to n bytes into the regular file `fd` (named `fd_name` in
  // messages) at `offset` without copying them through user space (Linux
  // splice(2) from a pipe); returns the count, 0 at end of input. When the
  // kernel refuses (a file system without splice support) the bytes already
  // taken are copied in instead, or none are taken (0), and can_splice()
  // becomes false: the caller reads the rest.
  virtual size_t splice_some(int fd, const std::string& fd_name, uint64_t offset, size_t n);
};

class Sink {
 public:
  virtual ~Sink() = default;
  // Writes all of the buffers, in order.
  virtual void write(const struct iovec* iov, int count) = 0;
  void write(const void* p, size_t n);
  // Whether splice_from() may send bytes from a file.
  virtual bool can_splice() const { return false; }
  // Writes n bytes of the regular file `fd` (named `fd_name` in messages)
  // from `offset` on without copying them through user space (Linux
  // splice(2) into a pipe: the pipe takes references to page-cache pages).
  // Returns false, having written nothing, when the kernel refuses; then
  // can_splice() becomes false.
  virtual bool splice_from(int fd, const std::string& fd_name, uint64_t offset, size_t n);
};

// Makes a pipe's buffer larger (1 MiB, Linux; best effort): fewer context
// switches between stages that pass megabytes per frame.
void grow_pipe(int fd);

// A private pipe that bytes cross between an input pipe and a file (Linux).
// Splicing from one pipe to another moves page references, so the input
// pipe's lock is held only for that, not for the copy into the page cache
// that a splice from the pipe straight to the file does under it: the stage
// writing into the pipe spun on that lock for a quarter of its CPU time
// (docs/performance.md). Not made where splice(2) is missing.
class StagingPipe {
 public:
  StagingPipe() = default;
  ~StagingPipe();
  StagingPipe(const StagingPipe&) = delete;
  StagingPipe& operator=(const StagingPipe&) = delete;
  // Makes the pipe at the first call; false if it cannot be made (then
  // the input is read instead of spliced, and it is not tried again).
  bool ready();
  int r = -1, w = -1;

 private:
  bool tried_ = false;
};

// Reads n bytes from `in` (a pipe holding at least that many) and writes
// them into the regular file `fd` (named `fd_name` in messages) at
// `offset`: what is staged, for a file that refuses splice.
void copy_into_file(int in, int fd, const std::string& fd_name, uint64_t offset, size_t n);

// Splices from a pipe (Linux) unless ST_NO_SPLICE is set in the
// environment (to measure what splicing gives).
class FdSource : public Source {
 public:
  FdSource(int fd, std::string name);
  size_t read_some(void* buf, size_t n) override;
  bool can_splice() const override { return splice_; }
  size_t splice_some(int fd, const std::string& fd_name, uint64_t offset, size_t n) override;
  const std::string& name() const { return name_; }

 private:
  int fd_;
  std::string name_;
  bool splice_ = false;
  StagingPipe stage_;  // between the input pipe and the file
  // Moves n bytes from stage_ into the file; copies them if the file
  // system cannot take a splice.
  void unstage_to_file(int fd, const std::string& fd_name, uint64_t pos, size_t n);
};

// EPIPE raises st::BrokenPipe (only seen when SIGPIPE is ignored, e.g. in
// st-convert's threads); other errors raise st::Error naming the sink.
// Splices into a pipe unless ST_NO_SPLICE is set, as FdSource.
class FdSink : public Sink {
 public:
  FdSink(int fd, std::string name);
  void write(const struct iovec* iov, int count) override;
  using Sink::write;
  bool can_splice() const override { return splice_; }
  bool splice_from(int fd, const std::string& fd_name, uint64_t offset, size_t n) override;

 private:
  int fd_;
  std::string name_;
  bool splice_ = false;
};

class MemorySource : public Source {
 public:
  explicit MemorySource(std::vector<uint8_t> bytes, size_t max_read = SIZE_MAX)
      : bytes_(std::move(bytes)), max_read_(max_read) {}
  size_t read_some(void* buf, size_t n) override;

 private:
  std::vector<uint8_t> bytes_;
  size_t pos_ = 0;
  size_t max_read_;
};

class MemorySink : public Sink {
 public:
  void write(const struct iovec* iov, int count) override;
  using Sink::write;
  std::vector<uint8_t> bytes;
};

// A regular file opened for positional reads. The size is taken once at open;
// a read that comes up short later means the file changed under us.
class InputFile {
 public:
  explicit InputFile(const std::string& path);
  ~InputFile();
  InputFile(const InputFile&) = delete;
  InputFile& operator=(const InputFile&) = delete;

  void pread_exact(uint64_t offset, void* buf, size_t n) const;
  uint64_t size() const { return size_; }
  const std::string& path() const { return path_; }
  int fd() const { return fd_; }

 private:
  std::string path_;
  int fd_ = -1;
  uint64_t size_ = 0;
};

bool is_tty(int fd);

}  // namespace st::io
