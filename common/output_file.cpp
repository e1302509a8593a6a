#include "output_file.hpp"

#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <cstdlib>
#include <cstring>

#include "error.hpp"
#include "io.hpp"
#include "paths.hpp"

namespace st::io {

namespace {

// The temporary files this process has open, for the signal handler, which
// may only call async-signal-safe functions (unlink, raise): a fixed table
// of paths changed only with the signals blocked. Sharded output has one
// temporary file per shard.
constexpr size_t kMaxTemps = 4096;
char* g_temps[kMaxTemps];
size_t g_open_temps = 0;  // temporary files and made folders; handlers are installed while non-zero
constexpr int kSignals[] = {SIGINT, SIGTERM, SIGHUP};
struct sigaction g_old[3];
bool g_installed[3];

char* g_made_dir = nullptr;  // an OutputFolder made here, removed after the temporaries if empty

extern "C" void on_signal(int sig) {
  for (char*& p : g_temps)
    if (p) ::unlink(p);
  if (g_made_dir) ::rmdir(g_made_dir);  // fails harmlessly if something is in it
  ::signal(sig, SIG_DFL);
  ::raise(sig);
}

// Blocks the signals above for its lifetime (in this thread).
class SignalBlock {
 public:
  SignalBlock() {
    sigset_t block;
    sigemptyset(&block);
    for (int s : kSignals) sigaddset(&block, s);
    ::pthread_sigmask(SIG_BLOCK, &block, &old_);
  }
  ~SignalBlock() { ::pthread_sigmask(SIG_SETMASK, &old_, nullptr); }

 private:
  sigset_t old_;
};

}  // namespace

SignalsHeld::SignalsHeld() {
  sigset_t block;
  sigemptyset(&block);
  for (int s : kSignals) sigaddset(&block, s);
  ::pthread_sigmask(SIG_BLOCK, &block, &old_);
}

SignalsHeld::~SignalsHeld() { ::pthread_sigmask(SIG_SETMASK, &old_, nullptr); }

void SignalsHeld::release_in_this_thread() {
  sigset_t set;
  sigemptyset(&set);
  for (int s : kSignals) sigaddset(&set, s);
  ::pthread_sigmask(SIG_UNBLOCK, &set, nullptr);
}

namespace {

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

}  // namespace

OutputFolder::OutputFolder(const std::string& dir) : dir_(dir) {
  if (dir.empty()) return;
  struct stat sb;
  if (::stat(dir.c_str(), &sb) == 0) {
    if (!S_ISDIR(sb.st_mode)) fail(dir + ": exists and is not a folder");
    return;
  }
  const SignalBlock blocked;  // no signal between making it and registering it
  char* path = ::strdup(dir.c_str());
  if (!path) fail(dir + ": out of memory");
  if (::mkdir(dir.c_str(), 0777) != 0) {
    const int err = errno;
    std::free(path);
    fail(dir + ": cannot create the output folder: " + errno_text(err));
  }
  g_made_dir = path;
  // The handlers stay installed while it is registered, also before the
  // first temporary file and after the last.
  if (g_open_temps == 0) install_handlers();
  ++g_open_temps;
}

OutputFolder::~OutputFolder() {
  const SignalBlock blocked;
  if (g_made_dir && dir_ == g_made_dir) {
    if (!keep_) ::rmdir(g_made_dir);  // fails harmlessly if not empty
    std::free(g_made_dir);
    g_made_dir = nullptr;
    if (--g_open_temps == 0) restore_handlers();
  }
}

void check_free_space(const std::string& dir, uint64_t bytes, const std::string& what) {
  struct statvfs fs;
  if (::statvfs(dir.c_str(), &fs) != 0) return;  // unknown: reserve() and write() still check
  const uint64_t free_bytes = static_cast<uint64_t>(fs.f_bavail) * fs.f_frsize;
  if (free_bytes < bytes)
    fail(what + ": not enough space: the output needs " + std::to_string(bytes) + " bytes, the filesystem has " +
         std::to_string(free_bytes) + " free");
}

void check_output_path(const std::string& target, bool overwrite) {
  if (target.empty()) usage_error("empty output path");
  struct stat sb;
  if (::stat(target.c_str(), &sb) == 0) {
    if (S_ISDIR(sb.st_mode)) fail(target + ": is a directory (for shards in it, write " + target + "/)");
    if (!overwrite) fail(target + ": already exists; not overwritten (use -f to replace it)");
  }
  const std::string dir = paths::dir_name(target);
  if (::access(dir.c_str(), W_OK) != 0)
    fail(target + ": cannot write in directory " + dir + ": " + errno_text(errno));
}

AtomicOutput::AtomicOutput(const std::string& target, bool overwrite) : target_(target), overwrite_(overwrite) {
  check_output_path(target, overwrite);
  temp_ = paths::dir_name(target) + "/." + paths::base_name(target) + ".st-pack-XXXXXX";
  if (temp_.size() > PATH_MAX) fail(target + ": path too long");
  int err = 0;
  {
    const SignalBlock blocked;  // no signal between creating the file and registering it
    size_t free_slot = 0;
    while (free_slot < kMaxTemps && g_temps[free_slot]) ++free_slot;
    if (free_slot == kMaxTemps) fail(target + ": too many output files at once");
    char* path = ::strdup(temp_.c_str());
    if (!path) fail(target + ": out of memory");
    if (g_open_temps == 0) install_handlers();
    fd_ = ::mkstemp(path);
    err = errno;
    if (fd_ >= 0) {
      temp_ = path;
      g_temps[free_slot] = path;
      slot_ = static_cast<long>(free_slot);
      ++g_open_temps;
    } else {
      std::free(path);
      if (g_open_temps == 0) restore_handlers();
    }
  }
  if (fd_ < 0) fail(target + ": cannot create a temporary file in " + paths::dir_name(target) + ": " + errno_text(err));
  // mkstemp makes 0600; a finished file gets the usual 0666 & ~umask.
  const mode_t mask = ::umask(0);
  ::umask(mask);
  ::fchmod(fd_, 0666 & ~mask);
}

AtomicOutput::~AtomicOutput() { cleanup(); }

void AtomicOutput::cleanup() noexcept {
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
  if (slot_ < 0) return;
  char* path = g_temps[slot_];
  if (!committed_) ::unlink(path);  // first: a signal meanwhile finds it in the table
  {
    const SignalBlock blocked;
    g_temps[slot_] = nullptr;
    slot_ = -1;
    if (--g_open_temps == 0) restore_handlers();
  }
  std::free(path);
}

void AtomicOutput::uncommit() noexcept {
  if (committed_ && !uncommitted_) ::unlink(target_.c_str());
  uncommitted_ = true;
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

#ifdef MAP_POPULATE
constexpr int kPopulate = MAP_POPULATE;
#else
constexpr int kPopulate = 0;
#endif

const uint8_t* AtomicOutput::map_window(uint64_t offset, size_t n) const {
  if (n == 0) return nullptr;
  static const uint64_t page = static_cast<uint64_t>(::sysconf(_SC_PAGESIZE));
  const uint64_t start = offset / page * page;
  // MAP_POPULATE maps the whole window at once: one fault per 4 KiB page
  // was measured as seconds of system time for a multi-GB output.
  void* p = ::mmap(nullptr, n + (offset - start), PROT_READ, MAP_SHARED | kPopulate, fd_, static_cast<off_t>(start));
  if (p == MAP_FAILED) return nullptr;
  return static_cast<const uint8_t*>(p) + (offset - start);
}

void AtomicOutput::unmap_window(const uint8_t* p, uint64_t offset, size_t n) const {
  static const uint64_t page = static_cast<uint64_t>(::sysconf(_SC_PAGESIZE));
  const uint64_t lead = offset - offset / page * page;
  ::munmap(const_cast<uint8_t*>(p - lead), n + lead);
}

void AtomicOutput::sync() {
  if (synced_) return;
  if (::fsync(fd_) != 0) fail(target_ + ": fsync failed: " + errno_text(errno));
  synced_ = true;
}

void AtomicOutput::commit() {
  sync();
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
  const int dfd = ::open(paths::dir_name(target_).c_str(), O_RDONLY | O_CLOEXEC);
  if (dfd >= 0) {
    ::fsync(dfd);  // best effort: make the rename durable
    ::close(dfd);
  }
  cleanup();
}

}  // namespace st::io
