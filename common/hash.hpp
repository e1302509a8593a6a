// XXH3-64, the stream's data checksum, for the bulk of the bytes. The value
// is XXH3's on every path; only the speed differs. On x86-64 an AVX2 build
// of XXH3 is chosen at run time (the system library is built for SSE2: 2.5x
// slower on the 256 KiB pieces the stages hash); elsewhere, and on CPUs
// without AVX2, the library's. aarch64 builds of the library use NEON.
#pragma once

#include <cstddef>
#include <cstdint>

namespace st::hash {

uint64_t xxh3(const void* p, size_t n);

// "avx2" or "library": the path xxh3() takes on this CPU.
const char* xxh3_path();

// Both paths, for the test that proves they agree; library_xxh3 is the
// reference, avx2_xxh3 is only called when avx2_usable().
uint64_t library_xxh3(const void* p, size_t n);
bool avx2_usable();
uint64_t avx2_xxh3(const void* p, size_t n);

}  // namespace st::hash
