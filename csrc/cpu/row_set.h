// The hash set of one row's distinct ids during a draw without replacement:
// an IdSetView over slots it owns, which remembers the slots it filled so that
// resetting it for the next row costs what the row used, not the table size.
// Host-only (std::vector); the view itself is shared with the CUDA kernels.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "cpu/alias_draw.h"  // IdSetView, id_set_capacity

namespace pyneg {

class RowSet {
 public:
  void reset(size_t expected) {
    const size_t cap = static_cast<size_t>(id_set_capacity(expected));
    if (slots_.size() != cap) {
      slots_.assign(cap, -1);
    } else {
      for (int64_t s : used_) slots_[static_cast<size_t>(s)] = -1;
    }
    used_.clear();
    view_ = IdSetView{slots_.data(), cap - 1};
  }
  // Inserts id; returns false if it was present.
  bool insert(int64_t id) {
    const int64_t s = view_.insert_slot(id);
    if (s < 0) return false;
    used_.push_back(s);
    return true;
  }
  bool contains(int64_t id) const { return view_.contains(id); }

 private:
  std::vector<int64_t> slots_;
  std::vector<int64_t> used_;
  IdSetView view_{nullptr, 0};
};

}  // namespace pyneg
