#include "io.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>

#include "error.hpp"

namespace st::io {

std::string errno_text(int err) { return std::strerror(err); }

size_t Source::read_full(void* buf, size_t n) {
  auto* p = static_cast<uint8_t*>(buf);
  size_t done = 0;
  while (done < n) {
    const size_t got = read_some(p + done, n - done);
    if (got == 0) break;
    done += got;
  }
  return done;
}

void Sink::write(const void* p, size_t n) {
  struct iovec v{const_cast<void*>(p), n};
  write(&v, 1);
}

size_t Source::splice_some(int, const std::string&, uint64_t, size_t) { return 0; }

bool Sink::splice_from(int, const std::string&, uint64_t, size_t) { return false; }

namespace {

// Splicing is for pipes, and ST_NO_SPLICE turns it off (to measure what it gives).
bool may_splice(int fd) {
#ifdef SPLICE_F_MOVE
  struct stat sb;
  const char* off = std::getenv("ST_NO_SPLICE");
  return (!off || !*off) && ::fstat(fd, &sb) == 0 && S_ISFIFO(sb.st_mode);
#else
  (void)fd;
  return false;
#endif
}

}  // namespace

StagingPipe::~StagingPipe() {
  if (r >= 0) ::close(r);
  if (w >= 0) ::close(w);
}

bool StagingPipe::ready() {
  if (r >= 0) return true;
  if (tried_) return false;
  tried_ = true;
#ifdef SPLICE_F_MOVE
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0) return false;
  r = fds[0];
  w = fds[1];
  grow_pipe(w);
  return true;
#else
  return false;
#endif
}

FdSource::FdSource(int fd, std::string name) : fd_(fd), name_(std::move(name)), splice_(may_splice(fd)) {
  grow_pipe(fd);
}

size_t FdSource::splice_some(int fd, const std::string& fd_name, uint64_t offset, size_t n) {
#ifdef SPLICE_F_MOVE
  if (splice_ && stage_.ready()) {
    for (;;) {  // into the staging pipe: only references move, so the writer at the other end never waits on a copy
      const ssize_t r = ::splice(fd_, nullptr, stage_.w, nullptr, n, SPLICE_F_MOVE);
      if (r >= 0) {
        unstage_to_file(fd, fd_name, offset, static_cast<size_t>(r));
        return static_cast<size_t>(r);
      }
      if (errno == EINTR) continue;
      if (errno == EINVAL || errno == ENOSYS) break;  // read() from now on
      fail(name_ + ": read failed: " + errno_text(errno));
    }
  }  // no staging pipe (no file descriptors left, say): read() from now on
#else
  (void)fd, (void)fd_name, (void)offset, (void)n;
#endif
  splice_ = false;
  return 0;
}

void FdSource::unstage_to_file(int fd, const std::string& fd_name, uint64_t offset, size_t n) {
#ifdef SPLICE_F_MOVE
  loff_t pos = static_cast<loff_t>(offset);
  while (n > 0 && splice_) {
    const ssize_t r = ::splice(stage_.r, nullptr, fd, &pos, n, SPLICE_F_MOVE);
    if (r > 0) {
      n -= static_cast<size_t>(r);
    } else if (r < 0 && errno == EINTR) {
      continue;
    } else if (r < 0 && (errno == EINVAL || errno == ENOSYS || errno == EOPNOTSUPP)) {
      splice_ = false;  // a file system without splice: copy what is staged, read() from now on
    } else {
      fail(fd_name + ": write failed: " + errno_text(r < 0 ? errno : EIO));
    }
  }
  if (n > 0) copy_into_file(stage_.r, fd, fd_name, static_cast<uint64_t>(pos), n);
#else
  (void)fd, (void)fd_name, (void)offset, (void)n;
#endif
}

void copy_into_file(int in, int fd, const std::string& fd_name, uint64_t offset, size_t n) {
  std::vector<uint8_t> buf(std::min(n, size_t{1} << 16));
  while (n > 0) {
    const ssize_t got = ::read(in, buf.data(), std::min(n, buf.size()));
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0) throw Error("internal: the staging pipe holds less than was put in it");
    const size_t k = static_cast<size_t>(got);
    for (size_t done = 0; done < k;) {
      const ssize_t w = ::pwrite(fd, buf.data() + done, k - done, static_cast<off_t>(offset));
      if (w < 0 && errno == EINTR) continue;
      if (w <= 0) fail(fd_name + ": write failed: " + errno_text(w < 0 ? errno : EIO));
      done += static_cast<size_t>(w);
      offset += static_cast<uint64_t>(w);
    }
    n -= k;
  }
}

size_t FdSource::read_some(void* buf, size_t n) {
  for (;;) {
    const ssize_t r = ::read(fd_, buf, n);
    if (r >= 0) return static_cast<size_t>(r);
    if (errno == EINTR) continue;
    fail(name_ + ": read failed: " + errno_text(errno));
  }
}

FdSink::FdSink(int fd, std::string name) : fd_(fd), name_(std::move(name)), splice_(may_splice(fd)) {
  grow_pipe(fd);
}

bool FdSink::splice_from(int fd, const std::string& fd_name, uint64_t offset, size_t n) {
#ifdef SPLICE_F_MOVE
  if (!splice_) return false;
  loff_t pos = static_cast<loff_t>(offset);
  size_t done = 0;
  while (done < n) {
    const ssize_t r = ::splice(fd, &pos, fd_, nullptr, n - done, SPLICE_F_MOVE);
    if (r > 0) {
      done += static_cast<size_t>(r);
      continue;
    }
    if (r == 0) fail(fd_name + ": file is shorter than when it was opened (changed while being read?)");
    if (errno == EINTR) continue;
    if (done == 0 && (errno == EINVAL || errno == ENOSYS || errno == EOPNOTSUPP)) break;  // write() from now on
    if (errno == EPIPE) throw BrokenPipe();
    if (errno == EIO || errno == EBADF) fail(fd_name + ": read failed: " + errno_text(errno));  // the file's side
    fail(name_ + ": write failed (from " + fd_name + "): " + errno_text(errno));
  }
  if (done == n) return true;
#else
  (void)fd, (void)fd_name, (void)offset, (void)n;
#endif
  splice_ = false;
  return false;
}

void FdSink::write(const struct iovec* iov_in, int count) {
  // Copy the small iovec array so partial writes can advance it.
  struct iovec local[8];
  std::vector<struct iovec> heap;
  struct iovec* iov = local;
  if (count > 8) {
    heap.assign(iov_in, iov_in + count);
    iov = heap.data();
  } else {
    std::copy(iov_in, iov_in + count, local);
  }
  while (count > 0) {
    if (iov->iov_len == 0) {
      ++iov;
      --count;
      continue;
    }
    const ssize_t w = ::writev(fd_, iov, std::min(count, 1024));
    if (w < 0) {
      if (errno == EINTR) continue;
      if (errno == EPIPE) throw BrokenPipe();
      fail(name_ + ": write failed: " + errno_text(errno));
    }
    size_t left = static_cast<size_t>(w);
    while (count > 0 && left >= iov->iov_len) {
      left -= iov->iov_len;
      ++iov;
      --count;
    }
    if (count > 0) {
      iov->iov_base = static_cast<uint8_t*>(iov->iov_base) + left;
      iov->iov_len -= left;
    }
  }
}

size_t MemorySource::read_some(void* buf, size_t n) {
  const size_t k = std::min({n, bytes_.size() - pos_, max_read_});
  if (k) std::memcpy(buf, bytes_.data() + pos_, k);  // data() may be null when empty
  pos_ += k;
  return k;
}

void MemorySink::write(const struct iovec* iov, int count) {
  for (int i = 0; i < count; ++i) {
    const auto* p = static_cast<const uint8_t*>(iov[i].iov_base);
    bytes.insert(bytes.end(), p, p + iov[i].iov_len);
  }
}

InputFile::InputFile(const std::string& path) : path_(path) {
  fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd_ < 0) fail(path + ": cannot open: " + errno_text(errno));
  struct stat sb;
  if (::fstat(fd_, &sb) != 0) {
    const int err = errno;
    ::close(fd_);
    fail(path + ": cannot stat: " + errno_text(err));
  }
  if (S_ISDIR(sb.st_mode)) {
    ::close(fd_);
    fail(path + ": is a directory");
  }
  size_ = static_cast<uint64_t>(sb.st_size);
#ifdef POSIX_FADV_SEQUENTIAL
  ::posix_fadvise(fd_, 0, 0, POSIX_FADV_SEQUENTIAL);
#endif
}

InputFile::~InputFile() {
  if (fd_ >= 0) ::close(fd_);
}

void InputFile::pread_exact(uint64_t offset, void* buf, size_t n) const {
  auto* p = static_cast<uint8_t*>(buf);
  size_t done = 0;
  while (done < n) {
    const ssize_t r = ::pread(fd_, p + done, n - done, static_cast<off_t>(offset + done));
    if (r < 0) {
      if (errno == EINTR) continue;
      fail(path_ + ": read failed: " + errno_text(errno));
    }
    if (r == 0) fail(path_ + ": file shrank while being read (is it being written?)");
    done += static_cast<size_t>(r);
  }
}

bool is_tty(int fd) { return ::isatty(fd) == 1; }

void grow_pipe(int fd) {
#ifdef F_SETPIPE_SZ
  struct stat sb;
  if (::fstat(fd, &sb) == 0 && S_ISFIFO(sb.st_mode) && ::fcntl(fd, F_GETPIPE_SZ) < (1 << 20))
    ::fcntl(fd, F_SETPIPE_SZ, 1 << 20);
#else
  (void)fd;
#endif
}

}  // namespace st::io
