// Includes Catch2 v3 when installed, else Catch2 v2. Tests use only the API
// common to both (TEST_CASE, SECTION, REQUIRE, CHECK, *_THROWS_AS, INFO).
#pragma once

#if __has_include(<catch2/catch_all.hpp>)
#include <catch2/catch_all.hpp>
#else
#include <catch2/catch.hpp>
#endif
