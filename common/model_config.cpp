#include "model_config.hpp"

#include <rapidjson/document.h>
#include <rapidjson/stringbuffer.h>
#include <rapidjson/prettywriter.h>
#include <rapidjson/writer.h>

#include <fstream>
#include <sstream>

#include "error.hpp"
#include "json_util.hpp"
#include "paths.hpp"

namespace st::model_config {

namespace {

std::optional<uint64_t> positive(const rapidjson::Value& v) {
  if (v.IsUint64() && v.GetUint64() > 0) return v.GetUint64();
  return std::nullopt;
}

std::optional<std::pair<uint64_t, uint64_t>> pair_of(const rapidjson::Value& v) {
  if (!v.IsArray() || v.Size() != 2) return std::nullopt;
  auto a = positive(v[0]), b = positive(v[1]);
  if (!a || !b) return std::nullopt;
  return std::make_pair(*a, *b);
}

}  // namespace

std::string read_quantization_config(const std::string& model_path) {
  const std::string path = paths::dir_name(model_path) + "/config.json";
  if (!paths::is_regular_file(path)) return "";
  std::ifstream in(path, std::ios::binary);
  std::stringstream text;
  text << in.rdbuf();
  rapidjson::Document doc;
  if (!json::parse_json(doc, text.str()) || !doc.IsObject())
    fail(path + ": not valid JSON (it holds the model's quantization settings)");
  // A key written twice: the last counts, as transformers (Python's json)
  // reads it, and the stream's manifest may not repeat a key.
  json::keep_last_of_repeated_keys(doc);
  auto it = doc.FindMember("quantization_config");
  if (it == doc.MemberEnd() || !it->value.IsObject()) return "";
  rapidjson::StringBuffer sb2;
  rapidjson::Writer<rapidjson::StringBuffer> w(sb2);
  it->value.Accept(w);
  return std::string(sb2.GetString(), sb2.GetSize());
}

QuantSizes quant_sizes(const std::string& qc) {
  QuantSizes out;
  if (qc.empty()) return out;
  rapidjson::Document doc;
  if (!json::parse_json(doc, qc) || !doc.IsObject()) return out;
  if (auto it = doc.FindMember("weight_block_size"); it != doc.MemberEnd()) out.block = pair_of(it->value);
  // compressed-tensors: config_groups.<name>.weights.{block_structure, group_size}
  if (auto g = doc.FindMember("config_groups"); g != doc.MemberEnd() && g->value.IsObject()) {
    for (auto grp = g->value.MemberBegin(); grp != g->value.MemberEnd(); ++grp) {
      if (!grp->value.IsObject()) continue;
      auto w = grp->value.FindMember("weights");
      if (w == grp->value.MemberEnd() || !w->value.IsObject()) continue;
      if (auto b = w->value.FindMember("block_structure"); b != w->value.MemberEnd() && !out.block)
        out.block = pair_of(b->value);
      if (auto gs = w->value.FindMember("group_size"); gs != w->value.MemberEnd() && !out.group)
        out.group = positive(gs->value);
    }
  }
  return out;
}

namespace {

void strip_quantization(rapidjson::Value& v) {
  if (v.IsObject()) {
    if (auto it = v.FindMember("quantization_config"); it != v.MemberEnd())
      v.EraseMember(it);  // EraseMember keeps the others' order (RemoveMember moves the last one up)
    for (auto it = v.MemberBegin(); it != v.MemberEnd(); ++it) strip_quantization(it->value);
  } else if (v.IsArray()) {
    for (auto& e : v.GetArray()) strip_quantization(e);
  }
}

}  // namespace

std::string converted_config(const std::string& path, const std::string& text, const std::string& torch_dtype) {
  rapidjson::Document doc;
  if (json::within_depth(text))  // full precision: every number written back as it was read
    doc.Parse<rapidjson::kParseIterativeFlag | rapidjson::kParseFullPrecisionFlag>(text.data(), text.size());
  if (!json::within_depth(text) || doc.HasParseError() || !doc.IsObject()) fail(path + ": not a valid JSON object");
  strip_quantization(doc);
  auto set = [&](const char* key) {
    rapidjson::Value v(torch_dtype.c_str(), static_cast<rapidjson::SizeType>(torch_dtype.size()), doc.GetAllocator());
    if (auto it = doc.FindMember(key); it != doc.MemberEnd()) it->value = v;
    else doc.AddMember(rapidjson::Value(key, doc.GetAllocator()), v, doc.GetAllocator());
  };
  const bool has_dtype = doc.HasMember("dtype");
  if (doc.HasMember("torch_dtype") || !has_dtype) set("torch_dtype");
  if (has_dtype) set("dtype");
  rapidjson::StringBuffer sb;
  rapidjson::PrettyWriter<rapidjson::StringBuffer> w(sb);
  w.SetIndent(' ', 2);
  doc.Accept(w);
  return std::string(sb.GetString(), sb.GetSize()) + "\n";
}

}  // namespace st::model_config
