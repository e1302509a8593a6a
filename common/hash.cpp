#include "hash.hpp"

#include <xxhash.h>

#include "fp8_simd.hpp"

#if defined(ST_HASH_AVX2)
extern "C" uint64_t st_hash_xxh3_avx2(const void* p, size_t n);
#endif

namespace st::hash {

uint64_t library_xxh3(const void* p, size_t n) { return XXH3_64bits(p, n); }

bool avx2_usable() {
#if defined(ST_HASH_AVX2)
  return fp8::simd::avx2_supported();  // the same CPUID and XGETBV checks
#else
  return false;
#endif
}

uint64_t avx2_xxh3(const void* p, size_t n) {
#if defined(ST_HASH_AVX2)
  return st_hash_xxh3_avx2(p, n);
#else
  return library_xxh3(p, n);
#endif
}

namespace {
using Xxh3 = uint64_t (*)(const void*, size_t);
Xxh3 chosen() {
  static const Xxh3 f = avx2_usable() ? avx2_xxh3 : library_xxh3;
  return f;
}
}  // namespace

uint64_t xxh3(const void* p, size_t n) { return chosen()(p, n); }

const char* xxh3_path() { return chosen() == avx2_xxh3 ? "avx2" : "library"; }

}  // namespace st::hash
