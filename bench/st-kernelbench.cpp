// Kernel micro-benchmark: FP8 -> BF16/F16/F32 elements per second of each
// fp8::convert_run kernel this CPU runs, on an in-cache buffer (so it is the
// compute cost, not memory). Used for docs/performance.md; not a test.
//
//   st-kernelbench [KiB]     (default 256: in L2 cache; the median of 9 repetitions)
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#include "fp8.hpp"

using namespace st;

int main(int argc, char** argv) {
  const size_t n = (argc > 1 ? std::strtoul(argv[1], nullptr, 10) : 256) << 10;
  std::vector<uint8_t> in(n), out(n * 4);
  std::mt19937 rng(1);
  for (auto& b : in) b = static_cast<uint8_t>(rng() & 0x77);  // finite codes, like real weights
  const struct { const char* name; size_t run; } shapes[] = {{"per-tensor", n}, {"128-blocks", 128}};
  std::printf("| kernel | FP8 type | target | scale runs | G elements/s |\n|---|---|---|---|---|\n");
  for (fp8::Kernel k : fp8::available_kernels())
    for (Dtype d : {Dtype::F8_E4M3, Dtype::F8_E5M2})
      for (fp8::Target t : {fp8::Target::BF16, fp8::Target::F16, fp8::Target::F32})
        for (const auto& shape : shapes) {
          std::vector<double> secs;
          fp8::Loss loss;
          const size_t passes = std::max<size_t>(1, (64u << 20) / n);  // 64 Mi codes a repetition
          for (int rep = 0; rep < 9; ++rep) {
            const auto t0 = std::chrono::steady_clock::now();
            for (size_t pass = 0; pass < passes; ++pass)
              for (size_t i = 0; i < n; i += shape.run)
                fp8::convert_run(k, d, in.data() + i, std::min(shape.run, n - i), 0.0123f, t,
                                 out.data() + i * fp8::target_bytes(t), loss);
            secs.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
          }
          std::nth_element(secs.begin(), secs.begin() + 4, secs.end());
          std::printf("| %s | %s | %s | %s | %.2f |\n", std::string(fp8::kernel_name(k)).c_str(),
                      std::string(dtype_name(d)).c_str(), std::string(fp8::target_suffix(t)).c_str(),
                      shape.name, static_cast<double>(n * passes) / secs[4] / 1e9);
        }
  return 0;
}
