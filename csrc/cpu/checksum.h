// A fast non-cryptographic checksum of a byte range, for pyneg's table files
// (pyneg/_tablefile.py): detects truncation-free corruption (a flipped byte, a
// partial write) of arrays of gigabytes at memory speed.
//
// The range is cut into blocks of kChecksumBlock bytes; each block is hashed
// with an xxHash64-style function (four 64-bit lanes of multiply-rotate rounds,
// seeded by the block's index), and the block hashes are folded in order. The
// value is therefore a pure function of the bytes, whatever the thread count,
// while blocks hash in parallel.
#pragma once

#include <cstddef>
#include <cstdint>

namespace pyneg {

constexpr int64_t kChecksumBlock = int64_t{1} << 20;  // 1 MiB

// The checksum of data[0, n) (n >= 0), hashed on up to num_threads threads.
uint64_t checksum64(const uint8_t* data, int64_t n, int num_threads);

}  // namespace pyneg
