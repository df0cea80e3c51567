// DCNv3 core on the CPU: forward and backward of the sampling + weighted sum over the K points of each group.
//
// Semantics are those of stm_lab/ops/dcnv3.py (the pure-PyTorch reference; see its docstring for the formula).
// Layout: input (N, H, W, C) channels-last, offset (N, Ho, Wo, G*K*2) as (x, y) pairs, mask (N, Ho, Wo, G*K),
// output (N, Ho, Wo, C). Padding is never materialised: positions are shifted by `pad` and corners outside the
// unpadded map read zeros.
//
// Each output pixel is done in two passes, because per point the bookkeeping (position, floor, weights, bounds)
// costs as much as the arithmetic on its 8-32 channels:
//  1. locate(): the bilinear footprint of all its points, written structure-of-arrays (one branch-free loop);
//  2. a short loop over the contiguous channels of the group per point, vectorized (`omp simd`), with the channel
//     count a compile-time constant for the common widths 8, 16 and 32 (so it is fully unrolled). The backward's
//     four dot products per point are reduced together with AVX2 where available (dot4), which is measurably
//     faster than four separate horizontal sums.
//
// Threading (at::parallel_for, so torch.set_num_threads applies):
//  - forward: over output pixels (each writes only its own output row);
//  - backward: over (image, block of groups). A point of group g in image n scatters its input gradient only into
//    grad_input[n, :, :, g-channels], so the tasks own disjoint slices: no atomics, no per-thread copies, and the
//    result is deterministic (bit-identical for any thread count).
//
// Storage and arithmetic types: T stores the input and its gradient, TP everything else (offset, mask, output,
// grad_output, grad_offset, grad_mask); all arithmetic is in A = at::opmath_type<T>. Instantiated are
// T = TP = float64; T = TP = float32; and T = bfloat16 with TP = bfloat16 (what autocast produces) or float32 (a
// bf16 input with float32 offsets and mask: their sub-pixel precision is kept, and the output is float32). For
// bf16, A is float: values are widened as they are read (a 16-bit shift), positions are doubles as for float32,
// every sum runs in float, and each result is rounded to bf16 once, at its store. grad_input receives many
// contributions per element (rounding each to bf16 would lose the small ones), so a bf16 input's gradient is summed
// in a float32 buffer and rounded once, when the task owning that slice is done. With bf16 storage throughout and
// 16 or 32 channels per group, the channel loops widen 16 values at a time in "split" order (load16_split).
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/util/BFloat16.h>
#include <torch/library.h>

#include <cmath>
#include <cstring>
#if defined(__AVX2__)
#include <immintrin.h>
#endif
#include <tuple>
#include <type_traits>
#include <vector>

#include "dcnv3_common.h"

namespace stm_lab_dcnv3 {
namespace {

// A stored value in the arithmetic type (bf16 -> float is a 16-bit shift; float and double are unchanged).
template <typename V>
inline at::opmath_type<V> to_acc(V v) {
  return static_cast<at::opmath_type<V>>(v);
}

// A result in its storage type. bf16 is rounded to nearest even exactly as c10::BFloat16(float) does (NaN to
// 0x7FC0; checked for all 2^32 floats), but branch-free, so that loops of it vectorize (c10's do not).
template <typename V>
inline V from_acc(at::opmath_type<V> v) {
  if constexpr (std::is_same_v<V, c10::BFloat16>) {
    uint32_t u;
    std::memcpy(&u, &v, sizeof u);
    const uint16_t rounded = uint16_t((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
    return c10::BFloat16(v != v ? uint16_t(0x7FC0) : rounded, c10::BFloat16::from_bits());
  } else {
    return v;
  }
}

// Bilinear footprints of P points. Corner q (0: top-left, 1: top-right, 2: bottom-left, 3: bottom-right) of point
// t is entry [q * P + t]: its element offset in the image (-1 when outside the map), its weight and, for the
// backward, the weight's derivatives along x and y (all 0 when outside). int32 offsets (check_inputs bounds the
// image size) keep the setup loop vectorizable.
template <typename T>
struct Footprints {
  explicit Footprints(int64_t points) : P(points), at(4 * points), w(4 * points), dwdx(4 * points), dwdy(4 * points) {}
  int64_t P;
  std::vector<int32_t> at;
  std::vector<T> w, dwdx, dwdy;
};

// Kernel-grid position of every point relative to its output pixel, in unpadded input pixel coordinates, for
// points t = g * K + a * kh + b (kernel column a, row b): centred dilated grid scaled by offset_scale, minus pad.
struct Taps {
  std::vector<double> x, y;
  Taps(const Geometry& g, int64_t points) : x(points), y(points) {
    const int64_t K = g.kh * g.kw, cw = g.dw * (g.kw - 1) / 2, ch = g.dh * (g.kh - 1) / 2;
    for (int64_t t = 0; t < points; ++t) {
      const int64_t a = (t % K) / g.kh, b = (t % K) % g.kh;
      x[t] = double(cw - g.pw) + double(a * g.dw - cw) * g.scale;
      y[t] = double(ch - g.ph) + double(b * g.dh - ch) * g.scale;
    }
  }
};

// Footprints of points [0, f.P) of output pixel (i, j), whose (x, y) offsets start at `off`. Positions are doubles
// even for float data: a float position on a 40-pixel map is off by ~3e-6 pixel, which alone would use up much of a
// 1e-5 error budget; in a vectorized loop the double arithmetic costs little. The loop is branch-free, with int32
// masks and no early exit, so that it vectorizes (this needs -fno-trapping-math, see stm_lab/ops/_build.py).
template <typename T, typename TP, bool kGrad>
inline void locate(const Geometry& g, int64_t i, int64_t j, const Taps& taps, const TP* __restrict off,
                   Footprints<T>& f) {
  const double ox = double(j * g.sw), oy = double(i * g.sh), s = g.scale;
  const double xmax = double(g.W + 1), ymax = double(g.H + 1);
  const int32_t P = int32_t(f.P), h = int32_t(g.H), w = int32_t(g.W), C = int32_t(g.C), row = w * C;
  const double* __restrict tx = taps.x.data();
  const double* __restrict ty = taps.y.data();
  int32_t* __restrict at = f.at.data();
  T* __restrict wt = f.w.data();
  T* __restrict dx = f.dwdx.data();
  T* __restrict dy = f.dwdy.data();
#pragma omp simd
  for (int32_t t = 0; t < P; ++t) {
    double x = ox + tx[t] + double(to_acc(off[2 * t])) * s;
    double y = oy + ty[t] + double(to_acc(off[2 * t + 1])) * s;
    // clamp to [-2, size + 1]: beyond it no corner is in the map either; NaN fails `>` and lands on -2 (outside).
    // The clamp also keeps the int conversion defined for huge offsets.
    x = x > -2.0 ? x : -2.0;
    x = x < xmax ? x : xmax;
    y = y > -2.0 ? y : -2.0;
    y = y < ymax ? y : ymax;
    const double xf = std::floor(x), yf = std::floor(y);
    const int32_t x0 = int32_t(xf), y0 = int32_t(yf);
    const T lx = T(x - xf), ly = T(y - yf), hx = T(1) - lx, hy = T(1) - ly;
    const int32_t top = (y0 >= 0) & (y0 < h), bottom = (y0 >= -1) & (y0 + 1 < h);
    const int32_t left = (x0 >= 0) & (x0 < w), right = (x0 >= -1) & (x0 + 1 < w);
    const int32_t v0 = top & left, v1 = top & right, v2 = bottom & left, v3 = bottom & right;
    const int32_t at00 = y0 * row + x0 * C;
    at[t] = v0 ? at00 : -1;
    at[P + t] = v1 ? at00 + C : -1;
    at[2 * P + t] = v2 ? at00 + row : -1;
    at[3 * P + t] = v3 ? at00 + row + C : -1;
    wt[t] = v0 ? hy * hx : T(0);
    wt[P + t] = v1 ? hy * lx : T(0);
    wt[2 * P + t] = v2 ? ly * hx : T(0);
    wt[3 * P + t] = v3 ? ly * lx : T(0);
    if constexpr (kGrad) {
      dx[t] = v0 ? -hy : T(0);
      dx[P + t] = v1 ? hy : T(0);
      dx[2 * P + t] = v2 ? -ly : T(0);
      dx[3 * P + t] = v3 ? ly : T(0);
      dy[t] = v0 ? -hx : T(0);
      dy[P + t] = v1 ? -lx : T(0);
      dy[2 * P + t] = v2 ? hx : T(0);
      dy[3 * P + t] = v3 ? lx : T(0);
    }
  }
}

// Calls f(std::integral_constant<int, CG>) with CG = cg for the common group widths (float32 and bf16 storage),
// else CG = 0 ("read the width at run time").
template <typename T, typename F>
void with_group_width(int64_t cg, F&& f) {
  if constexpr (!std::is_same_v<T, double>) {
    switch (cg) {
      case 8: return f(std::integral_constant<int, 8>{});
      case 16: return f(std::integral_constant<int, 16>{});
      case 32: return f(std::integral_constant<int, 32>{});
      default: break;
    }
  }
  f(std::integral_constant<int, 0>{});
}

#if defined(__AVX2__) && defined(__FMA__)
// Eight stored values as eight floats.
inline __m256 load8(const float* p) { return _mm256_loadu_ps(p); }
inline __m256 load8(const c10::BFloat16* p) {  // bf16 is the upper half of a float: widen and shift
  const __m256i u = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  return _mm256_castsi256_ps(_mm256_slli_epi32(u, 16));
}

// Sixteen bf16 values as two float vectors, the even- and the odd-indexed ones ("split" order). A 32-bit word holds
// two bf16 values: as floats, the even one is the word shifted left by 16, the odd one the word with its low half
// cleared. Two integer ops per 16 values and no shuffles: half the cost of widening them in order (load8), which
// is what makes the bf16 kernel about as fast as the float one where the arithmetic is emulated (no bf16 units).
struct Split16 {
  __m256 even, odd;
};
inline Split16 load16_split(const c10::BFloat16* p) {
  const __m256i w = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return {_mm256_castsi256_ps(_mm256_slli_epi32(w, 16)),
          _mm256_castsi256_ps(_mm256_and_si256(w, _mm256_set1_epi32(int(0xFFFF0000u))))};
}
// Floats rounded to bf16 as from_acc does, the bf16 bits in the upper half of each lane.
inline __m256i round_to_upper_half(__m256 v) {
  const __m256i u = _mm256_castps_si256(v);
  const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
  const __m256i rounded = _mm256_add_epi32(u, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7FFF)));
  const __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q));
  return _mm256_blendv_epi8(rounded, _mm256_set1_epi32(0x7FC00000), nan);
}
// The inverse of load16_split, rounding.
inline void store16_split(c10::BFloat16* p, __m256 even, __m256 odd) {
  const __m256i w = _mm256_or_si256(_mm256_srli_epi32(round_to_upper_half(even), 16),
                                    _mm256_and_si256(round_to_upper_half(odd), _mm256_set1_epi32(int(0xFFFF0000u))));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), w);
}

// Forward of one group of a pixel, bf16 storage, CG % 16 == 0: the sums stay in registers, in split order.
template <int CG>
inline void forward_group_split(const c10::BFloat16* image, const c10::BFloat16* zero_row, const Footprints<float>& f,
                                const c10::BFloat16* mask_p, int64_t t0, int64_t t1, c10::BFloat16* o) {
  const int64_t P = f.P;
  __m256 sum[CG / 8];
  for (auto& s : sum) s = _mm256_setzero_ps();
  for (int64_t t = t0; t < t1; ++t) {
    const c10::BFloat16* v[4];
    __m256 w[4];
    for (int q = 0; q < 4; ++q) {
      const int64_t at = f.at[q * P + t];
      v[q] = at >= 0 ? image + at : zero_row;
      w[q] = _mm256_set1_ps(to_acc(mask_p[t]) * f.w[q * P + t]);
    }
    for (int c = 0; c < CG / 16; ++c) {
      const Split16 x0 = load16_split(v[0] + 16 * c), x1 = load16_split(v[1] + 16 * c),
                    x2 = load16_split(v[2] + 16 * c), x3 = load16_split(v[3] + 16 * c);
      __m256 e = _mm256_mul_ps(w[0], x0.even), d = _mm256_mul_ps(w[0], x0.odd);
      e = _mm256_fmadd_ps(w[1], x1.even, e), d = _mm256_fmadd_ps(w[1], x1.odd, d);
      e = _mm256_fmadd_ps(w[2], x2.even, e), d = _mm256_fmadd_ps(w[2], x2.odd, d);
      e = _mm256_fmadd_ps(w[3], x3.even, e), d = _mm256_fmadd_ps(w[3], x3.odd, d);
      sum[2 * c] = _mm256_add_ps(sum[2 * c], e);
      sum[2 * c + 1] = _mm256_add_ps(sum[2 * c + 1], d);
    }
  }
  for (int c = 0; c < CG / 16; ++c) store16_split(o + 16 * c, sum[2 * c], sum[2 * c + 1]);
}

// s[0..3] = the lane sums of a0..a3, reduced jointly (instead of four separate horizontal sums).
inline void reduce4(__m256 a0, __m256 a1, __m256 a2, __m256 a3, float* s) {
  const __m256 h = _mm256_hadd_ps(_mm256_hadd_ps(a0, a1), _mm256_hadd_ps(a2, a3));  // per 128-bit half
  _mm_storeu_ps(s, _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1)));
}

// dot4 for bf16 corners, CG % 16 == 0, with grad_output already widened in split order.
template <int CG>
inline void dot4_split(const __m256* go, const c10::BFloat16* const* v, float* s) {
  __m256 a[4];
  for (int q = 0; q < 4; ++q) {
    a[q] = _mm256_setzero_ps();
    for (int c = 0; c < CG / 16; ++c) {
      const Split16 x = load16_split(v[q] + 16 * c);
      a[q] = _mm256_fmadd_ps(go[2 * c + 1], x.odd, _mm256_fmadd_ps(go[2 * c], x.even, a[q]));
    }
  }
  reduce4(a[0], a[1], a[2], a[3], s);
}
constexpr bool kAvx2 = true;
#else
constexpr bool kAvx2 = false;
#endif

// Whether the split path (load16_split) runs: bf16 storage throughout, 16 or 32 channels per group, AVX2.
template <typename T, typename TP, int CG>
constexpr bool kSplit = kAvx2 && std::is_same_v<T, c10::BFloat16> && std::is_same_v<TP, T> && CG > 0 && CG % 16 == 0;

template <typename T, typename TP, int CG>
void forward_kernel(const Geometry& g, const T* input, const TP* offset, const TP* mask, TP* out) {
  using A = at::opmath_type<T>;
  constexpr bool kRoundOut = !std::is_same_v<TP, A>;  // bf16 output: sum in float, round once at the store
  const int64_t K = g.kh * g.kw, P = g.G * K, Cg = CG > 0 ? CG : g.C / g.G, pixels = g.N * g.Ho * g.Wo;
  const Taps taps(g, P);
  const int64_t grain = std::max<int64_t>(1, 32768 / (g.C * K));  // at least ~32k multiply-adds per task
  at::parallel_for(0, pixels, grain, [&](int64_t begin, int64_t end) {
    const std::vector<T> zero_row(Cg, T(0));  // what a corner outside the map reads
    std::vector<A> sum_row(kRoundOut ? Cg : 0);
    Footprints<A> f(P);
    for (int64_t p = begin; p < end; ++p) {
      const int64_t n = p / (g.Ho * g.Wo), i = (p / g.Wo) % g.Ho, j = p % g.Wo;
      locate<A, TP, false>(g, i, j, taps, offset + p * P * 2, f);
      const TP* mask_p = mask + p * P;
      for (int64_t grp = 0; grp < g.G; ++grp) {
        const T* image = input + n * g.H * g.W * g.C + grp * Cg;
        TP* o = out + p * g.C + grp * Cg;
#if defined(__AVX2__) && defined(__FMA__)
        if constexpr (kSplit<T, TP, CG>) {
          forward_group_split<CG>(image, zero_row.data(), f, mask_p, grp * K, (grp + 1) * K, o);
          continue;
        }
#endif
        A* sum;
        if constexpr (kRoundOut) sum = sum_row.data(); else sum = o;
        for (int64_t c = 0; c < Cg; ++c) sum[c] = A(0);
        for (int64_t t = grp * K; t < (grp + 1) * K; ++t) {
          const T* v[4];
          A w[4];
          for (int q = 0; q < 4; ++q) {
            const int64_t at = f.at[q * P + t];
            v[q] = at >= 0 ? image + at : zero_row.data();
            w[q] = to_acc(mask_p[t]) * f.w[q * P + t];
          }
#pragma omp simd
          for (int64_t c = 0; c < Cg; ++c)
            sum[c] += w[0] * to_acc(v[0][c]) + w[1] * to_acc(v[1][c]) + w[2] * to_acc(v[2][c]) + w[3] * to_acc(v[3][c]);
        }
        if constexpr (kRoundOut) {
#pragma omp simd
          for (int64_t c = 0; c < Cg; ++c) o[c] = from_acc<TP>(sum[c]);
        }
      }
    }
  });
}

// s[q] = <go, v[q]> for the four corners of a point.
template <typename A, typename T, int CG>
inline void dot4(const A* go, const T* const* v, int64_t Cg, A* s) {
#if defined(__AVX2__) && defined(__FMA__)
  if constexpr (std::is_same_v<A, float> && CG > 0 && CG % 8 == 0) {
    // lane-wise partial sums, then one joint horizontal reduction of the four
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    for (int c = 0; c < CG; c += 8) {
      const __m256 g8 = _mm256_loadu_ps(go + c);
      a0 = _mm256_fmadd_ps(g8, load8(v[0] + c), a0);
      a1 = _mm256_fmadd_ps(g8, load8(v[1] + c), a1);
      a2 = _mm256_fmadd_ps(g8, load8(v[2] + c), a2);
      a3 = _mm256_fmadd_ps(g8, load8(v[3] + c), a3);
    }
    reduce4(a0, a1, a2, a3, s);
    return;
  }
#endif
  A s0 = 0, s1 = 0, s2 = 0, s3 = 0;
#pragma omp simd reduction(+ : s0, s1, s2, s3)
  for (int64_t c = 0; c < Cg; ++c) {
    s0 += go[c] * to_acc(v[0][c]);
    s1 += go[c] * to_acc(v[1][c]);
    s2 += go[c] * to_acc(v[2][c]);
    s3 += go[c] * to_acc(v[3][c]);
  }
  s[0] = s0, s[1] = s1, s[2] = s2, s[3] = s3;
}

// Groups per backward task: all of an image's groups when there are enough images to keep every thread busy
// (longer, better vectorized setup loops), else fewer. Any split gives bit-identical results: each grad_input
// element is accumulated in (pixel, point) order by a single task either way.
inline int64_t groups_per_task(const Geometry& g) {
  const int64_t wanted_tasks = 4 * int64_t(at::get_num_threads());
  for (int64_t split = 1; split < g.G; ++split) {
    if (g.G % split == 0 && g.N * split >= wanted_tasks) return g.G / split;
  }
  return 1;
}

// For a point with value v = sum_q w_q v_q (w: bilinear weights) and output contribution m * v:
//   dL/dm      = <gout, v> = sum_q w_q s_q,        s_q = <gout, v_q>
//   dL/dx      = m * sum_q (dw_q/dx) s_q,          dx/d(offset_x) = offset_scale (same for y)
//   dL/dv_q[c] = m * w_q * gout[c]                 (scattered into grad_input)
// The input gradient is summed into grad_sum: grad_input itself when T is the arithmetic type, else a float32
// buffer that each task rounds into grad_input once its slice is complete. A bf16 grad_output is widened once per
// pixel and group (its K points share it).
template <typename T, typename TP, int CG>
void backward_kernel(const Geometry& g, const TP* grad_out, const T* input, const TP* offset, const TP* mask,
                     at::opmath_type<T>* grad_sum, T* grad_input, TP* grad_offset, TP* grad_mask) {
  using A = at::opmath_type<T>;
  constexpr bool kWidenGo = !std::is_same_v<TP, A>;
  static_assert(!kSplit<T, TP, CG> || CG <= 32, "go_split holds 4 vectors");
  const int64_t K = g.kh * g.kw, P = g.G * K, Cg = CG > 0 ? CG : g.C / g.G;
  const int64_t G_task = groups_per_task(g), blocks = g.G / G_task, P_task = G_task * K;
  const Taps taps(g, P_task);
  const A scale = A(g.scale);
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(1, g.Ho * g.Wo * P_task * Cg));
  at::parallel_for(0, g.N * blocks, grain, [&](int64_t begin, int64_t end) {
    const std::vector<T> zero_row(Cg, T(0));
    std::vector<A> sink_row(Cg, A(0));  // where a corner outside the map "scatters"; never read
    std::vector<A> go_row(kWidenGo ? Cg : 0);
    // a bf16 grad_mask / grad_offset is computed per pixel into these, then rounded in one vectorized loop
    std::vector<A> gm_row(kWidenGo ? P_task : 0), goff_row(kWidenGo ? 2 * P_task : 0);
#if defined(__AVX2__) && defined(__FMA__)
    __m256 go_split[4] = {};  // the CG / 8 vectors of grad_output in split order (a CG-sized bound crashes GCC 12)
#endif
    Footprints<A> f(P_task);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / blocks, g0 = (task % blocks) * G_task;  // image n, groups [g0, g0 + G_task)
      for (int64_t i = 0; i < g.Ho; ++i) {
        for (int64_t j = 0; j < g.Wo; ++j) {
          const int64_t p = (n * g.Ho + i) * g.Wo + j, first = p * P + g0 * K;  // the task's first point here
          locate<A, TP, true>(g, i, j, taps, offset + 2 * first, f);
          const A* go = nullptr;
          for (int64_t t = 0; t < P_task; ++t) {
            const int64_t grp = g0 + t / K;
            const int64_t base = n * g.H * g.W * g.C + grp * Cg;  // this group's channels in image n
            const TP* go_stored = grad_out + p * g.C + grp * Cg;
            if constexpr (kWidenGo) {
              if (t % K == 0) {  // a new group
#pragma omp simd
                for (int64_t c = 0; c < Cg; ++c) go_row[c] = to_acc(go_stored[c]);
#if defined(__AVX2__) && defined(__FMA__)
                if constexpr (kSplit<T, TP, CG>) {
                  for (int c = 0; c < CG / 16; ++c) {
                    const Split16 x = load16_split(go_stored + 16 * c);
                    go_split[2 * c] = x.even, go_split[2 * c + 1] = x.odd;
                  }
                }
#endif
              }
              go = go_row.data();
            } else {
              go = go_stored;
            }
            const T* v[4];
            A* d[4];
            for (int q = 0; q < 4; ++q) {
              const int64_t at = f.at[q * P_task + t];
              v[q] = at >= 0 ? input + base + at : zero_row.data();
              d[q] = at >= 0 ? grad_sum + base + at : sink_row.data();
            }
            A s[4];
#if defined(__AVX2__) && defined(__FMA__)
            if constexpr (kSplit<T, TP, CG>) dot4_split<CG>(go_split, v, s); else
#endif
            dot4<A, T, CG>(go, v, Cg, s);
            const A m = to_acc(mask[first + t]);
            A gm = 0, gx = 0, gy = 0, mw[4];
            for (int q = 0; q < 4; ++q) {
              gm += f.w[q * P_task + t] * s[q];
              gx += f.dwdx[q * P_task + t] * s[q];
              gy += f.dwdy[q * P_task + t] * s[q];
              mw[q] = m * f.w[q * P_task + t];
            }
            if constexpr (kWidenGo) {
              gm_row[t] = gm, goff_row[2 * t] = m * scale * gx, goff_row[2 * t + 1] = m * scale * gy;
            } else {
              grad_mask[first + t] = gm;
              grad_offset[2 * (first + t)] = m * scale * gx;
              grad_offset[2 * (first + t) + 1] = m * scale * gy;
            }
            // the four destinations are distinct pixels, or the sink (several corners may share it: harmless)
            A *d0 = d[0], *d1 = d[1], *d2 = d[2], *d3 = d[3];
#pragma omp simd
            for (int64_t c = 0; c < Cg; ++c) {
              d0[c] += mw[0] * go[c];
              d1[c] += mw[1] * go[c];
              d2[c] += mw[2] * go[c];
              d3[c] += mw[3] * go[c];
            }
          }
          if constexpr (kWidenGo) {
#pragma omp simd
            for (int64_t t = 0; t < P_task; ++t) grad_mask[first + t] = from_acc<TP>(gm_row[t]);
#pragma omp simd
            for (int64_t t = 0; t < 2 * P_task; ++t) grad_offset[2 * first + t] = from_acc<TP>(goff_row[t]);
          }
        }
      }
      if constexpr (!std::is_same_v<T, A>) {  // the task's slice (image n, its groups) is complete: round it once
        const int64_t width = G_task * Cg;
        for (int64_t px = 0; px < g.H * g.W; ++px) {
          const int64_t at = (n * g.H * g.W + px) * g.C + g0 * Cg;
#pragma omp simd
          for (int64_t c = 0; c < width; ++c) grad_input[at + c] = from_acc<T>(grad_sum[at + c]);
        }
      }
    }
  });
}

template <typename T>
struct Type {
  using type = T;
};

// Calls f(Type<T>{}, Type<TP>{}) with the storage types of the input and of the other tensors (see the top of the
// file; check_inputs has refused every other combination).
template <typename F>
void dispatch_types(const at::Tensor& input, const at::Tensor& offset, F&& f) {
  switch (input.scalar_type()) {
    case at::kDouble: return f(Type<double>{}, Type<double>{});
    case at::kFloat: return f(Type<float>{}, Type<float>{});
    case at::kBFloat16:
      if (offset.scalar_type() == at::kFloat) return f(Type<c10::BFloat16>{}, Type<float>{});
      return f(Type<c10::BFloat16>{}, Type<c10::BFloat16>{});
    default: TORCH_CHECK(false, "dcnv3: unsupported dtype ", input.scalar_type());
  }
}

at::Tensor dcnv3_forward(const at::Tensor& input, const at::Tensor& offset, const at::Tensor& mask,
                         at::IntArrayRef kernel, at::IntArrayRef stride, at::IntArrayRef pad,
                         at::IntArrayRef dilation, int64_t group, double offset_scale) {
  const Geometry g = check_inputs(input, offset, mask, kernel, stride, pad, dilation, group, offset_scale);
  TORCH_CHECK(input.device().is_cpu(), "dcnv3_forward (CPU kernel): tensors must be on the CPU");
  at::Tensor out = at::empty({g.N, g.Ho, g.Wo, g.C}, offset.options());  // in the offset's (TP) dtype
  if (out.numel() == 0) return out;
  dispatch_types(input, offset, [&](auto t, auto tp) {
    using T = typename decltype(t)::type;
    using TP = typename decltype(tp)::type;
    with_group_width<T>(g.C / g.G, [&](auto cg) {
      forward_kernel<T, TP, decltype(cg)::value>(g, input.const_data_ptr<T>(), offset.const_data_ptr<TP>(),
                                                 mask.const_data_ptr<TP>(), out.mutable_data_ptr<TP>());
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> dcnv3_backward(
    const at::Tensor& grad_out, const at::Tensor& input, const at::Tensor& offset, const at::Tensor& mask,
    at::IntArrayRef kernel, at::IntArrayRef stride, at::IntArrayRef pad, at::IntArrayRef dilation, int64_t group,
    double offset_scale) {
  const Geometry g = check_inputs(input, offset, mask, kernel, stride, pad, dilation, group, offset_scale);
  TORCH_CHECK(input.device().is_cpu(), "dcnv3_backward (CPU kernel): tensors must be on the CPU");
  check_grad_output(grad_out, input, offset, g);
  const bool narrow = input.scalar_type() == at::kBFloat16;
  // scattered into, so it starts at zero; a bf16 input's gradient is summed in float32 and rounded at the end
  at::Tensor grad_sum = at::zeros(input.sizes(), input.options().dtype(narrow ? at::kFloat : input.scalar_type()));
  at::Tensor grad_input = narrow ? at::empty(input.sizes(), input.options()) : grad_sum;  // every task rounds its slice
  at::Tensor grad_offset = at::zeros(offset.sizes(), offset.options());
  at::Tensor grad_mask = at::zeros(mask.sizes(), mask.options());
  if (grad_out.numel() == 0) return {grad_input, grad_offset, grad_mask};
  dispatch_types(input, offset, [&](auto t, auto tp) {
    using T = typename decltype(t)::type;
    using TP = typename decltype(tp)::type;
    with_group_width<T>(g.C / g.G, [&](auto cg) {
      backward_kernel<T, TP, decltype(cg)::value>(
          g, grad_out.const_data_ptr<TP>(), input.const_data_ptr<T>(), offset.const_data_ptr<TP>(),
          mask.const_data_ptr<TP>(), grad_sum.mutable_data_ptr<at::opmath_type<T>>(), grad_input.mutable_data_ptr<T>(),
          grad_offset.mutable_data_ptr<TP>(), grad_mask.mutable_data_ptr<TP>());
    });
  });
  return {grad_input, grad_offset, grad_mask};
}

}  // namespace
}  // namespace stm_lab_dcnv3

TORCH_LIBRARY_FRAGMENT(stm_lab, m) {
  m.def(
      "dcnv3_forward(Tensor input, Tensor offset, Tensor mask, int[2] kernel, int[2] stride, int[2] pad, "
      "int[2] dilation, int group, float offset_scale) -> Tensor");
  m.def(
      "dcnv3_backward(Tensor grad_output, Tensor input, Tensor offset, Tensor mask, int[2] kernel, int[2] stride, "
      "int[2] pad, int[2] dilation, int group, float offset_scale) -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(stm_lab, CPU, m) {
  m.impl("dcnv3_forward", &stm_lab_dcnv3::dcnv3_forward);
  m.impl("dcnv3_backward", &stm_lab_dcnv3::dcnv3_backward);
}
