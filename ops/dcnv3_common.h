// Argument checks and geometry shared by the DCNv3 kernels. The Python wrapper validates first and gives the
// friendlier messages; these checks are the safety net for direct calls of torch.ops.stm_lab.*, so that a bad
// argument is an exception, never an out-of-bounds read.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cmath>

namespace stm_lab_dcnv3 {

struct Geometry {
  int64_t N, H, W, C, G;       // input (N, H, W, C), G groups
  int64_t Ho, Wo;              // output map
  int64_t kh, kw, sh, sw, ph, pw, dh, dw;
  double scale;                // offset_scale
};

inline void check_pair(at::IntArrayRef v, const char* name, int64_t minimum) {
  TORCH_CHECK(v.size() == 2, "dcnv3: ", name, " must have 2 entries (h, w), got ", v.size());
  TORCH_CHECK(v[0] >= minimum && v[1] >= minimum, "dcnv3: ", name, " must be >= ", minimum, ", got ", v);
}

inline void check_tensor(const at::Tensor& t, const char* name, const at::Tensor& input) {
  TORCH_CHECK(t.defined(), "dcnv3: ", name, " is undefined");
  TORCH_CHECK(t.dim() == 4, "dcnv3: ", name, " must have rank 4, got shape ", t.sizes());
  TORCH_CHECK(t.device() == input.device(), "dcnv3: ", name, " is on ", t.device(), " but input is on ",
              input.device());
  TORCH_CHECK(t.is_contiguous(), "dcnv3: ", name, " must be contiguous (call .contiguous())");
}

// Storage dtypes: input float64, float32 or bfloat16; offset and mask of the input's dtype, or both float32 with a
// bfloat16 input (then the output and grad_output are float32 as well: they follow the offset's dtype).
inline void check_dtypes(const at::Tensor& input, const at::Tensor& offset, const at::Tensor& mask) {
  const at::ScalarType in = input.scalar_type(), off = offset.scalar_type();
  TORCH_CHECK(in == at::kFloat || in == at::kDouble || in == at::kBFloat16,
              "dcnv3: input must be float32, float64 or bfloat16, got ", in);
  TORCH_CHECK(off == in || (in == at::kBFloat16 && off == at::kFloat), "dcnv3: offset has dtype ", off,
              " but input has ", in, in == at::kBFloat16 ? " (valid for offset and mask: BFloat16 or Float)" : "");
  TORCH_CHECK(mask.scalar_type() == off, "dcnv3: mask has dtype ", mask.scalar_type(), " but offset has ", off);
}

inline Geometry check_inputs(const at::Tensor& input, const at::Tensor& offset, const at::Tensor& mask,
                             at::IntArrayRef kernel, at::IntArrayRef stride, at::IntArrayRef pad,
                             at::IntArrayRef dilation, int64_t group, double offset_scale) {
  check_tensor(input, "input", input);
  check_tensor(offset, "offset", input);
  check_tensor(mask, "mask", input);
  check_dtypes(input, offset, mask);
  check_pair(kernel, "kernel_size", 1);
  check_pair(stride, "stride", 1);
  check_pair(pad, "pad", 0);
  check_pair(dilation, "dilation", 1);
  TORCH_CHECK(std::isfinite(offset_scale), "dcnv3: offset_scale must be finite, got ", offset_scale);
  Geometry g;
  g.N = input.size(0), g.H = input.size(1), g.W = input.size(2), g.C = input.size(3), g.G = group;
  TORCH_CHECK(group >= 1 && g.C % group == 0, "dcnv3: channels (", g.C, ") must be divisible by group (", group,
              ")");
  g.kh = kernel[0], g.kw = kernel[1], g.sh = stride[0], g.sw = stride[1];
  g.ph = pad[0], g.pw = pad[1], g.dh = dilation[0], g.dw = dilation[1];
  g.scale = offset_scale;
  g.Ho = (g.H + 2 * g.ph - (g.dh * (g.kh - 1) + 1)) / g.sh + 1;
  g.Wo = (g.W + 2 * g.pw - (g.dw * (g.kw - 1) + 1)) / g.sw + 1;
  // the numerators may be negative: C++ division truncates toward zero, so test them directly
  TORCH_CHECK(g.H + 2 * g.ph >= g.dh * (g.kh - 1) + 1 && g.W + 2 * g.pw >= g.dw * (g.kw - 1) + 1,
              "dcnv3: input ", g.H, "x", g.W, " padded by (", g.ph, ", ", g.pw,
              ") is smaller than the dilated kernel");
  // the CPU kernel addresses an image with int32 offsets (vectorizable), including corners just outside the map
  TORCH_CHECK((g.H + 3) * (g.W + 3) * g.C < (int64_t(1) << 31), "dcnv3: one image of ", g.H, "x", g.W, "x", g.C,
              " elements is too large for this kernel (limit about 2^31)");
  const int64_t K = g.kh * g.kw;
  TORCH_CHECK(offset.sizes() == at::IntArrayRef({g.N, g.Ho, g.Wo, g.G * K * 2}), "dcnv3: offset must have shape ",
              at::IntArrayRef({g.N, g.Ho, g.Wo, g.G * K * 2}), " (N, H_out, W_out, G*K*2), got ", offset.sizes());
  TORCH_CHECK(mask.sizes() == at::IntArrayRef({g.N, g.Ho, g.Wo, g.G * K}), "dcnv3: mask must have shape ",
              at::IntArrayRef({g.N, g.Ho, g.Wo, g.G * K}), " (N, H_out, W_out, G*K), got ", mask.sizes());
  return g;
}

inline void check_grad_output(const at::Tensor& grad_out, const at::Tensor& input, const at::Tensor& offset,
                              const Geometry& g) {
  check_tensor(grad_out, "grad_output", input);
  TORCH_CHECK(grad_out.scalar_type() == offset.scalar_type(), "dcnv3: grad_output has dtype ", grad_out.scalar_type(),
              " but the output (offset's dtype) has ", offset.scalar_type());
  TORCH_CHECK(grad_out.sizes() == at::IntArrayRef({g.N, g.Ho, g.Wo, g.C}), "dcnv3: grad_output must have shape ",
              at::IntArrayRef({g.N, g.Ho, g.Wo, g.C}), ", got ", grad_out.sizes());
}

}  // namespace stm_lab_dcnv3
