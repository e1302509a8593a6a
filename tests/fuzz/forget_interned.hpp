// Shapes and source paths are interned for the life of a process (dtype.hpp,
// manifest.hpp). A fuzzer runs millions of inputs in one process, so each
// target frees them after every input, when no object that holds one is
// left: declare this first in LLVMFuzzerTestOneInput.
#pragma once

#include "dtype.hpp"
#include "manifest.hpp"

struct ForgetInterned {
  ForgetInterned() = default;
  ForgetInterned(const ForgetInterned&) = delete;
  ForgetInterned& operator=(const ForgetInterned&) = delete;
  ~ForgetInterned() {
    st::Shape::clear_pool();
    st::stream::SharedString::clear_pool();
  }
};
