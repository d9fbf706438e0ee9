// CPU kernels for the GSB ops (docs/kernels.md). Each op reads its inputs once and writes its
// outputs once; rows are split across threads with at::parallel_for so torch.set_num_threads
// governs them. Math runs in opmath (fp32 for bf16/fp16/fp32, fp64 for fp64).
#include <torch/extension.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <cmath>
#include <optional>

#include "../common/gsb_noise.h"

namespace {

using OptT = std::optional<at::Tensor>;

// Rows per task: enough work per chunk that thread hand-off stays negligible.
int64_t grain_rows(int64_t row_len) { return std::max<int64_t>(1, 16384 / std::max<int64_t>(row_len, 1)); }

void check_2d(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.dim() == 2 && t.is_contiguous() && t.device().is_cpu(),
              name, ": expected a contiguous 2-D CPU tensor, got shape ", t.sizes());
}

// Absent grads (None, or the 0-element z of sample=False) read as zero.
template <typename T>
const T* opt_ptr(const OptT& g, int64_t numel) {
  if (!g.has_value() || !g->defined() || g->numel() == 0) return nullptr;
  TORCH_CHECK(g->numel() == numel && g->is_contiguous(), "gradient has unexpected shape ", g->sizes());
  return g->data_ptr<T>();
}

// libm's expf does not vectorise without -ffast-math (which would break the exact noise), so
// fp32 uses this one: Cody-Waite reduction + degree-7 Taylor, within ~2 ulp. fp64 keeps libm.
inline float vexp(float x) {
  x = std::min(std::max(x, -87.0f), 88.0f);
  const float kf = (x * 1.44269504f + 12582912.0f) - 12582912.0f;  // round(x / ln2)
  const float r = (x - kf * 0.693145751953125f) - kf * 1.428606765330187e-06f;
  float p = 1.0f / 5040;
  p = p * r + 1.0f / 720; p = p * r + 1.0f / 120; p = p * r + 1.0f / 24;
  p = p * r + 1.0f / 6;   p = p * r + 0.5f;       p = p * r + 1.0f;  p = p * r + 1.0f;
  return p * gsb::f_from_bits(static_cast<uint32_t>(static_cast<int32_t>(kf) + 127) << 23);
}
inline double vexp(double x) { return std::exp(x); }

constexpr int64_t kChunk = 256;  // noise is generated per row chunk into a stack buffer

void noise_chunk(const gsb::NoiseKeys& keys, uint64_t start, int64_t count, float* out) {
  const gsb::NoiseKeys k = keys;
#pragma omp simd
  for (int64_t j = 0; j < count; ++j) out[j] = gsb::noise_at(k, start + static_cast<uint64_t>(j));
}

template <typename scalar_t, typename acc_t>
acc_t reparam_fwd_chunk(const scalar_t* pm, const scalar_t* pv, scalar_t* mu, scalar_t* lv,
                        scalar_t* z, const float* eps, int64_t count, acc_t lo, acc_t hi) {
  acc_t kl_sum = 0;
#pragma omp simd reduction(+ : kl_sum)
  for (int64_t j = 0; j < count; ++j) {
    const acc_t m = static_cast<acc_t>(pm[j]);
    const acc_t v = std::min(std::max(static_cast<acc_t>(pv[j]), lo), hi);
    const acc_t sd = vexp(acc_t(0.5) * v);
    mu[j] = static_cast<scalar_t>(m);
    lv[j] = static_cast<scalar_t>(v);
    if (z) z[j] = static_cast<scalar_t>(m + static_cast<acc_t>(eps[j]) * sd);
    kl_sum += acc_t(1) + v - m * m - sd * sd;
  }
  return kl_sum;
}

// d/dmu = g_mu + g_z + g_kl * mu;  d/dlogvar = g_lv + g_z * eps * sd / 2 + g_kl * (e^lv - 1) / 2,
// zero where the clamp is active (as torch.clamp).
template <typename scalar_t, typename acc_t>
void reparam_bwd_chunk(const scalar_t* pm, const scalar_t* pv, const scalar_t* gmu, const scalar_t* glv,
                       const scalar_t* gz, acc_t gk, const float* eps, scalar_t* gpm, scalar_t* gpv,
                       int64_t count, acc_t lo, acc_t hi) {
#pragma omp simd
  for (int64_t j = 0; j < count; ++j) {
    const acc_t m = static_cast<acc_t>(pm[j]), x = static_cast<acc_t>(pv[j]);
    const acc_t v = std::min(std::max(x, lo), hi);
    const acc_t sd = vexp(acc_t(0.5) * v);
    const acc_t gzi = gz ? static_cast<acc_t>(gz[j]) : acc_t(0);
    acc_t dm = gk * m + gzi, dv = acc_t(0.5) * gk * (sd * sd - acc_t(1));
    if (gmu) dm += static_cast<acc_t>(gmu[j]);
    if (glv) dv += static_cast<acc_t>(glv[j]);
    if (gz) dv += acc_t(0.5) * gzi * static_cast<acc_t>(eps[j]) * sd;
    gpm[j] = static_cast<scalar_t>(dm);
    gpv[j] = static_cast<scalar_t>((x >= lo && x <= hi) ? dv : acc_t(0));
  }
}

// Inner row loops live outside AT_DISPATCH: a #pragma cannot sit inside a macro argument.
template <typename scalar_t, typename acc_t>
void dot3(const scalar_t* ra, const scalar_t* rb, int64_t D, acc_t& ab, acc_t& aa, acc_t& bb) {
  acc_t s_ab = 0, s_aa = 0, s_bb = 0;
#pragma omp simd reduction(+ : s_ab, s_aa, s_bb)
  for (int64_t d = 0; d < D; ++d) {
    const acc_t x = static_cast<acc_t>(ra[d]), y = static_cast<acc_t>(rb[d]);
    s_ab += x * y; s_aa += x * x; s_bb += y * y;
  }
  ab = s_ab; aa = s_aa; bb = s_bb;
}

template <typename scalar_t, typename acc_t>
void cos_grad_row(const scalar_t* ra, const scalar_t* rb, scalar_t* rga, scalar_t* rgb, int64_t D,
                  acc_t k_ab, acc_t k_a, acc_t k_b) {
#pragma omp simd
  for (int64_t d = 0; d < D; ++d) {
    const acc_t x = static_cast<acc_t>(ra[d]), y = static_cast<acc_t>(rb[d]);
    rga[d] = static_cast<scalar_t>(k_ab * y - k_a * x);
    rgb[d] = static_cast<scalar_t>(k_ab * x - k_b * y);
  }
}

std::vector<at::Tensor> reparam_kl_fwd(const at::Tensor& proj_NK, int64_t seed, int64_t offset,
                                       double lv_min, double lv_max, bool sample) {
  check_2d(proj_NK, "proj");
  TORCH_CHECK(proj_NK.size(1) % 2 == 0, "proj: last dim must be 2*C, got ", proj_NK.size(1));
  const int64_t N = proj_NK.size(0), C = proj_NK.size(1) / 2;
  auto mu = at::empty({N, C}, proj_NK.options());
  auto lv = at::empty({N, C}, proj_NK.options());
  auto z = at::empty({sample ? N : 0, C}, proj_NK.options());
  auto kl = at::empty({N}, proj_NK.options());
  const gsb::NoiseKeys keys = gsb::noise_keys(seed, offset);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, proj_NK.scalar_type(), "gsb_reparam_kl_fwd", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* p = proj_NK.data_ptr<scalar_t>();
    scalar_t *pmu = mu.data_ptr<scalar_t>(), *plv = lv.data_ptr<scalar_t>(), *pkl = kl.data_ptr<scalar_t>();
    scalar_t* pz = sample ? z.data_ptr<scalar_t>() : nullptr;
    const acc_t lo = static_cast<acc_t>(lv_min), hi = static_cast<acc_t>(lv_max);
    at::parallel_for(0, N, grain_rows(2 * C), [&](int64_t n0, int64_t n1) {
      for (int64_t n = n0; n < n1; ++n) {
        const scalar_t* row = p + n * 2 * C;
        float eps[kChunk];
        acc_t kl_sum = 0;
        for (int64_t j0 = 0; j0 < C; j0 += kChunk) {
          const int64_t cnt = std::min(kChunk, C - j0), i = n * C + j0;
          if (sample) noise_chunk(keys, static_cast<uint64_t>(i), cnt, eps);
          kl_sum += reparam_fwd_chunk<scalar_t, acc_t>(row + j0, row + C + j0, pmu + i, plv + i,
                                                       sample ? pz + i : nullptr, eps, cnt, lo, hi);
        }
        pkl[n] = static_cast<scalar_t>(acc_t(-0.5) * kl_sum);
      }
    });
  });
  return {mu, lv, z, kl};
}

at::Tensor reparam_kl_bwd(const at::Tensor& proj_NK, const OptT& g_mu, const OptT& g_lv,
                          const OptT& g_z, const OptT& g_kl, int64_t seed, int64_t offset,
                          double lv_min, double lv_max, bool sample) {
  check_2d(proj_NK, "proj");
  const int64_t N = proj_NK.size(0), C = proj_NK.size(1) / 2;
  auto g_proj = at::empty_like(proj_NK);
  const gsb::NoiseKeys keys = gsb::noise_keys(seed, offset);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, proj_NK.scalar_type(), "gsb_reparam_kl_bwd", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* p = proj_NK.data_ptr<scalar_t>();
    const scalar_t* gmu = opt_ptr<scalar_t>(g_mu, N * C);
    const scalar_t* glv = opt_ptr<scalar_t>(g_lv, N * C);
    const scalar_t* gz = sample ? opt_ptr<scalar_t>(g_z, N * C) : nullptr;
    const scalar_t* gkl = opt_ptr<scalar_t>(g_kl, N);
    scalar_t* gp = g_proj.data_ptr<scalar_t>();
    const acc_t lo = static_cast<acc_t>(lv_min), hi = static_cast<acc_t>(lv_max);
    at::parallel_for(0, N, grain_rows(2 * C), [&](int64_t n0, int64_t n1) {
      for (int64_t n = n0; n < n1; ++n) {
        const scalar_t* row = p + n * 2 * C;
        const acc_t gk = gkl ? static_cast<acc_t>(gkl[n]) : acc_t(0);
        float eps[kChunk];
        for (int64_t j0 = 0; j0 < C; j0 += kChunk) {
          const int64_t cnt = std::min(kChunk, C - j0), i = n * C + j0;
          if (gz) noise_chunk(keys, static_cast<uint64_t>(i), cnt, eps);  // regenerated, not stored
          reparam_bwd_chunk<scalar_t, acc_t>(row + j0, row + C + j0, gmu ? gmu + i : nullptr,
                                             glv ? glv + i : nullptr, gz ? gz + i : nullptr, gk, eps,
                                             gp + n * 2 * C + j0, gp + n * 2 * C + C + j0, cnt, lo, hi);
        }
      }
    });
  });
  return g_proj;
}

// loss = 1 - a.b / (max(|a|, eps) max(|b|, eps)). stats_N3 keeps what backward needs per row:
// [1 / (|a|_c |b|_c), cos / |a|^2 (0 if |a| <= eps), cos / |b|^2 (0 if |b| <= eps)].
std::vector<at::Tensor> cosine_fwd(const at::Tensor& a_ND, const at::Tensor& b_ND, double eps) {
  check_2d(a_ND, "h_mid"); check_2d(b_ND, "h_bn");
  TORCH_CHECK(a_ND.sizes() == b_ND.sizes() && a_ND.scalar_type() == b_ND.scalar_type(),
              "h_mid and h_bn must match in shape and dtype");
  const int64_t N = a_ND.size(0), D = a_ND.size(1);
  auto loss = at::empty({N}, a_ND.options());
  const auto acc_dtype = a_ND.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  auto stats = at::empty({N, 3}, a_ND.options().dtype(acc_dtype));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, a_ND.scalar_type(), "gsb_cosine_fwd", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t *pa = a_ND.data_ptr<scalar_t>(), *pb = b_ND.data_ptr<scalar_t>();
    scalar_t* pl = loss.data_ptr<scalar_t>();
    acc_t* ps = stats.data_ptr<acc_t>();
    const acc_t e = static_cast<acc_t>(eps);
    at::parallel_for(0, N, grain_rows(2 * D), [&](int64_t n0, int64_t n1) {
      for (int64_t n = n0; n < n1; ++n) {
        const scalar_t *ra = pa + n * D, *rb = pb + n * D;
        acc_t ab, aa, bb;
        dot3<scalar_t, acc_t>(ra, rb, D, ab, aa, bb);
        const acc_t na = std::sqrt(aa), nb = std::sqrt(bb);
        const acc_t inv = acc_t(1) / (std::max(na, e) * std::max(nb, e));
        const acc_t cs = ab * inv;
        pl[n] = static_cast<scalar_t>(acc_t(1) - cs);
        ps[3 * n] = inv;
        ps[3 * n + 1] = na > e ? cs / aa : acc_t(0);
        ps[3 * n + 2] = nb > e ? cs / bb : acc_t(0);
      }
    });
  });
  return {loss, stats};
}

// d loss/da = -g (b / (|a||b|) - cos a / |a|^2), and symmetrically for b.
std::vector<at::Tensor> cosine_bwd(const at::Tensor& g_N, const at::Tensor& a_ND,
                                   const at::Tensor& b_ND, const at::Tensor& stats_N3) {
  check_2d(a_ND, "h_mid"); check_2d(b_ND, "h_bn"); check_2d(stats_N3, "stats");
  const int64_t N = a_ND.size(0), D = a_ND.size(1);
  auto g = g_N.contiguous();
  auto ga = at::empty_like(a_ND), gb = at::empty_like(b_ND);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, a_ND.scalar_type(), "gsb_cosine_bwd", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t *pa = a_ND.data_ptr<scalar_t>(), *pb = b_ND.data_ptr<scalar_t>(), *pg = g.data_ptr<scalar_t>();
    const acc_t* ps = stats_N3.data_ptr<acc_t>();
    scalar_t *pga = ga.data_ptr<scalar_t>(), *pgb = gb.data_ptr<scalar_t>();
    at::parallel_for(0, N, grain_rows(4 * D), [&](int64_t n0, int64_t n1) {
      for (int64_t n = n0; n < n1; ++n) {
        const acc_t gn = -static_cast<acc_t>(pg[n]);
        const acc_t k_ab = gn * ps[3 * n], k_a = gn * ps[3 * n + 1], k_b = gn * ps[3 * n + 2];
        const scalar_t *ra = pa + n * D, *rb = pb + n * D;
        scalar_t *rga = pga + n * D, *rgb = pgb + n * D;
        cos_grad_row<scalar_t, acc_t>(ra, rb, rga, rgb, D, k_ab, k_a, k_b);
      }
    });
  });
  return {ga, gb};
}

// Exposed so tests can compare the C++ noise with the torch reference bit for bit.
at::Tensor noise(int64_t numel, int64_t seed, int64_t offset) {
  auto out = at::empty({numel}, at::dtype(at::kFloat));
  float* po = out.data_ptr<float>();
  const gsb::NoiseKeys keys = gsb::noise_keys(seed, offset);
  at::parallel_for(0, numel, 4096, [&](int64_t i0, int64_t i1) {
    noise_chunk(keys, static_cast<uint64_t>(i0), i1 - i0, po + i0);
  });
  return out;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("reparam_kl_fwd", &reparam_kl_fwd);
  m.def("reparam_kl_bwd", &reparam_kl_bwd);
  m.def("cosine_fwd", &cosine_fwd);
  m.def("cosine_bwd", &cosine_bwd);
  m.def("noise", &noise);
}
