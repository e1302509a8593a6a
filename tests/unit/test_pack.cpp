// st::pack: --shard-size parsing (hand-computed byte counts, Hugging Face's
// decimal units) and which outputs are sharded.
#include "catch.hpp"
#include "error.hpp"
#include "pack.hpp"

using st::pack::parse_size;

TEST_CASE("parse_size: decimal and binary units, fractions rounded down", "[pack][size]") {
  CHECK(parse_size("100") == 100u);
  CHECK(parse_size("100B") == 100u);
  CHECK(parse_size("5GB") == 5000000000u);
  CHECK(parse_size("5gb") == 5000000000u);
  CHECK(parse_size("500MB") == 500000000u);
  CHECK(parse_size("1KB") == 1000u);
  CHECK(parse_size("2TB") == 2000000000000u);
  CHECK(parse_size("1KiB") == 1024u);
  CHECK(parse_size("2GiB") == 2147483648u);
  CHECK(parse_size("1TiB") == 1099511627776u);
  CHECK(parse_size("1.5GB") == 1500000000u);
  CHECK(parse_size("1.5GiB") == 1610612736u);     // 1.5 * 2^30
  CHECK(parse_size("2.25KiB") == 2304u);          // 2.25 * 1024
  CHECK(parse_size("0.001KB") == 1u);
  CHECK(parse_size("1.0009KB") == 1000u);          // 1000.9 rounds down
}

TEST_CASE("parse_size refuses what is not a size", "[pack][size]") {
  for (const char* bad : {"", "GB", "5XB", "-5GB", "1..5GB", ".", "0", "0GB", "0.0001KB", "5 GB",
                          "99999999999999999999", "20000000TB", "18446744073.9GB", "17179869183.9999GiB"}) {
    INFO(bad);
    CHECK_THROWS_AS(parse_size(bad), st::Error);
  }
}

TEST_CASE("sharded(): a trailing slash or a shard option", "[pack]") {
  auto sharded = [](const char* out, uint64_t size, bool keep) {
    st::pack::Options o;
    o.output = out;
    o.shard_size = size;
    o.keep_sharding = keep;
    return st::pack::sharded(o);
  };
  CHECK(!sharded("out.safetensors", 0, false));
  CHECK(sharded("out/", 0, false));
  CHECK(!sharded("-", 0, false));
  CHECK(sharded("dir/name.safetensors", 1000, false));
  CHECK(sharded("out", 0, true));
}
