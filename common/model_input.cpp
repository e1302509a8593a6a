#include "model_input.hpp"

#include <dirent.h>
#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstdint>
#include <fstream>
#include <iterator>
#include <map>
#include <string_view>

#include "error.hpp"
#include "io.hpp"
#include "json_util.hpp"
#include "paths.hpp"
#include "safetensors.hpp"

namespace st::model_input {

namespace {

constexpr const char* kSuffix = ".safetensors";
constexpr const char* kIndexSuffix = ".safetensors.index.json";

// Names of the regular, non-hidden files of a folder, sorted.
std::vector<std::string> folder_files(const std::string& dir) {
  DIR* d = ::opendir(dir.c_str());
  if (!d) fail(dir + ": cannot read the folder: " + io::errno_text(errno));
  std::vector<std::string> names;
  while (const dirent* e = ::readdir(d)) {
    const std::string n = e->d_name;
    if (n.empty() || n[0] == '.') continue;
    if (paths::is_regular_file(paths::join(dir, n))) names.push_back(n);
  }
  ::closedir(d);
  std::sort(names.begin(), names.end());
  return names;
}

// Hugging Face loads a shard name only if it stays inside the folder (no
// root, drive or "..", read as a Windows path too) and has the index's
// extension; the same here.
// Returns the problem ("" when the name is fine).
std::string shard_name_problem(const std::string& index, const std::string& name) {
  auto bad = [&](const std::string& why) { return index + ": weight_map names shard " + json::quote(name) + ", " + why; };
  if (name.empty()) return bad("an empty name");
  if (name.find('\0') != std::string::npos) return bad("which holds a NUL byte");
  if (name[0] == '/' || name[0] == '\\' || (name.size() > 1 && name[1] == ':'))
    return bad("which is not a relative path");
  std::string part;
  for (size_t i = 0; i <= name.size(); ++i) {
    if (i == name.size() || name[i] == '/' || name[i] == '\\') {
      if (part == "..") return bad("which leaves the model folder");
      part.clear();
    } else {
      part += name[i];
    }
  }
  if (!paths::ends_with(name, kSuffix)) return bad("which is not a .safetensors file");
  return "";
}

ModelInput read_index(const std::string& index, std::vector<std::string>* problems) {
  std::ifstream f(index, std::ios::binary);
  if (!f) fail(index + ": cannot open: " + io::errno_text(errno));
  // Room for a regular file's size first: a growing string would double
  // past it (an index of a million tensors is some 60 MB).
  std::string text;
  if (struct stat sb; ::stat(index.c_str(), &sb) == 0 && S_ISREG(sb.st_mode)) text.reserve(static_cast<size_t>(sb.st_size));
  char piece[1 << 16];
  while (f.read(piece, sizeof piece) || f.gcount() > 0) text.append(piece, static_cast<size_t>(f.gcount()));
  if (f.bad()) fail(index + ": cannot read: " + io::errno_text(errno));
  rapidjson::Document doc;  // its strings point into text
  if (!json::parse_json_in_place(doc, text) || !doc.IsObject()) fail(index + ": not a valid JSON object");
  auto wm = doc.FindMember("weight_map");
  if (wm == doc.MemberEnd() || !wm->value.IsObject()) fail(index + ": no weight_map object");
  ModelInput in;
  in.index = index;
  in.dir = paths::dir_name(index);
  // A handful of shard names for up to a million tensors: each entry keeps
  // its shard's number, renumbered in name order at the end.
  std::map<std::string, uint32_t> shard_ids;  // shard name -> first-seen number
  std::vector<std::string> shard_names;
  in.weight_map.reserve(wm->value.MemberCount(), text.size());  // room the names cannot exceed
  for (auto it = wm->value.MemberBegin(); it != wm->value.MemberEnd(); ++it) {
    const std::string_view tensor(it->name.GetString(), it->name.GetStringLength());
    if (!it->value.IsString()) fail(index + ": weight_map entry " + json::quote(tensor) + " is not a file name");
    const std::string shard(it->value.GetString(), it->value.GetStringLength());
    auto [sid, fresh] = shard_ids.emplace(shard, static_cast<uint32_t>(shard_names.size()));
    if (fresh) {
      if (const std::string why = shard_name_problem(index, shard); !why.empty()) {
        if (!problems) fail(why);
        problems->push_back(why);
        sid->second = UINT32_MAX;  // unusable: its entries are left out (reported once)
        continue;
      }
      shard_names.push_back(shard);
    }
    if (sid->second == UINT32_MAX) continue;
    in.weight_map.add(tensor, sid->second);
  }
  if (shard_names.empty()) fail(index + ": weight_map names no usable shard");
  // Repeated keys: found by sorting positions, not with a set of every name.
  if (const auto r = safetensors::first_repeat(in.weight_map.size(), [&](size_t i) { return in.weight_map.tensor(i); }))
    fail(index + ": weight_map lists " + json::quote(in.weight_map.tensor(r->second)) + " twice");
  std::vector<uint32_t> by_name(shard_names.size());
  for (uint32_t k = 0; k < by_name.size(); ++k) by_name[k] = k;
  std::sort(by_name.begin(), by_name.end(), [&](uint32_t a, uint32_t b) { return shard_names[a] < shard_names[b]; });
  std::vector<uint32_t> renumber(shard_names.size());
  for (uint32_t k = 0; k < by_name.size(); ++k) {
    renumber[by_name[k]] = k;
    in.files.push_back(paths::join(in.dir, shard_names[by_name[k]]));
  }
  for (size_t i = 0; i < in.weight_map.size(); ++i) in.weight_map.set_file(i, renumber[in.weight_map.file(i)]);
  in.map_files = in.files;
  return in;
}

}  // namespace

ModelInput resolve(const std::vector<std::string>& args, std::vector<std::string>* problems) {
  if (args.empty()) usage_error("no input given");
  for (const auto& a : args)
    if (a == "-") usage_error("reading a safetensors file from stdin is not supported (it must be seekable); give its path");
  for (const auto& a : args)
    if ((paths::is_dir(a) || paths::ends_with(a, ".json")) && args.size() > 1)
      usage_error(a + ": a folder or an index is the whole model; give it alone");
  const std::string& first = args.front();
  if (paths::ends_with(first, ".json")) return read_index(first, problems);
  if (paths::is_dir(first)) {
    const auto names = folder_files(first);
    std::vector<std::string> indexes;
    for (const auto& n : names)
      if (paths::ends_with(n, kIndexSuffix)) indexes.push_back(n);
    if (std::find(indexes.begin(), indexes.end(), "model.safetensors.index.json") != indexes.end())
      indexes = {"model.safetensors.index.json"};
    if (indexes.size() > 1)
      fail(first + ": several index files (" + indexes[0] + ", " + indexes[1] + "); give the one to read");
    if (indexes.size() == 1) return read_index(paths::join(first, indexes[0]), problems);
    ModelInput in;
    in.dir = first;
    for (const auto& n : names)
      if (paths::ends_with(n, kSuffix)) in.files.push_back(paths::join(first, n));
    if (in.files.empty()) fail(first + ": no .safetensors files in this folder");
    return in;
  }
  ModelInput in;
  in.files = args;
  return in;
}

std::vector<std::string> missing_shards(const ModelInput& in) {
  std::vector<std::string> out;
  if (in.index.empty()) return out;
  for (const auto& f : in.files)
    if (!paths::is_regular_file(f)) out.push_back(in.index + ": names shard " + paths::base_name(f) + ", which does not exist");
  return out;
}

std::vector<std::string> index_problems(const ModelInput& in, size_t count,
                                        const std::function<std::string_view(size_t)>& name,
                                        const std::function<uint32_t(size_t)>& file) {
  std::vector<std::string> out;
  if (in.index.empty()) return out;
  // Positions sorted by name on both sides (4 bytes an entry), not maps or
  // copies of names: an index may list a million tensors. The first of a
  // name held twice is the one that counts (the sort is stable).
  const std::vector<uint32_t> held = safetensors::positions_by_name(count, name);
  auto listed_name = [&](size_t i) { return in.weight_map.tensor(i); };
  const std::vector<uint32_t> listed = safetensors::positions_by_name(in.weight_map.size(), listed_name);
  std::vector<bool> exists(in.map_files.size());
  for (size_t k = 0; k < exists.size(); ++k) {
    struct stat sb;
    exists[k] = ::stat(in.map_files[k].c_str(), &sb) == 0;
  }
  for (size_t e = 0; e < in.weight_map.size(); ++e) {
    const uint32_t id = in.weight_map.file(e);
    if (!exists[id]) continue;  // a missing shard is reported once, by missing_shards
    const std::string& map_file = in.map_files[id];
    const std::string_view t = in.weight_map.tensor(e);
    const long k = safetensors::find_by_name(held, name, t);
    if (k < 0)
      out.push_back(in.index + ": names tensor " + json::quote(t) + " in " + paths::base_name(map_file) +
                    ", which does not hold it");
    else if (in.files[file(static_cast<size_t>(k))] != map_file)
      out.push_back(in.index + ": names tensor " + json::quote(t) + " in " + paths::base_name(map_file) + ", but it is in " +
                    paths::base_name(in.files[file(static_cast<size_t>(k))]));
  }
  for (size_t k = 0; k < count; ++k) {
    const std::string_view n = name(k);
    if (safetensors::find_by_name(listed, listed_name, n) < 0) out.push_back(in.files[file(k)] + ": tensor " + json::quote(n) + " is not in the index " + paths::base_name(in.index));
  }
  return out;
}

}  // namespace st::model_input
