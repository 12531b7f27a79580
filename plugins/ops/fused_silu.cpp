// Fused SiLU of the So3krates filter MLPs (part of libso3krates_ops.so; see fused_attention.cpp).
//
// The filters' first layers give pre-activations x [pairs, 2H] (320 numbers per pair for SO3LR); the
// memory-lean pass needs h = SiLU(x) = x s(x) and, for its explicit backward, SiLU'(x) = s + h (1 - s).
// In ATen ops that is a sigmoid and three more passes over [pairs, 2H] arrays, and the sigmoid's exp is
// a scalar libm call on CPUs without AVX2 (ATen's DEFAULT kernels). Here it is one pass, with an exp
// written so that the compiler vectorises it (AVX2 + FMA where the CPU has them: simd_clones.h). Registered as
//   so3krates::silu_and_derivative(Tensor x, bool derivative) -> (h, d)    (d empty without `derivative`)
// for CPU tensors (float32 / float64), no autograd formula (called only without a graph).
//
// exp: x = n ln2 + r with |r| <= ln2/2 (Cody-Waite split of ln2), exp(r) by a polynomial (float32: the
// Cephes expf minimax polynomial, ~1 ulp; float64: Taylor to degree 13, error < 1e-17 relative), times
// 2^n formed in the exponent bits (n is read from the low mantissa bits of x/ln2 + 1.5 * 2^(mantissa
// bits), which also rounds it). The argument of the sigmoid's exp is clamped so that s never becomes
// subnormal (|x| <= 80 in float32, 700 in float64: s(-80) = 1.8e-35 where the exact value is smaller;
// the difference in h = x s is below 1e-33).
#include <torch/library.h>
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include "simd_clones.h"

#include <cstdint>
#include <cstring>
#include <tuple>

namespace {

constexpr int64_t kGrain = 32768;  // elements per task of at::parallel_for

inline float exp_bounded(float x) {  // exp(x) for |x| <= 80
  const float magic = 12582912.0f;  // 1.5 * 2^23
  const float t = x * 1.44269504088896341f + magic;
  const float n = t - magic;  // round(x / ln 2)
  float r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  int32_t tb;
  std::memcpy(&tb, &t, sizeof tb);
  const int32_t eb = (tb - 0x4B400000 + 127) << 23;  // the bits of 2^n
  float scale;
  std::memcpy(&scale, &eb, sizeof scale);
  return p * scale;
}

inline double exp_bounded(double x) {  // exp(x) for |x| <= 700
  const double magic = 6755399441055744.0;  // 1.5 * 2^52
  const double t = x * 1.44269504088896338700e+00 + magic;
  const double n = t - magic;
  double r = x - n * 6.93147180369123816490e-01;
  r = r - n * 1.90821492927058770002e-10;
  double p = 1.0 / 6227020800.0;  // 1/13!
  p = p * r + 1.0 / 479001600.0;
  p = p * r + 1.0 / 39916800.0;
  p = p * r + 1.0 / 3628800.0;
  p = p * r + 1.0 / 362880.0;
  p = p * r + 1.0 / 40320.0;
  p = p * r + 1.0 / 5040.0;
  p = p * r + 1.0 / 720.0;
  p = p * r + 1.0 / 120.0;
  p = p * r + 1.0 / 24.0;
  p = p * r + 1.0 / 6.0;
  p = p * r + 0.5;
  p = p * r * r + r + 1.0;
  int64_t tb;
  std::memcpy(&tb, &t, sizeof tb);
  const int64_t eb = (tb - INT64_C(0x4338000000000000) + 1023) << 52;
  double scale;
  std::memcpy(&scale, &eb, sizeof scale);
  return p * scale;
}

template <typename T> constexpr T exp_limit();
template <> constexpr float exp_limit<float>() { return 80.0f; }
template <> constexpr double exp_limit<double>() { return 700.0; }

template <typename T>
SO3K_CLONES void silu_range(const T *x, T *h, T *d, int64_t begin, int64_t end) {
  const T lim = exp_limit<T>();
  if (d != nullptr) {
#pragma omp simd
    for (int64_t e = begin; e < end; ++e) {
      const T v = x[e];
      T m = v < -lim ? -lim : v;
      m = m > lim ? lim : m;
      const T s = T(1) / (T(1) + exp_bounded(-m));
      const T y = v * s;
      h[e] = y;
      d[e] = s + y * (T(1) - s);
    }
  } else {
#pragma omp simd
    for (int64_t e = begin; e < end; ++e) {
      const T v = x[e];
      T m = v < -lim ? -lim : v;
      m = m > lim ? lim : m;
      h[e] = v * (T(1) / (T(1) + exp_bounded(-m)));  // as above, bit for bit
    }
  }
}

template <typename T>
void silu_kernel(const T *x, T *h, T *d, int64_t n) {
  at::parallel_for(0, n, kGrain, [&](int64_t begin, int64_t end) { silu_range<T>(x, h, d, begin, end); });
}

std::tuple<at::Tensor, at::Tensor> silu_and_derivative(const at::Tensor &x, bool derivative) {
  const char *op = "so3krates::silu_and_derivative";
  TORCH_CHECK(x.device().is_cpu(), op, ": CPU tensors only (got ", x.device(), "); the model uses ATen ops elsewhere");
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble, op,
              ": float32 or float64 expected, got ", x.scalar_type());
  const at::Tensor xc = x.contiguous();
  at::Tensor h = at::empty_like(xc);
  at::Tensor d = derivative ? at::empty_like(xc) : at::empty({0}, xc.options());
  AT_DISPATCH_FLOATING_TYPES(xc.scalar_type(), "so3krates::silu_and_derivative", [&] {
    silu_kernel<scalar_t>(xc.data_ptr<scalar_t>(), h.data_ptr<scalar_t>(),
                          derivative ? d.data_ptr<scalar_t>() : nullptr, xc.numel());
  });
  return {h, d};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(so3krates, m) {
  m.def("silu_and_derivative(Tensor x, bool derivative) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(so3krates, CPU, m) {
  m.impl("silu_and_derivative", &silu_and_derivative);
}
