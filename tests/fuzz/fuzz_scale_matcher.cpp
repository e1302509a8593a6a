// Fuzz target: the scale matcher (scales::match) and the check of a recorded
// pairing (scales::validate), on a manifest decoded from the input.
//
// Input: MANIFEST_JSON [ '\0' OPTIONS [ '\0' MARKER ]... ]. The bytes before
// the first NUL are the manifest (a manifest cannot contain a raw NUL).
// OPTIONS, when present, is up to 3 bytes: block rows, block cols (0 means 1)
// and flags (bit 0 keep_scales, bit 1 strict, bits 2-4 u8_as, bits 5-7
// convention); without them the block override is picked from a small table
// by the input's size. Each MARKER is the content of the next comfy_quant
// marker tensor of the manifest, in order; markers with no content given get
// {"format":"float8_e4m3fn"}.
//
// Steps: decode_manifest (st::Error is a normal outcome); validate() of the
// manifest's own `matching`, if any (st::Error is normal: it is untrusted);
// then match() with default options and with the block override. For each
// match() result:
//  - if it has no fatal problem (scales::is_fatal, as st-dequant checks it),
//    validate() must accept it: st-dequant validates the pairing st-scales
//    recorded, so a throw here is a pipeline that fails on a good file;
//  - the manifest with the matching is encoded and decoded again (as it
//    travels from st-scales to st-dequant), and must still validate;
//  - the text and JSON reports are printed (to nowhere).
// A result with fatal problems is still given to validate(), where an
// st::Error is expected.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ostream>
#include <streambuf>
#include <string>
#include <string_view>
#include <vector>

#include "error.hpp"
#include "forget_interned.hpp"
#include "manifest.hpp"
#include "scales.hpp"

namespace {

namespace sc = st::scales;

class NullBuf : public std::streambuf {
 protected:
  int overflow(int c) override { return c == EOF ? 0 : c; }
  std::streamsize xsputn(const char*, std::streamsize n) override { return n; }
};

[[noreturn]] void finding(const char* what, const std::string& detail) {
  std::fprintf(stderr, "fuzz_scale_matcher: %s: %s\n", what, detail.c_str());
  std::abort();
}

void check(const st::stream::Manifest& m, const sc::MarkerData& markers, const sc::Options& opt) {
  st::stream::Matching mt;
  try {
    mt = sc::match(m, markers, opt);
  } catch (const st::Error& e) {
    // Only a bad --convention (a usage error) may be refused.
    if (e.kind() != st::ErrorKind::Usage) finding("match() threw", e.what());
    return;
  }
  bool fatal = false;
  for (const auto& p : mt.problems) fatal |= sc::is_fatal(p);
  try {
    sc::validate(m, mt);
  } catch (const st::Error& e) {
    if (!fatal) finding("validate() refused match()'s own result", e.what());
  }

  NullBuf nb;
  std::ostream null(&nb);
  const sc::ScaleValues values = [](size_t scale) {
    return scale % 2 ? std::vector<float>{0.5f, NAN, 2.0f} : std::vector<float>{};
  };
  sc::print_report(null, m, mt, values);
  sc::print_json(null, "fuzz", m, mt, values, sc::needs_attention(mt, opt.strict));

  // The manifest as st-scales writes it, read back as st-dequant reads it.
  st::stream::Manifest out = m;
  out.matching = mt;
  std::string json;
  try {
    json = st::stream::encode_manifest(out);
  } catch (const st::Error& e) {
    finding("encode_manifest() threw", e.what());
  }
  st::stream::Manifest back;
  try {
    back = st::stream::decode_manifest(json);
  } catch (const st::Error& e) {
    finding("a manifest written by encode_manifest() does not decode", e.what());
  }
  if (!back.matching) finding("the matching was lost in encoding", "");
  if (back.tensors.size() != m.tensors.size() || back.matching->pairs.size() != mt.pairs.size() ||
      back.matching->drop != mt.drop)
    finding("the manifest changed in encoding", "");
  if (!fatal) try {
      sc::validate(back, *back.matching);
    } catch (const st::Error& e) {
      finding("validate() refused the re-decoded matching", e.what());
    }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const ForgetInterned forget;  // last to go
  const std::string_view in(reinterpret_cast<const char*>(data), size);
  const size_t nul = in.find('\0');
  const std::string_view json = in.substr(0, nul);
  std::string_view rest = nul == std::string_view::npos ? std::string_view() : in.substr(nul + 1);

  st::stream::Manifest m;
  try {
    m = st::stream::decode_manifest(json);
  } catch (const st::Error&) {
    return 0;
  }

  if (m.matching) try {
      sc::validate(m, *m.matching);
    } catch (const st::Error&) {
    }

  // Options and marker contents from the rest of the input.
  sc::Options over;
  std::string_view opts = rest.substr(0, rest.find('\0'));
  if (nul != std::string_view::npos && !opts.empty()) {
    auto byte = [&](size_t i) -> unsigned { return i < opts.size() ? static_cast<unsigned char>(opts[i]) : 0; };
    over.block = sc::BlockSize{byte(0) ? byte(0) : 1, byte(1) ? byte(1) : 1};
    const unsigned flags = byte(2);
    over.keep_scales = flags & 1;
    over.strict = flags & 2;
    static const st::Dtype kU8As[] = {st::Dtype::F8_E4M3, st::Dtype::F8_E5M2, st::Dtype::F8_E4M3FNUZ,
                                      st::Dtype::F8_E5M2FNUZ};
    const unsigned u8 = (flags >> 2) & 7;
    if (u8 >= 1 && u8 <= 4) over.u8_as = kU8As[u8 - 1];
    const auto names = sc::convention_names();
    const unsigned conv = flags >> 5;
    if (conv >= 1 && conv <= names.size()) over.convention = names[conv - 1];
  } else {
    static const sc::BlockSize kBlocks[] = {{1, 32}, {1, 128}, {64, 64}, {128, 128}, {1, 16}, {32, 32}, {3, 7}, {2, 2}};
    over.block = kBlocks[size % 8];
  }
  rest = rest.size() > opts.size() ? rest.substr(opts.size() + 1) : std::string_view();

  sc::MarkerData markers;
  static const std::string_view kDefaultMarker = R"({"format":"float8_e4m3fn"})";
  for (const auto& t : m.tensors) {
    if (!sc::is_marker_tensor(t)) continue;
    std::string_view content = kDefaultMarker;
    if (nul != std::string_view::npos && !rest.empty()) {
      const size_t end = rest.find('\0');
      content = rest.substr(0, end);
      rest = end == std::string_view::npos ? std::string_view() : rest.substr(end + 1);
    }
    markers[std::string(t.name)].assign(content.begin(), content.end());
  }

  check(m, markers, sc::Options{});
  check(m, markers, over);
  return 0;
}
