// Body of the CPU kernels; included by kernels_generic.cpp and kernels_avx2.cpp with PK_KNS set
// to a namespace name, so one source becomes one function set per instruction set.
#include <algorithm>
#include <cstring>
#include <cmath>
#include <limits>
#include "kernels.hpp"
#include "paramkit/ggml_blocks.hpp"
#if defined(PK_KAVX2)
#include <immintrin.h>
#endif

namespace paramkit {
namespace PK_KNS {

constexpr int L = 8;  // independent accumulator lanes: fixed, so results do not depend on the ISA

template <class T> static inline T load(const uint8_t* p) { T v; std::memcpy(&v, p, sizeof(T)); return v; }

static void hist8(const uint8_t* p, size_t n, uint32_t* h) {
  uint32_t *h0 = h, *h1 = h + 256, *h2 = h + 512, *h3 = h + 768;
  size_t i = 0;
  for (; i + 4 <= n; i += 4) { h0[p[i]]++; h1[p[i + 1]]++; h2[p[i + 2]]++; h3[p[i + 3]]++; }
  for (; i < n; ++i) h0[p[i]]++;
}

static void hist16(const uint8_t* p, size_t n, uint32_t* h) {
  uint32_t *h0 = h, *h1 = h + 65536, *h2 = h + 2 * 65536, *h3 = h + 3 * 65536;
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    uint64_t a = load<uint64_t>(p + 2 * i), b = load<uint64_t>(p + 2 * i + 8);
    h0[a & 0xFFFF]++; h1[(a >> 16) & 0xFFFF]++; h2[(a >> 32) & 0xFFFF]++; h3[a >> 48]++;
    h0[b & 0xFFFF]++; h1[(b >> 16) & 0xFFFF]++; h2[(b >> 32) & 0xFFFF]++; h3[b >> 48]++;
  }
  for (; i < n; ++i) h0[load<uint16_t>(p + 2 * i)]++;
}

// Lane state of the float passes; vector main loops (AVX2, f32_stats) fill exactly the same lanes
// (element i goes to lane i % L) as the scalar loop, so every ISA gives bit-identical results.
template <class F> struct FloatLanes {
  uint64_t nan[L] = {}, pinf[L] = {}, ninf[L] = {}, zer[L] = {}, sub[L] = {}, fin[L] = {};
  F mn[L], mx[L];
  double sum[L] = {};
};
#if defined(PK_KAVX2)
// 8 consecutive bfloat16 elements widened exactly to float (bits << 16)
static inline __m256 load8_bf16(const uint8_t* p, size_t i) {
  __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 2 * i));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}
#endif

// F64 (f32 has its own block kernel, f32_stats; bf16 and f16 theirs, h16_stats)
template <class F, class U, U EXP, U MAN, int SHIFT>
static void wide_float(const uint8_t* p, size_t n, PieceStats& s, uint32_t* qhist) {
  auto ld = [p](size_t i) -> F { return load<F>(p + i * sizeof(F)); };
  FloatLanes<F> ln;
  auto &nan = ln.nan, &pinf = ln.pinf, &ninf = ln.ninf, &zer = ln.zer, &sub = ln.sub, &fin = ln.fin;
  auto &mn = ln.mn, &mx = ln.mx;
  auto& sum = ln.sum;
  for (int j = 0; j < L; ++j) { mn[j] = std::numeric_limits<F>::infinity(); mx[j] = -mn[j]; }
  const U SIGN = U(1) << SHIFT;
  // float64 only: scale by 2^-e (e from the finite absmax of the piece) before summing
  int e = 0;
  double f1 = 1.0, f2 = 1.0;
  if constexpr (sizeof(F) == 8) {
    double am = 0;
    for (size_t k = 0; k < n; ++k) {
      double x = double(ld(k)), a = x < 0 ? -x : x;
      am = (a > am && a - a == 0) ? a : am;
    }
    if (am > 0) {
      std::frexp(am, &e);
      f1 = std::ldexp(1.0, -(e / 2));   // two factors: 2^-e alone may not be representable
      f2 = std::ldexp(1.0, -(e - e / 2));
    }
  }
  size_t i = 0;
  auto body = [&](int j, F x) {
    U b; std::memcpy(&b, &x, sizeof(F));
    U e = b & EXP, m = b & MAN;
    bool isn = (e == EXP) & (m != 0), isi = (e == EXP) & (m == 0), neg = (b & SIGN) != 0;
    nan[j] += isn; pinf[j] += isi & !neg; ninf[j] += isi & neg;
    zer[j] += (b & ~SIGN) == 0; sub[j] += (e == 0) & (m != 0);
    mn[j] = x < mn[j] ? x : mn[j]; mx[j] = x > mx[j] ? x : mx[j];
    bool f = e != EXP; fin[j] += f; sum[j] += f ? double(x) * f1 * f2 : 0.0;
  };
  for (; i + L <= n; i += L)
    for (int j = 0; j < L; ++j) body(j, ld(i + j));
  for (; i < n; ++i) body(0, ld(i));
  PieceStats r;
  double tsum = 0, nfin = 0;
  for (int j = 0; j < L; ++j) {
    r.nan += nan[j]; r.posinf += pinf[j]; r.neginf += ninf[j]; r.zeros += zer[j]; r.subnormal += sub[j];
    nfin += double(fin[j]); tsum += sum[j];
    r.fmin = double(mn[j]) < r.fmin ? double(mn[j]) : r.fmin;
    r.fmax = double(mx[j]) > r.fmax ? double(mx[j]) : r.fmax;
  }
  r.nonnan = n - r.nan;
  if (nfin > 0) {  // second pass over the cached piece: corrected two-pass sum of squares
    double mean = tsum / nfin, s1[L] = {}, s2[L] = {};
    auto dev = [&](int j, F x) {
      U b; std::memcpy(&b, &x, sizeof(F));
      double d = (b & EXP) != EXP ? double(x) * f1 * f2 - mean : 0.0;
      s1[j] += d; s2[j] += d * d;
    };
    i = 0;
    for (; i + L <= n; i += L)
      for (int j = 0; j < L; ++j) dev(j, ld(i + j));
    for (; i < n; ++i) dev(0, ld(i));
    double c = 0, q = 0;
    for (int j = 0; j < L; ++j) { c += s1[j]; q += s2[j]; }
    r.mom.n = nfin; r.mom.mean = mean + c / nfin;
    r.mom.m2 = q - c * c / nfin;
    if (r.mom.m2 < 0) r.mom.m2 = 0;
    r.mom.exp = e;
  }
  if (qhist) {
    for (i = 0; i < n; ++i) {
      F x = ld(i);
      if (x != x) continue;
      qhist[f32_to_bits(float(x)) >> 16]++;
    }
  }
  s = r;
}

// ---- float32 statistics in one pass over memory ----
// As h16_stats: blocks of kF32Block elements handled while in L1; counts and min/max in the lanes
// of FloatLanes (element i of the piece in lane i % L); the moments of a block about a shift K =
// its first finite element (exact in float64), d = x - K (+0 for a non-finite x) summed in 8
// float64 lanes (element t of the block in lane t % 8, d*d multiplied then added), the lanes
// added in a fixed order and the blocks Chan-merged in order. The AVX2 loop does exactly those
// operations, so both builds give bit-identical results.
constexpr size_t kF32Block = 1024;

#if defined(PK_KAVX2)
struct F32Vec {   // count and extreme lanes of the AVX2 loop, kept in registers across blocks
  __m256i cnan, cpinf, cninf, czer, csub, cfin;
  __m256 mn, mx;
};
// The whole 8-element groups of a block: counts and extremes into v, moment terms into a8/q8
// (zero here); returns whether the block held a NaN or Inf.
static inline __attribute__((always_inline)) bool f32_block_vec(const uint8_t* p, size_t end, double K, F32Vec& v,
                                                                 double* a8, double* q8) {
  const __m256i EXPv = _mm256_set1_epi32(0x7F800000), MANv = _mm256_set1_epi32(0x007FFFFF),
                ABSv = _mm256_set1_epi32(0x7FFFFFFF), Z = _mm256_setzero_si256();
  const __m256d Kv = _mm256_set1_pd(K);
  __m256d a0 = _mm256_setzero_pd(), a1 = a0, q0 = a0, q1 = a0;
  __m256i bad = Z;
  for (size_t i = 0; i < end; i += 8) {
    __m256 x = _mm256_loadu_ps(reinterpret_cast<const float*>(p + 4 * i));
    __m256i b = _mm256_castps_si256(x);
    __m256i e = _mm256_and_si256(b, EXPv), m = _mm256_and_si256(b, MANv);
    __m256i emax = _mm256_cmpeq_epi32(e, EXPv), mz = _mm256_cmpeq_epi32(m, Z);
    __m256i isn = _mm256_andnot_si256(mz, emax), isi = _mm256_and_si256(emax, mz);
    __m256i neg = _mm256_srai_epi32(b, 31);
    bad = _mm256_or_si256(bad, emax);
    v.cnan = _mm256_sub_epi32(v.cnan, isn);
    v.cpinf = _mm256_sub_epi32(v.cpinf, _mm256_andnot_si256(neg, isi));
    v.cninf = _mm256_sub_epi32(v.cninf, _mm256_and_si256(neg, isi));
    v.czer = _mm256_sub_epi32(v.czer, _mm256_cmpeq_epi32(_mm256_and_si256(b, ABSv), Z));
    v.csub = _mm256_sub_epi32(v.csub, _mm256_andnot_si256(mz, _mm256_cmpeq_epi32(e, Z)));
    v.cfin = _mm256_sub_epi32(v.cfin, _mm256_xor_si256(emax, _mm256_set1_epi32(-1)));
    v.mn = _mm256_min_ps(x, v.mn);   // x < mn ? x : mn, as the scalar loop
    v.mx = _mm256_max_ps(x, v.mx);
    __m256i fin = _mm256_xor_si256(emax, _mm256_set1_epi32(-1));
    __m256d f0 = _mm256_castsi256_pd(_mm256_cvtepi32_epi64(_mm256_castsi256_si128(fin)));
    __m256d f1 = _mm256_castsi256_pd(_mm256_cvtepi32_epi64(_mm256_extracti128_si256(fin, 1)));
    __m256d d0 = _mm256_and_pd(_mm256_sub_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(x)), Kv), f0);
    __m256d d1 = _mm256_and_pd(_mm256_sub_pd(_mm256_cvtps_pd(_mm256_extractf128_ps(x, 1)), Kv), f1);
    a0 = _mm256_add_pd(a0, d0); a1 = _mm256_add_pd(a1, d1);
    q0 = _mm256_add_pd(q0, _mm256_mul_pd(d0, d0)); q1 = _mm256_add_pd(q1, _mm256_mul_pd(d1, d1));
  }
  _mm256_storeu_pd(a8, a0); _mm256_storeu_pd(a8 + 4, a1); _mm256_storeu_pd(q8, q0); _mm256_storeu_pd(q8 + 4, q1);
  return !_mm256_testz_si256(bad, bad);
}
#endif

// block_at(bs, m): the m float32 values of elements [bs, bs + m) (bs a multiple of kF32Block): the piece itself,
// or a GGML piece's blocks dequantized into a buffer while they are in L1 (ggml_stats)
template <class BlockAt>
static void f32_stats_of(BlockAt&& block_at, size_t n, PieceStats& s, uint32_t* qhist) {
  FloatLanes<float> ln;
  for (int j = 0; j < L; ++j) { ln.mn[j] = std::numeric_limits<float>::infinity(); ln.mx[j] = -ln.mn[j]; }
  auto count = [&](int j, float x) {
    uint32_t b; std::memcpy(&b, &x, 4);
    uint32_t e = b & 0x7F800000u, m = b & 0x007FFFFFu;
    bool isn = (e == 0x7F800000u) & (m != 0), isi = (e == 0x7F800000u) & (m == 0), neg = (b >> 31) != 0;
    ln.nan[j] += isn; ln.pinf[j] += isi & !neg; ln.ninf[j] += isi & neg;
    ln.zer[j] += (b & 0x7FFFFFFFu) == 0; ln.sub[j] += (e == 0) & (m != 0);
    ln.mn[j] = x < ln.mn[j] ? x : ln.mn[j]; ln.mx[j] = x > ln.mx[j] ? x : ln.mx[j];
    ln.fin[j] += e != 0x7F800000u;
  };
  PieceStats r;
#if defined(PK_KAVX2)
  F32Vec v;
  v.cnan = v.cpinf = v.cninf = v.czer = v.csub = v.cfin = _mm256_setzero_si256();
  v.mn = _mm256_loadu_ps(ln.mn); v.mx = _mm256_loadu_ps(ln.mx);
#endif
  for (size_t bs = 0; bs < n; bs += kF32Block) {
    const size_t m = std::min(kF32Block, n - bs);
    const uint8_t* pb = block_at(bs, m);
    size_t kf = 0;   // the shift: the block's first finite element (none: no moments)
    while (kf < m && (f32_to_bits(load<float>(pb + 4 * kf)) & 0x7F800000u) == 0x7F800000u) ++kf;
    const double K = kf < m ? double(load<float>(pb + 4 * kf)) : 0.0;
    double a8[8] = {}, q8[8] = {};
    size_t done = 0, nfin = 0;
    bool bad = false;
#if defined(PK_KAVX2)
    done = m - m % 8;
    bad = f32_block_vec(pb, done, K, v, a8, q8);
#endif
    for (size_t t = done; t < m; ++t) {
      float x = load<float>(pb + 4 * t);
      count(int(t % L), x);
      bool f = (f32_to_bits(x) & 0x7F800000u) != 0x7F800000u;
      double d = f ? double(x) - K : 0.0;
      a8[t % 8] += d; q8[t % 8] += d * d;
      bad |= !f;
    }
    if (bad) {   // (rare) count the block's finite elements again, it is in L1
      for (size_t t = 0; t < m; ++t) nfin += (f32_to_bits(load<float>(pb + 4 * t)) & 0x7F800000u) != 0x7F800000u;
    } else {
      nfin = m;
    }
    if (qhist) {   // the block's bf16-prefix histogram while it is in L1
      size_t t = 0;
#if defined(PK_KAVX2)
      if (!bad) {   // no NaN in the block: the prefixes of 8 values at a time, then the increments
        alignas(32) uint32_t idx[kF32Block];
        for (; t + 8 <= m; t += 8)
          _mm256_store_si256(reinterpret_cast<__m256i*>(idx + t),
                             _mm256_srli_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(pb + 4 * t)), 16));
        for (size_t k = 0; k < t; ++k) qhist[idx[k]]++;
      }
#endif
      for (; t < m; ++t) {
        const float x = load<float>(pb + 4 * t);
        if (x == x) qhist[f32_to_bits(x) >> 16]++;
      }
    }
    if (nfin > 0) {
      double c = ((a8[0] + a8[1]) + (a8[2] + a8[3])) + ((a8[4] + a8[5]) + (a8[6] + a8[7]));
      double q = ((q8[0] + q8[1]) + (q8[2] + q8[3])) + ((q8[4] + q8[5]) + (q8[6] + q8[7]));
      Moments mb;
      mb.n = double(nfin);
      mb.mean = K + c / mb.n;
      mb.m2 = q - c * c / mb.n;
      if (mb.m2 < 0) mb.m2 = 0;
      merge_moments(r.mom, mb);
    }
  }
#if defined(PK_KAVX2)
  {
    alignas(32) int32_t t[6][8];
    _mm256_store_si256((__m256i*)t[0], v.cnan); _mm256_store_si256((__m256i*)t[1], v.cpinf);
    _mm256_store_si256((__m256i*)t[2], v.cninf); _mm256_store_si256((__m256i*)t[3], v.czer);
    _mm256_store_si256((__m256i*)t[4], v.csub); _mm256_store_si256((__m256i*)t[5], v.cfin);
    alignas(32) float vmn[8], vmx[8];
    _mm256_store_ps(vmn, v.mn); _mm256_store_ps(vmx, v.mx);
    for (int j = 0; j < 8; ++j) {   // the scalar tail ran after the vector groups of its lane
      ln.nan[j] += uint32_t(t[0][j]); ln.pinf[j] += uint32_t(t[1][j]); ln.ninf[j] += uint32_t(t[2][j]);
      ln.zer[j] += uint32_t(t[3][j]); ln.sub[j] += uint32_t(t[4][j]); ln.fin[j] += uint32_t(t[5][j]);
      ln.mn[j] = ln.mn[j] < vmn[j] ? ln.mn[j] : vmn[j]; ln.mx[j] = ln.mx[j] > vmx[j] ? ln.mx[j] : vmx[j];
    }
  }
#endif
  for (int j = 0; j < L; ++j) {
    r.nan += ln.nan[j]; r.posinf += ln.pinf[j]; r.neginf += ln.ninf[j]; r.zeros += ln.zer[j]; r.subnormal += ln.sub[j];
    r.fmin = double(ln.mn[j]) < r.fmin ? double(ln.mn[j]) : r.fmin;
    r.fmax = double(ln.mx[j]) > r.fmax ? double(ln.mx[j]) : r.fmax;
  }
  r.nonnan = n - r.nan;
  s = r;
}

static void f32_stats(const uint8_t* p, size_t n, PieceStats& s, uint32_t* qhist) {
  f32_stats_of([p](size_t bs, size_t) { return p + 4 * bs; }, n, s, qhist);
}

// ---- bfloat16 / float16 statistics in one pass over memory (the quantiles=False path) ----
// One template over the 16-bit float format (H16Fmt below: bf16 1/8/7, f16 1/5/10). The piece is
// cut into blocks of kH16Block elements, each handled while it is in L1. Counts and min/max are
// integer work on the raw 16-bit patterns (exact, so their order does not matter). The moments of
// a block are taken about a shift K = its first finite element (Samuelson: (K - mean)^2 <= n var,
// so the shifted float64 sums lose at most log2(kH16Block) of 53 bits), and the blocks are
// Chan-merged in order. Moment terms go group by group (16 elements) into 4 float64 lanes in the
// fixed order of h16_group; the AVX2 loop does exactly those operations, so both builds give
// bit-identical results.
constexpr size_t kH16Block = 1024;

// A 16-bit sign-magnitude float format: EXP the exponent mask (= +inf's pattern; a magnitude
// above it is NaN), MINNORM the smallest normal magnitude, decode exact (subnormals included).
struct Bf16Fmt {
  static constexpr uint16_t EXP = 0x7F80, MINNORM = 0x0080;
  static float decode(uint16_t b) { return decode_bf16(b); }
};
struct F16Fmt {
  static constexpr uint16_t EXP = 0x7C00, MINNORM = 0x0400;
  static float decode(uint16_t b) { return decode_f16(b); }
};

// Order-preserving signed key of a 16-bit sign-magnitude pattern, an involution: -inf < ... < -0
// < +0 < ... < +inf, positive NaNs above +inf and negative NaNs below -inf (so NaN is masked out first).
static inline int16_t h16_key(uint16_t b) {
  int16_t s = int16_t(b);
  return int16_t(s ^ ((s >> 15) & 0x7FFF));
}

struct H16Acc {
  uint64_t nan = 0, pinf = 0, ninf = 0, zero = 0, small = 0;   // small: |x| below MINNORM (zeros too)
  int16_t kmin = 0x7FFF, kmax = int16_t(0x8000);              // keys of the non-NaN elements
};

template <class Fmt>
static inline void h16_count(H16Acc& a, uint16_t b, bool zs) {   // zs: count zeros and small too
  uint16_t m = b & 0x7FFF;
  bool nan = m > Fmt::EXP;
  a.nan += nan; a.pinf += b == Fmt::EXP; a.ninf += b == (0x8000 | Fmt::EXP);
  if (zs) { a.zero += m == 0; a.small += m < Fmt::MINNORM; }
  int16_t k = h16_key(b);
  int16_t kn = nan ? int16_t(0x7FFF) : k, kx = nan ? int16_t(0x8000) : k;
  a.kmin = kn < a.kmin ? kn : a.kmin; a.kmax = kx > a.kmax ? kx : a.kmax;
}

// Moment terms of one group of 16 elements (m < 16: the rest count as the shift itself); a
// non-finite element is replaced by the shift (bits kb, value K), so its d is +0. Lane k takes
// elements k, 8+k, 4+k, 12+k in that order (the AVX2 register layout of h16_widen);
// the generic build calls std::fma, which rounds once like the AVX2 vfmadd.
template <class Fmt>
static inline void h16_group(const uint8_t* p, size_t m, uint16_t kb, double K, double* a, double* q) {
  double d[16];
  for (size_t t = 0; t < 16; ++t) {
    uint16_t b = t < m ? load<uint16_t>(p + 2 * t) : kb;
    if ((b & Fmt::EXP) == Fmt::EXP) b = kb;
    d[t] = double(Fmt::decode(b)) - K;
  }
  for (int k = 0; k < 4; ++k) {
    double d0 = d[k], d1 = d[8 + k], d2 = d[4 + k], d3 = d[12 + k];
    a[k] += (d0 + d1) + (d2 + d3);
    double sq = d0 * d0;
    sq = std::fma(d1, d1, sq); sq = std::fma(d2, d2, sq); sq = std::fma(d3, d3, sq);
    q[k] += sq;
  }
}

#if defined(PK_KAVX2)
static inline uint64_t hsum_epi16(__m256i c) {   // c: non-negative 16-bit counts
  __m256i w = _mm256_madd_epi16(c, _mm256_set1_epi16(1));
  __m128i x = _mm_add_epi32(_mm256_castsi256_si128(w), _mm256_extracti128_si256(w, 1));
  x = _mm_add_epi32(x, _mm_shuffle_epi32(x, 0x4E));
  x = _mm_add_epi32(x, _mm_shuffle_epi32(x, 0xB1));
  return uint64_t(uint32_t(_mm_cvtsi128_si32(x)));
}
static inline uint16_t hred16(__m256i v, int op) {   // 0: max signed, 1: max unsigned, 2: min unsigned
  alignas(32) uint16_t t[16];
  _mm256_store_si256(reinterpret_cast<__m256i*>(t), v);
  uint16_t r = t[0];
  for (int j = 1; j < 16; ++j) {
    if (op == 0) r = int16_t(t[j]) > int16_t(r) ? t[j] : r;
    else if (op == 1) r = t[j] > r ? t[j] : r;
    else r = t[j] < r ? t[j] : r;
  }
  return r;
}
// 16 patterns (finite ones: exact) -> 4 x 4 float64 minus K: d0 elements 0-3, d1 8-11, d2 4-7,
// d3 12-15. bf16 widens by bits << 16 (the unpack interleaves: lo = 0-3 | 8-11, hi = 4-7 | 12-15);
// f16 by F16C vcvtph2ps, exact for every finite value, subnormals included (MXCSR.DAZ ignored).
template <class Fmt>
static inline void h16_widen(__m256i b, __m256d Kv, __m256d& d0, __m256d& d1, __m256d& d2, __m256d& d3) {
  __m256 lo, hi;
  if constexpr (Fmt::EXP == Bf16Fmt::EXP) {
    const __m256i Z = _mm256_setzero_si256();
    lo = _mm256_castsi256_ps(_mm256_unpacklo_epi16(Z, b)); hi = _mm256_castsi256_ps(_mm256_unpackhi_epi16(Z, b));
  } else {   // first = 0-7, second = 8-15: regroup to the same layout
    __m256 f0 = _mm256_cvtph_ps(_mm256_castsi256_si128(b)), f1 = _mm256_cvtph_ps(_mm256_extracti128_si256(b, 1));
    lo = _mm256_permute2f128_ps(f0, f1, 0x20);   // 0-3 | 8-11
    hi = _mm256_permute2f128_ps(f0, f1, 0x31);   // 4-7 | 12-15
  }
  d0 = _mm256_sub_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(lo)), Kv);
  d1 = _mm256_sub_pd(_mm256_cvtps_pd(_mm256_extractf128_ps(lo, 1)), Kv);
  d2 = _mm256_sub_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(hi)), Kv);
  d3 = _mm256_sub_pd(_mm256_cvtps_pd(_mm256_extractf128_ps(hi, 1)), Kv);
}
// Extremes of raw 16-bit patterns without a key transform, kept as 3 lane-wise reductions:
// smax = max as int16 (the largest value if any sign bit is clear), umax = max as uint16 (the most
// negative value if any sign bit is set), umin = min as uint16 (the value nearest +0 among the
// non-negative ones, else the negative nearest -0). Valid when there is no NaN.
struct H16Ext { __m256i smax, umax, umin; };

// The whole 16-element groups of a block of m elements with no NaN or Inf among them: zero and
// small counts into `acc` (by a second pass over the L1-resident block when it has any), extremes into `ext`, moment terms into a4/q4 exactly as h16_group
// (which a4/q4, zero here, then hold). Returns false, having changed nothing, when the groups do
// hold a NaN or Inf: the caller takes that (rare) block the scalar way.
template <class Fmt>
__attribute__((noinline)) static bool h16_block_vec(const uint8_t* p, size_t m, double K, H16Acc& acc, H16Ext& ext,
                                                    double* a4, double* q4) {
  const __m256i ABS = _mm256_set1_epi16(0x7FFF), Z = _mm256_setzero_si256();
  const __m256d Kv = _mm256_set1_pd(K);
  __m256i smax = _mm256_set1_epi16(int16_t(0x8000)), umax = Z, umin = _mm256_set1_epi16(-1), amin = _mm256_set1_epi16(-1);
  __m256d a = _mm256_setzero_pd(), q = _mm256_setzero_pd();
  const size_t end = m - m % 16;
  for (size_t i = 0; i < end; i += 16) {
    __m256i b = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 2 * i));
    amin = _mm256_min_epu16(amin, _mm256_and_si256(b, ABS));
    smax = _mm256_max_epi16(smax, b); umax = _mm256_max_epu16(umax, b); umin = _mm256_min_epu16(umin, b);
    __m256d d0, d1, d2, d3;
    h16_widen<Fmt>(b, Kv, d0, d1, d2, d3);
    a = _mm256_add_pd(a, _mm256_add_pd(_mm256_add_pd(d0, d1), _mm256_add_pd(d2, d3)));
    __m256d sq = _mm256_mul_pd(d0, d0);
    sq = _mm256_fmadd_pd(d1, d1, sq); sq = _mm256_fmadd_pd(d2, d2, sq); sq = _mm256_fmadd_pd(d3, d3, sq);
    q = _mm256_add_pd(q, sq);
  }
  // NaN or Inf present: a positive one is above the largest finite as int16, a negative one at or
  // above -inf's pattern as uint16
  __m256i bad = _mm256_or_si256(_mm256_cmpgt_epi16(smax, _mm256_set1_epi16(int16_t(Fmt::EXP - 1))),
                                _mm256_cmpeq_epi16(_mm256_max_epu16(umax, _mm256_set1_epi16(int16_t(0x8000 | Fmt::EXP))), umax));
  if (_mm256_movemask_epi8(bad)) return false;
  _mm256_storeu_pd(a4, a); _mm256_storeu_pd(q4, q);
  if (hred16(amin, 2) < Fmt::MINNORM) {   // zeros or subnormals: count them (the block is in L1)
    const __m256i SMALL = _mm256_set1_epi16(int16_t(Fmt::MINNORM));
    __m256i czero = Z, csmall = Z;
    for (size_t i = 0; i < end; i += 16) {
      __m256i am = _mm256_and_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 2 * i)), ABS);
      czero = _mm256_sub_epi16(czero, _mm256_cmpeq_epi16(am, Z));
      csmall = _mm256_sub_epi16(csmall, _mm256_cmpgt_epi16(SMALL, am));
    }
    acc.zero += hsum_epi16(czero); acc.small += hsum_epi16(csmall);
  }
  ext.smax = _mm256_max_epi16(ext.smax, smax); ext.umax = _mm256_max_epu16(ext.umax, umax);
  ext.umin = _mm256_min_epu16(ext.umin, umin);
  return true;
}
#endif

template <class Fmt>
static void h16_stats(const uint8_t* p, size_t n, PieceStats& s, uint32_t* qhist) {
  static_assert(kH16Block % 16 == 0 && kH16Block / 16 <= 32767, "int16 lane counters");
  H16Acc acc;
  PieceStats r;
#if defined(PK_KAVX2)
  H16Ext ext = {_mm256_set1_epi16(int16_t(0x8000)), _mm256_setzero_si256(), _mm256_set1_epi16(-1)};
  bool any_vec = false;
#endif
  for (size_t bs = 0; bs < n; bs += kH16Block) {
    const uint8_t* pb = p + 2 * bs;
    const size_t m = std::min(kH16Block, n - bs);
    const uint64_t nonfin0 = acc.nan + acc.pinf + acc.ninf;
    // the shift: the block's first finite element (any value when there is none)
    uint16_t kb = 0;
    for (size_t i = 0; i < m; ++i) {
      uint16_t b = load<uint16_t>(pb + 2 * i);
      if ((b & Fmt::EXP) != Fmt::EXP) { kb = b; break; }
    }
    const double K = double(Fmt::decode(kb));
    double a4[4] = {}, q4[4] = {};
    size_t done = 0;
#if defined(PK_KAVX2)
    if (m >= 16 && h16_block_vec<Fmt>(pb, m, K, acc, ext, a4, q4)) { done = m - m % 16; any_vec = true; }
#endif
    for (size_t i = done; i < m; ++i) h16_count<Fmt>(acc, load<uint16_t>(pb + 2 * i), true);
    for (size_t i = done; i < m; i += 16) h16_group<Fmt>(pb + 2 * i, std::min<size_t>(16, m - i), kb, K, a4, q4);
    const uint64_t nfin = m - (acc.nan + acc.pinf + acc.ninf - nonfin0);
    if (nfin > 0) {
      double c = (a4[0] + a4[1]) + (a4[2] + a4[3]), q = (q4[0] + q4[1]) + (q4[2] + q4[3]);
      Moments mb;
      mb.n = double(nfin);
      mb.mean = K + c / mb.n;
      mb.m2 = q - c * c / mb.n;
      if (mb.m2 < 0) mb.m2 = 0;
      merge_moments(r.mom, mb);
    }
  }
#if defined(PK_KAVX2)
  if (any_vec) {   // extremes of the vector blocks (no NaN there) as keys
    uint16_t smax = hred16(ext.smax, 0), umax = hred16(ext.umax, 1), umin = hred16(ext.umin, 2);
    uint16_t hi = int16_t(smax) >= 0 ? smax : umin, lo = umax >= 0x8000 ? umax : umin;
    acc.kmin = std::min(acc.kmin, h16_key(lo)); acc.kmax = std::max(acc.kmax, h16_key(hi));
  }
#endif
  r.nan = acc.nan; r.posinf = acc.pinf; r.neginf = acc.ninf; r.zeros = acc.zero; r.subnormal = acc.small - acc.zero;
  r.nonnan = n - acc.nan;
  if (r.nonnan > 0) {
    r.fmin = double(Fmt::decode(uint16_t(h16_key(uint16_t(acc.kmin)))));
    r.fmax = double(Fmt::decode(uint16_t(h16_key(uint16_t(acc.kmax)))));
  }
  if (qhist)   // bf16-prefix histogram (for bf16: the non-NaN bit patterns themselves)
    for (size_t i = 0; i < n; ++i) {
      uint16_t b = load<uint16_t>(p + 2 * i);
      if ((b & 0x7FFF) <= Fmt::EXP) qhist[f32_to_bits(Fmt::decode(b)) >> 16]++;
    }
  s = r;
}

template <class I>
static void wide_int(const uint8_t* p, size_t n, PieceStats& s, uint32_t* qhist) {
  uint64_t zer[L] = {};
  I mn[L], mx[L];
  double sum[L] = {};
  for (int j = 0; j < L; ++j) { mn[j] = std::numeric_limits<I>::max(); mx[j] = std::numeric_limits<I>::min(); }
  size_t i = 0;
  auto body = [&](int j, I x) {
    zer[j] += x == 0; mn[j] = x < mn[j] ? x : mn[j]; mx[j] = x > mx[j] ? x : mx[j]; sum[j] += double(x);
  };
  for (; i + L <= n; i += L)
    for (int j = 0; j < L; ++j) body(j, load<I>(p + (i + j) * sizeof(I)));
  for (; i < n; ++i) body(0, load<I>(p + i * sizeof(I)));
  PieceStats r;
  double tsum = 0;
  I tmn = std::numeric_limits<I>::max(), tmx = std::numeric_limits<I>::min();
  for (int j = 0; j < L; ++j) {
    r.zeros += zer[j]; tsum += sum[j];
    tmn = mn[j] < tmn ? mn[j] : tmn; tmx = mx[j] > tmx ? mx[j] : tmx;
  }
  r.nonnan = n;
  if (n > 0) {
    if (std::numeric_limits<I>::is_signed) { r.imin = int64_t(tmn); r.imax = int64_t(tmx); }
    else { r.umin = uint64_t(tmn); r.umax = uint64_t(tmx); }
    double nn = double(n), mean = tsum / nn, s1[L] = {}, s2[L] = {};
    auto dev = [&](int j, I x) { double d = double(x) - mean; s1[j] += d; s2[j] += d * d; };
    for (i = 0; i + L <= n; i += L)
      for (int j = 0; j < L; ++j) dev(j, load<I>(p + (i + j) * sizeof(I)));
    for (; i < n; ++i) dev(0, load<I>(p + i * sizeof(I)));
    double c = 0, q = 0;
    for (int j = 0; j < L; ++j) { c += s1[j]; q += s2[j]; }
    r.mom.n = nn; r.mom.mean = mean + c / nn; r.mom.m2 = q - c * c / nn;
    if (r.mom.m2 < 0) r.mom.m2 = 0;
  }
  if (qhist)
    for (i = 0; i < n; ++i) qhist[f32_to_bits(float(load<I>(p + i * sizeof(I)))) >> 16]++;
  s = r;
}

static void wide(int dt, const uint8_t* p, size_t n, PieceStats& s, uint32_t* qhist) {
  switch (dt) {
    case F32: f32_stats(p, n, s, qhist); break;
    case BF16: h16_stats<Bf16Fmt>(p, n, s, qhist); break;
    case F16: h16_stats<F16Fmt>(p, n, s, qhist); break;
    case F64: wide_float<double, uint64_t, 0x7FF0000000000000ull, 0x000FFFFFFFFFFFFFull, 63>(p, n, s, qhist); break;
    case I32: wide_int<int32_t>(p, n, s, qhist); break;
    case U32: wide_int<uint32_t>(p, n, s, qhist); break;
    case I64: wide_int<int64_t>(p, n, s, qhist); break;
    case U64: wide_int<uint64_t>(p, n, s, qhist); break;
    default: break;
  }
}

#if defined(PK_KAVX2)
#include "quant_avx2.inl"
#else
// quantize_piece of the engine for one scheme, element by element with quant.hpp (which adds
// every sum itself, so `base` is not needed)
static void quant_piece(const QuantSpec& spec, uint64_t row_len, uint64_t chan_len, const float* x, uint64_t n,
                        const QuantSums* base, QuantSums& sums) {
  switch (spec.kind) {
    case Q_INT8_TENSOR: case Q_FP8_E4M3: quant_group(spec, x, int64_t(n), nullptr, sums); break;
    case Q_INT8_CHANNEL:
      for (uint64_t r = 0; r < n; r += chan_len) quant_group(spec, x + r, int64_t(std::min(chan_len, n - r)), nullptr, sums);
      break;
    case Q_NF4: {
      uint64_t g = uint64_t(spec.group > 0 ? spec.group : 64);
      for (uint64_t b = 0; b < n; b += g) quant_group(spec, x + b, int64_t(std::min(g, n - b)), nullptr, sums);
      break;
    }
    default: {  // groups along the last dimension, a short last group per row
      uint64_t g = uint64_t(spec.group > 0 ? spec.group : 1);
      for (uint64_t r = 0; r < n; r += row_len) {
        uint64_t rl = std::min(row_len, n - r);
        for (uint64_t k = 0; k < rl; k += g) quant_group(spec, x + r + k, int64_t(std::min(g, rl - k)), nullptr, sums);
      }
    }
  }
}
#endif

// Decode n elements of a float dtype to float32 (exact for 8/16-bit floats; F64 rounds); returns
// the finite absmax of the decoded values (0 when none) and sets base's n, nonfinite and sum_w2.
static float decode_for_quant(int dt, const uint8_t* p, size_t n, float* out, QuantSums& base) {
  size_t i = 0;
  switch (dt) {
    case F32: std::memcpy(out, p, n * 4); break;
    case BF16:
#if defined(PK_KAVX2)
      for (; i + 8 <= n; i += 8) _mm256_storeu_ps(out + i, load8_bf16(p, i));
#endif
      for (; i < n; ++i) out[i] = decode_bf16(load<uint16_t>(p + 2 * i));
      break;
    case F16: for (; i < n; ++i) out[i] = decode_f16(load<uint16_t>(p + 2 * i)); break;
    case F8_E4M3: for (; i < n; ++i) out[i] = decode_f8_e4m3(p[i]); break;
    case F8_E5M2: for (; i < n; ++i) out[i] = decode_f8_e5m2(p[i]); break;
    case F64: for (; i < n; ++i) out[i] = float(load<double>(p + 8 * i)); break;
    default: for (; i < n; ++i) out[i] = 0; break;
  }
  quant_sums_clear(base);
#if defined(PK_KAVX2)
  return qv::piece_base(out, int64_t(n), base);
#else
  float m = 0.0f;
  for (i = 0; i < n; ++i) {
    float v = out[i];
    if (!qdetail::is_finite(v)) { ++base.nonfinite; continue; }
    float a = qdetail::fabs_(v);
    m = a > m ? a : m;
    ++base.n;
    base.sum_w2 += double(v) * double(v);
  }
  return m;
#endif
}

// nblocks GGML blocks of type t at p -> float32 at out: the one dequantizer of ggml_blocks.hpp, compiled here per
// instruction set (the compiler may vectorise its per-block loops: measured ~4% faster under AVX2 than the
// baseline build; -ffp-contract=off keeps the values bit-identical to gguf-py's). Hand-written SIMD goes here.
static void dequantize_blocks(int t, const uint8_t* p, size_t nblocks, float* out) {
  const GgmlBlock b = ggml_block(t);
  for (size_t i = 0; i < nblocks; ++i)
    ggml_dequantize_block(t, p + i * size_t(b.bytes), out + i * size_t(b.elements));
}

// f32_stats of the float32 values of nblocks GGML blocks of type t, dequantized kF32Block values at a time into a
// buffer that stays in L1 (kF32Block is a whole number of blocks of every type): the same bits as dequantize_blocks
// followed by wide(F32), without the round trip of a whole dequantized piece through memory.
static void ggml_stats(int t, const uint8_t* p, size_t nblocks, PieceStats& s, uint32_t* qhist) {
  const GgmlBlock b = ggml_block(t);
  static_assert(kF32Block % 256 == 0, "a statistics block holds whole GGML blocks");
  alignas(64) float buf[kF32Block];
  const size_t be = size_t(b.elements), bb = size_t(b.bytes);
  f32_stats_of([&](size_t bs, size_t m) {
    dequantize_blocks(t, p + bs / be * bb, m / be, buf);
    return reinterpret_cast<const uint8_t*>(buf);
  }, nblocks * be, s, qhist);
}

// Values of n plain elements as float64, one loop per dtype (the compiler vectorises the float ones)
template <class T, class F>
static inline void to_f64_loop(const uint8_t* p, size_t n, double* out, F f) {
  for (size_t i = 0; i < n; ++i) out[i] = f(load<T>(p + i * sizeof(T)));
}
static void to_f64(int dt, const uint8_t* p, size_t n, double* out) {
  switch (dt) {
    case F64: std::memcpy(out, p, n * 8); break;
    case F32: to_f64_loop<float>(p, n, out, [](float v) { return double(v); }); break;
    case BF16: to_f64_loop<uint16_t>(p, n, out, [](uint16_t v) { return double(decode_bf16(v)); }); break;
    case F16: to_f64_loop<uint16_t>(p, n, out, [](uint16_t v) { return double(decode_f16(v)); }); break;
    case I8: to_f64_loop<int8_t>(p, n, out, [](int8_t v) { return double(v); }); break;
    case U8: to_f64_loop<uint8_t>(p, n, out, [](uint8_t v) { return double(v); }); break;
    case I16: to_f64_loop<int16_t>(p, n, out, [](int16_t v) { return double(v); }); break;
    case U16: to_f64_loop<uint16_t>(p, n, out, [](uint16_t v) { return double(v); }); break;
    case I32: to_f64_loop<int32_t>(p, n, out, [](int32_t v) { return double(v); }); break;
    case U32: to_f64_loop<uint32_t>(p, n, out, [](uint32_t v) { return double(v); }); break;
    case I64: to_f64_loop<int64_t>(p, n, out, [](int64_t v) { return double(v); }); break;
    case U64: to_f64_loop<uint64_t>(p, n, out, [](uint64_t v) { return double(v); }); break;
    default: {   // F8 types, BOOL
      const int es = dtype_size(dt);
      for (size_t i = 0; i < n; ++i) {
        uint64_t raw = 0;
        std::memcpy(&raw, p + i * size_t(es), size_t(es));
        out[i] = decode_to_double(dt, raw);
      }
    }
  }
}

// diff.hpp's diff_update over n pairs in L fixed lanes (element i in lane i % L, the tail in lane 0), the
// lanes merged in lane order: the same operations in every ISA build, so the same bits.
static void diff_values(const double* a, const double* b, size_t n, double* d, DiffSums& sums) {
  DiffSums ln[L];
  size_t i = 0;
  for (; i + L <= n; i += L)
    for (int j = 0; j < L; ++j) d[i + j] = diff_update(ln[j], a[i + j], b[i + j]);
  for (; i < n; ++i) d[i] = diff_update(ln[0], a[i], b[i]);
  sums = ln[0];
  for (int j = 1; j < L; ++j) merge_diff_sums(sums, ln[j]);
}

// n elements of F32, BF16 or F16 -> float32 (exact: every such value is a float32)
static void to_f32(int dt, const uint8_t* p, size_t n, float* out) {
  size_t i = 0;
  if (dt == F32) { std::memcpy(out, p, n * 4); return; }
#if defined(PK_KAVX2)
  if (dt == BF16)
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(out + i, load8_bf16(p, i));
  else
    for (; i + 8 <= n; i += 8)
      _mm256_storeu_ps(out + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 2 * i))));
#endif
  for (; i < n; ++i) out[i] = dt == BF16 ? decode_bf16(load<uint16_t>(p + 2 * i)) : decode_f16(load<uint16_t>(p + 2 * i));
}

// ---- the fused diff of float32 pairs (F32, BF16, F16, a GGML block type's values: every one a float32) ----
// For float32 a and b the float64 d = a - b is never subnormal (the smallest nonzero |d| is 2^-149) and
// never overflows, nor do a*a, b*b, a*b (|a| <= FLT_MAX: a*a < 1.2e77), so one pass over a block of up to
// kDiffBlock pairs yields diff.hpp's sums and the statistics of d, in LD float64 lanes (pair t in lane
// t % LD): sums of d*d, a*a, b*b, a*b, |d|, max |d|, min / max d, the count of d == 0, and the moments of d
// about K = the block's first d (the shift of f32_stats). Multiply then add (never an FMA), lanes reduced
// in one fixed order: the AVX2 loop and the scalar one give the same bits. A block holding a NaN or Inf
// (seen as a non-finite sum of a*a or b*b: squares cannot cancel) returns false with nothing added, and
// the caller takes it through diff_update and the F64 statistics instead.
constexpr int LD = 4;
struct DiffF32Lanes {
  double sse[LD] = {}, sa2[LD] = {}, sb2[LD] = {}, sab[LD] = {}, sabs[LD] = {}, mabs[LD] = {}, s1[LD] = {},
         s2[LD] = {}, mn[LD], mx[LD];
  uint64_t zer[LD] = {};
};

static inline void diff_f32_pair(DiffF32Lanes& l, int j, float x, float y, double K) {
  const double a = double(x), b = double(y), d = a - b, ad = std::fabs(d), k = d - K;
  l.sse[j] += d * d; l.sa2[j] += a * a; l.sb2[j] += b * b; l.sab[j] += a * b;
  l.sabs[j] += ad; l.mabs[j] = ad > l.mabs[j] ? ad : l.mabs[j];
  l.mn[j] = d < l.mn[j] ? d : l.mn[j]; l.mx[j] = d > l.mx[j] ? d : l.mx[j];
  l.zer[j] += d == 0; l.s1[j] += k; l.s2[j] += k * k;
}

static inline double lanes_sum(const double* v) { return (v[0] + v[1]) + (v[2] + v[3]); }

static bool diff_f32(const float* a, const float* b, size_t n, DiffSums& sums, PieceStats& delta) {
  if (n == 0) return true;
  DiffF32Lanes l;
  const double K = double(a[0]) - double(b[0]);
  for (int j = 0; j < LD; ++j) { l.mn[j] = INFINITY; l.mx[j] = -INFINITY; }
  size_t i = 0;
#if defined(PK_KAVX2)
  {
    const __m256d SIGN = _mm256_set1_pd(-0.0), Kv = _mm256_set1_pd(K), Z = _mm256_setzero_pd();
    __m256d sse = Z, sa2 = Z, sb2 = Z, sab = Z, sabs = Z, mabs = Z, s1 = Z, s2 = Z;
    __m256d mn = _mm256_set1_pd(INFINITY), mx = _mm256_set1_pd(-INFINITY);
    __m256i zer = _mm256_setzero_si256();
    for (; i + LD <= n; i += LD) {
      const __m256d x = _mm256_cvtps_pd(_mm_loadu_ps(a + i)), y = _mm256_cvtps_pd(_mm_loadu_ps(b + i));
      const __m256d d = _mm256_sub_pd(x, y), ad = _mm256_andnot_pd(SIGN, d), k = _mm256_sub_pd(d, Kv);
      sse = _mm256_add_pd(sse, _mm256_mul_pd(d, d));
      sa2 = _mm256_add_pd(sa2, _mm256_mul_pd(x, x));
      sb2 = _mm256_add_pd(sb2, _mm256_mul_pd(y, y));
      sab = _mm256_add_pd(sab, _mm256_mul_pd(x, y));
      sabs = _mm256_add_pd(sabs, ad);
      mabs = _mm256_max_pd(ad, mabs);          // ad > mabs ? ad : mabs, as the scalar loop
      mn = _mm256_min_pd(d, mn);
      mx = _mm256_max_pd(d, mx);
      zer = _mm256_sub_epi64(zer, _mm256_castpd_si256(_mm256_cmp_pd(d, Z, _CMP_EQ_OQ)));
      s1 = _mm256_add_pd(s1, k);
      s2 = _mm256_add_pd(s2, _mm256_mul_pd(k, k));
    }
    _mm256_storeu_pd(l.sse, sse); _mm256_storeu_pd(l.sa2, sa2); _mm256_storeu_pd(l.sb2, sb2);
    _mm256_storeu_pd(l.sab, sab); _mm256_storeu_pd(l.sabs, sabs); _mm256_storeu_pd(l.mabs, mabs);
    _mm256_storeu_pd(l.s1, s1); _mm256_storeu_pd(l.s2, s2); _mm256_storeu_pd(l.mn, mn); _mm256_storeu_pd(l.mx, mx);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(l.zer), zer);
  }
#endif
  for (; i < n; ++i) diff_f32_pair(l, int(i % LD), a[i], b[i], K);
  const double sa2 = lanes_sum(l.sa2), sb2 = lanes_sum(l.sb2);
  if (!(sa2 - sa2 == 0) || !(sb2 - sb2 == 0)) return false;
  uint64_t zeros = 0;
  double mn = l.mn[0], mx = l.mx[0], mabs = l.mabs[0];
  for (int j = 0; j < LD; ++j) {
    zeros += l.zer[j];
    mn = l.mn[j] < mn ? l.mn[j] : mn; mx = l.mx[j] > mx ? l.mx[j] : mx; mabs = l.mabs[j] > mabs ? l.mabs[j] : mabs;
  }
  DiffSums s;
  s.n = n; s.changed = n - zeros;
  s.sse = lanes_sum(l.sse); s.sum_a2 = sa2; s.sum_b2 = sb2; s.sum_ab = lanes_sum(l.sab);
  s.sum_abs = lanes_sum(l.sabs); s.max_abs = mabs;
  merge_diff_sums(sums, s);
  PieceStats p;
  p.zeros = zeros; p.nonnan = n; p.fmin = mn; p.fmax = mx;
  const double c = lanes_sum(l.s1), q = lanes_sum(l.s2);
  p.mom.n = double(n); p.mom.mean = K + c / p.mom.n; p.mom.m2 = q - c * c / p.mom.n;
  if (p.mom.m2 < 0) p.mom.m2 = 0;
  merge_piece(delta, p);
  return true;
}

static const Kernels table = {PK_KISA, hist8, hist16, wide, quant_piece, decode_for_quant, dequantize_blocks,
                              to_f64, diff_values, to_f32, diff_f32, ggml_stats};

}  // namespace PK_KNS
}  // namespace paramkit
