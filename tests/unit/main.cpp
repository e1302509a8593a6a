// main() for Catch2 without a main library: v2 generates it from
// CATCH_CONFIG_MAIN; a v3 found without `catch2-with-main` gets a Session.
#if __has_include(<catch2/catch_all.hpp>)
#include <catch2/catch_all.hpp>
int main(int argc, char* argv[]) { return Catch::Session().run(argc, argv); }
#else
#define CATCH_CONFIG_MAIN
#include <catch2/catch.hpp>
#endif
