// Small strict helpers shared by the two JSON documents we parse (safetensors
// headers and stream manifests).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace st::json {

// Strict UTF-8: no overlong forms, no surrogates, nothing above U+10FFFF.
bool valid_utf8(std::string_view s);

// A JSON number's text as an exact u64; nullopt with a reason otherwise
// (negative, fractional, exponent, too large).
std::optional<uint64_t> parse_u64(std::string_view text, std::string* why);

// Quoted for messages: 'name' with control characters escaped.
std::string quote(std::string_view s);

}  // namespace st::json
