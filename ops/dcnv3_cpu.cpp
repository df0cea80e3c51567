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
//     count a compile-time constant for the common widths 8, 16 and 32 (so it is fully unrolled).
//
// Threading (at::parallel_for, so torch.set_num_threads applies):
//  - forward: over output pixels (each writes only its own output row);
//  - backward: over (batch, group) pairs. A point of group g in image n scatters its input gradient only into
//    grad_input[n, :, :, g-channels], so the pairs own disjoint slices: no atomics, no per-thread copies, and the
//    result is deterministic.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <cmath>
#include <tuple>
#include <type_traits>
#include <vector>

#include "dcnv3_common.h"

namespace stm_lab_dcnv3 {
namespace {

// Bilinear footprints of P points. Corner q (0: top-left, 1: top-right, 2: bottom-left, 3: bottom-right) of point
// t is entry [q * P + t]: its element offset in the image (-1 when outside the map), its weight and the weight's
// derivatives along x and y (all 0 when outside).
template <typename T>
struct Footprints {
  explicit Footprints(int64_t points) : P(points), at(4 * points), w(4 * points), dwdx(4 * points), dwdy(4 * points) {}
  int64_t P;
  std::vector<int64_t> at;
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
// 1e-5 error budget; a few scalar double operations per point cost nothing measurable.
template <typename T>
inline void locate(const Geometry& g, int64_t i, int64_t j, const Taps& taps, const T* off, Footprints<T>& f) {
  const double ox = double(j * g.sw), oy = double(i * g.sh), H = double(g.H), W = double(g.W);
  const int64_t P = f.P, row = g.W * g.C;
  for (int64_t t = 0; t < P; ++t) {
    double x = ox + taps.x[t] + double(off[2 * t]) * g.scale;
    double y = oy + taps.y[t] + double(off[2 * t + 1]) * g.scale;
    // no corner inside (NaN positions included: comparisons are false): park the point at 0 and mask every corner
    const bool inside = y > -1.0 && y < H && x > -1.0 && x < W;
    x = inside ? x : 0.0;
    y = inside ? y : 0.0;
    const double xf = std::floor(x), yf = std::floor(y);
    const int64_t x0 = int64_t(xf), y0 = int64_t(yf);  // in [-1, W-1] and [-1, H-1]
    const T lx = T(x - xf), ly = T(y - yf), hx = T(1) - lx, hy = T(1) - ly;
    const bool top = inside && y0 >= 0, bottom = inside && y0 + 1 < g.H;
    const bool left = inside && x0 >= 0, right = inside && x0 + 1 < g.W;
    const bool valid[4] = {top && left, top && right, bottom && left, bottom && right};
    const int64_t at00 = y0 * row + x0 * g.C;
    const int64_t at[4] = {at00, at00 + g.C, at00 + row, at00 + row + g.C};
    const T w[4] = {hy * hx, hy * lx, ly * hx, ly * lx};
    const T dwdx[4] = {-hy, hy, -ly, ly};
    const T dwdy[4] = {-hx, -lx, hx, lx};
    for (int q = 0; q < 4; ++q) {
      f.at[q * P + t] = valid[q] ? at[q] : -1;
      f.w[q * P + t] = valid[q] ? w[q] : T(0);
      f.dwdx[q * P + t] = valid[q] ? dwdx[q] : T(0);
      f.dwdy[q * P + t] = valid[q] ? dwdy[q] : T(0);
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
      locate(g, i, j, taps, offset + p * P * 2, f);
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

// For a point with value v = sum_q w_q v_q (w: bilinear weights) and output contribution m * v:
//   dL/dm      = <gout, v> = sum_q w_q s_q,        s_q = <gout, v_q>
//   dL/dx      = m * sum_q (dw_q/dx) s_q,          dx/d(offset_x) = offset_scale (same for y)
//   dL/dv_q[c] = m * w_q * gout[c]                 (scattered into grad_input)
template <typename T, int CG>
void backward_kernel(const Geometry& g, const T* grad_out, const T* input, const T* offset, const T* mask,
                     T* grad_input, T* grad_offset, T* grad_mask) {
  const int64_t K = g.kh * g.kw, P = g.G * K, Cg = CG > 0 ? CG : g.C / g.G;
  const Taps taps(g, K);  // the same for every group
  const T scale = T(g.scale);
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(1, g.Ho * g.Wo * K * Cg));
  at::parallel_for(0, g.N * g.G, grain, [&](int64_t begin, int64_t end) {
    const std::vector<T> zero_row(Cg, T(0));
    std::vector<T> sink_row(Cg, T(0));  // where a corner outside the map "scatters"; never read
    Footprints<T> f(K);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / g.G, grp = task % g.G;
      const T* image = input + n * g.H * g.W * g.C + grp * Cg;
      T* grad_image = grad_input + n * g.H * g.W * g.C + grp * Cg;
      for (int64_t i = 0; i < g.Ho; ++i) {
        for (int64_t j = 0; j < g.Wo; ++j) {
          const int64_t p = (n * g.Ho + i) * g.Wo + j, first = p * P + grp * K;  // this group's first point
          const T* go = grad_out + p * g.C + grp * Cg;
          locate(g, i, j, taps, offset + 2 * first, f);
          for (int64_t t = 0; t < K; ++t) {
            const T* v[4];
            T* d[4];
            for (int q = 0; q < 4; ++q) {
              const int64_t at = f.at[q * K + t];
              v[q] = at >= 0 ? image + at : zero_row.data();
              d[q] = at >= 0 ? grad_image + at : sink_row.data();
            }
            T s0 = 0, s1 = 0, s2 = 0, s3 = 0;
#pragma omp simd reduction(+ : s0, s1, s2, s3)
            for (int64_t c = 0; c < Cg; ++c) {
              s0 += go[c] * v[0][c];
              s1 += go[c] * v[1][c];
              s2 += go[c] * v[2][c];
              s3 += go[c] * v[3][c];
            }
            const T s[4] = {s0, s1, s2, s3};
            const T m = mask[first + t];
            T gm = 0, gx = 0, gy = 0, mw[4];
            for (int q = 0; q < 4; ++q) {
              gm += f.w[q * K + t] * s[q];
              gx += f.dwdx[q * K + t] * s[q];
              gy += f.dwdy[q * K + t] * s[q];
              mw[q] = m * f.w[q * K + t];
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
