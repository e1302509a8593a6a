#include "progress.hpp"

#include <cstdio>

namespace st::cli {

std::string human_bytes(uint64_t n) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double v = static_cast<double>(n);
  int u = 0;
  while (v >= 1024 && u < 4) {
    v /= 1024;
    ++u;
  }
  char buf[32];
  std::snprintf(buf, sizeof buf, u == 0 ? "%.0f %s" : "%.1f %s", v, units[u]);
  return buf;
}

Progress::Progress(std::string tool, bool enabled, uint64_t total)
    : tool_(std::move(tool)), enabled_(enabled), total_(total), start_(std::chrono::steady_clock::now()), last_(start_) {}

Progress::~Progress() {
  if (drawn_) std::fputs("\n", stderr);
}

void Progress::add(uint64_t bytes) {
  done_ += bytes;
  if (!enabled_) return;
  const auto now = std::chrono::steady_clock::now();
  if (now - last_ < std::chrono::milliseconds(200)) return;
  last_ = now;
  draw(false);
}

void Progress::finish() {
  if (!enabled_) return;
  draw(true);
  std::fputs("\n", stderr);
  drawn_ = false;
}

void Progress::draw(bool final) {
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  const double rate = secs > 0 ? static_cast<double>(done_) / secs : 0;
  std::string line = tool_ + ": " + human_bytes(done_) + " / " + human_bytes(total_);
  char buf[96];
  if (total_ > 0) {
    std::snprintf(buf, sizeof buf, "  %3.0f%%", 100.0 * static_cast<double>(done_) / static_cast<double>(total_));
    line += buf;
  }
  line += "  " + human_bytes(static_cast<uint64_t>(rate)) + "/s";
  if (!final && rate > 0 && total_ > done_) {
    const auto eta = static_cast<uint64_t>(static_cast<double>(total_ - done_) / rate);
    std::snprintf(buf, sizeof buf, "  ETA %llu:%02llu", static_cast<unsigned long long>(eta / 60),
                  static_cast<unsigned long long>(eta % 60));
    line += buf;
  }
  std::fprintf(stderr, "\r%s\033[K", line.c_str());
  std::fflush(stderr);
  drawn_ = true;
}

}  // namespace st::cli
