// What a model is on disk: one .safetensors file, several (shards), an index
// (model.safetensors.index.json, safetensors-format.md §6) or a folder.
// Resolves st-list's arguments to the files to read, and checks an index
// against the shards it names. Nothing here reads tensor data.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

namespace st::model_input {

// An index's weight_map: tensor -> shard file (an index into
// ModelInput::map_files), in the index's order. The names lie one after
// another in one string, 16 bytes an entry besides: a million entries of
// their own strings cost some 90 bytes each.
class WeightMap {
 public:
  void reserve(size_t entries, size_t name_bytes) {
    names_.reserve(name_bytes);
    entries_.reserve(entries);
  }
  void add(std::string_view tensor, uint32_t file) {
    entries_.push_back({names_.size(), static_cast<uint32_t>(tensor.size()), file});
    names_.append(tensor);
  }
  size_t size() const { return entries_.size(); }
  bool empty() const { return entries_.empty(); }
  std::string_view tensor(size_t i) const { return std::string_view(names_).substr(entries_[i].at, entries_[i].size); }
  uint32_t file(size_t i) const { return entries_[i].file; }
  void set_file(size_t i, uint32_t file) { entries_[i].file = file; }
  void clear() {
    std::string().swap(names_);
    std::vector<Entry>().swap(entries_);
  }

 private:
  struct Entry {
    uint64_t at;
    uint32_t size, file;
  };
  std::string names_;
  std::vector<Entry> entries_;
};

struct ModelInput {
  std::vector<std::string> files;  // in stream order (an index's shards: name order)
  std::string dir;                 // the model folder when a folder or an index was given
  std::string index;               // the index file, or ""
  WeightMap weight_map;  // the index's, or empty
  std::vector<std::string> map_files;  // the index's shards as paths; `files` before any is left out
  bool several() const { return files.size() > 1 || !index.empty(); }
};

// One FILE.safetensors, several, one *.index.json, or one folder. Throws
// st::Error naming the argument for an unusable one (an index that is not
// valid JSON, has no weight_map, or names a shard outside its folder; a
// folder with no model files); a usage error for a folder or index given
// with other arguments.
// With `problems`, a weight_map entry naming an unusable shard is recorded
// there and left out instead (st-scales reports them all).
ModelInput resolve(const std::vector<std::string>& args, std::vector<std::string>* problems = nullptr);

// An index's shard files that do not exist (regular files), as messages.
std::vector<std::string> missing_shards(const ModelInput& in);

// Where an index and the shards' contents disagree, as messages: a tensor
// the index puts in a shard that does not hold it, and a tensor of a shard
// that the index does not list there. The shards hold `count` tensors,
// the k-th named name(k), in files[file(k)], in file order.
std::vector<std::string> index_problems(const ModelInput& in, size_t count,
                                        const std::function<std::string_view(size_t)>& name,
                                        const std::function<uint32_t(size_t)>& file);

}  // namespace st::model_input
