// Bookkeeping of a FIFO memory bank of capacity M: where the next batch goes,
// which step wrote each slot, and an id -> slots lookup that finds the
// accidental hits of a batch's positives in O(B + hits) instead of O(B * M).
//
// The embeddings themselves live in the Python layer's tensors (any dtype,
// any device); this index tells it which slots to copy into.
//
// Slots fill 0, 1, ..., M-1 and then wrap: while the bank is not full the
// entries sit in slots [0, size) oldest first; once full the oldest entry is
// at slot head() and the newest at head() - 1. Every id has a chain of its
// slots, oldest first (head/tail in an open-addressing table, `next` per
// slot). FIFO eviction always removes the globally oldest entry, which is
// the head of its id's chain, so eviction is O(1) too.
#pragma once

#include <cstdint>
#include <vector>

namespace pyneg {

constexpr int64_t kMaxRingCapacity = (int64_t{1} << 31) - 1;  // slots are int32 in the chains

// Where push() put a batch: source rows [src_begin, src_begin + first) went to
// slots [dst_begin, dst_begin + first), and the next `second` rows to slots
// [0, second) (the wrap).
struct RingWrite {
  int64_t src_begin = 0;
  int64_t dst_begin = 0;
  int64_t first = 0;
  int64_t second = 0;
};

// Copies the rows a push() planned from src (rows of row_bytes bytes) into the
// bank's storage dst: one memcpy per contiguous run, single-threaded (a few
// hundred KB per step is bound by memory bandwidth, and a thread team would
// only add a barrier that a busy machine can stall for a scheduler tick).
void copy_ring_rows(unsigned char* dst, const unsigned char* src, int64_t row_bytes, const RingWrite& w);

class RingIndex {
 public:
  // Throws std::invalid_argument unless 1 <= capacity <= kMaxRingCapacity.
  explicit RingIndex(int64_t capacity);

  int64_t capacity() const { return capacity_; }
  int64_t size() const { return size_; }
  // Slot the next entry goes to.
  int64_t head() const { return head_; }
  // Slot of the oldest entry (0 while the bank is not full).
  int64_t oldest() const { return size_ < capacity_ ? 0 : head_; }

  // Records a batch of n ids written at `step`; only the last min(n, capacity)
  // are kept. Throws std::invalid_argument for a negative id, before changing
  // anything.
  RingWrite push(const int64_t* ids, int64_t n, int64_t step);

  // Replaces the contents with n entries (oldest first) with their steps, laid
  // out so that the next entry goes to slot `head`. Throws std::invalid_argument
  // (before changing anything) for n > capacity, a head a bank of n entries
  // cannot have, negative ids or decreasing steps.
  void restore(const int64_t* ids, const int64_t* steps, int64_t n, int64_t head);

  void clear();

  // For each row r, appends (r, slot) for every entry with id positives[r] and
  // step >= min_step, oldest first. Throws std::invalid_argument for a negative
  // positive id. Stops and returns false (rows and slots cleared) as soon as
  // there are more than max_pairs hits: a repeated id (padding, a popular item)
  // can have B * M hits, and the caller then builds a dense mask instead, so
  // the lists never take more memory than the caller allows.
  bool find_hits(const int64_t* positives, int64_t b, int64_t min_step, int64_t max_pairs,
                 std::vector<int64_t>* rows, std::vector<int64_t>* slots) const;

 private:
  struct Entry {
    int64_t id;     // kEmpty when the table entry is free
    int32_t first;  // oldest slot holding id
    int32_t last;   // newest slot holding id
  };
  static constexpr int64_t kEmpty = -1;

  uint64_t home(int64_t id) const;
  int64_t find(int64_t id) const;  // table position of id, or -1
  void link(int64_t id, int64_t slot);
  void unlink(int64_t slot);
  void erase_at(uint64_t pos);
  void push_one(int64_t id, int64_t step);

  int64_t capacity_;
  int64_t size_ = 0;
  int64_t head_ = 0;
  std::vector<int64_t> slot_id_;
  std::vector<int64_t> slot_step_;
  std::vector<int32_t> next_;  // next newer slot with the same id, -1 at the chain's end
  std::vector<Entry> table_;   // open addressing, linear probing, load <= 1/2
  uint64_t mask_ = 0;
};

}  // namespace pyneg
