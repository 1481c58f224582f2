#include "cpu/graph.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <memory>
#include <stdexcept>
#include <string>

#include "cpu/alias_draw.h"
#include "cpu/alias_table.h"
#include "cpu/hash.h"
#include "cpu/ids.h"
#include "cpu/parallel.h"
#include "cpu/philox.h"

namespace pyneg {

namespace {

inline uint64_t pair_hash(int64_t a, int64_t b) {
  return mix64(mix64(static_cast<uint64_t>(a)) ^ (static_cast<uint64_t>(b) * kGoldenGamma));
}

// A double in [0, 1) from the top 53 bits of r.
inline double unit_double(uint64_t r) { return static_cast<double>(r >> 11) * (1.0 / 9007199254740992.0); }

// Position of the r-th (0-based) allowed slot of [0, n) when the sorted,
// unique positions forb[0..m) are left out: r + #{j : forb[j] - j <= r}.
inline int64_t nth_allowed(const int64_t* forb, int64_t m, int64_t r) {
  int64_t lo = 0, hi = m;  // first j with forb[j] - j > r
  while (lo < hi) {
    const int64_t mid = lo + (hi - lo) / 2;
    if (forb[mid] - mid <= r) {
      lo = mid + 1;
    } else {
      hi = mid;
    }
  }
  return r + lo;
}

// Inserts x into the sorted unique vector v (no-op when present).
inline void insert_sorted(std::vector<int64_t>& v, int64_t x) {
  auto it = std::lower_bound(v.begin(), v.end(), x);
  if (it == v.end() || *it != x) v.insert(it, x);
}

}  // namespace

// ---------------------------------------------------------------- PairGroups

PairGroups::PairGroups(const int64_t* a, const int64_t* b, const int64_t* c, int64_t n, int num_threads) {
  if (n < 0) throw std::invalid_argument("PairGroups: negative size");
  if (n >= (int64_t{1} << 32) - 1) throw std::invalid_argument("PairGroups: more than 2^32 - 2 keys");
  check_non_negative_ids(a, n, "relation ids");
  check_non_negative_ids(b, n, "node ids");
  check_non_negative_ids(c, n, "node ids");
  uint64_t size = 16;
  while (size < 2 * static_cast<uint64_t>(std::min<int64_t>(n, int64_t{1} << 20))) size <<= 1;
  slots_.assign(size, -1);
  mask_ = size - 1;
  std::vector<uint32_t> gid(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    uint64_t pos = pair_hash(a[i], b[i]) & mask_;
    int64_t s;
    while ((s = slots_[pos]) >= 0 && !(groups_[s].a == a[i] && groups_[s].b == b[i])) pos = (pos + 1) & mask_;
    if (s < 0) {
      s = static_cast<int64_t>(groups_.size());
      groups_.push_back(Group{a[i], b[i], 0, 0});
      slots_[pos] = s;
      if (2 * groups_.size() > size) {  // grow at load 1/2 and rehash every group
        size <<= 1;
        mask_ = size - 1;
        slots_.assign(size, -1);
        for (size_t g = 0; g < groups_.size(); ++g) {
          uint64_t p = pair_hash(groups_[g].a, groups_[g].b) & mask_;
          while (slots_[p] >= 0) p = (p + 1) & mask_;
          slots_[p] = static_cast<int64_t>(g);
        }
      }
    }
    groups_[s].len += 1;
    gid[i] = static_cast<uint32_t>(s);
  }
  int64_t run = 0;
  for (auto& g : groups_) {
    g.begin = run;
    run += g.len;
    g.len = 0;
  }
  values_.resize(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    Group& g = groups_[gid[i]];
    values_[g.begin + g.len++] = c[i];
  }
  std::vector<uint32_t>().swap(gid);
  const int64_t ng = static_cast<int64_t>(groups_.size());
  parallel_for(ng, num_threads, 4096, [&](int64_t lo, int64_t hi) {
    for (int64_t g = lo; g < hi; ++g) {
      int64_t* v = values_.data() + groups_[g].begin;
      std::sort(v, v + groups_[g].len);
      groups_[g].len = std::unique(v, v + groups_[g].len) - v;
    }
  });
  int64_t out = 0;  // squeeze out the duplicates' gaps
  for (auto& g : groups_) {
    if (g.begin != out) std::copy(values_.begin() + g.begin, values_.begin() + g.begin + g.len, values_.begin() + out);
    g.begin = out;
    out += g.len;
  }
  values_.resize(static_cast<size_t>(out));
  values_.shrink_to_fit();
  int64_t max_b = -1;
  bool graph = true;
  for (const auto& g : groups_) {
    graph = graph && g.a == 0;
    max_b = std::max(max_b, g.b);
  }
  if (graph && max_b >= 0 && max_b < std::max<int64_t>(int64_t{1} << 20, 4 * n)) {
    dense_ = HugeBuffer<Span>(static_cast<size_t>(max_b) + 1);
    std::fill(dense_.data(), dense_.data() + dense_.size(), Span{0, 0});
    for (const auto& g : groups_) dense_[g.b] = Span{g.begin, g.len};
    uint64_t bits = 64;
    while (bits < 8 * static_cast<uint64_t>(out)) bits <<= 1;
    filter_ = HugeBuffer<uint64_t>(bits / 64);
    std::fill(filter_.data(), filter_.data() + filter_.size(), uint64_t{0});
    filter_mask_ = bits - 1;
    for (const auto& g : groups_) {
      for (int64_t j = g.begin; j < g.begin + g.len; ++j) {
        const uint64_t bit = mix64(filter_bit(g.b, values_[j])) & filter_mask_;
        filter_[bit >> 6] |= uint64_t{1} << (bit & 63);
      }
    }
  }
  vals_ = HugeBuffer<int64_t>(values_.size());
  std::copy(values_.begin(), values_.end(), vals_.data());
  std::vector<int64_t>().swap(values_);
  point_at_owned();
}

void PairGroups::point_at_owned() {
  g_ = groups_.data();
  ng_ = static_cast<int64_t>(groups_.size());
  v_ = vals_.data();
  nv_ = static_cast<int64_t>(vals_.size());
  s_ = slots_.data();
  ns_ = static_cast<int64_t>(slots_.size());
  d_ = dense_.data();
  nd_ = static_cast<int64_t>(dense_.size());
}

PairGroups PairGroups::view(const Group* groups, int64_t num_groups, const int64_t* values, int64_t num_values,
                            const int64_t* slots, int64_t num_slots, const char* name) {
  if (num_groups < 0 || num_values < 0 || num_slots < 0)
    throw std::invalid_argument(std::string(name) + ": negative size");
  if (num_slots < 1 || (num_slots & (num_slots - 1)) != 0)
    throw std::invalid_argument(std::string(name) + ": the slot count must be a power of two");
  PairGroups v;
  v.g_ = groups;
  v.ng_ = num_groups;
  v.v_ = values;
  v.nv_ = num_values;
  v.s_ = slots;
  v.ns_ = num_slots;
  v.mask_ = static_cast<uint64_t>(num_slots) - 1;
  return v;
}

const int64_t* PairGroups::find(int64_t a, int64_t b, int64_t* len) const {
  *len = 0;
  // Every read is bounded, so arbitrary arrays (a view over a caller's
  // tensors, possibly written meanwhile) are never read out of bounds: at most
  // num_slots probes, a slot naming no group or a run outside the values is
  // "absent".
  uint64_t pos = pair_hash(a, b) & mask_;
  for (int64_t probe = 0; probe < ns_; ++probe) {
    const int64_t s = s_[pos];
    if (s < 0 || s >= ng_) return nullptr;
    const Group g = g_[s];
    if (g.a == a && g.b == b) {
      if (g.begin < 0 || g.len < 0 || g.begin > nv_ || g.len > nv_ - g.begin) return nullptr;
      *len = g.len;
      return v_ + g.begin;
    }
    pos = (pos + 1) & mask_;
  }
  return nullptr;
}

bool PairGroups::contains(int64_t a, int64_t b, int64_t c) const {
  int64_t len;
  const int64_t* v = find(a, b, &len);
  return v != nullptr && std::binary_search(v, v + len, c);
}

size_t PairGroups::memory_bytes() const {
  return groups_.capacity() * sizeof(Group) + vals_.size() * sizeof(int64_t) + slots_.capacity() * sizeof(int64_t) +
         dense_.size() * sizeof(Span) + filter_.size() * sizeof(uint64_t);
}

void pair_groups_contains(const PairGroups& index, const int64_t* a, const int64_t* b, const int64_t* c, int64_t n,
                          uint8_t* out, int num_threads) {
  parallel_for(n, num_threads, 1 << 14, [&](int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; ++i) out[i] = index.contains(a[i], b[i], c[i]) ? 1 : 0;
  });
}

// ---------------------------------------------------------------- alias table

GraphAlias build_graph_alias(const double* weights, int64_t n, const char* name) {
  GraphAlias t;
  t.table = build_alias_table(weights, n, name);
  t.mass.resize(static_cast<size_t>(n));
  t.num_positive = class_masses(t.table.entries.data(), n, t.mass.data());
  return t;
}

// ---------------------------------------------------------------- corruption

namespace {

// What one side of one row may draw: positions [0, usize) of its universe
// (ids directly, or typed[pos]) minus the sorted positions forb.
struct RowSide {
  std::vector<int64_t> forb;
  const int64_t* typed = nullptr;
  int64_t usize = 0;
  int64_t allowed() const { return usize - static_cast<int64_t>(forb.size()); }
  int64_t id_at(int64_t pos) const { return typed ? typed[pos] : pos; }
};

void prepare_side(const CorruptRequest& req, const int64_t* row, int s, RowSide* out) {
  const CorruptSide& side = req.side[s];
  const int64_t h = row[0], r = row[1], t = row[2];
  out->forb.clear();
  int64_t len = 0;
  const int64_t* known = nullptr;
  if (side.index != nullptr) {
    if (s == 0) known = side.index->find(r, t, &len);
    if (s == 1) known = side.index->find(h, t, &len);
    if (s == 2) known = side.index->find(r, h, &len);
  }
  std::vector<int64_t>& f = out->forb;
  f.assign(known, known + len);
  const int64_t own = s == 0 ? h : s == 1 ? r : t;
  if (own >= 0) insert_sorted(f, own);
  if (req.exclude_self_loops && s != 1 && (s == 0 ? t : h) >= 0) insert_sorted(f, s == 0 ? t : h);
  if (side.typed_offsets != nullptr) {
    const int64_t* u = side.typed_ids + side.typed_offsets[r];
    const int64_t n = side.typed_offsets[r + 1] - side.typed_offsets[r];
    size_t m = 0;
    for (int64_t id : f) {  // ids -> positions in the typed list (both sorted)
      const int64_t* p = std::lower_bound(u, u + n, id);
      if (p != u + n && *p == id) f[m++] = p - u;
    }
    f.resize(m);
    out->typed = u;
    out->usize = n;
  } else {
    while (!f.empty() && f.back() >= side.universe) f.pop_back();
    out->typed = nullptr;
    out->usize = side.universe;
  }
}

// Positive-weight ids left in a weighted row, and the forbidden mass.
int64_t positive_allowed(const GraphAlias& w, const RowSide& rs, uint64_t* forbidden_mass) {
  int64_t n = w.num_positive;
  uint64_t m = 0;
  const int64_t size = w.size();
  for (int64_t id : rs.forb) {
    if (id < 0 || id >= size) continue;  // (an index view's values are not trusted)
    n -= w.mass[id] > 0 ? 1 : 0;
    m += w.mass[id];
  }
  *forbidden_mass = m;
  return n;
}

int choose_side(const double* p, double u) {
  int s = u < p[0] ? 0 : (u < p[0] + p[1] ? 1 : 2);
  while (p[s] <= 0) s = s == 0 ? 2 : s - 1;  // rounding at the top end: the last side with mass
  return s;
}

struct SmallSet {  // open addressing over int64 >= 0, reused across rows
  std::vector<int64_t> slots;
  std::vector<size_t> used;
  uint64_t mask = 0;
  void reset(int64_t k) {
    uint64_t size = 16;
    while (size < 4 * static_cast<uint64_t>(k)) size <<= 1;
    if (slots.size() != size) {
      slots.assign(size, -1);
    } else {
      for (size_t u : used) slots[u] = -1;
    }
    used.clear();
    mask = size - 1;
  }
  bool contains(int64_t x) const {
    for (uint64_t p = mix64(static_cast<uint64_t>(x)) & mask; slots[p] >= 0; p = (p + 1) & mask)
      if (slots[p] == x) return true;
    return false;
  }
  bool insert(int64_t x) {
    uint64_t p = mix64(static_cast<uint64_t>(x)) & mask;
    while (slots[p] >= 0) {
      if (slots[p] == x) return false;
      p = (p + 1) & mask;
    }
    slots[p] = x;
    used.push_back(p);
    return true;
  }
};

std::string row_error(int64_t i, int s, const std::string& what) {
  static const char* names[3] = {"head", "relation", "tail"};
  return std::string("row ") + std::to_string(i) + ": cannot draw " + what + " when corrupting the " + names[s];
}

}  // namespace

void corrupt_rows(const CorruptRequest& req, int64_t* ids, int8_t* sides, double* log_q, int num_threads) {
  const int64_t B = req.num_rows, k = req.k;
  if (B < 0 || k < 0) throw std::invalid_argument("corrupt_rows: negative size");
  // Checks on the caller's (already copied) rows and probabilities.
  for (int64_t i = 0; i < B; ++i) {
    const int64_t* row = req.rows + 3 * i;
    for (int s = 0; s < 3; ++s) {
      const int64_t lim = req.side[s].universe;
      // -1: no own id, allowed only on the side that is always replaced (never a key then).
      const bool none_ok = row[s] == -1 && req.side_probs[3 * i + s] >= 1.0;
      if (!none_ok && (row[s] < 0 || (lim > 0 && row[s] >= lim))) {
        static const char* names[3] = {"head", "relation", "tail"};
        throw std::invalid_argument(std::string("positive ") + names[s] + " id " + std::to_string(row[s]) +
                                    " in row " + std::to_string(i) + " is out of range [0, " + std::to_string(lim) +
                                    ")");
      }
    }
    const double* p = req.side_probs + 3 * i;
    double sum = 0;
    for (int s = 0; s < 3; ++s) {
      if (!(p[s] >= 0 && p[s] <= 1)) throw std::invalid_argument("side probabilities must be in [0, 1]");
      if (p[s] > 0 && req.side[s].universe <= 0) throw std::invalid_argument("a side with probability > 0 has no universe");
      if (p[s] > 0 && req.side[s].typed_offsets && row[1] >= req.side[s].num_typed_relations)
        throw std::invalid_argument("relation id out of range of the pseudo-typed candidates");
      sum += p[s];
    }
    if (std::fabs(sum - 1.0) > 1e-9) throw std::invalid_argument("side probabilities must sum to 1");
  }
  if (k == 0 || B == 0) return;
  for (int s = 0; s < 3; ++s) {
    if (req.side[s].weights != nullptr && req.side[s].typed_offsets != nullptr)
      throw std::invalid_argument("weighted draws cannot be pseudo-typed");
  }
  // Pass 1: refuse infeasible rows before writing anything.
  parallel_for(B, num_threads, 256, [&](int64_t lo, int64_t hi) {
    RowSide rs;
    for (int64_t i = lo; i < hi; ++i) {
      const int64_t* row = req.rows + 3 * i;
      for (int s = 0; s < 3; ++s) {
        if (req.side_probs[3 * i + s] <= 0) continue;
        prepare_side(req, row, s, &rs);
        const int64_t a = rs.allowed();
        if (req.unique && a < k) {
          throw std::invalid_argument(row_error(i, s, std::to_string(k) + " distinct negatives") + ": only " +
                                      std::to_string(a) + " candidates are allowed");
        }
        if (a < 1) throw std::invalid_argument(row_error(i, s, "any negative") + ": every candidate is excluded");
        if (req.side[s].weights != nullptr) {
          uint64_t fm;
          const int64_t pa = positive_allowed(*req.side[s].weights, rs, &fm);
          if (pa < 1)
            throw std::invalid_argument(row_error(i, s, "a weighted negative") +
                                        ": every allowed candidate has weight 0");
          if (req.unique && pa < k)
            throw std::invalid_argument(row_error(i, s, std::to_string(k) + " distinct weighted negatives") +
                                        ": only " + std::to_string(pa) +
                                        " allowed candidates have weight > 0 (num_negatives, weights)");
        }
      }
    }
  });
  // Pass 2: the draws.
  parallel_for(B, num_threads, 64, [&](int64_t lo, int64_t hi) {
    RowSide rs;
    SmallSet seen;
    std::vector<int64_t> slots, pool;
    std::vector<uint64_t> cdf;  // exact integer masses (V * 2^32 passes 2^53 past 2^21 nodes)
    std::vector<uint64_t> fenwick;
    for (int64_t i = lo; i < hi; ++i) {
      const int64_t* row = req.rows + 3 * i;
      const double* p = req.side_probs + 3 * i;
      const uint64_t pos = req.offset + static_cast<uint64_t>(i);
      int64_t* out_id = ids + i * k;
      int8_t* out_side = sides + i * k;
      double* out_lq = log_q + i * k;
      const int single = p[0] >= 1 ? 0 : p[1] >= 1 ? 1 : p[2] >= 1 ? 2 : -1;
      for (int64_t j = 0; j < k; ++j) {
        out_side[j] = static_cast<int8_t>(
            single >= 0 ? single
                        : choose_side(p, unit_double(random64(req.seed, pos, static_cast<uint32_t>(j), kTagGraphSide))));
      }
      for (int s = 0; s < 3; ++s) {
        if (p[s] <= 0) continue;
        slots.clear();
        for (int64_t j = 0; j < k; ++j)
          if (out_side[j] == s) slots.push_back(j);
        if (slots.empty()) continue;
        prepare_side(req, row, s, &rs);
        const int64_t a = rs.allowed();
        const int64_t ks = static_cast<int64_t>(slots.size());
        const int64_t m = static_cast<int64_t>(rs.forb.size());
        const double log_side = std::log(p[s]);
        const GraphAlias* w = req.side[s].weights;
        if (w == nullptr) {
          const double lq = log_side - std::log(static_cast<double>(a));
          if (!req.unique) {
            for (int64_t j : slots) {
              const uint64_t x = random64(req.seed, pos, static_cast<uint32_t>(j), kTagGraphUniform + s);
              const int64_t r = static_cast<int64_t>(reduce_range(x, static_cast<uint64_t>(a)));
              out_id[j] = rs.id_at(nth_allowed(rs.forb.data(), m, r));
              out_lq[j] = lq;
            }
          } else if (2 * ks <= a) {  // distinct by rejection of repeats: >= 1/2 of tries succeed
            seen.reset(ks);
            uint32_t t = 0;
            for (int64_t j : slots) {
              int64_t r;
              do {
                const uint64_t x = random64(req.seed, pos, t++, kTagGraphUniform + s);
                r = static_cast<int64_t>(reduce_range(x, static_cast<uint64_t>(a)));
              } while (!seen.insert(r));
              out_id[j] = rs.id_at(nth_allowed(rs.forb.data(), m, r));
              out_lq[j] = lq;
            }
          } else {  // a large share of the allowed set: partial Fisher-Yates over all of it
            pool.resize(static_cast<size_t>(a));
            for (int64_t r = 0; r < a; ++r) pool[r] = r;
            int64_t q = 0;
            for (int64_t j : slots) {
              const uint64_t x = random64(req.seed, pos, static_cast<uint32_t>(q), kTagGraphShuffle + s);
              const int64_t pick = q + static_cast<int64_t>(reduce_range(x, static_cast<uint64_t>(a - q)));
              std::swap(pool[q], pool[pick]);
              out_id[j] = rs.id_at(nth_allowed(rs.forb.data(), m, pool[q]));
              out_lq[j] = lq;
              ++q;
            }
          }
          continue;
        }
        if (req.unique) {
          // Weighted, distinct: successive sampling. Draw j is from the
          // weights renormalised over the allowed ids not drawn yet (what
          // torch.multinomial(replacement=False) does). While the mass left
          // is >= 1/16 of the table's, alias draws that hit a forbidden or
          // drawn id are rejected (each rejection costs one alias draw, and
          // a draw is accepted with probability >= 1/16); below that, or
          // (never in practice) after 4096 rejections in a row, the draw is
          // made exactly from a Fenwick tree of the remaining integer
          // masses, kept for the rest of the row. Either way the draw's law
          // is the exact conditional one, and nothing spins. log q is the
          // one-draw probability under the renormalised allowed
          // distribution (the first draw's law), as for the with-replacement
          // path: mass[id] / allowed mass.
          uint64_t fm;
          positive_allowed(*w, rs, &fm);
          const int64_t n = w->size();
          const uint64_t* entries = w->table.entries.data();
          const uint64_t total = w->table.total_mass();
          const uint64_t allowed_mass = total - fm;
          const double log_mass = std::log(static_cast<double>(allowed_mass));
          uint64_t remaining = allowed_mass;
          seen.reset(ks);
          pool.clear();  // the ids drawn so far
          std::vector<uint64_t>& fen = fenwick;
          bool have_fen = false;
          int64_t top = 1;
          while (top * 2 <= n) top *= 2;
          auto build_fen = [&]() {
            fen.assign(static_cast<size_t>(n) + 1, 0);
            for (int64_t id = 0; id < n; ++id) fen[id + 1] = w->mass[id];
            for (int64_t id : rs.forb)
              if (id >= 0 && id < n) fen[id + 1] = 0;
            for (int64_t id : pool) fen[id + 1] = 0;
            for (int64_t x = 1; x <= n; ++x) {
              const int64_t y = x + (x & -x);
              if (y <= n) fen[y] += fen[x];
            }
            have_fen = true;
          };
          for (int64_t j : slots) {
            int64_t id = -1;
            if (!have_fen && remaining >= total / 16) {
              for (uint32_t attempt = 0; attempt < 4096; ++attempt) {
                const uint64_t x = random64(req.seed, pos, static_cast<uint32_t>(j),
                                            kTagGraphWeighted + attempt * 4 + static_cast<uint32_t>(s));
                const int64_t c = alias_pick(entries, static_cast<uint64_t>(n), x);
                if (!std::binary_search(rs.forb.begin(), rs.forb.end(), c) && !seen.contains(c)) {
                  id = c;
                  break;
                }
              }
            }
            if (id < 0) {
              if (!have_fen) build_fen();
              // u uniform in [0, remaining): the first id whose cumulative
              // remaining mass exceeds u (allowed, not drawn, mass > 0).
              uint64_t u = reduce_range(random64(req.seed, pos, static_cast<uint32_t>(j), kTagGraphCdf + s), remaining);
              int64_t at = 0;
              for (int64_t step = top; step > 0; step /= 2) {
                if (at + step <= n && fen[at + step] <= u) {
                  at += step;
                  u -= fen[at];
                }
              }
              id = at;
            }
            seen.insert(id);
            pool.push_back(id);
            const uint64_t mi = w->mass[id];
            remaining -= mi;
            if (have_fen)
              for (int64_t x = id + 1; x <= n; x += x & -x) fen[x] -= mi;
            out_id[j] = id;
            out_lq[j] = log_side + std::log(static_cast<double>(mi)) - log_mass;
          }
          continue;
        }
        // Weighted, with replacement, from the core alias table (alias_table.h):
        // class i has the integer mass m_i (sum V * 2^32), so the row's allowed
        // mass and its CDF are exact integers.
        uint64_t fm;
        positive_allowed(*w, rs, &fm);
        const int64_t n = w->size();
        const uint64_t* entries = w->table.entries.data();
        uint64_t allowed_mass = w->table.total_mass() - fm;
        const bool use_cdf = allowed_mass < w->table.total_mass() / 16;
        bool have_cdf = false;
        auto build_cdf = [&]() {  // cdf[id] = allowed mass of [0, id]
          cdf.resize(static_cast<size_t>(n));
          uint64_t run = 0;
          size_t f = 0;
          for (int64_t id = 0; id < n; ++id) {
            while (f < rs.forb.size() && rs.forb[f] < id) ++f;
            if (!(f < rs.forb.size() && rs.forb[f] == id)) run += w->mass[id];
            cdf[id] = run;
          }
          allowed_mass = run;
          have_cdf = true;
        };
        if (use_cdf) build_cdf();
        const double log_mass = std::log(static_cast<double>(allowed_mass));
        for (int64_t j : slots) {
          int64_t id = -1;
          if (!use_cdf) {
            for (uint32_t attempt = 0; attempt < 4096; ++attempt) {
              const uint64_t x = random64(req.seed, pos, static_cast<uint32_t>(j),
                                          kTagGraphWeighted + attempt * 4 + static_cast<uint32_t>(s));
              const int64_t c = alias_pick(entries, static_cast<uint64_t>(n), x);
              if (!std::binary_search(rs.forb.begin(), rs.forb.end(), c)) {
                id = c;
                break;
              }
            }
          }
          if (id < 0) {  // CDF row, or (never in practice) 4096 rejections in a row
            if (!have_cdf) build_cdf();
            // u uniform in [0, allowed mass): the first id whose cumulative
            // mass exceeds u is allowed and has mass > 0.
            const uint64_t u = reduce_range(random64(req.seed, pos, static_cast<uint32_t>(j), kTagGraphCdf + s), cdf[n - 1]);
            id = std::upper_bound(cdf.begin(), cdf.end(), u) - cdf.begin();
          }
          out_id[j] = id;
          out_lq[j] = log_side + std::log(static_cast<double>(w->mass[id])) - log_mass;
        }
      }
    }
  });
}

// ---------------------------------------------------------------- distinct pairs

namespace {

// The first k distinct keys u * num_dst + v of the candidate stream, in
// stream order, deduplicated in parallel with output bits that do not depend
// on the thread count. Each round takes the next m positions of the stream,
// cut into fixed chunks of kDedupChunk positions, and:
//  1. per chunk (in parallel): draws its candidates (draw_range) and scatters
//     their keys, stably, into the chunk's own block of `ekey` grouped by hash
//     partition (P partitions, top bits of mix64(key)); part[j] remembers
//     position j's partition. So chunk c's keys of partition p are one
//     segment, in position order, and the block stays in cache meanwhile;
//  2. per partition (in parallel): walks its segments in chunk order with the
//     partition's own hash set (a few hundred KiB, cache resident) and marks
//     a key fresh (top bit of its ekey word; keys are < 2^63) at its first
//     position only;
//  3. per chunk (in parallel): walks its positions in order, reading each
//     one's word through a per-partition cursor, and writes the fresh pairs
//     at the chunk's place in the output (a prefix sum of the fresh counts),
//     up to k.
// Every step is a pure function of the candidates, and P, the chunks and the
// rounds depend on k only: the same pairs in the same order as a sequential
// first-occurrence pass over the stream.
constexpr int64_t kDedupChunk = int64_t{1} << 16;

template <class DrawRange>
void distinct_pairs_partitioned(int64_t k, int64_t num_dst, double kept_share, uint64_t offset, DrawRange& draw_range,
                                int64_t* src, int64_t* dst, int num_threads) {
  int pbits = 0;  // about 2^14 keys per partition, at most 2^10 partitions
  while (pbits < 10 && (k >> (pbits + 14)) > 0) ++pbits;
  const int64_t P = int64_t{1} << pbits;
  auto part_of = [pbits](uint64_t h) { return pbits == 0 ? int64_t{0} : static_cast<int64_t>(h >> (64 - pbits)); };
  constexpr uint64_t kFresh = uint64_t{1} << 63;
  // A partition's table: open addressing over `cap` slots (any size), slot
  // from the low 32 bits of the hash, grown (x2) past load 0.7. The tables
  // start in one buffer; a table that grows moves to its own vector. (Scratch
  // arrays here are plain allocations: they are read in cache-sized pieces,
  // so huge pages would only add the cost of finding them at each call.)
  auto slot_of = [](uint64_t h, uint64_t cap) { return ((h & 0xffffffffu) * cap) >> 32; };
  const uint64_t cap0 = 2 * static_cast<uint64_t>(k / P) + 64;
  std::unique_ptr<int64_t[]> table_mem(new int64_t[cap0 * static_cast<uint64_t>(P)]);
  std::vector<int64_t*> table(static_cast<size_t>(P), nullptr);
  std::vector<uint64_t> table_cap(static_cast<size_t>(P), cap0);
  std::vector<std::vector<int64_t>> grown(static_cast<size_t>(P));
  std::vector<int64_t> fill(static_cast<size_t>(P), 0);
  const uint64_t nd = static_cast<uint64_t>(num_dst);
  std::vector<int64_t> offs, seg_fresh, chunk_fresh;
  // key -> (u, v): a double reciprocal and one correction step while keys
  // are below 2^52 (exact enough that the estimate is off by at most one),
  // else an integer division.
  const double inv_nd = 1.0 / static_cast<double>(nd);
  auto split = [&](uint64_t key, int64_t* u_out, int64_t* v_out) {
    if (key < (uint64_t{1} << 52)) {
      int64_t u = static_cast<int64_t>(static_cast<double>(key) * inv_nd);
      int64_t r = static_cast<int64_t>(key) - u * static_cast<int64_t>(nd);
      if (r < 0) {
        --u;
        r += static_cast<int64_t>(nd);
      } else if (r >= static_cast<int64_t>(nd)) {
        ++u;
        r -= static_cast<int64_t>(nd);
      }
      *u_out = u;
      *v_out = r;
    } else {
      const uint64_t u = key / nd;
      *u_out = static_cast<int64_t>(u);
      *v_out = static_cast<int64_t>(key - u * nd);
    }
  };
  int64_t have = 0;
  uint64_t next = offset;
  while (have < k) {
    // A candidate repeats a kept pair with probability below kept_share = k /
    // (allowed pairs): draw twice the expected repeats more (at most 1/8).
    // (The result does not depend on m, only the number of rounds does.)
    const int64_t need = k - have;
    const int64_t extra = std::min<int64_t>(need / 8, static_cast<int64_t>(std::ceil(2.0 * kept_share * need)));
    const int64_t m = need + extra + 64;
    const int64_t nc = (m + kDedupChunk - 1) / kDedupChunk;
    std::unique_ptr<uint64_t[]> ekey(new uint64_t[static_cast<size_t>(m)]);
    std::unique_ptr<uint16_t[]> part(new uint16_t[static_cast<size_t>(m)]);
    // offs[c * (P + 1) + p]: where chunk c's segment of partition p starts (absolute)
    offs.assign(static_cast<size_t>(nc * (P + 1)), 0);
    // 1. draws and the chunk-local stable scatter
    parallel_for(nc, num_threads, 1, [&](int64_t lo, int64_t hi) {
      std::vector<int64_t> lu(kDedupChunk), lv(kDedupChunk), cursor(static_cast<size_t>(P));
      std::vector<uint64_t> lk(kDedupChunk);
      for (int64_t c = lo; c < hi; ++c) {
        const int64_t b = c * kDedupChunk, len = std::min(m, b + kDedupChunk) - b;
        draw_range(next + static_cast<uint64_t>(b), 0, len, lu.data(), lv.data());
        std::fill(cursor.begin(), cursor.end(), 0);
        for (int64_t j = 0; j < len; ++j) {
          const uint64_t key = static_cast<uint64_t>(lu[j]) * nd + static_cast<uint64_t>(lv[j]);
          const int64_t p = part_of(mix64(key));
          lk[j] = key;
          part[b + j] = static_cast<uint16_t>(p);
          ++cursor[p];
        }
        int64_t* o = offs.data() + c * (P + 1);
        int64_t run = b;
        for (int64_t p = 0; p < P; ++p) {
          o[p] = run;
          run += cursor[p];
          cursor[p] = o[p];
        }
        o[P] = run;
        for (int64_t j = 0; j < len; ++j) ekey[cursor[part[b + j]]++] = lk[j];
      }
    });
    next += static_cast<uint64_t>(m);
    // 2. first occurrences, one partition at a time, segments in chunk order;
    // seg_fresh[c * (P + 1) + p]: the fresh keys of each segment
    seg_fresh.assign(static_cast<size_t>(nc * (P + 1)), 0);
    parallel_for(P, num_threads, 1, [&](int64_t lo, int64_t hi) {
      for (int64_t p = lo; p < hi; ++p) {
        int64_t* tb = table[p];
        if (tb == nullptr) {
          tb = table[p] = table_mem.get() + static_cast<uint64_t>(p) * cap0;
          std::fill(tb, tb + cap0, int64_t{-1});
        }
        uint64_t cap = table_cap[p];
        for (int64_t c = 0; c < nc; ++c) {
          const int64_t e = offs[c * (P + 1) + p + 1];
          int64_t nf = 0;
          for (int64_t at = offs[c * (P + 1) + p]; at < e; ++at) {
            const int64_t key = static_cast<int64_t>(ekey[at]);
            uint64_t slot = slot_of(mix64(ekey[at]), cap);
            bool is_new = true;
            while (tb[slot] >= 0) {
              if (tb[slot] == key) {
                is_new = false;
                break;
              }
              if (++slot == cap) slot = 0;
            }
            if (!is_new) continue;
            tb[slot] = key;
            ekey[at] |= kFresh;
            ++nf;
            if (10 * static_cast<uint64_t>(++fill[p]) > 7 * cap) {  // grow past load 0.7
              std::vector<int64_t> bigger(2 * cap, -1);
              for (uint64_t q0 = 0; q0 < cap; ++q0) {
                const int64_t x = tb[q0];
                if (x < 0) continue;
                uint64_t q = slot_of(mix64(static_cast<uint64_t>(x)), 2 * cap);
                while (bigger[q] >= 0)
                  if (++q == 2 * cap) q = 0;
                bigger[q] = x;
              }
              cap *= 2;
              grown[p].swap(bigger);
              tb = table[p] = grown[p].data();
              table_cap[p] = cap;
            }
          }
          seg_fresh[c * (P + 1) + p] = nf;
        }
      }
    });
    // 3. the fresh pairs in position order
    chunk_fresh.assign(static_cast<size_t>(nc) + 1, 0);
    for (int64_t c = 0; c < nc; ++c) {
      int64_t nf = 0;
      for (int64_t p = 0; p < P; ++p) nf += seg_fresh[c * (P + 1) + p];
      chunk_fresh[c + 1] = chunk_fresh[c] + nf;
    }
    parallel_for(nc, num_threads, 1, [&](int64_t lo, int64_t hi) {
      std::vector<int64_t> cursor(static_cast<size_t>(P));
      for (int64_t c = lo; c < hi; ++c) {
        int64_t out = have + chunk_fresh[c];
        if (out >= k) break;
        std::copy(offs.begin() + c * (P + 1), offs.begin() + c * (P + 1) + P, cursor.begin());
        const int64_t e = std::min(m, (c + 1) * kDedupChunk);
        for (int64_t j = c * kDedupChunk; j < e && out < k; ++j) {
          const uint64_t word = ekey[cursor[part[j]]++];
          if (!(word & kFresh)) continue;
          split(word & ~kFresh, src + out, dst + out);
          ++out;
        }
      }
    });
    have = std::min(k, have + chunk_fresh[nc]);
  }
}

}  // namespace

// ---------------------------------------------------------------- global pairs

double global_negatives(const PairGroups& index, int64_t num_src, int64_t num_dst, int64_t num_known, int64_t k,
                        bool unique, bool exclude_self_loops, bool upper, uint64_t seed, uint64_t offset,
                        int64_t* src, int64_t* dst, int num_threads) {
  if (k < 0 || num_src < 0 || num_dst < 0 || num_known < 0) throw std::invalid_argument("global_negatives: negative size");
  if (upper && num_src != num_dst) throw std::invalid_argument("undirected negatives need a square graph");
  using u128 = unsigned __int128;
  u128 total = static_cast<u128>(num_src) * static_cast<u128>(num_dst);
  if (upper) total = (static_cast<u128>(num_src) * static_cast<u128>(num_src > 0 ? num_src - 1 : 0)) / 2;
  // Known pairs in the sampled space (and the diagonal, when excluded, less the self-loops already known).
  u128 excluded = static_cast<u128>(num_known);
  if (exclude_self_loops && !upper) {
    int64_t self_known = 0;
    const int64_t d = std::min(num_src, num_dst);
    for (int64_t gi = 0; gi < index.num_groups(); ++gi) {
      const PairGroups::Group& g = index.groups()[gi];
      if (g.a == 0 && g.b < d && std::binary_search(index.values() + g.begin, index.values() + g.begin + g.len, g.b))
        ++self_known;
    }
    excluded += static_cast<u128>(d - self_known);
  }
  if (excluded > total) throw std::invalid_argument("the edge set holds pairs outside the node range");
  const u128 allowed = total - excluded;
  const double log_q = -std::log(static_cast<double>(allowed));
  if (k == 0) return log_q;
  if (allowed == 0) throw std::invalid_argument("no negative pair exists: every pair of nodes is a known edge");
  if (unique && allowed < static_cast<u128>(k))
    throw std::invalid_argument("cannot draw " + std::to_string(k) + " distinct negative pairs: only " +
                                std::to_string(static_cast<uint64_t>(allowed)) + " exist");
  const bool rejection = allowed * 4 >= total;
  // Enumerated method (dense graphs: fewer than 1/4 of the pairs allowed): the
  // cumulative number of allowed destinations per source.
  std::vector<int64_t> cum;
  auto row_forb = [&](int64_t u, std::vector<int64_t>* f, int64_t* lo) {
    int64_t len;
    const int64_t* v = index.find(0, u, &len);
    f->assign(v, v + len);
    if (exclude_self_loops && u < num_dst) insert_sorted(*f, u);
    *lo = 0;
    if (upper) {  // destinations > u only, as positions v - (u + 1)
      *lo = u + 1;
      auto it = std::upper_bound(f->begin(), f->end(), u);
      f->erase(f->begin(), it);
      for (auto& x : *f) x -= u + 1;
    }
  };
  if (!rejection) {
    cum.assign(static_cast<size_t>(num_src) + 1, 0);
    std::vector<int64_t> f;
    for (int64_t u = 0; u < num_src; ++u) {
      int64_t lo;
      row_forb(u, &f, &lo);
      cum[u + 1] = cum[u] + (num_dst - lo) - static_cast<int64_t>(f.size());
    }
  }
  // Attempt t of position p: one Philox block, its two halves pick u and v.
  auto attempt = [&](uint64_t p, uint32_t t, int64_t* pu, int64_t* pv) {
    const Philox4x32 r = philox4x32_10(static_cast<uint32_t>(p), static_cast<uint32_t>(p >> 32), t, kTagGraphGlobal,
                                       static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
    int64_t u = static_cast<int64_t>(reduce_range(block_half(r, 0), static_cast<uint64_t>(num_src)));
    int64_t v = static_cast<int64_t>(reduce_range(block_half(r, 1), static_cast<uint64_t>(num_dst)));
    if (upper && u > v) std::swap(u, v);
    *pu = u;
    *pv = v;
    // May this pair be kept before the edge lookup?
    return upper ? u != v : !(exclude_self_loops && u == v);
  };
  const PairGroups::Span* dense = index.dense();
  const int64_t dense_n = index.dense_size();
  const int64_t* values = index.values();
  auto known = [&](int64_t u, int64_t v) {
    if (dense != nullptr) {
      if (u >= dense_n) return false;
      const PairGroups::Span sp = dense[u];
      return sp.len > 0 && std::binary_search(values + sp.begin, values + sp.begin + sp.len, v);
    }
    return index.contains(0, u, v);
  };
  auto draw_from = [&](uint64_t p, uint32_t first, std::vector<int64_t>* f, int64_t* pu, int64_t* pv) {
    if (rejection) {
      for (uint32_t t = first;; ++t) {
        int64_t u, v;
        if (!attempt(p, t, &u, &v) || known(u, v)) continue;
        *pu = u;
        *pv = v;
        return;
      }
    }
    const int64_t r = static_cast<int64_t>(reduce_range(random64(seed, p, 0, kTagGraphGlobal), static_cast<uint64_t>(cum.back())));
    const int64_t u = std::upper_bound(cum.begin(), cum.end(), r) - cum.begin() - 1;
    int64_t lo;
    row_forb(u, f, &lo);
    *pu = u;
    *pv = lo + nth_allowed(f->data(), static_cast<int64_t>(f->size()), r - cum[u]);
  };
  // Positions [lo, hi) -> (pu, pv). With a dense directory, blocks of draws go
  // through the lookups stage by stage with prefetches, so their cache misses
  // overlap; a rejected first attempt finishes one by one (same result).
  auto draw_range = [&](uint64_t base, int64_t lo, int64_t hi, int64_t* pu, int64_t* pv) {
    std::vector<int64_t> f;
    if (!rejection || dense == nullptr) {
      for (int64_t j = lo; j < hi; ++j) draw_from(base + static_cast<uint64_t>(j), 0, &f, pu + j, pv + j);
      return;
    }
    constexpr int kBlock = 32;
    bool ok[kBlock];
    bool maybe[kBlock];
    uint64_t fbit[kBlock];
    PairGroups::Span sp[kBlock];
    const uint64_t* filter = index.filter();
    const uint64_t fmask = index.filter_mask();
    for (int64_t j0 = lo; j0 < hi; j0 += kBlock) {
      const int nb = static_cast<int>(std::min<int64_t>(kBlock, hi - j0));
      for (int q = 0; q < nb; ++q) {
        ok[q] = attempt(base + static_cast<uint64_t>(j0 + q), 0, pu + j0 + q, pv + j0 + q);
        if (filter != nullptr) {
          fbit[q] = mix64(PairGroups::filter_bit(pu[j0 + q], pv[j0 + q])) & fmask;
          __builtin_prefetch(filter + (fbit[q] >> 6));
        } else if (pu[j0 + q] < dense_n) {
          __builtin_prefetch(dense + pu[j0 + q]);
        }
      }
      if (filter != nullptr) {  // a clear bit: not an edge, no directory lookup
        for (int q = 0; q < nb; ++q) {
          maybe[q] = ((filter[fbit[q] >> 6] >> (fbit[q] & 63)) & 1) != 0;
          if (maybe[q] && pu[j0 + q] < dense_n) __builtin_prefetch(dense + pu[j0 + q]);
        }
      } else {
        for (int q = 0; q < nb; ++q) maybe[q] = true;
      }
      for (int q = 0; q < nb; ++q) {
        const int64_t u = pu[j0 + q];
        sp[q] = maybe[q] && u < dense_n ? dense[u] : PairGroups::Span{0, 0};
        if (sp[q].len > 0) __builtin_prefetch(values + sp[q].begin + sp[q].len / 2);
      }
      for (int q = 0; q < nb; ++q) {
        const int64_t j = j0 + q;
        if (ok[q] && (sp[q].len == 0 || !std::binary_search(values + sp[q].begin, values + sp[q].begin + sp[q].len, pv[j])))
          continue;
        draw_from(base + static_cast<uint64_t>(j), 1, &f, pu + j, pv + j);
      }
    }
  };
  if (!unique) {
    parallel_for(k, num_threads, 4096, [&](int64_t lo, int64_t hi) { draw_range(offset, lo, hi, src, dst); });
    return log_q;
  }
  // Distinct pairs: candidates by position (in parallel), kept in position
  // order when new, so the result is the first k distinct allowed pairs of
  // the stream of positions offset, offset + 1, ... (rounds draw further
  // positions until k are kept). Keys u * num_dst + v when that fits in 63
  // bits, else the pair.
  const bool key64 = static_cast<u128>(num_src) * static_cast<u128>(num_dst) < (static_cast<u128>(1) << 63);
  if (key64 && k < (int64_t{1} << 31) && num_threads > 1) {
    distinct_pairs_partitioned(k, num_dst, static_cast<double>(k) / static_cast<double>(allowed), offset, draw_range, src,
                               dst, num_threads);
    return log_q;
  }
  // Sequential first-occurrence dedupe (one thread, pairs whose key needs
  // more than 63 bits, or k >= 2^31): one hash set over every kept pair. The
  // same pairs as the partitioned dedupe, with less work in all.
  uint64_t size = 16;
  while (2 * size < 3 * static_cast<uint64_t>(k)) size <<= 1;  // load <= 2/3
  const uint64_t mask = size - 1;
  std::vector<int64_t> keys(key64 ? size : 2 * size, -1);
  int64_t have = 0;
  uint64_t next = offset;
  std::vector<int64_t> cu, cv;
  auto slot_of = [&](int64_t u, int64_t v) {
    return (key64 ? mix64(static_cast<uint64_t>(u) * static_cast<uint64_t>(num_dst) + static_cast<uint64_t>(v))
                  : pair_hash(u, v)) &
           mask;
  };
  while (have < k) {
    const int64_t need = k - have;
    const int64_t m = need + need / 8 + 64;
    cu.resize(static_cast<size_t>(m));
    cv.resize(static_cast<size_t>(m));
    parallel_for(m, num_threads, 4096, [&](int64_t lo, int64_t hi) { draw_range(next, lo, hi, cu.data(), cv.data()); });
    next += static_cast<uint64_t>(m);
    constexpr int64_t kAhead = 16;
    for (int64_t j = 0; j < m && have < k; ++j) {
      if (j + kAhead < m) {
        const uint64_t ahead = slot_of(cu[j + kAhead], cv[j + kAhead]);
        __builtin_prefetch(keys.data() + (key64 ? ahead : 2 * ahead));
      }
      uint64_t p = slot_of(cu[j], cv[j]);
      bool fresh = true;
      if (key64) {
        const int64_t key = cu[j] * num_dst + cv[j];
        while (keys[p] >= 0) {
          if (keys[p] == key) {
            fresh = false;
            break;
          }
          p = (p + 1) & mask;
        }
        if (fresh) keys[p] = key;
      } else {
        while (keys[2 * p] >= 0) {
          if (keys[2 * p] == cu[j] && keys[2 * p + 1] == cv[j]) {
            fresh = false;
            break;
          }
          p = (p + 1) & mask;
        }
        if (fresh) {
          keys[2 * p] = cu[j];
          keys[2 * p + 1] = cv[j];
        }
      }
      if (!fresh) continue;
      src[have] = cu[j];
      dst[have] = cv[j];
      ++have;
    }
  }
  return log_q;
}

// ---------------------------------------------------------------- filtered ranks

template <class T>
void filtered_ranks(const T* scores, int64_t b, int64_t n, const int64_t* truth, const PairGroups* index,
                    const int64_t* key_a, const int64_t* key_b, int64_t* optimistic, int64_t* pessimistic,
                    int num_threads) {
  for (int64_t i = 0; i < b; ++i) {
    if (truth[i] < 0 || truth[i] >= n)
      throw std::invalid_argument("true id " + std::to_string(truth[i]) + " in row " + std::to_string(i) +
                                  " is out of range [0, " + std::to_string(n) + ")");
  }
  parallel_for(b, num_threads, 16, [&](int64_t lo, int64_t hi) {
    // Each row is copied first and read only from the copy: another thread
    // writing the caller's scores meanwhile cannot make the counts inconsistent.
    std::vector<T> row(static_cast<size_t>(n));
    for (int64_t i = lo; i < hi; ++i) {
      std::copy(scores + i * n, scores + (i + 1) * n, row.begin());
      const T* s = row.data();
      const T st = s[truth[i]];
      int64_t gt = 0, ge = 0, nan = 0;
      for (int64_t j = 0; j < n; ++j) {
        gt += s[j] > st;
        ge += s[j] >= st;
        nan += s[j] != s[j];
      }
      if (nan > 0)
        throw std::invalid_argument("scores row " + std::to_string(i) + " holds NaN");
      int64_t eq = ge - gt - 1;  // equal others (the true id itself is >= itself)
      if (index != nullptr) {
        int64_t len;
        const int64_t* f = index->find(key_a[i], key_b[i], &len);
        for (int64_t q = 0; q < len; ++q) {
          const int64_t id = f[q];
          if (id == truth[i] || id < 0 || id >= n) continue;
          gt -= s[id] > st;
          eq -= s[id] == st;
        }
      }
      optimistic[i] = gt + 1;
      pessimistic[i] = gt + eq + 1;
    }
  });
}

template void filtered_ranks<float>(const float*, int64_t, int64_t, const int64_t*, const PairGroups*,
                                    const int64_t*, const int64_t*, int64_t*, int64_t*, int);
template void filtered_ranks<double>(const double*, int64_t, int64_t, const int64_t*, const PairGroups*,
                                     const int64_t*, const int64_t*, int64_t*, int64_t*, int);

}  // namespace pyneg
