#include "cpu/ring_index.h"

#include <algorithm>
#include <cstring>
#include <stdexcept>
#include <string>

#include "cpu/ids.h"

namespace pyneg {

void copy_ring_rows(unsigned char* dst, const unsigned char* src, int64_t row_bytes, const RingWrite& w) {
  const auto bytes = [row_bytes](int64_t rows) { return static_cast<size_t>(rows * row_bytes); };
  std::memcpy(dst + bytes(w.dst_begin), src + bytes(w.src_begin), bytes(w.first));
  if (w.second > 0) std::memcpy(dst, src + bytes(w.src_begin + w.first), bytes(w.second));
}

RingIndex::RingIndex(int64_t capacity) : capacity_(capacity) {
  if (capacity <= 0 || capacity > kMaxRingCapacity) {
    throw std::invalid_argument("capacity must be in [1, " + std::to_string(kMaxRingCapacity) +
                                "], got " + std::to_string(capacity));
  }
}

RingWrite RingIndex::push(const int64_t* ids, int64_t n) {
  check_non_negative_ids(ids, n, "ids");
  RingWrite w;
  const int64_t kept = std::min(n, capacity_);
  w.src_begin = n - kept;
  w.dst_begin = head_;
  w.first = std::min(kept, capacity_ - head_);
  w.second = kept - w.first;
  size_ = std::min(size_ + kept, capacity_);
  head_ = (head_ + kept) % capacity_;
  return w;
}

void RingIndex::restore(const int64_t* ids, const int64_t* steps, int64_t n, int64_t head) {
  if (n < 0 || n > capacity_) {
    throw std::invalid_argument("cannot restore " + std::to_string(n) + " entries into a bank of capacity " +
                                std::to_string(capacity_));
  }
  if (head < 0 || head >= capacity_ || (n < capacity_ && head != n)) {
    throw std::invalid_argument("head " + std::to_string(head) + " is impossible for " + std::to_string(n) +
                                " entries in a bank of capacity " + std::to_string(capacity_));
  }
  check_non_negative_ids(ids, n, "ids");
  for (int64_t i = 1; i < n; ++i) {
    if (steps[i] < steps[i - 1]) throw std::invalid_argument("steps must not decrease from oldest to newest");
  }
  size_ = n;
  head_ = n < capacity_ ? n : head;
}

}  // namespace pyneg
