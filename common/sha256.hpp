// SHA-256 of a file whose bytes arrive out of order: st-list reads scales
// before the weights that precede them in the file, so pieces that arrive
// early are held (they are small) until the hash reaches their offset.
// The hash itself is OpenSSL's (libcrypto), not ours.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <vector>

namespace st::sha256 {

class InOrderHasher {
 public:
  InOrderHasher();
  ~InOrderHasher();
  InOrderHasher(const InOrderHasher&) = delete;
  InOrderHasher& operator=(const InOrderHasher&) = delete;

  // The bytes at `offset` of the file.
  void feed(uint64_t offset, std::span<const uint8_t> bytes);
  uint64_t covered() const { return cursor_; }  // bytes hashed so far, from 0
  // Lowercase hex; every byte up to `size` must have been fed.
  std::string finish(uint64_t size);

 private:
  void update(std::span<const uint8_t> bytes);
  struct Ctx;
  std::unique_ptr<Ctx> ctx_;
  uint64_t cursor_ = 0;
  std::map<uint64_t, std::vector<uint8_t>> pending_;
};

// Normalises a user-given hex digest (64 hex digits, any case); throws a
// usage error otherwise.
std::string parse_hex_digest(const std::string& text);

}  // namespace st::sha256
