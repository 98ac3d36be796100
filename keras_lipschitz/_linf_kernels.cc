// Fused CPU kernels of the p-norm distance layer y[b,n] = ||x[b] - w[:,n]||_p
// (LinfDistDense, and SortNetDense's training path with its keep masks).
//
// Plain C ABI (raw float32 pointers, sizes, a thread count), built and loaded
// at run time by keras_lipschitz/_linf_kernels.py and called from each
// backend's binding (torch autograd.Function, JAX pure_callback, TensorFlow
// numpy_function). The keras.ops code in keras_lipschitz/layers/linf.py
// (`pnorm_distances`) is the reference these kernels reproduce: same maths,
// same subgradient at ties, different rounding only in the order of sums.
//
// Layout. Every kernel vectorizes over the input coordinate d, which both
// gradients keep (grad_x[b,d] sums over n, grad_w[d,n] over b), so the two
// reductions of the backward pass are plain vector additions and only the
// forward pass ends with one horizontal reduction per (b, n). x (B, D) is
// already contiguous in d; the kernel (D, N) is transposed once per call
// to (N, D). Rows are zero-padded to a multiple of the vector width (a zero
// coordinate adds |0 - 0| = 0 to every maximum and p-sum) and B, N to a
// multiple of the register tile; padded outputs are never written.
//
// Arithmetic per (b, d, n), as the reference: z = (x - w) * keep,
//   forward    y = m (sum_d (|z| / m)^p)^(1/p), m = max_d |z| (y = m at
//              p = inf), exact by homogeneity for any scale m > 0;
//   backward   dy/dz = sign(z) (|z| / y)^(p - 1), recomputed, never stored.
// Integer p <= 8 uses repeated squaring and one pass, scaled by an upper
// bound of m (a second pass with the true m only where that would lose
// precision); other finite p take m in a first pass and a vectorized
// exp(p log t), skipping vectors of negligible terms when p is large. At
// p = inf the forward pass records per (b, n) the maximizing coordinate,
// or minus the number of tied maximizers, and the backward pass is a
// scatter (tied pairs rescan their row and share the upstream gradient
// equally, as the reference's subgradient does). Results differ from the
// reference only by rounding (sums in another order, reciprocal products).

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <new>
#include <thread>
#include <type_traits>
#include <vector>

#if defined(__AVX512F__) || defined(__AVX__)
#include <immintrin.h>
#endif

namespace {

#if defined(__AVX512F__)
constexpr int kLanes = 16;
#elif defined(__AVX__)
constexpr int kLanes = 8;
#else
constexpr int kLanes = 4;
#endif

typedef float vf __attribute__((vector_size(4 * kLanes)));
typedef int32_t vi __attribute__((vector_size(4 * kLanes)));

// Register tiles (rows of x by rows of the transposed kernel). B and N are
// padded to a multiple of kPad, which every tile size divides.
constexpr int kPad = 4;
constexpr int64_t kGradRows = 32;  // samples per backward cache block
// Real powers skip negligible vectors when the bound below which a term is
// negligible is at least this (p above about 50 at D = 1024).
constexpr double kSkipFrom = 0.5;
#if defined(__AVX512F__)
constexpr int kSumM = 4, kSumN = 4;    // max / p-sum passes
constexpr int kArgM = 2, kArgN = 4;    // max with argmax and tie count
constexpr int kGradM = 4, kGradN = 4;  // backward
#else
constexpr int kSumM = 2, kSumN = 4;
constexpr int kArgM = 1, kArgN = 4;
constexpr int kGradM = 2, kGradN = 2;
#endif

inline vf load(const float* p) {
  vf v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline void store(float* p, vf v) { std::memcpy(p, &v, sizeof v); }
inline vf splat(float s) { return vf{} + s; }
inline vi splat_i(int32_t s) { return vi{} + s; }
inline vf vabs(vf v) { return (vf)((vi)v & 0x7fffffff); }
inline vf vmax(vf a, vf b) { return a > b ? a : b; }
inline float hmax(vf v) {
  float m = v[0];
  for (int l = 1; l < kLanes; ++l) m = std::max(m, v[l]);
  return m;
}
inline float hsum(vf v) {
  float s = 0.0f;
  for (int l = 0; l < kLanes; ++l) s += v[l];
  return s;
}
// Whether some lane of t exceeds tau.
inline bool any_above(vf t, float tau) {
#if defined(__AVX512F__)
  return _mm512_cmp_ps_mask((__m512)t, _mm512_set1_ps(tau), _CMP_GT_OQ) != 0;
#elif defined(__AVX__)
  return _mm256_movemask_ps(
             _mm256_cmp_ps((__m256)t, _mm256_set1_ps(tau), _CMP_GT_OQ)) != 0;
#else
  for (int l = 0; l < kLanes; ++l)
    if (t[l] > tau) return true;
  return false;
#endif
}

// ------------------------------------------------------------------ powers

// t^P for a compile-time P >= 0 by repeated squaring.
template <int P>
inline vf powi(vf t) {
  if constexpr (P == 0) {
    return splat(1.0f);
  } else if constexpr (P == 1) {
    return t;
  } else if constexpr (P % 2 == 0) {
    return powi<P / 2>(t * t);
  } else {
    return t * powi<P - 1>(t);
  }
}

// Natural logarithm of normal positive floats (Cephes' logf polynomial).
inline vf vlog(vf x) {
  vi bits = (vi)x;
  vi e = ((bits >> 23) & 0xff) - 127;
  vf m = (vf)((bits & 0x007fffff) | 0x3f800000);  // [1, 2)
  vi big = m > 1.41421356237f;                    // -1 where true
  m = big ? m * 0.5f : m;
  e = e - big;
  vf f = m - 1.0f;  // [sqrt(1/2) - 1, sqrt(2) - 1)
  vf ef = __builtin_convertvector(e, vf);
  vf z = f * f;
  vf y = splat(7.0376836292e-2f);
  y = y * f - 1.1514610310e-1f;
  y = y * f + 1.1676998740e-1f;
  y = y * f - 1.2420140846e-1f;
  y = y * f + 1.4249322787e-1f;
  y = y * f - 1.6668057665e-1f;
  y = y * f + 2.0000714765e-1f;
  y = y * f - 2.4999993993e-1f;
  y = y * f + 3.3333331174e-1f;
  y = y * f * z;
  y = y + ef * -2.12194440e-4f;
  y = y - 0.5f * z;
  return f + y + ef * 0.693359375f;
}

// exp(x) for x <= 88 (Cephes' expf polynomial); 0 below -87.
inline vf vexp(vf x) {
  vi tiny = x < -87.0f;
  vf xc = tiny ? splat(-87.0f) : x;
  // Round to nearest with the 1.5 * 2^23 trick (exact for |n| < 2^22).
  vf n = (xc * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  vf r = xc - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  vf y = splat(1.9875691500e-4f);
  y = y * r + 1.3981999507e-3f;
  y = y * r + 8.3334519073e-3f;
  y = y * r + 4.1665795894e-2f;
  y = y * r + 1.6666665459e-1f;
  y = y * r + 5.0000001201e-1f;
  y = y * r * r + r + 1.0f;
  vi scale = (__builtin_convertvector(n, vi) + 127) << 23;
  vf result = y * (vf)scale;
  return tiny ? splat(0.0f) : result;
}

// t^e for t >= 0 and e > 0 (0 where t is 0 or subnormal).
inline vf pow_nonneg(vf t, float e) {
  vi normal = t >= 1.17549435e-38f;
  vf r = vexp(e * vlog(normal ? t : splat(1.0f)));
  return normal ? r : splat(0.0f);
}

// The powers of a p-norm, for t = z c with c = 1 / peak (peak: the max |z|
// in the forward pass, y in the backward pass):
//   add_term(acc, z, c, peak)         acc += |t|^p         (forward sum),
//   add_slope(z, c, peak, g, gx, gw)  gx += u, gw += u with
//                                     u = sign(z) |t|^(p - 1) g
//                                     (two fused multiply-adds),
//   root(s)                           s^(1/p).
// Small integer powers ignore `peak`: rounding t costs them about p ulps.
// Real powers (p up to 1000 and more) take t = 1 exactly where |z| == peak,
// as the reference does: a rounded t^999 would be off by 999 ulps.
// kOnePass: no overflow or underflow risk after scaling by an upper bound
// of max |z| (see tile_pnorm), which holds for small p.
template <int P>
struct IntPower {
  static constexpr bool kOnePass = true;
  void add_term(vf& acc, vf z, float c, float) const {
    const vf t = z * c;
    if constexpr (P % 2 == 0) {
      acc += powi<P>(t);
    } else {
      acc += vabs(powi<P>(t));
    }
  }
  void add_slope(vf z, float c, float, vf g, vf& gx, vf& gw) const {
    const vf t = z * c;
    vf f, h;
    if constexpr (P == 1) {
      const vf one = splat(1.0f), zero = splat(0.0f);
      f = (t > 0.0f ? one : zero) - (t < 0.0f ? one : zero);
      h = g;
    } else if constexpr (P == 2) {
      f = t;
      h = g;
    } else if constexpr (P % 2 == 0) {
      f = powi<P - 2>(t);  // even power
      h = t * g;
    } else {
      f = vabs(t) * powi<P - 3>(t);  // |t|^(P - 2)
      h = t * g;
    }
    const vf u = f * h;
    gx += u;
    gw += u;
  }
  float root(float s) const {
    if constexpr (P == 1) return s;
    if constexpr (P == 2) return std::sqrt(s);
    if constexpr (P == 4) return std::sqrt(std::sqrt(s));
    if constexpr (P == 8) return std::sqrt(std::sqrt(std::sqrt(s)));
    return static_cast<float>(std::pow(static_cast<double>(s), 1.0 / P));
  }
};

// Any real p >= 1 by exp(p log t). With SKIP (large p), vectors whose t
// are all at most `negligible` are skipped: there t^p (forward) or
// t^(p - 1) (backward) is below 2^-24 / (number of terms of a sum) of the
// largest term, 1, so whole sums change by less than 2^-24 relative.
template <bool SKIP>
struct RealPower {
  static constexpr bool kOnePass = false;
  float p;
  float negligible;
  static vf ratio(vf a, float c, float peak) {
    return a == peak ? splat(1.0f) : a * c;
  }
  void add_term(vf& acc, vf z, float c, float peak) const {
    const vf a = vabs(z);
    if constexpr (SKIP) {
      if (!any_above(a * c, negligible)) return;
    }
    acc += pow_nonneg(ratio(a, c, peak), p);
  }
  void add_slope(vf z, float c, float peak, vf g, vf& gx, vf& gw) const {
    const vf a = vabs(z);
    if constexpr (SKIP) {
      if (!any_above(a * c, negligible)) return;
    }
    const vf r = pow_nonneg(ratio(a, c, peak), p - 1.0f);
    const vf u = (vf)((vi)r | ((vi)z & (int32_t)0x80000000)) * g;
    gx += u;
    gw += u;
  }
  float root(float s) const {
    return static_cast<float>(
        std::pow(static_cast<double>(s), 1.0 / static_cast<double>(p)));
  }
};

// p = P, a power of two above 8 (16, 32, 64), by repeated squaring: the
// real-power path (two passes, t = 1 exactly at the peak, so t <= 1 and
// nothing overflows) with t^P by log2(P) squarings instead of exp(P log t),
// about 9x cheaper at P = 16 (benchmarks/linf_throughput.py). Rounding
// costs about P ulps, as for the small integer powers.
template <int P, bool SKIP>
struct SquaringPower {
  static constexpr bool kOnePass = false;
  float negligible;
  void add_term(vf& acc, vf z, float c, float peak) const {
    const vf a = vabs(z);
    if constexpr (SKIP) {
      if (!any_above(a * c, negligible)) return;
    }
    acc += powi<P>(RealPower<false>::ratio(a, c, peak));
  }
  void add_slope(vf z, float c, float peak, vf g, vf& gx, vf& gw) const {
    const vf a = vabs(z);
    if constexpr (SKIP) {
      if (!any_above(a * c, negligible)) return;
    }
    const vf r = powi<P - 1>(RealPower<false>::ratio(a, c, peak));
    const vf u = (vf)((vi)r | ((vi)z & (int32_t)0x80000000)) * g;
    gx += u;
    gw += u;
  }
  float root(float s) const {
    return static_cast<float>(std::pow(static_cast<double>(s), 1.0 / P));
  }
};

// ------------------------------------------------------------ threads, memory

template <class F>
void parallel_for(int64_t tasks, int threads, const F& f) {
  int64_t workers = std::max<int64_t>(1, std::min<int64_t>(threads, tasks));
  std::atomic<int64_t> next{0};
  auto work = [&]() {
    for (int64_t t; (t = next.fetch_add(1)) < tasks;) f(t);
  };
  std::vector<std::thread> pool;
  for (int64_t i = 1; i < workers; ++i) {
    try {
      pool.emplace_back(work);
    } catch (...) {  // no more threads: the others share the work
      break;
    }
  }
  work();
  for (auto& thread : pool) thread.join();
}

struct Buffer {
  float* data = nullptr;
  explicit Buffer(size_t n) {
    data = static_cast<float*>(
        ::operator new[](std::max<size_t>(n, 1) * sizeof(float),
                         std::align_val_t(64)));
  }
  ~Buffer() { ::operator delete[](data, std::align_val_t(64)); }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
};

inline int64_t round_up(int64_t n, int64_t m) { return (n + m - 1) / m * m; }

// Sizes and padded copies of the operands.
struct Operands {
  int64_t B, D, N, Bp, Dp, Np;
  Buffer x, keep, wt;  // (Bp, Dp), (Bp, Dp) or empty, (Np, Dp)
  bool has_keep;

  Operands(const float* x_in, const float* w_in, const float* keep_in,
           int64_t B_, int64_t D_, int64_t N_, int threads)
      : B(B_),
        D(D_),
        N(N_),
        Bp(round_up(B_, kPad)),
        Dp(round_up(D_, kLanes)),
        Np(round_up(N_, kPad)),
        x(Bp * Dp),
        keep(keep_in ? Bp * Dp : 0),
        wt(Np * Dp),
        has_keep(keep_in != nullptr) {
    pad_rows(x_in, x.data);
    if (has_keep) pad_rows(keep_in, keep.data);
    transpose_in(w_in, threads);
  }

  void pad_rows(const float* src, float* dst) const {
    for (int64_t b = 0; b < Bp; ++b) {
      float* row = dst + b * Dp;
      if (b < B) {
        std::memcpy(row, src + b * D, D * sizeof(float));
        std::fill(row + D, row + Dp, 0.0f);
      } else {
        std::fill(row, row + Dp, 0.0f);
      }
    }
  }

  // wt[n, d] = w[d, n], in 32 x 32 blocks; zero padding.
  void transpose_in(const float* w, int threads) {
    const int64_t blocks = (Np + 31) / 32;
    parallel_for(blocks, threads, [&](int64_t block) {
      const int64_t n0 = block * 32, n1 = std::min(n0 + 32, Np);
      for (int64_t d0 = 0; d0 < Dp; d0 += 32) {
        const int64_t d1 = std::min(d0 + 32, Dp);
        for (int64_t n = n0; n < n1; ++n) {
          float* row = wt.data + n * Dp;
          for (int64_t d = d0; d < d1; ++d) {
            row[d] = (n < N && d < D) ? w[d * N + n] : 0.0f;
          }
        }
      }
    });
  }
};

// ----------------------------------------------------------- forward tiles

// Rows of one register tile: x / keep rows b0.., kernel rows n0...
template <int TM, int TN>
struct TileRows {
  const float* x[TM];
  const float* k[TM];
  const float* w[TN];
  TileRows(const Operands& op, int64_t b0, int64_t n0) {
    for (int i = 0; i < TM; ++i) {
      x[i] = op.x.data + (b0 + i) * op.Dp;
      k[i] = op.has_keep ? op.keep.data + (b0 + i) * op.Dp : nullptr;
    }
    for (int j = 0; j < TN; ++j) w[j] = op.wt.data + (n0 + j) * op.Dp;
  }
};

// m[i][j] = max_d |z| over the whole row.
template <bool KEEP, int TM, int TN>
inline void tile_max(const TileRows<TM, TN>& rows, int64_t Dp,
                     float m[TM][TN]) {
  vf acc[TM][TN];
  for (int i = 0; i < TM; ++i)
    for (int j = 0; j < TN; ++j) acc[i][j] = splat(0.0f);
  for (int64_t d = 0; d < Dp; d += kLanes) {
    vf xv[TM], kv[TM], wv[TN];
    for (int i = 0; i < TM; ++i) {
      xv[i] = load(rows.x[i] + d);
      if (KEEP) kv[i] = load(rows.k[i] + d);
    }
    for (int j = 0; j < TN; ++j) wv[j] = load(rows.w[j] + d);
    for (int i = 0; i < TM; ++i)
      for (int j = 0; j < TN; ++j) {
        vf a = vabs(xv[i] - wv[j]);
        if (KEEP) a = a * kv[i];
        acc[i][j] = vmax(acc[i][j], a);
      }
  }
  for (int i = 0; i < TM; ++i)
    for (int j = 0; j < TN; ++j) m[i][j] = hmax(acc[i][j]);
}

// s[i][j] = sum_d term(z c[i][j]).
template <class Power, bool KEEP, int TM, int TN>
inline void tile_psum(const TileRows<TM, TN>& rows, int64_t Dp,
                      const Power& power, const float c[TM][TN],
                      const float peak[TM][TN], float s[TM][TN]) {
  vf acc[TM][TN];
  for (int i = 0; i < TM; ++i)
    for (int j = 0; j < TN; ++j) acc[i][j] = splat(0.0f);
  for (int64_t d = 0; d < Dp; d += kLanes) {
    vf xv[TM], kv[TM], wv[TN];
    for (int i = 0; i < TM; ++i) {
      xv[i] = load(rows.x[i] + d);
      if (KEEP) kv[i] = load(rows.k[i] + d);
    }
    for (int j = 0; j < TN; ++j) wv[j] = load(rows.w[j] + d);
    for (int i = 0; i < TM; ++i)
      for (int j = 0; j < TN; ++j) {
        vf z = xv[i] - wv[j];
        if (KEEP) z = z * kv[i];
        power.add_term(acc[i][j], z, c[i][j], peak[i][j]);
      }
  }
  for (int i = 0; i < TM; ++i)
    for (int j = 0; j < TN; ++j) s[i][j] = hsum(acc[i][j]);
}

// Finite p: y = (sum_d term(z c))^(1/p) / c, exact by homogeneity for any
// scale c > 0. The reference takes c = 1 / max_d |z|, which needs a first
// pass for the maximum. Small integer powers first try one pass with
// c = 1 / (max_d |x_b| + max_d |w_n|) (upper bounds of max_d |z|, per row):
// no term exceeds 1, and when the sum is at least 2^-60 the largest term is
// at least 2^-60 / D, so terms lost to underflow (each below 2^-126) are
// negligible. Otherwise (max |z| much smaller than the bound) the tile is
// redone in the reference's two passes.
template <class Power, bool KEEP, int TM, int TN>
void tile_pnorm(const Operands& op, const Power& power, const float* bound_x,
                const float* bound_w, int64_t b0, int64_t n0, float* y) {
  const TileRows<TM, TN> rows(op, b0, n0);
  float c[TM][TN], s[TM][TN];
  if constexpr (Power::kOnePass) {
    for (int i = 0; i < TM; ++i)
      for (int j = 0; j < TN; ++j) {
        const float bound = bound_x[b0 + i] + bound_w[n0 + j];
        c[i][j] = bound > 0.0f ? 1.0f / bound : 0.0f;
      }
    tile_psum<Power, KEEP, TM, TN>(rows, op.Dp, power, c, c, s);
    bool accurate = true;
    for (int i = 0; i < TM; ++i)
      for (int j = 0; j < TN; ++j) {
        const bool padding = b0 + i >= op.B || n0 + j >= op.N;
        accurate = accurate &&
                   (padding || (s[i][j] >= 0x1p-60f && c[i][j] > 0.0f));
      }
    if (accurate) {
      for (int i = 0; i < TM; ++i)
        for (int j = 0; j < TN; ++j) {
          const int64_t b = b0 + i, n = n0 + j;
          if (b < op.B && n < op.N)
            y[b * op.N + n] = power.root(s[i][j]) / c[i][j];
        }
      return;
    }
  }
  float m[TM][TN];
  tile_max<KEEP, TM, TN>(rows, op.Dp, m);
  for (int i = 0; i < TM; ++i)
    for (int j = 0; j < TN; ++j)
      c[i][j] = m[i][j] > 0.0f ? 1.0f / m[i][j] : 0.0f;
  tile_psum<Power, KEEP, TM, TN>(rows, op.Dp, power, c, m, s);
  for (int i = 0; i < TM; ++i)
    for (int j = 0; j < TN; ++j) {
      const int64_t b = b0 + i, n = n0 + j;
      if (b < op.B && n < op.N)
        y[b * op.N + n] = m[i][j] > 0.0f ? m[i][j] * power.root(s[i][j]) : 0.0f;
    }
}

// max_d |row[d]| of each of `rows` rows of length Dp.
void row_bounds(const float* data, int64_t rows, int64_t Dp, float* out) {
  for (int64_t r = 0; r < rows; ++r) {
    vf acc = splat(0.0f);
    for (int64_t d = 0; d < Dp; d += kLanes)
      acc = vmax(acc, vabs(load(data + r * Dp + d)));
    out[r] = hmax(acc);
  }
}

// p = inf: y = max_d |z|; aux = the maximizing d, or -(number of ties).
template <bool KEEP, int TM, int TN>
void tile_max_arg(const Operands& op, int64_t b0, int64_t n0, float* y,
                  int32_t* aux) {
  const TileRows<TM, TN> rows(op, b0, n0);
  if (aux == nullptr) {
    float m[TM][TN];
    tile_max<KEEP, TM, TN>(rows, op.Dp, m);
    for (int i = 0; i < TM; ++i)
      for (int j = 0; j < TN; ++j)
        if (b0 + i < op.B && n0 + j < op.N)
          y[(b0 + i) * op.N + n0 + j] = m[i][j];
    return;
  }
  vf acc[TM][TN];
  vi arg[TM][TN], count[TM][TN];
  const vi one = splat_i(1);
  for (int i = 0; i < TM; ++i)
    for (int j = 0; j < TN; ++j) {
      acc[i][j] = splat(-1.0f);
      arg[i][j] = splat_i(0);
      count[i][j] = splat_i(0);
    }
  for (int64_t d = 0; d < op.Dp; d += kLanes) {
    const vi here = splat_i(static_cast<int32_t>(d));
    vf xv[TM], kv[TM], wv[TN];
    for (int i = 0; i < TM; ++i) {
      xv[i] = load(rows.x[i] + d);
      if (KEEP) kv[i] = load(rows.k[i] + d);
    }
    for (int j = 0; j < TN; ++j) wv[j] = load(rows.w[j] + d);
    for (int i = 0; i < TM; ++i)
      for (int j = 0; j < TN; ++j) {
        vf a = vabs(xv[i] - wv[j]);
        if (KEEP) a = a * kv[i];
        const vi above = a > acc[i][j];
        const vi equal = a == acc[i][j];
        acc[i][j] = above ? a : acc[i][j];
        arg[i][j] = above ? here : arg[i][j];
        count[i][j] = above ? one : count[i][j] - equal;
      }
  }
  for (int i = 0; i < TM; ++i)
    for (int j = 0; j < TN; ++j) {
      const int64_t b = b0 + i, n = n0 + j;
      if (b >= op.B || n >= op.N) continue;
      const float m = hmax(acc[i][j]);
      int32_t ties = 0, where = 0;
      for (int l = kLanes - 1; l >= 0; --l) {
        if (acc[i][j][l] == m) {
          ties += count[i][j][l];
          where = arg[i][j][l] + l;
        }
      }
      y[b * op.N + n] = m;
      aux[b * op.N + n] = ties == 1 ? where : -ties;
    }
}

// Runs tile(b0, n0) over all tiles: tasks are blocks of rows of x and of
// the kernel sized so that both stay in the L2 cache.
template <int TM, int TN, class Tile>
void for_each_tile(const Operands& op, int threads, const Tile& tile) {
  const int64_t budget_rows =
      std::max<int64_t>(3 * kPad, (512 * 1024) / (op.Dp * 4));
  const int64_t rows_n = std::max<int64_t>(TN, budget_rows * 2 / 3 / TN * TN);
  const int64_t rows_b = std::max<int64_t>(TM, budget_rows / 3 / TM * TM);
  const int64_t blocks_b = (op.Bp + rows_b - 1) / rows_b;
  const int64_t blocks_n = (op.Np + rows_n - 1) / rows_n;
  parallel_for(blocks_b * blocks_n, threads, [&](int64_t task) {
    const int64_t b_start = (task % blocks_b) * rows_b;
    const int64_t n_start = (task / blocks_b) * rows_n;
    const int64_t b_end = std::min(b_start + rows_b, op.Bp);
    const int64_t n_end = std::min(n_start + rows_n, op.Np);
    for (int64_t n0 = n_start; n0 < n_end; n0 += TN)
      for (int64_t b0 = b_start; b0 < b_end; b0 += TM) tile(b0, n0);
  });
}

template <class Power, bool KEEP>
void forward_pnorm(const Operands& op, const Power& power, float* y,
                   int threads) {
  Buffer bound_x(op.Bp), bound_w(op.Np);
  if (Power::kOnePass) {
    row_bounds(op.x.data, op.Bp, op.Dp, bound_x.data);
    row_bounds(op.wt.data, op.Np, op.Dp, bound_w.data);
  }
  for_each_tile<kSumM, kSumN>(op, threads, [&](int64_t b0, int64_t n0) {
    tile_pnorm<Power, KEEP, kSumM, kSumN>(op, power, bound_x.data,
                                          bound_w.data, b0, n0, y);
  });
}

template <bool KEEP>
void forward_inf(const Operands& op, float* y, int32_t* aux, int threads) {
  if (aux == nullptr) {
    for_each_tile<kSumM, kSumN>(op, threads, [&](int64_t b0, int64_t n0) {
      tile_max_arg<KEEP, kSumM, kSumN>(op, b0, n0, y, nullptr);
    });
  } else {
    for_each_tile<kArgM, kArgN>(op, threads, [&](int64_t b0, int64_t n0) {
      tile_max_arg<KEEP, kArgM, kArgN>(op, b0, n0, y, aux);
    });
  }
}

// ---------------------------------------------------------- backward tiles

// Over the coordinates [d0, d1): grad_x[b, d] += sum_n slope * g and
// gwt[n, d] += sum_b slope * g for one register tile, with
// scale = 1 / y and g = upstream (both 0 where y == 0 or padded).
template <class Power, bool KEEP, int TM, int TN>
inline void tile_backward(const Operands& op, const Power& power, int64_t b0,
                          int64_t n0, int64_t d0, int64_t d1,
                          const float* scale, const float* peak,
                          const float* upstream, float* gx, float* gwt) {
  const TileRows<TM, TN> rows(op, b0, n0);
  float s[TM][TN], g[TM][TN], y[TM][TN];
  for (int i = 0; i < TM; ++i)
    for (int j = 0; j < TN; ++j) {
      s[i][j] = scale[(b0 + i) * op.Np + n0 + j];
      g[i][j] = upstream[(b0 + i) * op.Np + n0 + j];
      y[i][j] = peak[(b0 + i) * op.Np + n0 + j];
    }
  for (int64_t d = d0; d < d1; d += kLanes) {
    vf xv[TM], kv[TM], wv[TN], gxv[TM], gwv[TN];
    for (int i = 0; i < TM; ++i) {
      xv[i] = load(rows.x[i] + d);
      if (KEEP) kv[i] = load(rows.k[i] + d);
      gxv[i] = splat(0.0f);
    }
    for (int j = 0; j < TN; ++j) {
      wv[j] = load(rows.w[j] + d);
      gwv[j] = splat(0.0f);
    }
    for (int i = 0; i < TM; ++i)
      for (int j = 0; j < TN; ++j) {
        vf z = xv[i] - wv[j];
        if (KEEP) z = z * kv[i];
        power.add_slope(z, s[i][j], y[i][j], splat(g[i][j]), gxv[i], gwv[j]);
      }
    for (int i = 0; i < TM; ++i) {
      float* out = gx + (b0 + i) * op.Dp + d;
      store(out, load(out) + gxv[i]);
    }
    for (int j = 0; j < TN; ++j) {
      float* out = gwt + (n0 + j) * op.Dp + d;
      store(out, load(out) + gwv[j]);
    }
  }
}

template <class Power, bool KEEP>
void backward_pnorm(const Operands& op, const Power& power, const float* y,
                    const float* upstream, float* grad_x, float* grad_w,
                    int threads) {
  // Per (b, n): 1 / y and the upstream gradient, zero where y == 0 (then
  // every z is 0 and the reference's gradient is 0) and in the padding.
  Buffer scale(op.Bp * op.Np), peak(op.Bp * op.Np), g(op.Bp * op.Np);
  for (int64_t b = 0; b < op.Bp; ++b)
    for (int64_t n = 0; n < op.Np; ++n) {
      const bool inside = b < op.B && n < op.N;
      const float yv = inside ? y[b * op.N + n] : 0.0f;
      const bool live = inside && yv != 0.0f;
      scale.data[b * op.Np + n] = live ? 1.0f / yv : 0.0f;
      peak.data[b * op.Np + n] = yv;
      g.data[b * op.Np + n] = live ? upstream[b * op.N + n] : 0.0f;
    }
  Buffer gx(op.Bp * op.Dp), gwt(op.Np * op.Dp);
  // Threads own disjoint blocks of coordinates: no write is shared. Long
  // blocks amortize each tile's set-up (its 2 TM TN scalars).
  const int64_t vectors = op.Dp / kLanes;
  const int64_t per_block = std::max<int64_t>(
      1, std::min<int64_t>(16, (vectors + threads - 1) / std::max(1, threads)));
  const int64_t blocks = (vectors + per_block - 1) / per_block;
  parallel_for(blocks, threads, [&](int64_t block) {
    const int64_t d0 = block * per_block * kLanes;
    const int64_t d1 = std::min(op.Dp, d0 + per_block * kLanes);
    for (int64_t b = 0; b < op.Bp; ++b)
      std::fill(gx.data + b * op.Dp + d0, gx.data + b * op.Dp + d1, 0.0f);
    for (int64_t n = 0; n < op.Np; ++n)
      std::fill(gwt.data + n * op.Dp + d0, gwt.data + n * op.Dp + d1, 0.0f);
    // Blocks of kGradRows samples: their rows of x and grad_x stay in the
    // L1/L2 cache while the kernel's rows stream by once per block.
    for (int64_t b_start = 0; b_start < op.Bp; b_start += kGradRows) {
      const int64_t b_end = std::min(b_start + kGradRows, op.Bp);
      for (int64_t n0 = 0; n0 < op.Np; n0 += kGradN)
        for (int64_t b0 = b_start; b0 < b_end; b0 += kGradM)
          tile_backward<Power, KEEP, kGradM, kGradN>(
              op, power, b0, n0, d0, d1, scale.data, peak.data, g.data,
              gx.data, gwt.data);
    }
  });
  for (int64_t b = 0; b < op.B; ++b)
    std::memcpy(grad_x + b * op.D, gx.data + b * op.Dp, op.D * sizeof(float));
  // grad_w[d, n] = -gwt[n, d], in 32 x 32 blocks.
  const int64_t blocks_d = (op.D + 31) / 32;
  parallel_for(blocks_d, threads, [&](int64_t block) {
    const int64_t d0 = block * 32, d1 = std::min(d0 + 32, op.D);
    for (int64_t n0 = 0; n0 < op.N; n0 += 32) {
      const int64_t n1 = std::min(n0 + 32, op.N);
      for (int64_t d = d0; d < d1; ++d)
        for (int64_t n = n0; n < n1; ++n)
          grad_w[d * op.N + n] = -gwt.data[n * op.Dp + d];
    }
  });
}

// p = inf: the upstream gradient goes to the maximizing coordinate of each
// (b, n), shared equally among tied maximizers (recounted here), with the
// sign of z there; nothing when y == 0 (all z are 0, sign 0).
struct InfBackward {
  const float *x, *w, *keep, *y, *upstream;
  const int32_t* aux;
  int64_t D, N;

  float z(int64_t b, int64_t d, int64_t n) const {
    float v = x[b * D + d] - w[d * N + n];
    return keep ? v * keep[b * D + d] : v;
  }
  static float sign(float v) {
    return v > 0.0f ? 1.0f : (v < 0.0f ? -1.0f : 0.0f);
  }

  // Calls add(d, gradient of y[b, n] w.r.t. z_d times the upstream).
  template <class Add>
  void visit(int64_t b, int64_t n, const Add& add) const {
    const float m = y[b * N + n];
    const int32_t a = aux[b * N + n];
    if (m == 0.0f) return;
    if (a >= 0) {
      add(a, sign(z(b, a, n)) * upstream[b * N + n]);
      return;
    }
    const float share = upstream[b * N + n] / static_cast<float>(-a);
    for (int64_t d = 0; d < D; ++d) {
      const float v = z(b, d, n);
      if (std::fabs(v) == m) add(d, sign(v) * share);
    }
  }
};

void backward_inf(const InfBackward& inf, int64_t B, float* grad_x,
                  float* grad_w, int threads) {
  const int64_t D = inf.D, N = inf.N;
  // grad_x: threads own rows b.
  parallel_for(B, threads, [&](int64_t b) {
    float* row = grad_x + b * D;
    std::fill(row, row + D, 0.0f);
    for (int64_t n = 0; n < N; ++n)
      inf.visit(b, n, [&](int64_t d, float v) { row[d] += v; });
  });
  // grad_w: threads own blocks of 16 columns n.
  const int64_t blocks = (N + 15) / 16;
  parallel_for(blocks, threads, [&](int64_t block) {
    const int64_t n0 = block * 16, n1 = std::min(n0 + 16, N);
    for (int64_t d = 0; d < D; ++d)
      std::fill(grad_w + d * N + n0, grad_w + d * N + n1, 0.0f);
    for (int64_t b = 0; b < B; ++b)
      for (int64_t n = n0; n < n1; ++n)
        inf.visit(b, n, [&](int64_t d, float v) { grad_w[d * N + n] -= v; });
  });
}

// Calls f(power) with the power object for a finite p, in a sum of up to
// `terms` terms of exponent `exponent` (p forward, p - 1 backward).
template <class F>
void with_power(double p, double exponent, int64_t terms, const F& f) {
  const double r = std::round(p);
  if (r == p && r >= 1.0 && r <= 8.0) {
    switch (static_cast<int>(r)) {
      case 1: return f(IntPower<1>{});
      case 2: return f(IntPower<2>{});
      case 3: return f(IntPower<3>{});
      case 4: return f(IntPower<4>{});
      case 5: return f(IntPower<5>{});
      case 6: return f(IntPower<6>{});
      case 7: return f(IntPower<7>{});
      case 8: return f(IntPower<8>{});
    }
  }
  // t^exponent < 2^-24 / terms for t below this bound.
  const double negligible =
      std::exp2(-(24.0 + std::log2(static_cast<double>(terms))) / exponent);
  const bool skip = negligible >= kSkipFrom;
  const float bound = static_cast<float>(negligible);
  if (r == p && (r == 16.0 || r == 32.0 || r == 64.0)) {
    if (r == 16.0) {
      return skip ? f(SquaringPower<16, true>{bound})
                  : f(SquaringPower<16, false>{bound});
    }
    if (r == 32.0) {
      return skip ? f(SquaringPower<32, true>{bound})
                  : f(SquaringPower<32, false>{bound});
    }
    return skip ? f(SquaringPower<64, true>{bound})
                : f(SquaringPower<64, false>{bound});
  }
  // Skipping pays when most vectors fall below the bound (large p).
  if (skip) {
    return f(RealPower<true>{static_cast<float>(p),
                             static_cast<float>(negligible)});
  }
  f(RealPower<false>{static_cast<float>(p), 0.0f});
}

bool valid(int64_t B, int64_t D, int64_t N, double p) {
  return B >= 0 && D >= 1 && N >= 0 && D < (int64_t{1} << 31) && p >= 1.0;
}

// No more threads than blocks of about 2^22 (b, d, n) triples: starting a
// thread costs about as much as a few thousand of them.
int useful_threads(int threads, int64_t B, int64_t D, int64_t N) {
  const int64_t work = std::max<int64_t>(1, B * D * N >> 22);
  return static_cast<int>(std::max<int64_t>(
      1, std::min<int64_t>(std::max(threads, 1), work)));
}

}  // namespace

extern "C" {

// Version of this ABI; the loader checks it.
int keras_lipschitz_linf_abi_version() { return 1; }

// The vector width the kernels were compiled for (floats).
int keras_lipschitz_linf_lanes() { return kLanes; }

// y (B, N) = ||x[b] - w[:, n]||_p over the kept coordinates (keep (B, D) of
// 0/1, or null). At p = inf, aux (B, N) (may be null if no gradient is
// needed) receives the maximizing d, or minus the number of tied maximizers;
// it is unused at finite p. Returns 0 on success, 1 on bad sizes, 2 when
// memory runs out.
int keras_lipschitz_linf_forward(const float* x, const float* w,
                                 const float* keep, int64_t B, int64_t D,
                                 int64_t N, double p, float* y, int32_t* aux,
                                 int threads) {
  if (!valid(B, D, N, p)) return 1;
  if (B == 0 || N == 0) return 0;
  threads = useful_threads(threads, B, D, N);
  try {
    const Operands op(x, w, keep, B, D, N, threads);
    if (std::isinf(p)) {
      if (keep) {
        forward_inf<true>(op, y, aux, threads);
      } else {
        forward_inf<false>(op, y, aux, threads);
      }
    } else {
      with_power(p, p, round_up(D, kLanes), [&](const auto& power) {
        if (keep) {
          forward_pnorm<std::decay_t<decltype(power)>, true>(op, power, y,
                                                             threads);
        } else {
          forward_pnorm<std::decay_t<decltype(power)>, false>(op, power, y,
                                                              threads);
        }
      });
    }
  } catch (const std::bad_alloc&) {
    return 2;
  }
  return 0;
}

// Gradients of sum(upstream * y) w.r.t. x (grad_x, (B, D)) and w (grad_w,
// (D, N)), from the forward pass's y and (at p = inf) aux. Same return
// codes as the forward pass.
int keras_lipschitz_linf_backward(const float* x, const float* w,
                                  const float* keep, int64_t B, int64_t D,
                                  int64_t N, double p, const float* y,
                                  const int32_t* aux, const float* upstream,
                                  float* grad_x, float* grad_w, int threads) {
  if (!valid(B, D, N, p)) return 1;
  if (B == 0 || N == 0) {
    std::fill(grad_x, grad_x + B * D, 0.0f);
    std::fill(grad_w, grad_w + D * N, 0.0f);
    return 0;
  }
  threads = useful_threads(threads, B, D, N);
  try {
    if (std::isinf(p)) {
      if (aux == nullptr) return 1;
      backward_inf(InfBackward{x, w, keep, y, upstream, aux, D, N}, B, grad_x,
                   grad_w, threads);
      return 0;
    }
    const Operands op(x, w, keep, B, D, N, threads);
    with_power(p, p - 1.0, std::max(op.Bp, op.Np), [&](const auto& power) {
      if (keep) {
        backward_pnorm<std::decay_t<decltype(power)>, true>(
            op, power, y, upstream, grad_x, grad_w, threads);
      } else {
        backward_pnorm<std::decay_t<decltype(power)>, false>(
            op, power, y, upstream, grad_x, grad_w, threads);
      }
    });
  } catch (const std::bad_alloc&) {
    return 2;
  }
  return 0;
}

}  // extern "C"
