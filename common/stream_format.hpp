// Constants of the st-stream format, version 1.0. docs/stream-format.md is
// normative; each constant names the section that defines it.
#pragma once

#include <cstddef>
#include <cstdint>

namespace st::stream {

// §2 Preamble
inline constexpr uint8_t kMagic[8] = {0x89, 'S', 'T', 'S', 0x0D, 0x0A, 0x1A, 0x0A};
inline constexpr uint16_t kVersionMajor = 1;
inline constexpr uint16_t kVersionMinor = 2;
inline constexpr size_t kPreambleBytes = 24;

// §3 Frames
inline constexpr size_t kFrameHeaderBytes = 24;
inline constexpr size_t kAlign = 8;

enum FrameType : uint32_t {
  kFrameManifest = 1,
  kFrameData = 2,
  kFrameTensorEnd = 3,
  kFrameEnd = 4,
  kFrameAbort = 5,  // the producer failed: discard the stream, exit quietly
};
inline constexpr uint32_t kFirstSkippableType = 0x80000000u;  // §6

// §4 Payload sizes
inline constexpr size_t kDataSubheaderBytes = 24;  // index, reserved, offset, data checksum
inline constexpr size_t kTensorEndBytes = 24;
inline constexpr size_t kEndBytes = 32;

// §7 Limits a reader enforces before allocating
inline constexpr uint64_t kMaxManifestBytes = 256ull << 20;
inline constexpr uint64_t kMaxChunkBytes = 16ull << 20;      // data bytes in one DATA frame
inline constexpr uint64_t kMaxSkippableBytes = 16ull << 20;
inline constexpr uint64_t kMaxAbortBytes = 64ull << 10;

// What our writers put in one DATA frame.
inline constexpr size_t kDefaultChunkBytes = 4u << 20;

}  // namespace st::stream
