// Two oneDNN linear operators that libtorch registers but tch does not wrap:
// mkldnn::_reorder_linear_weight lays a [out, in] weight out once in oneDNN's
// blocked format, and mkldnn::_linear_pointwise multiplies by such a weight
// without re-packing it on every call (which MKL's sgemm does at batch > 1).
// They are called through the dispatcher by name, so nothing here depends on
// how libtorch was built beyond those two registered schemas.
//
// Tensors cross the boundary as tch does it: `at::Tensor*`, and a returned
// tensor is a `new at::Tensor` the Rust side owns (freed by tch's at_free).
#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/ivalue.h>
#include <ATen/core/stack.h>

#include <cstdlib>
#include <cstring>
#include <exception>
#include <string>

#if defined(__x86_64__)
// panel_kernel_avx512.cpp: compiled with AVX-512 for that file only.
extern "C" void steward_panel_kernel_f32(const float* xt, long rows, long k_len, const float* packed, long n,
                                         long p_begin, long p_end, float* y);
extern "C" void steward_panel_kernel_bf16(const float* xt, long rows, long k_len, const uint16_t* packed, long n,
                                          long p_begin, long p_end, float* y);
extern "C" void steward_panel_kernel_bf16dp(const uint32_t* xt2, long rows, long k_len, const uint16_t* packed,
                                            long n, long p_begin, long p_end, float* y);
extern "C" void steward_paged_scores_f32(const float* q, long groups, long hd, const float* kc, const int64_t* rows,
                                         long lmax, float* scores);
extern "C" void steward_paged_pv_f32(const float* probs, long groups, long hd, const float* vc, const int64_t* rows,
                                     long lmax, float* out);
#endif

namespace {

void copy_error(const char* what, char* err, size_t err_len) {
  if (err == nullptr || err_len == 0) return;
  std::strncpy(err, what, err_len - 1);
  err[err_len - 1] = '\0';
}

// Looked up once: the dispatcher's handles stay valid for the process.
const c10::OperatorHandle& reorder_op() {
  static const c10::OperatorHandle op =
      c10::Dispatcher::singleton().findSchemaOrThrow("mkldnn::_reorder_linear_weight", "");
  return op;
}

const c10::OperatorHandle& linear_op() {
  static const c10::OperatorHandle op =
      c10::Dispatcher::singleton().findSchemaOrThrow("mkldnn::_linear_pointwise", "");
  return op;
}

// Runs `f`; a C++ exception becomes its message in `err` and a null result
// (the Rust side turns that into an error), never an unwind across the FFI.
template <class F>
at::Tensor* guarded(char* err, size_t err_len, F&& f) {
  try {
    return f();
  } catch (const std::exception& e) {
    copy_error(e.what(), err, err_len);
  } catch (...) {
    copy_error("unknown C++ exception", err, err_len);
  }
  return nullptr;
}

at::Tensor* call(const c10::OperatorHandle& op, torch::jit::Stack stack) {
  op.callBoxed(&stack);
  return new at::Tensor(std::move(stack.at(0)).toTensor());
}

}  // namespace

extern "C" {

// Turns libtorch's cuDNN backend of scaled_dot_product_attention on or off.
// cuDNN builds an execution plan for every new input shape; decode attention
// grows its context by one token per step, so every step paid for a plan
// (bf16 decode steps of 45-65 ms instead of ~10 on an H200). The flash and
// memory-efficient backends need no plan.
void steward_sdp_use_cudnn(int enabled) { at::globalContext().setSDPUseCuDNN(enabled != 0); }

int steward_onednn_available() {
  try {
    return c10::Dispatcher::singleton().findSchema({"mkldnn::_linear_pointwise", ""}).has_value() &&
                   c10::Dispatcher::singleton().findSchema({"mkldnn::_reorder_linear_weight", ""}).has_value()
               ? 1
               : 0;
  } catch (...) {
    return 0;
  }
}

at::Tensor* steward_onednn_reorder_linear_weight(const at::Tensor* w, char* err, size_t err_len) {
  return guarded(err, err_len, [&]() -> at::Tensor* {
    torch::jit::Stack stack;
    stack.emplace_back(*w);
    stack.emplace_back(c10::IValue());  // batch_size: None (any)
    return call(reorder_op(), std::move(stack));
  });
}

at::Tensor* steward_onednn_linear(const at::Tensor* x, const at::Tensor* w, char* err, size_t err_len) {
  return guarded(err, err_len, [&]() -> at::Tensor* {
    torch::jit::Stack stack;
    stack.emplace_back(*x);
    stack.emplace_back(*w);
    stack.emplace_back(c10::IValue());  // no bias
    stack.emplace_back(std::string("none"));
    stack.emplace_back(c10::List<std::optional<at::Scalar>>());
    stack.emplace_back(std::string(""));
    return call(linear_op(), std::move(stack));
  });
}

// The panel linear: steward's own kernel for a weight laid out as
// [ceil(N/16), K, 16] panels (model::linear's `panel` layout), AVX-512 only.
// It streams each weight once per call whatever the number of rows, where
// MKL's sgemv reaches about a third of the memory bandwidth at batch 1 and
// its sgemm re-packs the weight on every call above it.
int steward_panel_available() {
#if defined(__x86_64__)
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                 __builtin_cpu_supports("avx512vl")
             ? 1
             : 0;
#else
  return 0;
#endif
}

// True when bf16 weights times bf16 activations may use the AVX-512 BF16 dot
// product (VDPBF16PS): the CPU has it and STEWARD_PANEL_BF16_DP is not "0"
// (kept to compare the two bf16 kernels, and as a way back).
int steward_panel_bf16dp_available() {
#if defined(__x86_64__)
  static const int on = [] {
    __builtin_cpu_init();
    const char* env = std::getenv("STEWARD_PANEL_BF16_DP");
    const bool off = env != nullptr && std::strcmp(env, "0") == 0;
    return steward_panel_available() && __builtin_cpu_supports("avx512bf16") && !off ? 1 : 0;
  }();
  return on;
#else
  return 0;
#endif
}

// y = x @ wT for x [rows, K] (any floating dtype; computed in f32, returned in
// x's dtype) and a packed weight of dtype f32 or bf16 with `n` output features.
// bf16 weights and bf16 x on a CPU with AVX-512 BF16 take the dot-product
// kernel (the same exact products, summed in another order).
at::Tensor* steward_panel_linear(const at::Tensor* x, const at::Tensor* packed, int64_t n, char* err,
                                 size_t err_len) {
  return guarded(err, err_len, [&]() -> at::Tensor* {
#if defined(__x86_64__)
    TORCH_CHECK(steward_panel_available(), "this CPU has no AVX-512 (F, BW, VL): use another weight layout");
    TORCH_CHECK(x->dim() == 2, "panel linear: x must be [rows, in], got ", x->sizes());
    TORCH_CHECK(packed->dim() == 3 && packed->size(2) == 16 && packed->is_contiguous(),
                "panel linear: weight must be contiguous [panels, in, 16], got ", packed->sizes());
    const int64_t rows = x->size(0), k_len = x->size(1), np = packed->size(0);
    TORCH_CHECK(packed->size(1) == k_len, "panel linear: x has ", k_len, " features, the weight ", packed->size(1));
    TORCH_CHECK(n > (np - 1) * 16 && n <= np * 16, "panel linear: ", n, " outputs do not fit ", np, " panels");
    const bool bf16 = packed->scalar_type() == at::kBFloat16;
    TORCH_CHECK(bf16 || packed->scalar_type() == at::kFloat, "panel linear: weight dtype must be f32 or bf16");
    at::Tensor y = at::empty({rows, n}, x->options().dtype(at::kFloat));
    if (rows > 0) {
      const bool dot = bf16 && x->scalar_type() == at::kBFloat16 && steward_panel_bf16dp_available();
      // x transposed for the kernel: f32 [K][rows], or for the dot product
      // each row's bf16 pairs as 32-bit words, [ceil(K/2)][rows].
      at::Tensor xt;
      if (dot) {
        at::Tensor xb = x->contiguous();
        if (k_len % 2 != 0) xb = at::constant_pad_nd(xb, {0, 1});
        xt = xb.view(at::kInt).t().contiguous();
      } else {
        xt = x->to(at::kFloat).t().contiguous();
      }
      const void* xp = xt.data_ptr();
      float* yp = y.data_ptr<float>();
      const void* wp = packed->data_ptr();
      // At least ~256 KiB of weights per thread: below that, waking a
      // thread costs more than the panels it would take (a tiny model's
      // projections run on the calling thread alone).
      const int64_t panel_bytes = k_len * 16 * (bf16 ? 2 : 4);
      const int64_t grain = std::max<int64_t>(1, (256 * 1024) / std::max<int64_t>(1, panel_bytes));
      at::parallel_for(0, np, grain, [&](int64_t begin, int64_t end) {
        if (dot) {
          steward_panel_kernel_bf16dp(static_cast<const uint32_t*>(xp), rows, k_len, static_cast<const uint16_t*>(wp),
                                      n, begin, end, yp);
        } else if (bf16) {
          steward_panel_kernel_bf16(static_cast<const float*>(xp), rows, k_len, static_cast<const uint16_t*>(wp), n,
                                    begin, end, yp);
        } else {
          steward_panel_kernel_f32(static_cast<const float*>(xp), rows, k_len, static_cast<const float*>(wp), n, begin,
                                   end, yp);
        }
      });
    }
    if (x->scalar_type() != at::kFloat) y = y.to(x->scalar_type());
    return new at::Tensor(std::move(y));
#else
    (void)x;
    (void)packed;
    (void)n;
    copy_error("panel linear: x86-64 only", err, err_len);
    return nullptr;
#endif
  });
}

// Decode attention over the paged cache without gathering it. `q` [B,
// kv_heads, groups, hd] f32 (already scaled), `cache` the layer's K (or V)
// [kv_heads * slots, hd] f32, `index` the decode group's head-major rows
// [B * kv_heads * lmax] (int64). Scores: returns [B, kv_heads, groups, lmax]
// = q . K[row]. PV (`probs` in place of q, [B, kv_heads, groups, lmax]):
// returns [B, kv_heads, groups, hd] = sum over t of probs * V[row].
at::Tensor* steward_paged_attention(const at::Tensor* a, const at::Tensor* cache, const at::Tensor* index,
                                    int64_t lmax, int32_t pv, char* err, size_t err_len) {
  return guarded(err, err_len, [&]() -> at::Tensor* {
#if defined(__x86_64__)
    TORCH_CHECK(steward_panel_available(), "paged attention: this CPU has no AVX-512 (F, BW, VL)");
    TORCH_CHECK(a->dim() == 4 && a->scalar_type() == at::kFloat && a->is_contiguous() && a->device().is_cpu(),
                "paged attention: input must be a contiguous CPU f32 [B, kv_heads, groups, n], got ", a->sizes());
    TORCH_CHECK(cache->dim() == 2 && cache->scalar_type() == at::kFloat && cache->is_contiguous() &&
                    cache->device().is_cpu(),
                "paged attention: cache must be a contiguous CPU f32 [rows, hd], got ", cache->sizes());
    const int64_t b = a->size(0), n_kv = a->size(1), groups = a->size(2), hd = cache->size(1);
    TORCH_CHECK(hd % 16 == 0, "paged attention: head dim ", hd, " is not a multiple of 16");
    TORCH_CHECK(lmax > 0, "paged attention: empty context");
    TORCH_CHECK(a->size(3) == (pv ? lmax : hd), "paged attention: input's last dim ", a->size(3), " does not match");
    TORCH_CHECK(index->dim() == 1 && index->scalar_type() == at::kLong && index->is_contiguous() &&
                    index->numel() == b * n_kv * lmax,
                "paged attention: index must be contiguous int64 [B * kv_heads * lmax]");
    const int64_t* rows = index->data_ptr<int64_t>();
    const int64_t n_rows = cache->size(0);
    for (int64_t i = 0; i < index->numel(); i++)
      TORCH_CHECK(rows[i] >= 0 && rows[i] < n_rows, "paged attention: row ", rows[i], " outside the cache");
    at::Tensor y = at::empty({b, n_kv, groups, pv ? hd : lmax}, a->options());
    const float* ap = a->data_ptr<float>();
    const float* cp = cache->data_ptr<float>();
    float* yp = y.data_ptr<float>();
    const int64_t a_step = groups * a->size(3), y_step = groups * y.size(3);
    at::parallel_for(0, b * n_kv, 1, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; i++) {
        if (pv) {
          steward_paged_pv_f32(ap + i * a_step, groups, hd, cp, rows + i * lmax, lmax, yp + i * y_step);
        } else {
          steward_paged_scores_f32(ap + i * a_step, groups, hd, cp, rows + i * lmax, lmax, yp + i * y_step);
        }
      }
    });
    return new at::Tensor(std::move(y));
#else
    (void)a;
    (void)cache;
    (void)index;
    (void)lmax;
    (void)pv;
    copy_error("paged attention: x86-64 only", err, err_len);
    return nullptr;
#endif
  });
}

}  // extern "C"
