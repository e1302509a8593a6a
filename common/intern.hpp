// Values that a table of a million tensors holds few distinct ones of
// (shapes, source paths): one copy each per process, never moved, so a
// table holds a pointer and equal values are the same object. Freed only
// by clear(), for a fuzz target between inputs. Thread-safe (st-convert
// runs its stages as threads).
#pragma once

#include <mutex>
#include <set>

namespace st {

template <class T>
class InternPool {
 public:
  static const T* intern(const T& value) {
    Pool& p = pool();
    std::lock_guard<std::mutex> hold(p.lock);
    return &*p.values.insert(value).first;  // set nodes do not move
  }
  // Only when no pointer that intern() gave is still used.
  static void clear() {
    Pool& p = pool();
    std::lock_guard<std::mutex> hold(p.lock);
    p.values.clear();
  }

 private:
  struct Pool {
    std::mutex lock;
    std::set<T> values;
  };
  static Pool& pool() {
    static Pool* p = new Pool;  // lives to the end: threads may still read at exit
    return *p;
  }
};

}  // namespace st
