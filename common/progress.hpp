// A progress line on stderr ("st-pack: 1.2 GiB / 4.0 GiB  30%  250 MiB/s  ETA 0:12"),
// redrawn at most 5 times a second. Shown only when enabled (by default when
// stderr is a terminal; --progress/--quiet override).
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

namespace st::cli {

class Progress {
 public:
  Progress(std::string tool, bool enabled, uint64_t total);
  ~Progress();
  void add(uint64_t bytes);
  void finish();

 private:
  void draw(bool final);

  std::string tool_;
  bool enabled_;
  uint64_t total_;
  uint64_t done_ = 0;
  bool drawn_ = false;
  std::chrono::steady_clock::time_point start_, last_;
};

std::string human_bytes(uint64_t n);

}  // namespace st::cli
