#include "cpu/ring_index.h"

#include <algorithm>
#include <cstring>
#include <stdexcept>
#include <string>

#include "cpu/hash.h"
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
  const auto m = static_cast<size_t>(capacity);
  slot_id_.assign(m, kEmpty);
  slot_step_.assign(m, 0);
  next_.assign(m, -1);
  uint64_t table_size = 16;
  while (table_size < 2 * static_cast<uint64_t>(capacity)) table_size <<= 1;
  table_.assign(table_size, Entry{kEmpty, -1, -1});
  mask_ = table_size - 1;
}

uint64_t RingIndex::home(int64_t id) const { return mix64(static_cast<uint64_t>(id)) & mask_; }

int64_t RingIndex::find(int64_t id) const {
  for (uint64_t pos = home(id);; pos = (pos + 1) & mask_) {
    const int64_t here = table_[pos].id;
    if (here == id) return static_cast<int64_t>(pos);
    if (here == kEmpty) return -1;  // the load factor <= 1/2 guarantees an empty entry
  }
}

void RingIndex::link(int64_t id, int64_t slot) {
  next_[static_cast<size_t>(slot)] = -1;
  uint64_t pos = home(id);
  while (table_[pos].id != kEmpty && table_[pos].id != id) pos = (pos + 1) & mask_;
  Entry& e = table_[pos];
  if (e.id == kEmpty) {
    e = Entry{id, static_cast<int32_t>(slot), static_cast<int32_t>(slot)};
  } else {
    next_[static_cast<size_t>(e.last)] = static_cast<int32_t>(slot);
    e.last = static_cast<int32_t>(slot);
  }
}

void RingIndex::unlink(int64_t slot) {
  // The evicted slot is the oldest entry of the bank, hence of its id's chain.
  const int64_t pos = find(slot_id_[static_cast<size_t>(slot)]);
  Entry& e = table_[static_cast<size_t>(pos)];
  e.first = next_[static_cast<size_t>(slot)];
  if (e.first < 0) erase_at(static_cast<uint64_t>(pos));
}

// Backward-shift deletion: moves later entries of the probe run into the hole
// unless their home lies cyclically in (hole, j], so lookups never need tombstones.
void RingIndex::erase_at(uint64_t hole) {
  uint64_t j = hole;
  for (;;) {
    j = (j + 1) & mask_;
    if (table_[j].id == kEmpty) break;
    const uint64_t k = home(table_[j].id);
    const bool stays = hole <= j ? (hole < k && k <= j) : (hole < k || k <= j);
    if (stays) continue;
    table_[hole] = table_[j];
    hole = j;
  }
  table_[hole].id = kEmpty;
}

void RingIndex::push_one(int64_t id, int64_t step) {
  const int64_t slot = head_;
  if (size_ == capacity_) {
    unlink(slot);
  } else {
    ++size_;
  }
  slot_id_[static_cast<size_t>(slot)] = id;
  slot_step_[static_cast<size_t>(slot)] = step;
  link(id, slot);
  head_ = slot + 1 == capacity_ ? 0 : slot + 1;
}

RingWrite RingIndex::push(const int64_t* ids, int64_t n, int64_t step) {
  check_non_negative_ids(ids, n, "ids");
  RingWrite w;
  const int64_t kept = std::min(n, capacity_);
  w.src_begin = n - kept;
  w.dst_begin = head_;
  w.first = std::min(kept, capacity_ - head_);
  w.second = kept - w.first;
  for (int64_t i = w.src_begin; i < n; ++i) push_one(ids[i], step);
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
  clear();
  head_ = n < capacity_ ? 0 : head;  // the oldest entry's slot
  for (int64_t i = 0; i < n; ++i) push_one(ids[i], steps[i]);
}

void RingIndex::clear() {
  size_ = 0;
  head_ = 0;
  for (Entry& e : table_) e.id = kEmpty;
}

bool RingIndex::find_hits(const int64_t* positives, int64_t b, int64_t min_step, int64_t max_pairs,
                          std::vector<int64_t>* rows, std::vector<int64_t>* slots) const {
  check_non_negative_ids(positives, b, "positive_ids");
  int64_t found = 0;
  for (int64_t r = 0; r < b; ++r) {
    const int64_t pos = find(positives[r]);
    if (pos < 0) continue;
    for (int32_t s = table_[static_cast<size_t>(pos)].first; s >= 0; s = next_[static_cast<size_t>(s)]) {
      if (slot_step_[static_cast<size_t>(s)] < min_step) continue;
      if (++found > max_pairs) {
        rows->clear();
        slots->clear();
        return false;
      }
      rows->push_back(r);
      slots->push_back(s);
    }
  }
  return true;
}

}  // namespace pyneg
