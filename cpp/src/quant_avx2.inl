// AVX2 fake quantization of one engine piece: lane by lane the same float32 operations as
// paramkit/quant.hpp (so every dequantized value is bit-identical), error sums in float64 lanes.
// Included by kernels_impl.inl inside the avx2 namespace; the baseline build uses quant.hpp as is.
//
// Only finite inputs reach the sums (non-finite ones are counted), so a lane of a non-finite input
// may compute anything. Sums are added per lane and reduced at the end of the piece: a different
// order from quant.hpp's element order, which changes float64 sums in the last bits only.

namespace qv {

// Lane accumulators. W: also the scheme-independent part (n, nonfinite, sum_w2); without it the
// caller supplies that part (the engine computes it once per piece for all schemes), which keeps
// every accumulator in a register.
template <bool W> struct AccT {
  static constexpr bool kW = W;
  __m256d sse0, sse1, q2_0, q2_1, wq0, wq1, mx, w2_0, w2_1;
  __m256i fin, clip;          // per-lane counts of finite inputs and clipped codes (subtracted masks)
  uint64_t n, clipped, seen;  // flushed counts; seen: valid inputs (finite or not)
};

template <bool W> static inline void acc_init(AccT<W>& a) {
  const __m256d z = _mm256_setzero_pd();
  a.sse0 = a.sse1 = a.q2_0 = a.q2_1 = a.wq0 = a.wq1 = a.mx = a.w2_0 = a.w2_1 = z;
  a.fin = a.clip = _mm256_setzero_si256();
  a.n = a.clipped = a.seen = 0;
}

static inline uint64_t hsum_epi32(__m256i v) {
  alignas(32) uint32_t t[8];
  _mm256_store_si256(reinterpret_cast<__m256i*>(t), v);
  uint64_t r = 0;
  for (int i = 0; i < 8; ++i) r += t[i];
  return r;
}
// Move the 32-bit lane counters into the 64-bit totals; called at least every 2^31 elements.
template <bool W> static inline void flush_counts(AccT<W>& a) {
  a.n += hsum_epi32(a.fin);
  a.clipped += hsum_epi32(a.clip);
  a.fin = a.clip = _mm256_setzero_si256();
}

static inline double hsum(__m256d a, __m256d b) {
  alignas(32) double t[4];
  _mm256_store_pd(t, _mm256_add_pd(a, b));
  return (t[0] + t[1]) + (t[2] + t[3]);
}

// base: the scheme-independent sums when W is false
template <bool W> static inline void acc_flush(AccT<W>& a, const QuantSums* base, QuantSums& s) {
  flush_counts(a);
  QuantSums p{};
  p.sse = hsum(a.sse0, a.sse1);
  p.sum_q2 = hsum(a.q2_0, a.q2_1);
  p.sum_wq = hsum(a.wq0, a.wq1);
  alignas(32) double m[4];
  _mm256_store_pd(m, a.mx);
  double mx = m[0];
  for (int i = 1; i < 4; ++i) mx = m[i] > mx ? m[i] : mx;
  // a NaN error (which max_pd may drop) makes its lane's sum of squares NaN for good: the
  // addends e*e are >= 0, so no Inf - Inf can hide it
  p.max_abs_err = p.sse != p.sse ? double(NAN) : mx;
  if (W) {
    p.sum_w2 = hsum(a.w2_0, a.w2_1);
    p.n = a.n;
    p.nonfinite = a.seen - a.n;
  } else {
    p.sum_w2 = base->sum_w2;
    p.n = base->n;
    p.nonfinite = base->nonfinite;
  }
  p.clipped = a.clipped;
  merge_quant_sums(s, p);
}

static inline __m256 absv(__m256 x) { return _mm256_and_ps(x, _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF))); }
static inline __m256 signv(__m256 x) { return _mm256_and_ps(x, _mm256_castsi256_ps(_mm256_set1_epi32(int(0x80000000u)))); }
// all-ones lanes where x is finite (exponent not all ones), by bits as quant.hpp does
static inline __m256 finitev(__m256 x) {
  __m256i a = _mm256_and_si256(_mm256_castps_si256(x), _mm256_set1_epi32(0x7FFFFFFF));
  return _mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_set1_epi32(0x7F800000), a));
}
static inline __m256 rintv(__m256 t) { return _mm256_round_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
static inline __m256 truncv(__m256 t) { return _mm256_round_ps(t, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC); }
// quant.hpp round_half_away: floor(|t|) + (|t| - floor >= 0.5), sign of t copied back
static inline __m256 round_half_awayv(__m256 t) {
  __m256 a = absv(t), f = truncv(a);
  __m256 up = _mm256_and_ps(_mm256_cmp_ps(_mm256_sub_ps(a, f), _mm256_set1_ps(0.5f), _CMP_GE_OQ), _mm256_set1_ps(1.0f));
  return _mm256_or_ps(absv(_mm256_add_ps(f, up)), signv(t));
}
// quant.hpp clip_: x < lo ? lo : (x > hi ? hi : x)
static inline __m256 clipv(__m256 x, __m256 lo, __m256 hi) {
  __m256 r = _mm256_blendv_ps(x, hi, _mm256_cmp_ps(x, hi, _CMP_GT_OQ));
  return _mm256_blendv_ps(r, lo, _mm256_cmp_ps(x, lo, _CMP_LT_OQ));
}
// lanes [0, k) set, k in [0, 8]
static inline __m256i lanes(int64_t k) {
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(int(k)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}
// 8 elements from x[i..], the lanes at or beyond len zero, and the valid-lane mask
static inline __m256 load(const float* x, int64_t i, int64_t len, __m256& valid) {
  if (i + 8 <= len) {
    valid = _mm256_castsi256_ps(_mm256_set1_epi32(-1));
    return _mm256_loadu_ps(x + i);
  }
  __m256i m = lanes(len - i);
  valid = _mm256_castsi256_ps(m);
  return _mm256_maskload_ps(x + i, m);
}

// One step of 8 inputs w with their fake-quantized values v: sums over the finite valid lanes,
// `clip` lanes (finite ones) counted as clipped. (Valid lanes are counted by the callers.)
template <bool W> static inline void add(AccT<W>& A, __m256 w, __m256 v, __m256 valid, __m256 clip) {
  __m256 fin = _mm256_and_ps(finitev(w), valid);
  if (W) A.fin = _mm256_sub_epi32(A.fin, _mm256_castps_si256(fin));
  A.clip = _mm256_sub_epi32(A.clip, _mm256_castps_si256(_mm256_and_ps(clip, fin)));
  __m256 wz = _mm256_and_ps(w, fin), vz = _mm256_and_ps(v, fin);
  __m256d w0 = _mm256_cvtps_pd(_mm256_castps256_ps128(wz)), w1 = _mm256_cvtps_pd(_mm256_extractf128_ps(wz, 1));
  __m256d q0 = _mm256_cvtps_pd(_mm256_castps256_ps128(vz)), q1 = _mm256_cvtps_pd(_mm256_extractf128_ps(vz, 1));
  __m256d e0 = _mm256_sub_pd(w0, q0), e1 = _mm256_sub_pd(w1, q1);
  A.sse0 = _mm256_fmadd_pd(e0, e0, A.sse0); A.sse1 = _mm256_fmadd_pd(e1, e1, A.sse1);
  if (W) { A.w2_0 = _mm256_fmadd_pd(w0, w0, A.w2_0); A.w2_1 = _mm256_fmadd_pd(w1, w1, A.w2_1); }
  A.q2_0 = _mm256_fmadd_pd(q0, q0, A.q2_0); A.q2_1 = _mm256_fmadd_pd(q1, q1, A.q2_1);
  A.wq0 = _mm256_fmadd_pd(w0, q0, A.wq0); A.wq1 = _mm256_fmadd_pd(w1, q1, A.wq1);
  const __m256d ABS = _mm256_castsi256_pd(_mm256_set1_epi64x(0x7FFFFFFFFFFFFFFFll));
  A.mx = _mm256_max_pd(A.mx, _mm256_max_pd(_mm256_and_pd(e0, ABS), _mm256_and_pd(e1, ABS)));
}

static inline float hmax(__m256 m) {   // max_ps is exact: any pairing gives the same value
  __m128 a = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
  a = _mm_max_ps(a, _mm_movehl_ps(a, a));
  a = _mm_max_ss(a, _mm_movehdup_ps(a));
  return _mm_cvtss_f32(a);
}
static inline float hmin(__m256 m) {
  __m128 a = _mm_min_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
  a = _mm_min_ps(a, _mm_movehl_ps(a, a));
  a = _mm_min_ss(a, _mm_movehdup_ps(a));
  return _mm_cvtss_f32(a);
}

// quant_finite_absmax (max is exact: any order gives the same value)
static inline float finite_absmax(const float* x, int64_t len) {
  __m256 m = _mm256_setzero_ps(), valid;
  for (int64_t i = 0; i < len; i += 8) {
    __m256 w = load(x, i, len, valid);
    m = _mm256_max_ps(m, _mm256_and_ps(absv(w), finitev(w)));
  }
  return hmax(m);
}

// decode_for_quant's scheme-independent part: finite absmax, n, nonfinite, sum_w2 (lanes)
static inline float piece_base(const float* x, int64_t len, QuantSums& base) {
  __m256 m = _mm256_setzero_ps(), valid;
  __m256d s0 = _mm256_setzero_pd(), s1 = _mm256_setzero_pd();
  uint64_t fin = 0;
  for (int64_t i = 0; i < len; i += 8) {
    __m256 w = load(x, i, len, valid);
    __m256 f = _mm256_and_ps(finitev(w), valid);
    fin += uint64_t(__builtin_popcount(unsigned(_mm256_movemask_ps(f))));
    __m256 wz = _mm256_and_ps(w, f);
    m = _mm256_max_ps(m, absv(wz));
    __m256d w0 = _mm256_cvtps_pd(_mm256_castps256_ps128(wz)), w1 = _mm256_cvtps_pd(_mm256_extractf128_ps(wz, 1));
    s0 = _mm256_fmadd_pd(w0, w0, s0);
    s1 = _mm256_fmadd_pd(w1, w1, s1);
  }
  base.n = fin;
  base.nonfinite = uint64_t(len) - fin;
  base.sum_w2 = hsum(s0, s1);
  return hmax(m);
}

// symmetric_run: q = clip(rint(w·inv) or rint(w/scale)) (0 where scale or w is 0), + 0, · stored
template <bool W, bool Reciprocal>
static inline void symmetric(AccT<W>& A, const float* x, int64_t len, float scale, float inv, float stored,
                             float qmin, float qmax) {
  const __m256 vinv = _mm256_set1_ps(inv), vscale = _mm256_set1_ps(scale), vst = _mm256_set1_ps(stored),
               lo = _mm256_set1_ps(qmin), hi = _mm256_set1_ps(qmax), Z = _mm256_setzero_ps();
  const bool zscale = scale == 0.0f;
  __m256 valid;
  for (int64_t i = 0; i < len; i += 8) {
    __m256 w = load(x, i, len, valid);
    __m256 q = rintv(Reciprocal ? _mm256_mul_ps(w, vinv) : _mm256_div_ps(w, vscale));
    if (zscale) q = Z;
    else q = _mm256_andnot_ps(_mm256_cmp_ps(w, Z, _CMP_EQ_OQ), q);
    __m256 clip = _mm256_or_ps(_mm256_cmp_ps(q, lo, _CMP_LT_OQ), _mm256_cmp_ps(q, hi, _CMP_GT_OQ));
    q = _mm256_add_ps(clipv(q, lo, hi), Z);
    add(A, w, _mm256_mul_ps(q, vst), valid, clip);
  }
}

template <bool W> static inline void int8_reciprocal(AccT<W>& A, const float* x, int64_t len, float amax) {
  using namespace qdetail;
  float scale = fdiv(amax, 127.0f);
  float inv = fdiv(1.0f, scale);
  symmetric<W, true>(A, x, len, scale, inv, scale, -127.0f, 127.0f);
}

template <bool W> static inline void int_group(AccT<W>& A, QuantSums& s, const float* x, int64_t len, float qmin, float qmax) {
  using namespace qdetail;
  float scale = fdiv(finite_absmax(x, len), qmax);
  float stored = fp16_stored(scale, s.scale_clamped);
  symmetric<W, false>(A, x, len, scale, 0.0f, stored, qmin, qmax);
}

template <bool W> static inline void int4_asym(AccT<W>& A, QuantSums& s, const float* x, int64_t len) {
  using namespace qdetail;
  __m256 mn = _mm256_setzero_ps(), mx = _mm256_setzero_ps(), valid;
  for (int64_t i = 0; i < len; i += 8) {
    __m256 w = load(x, i, len, valid);
    __m256 wz = _mm256_and_ps(w, finitev(w));
    mn = _mm256_min_ps(wz, mn);   // wz < mn ? wz : mn, as the scalar `if (v < xmin)`
    mx = _mm256_max_ps(wz, mx);
  }
  // lanes hold +0 or values strictly beyond it (never -0: min_ps/max_ps keep the accumulator on ties)
  float xmin = hmin(mn), xmax = hmax(mx);
  if (xmin == 0.0f && xmax == 0.0f) { xmin = -1.0f; xmax = 1.0f; }
  float scale = fdiv(fsub(xmax, xmin), 15.0f);
  bool zscale = scale == 0.0f;
  float safe = zscale ? 1.0f : scale;
  float zero = zscale ? 0.0f : rint_(fdiv(-xmin, safe));
  float stored = fp16_stored(scale, s.scale_clamped);
  const __m256 vsafe = _mm256_set1_ps(safe), vzero = _mm256_set1_ps(zero), vst = _mm256_set1_ps(stored),
               lo = _mm256_setzero_ps(), hi = _mm256_set1_ps(15.0f);
  for (int64_t i = 0; i < len; i += 8) {
    __m256 w = load(x, i, len, valid);
    __m256 q = _mm256_add_ps(rintv(_mm256_div_ps(w, vsafe)), vzero);
    __m256 clip = _mm256_or_ps(_mm256_cmp_ps(q, lo, _CMP_LT_OQ), _mm256_cmp_ps(q, hi, _CMP_GT_OQ));
    q = clipv(q, lo, hi);
    __m256 v = zscale ? _mm256_setzero_ps() : _mm256_mul_ps(vst, _mm256_sub_ps(q, vzero));
    add(A, w, v, valid, clip);
  }
}

template <bool W> static inline void q8_0(AccT<W>& A, QuantSums& s, const float* x, int64_t len) {
  using namespace qdetail;
  float d = fdiv(finite_absmax(x, len), 127.0f);
  float inv = d == 0.0f ? 0.0f : fdiv(1.0f, d);
  float stored = fp16_stored(d, s.scale_clamped);
  const __m256 vinv = _mm256_set1_ps(inv), vst = _mm256_set1_ps(stored), Z = _mm256_setzero_ps(),
               lo = _mm256_set1_ps(-127.0f), hi = _mm256_set1_ps(127.0f);
  __m256 valid;
  for (int64_t i = 0; i < len; i += 8) {
    __m256 w = load(x, i, len, valid);
    __m256 q = round_half_awayv(_mm256_mul_ps(w, vinv));
    q = d == 0.0f ? Z : _mm256_andnot_ps(_mm256_cmp_ps(w, Z, _CMP_EQ_OQ), q);
    __m256 clip = _mm256_cmp_ps(absv(q), hi, _CMP_GT_OQ);
    q = _mm256_add_ps(clipv(q, lo, hi), Z);
    add(A, w, _mm256_mul_ps(q, vst), valid, clip);
  }
}

template <bool W> static inline void q4_0(AccT<W>& A, QuantSums& s, const float* x, int64_t len) {
  using namespace qdetail;
  // m: the first element of largest |x| (non-finite read as +0), sign kept. Branch-free: the
  // smallest index whose |x| equals the max (an early exit mispredicts once per block)
  float amax = finite_absmax(x, len);
  __m256 valid;
  const __m256 vam = _mm256_set1_ps(amax);
  const __m256i big = _mm256_set1_epi32(0x7FFFFFFF), step = _mm256_set1_epi32(8);
  __m256i idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), first = big;
  for (int64_t i = 0; i < len; i += 8, idx = _mm256_add_epi32(idx, step)) {
    __m256 w = load(x, i, len, valid);
    __m256 hit = _mm256_and_ps(_mm256_cmp_ps(absv(_mm256_and_ps(w, finitev(w))), vam, _CMP_EQ_OQ), valid);
    first = _mm256_min_epi32(first, _mm256_blendv_epi8(big, idx, _mm256_castps_si256(hit)));
  }
  __m128i f4 = _mm_min_epi32(_mm256_castsi256_si128(first), _mm256_extracti128_si256(first, 1));
  f4 = _mm_min_epi32(f4, _mm_shuffle_epi32(f4, _MM_SHUFFLE(1, 0, 3, 2)));
  f4 = _mm_min_epi32(f4, _mm_shuffle_epi32(f4, _MM_SHUFFLE(2, 3, 0, 1)));
  const float xj = x[_mm_cvtsi128_si32(f4)];   // always found: the max is attained
  const float m = is_finite(xj) ? xj : 0.0f;
  float d = fdiv(m, -8.0f);
  float inv = d == 0.0f ? 0.0f : fdiv(1.0f, d);
  float stored = fp16_stored(d, s.scale_clamped);
  const __m256 vinv = _mm256_set1_ps(inv), vst = _mm256_set1_ps(stored), Z = _mm256_setzero_ps(),
               half = _mm256_set1_ps(8.5f), eight = _mm256_set1_ps(8.0f), hi = _mm256_set1_ps(15.0f);
  for (int64_t i = 0; i < len; i += 8) {
    __m256 w = load(x, i, len, valid);
    __m256 t = _mm256_add_ps(_mm256_mul_ps(w, vinv), half);
    t = d == 0.0f ? half : _mm256_blendv_ps(t, half, _mm256_cmp_ps(w, Z, _CMP_EQ_OQ));
    __m256 q = truncv(t);
    __m256 clip = _mm256_or_ps(_mm256_cmp_ps(q, hi, _CMP_GT_OQ), _mm256_cmp_ps(q, Z, _CMP_LT_OQ));
    q = clipv(q, Z, hi);
    add(A, w, _mm256_mul_ps(_mm256_sub_ps(q, eight), vst), valid, clip);
  }
}

template <bool W> static inline void nf4(AccT<W>& A, const float* x, int64_t len) {
  using namespace qdetail;
  float absmax = finite_absmax(x, len);
  float inv = fdiv(1.0f, absmax == 0.0f ? 1.0f : absmax);
  static const float thr[15] = {
      -0x1.b239bp-1f, -0x1.38a4ep-1f, -0x1.d709p-2f, -0x1.5bd4ecp-2f, -0x1.e079d8p-3f,
      -0x1.1a7178p-3f, -0x1.74f0e2p-5f, 0x1.45f5fep-5f, 0x1.ec90c4p-4f, 0x1.a0cfcp-3f,
      0x1.2b05a8p-2f, 0x1.8ea7f2p-2f, 0x1.00da08p-1f, 0x1.491b5ep-1f, 0x1.b913b4p-1f};
  const __m256 lo_codes = _mm256_setr_ps(nf4_code(0), nf4_code(1), nf4_code(2), nf4_code(3), nf4_code(4),
                                         nf4_code(5), nf4_code(6), nf4_code(7));
  const __m256 hi_codes = _mm256_setr_ps(nf4_code(8), nf4_code(9), nf4_code(10), nf4_code(11), nf4_code(12),
                                         nf4_code(13), nf4_code(14), nf4_code(15));
  const __m256 vinv = _mm256_set1_ps(inv), vabs = _mm256_set1_ps(absmax), Z = _mm256_setzero_ps();
  const __m256i seven = _mm256_set1_epi32(7);
  __m256 valid;
  for (int64_t i = 0; i < len; i += 8) {
    __m256 w = load(x, i, len, valid);
    __m256 y = _mm256_mul_ps(w, vinv);
    __m256i idx = _mm256_setzero_si256();
    for (int k = 0; k < 15; ++k)   // number of thresholds strictly below y (each compare adds -1)
      idx = _mm256_sub_epi32(idx, _mm256_castps_si256(_mm256_cmp_ps(y, _mm256_set1_ps(thr[k]), _CMP_GT_OQ)));
    if (absmax == 0.0f) idx = seven;
    else idx = _mm256_blendv_epi8(idx, seven, _mm256_castps_si256(_mm256_cmp_ps(w, Z, _CMP_EQ_OQ)));
    __m256 code = _mm256_blendv_ps(_mm256_permutevar8x32_ps(lo_codes, idx), _mm256_permutevar8x32_ps(hi_codes, idx),
                                   _mm256_castsi256_ps(_mm256_cmpgt_epi32(idx, seven)));
    add(A, w, _mm256_mul_ps(code, vabs), valid, Z);
  }
}

template <bool W> static inline void fp8_e4m3(AccT<W>& A, const float* x, int64_t len, float amax) {
  using namespace qdetail;
  float scale = fdiv(amax, 448.0f);
  const __m256 vs = _mm256_set1_ps(scale), Z = _mm256_setzero_ps(), lim = _mm256_set1_ps(464.0f),
               lo = _mm256_set1_ps(-448.0f), hi = _mm256_set1_ps(448.0f);
  const __m256i b127 = _mm256_set1_epi32(127), m6 = _mm256_set1_epi32(-6), three = _mm256_set1_epi32(3);
  __m256 valid;
  for (int64_t i = 0; i < len; i += 8) {
    __m256 w = load(x, i, len, valid);
    if (scale == 0.0f) { add(A, w, Z, valid, Z); continue; }
    __m256 y = _mm256_div_ps(w, vs);
    __m256 clip = _mm256_cmp_ps(absv(y), lim, _CMP_GT_OQ);
    y = clipv(y, lo, hi);
    // round_e4m3: quantum 2^(max(floor(log2|y|), -6) - 3), applied by exact power-of-two scaling
    __m256 a = absv(y);
    __m256i e = _mm256_sub_epi32(_mm256_srli_epi32(_mm256_castps_si256(a), 23), b127);
    __m256i qe = _mm256_sub_epi32(_mm256_max_epi32(e, m6), three);
    __m256 up = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_sub_epi32(b127, qe), 23));   // 2^-qe
    __m256 dn = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(qe, b127), 23));   // 2^qe
    __m256 r = _mm256_mul_ps(rintv(_mm256_mul_ps(a, up)), dn);
    add(A, w, _mm256_mul_ps(_mm256_or_ps(r, signv(y)), vs), valid, clip);
  }
}

}  // namespace qv

// quantize_piece of the engine for one scheme (spec.tensor_absmax set for the per-tensor kinds)
template <bool W>
static void quant_piece_t(const QuantSpec& spec, uint64_t row_len, uint64_t chan_len, const float* x, uint64_t n,
                          const QuantSums* base, QuantSums& sums) {
  qv::AccT<W> A;
  qv::acc_init(A);
  const int64_t N = int64_t(n);
  A.seen = n;
  // the 32-bit lane counters take up to 2^32 elements each: flush them every 2^30 elements
  constexpr int64_t kFlush = int64_t(1) << 30;
  int64_t since = 0;
  auto tick = [&](int64_t len) { if ((since += len) >= kFlush) { qv::flush_counts(A); since = 0; } };
  switch (spec.kind) {
    case Q_INT8_TENSOR: case Q_FP8_E4M3:   // one scale for the tensor: any blocking gives the same values
      for (int64_t b = 0; b < N; b += kFlush) {
        int64_t len = std::min<int64_t>(kFlush, N - b);
        if (spec.kind == Q_INT8_TENSOR) qv::int8_reciprocal(A, x + b, len, spec.tensor_absmax);
        else qv::fp8_e4m3(A, x + b, len, spec.tensor_absmax);
        qv::flush_counts(A);
      }
      break;
    case Q_INT8_CHANNEL:
      for (int64_t r = 0; r < N; r += int64_t(chan_len)) {
        int64_t len = std::min<int64_t>(int64_t(chan_len), N - r);
        qv::int8_reciprocal(A, x + r, len, qv::finite_absmax(x + r, len));
        tick(len);
      }
      break;
    case Q_NF4: {
      int64_t g = spec.group > 0 ? spec.group : 64;
      for (int64_t b = 0; b < N; b += g) { int64_t len = std::min<int64_t>(g, N - b); qv::nf4(A, x + b, len); tick(len); }
      break;
    }
    case Q_INT8_GROUP: case Q_INT4_GROUP: case Q_INT4_GROUP_ASYM: case Q_Q8_0: case Q_Q4_0: {
      const int64_t g = spec.group > 0 ? spec.group : 1, rl = int64_t(row_len);
      for (int64_t r = 0; r < N; r += rl) {
        const int64_t rn = std::min<int64_t>(rl, N - r);
        for (int64_t k = 0; k < rn; k += g) {
          const float* xs = x + r + k;
          const int64_t len = std::min<int64_t>(g, rn - k);
          switch (spec.kind) {
            case Q_INT8_GROUP: qv::int_group(A, sums, xs, len, -127.0f, 127.0f); break;
            case Q_INT4_GROUP: qv::int_group(A, sums, xs, len, -8.0f, 7.0f); break;
            case Q_INT4_GROUP_ASYM: qv::int4_asym(A, sums, xs, len); break;
            case Q_Q8_0: qv::q8_0(A, sums, xs, len); break;
            default: qv::q4_0(A, sums, xs, len); break;
          }
        }
        tick(rn);
      }
      break;
    }
    default: return;
  }
  qv::acc_flush(A, base, sums);
}

static void quant_piece(const QuantSpec& spec, uint64_t row_len, uint64_t chan_len, const float* x, uint64_t n,
                        const QuantSums* base, QuantSums& sums) {
  if (base) quant_piece_t<false>(spec, row_len, chan_len, x, n, base, sums);
  else quant_piece_t<true>(spec, row_len, chan_len, x, n, nullptr, sums);
}
