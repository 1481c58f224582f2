// Bookkeeping of a FIFO memory bank of capacity M: where the next batch goes
// and how many entries the bank holds. (The accidental hits of a batch's
// positives are found by pyneg's one hit finder, csrc/cpu/hits.h, over the
// bank's id column; the steps that wrote each slot live in the Python layer.)
//
// The embeddings themselves live in the Python layer's tensors (any dtype,
// any device); this index tells it which slots to copy into.
//
// Slots fill 0, 1, ..., M-1 and then wrap: while the bank is not full the
// entries sit in slots [0, size) oldest first; once full the oldest entry is
// at slot head() and the newest at head() - 1.
#pragma once

#include <cstdint>

namespace pyneg {

// The bank's documented limit (pyneg._core.MAX_RING_CAPACITY).
constexpr int64_t kMaxRingCapacity = (int64_t{1} << 31) - 1;

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

  // Records a batch of n ids; only the last min(n, capacity) are kept. Throws
  // std::invalid_argument for a negative id, before changing anything.
  RingWrite push(const int64_t* ids, int64_t n);

  // Replaces the contents with n entries (oldest first; their ids and steps
  // are checked, not kept), laid out so that the next entry goes to slot
  // `head`. Throws std::invalid_argument (before changing anything) for
  // n > capacity, a head a bank of n entries cannot have, negative ids or
  // decreasing steps.
  void restore(const int64_t* ids, const int64_t* steps, int64_t n, int64_t head);

 private:
  int64_t capacity_;
  int64_t size_ = 0;
  int64_t head_ = 0;
};

}  // namespace pyneg
