#include "stream.hpp"

#include <xxhash.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <new>

#include "error.hpp"
#include "hash.hpp"

namespace st::stream {

namespace {

void put_u16(uint8_t* p, uint16_t v) {
  p[0] = static_cast<uint8_t>(v);
  p[1] = static_cast<uint8_t>(v >> 8);
}
void put_u32(uint8_t* p, uint32_t v) {
  for (int i = 0; i < 4; ++i) p[i] = static_cast<uint8_t>(v >> (8 * i));
}
void put_u64(uint8_t* p, uint64_t v) {
  for (int i = 0; i < 8; ++i) p[i] = static_cast<uint8_t>(v >> (8 * i));
}
uint16_t get_u16(const uint8_t* p) { return static_cast<uint16_t>(p[0] | p[1] << 8); }
uint32_t get_u32(const uint8_t* p) {
  uint32_t v = 0;
  for (int i = 3; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}
uint64_t get_u64(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

constexpr uint8_t kZeros[kAlign] = {};

size_t padding_for(uint64_t len) { return static_cast<size_t>((kAlign - len % kAlign) % kAlign); }

// An XXH3 state that frees itself.
struct Xxh3 {
  XXH3_state_t* s = XXH3_createState();
  Xxh3() {
    if (!s) throw std::bad_alloc();
    XXH3_64bits_reset(s);
  }
  ~Xxh3() { XXH3_freeState(s); }
  Xxh3(const Xxh3&) = delete;
  Xxh3& operator=(const Xxh3&) = delete;
  void reset() { XXH3_64bits_reset(s); }
  void update(const void* p, size_t n) { XXH3_64bits_update(s, p, n); }
  uint64_t digest() const { return XXH3_64bits_digest(s); }
};

}  // namespace

struct Writer::Hashes {
  Xxh3 frame, tensor, combined;
};
struct Reader::Hashes {
  Xxh3 frame, tensor, combined;
};

// ---------------------------------------------------------------- Writer

Writer::Writer(io::Sink& sink, size_t chunk_bytes)
    : sink_(sink), chunk_bytes_(std::clamp<size_t>(chunk_bytes, 1, kMaxChunkBytes)), h_(new Hashes) {}
Writer::~Writer() {
  if (finished_ || sink_failed_) return;
  try {
    if (!begun_) preamble();
    static const char kWhy[] = "the producing stage failed";
    struct iovec v{const_cast<char*>(kWhy), sizeof kWhy - 1};
    frame(kFrameAbort, &v, 1, 1);
  } catch (...) {
    // Nothing more can be said downstream.
  }
}

namespace {
std::atomic<bool> g_output_started{false};
}  // namespace

bool output_started() { return g_output_started.load(); }

void Writer::preamble() {
  g_output_started = true;
  uint8_t pre[kPreambleBytes] = {};
  std::memcpy(pre, kMagic, 8);
  put_u16(pre + 8, kVersionMajor);
  put_u16(pre + 10, kVersionMinor);
  put_u64(pre + 16, XXH3_64bits(pre, 16));
  sink_failed_ = true;  // until the write returns
  sink_.write(pre, sizeof pre);
  sink_failed_ = false;
  begun_ = true;
}

void Writer::start_frame(uint8_t* hdr, uint32_t type, uint64_t len) {
  put_u32(hdr, type);
  put_u32(hdr + 4, 0);
  put_u64(hdr + 8, len);
  h_->frame.reset();
  h_->frame.update(hdr, 16);
}

void Writer::frame(uint32_t type, const struct iovec* parts, int count, int hashed, const FileOrigin* last_from) {
  uint64_t len = 0;
  for (int i = 0; i < count; ++i) len += parts[i].iov_len;
  uint8_t hdr[kFrameHeaderBytes];
  start_frame(hdr, type, len);
  for (int i = 0; i < hashed; ++i) h_->frame.update(parts[i].iov_base, parts[i].iov_len);
  put_u64(hdr + 16, h_->frame.digest());
  struct iovec v[6];
  int n = 0;
  v[n++] = {hdr, sizeof hdr};
  for (int i = 0; i < count; ++i) v[n++] = parts[i];
  v[n++] = {const_cast<uint8_t*>(kZeros), padding_for(len)};
  sink_failed_ = true;  // a write that throws may have left half a frame
  if (last_from && count > 0 && sink_.can_splice()) {
    const struct iovec& last = v[n - 2];
    sink_.write(v, n - 2);
    if (!sink_.splice_from(last_from->fd, last_from->name, last_from->offset, last.iov_len)) sink_.write(&last, 1);
    sink_.write(&v[n - 1], 1);
  } else {
    sink_.write(v, n);
  }
  sink_failed_ = false;
  ++frames_;
}

void Writer::begin(const Manifest& m, const ManifestChanges* changes) {
  if (begun_) throw Error("internal: stream begun twice");
  preamble();
  // The manifest is made three times, never held whole: for its length,
  // for the frame checksum (which the header carries before the payload),
  // and to write it.
  uint64_t len = 0;
  encode_manifest_pieces(m, changes, [&](std::string_view s) { len += s.size(); });
  if (len > kMaxManifestBytes) fail("manifest too large for the stream format (" + std::to_string(len) + " bytes)");
  uint8_t hdr[kFrameHeaderBytes];
  start_frame(hdr, kFrameManifest, len);
  encode_manifest_pieces(m, changes, [&](std::string_view s) { h_->frame.update(s.data(), s.size()); });
  put_u64(hdr + 16, h_->frame.digest());
  sink_failed_ = true;  // a write that throws may have left half a frame
  sink_.write(hdr, sizeof hdr);
  uint64_t written = 0;
  encode_manifest_pieces(m, changes, [&](std::string_view s) {
    sink_.write(s.data(), s.size());
    written += s.size();
  });
  if (written != len) throw Error("internal: the manifest encoded to different lengths");
  sink_.write(kZeros, padding_for(len));
  sink_failed_ = false;
  ++frames_;
  if (changes && changes->tensor_at) {
    count_ = changes->count;
    size_at_ = [at = changes->tensor_at](size_t k) { return at(k).nbytes; };
  } else {
    count_ = m.tensors.size();
    size_at_ = [&t = m.tensors](size_t k) { return t.nbytes(k); };
  }
  size_known_ = false;
  current_ = 0;
  offset_ = 0;
  h_->tensor.reset();
  h_->combined.reset();
}

uint64_t data_hash(std::span<const uint8_t> bytes) { return hash::xxh3(bytes.data(), bytes.size()); }

void Writer::data(uint32_t index, std::span<const uint8_t> bytes) { data_frames(index, bytes, nullptr); }

void Writer::data(uint32_t index, std::span<const uint8_t> bytes, uint64_t known_hash) {
  data_frames(index, bytes, bytes.size() <= chunk_bytes_ ? &known_hash : nullptr);
}

void Writer::data(uint32_t index, std::span<const uint8_t> bytes, const FileOrigin& origin) {
  data_frames(index, bytes, nullptr, &origin);
}

uint64_t Writer::current_size() {
  if (!size_known_) {
    size_ = size_at_(current_);
    size_known_ = true;
  }
  return size_;
}

void Writer::data_frames(uint32_t index, std::span<const uint8_t> bytes, const uint64_t* known_hash,
                         const FileOrigin* origin) {
  uint64_t from = origin ? origin->offset : 0;
  if (index != current_ || index >= count_) throw Error("internal: stream data out of order");
  if (bytes.size() > current_size() - offset_) throw Error("internal: stream data larger than its tensor");
  while (!bytes.empty()) {
    const size_t n = std::min(bytes.size(), chunk_bytes_);
    uint8_t sub[kDataSubheaderBytes] = {};
    put_u32(sub, index);
    put_u64(sub + 8, offset_);
    const uint64_t data_hash = known_hash && n == bytes.size() ? *known_hash : hash::xxh3(bytes.data(), n);
    put_u64(sub + 16, data_hash);
    struct iovec v[2] = {{sub, sizeof sub}, {const_cast<uint8_t*>(bytes.data()), n}};
    // The frame checksum covers the sub-header, data_hash the data.
    if (origin) {
      const FileOrigin at{origin->fd, origin->name, from};
      frame(kFrameData, v, 2, 1, &at);
      from += n;
    } else {
      frame(kFrameData, v, 2, 1);
    }
    h_->tensor.update(sub + 16, 8);
    offset_ += n;
    data_bytes_ += n;
    bytes = bytes.subspan(n);
  }
}

void Writer::end_tensor(uint32_t index) {
  if (index != current_ || index >= count_ || offset_ != current_size())
    throw Error("internal: tensor ended before all its data was written");
  uint8_t p[kTensorEndBytes] = {};
  put_u32(p, index);
  put_u64(p + 8, size_);
  const uint64_t hash = h_->tensor.digest();
  put_u64(p + 16, hash);
  struct iovec v{p, sizeof p};
  frame(kFrameTensorEnd, &v, 1, 1);
  uint8_t le[8];
  put_u64(le, hash);
  h_->combined.update(le, 8);
  h_->tensor.reset();
  ++current_;
  size_known_ = false;
  offset_ = 0;
}

void Writer::finish() {
  if (current_ != count_) throw Error("internal: stream finished before all tensors");
  uint8_t p[kEndBytes];
  put_u64(p, count_);
  put_u64(p + 8, data_bytes_);
  put_u64(p + 16, frames_);  // frames before END, after the preamble
  put_u64(p + 24, h_->combined.digest());
  struct iovec v{p, sizeof p};
  frame(kFrameEnd, &v, 1, 1);
  finished_ = true;
}

// ---------------------------------------------------------------- Reader

bool looks_like_safetensors(std::span<const uint8_t> b) {
  if (b.size() < 9) return false;
  const uint64_t n = get_u64(b.data());
  if (n == 0 || n > 100'000'000) return false;
  for (size_t i = 8; i < b.size(); ++i) {
    const uint8_t c = b[i];
    if (c == '{') return true;
    if (c != ' ' && c != '\t' && c != '\n' && c != '\r') return false;
  }
  return false;
}

Reader::Reader(io::Source& src, std::string name) : src_(src), name_(std::move(name)), h_(new Hashes) {
  uint8_t pre[kPreambleBytes];
  const size_t got = src_.read_full(pre, sizeof pre);
  if (got == 0) corrupt("empty input: no stream (did the previous stage fail?)");
  if (got < 8 || std::memcmp(pre, kMagic, 8) != 0) {
    if (looks_like_safetensors({pre, got}))
      corrupt("this is a safetensors file, not an st-stream; read it with st-list FILE");
    corrupt("not an st-stream (bad magic number)");
  }
  if (got < sizeof pre) corrupt("stream truncated inside the preamble");
  const uint16_t major = get_u16(pre + 8), minor = get_u16(pre + 10);
  if (XXH3_64bits(pre, 16) != get_u64(pre + 16)) corrupt("preamble checksum mismatch");
  if (major != kVersionMajor)
    corrupt("stream version " + std::to_string(major) + "." + std::to_string(minor) +
            " is not supported (this tool reads version 1.x)");
  if (get_u32(pre + 12) != 0) corrupt("reserved preamble bytes are not zero");
  next_pos_ = sizeof pre;
  // The manifest is decoded as it arrives (a million tensors make ~100 MB
  // of JSON, never held whole) and hashed on the way; nothing decoded is
  // used unless the frame checksum then matches.
  manifest_header_only_ = true;
  if (read_frame() != kFrameManifest) corrupt("the first frame is not the manifest");
  manifest_header_only_ = false;
  h_->frame.reset();
  h_->frame.update(manifest_hdr_, 16);
  uint64_t left = payload_len_;
  bool cut = false;
  auto more = [&](char* b, size_t n) -> size_t {
    n = static_cast<size_t>(std::min<uint64_t>(n, left));
    const size_t got = n ? src_.read_full(b, n) : 0;
    h_->frame.update(b, got);
    left -= got;
    if (got < n) {
      cut = true;
      left = 0;
    }
    return got;
  };
  std::string invalid;
  try {
    manifest_ = decode_manifest(more);
  } catch (const Error& e) {
    invalid = e.what();
  } catch (const std::bad_alloc&) {  // from a corrupt length, say: the checksum speaks first
    invalid = "out of memory while decoding the manifest";
  }
  char rest[4096];  // what the parser left unread (after an error), for the checksum
  while (left > 0) more(rest, sizeof rest);
  const size_t pad = padding_for(payload_len_);
  if (!cut && src_.read_full(rest, pad) < pad) cut = true;
  if (cut) corrupt("stream truncated inside a frame");
  check_padding(reinterpret_cast<const uint8_t*>(rest), pad);
  if (h_->frame.digest() != get_u64(manifest_hdr_ + 16)) corrupt("frame checksum mismatch (corrupt stream)");
  if (!invalid.empty()) corrupt(invalid);
}

Reader::~Reader() = default;

void Reader::splice_data_to(std::function<SpliceTarget(uint32_t, uint64_t)> target) {
  splice_target_ = std::move(target);
}

void Reader::check_padding(const uint8_t* p, size_t n) const {
  for (size_t i = 0; i < n; ++i)
    if (p[i] != 0) corrupt("frame padding is not zero");
}

void Reader::corrupt(const std::string& what) const {
  std::string where = name_ + ": ";
  if (frame_no_ > 0) where += "frame " + std::to_string(frame_no_) + " at byte " + std::to_string(pos_) + ": ";
  fail(where + what);
}

uint32_t Reader::read_frame() {
  for (;;) {
    uint8_t hdr[kFrameHeaderBytes];
    pos_ = next_pos_;  // messages about this frame point at its start
    ++frame_no_;
    const size_t got = src_.read_full(hdr, sizeof hdr);
    if (got == 0) corrupt("stream truncated: it ends without an END frame (did the previous stage fail?)");
    if (got < sizeof hdr) corrupt("stream truncated inside a frame header");
    const uint32_t type = get_u32(hdr);
    const uint32_t flags = get_u32(hdr + 4);
    const uint64_t len = get_u64(hdr + 8);
    uint64_t limit = 0;
    switch (type) {
      case kFrameManifest: limit = kMaxManifestBytes; break;
      case kFrameData: limit = kDataSubheaderBytes + kMaxChunkBytes; break;
      case kFrameTensorEnd: limit = kTensorEndBytes; break;
      case kFrameEnd: limit = kEndBytes; break;
      case kFrameAbort: limit = kMaxAbortBytes; break;
      default:
        if (type < kFirstSkippableType) corrupt("unknown frame type " + std::to_string(type) + " (corrupt stream?)");
        limit = kMaxSkippableBytes;
    }
    if (len > limit) corrupt("frame length " + std::to_string(len) + " exceeds the limit of " + std::to_string(limit));
    if (flags != 0) corrupt("reserved frame flags are not zero (corrupt stream?)");
    const size_t pad = padding_for(len);
    const size_t total = static_cast<size_t>(len) + pad;
    if (manifest_header_only_ && type == kFrameManifest) {  // the constructor reads the rest
      std::memcpy(manifest_hdr_, hdr, sizeof hdr);
      payload_len_ = len;
      next_pos_ = pos_ + sizeof hdr + total;
      return type;
    }
    // A DATA frame's bytes may stay in the pipe, to be spliced by next().
    data_deferred_ = type == kFrameData && splice_target_ && len > kDataSubheaderBytes && src_.can_splice();
    const size_t want = data_deferred_ ? kDataSubheaderBytes : total;
    // Memory follows the bytes that actually arrive, not the length a frame
    // claims: a 256 MiB manifest claim followed by nothing costs 1 MiB.
    constexpr size_t kFirstStep = 1u << 20;
    buf_.resize(std::min(want, std::max(kFirstStep, buf_.capacity())));
    for (size_t have = 0;;) {
      const size_t n = src_.read_full(buf_.data() + have, buf_.size() - have);
      have += n;
      if (have < buf_.size()) corrupt("stream truncated inside a frame");
      if (have == want) break;
      buf_.resize(std::min(want, buf_.size() * 2));
    }
    if (!data_deferred_) check_padding(buf_.data() + len, pad);
    // A DATA frame's checksum covers its sub-header; the sub-header's data
    // checksum covers the data (checked in next()).
    const uint64_t hashed = type == kFrameData ? std::min<uint64_t>(len, kDataSubheaderBytes) : len;
    h_->frame.reset();
    h_->frame.update(hdr, 16);
    h_->frame.update(buf_.data(), hashed);
    if (h_->frame.digest() != get_u64(hdr + 16)) corrupt("frame checksum mismatch (corrupt stream)");
    payload_len_ = len;
    next_pos_ = pos_ + sizeof hdr + total;
    if (type >= kFirstSkippableType) continue;  // extension frames: checked, then ignored
    if (type == kFrameAbort) throw UpstreamFailed();
    return type;
  }
}

Event Reader::next() {
  if (ended_) throw Error("internal: read past the END frame");
  const uint32_t type = read_frame();
  const auto& ts = manifest_.tensors;
  Event ev;
  switch (type) {
    case kFrameData: {
      if (payload_len_ <= kDataSubheaderBytes) corrupt("DATA frame without data");
      const uint32_t index = get_u32(buf_.data());
      const uint64_t offset = get_u64(buf_.data() + 8);
      const uint64_t n = payload_len_ - kDataSubheaderBytes;
      if (get_u32(buf_.data() + 4) != 0) corrupt("reserved DATA bytes are not zero");
      if (current_ >= ts.size() || index != current_)
        corrupt("DATA for tensor #" + std::to_string(index) + " where tensor #" + std::to_string(current_) + " was due");
      if (offset != received_) corrupt("DATA offset " + std::to_string(offset) + " where " + std::to_string(received_) + " was due");
      if (n > ts.nbytes(index) - received_) corrupt("more data than tensor '" + std::string(ts.name(index)) + "' holds");
      const uint64_t data_hash = get_u64(buf_.data() + 16);
      h_->tensor.update(buf_.data() + 16, 8);
      size_t start = kDataSubheaderBytes;  // where the bytes read here begin in buf_
      if (data_deferred_) {
        const SpliceTarget t = splice_target_(index, offset);
        static const std::string kOutput = "output";
        while (ev.spliced < n) {
          const size_t k = src_.splice_some(t.fd, t.name ? *t.name : kOutput, t.pos + ev.spliced, n - ev.spliced);
          if (k == 0) break;
          ev.spliced += k;
        }
        if (ev.spliced < n && src_.can_splice()) corrupt("stream truncated inside a frame");
        // What is left (all of it if the kernel refused to splice) and the padding.
        const size_t rest = static_cast<size_t>(n - ev.spliced), pad = padding_for(payload_len_);
        buf_.resize(rest + pad);
        if (src_.read_full(buf_.data(), buf_.size()) < buf_.size()) corrupt("stream truncated inside a frame");
        check_padding(buf_.data() + rest, pad);
        start = 0;
      }
      if (ev.spliced == 0 && hash::xxh3(buf_.data() + start, n) != data_hash)
        corrupt("data checksum mismatch in tensor '" + std::string(ts.name(index)) + "' (corrupt stream)");
      received_ += n;
      data_bytes_ += n;
      ev.kind = Event::Kind::Data;
      ev.tensor = index;
      ev.offset = offset;
      ev.data = {buf_.data() + start, static_cast<size_t>(n - ev.spliced)};
      ev.hash = data_hash;
      return ev;
    }
    case kFrameTensorEnd: {
      if (payload_len_ != kTensorEndBytes) corrupt("TENSOR_END frame has the wrong size");
      const uint32_t index = get_u32(buf_.data());
      if (get_u32(buf_.data() + 4) != 0) corrupt("reserved TENSOR_END bytes are not zero");
      if (current_ >= ts.size() || index != current_) corrupt("TENSOR_END for an unexpected tensor");
      const uint64_t nbytes = ts.nbytes(index);
      const std::string_view name = ts.name(index);
      if (get_u64(buf_.data() + 8) != nbytes || received_ != nbytes)
        corrupt("tensor '" + std::string(name) + "' ended after " + std::to_string(received_) + " of " + std::to_string(nbytes) + " bytes");
      const uint64_t hash = get_u64(buf_.data() + 16);
      if (h_->tensor.digest() != hash) corrupt("tensor '" + std::string(name) + "' checksum mismatch");
      uint8_t le[8];
      put_u64(le, hash);
      h_->combined.update(le, 8);
      h_->tensor.reset();
      ++current_;
      received_ = 0;
      ev.kind = Event::Kind::TensorEnd;
      ev.tensor = index;
      ev.hash = hash;
      return ev;
    }
    case kFrameEnd: {
      if (payload_len_ != kEndBytes) corrupt("END frame has the wrong size");
      if (current_ != ts.size())
        corrupt("END frame after " + std::to_string(current_) + " of " + std::to_string(ts.size()) + " tensors");
      if (get_u64(buf_.data()) != ts.size() || get_u64(buf_.data() + 8) != data_bytes_ ||
          get_u64(buf_.data() + 16) != frame_no_ - 1)
        corrupt("END frame counts do not match the stream");
      if (get_u64(buf_.data() + 24) != h_->combined.digest()) corrupt("END frame checksum of tensor checksums mismatch");
      uint8_t extra;
      pos_ = next_pos_;
      if (src_.read_full(&extra, 1) != 0) corrupt("unexpected data after the END frame");
      ended_ = true;
      ev.kind = Event::Kind::End;
      return ev;
    }
    case kFrameManifest: corrupt("a second manifest frame");
    default: corrupt("unexpected frame type");
  }
}

}  // namespace st::stream
