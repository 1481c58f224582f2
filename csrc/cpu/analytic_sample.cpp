#include "cpu/analytic_sample.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "cpu/alias_draw.h"
#include "cpu/parallel.h"
#include "cpu/philox.h"
#include "cpu/philox_batch.h"
#include "cpu/row_set.h"

namespace pyneg {

// 2^(j/64) rounded to double (computed with 50-digit decimals).
const double kExp2Table64[64] = {
    1.0, 1.0108892860517005, 1.0218971486541166, 1.0330248790212284,
    1.0442737824274138, 1.0556451783605572, 1.0671404006768237, 1.0787607977571199,
    1.0905077326652577, 1.102382583307841, 1.1143867425958924, 1.1265216186082418,
    1.1387886347566916, 1.1511892299529827, 1.1637248587775775, 1.1763969916502812,
    1.189207115002721, 1.202156731452703, 1.215247359980469, 1.22848053610687,
    1.241857812073484, 1.255380757024691, 1.2690509571917332, 1.2828700160787783,
    1.2968395546510096, 1.3109612115247644, 1.3252366431597413, 1.339667524053303,
    1.3542555469368927, 1.3690024229745905, 1.383909881963832, 1.3989796725383112,
    1.4142135623730951, 1.42961333839197, 1.4451808069770467, 1.460917794180647,
    1.4768261459394993, 1.4929077282912648, 1.5091644275934228, 1.5255981507445384,
    1.5422108254079407, 1.559004400237837, 1.5759808451078865, 1.593142151342267,
    1.6104903319492543, 1.6280274218573478, 1.645755478153965, 1.6636765803267364,
    1.681792830507429, 1.7001063537185235, 1.718619298122478, 1.7373338352737062,
    1.7562521603732995, 1.7753764925265212, 1.7947090750031072, 1.8142521755003989,
    1.8340080864093424, 1.8539791250833855, 1.8741676341103, 1.8945759815869656,
    1.9152065613971474, 1.9360617934922943, 1.9571441241754002, 1.978456026387951,
};

namespace {

constexpr int64_t kGrain = int64_t{1} << 15;
constexpr int kBlock = 256;

double unit53(uint64_t u) {  // (via int64: the unsigned conversion is slow on x86)
  return static_cast<double>(static_cast<int64_t>(u >> 11)) * (1.0 / 9007199254740992.0);
}

}  // namespace

namespace {

// One exclusion list, sorted and deduplicated, with the running probability
// of its ids.
struct List {
  std::vector<int64_t> ids;
  std::vector<double> cum;  // cum[j] = P(ids[0..j])
  double allowed = 1.0;     // 1 - P(ids)

  bool contains(int64_t id) const {
    if (ids.size() <= 8) {
      for (int64_t x : ids)
        if (x == id) return true;
      return false;
    }
    return std::binary_search(ids.begin(), ids.end(), id);
  }
  double mass_upto(int64_t id) const {  // P of the listed ids <= id
    const auto it = std::upper_bound(ids.begin(), ids.end(), id);
    return it == ids.begin() ? 0.0 : cum[static_cast<size_t>(it - ids.begin() - 1)];
  }
  void recompute(const AnalyticDist& d) {
    cum.resize(ids.size());
    double s = 0.0;
    for (size_t j = 0; j < ids.size(); ++j) cum[j] = s += d.prob(ids[j]);
    allowed = 1.0 - s;
  }
};

std::vector<List> prepare(const AnalyticDist& d, const ExcludeLists& ex, int64_t unique_k) {
  std::vector<List> lists(static_cast<size_t>(ex.num_lists));
  for (int64_t l = 0; l < ex.num_lists; ++l) {
    List& li = lists[static_cast<size_t>(l)];
    for (int64_t j = 0; j < ex.width; ++j) {
      const int64_t id = ex.ids[l * ex.width + j];
      if (id == -1) continue;
      if (id < 0 || id >= d.v) {
        throw std::invalid_argument("exclude holds id " + std::to_string(id) + " outside [0, " +
                                    std::to_string(d.v) + ") (use -1 for padding)");
      }
      li.ids.push_back(id);
    }
    std::sort(li.ids.begin(), li.ids.end());
    li.ids.erase(std::unique(li.ids.begin(), li.ids.end()), li.ids.end());
    const auto left = d.v - static_cast<int64_t>(li.ids.size());
    if (left == 0) {
      throw std::invalid_argument("exclude row " + std::to_string(l) +
                                  " leaves no id with positive weight to draw");
    }
    if (left < unique_k) {
      throw std::invalid_argument("size asks for " + std::to_string(unique_k) +
                                  " distinct ids per row, but row " + std::to_string(l) +
                                  " has only " + std::to_string(left) +
                                  " allowed ids with positive weight");
    }
    li.recompute(d);
  }
  return lists;
}

// Exact draw from the allowed ids of `li` (P renormalised over them).
int64_t allowed_pick(const AnalyticDist& d, const List& li, uint64_t u) {
  if (d.kind == kAnalyticUniform) {
    // The r-th allowed id: skip the listed ids at or below it.
    const uint64_t left = static_cast<uint64_t>(d.v) - li.ids.size();
    int64_t id = static_cast<int64_t>(mulhi64(u, left));
    for (int64_t e : li.ids) {
      if (e <= id) ++id; else break;
    }
    return id;
  }
  const double target = unit53(u) * li.allowed;
  int64_t lo = 0, hi = d.v - 1;  // smallest k with F(k + 1) - listed(<= k) > target
  while (lo < hi) {
    const int64_t mid = lo + (hi - lo) / 2;
    if (d.cdf(mid + 1) - li.mass_upto(mid) > target) hi = mid; else lo = mid + 1;
  }
  // Rounding may land on a listed id (its step is flat): take the next allowed
  // id, or the previous one at the end.
  int64_t id = lo;
  while (id < d.v && li.contains(id)) ++id;
  if (id == d.v) {
    id = lo;
    while (li.contains(id)) --id;
  }
  return id;
}

}  // namespace

AnalyticDist::AnalyticDist(int kind_, int64_t v_) : kind(kind_), v(v_) {
  if (kind != kAnalyticUniform && kind != kAnalyticLogUniform)
    throw std::invalid_argument("kind must be 0 (uniform) or 1 (log-uniform)");
  if (v < 1 || v > kMaxAnalyticClasses)
    throw std::invalid_argument("num_classes must be in [1, 2**50], got " + std::to_string(v));
  log_v1 = std::log1p(static_cast<double>(v));
}

int64_t AnalyticDist::pick(uint64_t u) const {
  if (kind == kAnalyticUniform) return static_cast<int64_t>(mulhi64(u, static_cast<uint64_t>(v)));
  return log_uniform_pick(u, log_v1, v);
}

double AnalyticDist::prob(int64_t k) const {
  if (kind == kAnalyticUniform) return 1.0 / static_cast<double>(v);
  return std::log1p(1.0 / (static_cast<double>(k) + 1.0)) / log_v1;
}

double AnalyticDist::cdf(int64_t k) const {
  if (kind == kAnalyticUniform) return static_cast<double>(k) / static_cast<double>(v);
  return std::log1p(static_cast<double>(k)) / log_v1;
}

void analytic_sample(const AnalyticDist& d, uint64_t seed, uint64_t offset, int64_t* out, int64_t n,
                     int num_threads) {
  const AnalyticDist dist = d;
  parallel_for(n, num_threads, kGrain, [&, dist](int64_t b, int64_t e) {
    uint64_t r[kBlock];
    for (int64_t j = b; j < e; j += kBlock) {
      const int m = static_cast<int>(std::min<int64_t>(kBlock, e - j));
      fill_draw_randoms(seed, offset + static_cast<uint64_t>(j), m, r);
      if (dist.kind == kAnalyticUniform) {
        const auto v = static_cast<uint64_t>(dist.v);
        for (int i = 0; i < m; ++i) out[j + i] = static_cast<int64_t>(mulhi64(r[i], v));
      } else {
        const double lv = dist.log_v1;
        const int64_t v = dist.v;
        for (int i = 0; i < m; ++i) out[j + i] = log_uniform_pick(r[i], lv, v);
      }
    }
  });
}

void analytic_sample_excluding(const AnalyticDist& d, uint64_t seed, uint64_t offset,
                               const ExcludeLists& exclude, int64_t rows, int64_t k, int64_t* out,
                               int num_threads) {
  const std::vector<List> lists = prepare(d, exclude, 0);
  const int64_t grain = std::max<int64_t>(1, kGrain / std::max<int64_t>(k, 1));
  parallel_for(rows, num_threads, grain, [&](int64_t rb, int64_t re) {
    std::vector<uint64_t> r(static_cast<size_t>(std::min<int64_t>(k, kBlock)));
    for (int64_t row = rb; row < re; ++row) {
      const List& li = lists[static_cast<size_t>(row / exclude.rows_per_list)];
      const bool use_cdf = li.allowed < 1.0 / 16.0;
      int64_t* dst = out + row * k;
      const uint64_t base = offset + static_cast<uint64_t>(row * k);
      for (int64_t j = 0; j < k; j += kBlock) {
        const int m = static_cast<int>(std::min<int64_t>(kBlock, k - j));
        fill_draw_randoms(seed, base + static_cast<uint64_t>(j), m, r.data());
        for (int i = 0; i < m; ++i) {
          const uint64_t pos = base + static_cast<uint64_t>(j + i);
          int64_t id = -1;
          if (!use_cdf) {
            id = d.pick(r[static_cast<size_t>(i)]);
            for (uint32_t attempt = 1; li.contains(id) && attempt <= kMaxRedraws; ++attempt)
              id = d.pick(random64(seed, pos, attempt, kTagRedraw));
            if (li.contains(id)) id = -1;
          }
          if (id < 0) id = allowed_pick(d, li, random64(seed, pos, 0u, kTagRedraw));
          dst[j + i] = id;
        }
      }
    }
  });
}

void analytic_sample_unique(const AnalyticDist& d, uint64_t seed, uint64_t offset,
                            const ExcludeLists& exclude, int64_t rows, int64_t k, int64_t* out,
                            int64_t* tries_out, int num_threads) {
  const std::vector<List> lists = prepare(d, exclude, k);
  const int64_t grain = std::max<int64_t>(1, kGrain / std::max<int64_t>(4 * k, 1));
  parallel_for(rows, num_threads, grain, [&](int64_t rb, int64_t re) {
    RowSet seen;
    int64_t cached_list = -1, cached_tries = 0;
    for (int64_t row = rb; row < re; ++row) {
      const List& li = lists[static_cast<size_t>(row / exclude.rows_per_list)];
      const uint64_t base = offset + static_cast<uint64_t>(row * k);
      int64_t* dst = out + row * k;
      seen.reset(static_cast<size_t>(k) + li.ids.size());
      for (int64_t x : li.ids) seen.insert(x);
      const uint64_t max_tries = unique_max_tries(k);
      int64_t got = 0;
      uint64_t t = 0;
      for (; got < k && t < max_tries; ++t) {
        const int64_t id = d.pick(random64(seed, base, static_cast<uint32_t>(t), kTagUnique));
        if (seen.insert(id)) dst[got++] = id;
      }
      auto tries = static_cast<int64_t>(t);
      if (got < k) {
        // Successive sampling is memoryless: finish from the exact CDF of the
        // ids neither excluded nor drawn yet.
        List taken;
        taken.ids = li.ids;
        taken.ids.insert(taken.ids.end(), dst, dst + got);
        std::sort(taken.ids.begin(), taken.ids.end());
        taken.recompute(d);
        for (uint32_t i = 0; got < k; ++i) {
          const int64_t id = allowed_pick(d, taken, random64(seed, base, i, kTagRace));
          dst[got++] = id;
          taken.ids.insert(std::upper_bound(taken.ids.begin(), taken.ids.end(), id), id);
          taken.recompute(d);
        }
        if (tries_out) {
          // The draws that would have given the row its k ids are not drawn: report the
          // expected number (as the alias kernels' expected_tries), at least those taken.
          // Rows of one exclusion list share it (computed once per list and chunk).
          const int64_t l = row / exclude.rows_per_list;
          if (l != cached_list) {
            cached_tries = analytic_expected_tries(d, li.ids.data(), static_cast<int64_t>(li.ids.size()), k);
            cached_list = l;
          }
          tries = std::max<int64_t>(tries, cached_tries);
        }
      }
      if (tries_out) tries_out[row] = tries;
    }
  });
}

namespace {

// sum over i in [a, b) of f(i) = 1 - (1 - p_i)^t for the log-uniform, as the
// integral of f over [a - 1/2, b - 1/2) (midpoint rule: f varies on the scale
// of i, so the error is O(f'' / 24) per id), by 8-point Gauss-Legendre on
// segments [x, 2x).
double log_uniform_tail(const AnalyticDist& d, double t, double a, double b) {
  static const double kNodes[4] = {0.1834346424956498, 0.5255324099163290, 0.7966664774136267,
                                   0.9602898564975363};
  static const double kWeights[4] = {0.3626837833783620, 0.3137066458778873, 0.2223810344533745,
                                     0.1012285362903763};
  auto f = [&](double x) {  // x >= 1023.5: p = log1p(1 / (x + 1)) / log(V + 1)
    const double p = std::log1p(1.0 / (x + 1.0)) / d.log_v1;
    return -std::expm1(t * std::log1p(-p));
  };
  double s = 0.0;
  for (double x0 = a - 0.5, end = b - 0.5; x0 < end;) {
    const double x1 = std::min(2.0 * x0, end);
    const double mid = 0.5 * (x0 + x1), half = 0.5 * (x1 - x0);
    double seg = 0.0;
    for (int j = 0; j < 4; ++j) seg += kWeights[j] * (f(mid - half * kNodes[j]) + f(mid + half * kNodes[j]));
    s += seg * half;
    x0 = x1;
  }
  return s;
}

}  // namespace

int64_t analytic_expected_tries(const AnalyticDist& d, const int64_t* excluded, int64_t num_excluded,
                                int64_t k) {
  if (k < 1 || k > d.v - num_excluded)
    throw std::invalid_argument("k must be in [1, " + std::to_string(d.v - num_excluded) + "], got " +
                                std::to_string(k));
  constexpr int64_t kExact = 1024;  // ids summed term by term
  const double target = static_cast<double>(k) - 0.5;
  auto distinct = [&](double t) {
    if (d.kind == kAnalyticUniform) {
      const double allowed = static_cast<double>(d.v - num_excluded);
      return -allowed * std::expm1(t * std::log1p(-1.0 / static_cast<double>(d.v)));
    }
    auto f = [&](int64_t i) { return -std::expm1(t * std::log1p(-d.prob(i))); };
    double s = 0.0;
    const int64_t m = std::min(d.v, kExact);
    for (int64_t i = 0; i < m; ++i) s += f(i);
    if (d.v > kExact) s += log_uniform_tail(d, t, static_cast<double>(kExact), static_cast<double>(d.v));
    for (int64_t j = 0; j < num_excluded; ++j) s -= f(excluded[j]);
    return s;
  };
  if (d.kind == kAnalyticUniform) {  // closed form: A (1 - (1 - 1/V)^t) = k - 1/2
    const double allowed = static_cast<double>(d.v - num_excluded);
    const double need = std::log1p(-target / allowed) / std::log1p(-1.0 / static_cast<double>(d.v));
    return std::max<int64_t>(k, static_cast<int64_t>(std::ceil(need)));
  }
  double lo = static_cast<double>(k), hi = lo;
  while (distinct(hi) < target && hi < 1e18) hi *= 2.0;
  for (int it = 0; it < 64 && hi - lo > 0.5; ++it) {
    const double mid = 0.5 * (lo + hi);
    (distinct(mid) < target ? lo : hi) = mid;
  }
  return static_cast<int64_t>(std::ceil(hi));
}

}  // namespace pyneg
