// Python bindings of the CUDA GSB kernels (gsb_cuda_kernels.cu): shape checks and output
// allocation here, launches there. Same functions and contracts as csrc/cpu/gsb_cpu.cpp.
#include <torch/extension.h>
#include <optional>

using OptT = std::optional<at::Tensor>;

void launch_reparam_fwd(const at::Tensor& proj, at::Tensor& mu, at::Tensor& lv, at::Tensor& z,
                        at::Tensor& kl, int64_t seed, int64_t offset, double lv_min, double lv_max,
                        bool sample);
void launch_reparam_bwd(const at::Tensor& proj, const OptT& g_mu, const OptT& g_lv, const OptT& g_z,
                        const OptT& g_kl, at::Tensor& g_proj, int64_t seed, int64_t offset,
                        double lv_min, double lv_max, bool sample);
void launch_cosine_fwd(const at::Tensor& a, const at::Tensor& b, at::Tensor& loss, at::Tensor& stats,
                       double eps);
void launch_cosine_bwd(const at::Tensor& g, const at::Tensor& a, const at::Tensor& b,
                       const at::Tensor& stats, at::Tensor& ga, at::Tensor& gb);
void launch_noise(at::Tensor& out, int64_t seed, int64_t offset);

namespace {

void check_2d(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.dim() == 2 && t.is_contiguous() && t.is_cuda(),
              name, ": expected a contiguous 2-D CUDA tensor, got shape ", t.sizes(), " on ", t.device());
}

void check_grad(const OptT& g, const at::Tensor& like_proj, int64_t numel) {
  if (!g.has_value() || !g->defined() || g->numel() == 0) return;
  TORCH_CHECK(g->numel() == numel && g->is_contiguous() && g->device() == like_proj.device() &&
                  g->scalar_type() == like_proj.scalar_type(),
              "gradient has unexpected shape/dtype/device ", g->sizes(), " ", g->scalar_type());
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
  launch_reparam_fwd(proj_NK, mu, lv, z, kl, seed, offset, lv_min, lv_max, sample);
  return {mu, lv, z, kl};
}

at::Tensor reparam_kl_bwd(const at::Tensor& proj_NK, const OptT& g_mu, const OptT& g_lv,
                          const OptT& g_z, const OptT& g_kl, int64_t seed, int64_t offset,
                          double lv_min, double lv_max, bool sample) {
  check_2d(proj_NK, "proj");
  const int64_t N = proj_NK.size(0), C = proj_NK.size(1) / 2;
  check_grad(g_mu, proj_NK, N * C); check_grad(g_lv, proj_NK, N * C);
  check_grad(g_z, proj_NK, N * C); check_grad(g_kl, proj_NK, N);
  auto g_proj = at::empty_like(proj_NK);
  launch_reparam_bwd(proj_NK, g_mu, g_lv, g_z, g_kl, g_proj, seed, offset, lv_min, lv_max, sample);
  return g_proj;
}

std::vector<at::Tensor> cosine_fwd(const at::Tensor& a_ND, const at::Tensor& b_ND, double eps) {
  check_2d(a_ND, "h_mid"); check_2d(b_ND, "h_bn");
  TORCH_CHECK(a_ND.sizes() == b_ND.sizes() && a_ND.scalar_type() == b_ND.scalar_type(),
              "h_mid and h_bn must match in shape and dtype");
  const int64_t N = a_ND.size(0);
  auto loss = at::empty({N}, a_ND.options());
  const auto acc = a_ND.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  auto stats = at::empty({N, 3}, a_ND.options().dtype(acc));
  launch_cosine_fwd(a_ND, b_ND, loss, stats, eps);
  return {loss, stats};
}

std::vector<at::Tensor> cosine_bwd(const at::Tensor& g_N, const at::Tensor& a_ND,
                                   const at::Tensor& b_ND, const at::Tensor& stats_N3) {
  check_2d(a_ND, "h_mid"); check_2d(b_ND, "h_bn"); check_2d(stats_N3, "stats");
  auto g = g_N.contiguous();
  TORCH_CHECK(g.numel() == a_ND.size(0), "grad of the loss has ", g.numel(), " elements, expected ", a_ND.size(0));
  auto ga = at::empty_like(a_ND), gb = at::empty_like(b_ND);
  launch_cosine_bwd(g, a_ND, b_ND, stats_N3, ga, gb);
  return {ga, gb};
}

at::Tensor noise(int64_t numel, int64_t seed, int64_t offset, int64_t device_index) {
  auto out = at::empty({numel}, at::dtype(at::kFloat).device(at::kCUDA, device_index));
  launch_noise(out, seed, offset);
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
