// File-system path helpers shared by the modules that name files: plain
// string operations on '/'-separated paths, and the few stat/realpath
// questions they ask.
#pragma once

#include <string>

namespace st::paths {

// The folder part ("." if none, "/" for a file at the root) and the last
// component (trailing '/' ignored) of a path.
std::string dir_name(const std::string& path);
std::string base_name(const std::string& path);
// dir + "/" + name; just name when dir is "" or ".".
std::string join(const std::string& dir, const std::string& name);
bool ends_with(const std::string& s, const std::string& suffix);

bool is_dir(const std::string& path);           // follows links
bool is_regular_file(const std::string& path);  // follows links
// realpath(3), or "" when the path does not resolve.
std::string real_path(const std::string& path);
// realpath(3), or the path as given when it does not resolve.
std::string absolute(const std::string& path);

}  // namespace st::paths
