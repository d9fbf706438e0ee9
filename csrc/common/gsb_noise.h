// Counter-based Gaussian noise for the GSB reparameterisation, shared by the CPU and CUDA
// kernels. hydra_dist/ops/gsb.py (gsb_noise) implements the same function with torch ops.
//
// Why this shape: the three implementations must agree bit for bit, so the float part uses
// only operations that IEEE-754 rounds exactly the same everywhere (+ - * / sqrt, int->float
// of values < 2^24, exponent extraction) in a fixed order, with no FMA contraction (CPU:
// -ffp-contract=off; CUDA: the __f*_rn intrinsics, which nvcc never contracts and
// --use_fast_math does not touch). log and cos are therefore short polynomials, not libm.
//
// eps(seed, offset, i):
//   keys k0..k3  = splitmix64 chain of (seed, offset)              (host side, once per call)
//   h1 = mix(mix(lo(i) ^ k0) ^ hi(i) ^ k1),  h2 = same with k2, k3  (mix = "lowbias32")
//   u1, u2 = (2 * (h >> 9) + 1) * 2^-24, in (0, 1)
//   eps = sqrt(-2 ln u1) * cos(2 pi u2)                            (Box-Muller, cos branch)
#pragma once
#include <cstdint>

#if defined(__CUDACC__)
#define GSB_HD __host__ __device__ __forceinline__
#else
#define GSB_HD inline
#endif

namespace gsb {

struct NoiseKeys { uint32_t k0, k1, k2, k3; };

inline uint64_t splitmix64(uint64_t z) {
  z += 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

inline NoiseKeys noise_keys(int64_t seed, int64_t offset) {
  uint64_t a = splitmix64(splitmix64(static_cast<uint64_t>(seed)) ^ static_cast<uint64_t>(offset));
  uint64_t b = splitmix64(a);
  return {static_cast<uint32_t>(a), static_cast<uint32_t>(a >> 32),
          static_cast<uint32_t>(b), static_cast<uint32_t>(b >> 32)};
}

GSB_HD uint32_t mix32(uint32_t x) {
  x ^= x >> 16; x *= 0x7FEB352Du;
  x ^= x >> 15; x *= 0x846CA68Bu;
  x ^= x >> 16;
  return x;
}

#if defined(__CUDA_ARCH__)
GSB_HD float f_add(float a, float b) { return __fadd_rn(a, b); }
GSB_HD float f_sub(float a, float b) { return __fsub_rn(a, b); }
GSB_HD float f_mul(float a, float b) { return __fmul_rn(a, b); }
GSB_HD float f_div(float a, float b) { return __fdiv_rn(a, b); }
GSB_HD float f_sqrt(float a) { return __fsqrt_rn(a); }
GSB_HD uint32_t f_bits(float a) { return __float_as_uint(a); }
GSB_HD float f_from_bits(uint32_t b) { return __uint_as_float(b); }
#else
GSB_HD float f_add(float a, float b) { return a + b; }
GSB_HD float f_sub(float a, float b) { return a - b; }
GSB_HD float f_mul(float a, float b) { return a * b; }
GSB_HD float f_div(float a, float b) { return a / b; }
GSB_HD float f_sqrt(float a) { return __builtin_sqrtf(a); }
GSB_HD uint32_t f_bits(float a) { uint32_t b; __builtin_memcpy(&b, &a, 4); return b; }
GSB_HD float f_from_bits(uint32_t b) { float a; __builtin_memcpy(&a, &b, 4); return a; }
#endif

// ln(k * 2^-24) for an odd integer k in [1, 2^24).
GSB_HD float log_u24(uint32_t k) {
  const float kf = static_cast<float>(static_cast<int32_t>(k));  // exact: k < 2^24
  const uint32_t bits = f_bits(kf);
  int32_t e = static_cast<int32_t>(bits >> 23) - 126;              // frexp: kf = m * 2^e
  float m = f_from_bits((bits & 0x7FFFFFu) | (126u << 23));        // m in [0.5, 1)
  const bool small = m < 0x1.6a09e6p-1f;                           // to [sqrt(.5), sqrt(2)),
  m = small ? f_add(m, m) : m;                                     // branch-free so that the
  e = small ? e - 1 : e;                                           // CPU loop vectorises
  const float s = f_div(f_sub(m, 1.0f), f_add(m, 1.0f));          // ln m = 2 atanh(s)
  const float s2 = f_mul(s, s);
  float p = f_add(f_mul(s2, 0x1.c71c72p-4f), 0x1.24924ap-3f);     // 1/9, 1/7
  p = f_add(f_mul(s2, p), 0x1.99999ap-3f);                        // 1/5
  p = f_add(f_mul(s2, p), 0x1.555556p-2f);                        // 1/3
  p = f_add(f_mul(s2, p), 1.0f);
  const float ln_m = f_mul(f_add(s, s), p);
  return f_add(ln_m, f_mul(static_cast<float>(e - 24), 0x1.62e430p-1f));  // + (e-24) ln 2
}

// cos(2 pi u) for u = k * 2^-24, k odd in [1, 2^24).
GSB_HD float cos_2pi_u24(uint32_t k) {
  const float u = f_mul(static_cast<float>(static_cast<int32_t>(k)), 0x1p-24f);
  const float t = f_sub(u, 0.5f);                 // exact; cos(2 pi u) = -cos(2 pi t)
  const float a = t < 0.0f ? -t : t;
  const bool flip = a > 0.25f;                    // cos(2 pi a) = -cos(2 pi (1/2 - a))
  const float b = flip ? f_sub(0.5f, a) : a;      // b in [0, 1/4]
  const float y = f_mul(b, b);
  float p = f_add(f_mul(y, -0x1.b6e250p+0f), 0x1.f9d38ap+2f);    // Taylor of cos(2 pi b) in b^2
  p = f_add(f_mul(y, p), -0x1.a6d1f2p+4f);
  p = f_add(f_mul(y, p), 0x1.e1f506p+5f);
  p = f_add(f_mul(y, p), -0x1.55d3c8p+6f);
  p = f_add(f_mul(y, p), 0x1.03c1f0p+6f);
  p = f_add(f_mul(y, p), -0x1.3bd3ccp+4f);
  p = f_add(f_mul(y, p), 1.0f);
  return flip ? p : -p;
}

GSB_HD float noise_at(const NoiseKeys& k, uint64_t i) {
  const uint32_t lo = static_cast<uint32_t>(i), hi = static_cast<uint32_t>(i >> 32);
  const uint32_t h1 = mix32(mix32(lo ^ k.k0) ^ hi ^ k.k1);
  const uint32_t h2 = mix32(mix32(lo ^ k.k2) ^ hi ^ k.k3);
  const float r = f_sqrt(f_mul(-2.0f, log_u24(2u * (h1 >> 9) + 1u)));
  return f_mul(r, cos_2pi_u24(2u * (h2 >> 9) + 1u));
}

}  // namespace gsb
