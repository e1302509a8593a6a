#include "output_file.hpp"

#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <cstring>

#include "error.hpp"
#include "io.hpp"

namespace st::io {

namespace {

// The one temporary file a process may have open, for the signal handler
// (which may only call async-signal-safe functions: unlink, raise).
char g_temp[PATH_MAX + 1];
volatile sig_atomic_t g_have_temp = 0;
constexpr int kSignals[] = {SIGINT, SIGTERM, SIGHUP};
struct sigaction g_old[3];
bool g_installed[3];

extern "C" void on_signal(int sig) {
  if (g_have_temp) ::unlink(g_temp);
  g_have_temp = 0;
  ::signal(sig, SIG_DFL);
  ::raise(sig);
}

void install_handlers() {
  struct sigaction sa{};
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  for (int i = 0; i < 3; ++i) {
    ::sigaction(kSignals[i], nullptr, &g_old[i]);
    // A signal ignored when we started (nohup, a background job) stays ignored.
    g_installed[i] = g_old[i].sa_handler != SIG_IGN;
    if (g_installed[i]) ::sigaction(kSignals[i], &sa, nullptr);
  }
}

void restore_handlers() {
  for (int i = 0; i < 3; ++i)
    if (g_installed[i]) ::sigaction(kSignals[i], &g_old[i], nullptr);
}

std::string dir_of(const std::string& path) {
  const auto slash = path.rfind('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

std::string base_of(const std::string& path) {
  const auto slash = path.rfind('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

}  // namespace

void check_output_path(const std::string& target, bool overwrite) {
  if (target.empty()) usage_error("empty output path");
  struct stat sb;
  if (::stat(target.c_str(), &sb) == 0) {
    if (S_ISDIR(sb.st_mode)) fail(target + ": is a directory");
    if (!overwrite) fail(target + ": already exists; not overwritten (use -f to replace it)");
  }
  const std::string dir = dir_of(target);
  if (::access(dir.c_str(), W_OK) != 0)
    fail(target + ": cannot write in directory " + dir + ": " + errno_text(errno));
}

AtomicOutput::AtomicOutput(const std::string& target, bool overwrite) : target_(target), overwrite_(overwrite) {
  check_output_path(target, overwrite);
  temp_ = dir_of(target) + "/." + base_of(target) + ".st-pack-XXXXXX";
  if (temp_.size() > PATH_MAX) fail(target + ": path too long");
  std::strcpy(g_temp, temp_.c_str());
  install_handlers();  // before the file exists, so no signal can leave it behind
  sigset_t block, old;
  sigemptyset(&block);
  for (int s : kSignals) sigaddset(&block, s);
  ::sigprocmask(SIG_BLOCK, &block, &old);
  fd_ = ::mkstemp(g_temp);
  const int err = errno;
  if (fd_ >= 0) {
    temp_ = g_temp;
    g_have_temp = 1;
  }
  ::sigprocmask(SIG_SETMASK, &old, nullptr);
  if (fd_ < 0) {
    restore_handlers();
    fail(target + ": cannot create a temporary file in " + dir_of(target) + ": " + errno_text(err));
  }
  // mkstemp makes 0600; a finished file gets the usual 0666 & ~umask.
  const mode_t mask = ::umask(0);
  ::umask(mask);
  ::fchmod(fd_, 0666 & ~mask);
}

AtomicOutput::~AtomicOutput() { cleanup(); }

void AtomicOutput::cleanup() noexcept {
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
  if (!committed_ && g_have_temp) {
    g_have_temp = 0;
    ::unlink(temp_.c_str());
  }
  if (!temp_.empty()) restore_handlers();
  temp_.clear();
}

void AtomicOutput::reserve(uint64_t bytes) {
  if (bytes == 0) return;
  // Say it in numbers, before writing anything, when it cannot fit.
  struct statvfs fs;
  if (::fstatvfs(fd_, &fs) == 0) {
    const uint64_t free_bytes = static_cast<uint64_t>(fs.f_bavail) * fs.f_frsize;
    if (free_bytes < bytes)
      fail(target_ + ": not enough space: the output needs " + std::to_string(bytes) + " bytes, the filesystem has " +
           std::to_string(free_bytes) + " free");
  }
#ifdef __linux__
  const int r = ::posix_fallocate(fd_, 0, static_cast<off_t>(bytes));
  if (r == 0) return;
  if (r == ENOSPC)
    fail(target_ + ": not enough space for " + std::to_string(bytes) + " bytes: " + errno_text(r));
  if (r == EFBIG)
    fail(target_ + ": the output needs " + std::to_string(bytes) + " bytes, more than the file size limit (ulimit -f) allows");
  // EOPNOTSUPP/EINVAL on filesystems without it: fall back to ftruncate.
#endif
  if (::ftruncate(fd_, static_cast<off_t>(bytes)) != 0)
    fail(target_ + ": cannot size the output to " + std::to_string(bytes) + " bytes: " + errno_text(errno));
}

void AtomicOutput::pwrite_all(uint64_t offset, const void* p, size_t n) {
  const auto* b = static_cast<const uint8_t*>(p);
  while (n > 0) {
    const ssize_t w = ::pwrite(fd_, b, n, static_cast<off_t>(offset));
    if (w < 0) {
      if (errno == EINTR) continue;
      fail(target_ + ": write failed: " + errno_text(errno));
    }
    b += w;
    offset += static_cast<uint64_t>(w);
    n -= static_cast<size_t>(w);
  }
}

void AtomicOutput::pread_all(uint64_t offset, void* p, size_t n) const {
  auto* b = static_cast<uint8_t*>(p);
  while (n > 0) {
    const ssize_t r = ::pread(fd_, b, n, static_cast<off_t>(offset));
    if (r < 0) {
      if (errno == EINTR) continue;
      fail(target_ + ": reading back for verification failed: " + errno_text(errno));
    }
    if (r == 0) fail(target_ + ": written file is shorter than expected");
    b += r;
    offset += static_cast<uint64_t>(r);
    n -= static_cast<size_t>(r);
  }
}

void AtomicOutput::start_writeback() {
#ifdef SYNC_FILE_RANGE_WRITE
  ::sync_file_range(fd_, 0, 0, SYNC_FILE_RANGE_WRITE);  // best effort
#endif
}

const uint8_t* AtomicOutput::map_window(uint64_t offset, size_t n) const {
  if (n == 0) return nullptr;
  static const uint64_t page = static_cast<uint64_t>(::sysconf(_SC_PAGESIZE));
  const uint64_t start = offset / page * page;
  void* p = ::mmap(nullptr, n + (offset - start), PROT_READ, MAP_SHARED, fd_, static_cast<off_t>(start));
  if (p == MAP_FAILED) return nullptr;
  return static_cast<const uint8_t*>(p) + (offset - start);
}

void AtomicOutput::unmap_window(const uint8_t* p, uint64_t offset, size_t n) const {
  static const uint64_t page = static_cast<uint64_t>(::sysconf(_SC_PAGESIZE));
  const uint64_t lead = offset - offset / page * page;
  ::munmap(const_cast<uint8_t*>(p - lead), n + lead);
}

void AtomicOutput::commit() {
  if (::fsync(fd_) != 0) fail(target_ + ": fsync failed: " + errno_text(errno));
  if (::close(fd_) != 0) {
    fd_ = -1;
    fail(target_ + ": close failed: " + errno_text(errno));
  }
  fd_ = -1;
  if (overwrite_) {
    if (::rename(temp_.c_str(), target_.c_str()) != 0) fail(target_ + ": cannot rename into place: " + errno_text(errno));
  } else if (::link(temp_.c_str(), target_.c_str()) == 0) {
    ::unlink(temp_.c_str());  // link() refuses atomically to replace a file that appeared meanwhile
  } else if (errno == EEXIST) {
    fail(target_ + ": appeared while writing; not overwritten (use -f to replace it)");
  } else {
    // Filesystems without hard links: check, then rename.
    struct stat sb;
    if (::stat(target_.c_str(), &sb) == 0) fail(target_ + ": appeared while writing; not overwritten (use -f)");
    if (::rename(temp_.c_str(), target_.c_str()) != 0) fail(target_ + ": cannot rename into place: " + errno_text(errno));
  }
  committed_ = true;
  g_have_temp = 0;
  const int dfd = ::open(dir_of(target_).c_str(), O_RDONLY | O_CLOEXEC);
  if (dfd >= 0) {
    ::fsync(dfd);  // best effort: make the rename durable
    ::close(dfd);
  }
  cleanup();
}

}  // namespace st::io
