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
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <cmath>
#if defined(__AVX2__)
#include <immintrin.h>
#endif
#include <tuple>
#include <type_traits>
#include <vector>

#include "dcnv3_common.h"

namespace stm_lab_dcnv3 {
namespace {

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
template <typename T, bool kGrad>
inline void locate(const Geometry& g, int64_t i, int64_t j, const Taps& taps, const T* __restrict off,
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
    double x = ox + tx[t] + double(off[2 * t]) * s;
    double y = oy + ty[t] + double(off[2 * t + 1]) * s;
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

// Calls f(std::integral_constant<int, CG>) with CG = cg for the common group widths (float only), else CG = 0
// ("read the width at run time").
template <typename T, typename F>
void with_group_width(int64_t cg, F&& f) {
  if constexpr (std::is_same_v<T, float>) {
    switch (cg) {
      case 8: return f(std::integral_constant<int, 8>{});
      case 16: return f(std::integral_constant<int, 16>{});
      case 32: return f(std::integral_constant<int, 32>{});
      default: break;
    }
  }
  f(std::integral_constant<int, 0>{});
}

template <typename T, int CG>
void forward_kernel(const Geometry& g, const T* input, const T* offset, const T* mask, T* out) {
  const int64_t K = g.kh * g.kw, P = g.G * K, Cg = CG > 0 ? CG : g.C / g.G, pixels = g.N * g.Ho * g.Wo;
  const Taps taps(g, P);
  const int64_t grain = std::max<int64_t>(1, 32768 / (g.C * K));  // at least ~32k multiply-adds per task
  at::parallel_for(0, pixels, grain, [&](int64_t begin, int64_t end) {
    const std::vector<T> zero_row(Cg, T(0));  // what a corner outside the map reads
    Footprints<T> f(P);
    for (int64_t p = begin; p < end; ++p) {
      const int64_t n = p / (g.Ho * g.Wo), i = (p / g.Wo) % g.Ho, j = p % g.Wo;
      locate<T, false>(g, i, j, taps, offset + p * P * 2, f);
      const T* mask_p = mask + p * P;
      for (int64_t grp = 0; grp < g.G; ++grp) {
        const T* image = input + n * g.H * g.W * g.C + grp * Cg;
        T* o = out + p * g.C + grp * Cg;
        for (int64_t c = 0; c < Cg; ++c) o[c] = T(0);
        for (int64_t t = grp * K; t < (grp + 1) * K; ++t) {
          const T* v[4];
          T w[4];
          for (int q = 0; q < 4; ++q) {
            const int64_t at = f.at[q * P + t];
            v[q] = at >= 0 ? image + at : zero_row.data();
            w[q] = mask_p[t] * f.w[q * P + t];
          }
#pragma omp simd
          for (int64_t c = 0; c < Cg; ++c) o[c] += w[0] * v[0][c] + w[1] * v[1][c] + w[2] * v[2][c] + w[3] * v[3][c];
        }
      }
    }
  });
}

// s[q] = <go, v[q]> for the four corners of a point.
template <typename T, int CG>
inline void dot4(const T* go, const T* const* v, int64_t Cg, T* s) {
#if defined(__AVX2__) && defined(__FMA__)
  if constexpr (std::is_same_v<T, float> && CG > 0 && CG % 8 == 0) {
    // lane-wise partial sums, then one joint horizontal reduction of the four (instead of four separate ones)
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    for (int c = 0; c < CG; c += 8) {
      const __m256 g8 = _mm256_loadu_ps(go + c);
      a0 = _mm256_fmadd_ps(g8, _mm256_loadu_ps(v[0] + c), a0);
      a1 = _mm256_fmadd_ps(g8, _mm256_loadu_ps(v[1] + c), a1);
      a2 = _mm256_fmadd_ps(g8, _mm256_loadu_ps(v[2] + c), a2);
      a3 = _mm256_fmadd_ps(g8, _mm256_loadu_ps(v[3] + c), a3);
    }
    const __m256 h = _mm256_hadd_ps(_mm256_hadd_ps(a0, a1), _mm256_hadd_ps(a2, a3));  // per 128-bit half
    _mm_storeu_ps(s, _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1)));
    return;
  }
#endif
  T s0 = 0, s1 = 0, s2 = 0, s3 = 0;
#pragma omp simd reduction(+ : s0, s1, s2, s3)
  for (int64_t c = 0; c < Cg; ++c) {
    s0 += go[c] * v[0][c];
    s1 += go[c] * v[1][c];
    s2 += go[c] * v[2][c];
    s3 += go[c] * v[3][c];
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
template <typename T, int CG>
void backward_kernel(const Geometry& g, const T* grad_out, const T* input, const T* offset, const T* mask,
                     T* grad_input, T* grad_offset, T* grad_mask) {
  const int64_t K = g.kh * g.kw, P = g.G * K, Cg = CG > 0 ? CG : g.C / g.G;
  const int64_t G_task = groups_per_task(g), blocks = g.G / G_task, P_task = G_task * K;
  const Taps taps(g, P_task);
  const T scale = T(g.scale);
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(1, g.Ho * g.Wo * P_task * Cg));
  at::parallel_for(0, g.N * blocks, grain, [&](int64_t begin, int64_t end) {
    const std::vector<T> zero_row(Cg, T(0));
    std::vector<T> sink_row(Cg, T(0));  // where a corner outside the map "scatters"; never read
    Footprints<T> f(P_task);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / blocks, g0 = (task % blocks) * G_task;  // image n, groups [g0, g0 + G_task)
      for (int64_t i = 0; i < g.Ho; ++i) {
        for (int64_t j = 0; j < g.Wo; ++j) {
          const int64_t p = (n * g.Ho + i) * g.Wo + j, first = p * P + g0 * K;  // the task's first point here
          locate<T, true>(g, i, j, taps, offset + 2 * first, f);
          for (int64_t t = 0; t < P_task; ++t) {
            const int64_t grp = g0 + t / K;
            const int64_t base = n * g.H * g.W * g.C + grp * Cg;  // this group's channels in image n
            const T* go = grad_out + p * g.C + grp * Cg;
            const T* v[4];
            T* d[4];
            for (int q = 0; q < 4; ++q) {
              const int64_t at = f.at[q * P_task + t];
              v[q] = at >= 0 ? input + base + at : zero_row.data();
              d[q] = at >= 0 ? grad_input + base + at : sink_row.data();
            }
            T s[4];
            dot4<T, CG>(go, v, Cg, s);
            const T m = mask[first + t];
            T gm = 0, gx = 0, gy = 0, mw[4];
            for (int q = 0; q < 4; ++q) {
              gm += f.w[q * P_task + t] * s[q];
              gx += f.dwdx[q * P_task + t] * s[q];
              gy += f.dwdy[q * P_task + t] * s[q];
              mw[q] = m * f.w[q * P_task + t];
            }
            grad_mask[first + t] = gm;
            grad_offset[2 * (first + t)] = m * scale * gx;
            grad_offset[2 * (first + t) + 1] = m * scale * gy;
            // the four destinations are distinct pixels, or the sink (several corners may share it: harmless)
            T *d0 = d[0], *d1 = d[1], *d2 = d[2], *d3 = d[3];
#pragma omp simd
            for (int64_t c = 0; c < Cg; ++c) {
              d0[c] += mw[0] * go[c];
              d1[c] += mw[1] * go[c];
              d2[c] += mw[2] * go[c];
              d3[c] += mw[3] * go[c];
            }
          }
        }
      }
    }
  });
}

at::Tensor dcnv3_forward(const at::Tensor& input, const at::Tensor& offset, const at::Tensor& mask,
                         at::IntArrayRef kernel, at::IntArrayRef stride, at::IntArrayRef pad,
                         at::IntArrayRef dilation, int64_t group, double offset_scale) {
  const Geometry g = check_inputs(input, offset, mask, kernel, stride, pad, dilation, group, offset_scale);
  TORCH_CHECK(input.device().is_cpu(), "dcnv3_forward (CPU kernel): tensors must be on the CPU");
  at::Tensor out = at::empty({g.N, g.Ho, g.Wo, g.C}, input.options());
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "dcnv3_forward", [&] {
    with_group_width<scalar_t>(g.C / g.G, [&](auto cg) {
      forward_kernel<scalar_t, decltype(cg)::value>(g, input.const_data_ptr<scalar_t>(),
                                                    offset.const_data_ptr<scalar_t>(), mask.const_data_ptr<scalar_t>(),
                                                    out.mutable_data_ptr<scalar_t>());
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
  check_grad_output(grad_out, input, g);
  at::Tensor grad_input = at::zeros(input.sizes(), input.options());  // scattered into, so it starts at zero
  at::Tensor grad_offset = at::zeros(offset.sizes(), offset.options());
  at::Tensor grad_mask = at::zeros(mask.sizes(), mask.options());
  if (grad_out.numel() == 0) return {grad_input, grad_offset, grad_mask};
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "dcnv3_backward", [&] {
    with_group_width<scalar_t>(g.C / g.G, [&](auto cg) {
      backward_kernel<scalar_t, decltype(cg)::value>(
          g, grad_out.const_data_ptr<scalar_t>(), input.const_data_ptr<scalar_t>(), offset.const_data_ptr<scalar_t>(),
          mask.const_data_ptr<scalar_t>(), grad_input.mutable_data_ptr<scalar_t>(),
          grad_offset.mutable_data_ptr<scalar_t>(), grad_mask.mutable_data_ptr<scalar_t>());
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
