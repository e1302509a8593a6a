// XXH3 compiled for AVX2 (this file alone gets -mavx2; see meson.build). It
// holds nothing but xxhash.h inlined as file-local functions, so no
// AVX2-compiled inline function can be shared with, and picked by the
// linker for, code that runs on CPUs without AVX2. hash.cpp calls it only
// when the CPU has AVX2.
#define XXH_INLINE_ALL
#include <xxhash.h>

#if !defined(__AVX2__)
#error "hash_avx2.cpp must be compiled with -mavx2"
#endif

extern "C" uint64_t st_hash_xxh3_avx2(const void* p, size_t n) { return XXH3_64bits(p, n); }
