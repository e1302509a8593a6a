#include "json_util.hpp"

#include <cstdio>
#include <set>
#include <vector>

namespace st::json {

bool valid_utf8(std::string_view s) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  const size_t n = s.size();
  size_t i = 0;
  while (i < n) {
    const unsigned c = p[i];
    if (c < 0x80) {
      ++i;
      continue;
    }
    size_t len;
    unsigned cp;
    if (c >= 0xC2 && c <= 0xDF) {
      len = 2;
      cp = c & 0x1F;
    } else if (c >= 0xE0 && c <= 0xEF) {
      len = 3;
      cp = c & 0x0F;
    } else if (c >= 0xF0 && c <= 0xF4) {
      len = 4;
      cp = c & 0x07;
    } else {
      return false;
    }
    if (i + len > n) return false;
    for (size_t k = 1; k < len; ++k) {
      if ((p[i + k] & 0xC0) != 0x80) return false;
      cp = (cp << 6) | (p[i + k] & 0x3F);
    }
    if (len == 3 && (cp < 0x800 || (cp >= 0xD800 && cp <= 0xDFFF))) return false;
    if (len == 4 && (cp < 0x10000 || cp > 0x10FFFF)) return false;
    i += len;
  }
  return true;
}

std::optional<uint64_t> parse_u64(std::string_view t, std::string* why) {
  auto reject = [&](const char* reason) -> std::optional<uint64_t> {
    if (why) *why = reason;
    return std::nullopt;
  };
  if (t.empty()) return reject("is not a number");
  if (t[0] == '-') return reject("is negative");
  uint64_t v = 0;
  for (char ch : t) {
    if (ch < '0' || ch > '9') return reject("is not an integer");
    if (__builtin_mul_overflow(v, uint64_t{10}, &v) ||
        __builtin_add_overflow(v, uint64_t(ch - '0'), &v))
      return reject("does not fit in 64 bits");
  }
  return v;
}

namespace {

const char kHex[] = "0123456789abcdef";

void append_u_escape(std::string& out, unsigned v) {
  out += "\\u";
  for (int shift = 12; shift >= 0; shift -= 4) out += kHex[(v >> shift) & 15];
}

// An ASCII byte as both serde_json and Python's json escape it.
void append_ascii(std::string& out, unsigned char c) {
  switch (c) {
    case '"': out += "\\\""; break;
    case '\\': out += "\\\\"; break;
    case '\b': out += "\\b"; break;
    case '\f': out += "\\f"; break;
    case '\n': out += "\\n"; break;
    case '\r': out += "\\r"; break;
    case '\t': out += "\\t"; break;
    default:
      if (c < 0x20) append_u_escape(out, c);
      else out += static_cast<char>(c);
  }
}

}  // namespace

void append_json_string(std::string& out, std::string_view s) {
  out += '"';
  for (char ch : s) {
    const auto c = static_cast<unsigned char>(ch);
    if (c < 0x80) append_ascii(out, c);
    else out += ch;
  }
  out += '"';
}

void append_json_string_ascii(std::string& out, std::string_view s) {
  out += '"';
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  for (size_t i = 0; i < s.size();) {
    if (p[i] < 0x80) {
      if (p[i] == 0x7F) append_u_escape(out, 0x7F);  // Python escapes DEL too
      else append_ascii(out, p[i]);
      ++i;
      continue;
    }
    const size_t len = utf8_length(p[i]);  // 2-4 for the UTF-8 callers pass
    if (i + len > s.size()) break;  // not UTF-8 (callers pass valid text)
    unsigned cp = p[i] & (len == 2 ? 0x1F : len == 3 ? 0x0F : 0x07);
    for (size_t k = 1; k < len; ++k) cp = (cp << 6) | (p[i + k] & 0x3F);
    if (cp >= 0x10000) {
      append_u_escape(out, 0xD800 + ((cp - 0x10000) >> 10));
      append_u_escape(out, 0xDC00 + ((cp - 0x10000) & 0x3FF));
    } else {
      append_u_escape(out, cp);
    }
    i += len;
  }
  out += '"';
}

bool within_depth(std::string_view text) {
  int depth = 0;
  bool in_string = false, escaped = false;
  for (char c : text) {
    if (in_string) {
      if (escaped) escaped = false;
      else if (c == '\\') escaped = true;
      else if (c == '"') in_string = false;
    } else if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      if (++depth > kMaxDepth) return false;
    } else if (c == ']' || c == '}') {
      --depth;
    }
  }
  return true;
}

// RapidJSON 1.1 passes raw bytes through and turns a lone low surrogate
// escape (\udc00) into bytes that are not UTF-8, so every decoded string is
// checked: names and formats from these documents end up in messages and
// in the stream manifest, which must be UTF-8. Depth is bounded by
// within_depth(), so the recursion is too.
bool strings_valid_utf8(const rapidjson::Value& v) {
  if (v.IsString()) return valid_utf8({v.GetString(), v.GetStringLength()});
  if (v.IsArray())
    for (const auto& e : v.GetArray())
      if (!strings_valid_utf8(e)) return false;
  if (v.IsObject())
    for (auto it = v.MemberBegin(); it != v.MemberEnd(); ++it)
      if (!strings_valid_utf8(it->name) || !strings_valid_utf8(it->value)) return false;
  return true;
}

bool parse_json(rapidjson::Document& doc, std::string_view text) {
  // No check of the whole text: a byte that is not UTF-8 is a syntax error
  // outside strings and fails strings_valid_utf8() inside them.
  if (!within_depth(text)) return false;
  doc.Parse<rapidjson::kParseIterativeFlag>(text.data(), text.size());
  return !doc.HasParseError() && strings_valid_utf8(doc);
}

void keep_last_of_repeated_keys(rapidjson::Value& v) {
  if (v.IsArray()) {
    for (auto& e : v.GetArray()) keep_last_of_repeated_keys(e);
    return;
  }
  if (!v.IsObject()) return;
  for (auto it = v.MemberBegin(); it != v.MemberEnd(); ++it) keep_last_of_repeated_keys(it->value);
  std::set<std::string> later;  // keys of the members after the one looked at
  std::vector<rapidjson::SizeType> earlier;  // members a later one repeats, last first
  for (rapidjson::SizeType i = v.MemberCount(); i-- > 0;) {
    const auto& name = (v.MemberBegin() + i)->name;
    if (!later.emplace(name.GetString(), name.GetStringLength()).second) earlier.push_back(i);
  }
  for (rapidjson::SizeType i : earlier) v.EraseMember(v.MemberBegin() + i);  // highest first: indices stay valid
}

bool parse_json_in_place(rapidjson::Document& doc, std::string& text) {
  if (text.find('\0') != std::string::npos || !within_depth(text)) return false;
  doc.ParseInsitu<rapidjson::kParseIterativeFlag>(text.data());
  return !doc.HasParseError() && strings_valid_utf8(doc);
}

std::string quote(std::string_view s) {
  std::string out = "'";
  for (unsigned char c : s) {
    if (c < 0x20 || c == 0x7F) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02x", c);
      out += buf;
    } else {
      out += static_cast<char>(c);
    }
  }
  out += "'";
  return out;
}

}  // namespace st::json
