// Reading and writing st-stream v1 (docs/stream-format.md): a preamble, one
// MANIFEST frame, then for each tensor in manifest order its DATA chunks and a
// TENSOR_END frame, then a mandatory END frame. Every frame carries an
// XXH3-64 of its header and payload, except that a DATA frame's data bytes
// are covered by the data checksum in its sub-header (so each byte is hashed
// once); the reader checks every checksum, every size and the order, so a
// flipped byte or a cut stream is always reported.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "io.hpp"
#include "manifest.hpp"
#include "stream_format.hpp"

namespace st::stream {

// Where bytes given to Writer::data also are: a regular file, at an offset.
struct FileOrigin {
  int fd;
  const std::string& name;  // for messages
  uint64_t offset;
};

class Writer {
 public:
  explicit Writer(io::Sink& sink, size_t chunk_bytes = kDefaultChunkBytes);
  // A writer destroyed before finish() (an exception unwinding the stage)
  // ends its output with an ABORT frame, writing the preamble first if
  // needed, so the next stage stops quietly instead of reporting a cut
  // stream. Nothing is added when the sink itself failed.
  ~Writer();
  Writer(const Writer&) = delete;
  Writer& operator=(const Writer&) = delete;

  // `m`, and what changes->tensor_at reads, must stay valid until
  // finish(): the writer asks each tensor's size as the tensor comes (a
  // table of sizes cost 8 bytes a tensor).
  void begin(const Manifest& m, const ManifestChanges* changes = nullptr);
  // Appends bytes to tensor `index`, which must be the current tensor (the
  // first one not yet ended). Splits into DATA frames of chunk_bytes.
  void data(uint32_t index, std::span<const uint8_t> bytes);
  // The same for bytes whose XXH3-64 (data_hash) is already known (a DATA event that a
  // Reader checked, passed on unchanged): not hashed again when they fit
  // one frame.
  void data(uint32_t index, std::span<const uint8_t> bytes, uint64_t known_hash);
  // The same for bytes read from a file (hashed from `bytes`): a sink that
  // can splice sends them from the file instead (st-list into a pipe), which
  // saves copying them into the pipe. Should the file change in between,
  // the next stage reports a data checksum mismatch.
  void data(uint32_t index, std::span<const uint8_t> bytes, const FileOrigin& origin);
  void end_tensor(uint32_t index);
  void finish();

 private:
  // The frame checksum covers the header and the first `hashed` parts. With
  // `last_from`, the last part is also in that file and is spliced from it
  // if the sink can.
  void frame(uint32_t type, const struct iovec* parts, int count, int hashed, const FileOrigin* last_from = nullptr);
  // Fills the first 16 bytes of a frame header (kFrameHeaderBytes long) and
  // starts the frame checksum over them.
  void start_frame(uint8_t* hdr, uint32_t type, uint64_t len);
  void preamble();
  void data_frames(uint32_t index, std::span<const uint8_t> bytes, const uint64_t* known_hash,
                   const FileOrigin* origin = nullptr);

  io::Sink& sink_;
  bool begun_ = false;
  bool finished_ = false;
  bool sink_failed_ = false;
  size_t chunk_bytes_;
  std::function<uint64_t(size_t)> size_at_;  // of the k-th tensor
  size_t count_ = 0;
  uint64_t current_size();  // of tensor current_
  bool size_known_ = false;
  uint64_t size_ = 0;
  uint32_t current_ = 0;
  uint64_t offset_ = 0;
  uint64_t frames_ = 0;
  uint64_t data_bytes_ = 0;
  struct Hashes;
  std::unique_ptr<Hashes> h_;
};

// Whether any Writer of this process has written a preamble (cli::run uses
// it to end an otherwise empty output with ABORT after an early error).
bool output_started();

struct Event {
  enum class Kind { Data, TensorEnd, End };
  Kind kind = Kind::End;
  uint32_t tensor = 0;
  uint64_t offset = 0;               // Data: where these bytes start in the tensor
  std::span<const uint8_t> data;     // Data: valid until the next call to next()
  uint64_t spliced = 0;              // Data: bytes before `data` that went to the
                                     // splice target (Reader::splice_data_to)
  uint64_t hash = 0;                 // Data: XXH3-64 of the frame's bytes (checked
                                     // unless spliced > 0); TensorEnd: the tensor
                                     // checksum (§6)
};

// Where a tensor's DATA bytes may be moved without being read.
struct SpliceTarget {
  int fd = -1;          // a regular file
  uint64_t pos = 0;     // where the bytes at the frame's offset go
  const std::string* name = nullptr;  // for messages
};

// The XXH3-64 a DATA frame carries for these bytes (Event::hash).
uint64_t data_hash(std::span<const uint8_t> bytes);

class Reader {
 public:
  // Reads and checks the preamble and manifest. `name` is used in messages.
  Reader(io::Source& src, std::string name);
  ~Reader();
  Reader(const Reader&) = delete;
  Reader& operator=(const Reader&) = delete;

  const Manifest& manifest() const { return manifest_; }
  Event next();

  // When the source can splice (a pipe, on Linux), next() moves each DATA
  // frame's bytes straight to `target(tensor, offset)` instead of reading
  // them, and does NOT check their data checksum: Event::spliced says how
  // many bytes went there, and the caller must check them against
  // Event::hash (st-pack reads its output back). Frame checksums, order,
  // sizes and tensor checksums are checked as always.
  void splice_data_to(std::function<SpliceTarget(uint32_t tensor, uint64_t offset)> target);

 private:
  [[noreturn]] void corrupt(const std::string& what) const;
  void check_padding(const uint8_t* p, size_t n) const;  // padding bytes must be zero
  // Reads one frame (skipping skippable ones); returns its type; payload in buf_.
  uint32_t read_frame();

  io::Source& src_;
  std::string name_;
  Manifest manifest_;
  std::vector<uint8_t> buf_;
  uint64_t payload_len_ = 0;
  std::function<SpliceTarget(uint32_t, uint64_t)> splice_target_;
  bool data_deferred_ = false;  // the current DATA frame's bytes are still in src_
  bool manifest_header_only_ = false;
  uint8_t manifest_hdr_[kFrameHeaderBytes] = {};
  uint64_t pos_ = 0;         // byte offset of the current frame, for messages
  uint64_t next_pos_ = 0;
  uint64_t frame_no_ = 0;    // frames read after the preamble
  uint32_t current_ = 0;
  uint64_t received_ = 0;
  uint64_t data_bytes_ = 0;
  bool ended_ = false;
  struct Hashes;
  std::unique_ptr<Hashes> h_;
};

// Whether the first bytes look like a safetensors file rather than a stream
// (to give a helpful message when someone pipes a file straight into a stage).
bool looks_like_safetensors(std::span<const uint8_t> first_bytes);

}  // namespace st::stream
