// A .safetensors file as the start of a pipeline: its manifest (scales
// first), its tensors streamed in chunks with bounded memory, a human table.
#pragma once

#include <memory>
#include <mutex>
#include <ostream>
#include <set>
#include <string>
#include <vector>

#include "io.hpp"
#include "model_input.hpp"
#include "safetensors.hpp"
#include "scales.hpp"
#include "stream.hpp"

namespace st::source {

// What st-list selects and checks.
struct ListOptions {
  std::vector<std::string> include;  // shell globs on full names; empty: all
  std::vector<std::string> exclude;  // applied after include
  bool sha256 = false;               // compute the file's SHA-256 while streaming
  std::string expect_sha256;         // lowercase hex; a mismatch fails before END
  // An index that disagrees with its shards (or names a missing shard) is
  // an error, unless this is set: then the problems are only recorded
  // (index_problems()) and missing shards left out, for st-scales' report.
  bool lenient_index = false;
  // Headers only (--table, --json): config.json is not read, so a broken
  // one beside the file does not stop a listing of its tensors.
  bool headers_only = false;
};

// Where a tensor's bytes are in its file, relative to the data section.
struct Span {
  uint64_t begin, end;
  uint64_t nbytes() const { return end - begin; }
};

class SafetensorsSource {
 public:
  // Validates every header (and an index against its shards); selects
  // tensors (a scale, activation scale or marker follows the selection of
  // the weight it belongs to). Nothing is written yet.
  SafetensorsSource(model_input::ModelInput input, const ListOptions& opt = {});
  explicit SafetensorsSource(const std::string& path, const ListOptions& opt = {});
  ~SafetensorsSource();
  SafetensorsSource(const SafetensorsSource&) = delete;  // index_ refers to manifest_
  SafetensorsSource& operator=(const SafetensorsSource&) = delete;

  // Tensors in the order st-list emits them: markers and weight scales
  // first, then the rest in file order, file after file (st-dequant needs a
  // scale before its weight's data, whichever shard holds it). Carries the
  // quantization_config of a config.json beside the (first) file.
  const stream::Manifest& manifest() const { return manifest_; }
  uint64_t input_bytes() const;  // the files' sizes, summed

  // Writes the whole stream: preamble, manifest, tensors, END. With sha256
  // or expect_sha256, every byte of every file is hashed as it is read
  // (unselected tensors too); returns the hex digests, one per file ({}
  // otherwise). A digest that differs from expect_sha256 (one file only)
  // fails before the END frame, so no later stage accepts the stream.
  std::vector<std::string> write_stream(stream::Writer& w) const;
  // One tensor's bytes (for small tensors such as scales).
  std::vector<uint8_t> read_tensor(const std::string& name) const;
  // The contents of the marker tensors the matcher reads (comfy_quant).
  scales::MarkerData read_markers() const;
  const std::vector<std::string>& files() const { return input_.files; }
  // With ListOptions::lenient_index: where the index and the shards disagree.
  const std::vector<stream::MatchProblem>& index_problems() const { return index_problems_; }

 private:
  struct Shard {
    std::unique_ptr<io::InputFile> file;
    safetensors::HeaderInfo header;  // metadata and where the data starts
  };
  // Where a table's tensors are, by position: where each one's bytes begin
  // in its file's data section (it ends its size later), and which file
  // holds it (none for one file: 8 bytes a tensor, not 16).
  struct Places {
    std::vector<uint64_t> begin;
    std::vector<uint16_t> shard;  // empty for one file
    uint32_t shard_of(size_t i) const { return shard.empty() ? 0 : shard[i]; }
  };
  struct Place {
    uint32_t shard;
    Span span;
  };
  void drop_repeated_tensors(stream::TensorTable& all, Places& at);
  void keep_only(stream::TensorTable& all, Places& at, const std::vector<uint32_t>& kept);
  uint32_t shard_of(size_t i) const { return at_.shard_of(i); }
  Span span_of(size_t i) const { return {at_.begin[i], at_.begin[i] + manifest_.tensors.nbytes(i)}; }

  model_input::ModelInput input_;
  ListOptions opt_;
  std::vector<Shard> shards_;
  stream::Manifest manifest_;
  Places at_;  // by manifest index
  // Tensors not streamed: left out by --include/--exclude, or repeats
  // dropped under --lenient-index (read_tensor, and --sha256 reads them).
  std::vector<std::pair<std::string, Place>> left_out_;
  mutable std::once_flag index_made_;
  mutable std::unique_ptr<stream::NameIndex> index_;  // for read_tensor: a report reads every scale
  std::vector<stream::MatchProblem> index_problems_;
};

// "NAME DTYPE SHAPE BYTES" table, in file order.
void print_table(std::ostream& out, const safetensors::Header& h);
// The same for a file: only its header is read (no config.json, no data).
// With `only`, just the tensors named there (the selection of a whole model).
void print_file_table(std::ostream& out, const std::string& path, const ListOptions& opt = {},
                      const std::set<std::string>* only = nullptr);
// One JSON document: file, size, header_bytes, metadata (object or null),
// tensors [{name, dtype, shape, bytes, data_offsets, file_offset}] in file order.
void print_file_json(std::ostream& out, const std::string& path, const ListOptions& opt = {},
                     const std::set<std::string>* only = nullptr);

// st-list --table / --json of a model: one file as above; several files as
// one table each after a "==> FILE <==" line (as head(1) does), or a JSON
// array of the per-file documents.
enum class Listing { Table, Json };
void print_files(std::ostream& out, const model_input::ModelInput& input, const ListOptions& opt, Listing how);

}  // namespace st::source
