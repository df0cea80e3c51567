// DCNv3 core on the CPU: forward and backward of the sampling + weighted sum over the K points of each group.
//
// Semantics are those of stm_lab/ops/dcnv3.py (the pure-PyTorch reference; see its docstring for the formula).
// Layout: input (N, H, W, C) channels-last, offset (N, Ho, Wo, G*K*2) as (x, y) pairs, mask (N, Ho, Wo, G*K),
// output (N, Ho, Wo, C). The C/G channels of one group are contiguous, so every per-point operation is a short
// loop over contiguous channels that the compiler vectorizes (`omp simd`). Padding is never materialised: the
// sampling position is shifted by `pad` and corners outside the unpadded map read zeros.
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
#include <vector>

#include "dcnv3_common.h"

namespace stm_lab_dcnv3 {
namespace {

// Bilinear footprint of one sampling point: the four corners (y0,x0), (y0,x1), (y1,x0), (y1,x1).
template <typename T>
struct Corners {
  const T* src[4];  // input rows of the corners (a zero row for corners outside the map)
  T* dst[4];        // grad_input rows of the corners (a scratch "sink" row for corners outside the map)
  T w[4];           // bilinear weights (0 outside)
  T dwdx[4];        // d w / d x (0 outside)
  T dwdy[4];        // d w / d y (0 outside)
};

// Fills `c` for position (y, x) in unpadded pixel coordinates; false when no corner lies inside the map (then the
// point contributes nothing). NaN positions fail the comparisons and are dropped the same way. Positions are
// doubles even for float data: a float position on a 40-pixel map is off by ~3e-6 pixel, which alone would use up
// most of a 1e-5 error budget; the few scalar double operations per point cost nothing measurable.
template <typename T, bool kGrad>
inline bool corners_at(double y, double x, const Geometry& g, const T* image, T* grad_image, const T* zero_row,
                       T* sink_row, Corners<T>& c) {
  if (!(y > -1.0 && y < double(g.H) && x > -1.0 && x < double(g.W))) return false;
  const double yf = std::floor(y), xf = std::floor(x);
  const int64_t y0 = static_cast<int64_t>(yf), x0 = static_cast<int64_t>(xf);
  const T ly = T(y - yf), lx = T(x - xf), hy = T(1) - ly, hx = T(1) - lx;
  const int64_t ys[4] = {y0, y0, y0 + 1, y0 + 1};
  const int64_t xs[4] = {x0, x0 + 1, x0, x0 + 1};
  const T w[4] = {hy * hx, hy * lx, ly * hx, ly * lx};
  const T dwdx[4] = {-hy, hy, -ly, ly};
  const T dwdy[4] = {-hx, -lx, hx, lx};
  for (int q = 0; q < 4; ++q) {
    const bool inside = ys[q] >= 0 && ys[q] < g.H && xs[q] >= 0 && xs[q] < g.W;
    const int64_t at = (ys[q] * g.W + xs[q]) * g.C;
    c.src[q] = inside ? image + at : zero_row;
    c.w[q] = inside ? w[q] : T(0);
    if (kGrad) {
      c.dst[q] = inside ? grad_image + at : sink_row;
      c.dwdx[q] = inside ? dwdx[q] : T(0);
      c.dwdy[q] = inside ? dwdy[q] : T(0);
    }
  }
  return true;
}

// Position of point (a, b) (kernel column a, row b) of output pixel (i, j) before its learned offset, in
// unpadded input pixel coordinates: the dilated kernel grid, centred and scaled by offset_scale.
inline double base_x(const Geometry& g, int64_t j, int64_t a) {
  const int64_t cw = g.dw * (g.kw - 1) / 2;
  return double(j * g.sw + cw - g.pw) + double(a * g.dw - cw) * g.scale;
}
inline double base_y(const Geometry& g, int64_t i, int64_t b) {
  const int64_t ch = g.dh * (g.kh - 1) / 2;
  return double(i * g.sh + ch - g.ph) + double(b * g.dh - ch) * g.scale;
}

template <typename T>
void forward_kernel(const Geometry& g, const T* input, const T* offset, const T* mask, T* out) {
  const int64_t K = g.kh * g.kw, Cg = g.C / g.G, pixels = g.N * g.Ho * g.Wo;
  const int64_t grain = std::max<int64_t>(1, 32768 / (g.C * K));  // about 32k multiply-adds per task at least
  at::parallel_for(0, pixels, grain, [&](int64_t begin, int64_t end) {
    const std::vector<T> zero_row(Cg, T(0));
    Corners<T> c;
    for (int64_t p = begin; p < end; ++p) {
      const int64_t n = p / (g.Ho * g.Wo), i = (p / g.Wo) % g.Ho, j = p % g.Wo;
      const T* off_p = offset + p * g.G * K * 2;
      const T* mask_p = mask + p * g.G * K;
      T* out_p = out + p * g.C;
      for (int64_t grp = 0; grp < g.G; ++grp) {
        const T* image = input + n * g.H * g.W * g.C + grp * Cg;
        T* o = out_p + grp * Cg;
        for (int64_t ch = 0; ch < Cg; ++ch) o[ch] = T(0);
        for (int64_t a = 0; a < g.kw; ++a) {
          for (int64_t b = 0; b < g.kh; ++b) {
            const int64_t k = grp * K + a * g.kh + b;
            const double x = base_x(g, j, a) + double(off_p[2 * k]) * g.scale;
            const double y = base_y(g, i, b) + double(off_p[2 * k + 1]) * g.scale;
            if (!corners_at<T, false>(y, x, g, image, nullptr, zero_row.data(), nullptr, c)) continue;
            const T m = mask_p[k];
            const T w0 = m * c.w[0], w1 = m * c.w[1], w2 = m * c.w[2], w3 = m * c.w[3];
            const T *v0 = c.src[0], *v1 = c.src[1], *v2 = c.src[2], *v3 = c.src[3];
#pragma omp simd
            for (int64_t ch = 0; ch < Cg; ++ch) o[ch] += w0 * v0[ch] + w1 * v1[ch] + w2 * v2[ch] + w3 * v3[ch];
          }
        }
      }
    }
  });
}

// For a point with value v(x, y) = sum_q w_q v_q and output contribution m * v:
//   d L / d m      = <gout, v>                       = sum_q w_q s_q,   s_q = <gout, v_q>
//   d L / d x      = m * sum_q (d w_q / d x) s_q,     d x / d offset_x = offset_scale (same for y)
//   d L / d v_q[c] = m * w_q * gout[c]               (scattered into grad_input)
template <typename T>
void backward_kernel(const Geometry& g, const T* grad_out, const T* input, const T* offset, const T* mask,
                     T* grad_input, T* grad_offset, T* grad_mask) {
  const int64_t K = g.kh * g.kw, Cg = g.C / g.G;
  const int64_t work_per_task = g.Ho * g.Wo * K * Cg;
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(1, work_per_task));
  at::parallel_for(0, g.N * g.G, grain, [&](int64_t begin, int64_t end) {
    const std::vector<T> zero_row(Cg, T(0));
    std::vector<T> sink_row(Cg, T(0));
    const T scale = T(g.scale);
    Corners<T> c;
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / g.G, grp = task % g.G;
      const T* image = input + n * g.H * g.W * g.C + grp * Cg;
      T* grad_image = grad_input + n * g.H * g.W * g.C + grp * Cg;
      for (int64_t i = 0; i < g.Ho; ++i) {
        for (int64_t j = 0; j < g.Wo; ++j) {
          const int64_t p = (n * g.Ho + i) * g.Wo + j;
          const T* go = grad_out + p * g.C + grp * Cg;
          const T* off_p = offset + p * g.G * K * 2;
          const T* mask_p = mask + p * g.G * K;
          T* goff_p = grad_offset + p * g.G * K * 2;
          T* gmask_p = grad_mask + p * g.G * K;
          for (int64_t a = 0; a < g.kw; ++a) {
            for (int64_t b = 0; b < g.kh; ++b) {
              const int64_t k = grp * K + a * g.kh + b;
              const double x = base_x(g, j, a) + double(off_p[2 * k]) * g.scale;
              const double y = base_y(g, i, b) + double(off_p[2 * k + 1]) * g.scale;
              if (!corners_at<T, true>(y, x, g, image, grad_image, zero_row.data(), sink_row.data(), c)) {
                goff_p[2 * k] = goff_p[2 * k + 1] = gmask_p[k] = T(0);
                continue;
              }
              const T *v0 = c.src[0], *v1 = c.src[1], *v2 = c.src[2], *v3 = c.src[3];
              T s0 = 0, s1 = 0, s2 = 0, s3 = 0;
#pragma omp simd reduction(+ : s0, s1, s2, s3)
              for (int64_t ch = 0; ch < Cg; ++ch) {
                s0 += go[ch] * v0[ch];
                s1 += go[ch] * v1[ch];
                s2 += go[ch] * v2[ch];
                s3 += go[ch] * v3[ch];
              }
              const T m = mask_p[k];
              gmask_p[k] = c.w[0] * s0 + c.w[1] * s1 + c.w[2] * s2 + c.w[3] * s3;
              goff_p[2 * k] = m * scale * (c.dwdx[0] * s0 + c.dwdx[1] * s1 + c.dwdx[2] * s2 + c.dwdx[3] * s3);
              goff_p[2 * k + 1] = m * scale * (c.dwdy[0] * s0 + c.dwdy[1] * s1 + c.dwdy[2] * s2 + c.dwdy[3] * s3);
              // the four destinations are distinct pixels (or the sink, whose content is never read)
              const T w0 = m * c.w[0], w1 = m * c.w[1], w2 = m * c.w[2], w3 = m * c.w[3];
              T *d0 = c.dst[0], *d1 = c.dst[1], *d2 = c.dst[2], *d3 = c.dst[3];
#pragma omp simd
              for (int64_t ch = 0; ch < Cg; ++ch) {
                d0[ch] += w0 * go[ch];
                d1[ch] += w1 * go[ch];
                d2[ch] += w2 * go[ch];
                d3[ch] += w3 * go[ch];
              }
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
    forward_kernel<scalar_t>(g, input.const_data_ptr<scalar_t>(), offset.const_data_ptr<scalar_t>(),
                             mask.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>());
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
  at::Tensor grad_offset = at::empty(offset.sizes(), offset.options());  // every entry is written
  at::Tensor grad_mask = at::empty(mask.sizes(), mask.options());
  if (grad_out.numel() == 0) return {grad_input, grad_offset.zero_(), grad_mask.zero_()};
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "dcnv3_backward", [&] {
    backward_kernel<scalar_t>(g, grad_out.const_data_ptr<scalar_t>(), input.const_data_ptr<scalar_t>(),
                              offset.const_data_ptr<scalar_t>(), mask.const_data_ptr<scalar_t>(),
                              grad_input.mutable_data_ptr<scalar_t>(), grad_offset.mutable_data_ptr<scalar_t>(),
                              grad_mask.mutable_data_ptr<scalar_t>());
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
