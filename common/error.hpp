// Errors that travel up to main(). Library code never exits or prints; it
// throws st::Error and the tool's main() (through st::cli::run) decides the
// exit status from its kind.
#pragma once

#include <stdexcept>
#include <string>

namespace st {

enum class ErrorKind {
  Data,   // bad input file or stream, I/O failure: exit 1
  Usage,  // bad command line: exit 2
};

class Error : public std::runtime_error {
 public:
  explicit Error(std::string message, ErrorKind kind = ErrorKind::Data)
      : std::runtime_error(std::move(message)), kind_(kind) {}
  ErrorKind kind() const { return kind_; }

 private:
  ErrorKind kind_;
};

// The downstream reader went away (EPIPE with SIGPIPE ignored). Not the
// user's problem to read about: stages exit quietly on it.
class BrokenPipe : public Error {
 public:
  BrokenPipe() : Error("broken pipe") {}
};

// The stream carried an ABORT frame: an earlier stage failed and has said
// why; this stage exits 1 without a message of its own.
class UpstreamFailed : public Error {
 public:
  UpstreamFailed() : Error("an earlier stage failed") {}
};

[[noreturn]] inline void fail(std::string message) { throw Error(std::move(message)); }
[[noreturn]] inline void usage_error(std::string message) {
  throw Error(std::move(message), ErrorKind::Usage);
}

}  // namespace st
