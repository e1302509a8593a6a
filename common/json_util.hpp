// Small strict helpers shared by the two JSON documents we parse (safetensors
// headers and stream manifests).
#pragma once

#include <rapidjson/document.h>

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace st::json {

// Strict UTF-8: no overlong forms, no surrogates, nothing above U+10FFFF.
bool valid_utf8(std::string_view s);
// Bytes of the UTF-8 sequence a byte begins (1 for ASCII and for bytes that
// cannot begin one), for code that walks text known to be, or checked as, UTF-8.
inline size_t utf8_length(unsigned char lead) { return lead >= 0xF0 ? 4 : lead >= 0xE0 ? 3 : lead >= 0xC0 ? 2 : 1; }

// A JSON number's text as an exact u64; nullopt with a reason otherwise
// (negative, fractional, exponent, too large).
std::optional<uint64_t> parse_u64(std::string_view text, std::string* why);

// Appends s as a JSON string the way the reference writer (serde_json)
// does: \" \\ \b \f \n \r \t, other control characters as \u00xx
// (lowercase hex), everything else (DEL, '/', non-ASCII) as is.
void append_json_string(std::string& out, std::string_view s);
// The same with every non-ASCII character escaped as \uXXXX (lowercase hex,
// a surrogate pair above U+FFFF), as Python's json.dumps writes by default:
// the form of the index files transformers writes. `s` must be UTF-8.
void append_json_string_ascii(std::string& out, std::string_view s);

// Nesting limit of every JSON document we read (serde_json's is 128).
inline constexpr int kMaxDepth = 127;

// Whether `text` nests objects/arrays at most kMaxDepth deep (strings are
// skipped), so that parsing and walking it cannot exhaust the stack.
bool within_depth(std::string_view text);

// Whether every string (keys included) in `v` is valid UTF-8: RapidJSON
// 1.1 decodes a lone low surrogate escape (\udc00) into bytes that are not.
// Recursive; call it on documents within kMaxDepth.
bool strings_valid_utf8(const rapidjson::Value& v);

// Parses `text` (RapidJSON, iterative) into `doc` if it is within kMaxDepth;
// false on a syntax error, too deep a document, or text or a decoded string
// (escapes included) that is not valid UTF-8.
bool parse_json(rapidjson::Document& doc, std::string_view text);
// Removes every member of an object (at any depth) whose key a later member
// of the same object has: the last one counts, as Python's json reads it.
void keep_last_of_repeated_keys(rapidjson::Value& v);
// The same, parsing `text` in place: the document's strings point into it
// (no copy of every string of an index that may list a million tensors),
// so `text` must outlive `doc`. A NUL byte in it is an error.
bool parse_json_in_place(rapidjson::Document& doc, std::string& text);

// Quoted for messages: 'name' with control characters escaped.
std::string quote(std::string_view s);

}  // namespace st::json
