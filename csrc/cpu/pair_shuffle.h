// Uniform shuffle of (centre, context) pair records, a pure function of
// (seed, the records in order): the same bits for any thread count.
//
// The permutation is exactly uniform over all n! orders. It is built in two
// steps (Sanders' "random scatter, then shuffle each bucket"):
//   1. record i gets a bucket label: bucket_bits uniform bits (byte i & 15 of
//      Philox block (i >> 4, 0, kTagShuffle), low bits). Records are written
//      straight to their bucket, buckets in label order, records of a bucket in
//      input order (a stable scatter: bucket sizes come from a counting pass).
//   2. each bucket, slots [s, e), is shuffled by Fisher-Yates: for t = 1 ..
//      e - s - 1, swap slot t with slot j uniform in [0, t] (Lemire's bounded
//      integer with rejection: exactly uniform, see pair_shuffle.cpp).
// Why the result is uniform: the labels are independent and uniform, so given
// the bucket sizes (n_0, .., n_{K-1}) every split of the records into sets of
// those sizes is equally likely; each bucket's order is then uniform and
// independent of the others. Every arrangement with those bucket sizes is
// therefore equally likely, whatever the sizes: the concatenation is a
// uniform permutation. Ties and modulo bias cannot arise (no keys are compared;
// every bounded integer is exact).
//
// The scatter writes records straight to their buckets (the pair generator's
// pairs never exist in corpus order); buckets are then shuffled independently
// (on several threads: every random number is a function of (seed, record or
// slot) alone), each of 2^16-2^17 records by default (1-2 MB of the two
// arrays), so its random swaps stay in cache.
// Segments of the records scatter on several threads too, each into its own
// share of every bucket: a stable scatter has one result whatever the split.
// bucket_bits is part of the permutation's definition:
// pair_shuffle_bucket_bits(n) (0 up to 2^17 records, then up to 5) unless given.
#pragma once

#include <cstdint>

namespace pyneg {

class SkipGramPlan;

// The pair shuffle's random numbers use philox.h's stream tag kTagShuffle.

// Default bucket bits for n records: 0 (one bucket: plain Fisher-Yates) up to
// 2^17 records, then 2^16 to 2^17 records a bucket on average, at most 2^5 buckets.
int pair_shuffle_bucket_bits(int64_t n);

// Writes the n records (centres[i], contexts[i]) in shuffled order to
// out_centres / out_contexts (which must not overlap the inputs). bucket_bits
// in [0, 8], or -1 for pair_shuffle_bucket_bits(n).
void shuffle_pairs(const int64_t* centres, const int64_t* contexts, int64_t n, uint64_t seed, int bucket_bits,
                   int64_t* out_centres, int64_t* out_contexts, int num_threads);

// The plan's num_pairs() pairs, shuffled: the same as fill() then
// shuffle_pairs(..., bucket_bits = -1), with each pair written once, straight
// into its bucket.
void fill_shuffled(const SkipGramPlan& plan, uint64_t seed, int64_t* centres, int64_t* contexts, int num_threads);

}  // namespace pyneg
