// The model's config.json beside a checkpoint: its quantization_config says
// the block size of DeepSeek/Qwen weight_scale_inv grids
// (`weight_block_size`) and of compressed-tensors scales (`block_structure`,
// `group_size`).
#pragma once

#include <cstdint>
#include <optional>
#include <string>

namespace st::model_config {

// The quantization_config object of the config.json in the directory of
// `model_path`, as compact JSON text; "" when there is none. A config.json
// that is not valid JSON is an error (it would otherwise be silently ignored).
std::string read_quantization_config(const std::string& model_path);

struct QuantSizes {
  std::optional<std::pair<uint64_t, uint64_t>> block;  // [rows, cols]
  std::optional<uint64_t> group;                       // along a row
};

// Block and group sizes named by a quantization_config ("" gives none).
QuantSizes quant_sizes(const std::string& quantization_config);

// config.json for the converted model: quantization_config removed (also in
// a nested text_config/...: any object member of that name), torch_dtype
// set to `torch_dtype` ("bfloat16", ...) and `dtype` too where present;
// every other member unchanged, in its order; two-space indent and a final
// newline. `path` names the file in errors.
std::string converted_config(const std::string& path, const std::string& text, const std::string& torch_dtype);

}  // namespace st::model_config
