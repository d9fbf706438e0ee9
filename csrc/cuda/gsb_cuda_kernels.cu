// CUDA kernels for the GSB ops (docs/kernels.md). All four are memory-bound: each reads its
// inputs once and writes its outputs once. Row reductions (KL over C, the three dot products
// over D) use one warp per row, so no shared memory or second pass is needed.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include <optional>

#include "../common/gsb_noise.h"

namespace {

constexpr int kWarpsPerBlock = 8;
constexpr int kThreads = 32 * kWarpsPerBlock;

__device__ __forceinline__ float dexp(float x) { return expf(x); }
__device__ __forceinline__ double dexp(double x) { return exp(x); }
__device__ __forceinline__ float dsqrt(float x) { return sqrtf(x); }
__device__ __forceinline__ double dsqrt(double x) { return sqrt(x); }

template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

int blocks_for(int64_t work, int per_block) {
  return static_cast<int>(std::min<int64_t>((work + per_block - 1) / per_block, 1 << 30));
}

template <typename scalar_t>
__global__ void reparam_fwd_kernel(const scalar_t* __restrict__ proj, scalar_t* __restrict__ mu,
                                   scalar_t* __restrict__ lv, scalar_t* __restrict__ z,
                                   scalar_t* __restrict__ kl, int64_t N, int64_t C,
                                   gsb::NoiseKeys keys, double lv_min, double lv_max) {
  using acc_t = at::opmath_type<scalar_t>;
  const int lane = threadIdx.x & 31;
  for (int64_t n = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) >> 5; n < N;
       n += (int64_t(gridDim.x) * blockDim.x) >> 5) {
    const scalar_t* row = proj + n * 2 * C;
    acc_t kl_sum = 0;
    for (int64_t j = lane; j < C; j += 32) {
      const acc_t m = static_cast<acc_t>(row[j]);
      const acc_t v = min(max(static_cast<acc_t>(row[C + j]), acc_t(lv_min)), acc_t(lv_max));
      const acc_t sd = dexp(acc_t(0.5) * v);
      mu[n * C + j] = static_cast<scalar_t>(m);
      lv[n * C + j] = static_cast<scalar_t>(v);
      if (z != nullptr) {
        const acc_t eps = static_cast<acc_t>(gsb::noise_at(keys, static_cast<uint64_t>(n * C + j)));
        z[n * C + j] = static_cast<scalar_t>(m + eps * sd);
      }
      kl_sum += acc_t(1) + v - m * m - sd * sd;
    }
    kl_sum = warp_sum(kl_sum);
    if (lane == 0) kl[n] = static_cast<scalar_t>(acc_t(-0.5) * kl_sum);
  }
}

template <typename scalar_t>
__global__ void reparam_bwd_kernel(const scalar_t* __restrict__ proj, const scalar_t* __restrict__ gmu,
                                   const scalar_t* __restrict__ glv, const scalar_t* __restrict__ gz,
                                   const scalar_t* __restrict__ gkl, scalar_t* __restrict__ gp,
                                   int64_t N, int64_t C, gsb::NoiseKeys keys, double lv_min, double lv_max) {
  using acc_t = at::opmath_type<scalar_t>;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < N * C;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t n = i / C, j = i - n * C;
    const acc_t m = static_cast<acc_t>(proj[n * 2 * C + j]);
    const acc_t x = static_cast<acc_t>(proj[n * 2 * C + C + j]);
    const acc_t v = min(max(x, acc_t(lv_min)), acc_t(lv_max));
    const acc_t sd = dexp(acc_t(0.5) * v);
    const acc_t gk = gkl ? static_cast<acc_t>(gkl[n]) : acc_t(0);
    const acc_t gzi = gz ? static_cast<acc_t>(gz[i]) : acc_t(0);
    acc_t dm = gk * m + gzi, dv = acc_t(0.5) * gk * (sd * sd - acc_t(1));
    if (gmu) dm += static_cast<acc_t>(gmu[i]);
    if (glv) dv += static_cast<acc_t>(glv[i]);
    if (gz) dv += acc_t(0.5) * gzi * static_cast<acc_t>(gsb::noise_at(keys, static_cast<uint64_t>(i))) * sd;
    gp[n * 2 * C + j] = static_cast<scalar_t>(dm);
    gp[n * 2 * C + C + j] = static_cast<scalar_t>((x >= acc_t(lv_min) && x <= acc_t(lv_max)) ? dv : acc_t(0));
  }
}

template <typename scalar_t, typename acc_t>
__global__ void cosine_fwd_kernel(const scalar_t* __restrict__ a, const scalar_t* __restrict__ b,
                                  scalar_t* __restrict__ loss, acc_t* __restrict__ stats,
                                  int64_t N, int64_t D, acc_t eps) {
  const int lane = threadIdx.x & 31;
  for (int64_t n = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) >> 5; n < N;
       n += (int64_t(gridDim.x) * blockDim.x) >> 5) {
    const scalar_t *ra = a + n * D, *rb = b + n * D;
    acc_t ab = 0, aa = 0, bb = 0;
    for (int64_t d = lane; d < D; d += 32) {
      const acc_t x = static_cast<acc_t>(ra[d]), y = static_cast<acc_t>(rb[d]);
      ab += x * y; aa += x * x; bb += y * y;
    }
    ab = warp_sum(ab); aa = warp_sum(aa); bb = warp_sum(bb);
    if (lane == 0) {
      const acc_t na = dsqrt(aa), nb = dsqrt(bb);
      const acc_t inv = acc_t(1) / (max(na, eps) * max(nb, eps));
      const acc_t cs = ab * inv;
      loss[n] = static_cast<scalar_t>(acc_t(1) - cs);
      stats[3 * n] = inv;
      stats[3 * n + 1] = na > eps ? cs / aa : acc_t(0);
      stats[3 * n + 2] = nb > eps ? cs / bb : acc_t(0);
    }
  }
}

template <typename scalar_t, typename acc_t>
__global__ void cosine_bwd_kernel(const scalar_t* __restrict__ g, const scalar_t* __restrict__ a,
                                  const scalar_t* __restrict__ b, const acc_t* __restrict__ stats,
                                  scalar_t* __restrict__ ga, scalar_t* __restrict__ gb,
                                  int64_t N, int64_t D) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < N * D;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t n = i / D;
    const acc_t gn = -static_cast<acc_t>(g[n]);
    const acc_t x = static_cast<acc_t>(a[i]), y = static_cast<acc_t>(b[i]);
    const acc_t k_ab = gn * stats[3 * n];
    ga[i] = static_cast<scalar_t>(k_ab * y - gn * stats[3 * n + 1] * x);
    gb[i] = static_cast<scalar_t>(k_ab * x - gn * stats[3 * n + 2] * y);
  }
}

__global__ void noise_kernel(float* out, int64_t numel, gsb::NoiseKeys keys) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < numel;
       i += int64_t(gridDim.x) * blockDim.x)
    out[i] = gsb::noise_at(keys, static_cast<uint64_t>(i));
}

template <typename T>
T* opt_ptr(const std::optional<at::Tensor>& g) {
  return (g.has_value() && g->defined() && g->numel() > 0) ? g->data_ptr<T>() : nullptr;
}

}  // namespace

// Launchers, called from gsb_cuda.cpp (which checks shapes and allocates outputs).
void launch_reparam_fwd(const at::Tensor& proj, at::Tensor& mu, at::Tensor& lv, at::Tensor& z,
                        at::Tensor& kl, int64_t seed, int64_t offset, double lv_min, double lv_max,
                        bool sample) {
  const int64_t N = proj.size(0), C = proj.size(1) / 2;
  if (N == 0) return;
  const c10::cuda::CUDAGuard guard(proj.device());
  auto stream = at::cuda::getCurrentCUDAStream();
  const gsb::NoiseKeys keys = gsb::noise_keys(seed, offset);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, proj.scalar_type(), "gsb_reparam_fwd_cuda", [&] {
    reparam_fwd_kernel<scalar_t><<<blocks_for(N, kWarpsPerBlock), kThreads, 0, stream>>>(
        proj.data_ptr<scalar_t>(), mu.data_ptr<scalar_t>(), lv.data_ptr<scalar_t>(),
        sample ? z.data_ptr<scalar_t>() : nullptr, kl.data_ptr<scalar_t>(), N, C, keys,
        lv_min, lv_max);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void launch_reparam_bwd(const at::Tensor& proj, const std::optional<at::Tensor>& g_mu,
                        const std::optional<at::Tensor>& g_lv, const std::optional<at::Tensor>& g_z,
                        const std::optional<at::Tensor>& g_kl, at::Tensor& g_proj, int64_t seed,
                        int64_t offset, double lv_min, double lv_max, bool sample) {
  const int64_t N = proj.size(0), C = proj.size(1) / 2;
  if (N * C == 0) return;
  const c10::cuda::CUDAGuard guard(proj.device());
  auto stream = at::cuda::getCurrentCUDAStream();
  const gsb::NoiseKeys keys = gsb::noise_keys(seed, offset);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, proj.scalar_type(), "gsb_reparam_bwd_cuda", [&] {
    reparam_bwd_kernel<scalar_t><<<blocks_for(N * C, kThreads), kThreads, 0, stream>>>(
        proj.data_ptr<scalar_t>(), opt_ptr<scalar_t>(g_mu), opt_ptr<scalar_t>(g_lv),
        sample ? opt_ptr<scalar_t>(g_z) : nullptr, opt_ptr<scalar_t>(g_kl),
        g_proj.data_ptr<scalar_t>(), N, C, keys, lv_min, lv_max);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void launch_cosine_fwd(const at::Tensor& a, const at::Tensor& b, at::Tensor& loss, at::Tensor& stats,
                       double eps) {
  const int64_t N = a.size(0), D = a.size(1);
  if (N == 0) return;
  const c10::cuda::CUDAGuard guard(a.device());
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, a.scalar_type(), "gsb_cosine_fwd_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    cosine_fwd_kernel<scalar_t, acc_t><<<blocks_for(N, kWarpsPerBlock), kThreads, 0, stream>>>(
        a.data_ptr<scalar_t>(), b.data_ptr<scalar_t>(), loss.data_ptr<scalar_t>(),
        stats.data_ptr<acc_t>(), N, D, static_cast<acc_t>(eps));
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void launch_cosine_bwd(const at::Tensor& g, const at::Tensor& a, const at::Tensor& b,
                       const at::Tensor& stats, at::Tensor& ga, at::Tensor& gb) {
  const int64_t N = a.size(0), D = a.size(1);
  if (N * D == 0) return;
  const c10::cuda::CUDAGuard guard(a.device());
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, a.scalar_type(), "gsb_cosine_bwd_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    cosine_bwd_kernel<scalar_t, acc_t><<<blocks_for(N * D, kThreads), kThreads, 0, stream>>>(
        g.data_ptr<scalar_t>(), a.data_ptr<scalar_t>(), b.data_ptr<scalar_t>(), stats.data_ptr<acc_t>(),
        ga.data_ptr<scalar_t>(), gb.data_ptr<scalar_t>(), N, D);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void launch_noise(at::Tensor& out, int64_t seed, int64_t offset) {
  if (out.numel() == 0) return;
  const c10::cuda::CUDAGuard guard(out.device());
  noise_kernel<<<blocks_for(out.numel(), kThreads), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
      out.data_ptr<float>(), out.numel(), gsb::noise_keys(seed, offset));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}
