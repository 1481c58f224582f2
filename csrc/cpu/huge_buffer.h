// A fixed-size array for large lookup tables that are read at random: when it
// is big, it is 2 MiB-aligned and its whole 2 MiB pages are advised into
// transparent huge pages, so a random read costs one TLB entry per 2 MiB
// instead of per 4 KiB. Without THP support the advice is simply ignored.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <new>
#include <utility>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace pyneg {

template <class T>
class HugeBuffer {
 public:
  HugeBuffer() = default;
  explicit HugeBuffer(size_t n) { allocate(n); }
  HugeBuffer(const HugeBuffer&) = delete;
  HugeBuffer& operator=(const HugeBuffer&) = delete;
  HugeBuffer(HugeBuffer&& o) noexcept : data_(std::exchange(o.data_, nullptr)), size_(std::exchange(o.size_, 0)) {}
  HugeBuffer& operator=(HugeBuffer&& o) noexcept {
    if (this != &o) {
      std::free(data_);
      data_ = std::exchange(o.data_, nullptr);
      size_ = std::exchange(o.size_, 0);
    }
    return *this;
  }
  ~HugeBuffer() { std::free(data_); }

  T* data() { return data_; }
  const T* data() const { return data_; }
  size_t size() const { return size_; }
  T& operator[](size_t i) { return data_[i]; }
  const T& operator[](size_t i) const { return data_[i]; }

 private:
  static constexpr size_t kHuge = size_t{2} << 20;

  void allocate(size_t n) {
    const size_t bytes = n * sizeof(T);
    const bool huge = bytes >= 2 * kHuge;
    const size_t align = huge ? kHuge : 64;
    const size_t rounded = (bytes + align - 1) / align * align;
    data_ = static_cast<T*>(std::aligned_alloc(align, rounded ? rounded : align));
    if (!data_) throw std::bad_alloc();
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    // Only the whole 2 MiB pages the array covers: a huge page over its tail
    // would make the first touch of the tail resident in full (up to 2 MiB more
    // than the array, 0.4 B a class for a table of 10^6 classes).
    if (huge) madvise(data_, bytes / kHuge * kHuge, MADV_HUGEPAGE);
#endif
    size_ = n;
  }

  T* data_ = nullptr;
  size_t size_ = 0;
};

}  // namespace pyneg
