// Two oneDNN linear operators that libtorch registers but tch does not wrap:
// mkldnn::_reorder_linear_weight lays a [out, in] weight out once in oneDNN's
// blocked format, and mkldnn::_linear_pointwise multiplies by such a weight
// without re-packing it on every call (which MKL's sgemm does at batch > 1).
// They are called through the dispatcher by name, so nothing here depends on
// how libtorch was built beyond those two registered schemas.
//
// Tensors cross the boundary as tch does it: `at::Tensor*`, and a returned
// tensor is a `new at::Tensor` the Rust side owns (freed by tch's at_free).
#include <ATen/Context.h>
#include <ATen/core/Tensor.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/ivalue.h>
#include <ATen/core/stack.h>

#include <cstring>
#include <exception>
#include <string>

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
  try {
    torch::jit::Stack stack;
    stack.emplace_back(*w);
    stack.emplace_back(c10::IValue());  // batch_size: None (any)
    return call(reorder_op(), std::move(stack));
  } catch (const std::exception& e) {
    copy_error(e.what(), err, err_len);
  } catch (...) {
    copy_error("unknown C++ exception", err, err_len);
  }
  return nullptr;
}

at::Tensor* steward_onednn_linear(const at::Tensor* x, const at::Tensor* w, char* err, size_t err_len) {
  try {
    torch::jit::Stack stack;
    stack.emplace_back(*x);
    stack.emplace_back(*w);
    stack.emplace_back(c10::IValue());  // no bias
    stack.emplace_back(std::string("none"));
    stack.emplace_back(c10::List<std::optional<at::Scalar>>());
    stack.emplace_back(std::string(""));
    return call(linear_op(), std::move(stack));
  } catch (const std::exception& e) {
    copy_error(e.what(), err, err_len);
  } catch (...) {
    copy_error("unknown C++ exception", err, err_len);
  }
  return nullptr;
}

}  // extern "C"
