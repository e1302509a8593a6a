// What a model is on disk: one .safetensors file, several (shards), an index
// (model.safetensors.index.json, safetensors-format.md §6) or a folder.
// Resolves st-list's arguments to the files to read, and checks an index
// against the shards it names. Nothing here reads tensor data.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace st::model_input {

struct ModelInput {
  std::vector<std::string> files;  // in stream order (an index's shards: name order)
  std::string dir;                 // the model folder when a folder or an index was given
  std::string index;               // the index file, or ""
  // tensor -> shard file (an index into map_files), in the index's order:
  // a million entries need not each hold a copy of a path.
  std::vector<std::pair<std::string, uint32_t>> weight_map;
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
// that the index does not list there. names[i]: the tensors of files[i].
std::vector<std::string> index_problems(const ModelInput& in,
                                        const std::vector<std::vector<std::string>>& names);

}  // namespace st::model_input
