// Weight gradient of a depth-wise convolution (stride 1, dilation 1, zero padding) on channels-last maps.
//
//   grad_weight[c, i, j] = sum_{n, y, x} grad_out[n, y, x, c] * input[n, y + i - pad_h, x + j - pad_w, c]
//
// (terms whose input position falls outside the map are zero). PyTorch's CPU path for this gradient (oneDNN) is
// 10-100x slower than the forward on the small maps of the micro models' later stages (4x4 and 2x2 maps under a 7x7
// kernel), where most kernel taps only ever see padding; here each tap visits only the rows and columns where it
// overlaps the map. Layout: grad_out (N, Ho, Wo, C) and input (N, H, W, C) contiguous; the innermost loop runs over
// the contiguous channels of one pixel and vectorizes. The forward and the input gradient stay with PyTorch (both
// are plain convolutions, fast in oneDNN); see stm_lab/ops/dwconv.py.
//
// Dtypes: float64 and float32 accumulate and return in their own dtype; bfloat16 and float16 (CPU autocast) are read
// as they are stored and accumulate in float32, and the result is float32 (the dtype of the weight an autocast
// convolution casts from), so the sum over N * H * W products is never rounded to 8 or 11 bits.
//
// Threading (at::parallel_for): over kernel taps; each tap owns its own C outputs, so the result is deterministic.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

namespace stm_lab_dwconv {
namespace {

// (a function of its own: a #pragma cannot sit inside the dispatch macro's argument)
template <typename scalar_t, typename acc_t>
void weight_grad_kernel(const scalar_t* g, const scalar_t* x, acc_t* out, int64_t N, int64_t H, int64_t W,
                        int64_t C, int64_t Ho, int64_t Wo, int64_t kernel_h, int64_t kernel_w, int64_t pad_h,
                        int64_t pad_w) {
  at::parallel_for(0, kernel_h * kernel_w, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> acc(C);
    for (int64_t tap = begin; tap < end; ++tap) {
      const int64_t dy = tap / kernel_w - pad_h, dx = tap % kernel_w - pad_w;  // input = output + (dy, dx)
      // output rows/columns whose shifted input position lies inside the map
      const int64_t y0 = std::max<int64_t>(0, -dy), y1 = std::min<int64_t>(Ho, H - dy);
      const int64_t x0 = std::max<int64_t>(0, -dx), x1 = std::min<int64_t>(Wo, W - dx);
      std::fill(acc.begin(), acc.end(), acc_t(0));
      acc_t* a = acc.data();
      for (int64_t n = 0; n < N && y0 < y1 && x0 < x1; ++n) {
        for (int64_t y = y0; y < y1; ++y) {
          const scalar_t* gr = g + ((n * Ho + y) * Wo + x0) * C;
          const scalar_t* xr = x + ((n * H + y + dy) * W + x0 + dx) * C;
          for (int64_t p = 0; p < x1 - x0; ++p, gr += C, xr += C) {
#pragma omp simd
            for (int64_t c = 0; c < C; ++c) a[c] += static_cast<acc_t>(gr[c]) * static_cast<acc_t>(xr[c]);
          }
        }
      }
      std::copy(acc.begin(), acc.end(), out + tap * C);
    }
  });
}

at::Tensor dwconv_weight_grad(const at::Tensor& grad_out, const at::Tensor& input, int64_t kernel_h,
                              int64_t kernel_w, int64_t pad_h, int64_t pad_w) {
  TORCH_CHECK(grad_out.dim() == 4 && input.dim() == 4, "dwconv_weight_grad: expected (N, H, W, C) tensors, got ",
              grad_out.sizes(), " and ", input.sizes());
  TORCH_CHECK(grad_out.is_contiguous() && input.is_contiguous(), "dwconv_weight_grad: tensors must be contiguous");
  TORCH_CHECK(grad_out.scalar_type() == input.scalar_type(), "dwconv_weight_grad: dtypes differ");
  TORCH_CHECK(kernel_h >= 1 && kernel_w >= 1 && pad_h >= 0 && pad_w >= 0, "dwconv_weight_grad: bad geometry");
  const int64_t N = input.size(0), H = input.size(1), W = input.size(2), C = input.size(3);
  const int64_t Ho = grad_out.size(1), Wo = grad_out.size(2);
  TORCH_CHECK(grad_out.size(0) == N && grad_out.size(3) == C && Ho == H + 2 * pad_h - kernel_h + 1 &&
                  Wo == W + 2 * pad_w - kernel_w + 1,
              "dwconv_weight_grad: grad_out ", grad_out.sizes(), " does not match input ", input.sizes(),
              " with kernel (", kernel_h, ", ", kernel_w, ") and padding (", pad_h, ", ", pad_w, ")");
  const auto acc_type = at::toOpMathType(input.scalar_type());  // float for bfloat16 / float16, else itself
  auto grad_weight = at::zeros({kernel_h * kernel_w, C}, input.options().dtype(acc_type));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, input.scalar_type(), "dwconv_weight_grad", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    weight_grad_kernel<scalar_t, acc_t>(grad_out.const_data_ptr<scalar_t>(), input.const_data_ptr<scalar_t>(),
                                        grad_weight.mutable_data_ptr<acc_t>(), N, H, W, C, Ho, Wo, kernel_h,
                                        kernel_w, pad_h, pad_w);
  });
  return grad_weight.t().reshape({C, 1, kernel_h, kernel_w});  // (C, 1, kh, kw), as nn.Conv2d stores it
}

}  // namespace
}  // namespace stm_lab_dwconv

TORCH_LIBRARY_FRAGMENT(stm_lab, m) {
  m.def("dwconv_weight_grad(Tensor grad_output, Tensor input, int kernel_h, int kernel_w, int pad_h, int pad_w) "
        "-> Tensor");
}

TORCH_LIBRARY_IMPL(stm_lab, CPU, m) { m.impl("dwconv_weight_grad", &stm_lab_dwconv::dwconv_weight_grad); }
