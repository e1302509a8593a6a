#include "sha256.hpp"

#include <openssl/evp.h>

#include <cctype>

#include "error.hpp"

namespace st::sha256 {

struct InOrderHasher::Ctx {
  EVP_MD_CTX* md = EVP_MD_CTX_new();
  ~Ctx() { EVP_MD_CTX_free(md); }
};

InOrderHasher::InOrderHasher() : ctx_(new Ctx) {
  if (!ctx_->md || EVP_DigestInit_ex(ctx_->md, EVP_sha256(), nullptr) != 1) throw Error("cannot start SHA-256 (libcrypto)");
}

InOrderHasher::~InOrderHasher() = default;

void InOrderHasher::update(std::span<const uint8_t> b) {
  if (!b.empty() && EVP_DigestUpdate(ctx_->md, b.data(), b.size()) != 1) throw Error("SHA-256 update failed");
  cursor_ += b.size();
}

void InOrderHasher::feed(uint64_t offset, std::span<const uint8_t> bytes) {
  if (bytes.empty()) return;
  if (offset > cursor_) {
    pending_[offset].assign(bytes.begin(), bytes.end());
    return;
  }
  if (offset != cursor_) throw Error("internal: SHA-256 input fed twice");
  update(bytes);
  for (auto it = pending_.begin(); it != pending_.end() && it->first == cursor_; it = pending_.erase(it)) update(it->second);
}

std::string InOrderHasher::finish(uint64_t size) {
  if (cursor_ != size || !pending_.empty()) throw Error("internal: SHA-256 did not cover the whole file");
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int n = 0;
  if (EVP_DigestFinal_ex(ctx_->md, md, &n) != 1) throw Error("SHA-256 final failed");
  static const char kHex[] = "0123456789abcdef";
  std::string hex;
  for (unsigned i = 0; i < n; ++i) {
    hex += kHex[md[i] >> 4];
    hex += kHex[md[i] & 15];
  }
  return hex;
}

std::string parse_hex_digest(const std::string& text) {
  std::string hex;
  for (char c : text) hex += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  if (hex.size() != 64 || hex.find_first_not_of("0123456789abcdef") != std::string::npos)
    usage_error("--expect-sha256 wants 64 hexadecimal digits, not '" + text + "'");
  return hex;
}

}  // namespace st::sha256
