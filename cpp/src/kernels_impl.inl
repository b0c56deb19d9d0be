// Body of the CPU kernels; included by kernels_generic.cpp and kernels_avx2.cpp with PK_KNS set
// to a namespace name, so one source becomes one function set per instruction set.
#include <cstring>
#include <cmath>
#include <limits>
#include "kernels.hpp"

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

template <class F, class U, U EXP, U MAN, int SHIFT>
static void wide_float(const uint8_t* p, size_t n, PieceStats& s, uint32_t* qhist) {
  uint64_t nan[L] = {}, pinf[L] = {}, ninf[L] = {}, zer[L] = {}, sub[L] = {}, fin[L] = {};
  F mn[L], mx[L];
  double sum[L] = {};
  for (int j = 0; j < L; ++j) { mn[j] = std::numeric_limits<F>::infinity(); mx[j] = -mn[j]; }
  const U SIGN = U(1) << SHIFT;
  size_t i = 0;
  auto body = [&](int j, F x) {
    U b; std::memcpy(&b, &x, sizeof(F));
    U e = b & EXP, m = b & MAN;
    bool isn = (e == EXP) & (m != 0), isi = (e == EXP) & (m == 0), neg = (b & SIGN) != 0;
    nan[j] += isn; pinf[j] += isi & !neg; ninf[j] += isi & neg;
    zer[j] += (b & ~SIGN) == 0; sub[j] += (e == 0) & (m != 0);
    mn[j] = x < mn[j] ? x : mn[j]; mx[j] = x > mx[j] ? x : mx[j];
    bool f = e != EXP; fin[j] += f; sum[j] += f ? double(x) : 0.0;
  };
  for (; i + L <= n; i += L)
    for (int j = 0; j < L; ++j) body(j, load<F>(p + (i + j) * sizeof(F)));
  for (; i < n; ++i) body(0, load<F>(p + i * sizeof(F)));
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
      double d = (b & EXP) != EXP ? double(x) - mean : 0.0;
      s1[j] += d; s2[j] += d * d;
    };
    for (i = 0; i + L <= n; i += L)
      for (int j = 0; j < L; ++j) dev(j, load<F>(p + (i + j) * sizeof(F)));
    for (; i < n; ++i) dev(0, load<F>(p + i * sizeof(F)));
    double c = 0, q = 0;
    for (int j = 0; j < L; ++j) { c += s1[j]; q += s2[j]; }
    r.mom.n = nfin; r.mom.mean = mean + c / nfin;
    r.mom.m2 = q - c * c / nfin;
    if (r.mom.m2 < 0) r.mom.m2 = 0;
  }
  if (qhist) {
    for (i = 0; i < n; ++i) {
      F x = load<F>(p + i * sizeof(F));
      if (x != x) continue;
      qhist[f32_to_bits(float(x)) >> 16]++;
    }
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
    case F32: wide_float<float, uint32_t, 0x7F800000u, 0x007FFFFFu, 31>(p, n, s, qhist); break;
    case F64: wide_float<double, uint64_t, 0x7FF0000000000000ull, 0x000FFFFFFFFFFFFFull, 63>(p, n, s, qhist); break;
    case I32: wide_int<int32_t>(p, n, s, qhist); break;
    case U32: wide_int<uint32_t>(p, n, s, qhist); break;
    case I64: wide_int<int64_t>(p, n, s, qhist); break;
    case U64: wide_int<uint64_t>(p, n, s, qhist); break;
    default: break;
  }
}

static const Kernels table = {PK_KISA, hist8, hist16, wide};

}  // namespace PK_KNS
}  // namespace paramkit
