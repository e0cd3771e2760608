// libaihw_ort_ops.so: the onnxruntime custom ops ai.aihw::AnalogMatMul and ai.aihw::AnalogConv
// (contract: ort_ops/README.md).
//
// A thin adapter from OrtKernelContext to rpucuda: programming, drift and read noise come from
// inference_noise.h, the analog product from io_pipeline.h -- the same functions the PyTorch
// inference tile calls.  Written against the C API of onnxruntime 1.21 (API 21); the library
// gets the API table from the OrtApiBase passed to RegisterCustomOps and does not link
// libonnxruntime.  No C++ exception crosses the C boundary: CreateKernelV2 and KernelComputeV2
// catch everything and return an OrtStatus.
//
// CPU kernels always; CUDA execution-provider kernels of the same ops in builds with
// RPU_WITH_CUDA (rpucuda's CUDA twins, rpucuda/cuda/rpucuda_cuda.h, launched on the kernel
// context's compute stream).  One kernel class serves both: attributes, input checks, seeds and
// call counters are shared; only where the chip lives and which rpucuda functions run differ.
// This file is compiled by the host compiler: it includes no CUDA header.
#include <onnxruntime_c_api.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <new>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "inference_noise.h"
#include "io_pipeline.h"
#include "parameters.h"
#include "threading.h"
#ifdef RPU_WITH_CUDA
#include "rpucuda_cuda.h"
#endif

#ifndef AIHW_ORT_API_VERSION
#define AIHW_ORT_API_VERSION 21
#endif
static_assert(ORT_API_VERSION >= AIHW_ORT_API_VERSION, "onnxruntime headers older than API 21");

#define AIHW_EXPORT __attribute__((visibility("default")))

namespace aihw_ort {
namespace {

const OrtApi *g_api = nullptr;
constexpr const char *kDomain = "ai.aihw";
constexpr size_t kMaxCachedTimes = 8;  // chip states kept per kernel (one per t_inference value)
#ifdef RPU_WITH_CUDA
constexpr size_t kMaxCachedTimesDevice = 2;  // the same on the GPU (device memory: one W per state)
constexpr const char *kCudaEP = "CUDAExecutionProvider";
#endif

// ---------------------------------------------------------------------------------------------
// Errors: thrown inside the library, turned into an OrtStatus at the C boundary.

struct Error : std::runtime_error {
  OrtErrorCode code;
  Error(OrtErrorCode c, const std::string &m) : std::runtime_error(m), code(c) {}
};

[[noreturn]] void fail(const std::string &msg, OrtErrorCode code = ORT_INVALID_ARGUMENT) {
  throw Error(code, msg);
}

void check(OrtStatus *st) {
  if (st == nullptr) return;
  std::string msg = g_api->GetErrorMessage(st);
  OrtErrorCode code = g_api->GetErrorCode(st);
  g_api->ReleaseStatus(st);
  throw Error(code, msg);
}

// Runs fn, converting every exception into an OrtStatus (nullptr on success).
template <typename F>
OrtStatus *guarded(F &&fn) noexcept {
  try {
    fn();
    return nullptr;
  } catch (const Error &e) {
    return g_api->CreateStatus(e.code, e.what());
  } catch (const std::bad_alloc &) {
    return g_api->CreateStatus(ORT_FAIL, "aihw_ort_ops: out of memory");
  } catch (const std::exception &e) {
    return g_api->CreateStatus(ORT_FAIL, (std::string("aihw_ort_ops: ") + e.what()).c_str());
  } catch (...) {
    return g_api->CreateStatus(ORT_FAIL, "aihw_ort_ops: unknown C++ exception");
  }
}

// Ignores a status (used to probe for attributes).
bool ok(OrtStatus *st) {
  if (st == nullptr) return true;
  g_api->ReleaseStatus(st);
  return false;
}

std::string fmt(double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%g", v);
  return buf;
}

std::string shape_str(const std::vector<int64_t> &s) {
  std::string r = "[";
  for (size_t i = 0; i < s.size(); ++i) r += (i ? ", " : "") + std::to_string(s[i]);
  return r + "]";
}

// Lower case without underscores: "abs_max", "AbsMax" and "ABS_MAX" all read "absmax".
std::string norm_enum(const std::string &s) {
  std::string r;
  for (char c : s)
    if (c != '_' && c != '-' && c != ' ') r += (char)std::tolower((unsigned char)c);
  return r;
}

// ---------------------------------------------------------------------------------------------
// Attributes.

class Attrs {
 public:
  Attrs(const OrtKernelInfo *info, std::string op, std::string node)
      : info_(info), op_(std::move(op)), node_(std::move(node)) {}

  [[noreturn]] void bad(const std::string &name, const std::string &msg) const {
    fail(op_ + ": attribute " + name + ": " + msg + where());
  }
  std::string where() const { return node_.empty() ? "" : " (node '" + node_ + "')"; }

  // Attribute kinds present under `name` (any of them), for type-mismatch messages.
  bool exists(const char *name) const {
    float f;
    int64_t i;
    size_t n = 0;
    return ok(g_api->KernelInfoGetAttribute_float(info_, name, &f)) ||
           ok(g_api->KernelInfoGetAttribute_int64(info_, name, &i)) ||
           ok(g_api->KernelInfoGetAttribute_string(info_, name, nullptr, &n)) ||
           (n = 0, ok(g_api->KernelInfoGetAttributeArray_float(info_, name, nullptr, &n))) ||
           (n = 0, ok(g_api->KernelInfoGetAttributeArray_int64(info_, name, nullptr, &n)));
  }

  // onnxruntime reads a scalar attribute as an empty list: reject a scalar where a list is due.
  void reject_scalar(const char *name, const char *expected) const {
    float f;
    int64_t i;
    size_t n = 0;
    if (ok(g_api->KernelInfoGetAttribute_float(info_, name, &f)) ||
        ok(g_api->KernelInfoGetAttribute_int64(info_, name, &i)) ||
        ok(g_api->KernelInfoGetAttribute_string(info_, name, nullptr, &n)))
      bad(name, std::string("expected ") + expected + ", got a single value");
  }

  // A float attribute (an int is accepted too).
  float get_float(const char *name, float def, bool *present = nullptr) const {
    float f;
    int64_t i;
    if (present) *present = true;
    if (ok(g_api->KernelInfoGetAttribute_float(info_, name, &f))) return f;
    if (ok(g_api->KernelInfoGetAttribute_int64(info_, name, &i))) return (float)i;
    if (exists(name)) bad(name, "expected a float");
    if (present) *present = false;
    return def;
  }

  int64_t get_int(const char *name, int64_t def) const {
    int64_t i;
    if (ok(g_api->KernelInfoGetAttribute_int64(info_, name, &i))) return i;
    if (exists(name)) bad(name, "expected an int");
    return def;
  }

  bool get_bool(const char *name, bool def) const {
    int64_t v = get_int(name, def ? 1 : 0);
    if (v != 0 && v != 1) bad(name, "expected 0 or 1, got " + std::to_string(v));
    return v != 0;
  }

  std::string get_string(const char *name, const std::string &def) const {
    size_t n = 0;
    if (!ok(g_api->KernelInfoGetAttribute_string(info_, name, nullptr, &n))) {
      if (exists(name)) bad(name, "expected a string");
      return def;
    }
    std::string s(n, '\0');
    check(g_api->KernelInfoGetAttribute_string(info_, name, &s[0], &n));
    s.resize(std::strlen(s.c_str()));
    return s;
  }

  std::vector<float> get_floats(const char *name, bool *present) const {
    size_t n = 0;
    *present = false;
    if (!ok(g_api->KernelInfoGetAttributeArray_float(info_, name, nullptr, &n))) {
      if (exists(name)) bad(name, "expected a list of floats");
      return {};
    }
    if (n == 0) reject_scalar(name, "a list of floats");
    *present = true;
    std::vector<float> v(n);
    if (n) check(g_api->KernelInfoGetAttributeArray_float(info_, name, v.data(), &n));
    return v;
  }

  std::vector<int64_t> get_ints(const char *name, bool *present) const {
    size_t n = 0;
    *present = false;
    if (!ok(g_api->KernelInfoGetAttributeArray_int64(info_, name, nullptr, &n))) {
      if (exists(name)) bad(name, "expected a list of ints");
      return {};
    }
    if (n == 0) reject_scalar(name, "a list of ints");
    *present = true;
    std::vector<int64_t> v(n);
    if (n) check(g_api->KernelInfoGetAttributeArray_int64(info_, name, v.data(), &n));
    return v;
  }

  template <typename E>
  E get_enum(const char *name, E def, const std::vector<std::pair<const char *, E>> &table) const {
    bool present = false;
    size_t n = 0;
    present = ok(g_api->KernelInfoGetAttribute_string(info_, name, nullptr, &n));
    if (!present) {
      if (exists(name)) bad(name, "expected a string");
      return def;
    }
    const std::string s = get_string(name, "");
    const std::string k = norm_enum(s);
    std::string names;
    for (const auto &e : table) {
      if (norm_enum(e.first) == k) return e.second;
      names += (names.empty() ? "" : ", ") + std::string(e.first);
    }
    bad(name, "unknown value '" + s + "' (expected one of: " + names + ")");
  }

 private:
  const OrtKernelInfo *info_;
  std::string op_, node_;
};

// ---------------------------------------------------------------------------------------------
// Tensors.

struct TensorView {
  const OrtValue *value = nullptr;
  ONNXTensorElementDataType type = ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
  std::vector<int64_t> shape;
  int64_t numel = 0;
  void *data = nullptr;
};

TensorView view(const OrtValue *v) {
  TensorView t;
  t.value = v;
  OrtTensorTypeAndShapeInfo *info = nullptr;
  check(g_api->GetTensorTypeAndShape(v, &info));
  size_t nd = 0;
  OrtStatus *st = g_api->GetTensorElementType(info, &t.type);
  if (!st) st = g_api->GetDimensionsCount(info, &nd);
  if (!st) {
    t.shape.resize(nd);
    if (nd) st = g_api->GetDimensions(info, t.shape.data(), nd);
  }
  g_api->ReleaseTensorTypeAndShapeInfo(info);
  check(st);
  t.numel = 1;
  for (int64_t d : t.shape) t.numel *= d;
  check(g_api->GetTensorMutableData(const_cast<OrtValue *>(v), &t.data));
  return t;
}

const float *fdata(const TensorView &t) { return static_cast<const float *>(t.data); }

// 0 if all values are finite, else 1 if some value is NaN, 2 if some is +-Inf (and none NaN).
int nonfinite_kind(const float *x, int64_t n) {
  // Fast path on the exponent bits (an integer OR-reduction vectorizes).
  uint32_t any = 0;
  for (int64_t i = 0; i < n; ++i) {
    uint32_t u;
    std::memcpy(&u, x + i, sizeof u);
    any |= (uint32_t)((u & 0x7f800000u) == 0x7f800000u);
  }
  if (!any) return 0;
  for (int64_t i = 0; i < n; ++i)
    if (std::isnan(x[i])) return 1;
  return 2;
}

// ---------------------------------------------------------------------------------------------
// The kernel.

enum class OpKind { MatMul, Conv };

struct TileSeeds {
  uint64_t seed = 0, call_offset = 0, program_seed = 0;
};

// Chip weights (and drift-compensation factors) of every tile at one value of t_inference.
struct ChipAt {
  std::vector<std::vector<float>> W;      // per tile, Mg*Kg
  std::vector<std::vector<float>> alpha;  // per tile: empty (no compensation), 1 or Mg values
};

// One programmed chip: every tile of the node.
struct Programmed {
  std::vector<float> w_src;  // the weights programmed (kept only when W is not constant)
  std::vector<rpu::ProgrammedWeights> pw;
  std::vector<std::vector<float>> ref;  // compensation references per tile (or empty)
  std::mutex mu;                        // guards chips / order
  std::map<uint32_t, std::shared_ptr<const ChipAt>> chips;
  std::deque<uint32_t> order;
};

struct ConvGeometry {
  int d = 0;  // spatial dims (0 = not yet known)
  std::string d_from;  // what fixed d
  std::vector<int64_t> kernel, strides, pads, dilations;  // attribute values (may be empty)
  int64_t group = 1;
};

// The geometry of one AnalogConv run, padded to 3 spatial dims (leading dims of size 1).
struct ConvDims {
  int64_t S[3] = {1, 1, 1}, K[3] = {1, 1, 1}, stride[3] = {1, 1, 1}, pad[3] = {0, 0, 0}, dil[3] = {1, 1, 1},
          L[3] = {1, 1, 1};
  int64_t N = 0, C = 0, Cg = 0, Lt = 1, St = 1;
  std::vector<int64_t> yshape;  // [N, M, *out_spatial]
};

#ifdef RPU_WITH_CUDA
// ---------------------------------------------------------------------------------------------
// Device state of the CUDA kernels.

// Makes `device` current for the calling thread and restores the previous device afterwards
// (onnxruntime's own CUDA kernels share the thread).
class DeviceGuard {
 public:
  explicit DeviceGuard(int device) : prev_(rpu::cuda::current_device()), device_(device) {
    if (prev_ != device_) rpu::cuda::set_device(device_);
  }
  ~DeviceGuard() {
    if (prev_ != device_) try {
        rpu::cuda::set_device(prev_);
      } catch (...) {
      }
  }
  DeviceGuard(const DeviceGuard &) = delete;
  DeviceGuard &operator=(const DeviceGuard &) = delete;

 private:
  int prev_, device_;
};

// Floats in device memory owned by a kernel (cudaMalloc through rpu::cuda::device_malloc; the
// caller has made `device` current).  Freeing (cudaFree) synchronizes the device, so a buffer
// dropped while a kernel launched on another stream still reads it is freed only after that
// kernel finished.
struct DeviceArray {
  float *p = nullptr;
  int device = -1;
  DeviceArray() = default;
  DeviceArray(size_t n, int dev) : device(dev) {
    if (n) p = static_cast<float *>(rpu::cuda::device_malloc(n * sizeof(float)));
  }
  DeviceArray(DeviceArray &&o) noexcept : p(o.p), device(o.device) { o.p = nullptr; }
  DeviceArray &operator=(DeviceArray &&o) noexcept {
    std::swap(p, o.p);
    std::swap(device, o.device);
    return *this;
  }
  DeviceArray(const DeviceArray &) = delete;
  DeviceArray &operator=(const DeviceArray &) = delete;
  ~DeviceArray() {
    if (!p) return;
    try {
      DeviceGuard g(device);
      rpu::cuda::device_free(p);
    } catch (...) {  // a destructor reports nothing; the driver reclaims the memory at exit
    }
  }
};

// Chip weights (and drift-compensation factors) of every tile at one value of t_inference, on
// the device (the twin of ChipAt).
struct DeviceChipAt {
  std::vector<DeviceArray> W;      // per tile, Mg*Kg
  std::vector<DeviceArray> alpha;  // per tile: none (no compensation), 1 or Mg values
};

// One programmed chip on the device (the twin of Programmed).
struct DeviceProgrammed {
  struct Tile {
    DeviceArray g_plus, g_minus, nu_plus, nu_minus, ref;
    rpu::cuda::ProgrammedView view;
  };
  int device = -1;
  std::vector<float> w_src;  // host copy of the weights programmed (only when W is not constant)
  std::vector<Tile> tiles;
  std::mutex mu;  // guards chips / order
  std::map<uint32_t, std::shared_ptr<const DeviceChipAt>> chips;
  std::deque<uint32_t> order;
};

// onnxruntime scratch memory of one run: from the execution provider's allocator, ordered on
// the kernel's compute stream (returned at the end of the run while the launches may still be
// in flight, as onnxruntime's own CUDA kernels do).
class DeviceScratch {
 public:
  DeviceScratch(OrtKernelContext *ctx, OrtAllocator *alloc, size_t n_floats) : alloc_(alloc) {
    void *p = nullptr;
    check(g_api->KernelContext_GetScratchBuffer(ctx, alloc->Info(alloc), n_floats * sizeof(float), &p));
    if (p == nullptr && n_floats) fail("aihw_ort_ops: no device scratch memory", ORT_FAIL);
    p_ = static_cast<float *>(p);
  }
  ~DeviceScratch() {
    if (p_) alloc_->Free(alloc_, p_);
  }
  DeviceScratch(const DeviceScratch &) = delete;
  DeviceScratch &operator=(const DeviceScratch &) = delete;
  float *get() const { return p_; }

 private:
  OrtAllocator *alloc_;
  float *p_ = nullptr;
};
#endif  // RPU_WITH_CUDA

class AnalogKernel {
 public:
  // cuda: the kernel of the CUDA execution provider (X, W, B and Y in device memory; seed and
  // t_inference in host memory, OrtMemTypeCPUInput).
  AnalogKernel(OpKind kind, bool cuda, const OrtKernelInfo *info) : kind_(kind), cuda_(cuda) {
    op_ = kind == OpKind::MatMul ? "AnalogMatMul" : "AnalogConv";
    size_t n = 0;
    if (ok(g_api->KernelInfo_GetNodeName(info, nullptr, &n)) && n > 1) {
      std::string s(n, '\0');
      if (ok(g_api->KernelInfo_GetNodeName(info, &s[0], &n))) node_ = s.c_str();
    }
    Attrs a(info, op_, node_);
    read_attributes(a);
    size_t n_inputs = 0;
    check(g_api->KernelInfo_GetInputCount(info, &n_inputs));
    if (n_inputs < 2) fail(op_ + ": expected inputs X and W, the node has " + std::to_string(n_inputs) + where());
    // W as a constant initializer: validate and program now (one session = one chip).  On the
    // CUDA EP the initializer is in device memory: the shape is checked now, the values and the
    // programming at the first run (on the run's stream).
    int is_const = 0;
    const OrtValue *wv = nullptr;
    if (ok(g_api->KernelInfoGetConstantInput_tensor(info, 1, &is_const, &wv)) && is_const && wv) {
      TensorView w = view(wv);
      check_weights(w, cuda_ ? nullptr : fdata(w));
      w_constant_ = true;
      if (pcm_ && !cuda_) {
        auto p = program(fdata(w), false);
        chip_at(*p, t_default_);  // the chip at the default time, ready for the first run
        prog_ = std::move(p);
      }
    }
    if (n_inputs >= 3) {
      const OrtValue *bv = nullptr;
      if (ok(g_api->KernelInfoGetConstantInput_tensor(info, 2, &is_const, &bv)) && is_const && bv) {
        TensorView b = view(bv);
        if (b.type != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT) fail(op_ + ": input B must be float" + where());
      }
    }
#ifdef RPU_WITH_CUDA
    // The execution provider's device allocator: scratch memory of the runs (AnalogConv's im2col).
    if (cuda_) check(g_api->KernelInfoGetAllocator(info, OrtMemTypeDefault, &alloc_));
#endif
  }

  ~AnalogKernel() {
#ifdef RPU_WITH_CUDA
    {
      std::lock_guard<std::mutex> lk(prog_mu_);
      dev_prog_.reset();  // device buffers (the chip) are freed here, in KernelDestroy
    }
    if (alloc_) g_api->ReleaseAllocator(alloc_);
#endif
  }
  AnalogKernel(const AnalogKernel &) = delete;
  AnalogKernel &operator=(const AnalogKernel &) = delete;

  void compute(OrtKernelContext *ctx) {
#ifdef RPU_WITH_CUDA
    if (cuda_) return compute_cuda(ctx);
#endif
    compute_cpu(ctx);
  }

 private:
  // The inputs of one run, checked (types, shapes, seed and t_inference values); X and W values
  // are checked by the caller, in the memory they live in.
  struct RunInputs {
    TensorView x, w;
    const float *b = nullptr;  // host (CPU EP) or device (CUDA EP) memory
    bool seeded = false;
    uint64_t seed = 0;
    float t = 0.0f;
  };

  RunInputs read_inputs(OrtKernelContext *ctx) {
    size_t n_in = 0;
    check(g_api->KernelContext_GetInputCount(ctx, &n_in));
    auto input = [&](size_t i) -> const OrtValue * {
      if (i >= n_in) return nullptr;
      const OrtValue *v = nullptr;
      check(g_api->KernelContext_GetInput(ctx, i, &v));
      return v;
    };
    RunInputs in;
    const OrtValue *xv = input(0), *wv = input(1);
    if (!xv) fail(op_ + ": input X is missing" + where());
    if (!wv) fail(op_ + ": input W is missing" + where());
    in.x = view(xv);
    in.w = view(wv);
    if (!w_constant_) check_weights(in.w, cuda_ ? nullptr : fdata(in.w));
    if (const OrtValue *bv = input(2)) {
      TensorView bt = view(bv);
      if (bt.type != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT) fail(op_ + ": input B must be float" + where());
      if (bt.shape.size() != 1 || bt.shape[0] != M_)
        fail(op_ + ": input B must have shape [" + std::to_string(M_) + "], got " + shape_str(bt.shape) + where());
      in.b = fdata(bt);
    }
    // seed and t_inference are host memory on every EP (CPU inputs of the CUDA kernel).
    if (const OrtValue *sv = input(3)) {
      TensorView st = view(sv);
      if (st.numel != 1 || st.shape.size() > 1)
        fail(op_ + ": input seed must be an int64 scalar, got shape " + shape_str(st.shape) + where());
      const int64_t s = *static_cast<const int64_t *>(st.data);
      if (s >= 0) {  // a negative seed means "no seed" (the kernel's own call sequence)
        in.seeded = true;
        in.seed = (uint64_t)s;
      }
    }
    in.t = t_default_;
    if (const OrtValue *tv = input(4)) {
      TensorView tt = view(tv);
      if (tt.numel != 1 || tt.shape.size() > 1)
        fail(op_ + ": input t_inference must be a float scalar, got shape " + shape_str(tt.shape) + where());
      in.t = *fdata(tt);
      if (!std::isfinite(in.t) || in.t < 0.0f)
        fail(op_ + ": input t_inference must be a finite number of seconds >= 0, got " + fmt(in.t) + where());
    }
    if (kind_ == OpKind::MatMul)
      check_matmul_input(in.x);
    else
      check_conv_input(in.x);
    return in;
  }

  void fail_nonfinite(const char *what, int kind) const {
    if (kind) fail(op_ + ": input " + what + " contains " + (kind == 1 ? "NaN" : "Inf") + where());
  }

  // The generator of tile g's per-call noise in a run (README: "The `seed` input").
  rpu::MVMCall mvm_call(const RunInputs &in, uint64_t run, int g) const {
    return in.seeded ? rpu::MVMCall{in.seed, 0} : rpu::MVMCall{tiles_[g].seed, tiles_[g].call_offset + run};
  }

  // The index of this run among the kernel's unseeded runs (seeded runs do not advance it).
  uint64_t next_run(const RunInputs &in) {
    return in.seeded ? 0 : runs_.fetch_add(1, std::memory_order_relaxed);
  }

  void compute_cpu(OrtKernelContext *ctx) {
    const RunInputs in = read_inputs(ctx);
    const TensorView &x = in.x, &w = in.w;
    if (x.numel > 0) fail_nonfinite("X", nonfinite_kind(fdata(x), x.numel));
    ConvDims cd;
    if (kind_ == OpKind::Conv) cd = conv_dims(x);

    // Weights of this run: the chip at t (pcm) or the reference weights.
    std::shared_ptr<Programmed> prog;
    std::shared_ptr<const ChipAt> chip;
    if (pcm_) {
      prog = programmed(fdata(w));
      chip = chip_at(*prog, in.t);
    }
    const uint64_t run = next_run(in);
    auto call = [&](int g) { return mvm_call(in, run, g); };
    auto weights = [&](int g) -> const float * {
      return chip ? chip->W[g].data() : fdata(w) + (int64_t)g * Mg_ * Kg_;
    };
    auto alpha = [&](int g, int *n) -> const float * {
      if (!chip || chip->alpha[g].empty()) {
        *n = 0;
        return nullptr;
      }
      *n = (int)chip->alpha[g].size();
      return chip->alpha[g].data();
    };

    if (kind_ == OpKind::MatMul)
      run_matmul(ctx, x, in.b, weights(0), alpha, call(0));
    else
      run_conv(ctx, x, cd, in.b, weights, alpha, call);
  }

  std::string where() const { return node_.empty() ? "" : " (node '" + node_ + "')"; }

  void read_attributes(const Attrs &a) {
    using NM = rpu::NoiseManagementType;
    using BM = rpu::BoundManagementType;
    using WN = rpu::WeightNoiseType;
    rpu::IOParameters &io = io_;
    io.is_perfect = a.get_bool("is_perfect", io.is_perfect);
    io.inp_bound = a.get_float("inp_bound", io.inp_bound);
    io.inp_res = a.get_float("inp_res", io.inp_res);
    io.inp_sto_round = a.get_bool("inp_sto_round", io.inp_sto_round);
    io.inp_noise = a.get_float("inp_noise", io.inp_noise);
    io.out_bound = a.get_float("out_bound", io.out_bound);
    io.out_res = a.get_float("out_res", io.out_res);
    io.out_sto_round = a.get_bool("out_sto_round", io.out_sto_round);
    io.out_noise = a.get_float("out_noise", io.out_noise);
    io.out_scale = a.get_float("out_scale", io.out_scale);
    io.w_noise = a.get_float("w_noise", io.w_noise);
    io.w_noise_type = a.get_enum<WN>("w_noise_type", io.w_noise_type,
                                     {{"none", WN::None}, {"additive_constant", WN::AdditiveConstant},
                                      {"pcm_read", WN::PCMRead}});
    io.noise_management = a.get_enum<NM>("noise_management", io.noise_management,
                                         {{"none", NM::None}, {"abs_max", NM::AbsMax}, {"max", NM::Max},
                                          {"average_abs_max", NM::AverageAbsMax}, {"constant", NM::Constant}});
    io.bound_management = a.get_enum<BM>("bound_management", io.bound_management,
                                         {{"none", BM::None}, {"iterative", BM::Iterative},
                                          {"iterative_worst_case", BM::IterativeWorstCase}});
    io.nm_thres = a.get_float("nm_thres", io.nm_thres);
    io.max_bm_factor = a.get_float("max_bm_factor", io.max_bm_factor);
    io.max_bm_res = a.get_float("max_bm_res", io.max_bm_res);
    std::string msg = rpu::validate(io);
    if (!msg.empty()) fail(op_ + ": invalid attribute: " + msg + where());

    const int64_t mi = a.get_int("max_input_size", map_.max_input_size);
    const int64_t mo = a.get_int("max_output_size", map_.max_output_size);
    if (mi < 1 || mi >= (1 << 20)) a.bad("max_input_size", "must be in [1, 2^20), got " + std::to_string(mi));
    if (mo < 1 || mo >= (1 << 20)) a.bad("max_output_size", "must be in [1, 2^20), got " + std::to_string(mo));
    map_.max_input_size = (int)mi;
    map_.max_output_size = (int)mo;

    const std::string model = a.get_string("noise_model", "none");
    if (norm_enum(model) == "pcm")
      pcm_ = true;
    else if (norm_enum(model) != "none" && !model.empty())
      a.bad("noise_model", "unknown value '" + model + "' (expected one of: none, pcm)");
    bool present = false;
    std::vector<float> pc = a.get_floats("prog_coeff", &present);
    if (present) {
      if (pc.size() != 3) a.bad("prog_coeff", "expected 3 floats (c0, c1, c2), got " + std::to_string(pc.size()));
      for (int i = 0; i < 3; ++i) noise_.prog_coeff[i] = pc[i];
    }
    noise_.g_max = a.get_float("g_max", noise_.g_max);
    noise_.g_min = a.get_float("g_min", noise_.g_min);
    noise_.t_read = a.get_float("t_read", noise_.t_read);
    noise_.t_0 = a.get_float("t_0", noise_.t_0);
    noise_.prog_noise_scale = a.get_float("prog_noise_scale", noise_.prog_noise_scale);
    noise_.read_noise_scale = a.get_float("read_noise_scale", noise_.read_noise_scale);
    noise_.drift_scale = a.get_float("drift_scale", noise_.drift_scale);
    msg = rpu::validate(noise_);
    if (!msg.empty()) fail(op_ + ": invalid attribute: " + msg + where());
    t_default_ = a.get_float("t_inference", 0.0f);
    if (!std::isfinite(t_default_) || t_default_ < 0.0f)
      a.bad("t_inference", "must be a finite number of seconds >= 0, got " + fmt(t_default_));
    using DC = rpu::DriftCompensationType;
    comp_ = a.get_enum<DC>("drift_compensation", DC::None,
                           {{"none", DC::None}, {"global", DC::Global}, {"per_column", DC::PerColumn}});

    if (kind_ == OpKind::Conv) {
      ConvGeometry &c = conv_;
      c.group = a.get_int("group", 1);
      if (c.group < 1) a.bad("group", "must be >= 1, got " + std::to_string(c.group));
      bool p1, p2, p3, p4;
      c.kernel = a.get_ints("kernel_shape", &p1);
      c.strides = a.get_ints("strides", &p2);
      c.pads = a.get_ints("pads", &p3);
      c.dilations = a.get_ints("dilations", &p4);
      const std::string auto_pad = a.get_string("auto_pad", "NOTSET");
      if (auto_pad != "NOTSET" && auto_pad != "VALID" && !auto_pad.empty())
        a.bad("auto_pad", "only NOTSET (explicit pads) and VALID are supported, got '" + auto_pad + "'");
      if (auto_pad == "VALID") {
        for (int64_t v : c.pads)
          if (v != 0) a.bad("pads", "must be 0 (or absent) with auto_pad = VALID");
        p3 = false;
        c.pads.clear();
      }
      if (p1) set_dims((int)c.kernel.size(), "attribute kernel_shape");
      if (p2) set_dims((int)c.strides.size(), "attribute strides");
      if (p3) {
        if (c.pads.size() % 2) a.bad("pads", "expected 2 values per spatial dimension, got " + std::to_string(c.pads.size()));
        set_dims((int)c.pads.size() / 2, "attribute pads");
      }
      if (p4) set_dims((int)c.dilations.size(), "attribute dilations");
      for (int64_t v : c.kernel)
        if (v < 1) a.bad("kernel_shape", "values must be >= 1");
      for (int64_t v : c.strides)
        if (v < 1) a.bad("strides", "values must be >= 1");
      for (int64_t v : c.dilations)
        if (v < 1) a.bad("dilations", "values must be >= 1");
      for (int64_t v : c.pads)
        if (v < 0) a.bad("pads", "values must be >= 0");
      const size_t h = c.pads.size() / 2;
      for (size_t i = 0; i < h; ++i)
        if (c.pads[i] != c.pads[i + h])
          a.bad("pads", "begin and end padding must be equal (symmetric padding), got " + shape_str(c.pads));
    }
    n_tiles_ = kind_ == OpKind::Conv ? (int)conv_.group : 1;

    bool ps, pc2, pp;
    std::vector<int64_t> seeds = a.get_ints("seeds", &ps);
    std::vector<int64_t> calls = a.get_ints("call_offsets", &pc2);
    std::vector<int64_t> pseeds = a.get_ints("program_seeds", &pp);
    auto check_len = [&](const char *name, bool present, const std::vector<int64_t> &v) {
      if (present && (int)v.size() != n_tiles_)
        a.bad(name, "expected " + std::to_string(n_tiles_) + " value(s) (one per tile" +
                        (kind_ == OpKind::Conv ? std::string(", i.e. per group") : std::string()) + "), got " +
                        std::to_string(v.size()));
    };
    check_len("seeds", ps, seeds);
    check_len("call_offsets", pc2, calls);
    check_len("program_seeds", pp, pseeds);
    for (int64_t c : calls)
      if (c < 0) a.bad("call_offsets", "values must be >= 0");
    tiles_.resize(n_tiles_);
    for (int g = 0; g < n_tiles_; ++g) {
      tiles_[g].seed = ps ? (uint64_t)seeds[g] : 0;
      tiles_[g].call_offset = pc2 ? (uint64_t)calls[g] : 0;
      tiles_[g].program_seed = pp ? (uint64_t)pseeds[g] : tiles_[g].seed;
    }
  }

  // Records the number of spatial dimensions given by `what` ("attribute strides", "input W").
  void set_dims(int d, const std::string &what) {
    if (d < 1 || d > 3)
      fail(op_ + ": " + what + ": 1, 2 or 3 spatial dimensions are supported, got " + std::to_string(d) + where());
    if (conv_.d != 0 && conv_.d != d)
      fail(op_ + ": " + what + " has " + std::to_string(d) + " spatial dimension(s), but " + conv_.d_from + " has " +
           std::to_string(conv_.d) + where());
    if (conv_.d == 0) conv_.d_from = what;
    conv_.d = d;
  }

  // Validates W (shape against the attributes; values, given in host memory) and records the
  // tile sizes.  The CUDA kernel passes values = nullptr and checks them on the device.
  void check_weights(const TensorView &w, const float *values) {
    if (w.type != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT) fail(op_ + ": input W must be float" + where());
    std::lock_guard<std::mutex> lk(shape_mu_);
    if (have_shape_) {
      if (w.shape != w_shape_)
        fail(op_ + ": input W changed shape from " + shape_str(w_shape_) + " to " + shape_str(w.shape) + where());
      return;
    }
    if (kind_ == OpKind::MatMul) {
      if (w.shape.size() != 2) fail(op_ + ": input W must be a matrix [M, K], got shape " + shape_str(w.shape) + where());
      M_ = w.shape[0];
      Mg_ = M_;
      Kg_ = w.shape[1];
    } else {
      if (w.shape.size() < 3 || w.shape.size() > 5)
        fail(op_ + ": input W must be [M, C/group, k1, ...] with 1 to 3 kernel dimensions, got shape " + shape_str(w.shape) + where());
      set_dims((int)w.shape.size() - 2, "input W " + shape_str(w.shape));
      for (int i = 0; i < conv_.d; ++i)
        if (!conv_.kernel.empty() && conv_.kernel[i] != w.shape[2 + i])
          fail(op_ + ": attribute kernel_shape " + shape_str(conv_.kernel) + " does not match W of shape " + shape_str(w.shape) + where());
      M_ = w.shape[0];
      if (M_ % conv_.group)
        fail(op_ + ": W has " + std::to_string(M_) + " output channels, not divisible by group = " + std::to_string(conv_.group) + where());
      Mg_ = M_ / conv_.group;
      Kg_ = 1;
      for (size_t i = 1; i < w.shape.size(); ++i) Kg_ *= w.shape[i];
    }
    if (M_ <= 0 || Kg_ <= 0) fail(op_ + ": input W must not be empty, got shape " + shape_str(w.shape) + where());
    if (Mg_ >= INT32_MAX || Kg_ >= INT32_MAX || Mg_ * Kg_ >= ((int64_t)1 << 40))
      fail(op_ + ": input W is too large: " + shape_str(w.shape) + where());
    if (values) fail_nonfinite("W", nonfinite_kind(values, w.numel));
    w_shape_ = w.shape;
    have_shape_ = true;
  }

  // ---- chip ---------------------------------------------------------------------------------

  std::shared_ptr<Programmed> program(const float *W, bool keep_copy) const {
    auto p = std::make_shared<Programmed>();
    const int64_t per = Mg_ * Kg_;
    if (keep_copy) p->w_src.assign(W, W + per * n_tiles_);
    p->pw.resize(n_tiles_);
    p->ref.resize(n_tiles_);
    for (int g = 0; g < n_tiles_; ++g) {
      const float *Wg = W + g * per;
      rpu::pcm_program(Wg, (int)Mg_, (int)Kg_, noise_, tiles_[g].program_seed, p->pw[g]);
      p->ref[g].resize(comp_ == rpu::DriftCompensationType::None ? 0
                       : comp_ == rpu::DriftCompensationType::PerColumn ? (size_t)Mg_ : 1);
      rpu::chip_reference(p->pw[g], noise_, tiles_[g].program_seed, io_, map_, comp_, tiles_[g].seed,
                          p->ref[g].data());
    }
    return p;
  }

  // The programmed chip of this run's W (programmed lazily when W is not a constant).
  std::shared_ptr<Programmed> programmed(const float *W) {
    if (w_constant_) return prog_;  // programmed in the constructor, never replaced
    std::lock_guard<std::mutex> lk(prog_mu_);
    if (prog_ && (w_constant_ || std::memcmp(prog_->w_src.data(), W, sizeof(float) * prog_->w_src.size()) == 0))
      return prog_;
    prog_ = program(W, !w_constant_);
    return prog_;
  }

  // Chip weights and compensation at time t, cached per value of t.
  std::shared_ptr<const ChipAt> chip_at(Programmed &p, float t) const {
    uint32_t key;
    const float tk = t == 0.0f ? 0.0f : t;  // -0 -> 0
    std::memcpy(&key, &tk, sizeof key);
    {
      std::lock_guard<std::mutex> lk(p.mu);
      auto it = p.chips.find(key);
      if (it != p.chips.end()) return it->second;
    }
    // Computed outside the lock (deterministic: a concurrent duplicate gives the same values).
    auto c = std::make_shared<ChipAt>();
    const int64_t per = Mg_ * Kg_;
    c->W.resize(n_tiles_);
    c->alpha.resize(n_tiles_);
    for (int g = 0; g < n_tiles_; ++g) {
      c->W[g].resize((size_t)per);
      c->alpha[g].resize(p.ref[g].size());
      rpu::chip_at(p.pw[g], noise_, (double)t, tiles_[g].program_seed, io_, map_, comp_, tiles_[g].seed,
                   p.ref[g].data(), c->W[g].data(), c->alpha[g].data());
    }
    std::lock_guard<std::mutex> lk(p.mu);
    auto it = p.chips.find(key);
    if (it != p.chips.end()) return it->second;
    if (p.order.size() >= kMaxCachedTimes) {
      p.chips.erase(p.order.front());
      p.order.pop_front();
    }
    p.chips.emplace(key, c);
    p.order.push_back(key);
    return c;
  }

  // ---- AnalogMatMul -------------------------------------------------------------------------

  void check_matmul_input(const TensorView &x) const {
    if (x.type != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT) fail(op_ + ": input X must be float" + where());
    if (x.shape.empty()) fail(op_ + ": input X must have rank >= 1 ([*, K]), got a scalar" + where());
    if (x.shape.back() != Kg_)
      fail(op_ + ": input X has " + std::to_string(x.shape.back()) + " features in its last dimension (shape " +
           shape_str(x.shape) + "), W expects K = " + std::to_string(Kg_) + where());
    if (x.numel / std::max<int64_t>(Kg_, 1) >= INT32_MAX) fail(op_ + ": input X has too many rows" + where());
  }

  template <typename AlphaFn>
  void run_matmul(OrtKernelContext *ctx, const TensorView &x, const float *b, const float *W, AlphaFn &&alpha,
                  const rpu::MVMCall &call) {
    std::vector<int64_t> yshape = x.shape;
    yshape.back() = M_;
    OrtValue *yv = nullptr;
    check(g_api->KernelContext_GetOutput(ctx, 0, yshape.data(), yshape.size(), &yv));
    void *yp = nullptr;
    check(g_api->GetTensorMutableData(yv, &yp));
    float *Y = static_cast<float *>(yp);
    const int64_t N = x.numel / Kg_;
    if (N == 0) return;
    int na = 0;
    const float *al = alpha(0, &na);
    rpu::io_mvm(W, (int)M_, (int)Kg_, false, fdata(x), (int)N, Y, io_, map_, true, al, na, call);
    if (b) rpu::add_bias(Y, N, M_, b);
  }

  // ---- AnalogConv ---------------------------------------------------------------------------

  void check_conv_input(const TensorView &x) const {
    if (x.type != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT) fail(op_ + ": input X must be float" + where());
    const int d = conv_.d;
    if ((int)x.shape.size() != d + 2)
      fail(op_ + ": input X must be [N, C, " + std::string(d == 1 ? "L" : d == 2 ? "H, W" : "D, H, W") +
           "] (rank " + std::to_string(d + 2) + "), got shape " + shape_str(x.shape) + where());
    const int64_t cg = w_shape_[1];
    if (x.shape[1] != cg * conv_.group)
      fail(op_ + ": input X has " + std::to_string(x.shape[1]) + " channels, W expects C = " +
           std::to_string(cg * conv_.group) + " (group " + std::to_string(conv_.group) + " x " + std::to_string(cg) + ")" + where());
  }

  // The geometry of a run (checks that the padded input covers the kernel span).
  ConvDims conv_dims(const TensorView &x) const {
    ConvDims c;
    const int d = conv_.d;
    for (int i = 0; i < d; ++i) {
      const int j = 3 - d + i;
      c.S[j] = x.shape[2 + i];
      c.K[j] = w_shape_[2 + i];
      if (!conv_.strides.empty()) c.stride[j] = conv_.strides[i];
      if (!conv_.pads.empty()) c.pad[j] = conv_.pads[i];
      if (!conv_.dilations.empty()) c.dil[j] = conv_.dilations[i];
      const int64_t span = (c.K[j] - 1) * c.dil[j] + 1;
      if (c.S[j] + 2 * c.pad[j] < span)
        fail(op_ + ": input X spatial size " + std::to_string(c.S[j]) + " (dimension " + std::to_string(2 + i) +
             ", padded by " + std::to_string(c.pad[j]) + " on each side) is smaller than the kernel span " +
             std::to_string(span) + where());
      c.L[j] = (c.S[j] + 2 * c.pad[j] - span) / c.stride[j] + 1;
    }
    c.N = x.shape[0];
    c.C = x.shape[1];
    c.Cg = w_shape_[1];
    c.Lt = c.L[0] * c.L[1] * c.L[2];
    c.St = c.S[0] * c.S[1] * c.S[2];
    c.yshape = {c.N, M_};
    for (int i = 0; i < d; ++i) c.yshape.push_back(c.L[3 - d + i]);
    const int64_t rows = c.N * c.Lt;
    if (rows >= INT32_MAX || rows * Kg_ >= ((int64_t)1 << 40)) fail(op_ + ": input X is too large" + where());
    return c;
  }

  template <typename WFn, typename AlphaFn, typename CallFn>
  void run_conv(OrtKernelContext *ctx, const TensorView &x, const ConvDims &cd, const float *b, WFn &&weights,
                AlphaFn &&alpha, CallFn &&mvm_call) {
    const int64_t *S = cd.S, *Kk = cd.K, *st = cd.stride, *pd = cd.pad, *dl = cd.dil, *L = cd.L;
    const int64_t N = cd.N, C = cd.C, Cg = cd.Cg, G = conv_.group, Lt = cd.Lt, St = cd.St;
    OrtValue *yv = nullptr;
    check(g_api->KernelContext_GetOutput(ctx, 0, cd.yshape.data(), cd.yshape.size(), &yv));
    void *yp = nullptr;
    check(g_api->GetTensorMutableData(yv, &yp));
    float *Y = static_cast<float *>(yp);
    const int64_t rows = N * Lt;
    if (rows == 0) return;
    static thread_local std::vector<float> tl_cols, tl_y;
    std::vector<float> &cols = tl_cols, &yt = tl_y;
    cols.resize((size_t)(rows * Kg_));
    yt.resize((size_t)(rows * Mg_));
    const float *X = fdata(x);
    for (int64_t g = 0; g < G; ++g) {
      // im2col: row (n, l0, l1, l2), column (c, k0, k1, k2) -- aihw_deploy.nn.modules.conv.im2col.
      rpu::parallel_for(rows, 16, [&](int64_t r0, int64_t r1) {
        for (int64_t r = r0; r < r1; ++r) {
          const int64_t n = r / Lt, l = r % Lt;
          const int64_t o0 = l / (L[1] * L[2]), o1 = (l / L[2]) % L[1], o2 = l % L[2];
          float *out = cols.data() + r * Kg_;
          const float *xn = X + (n * C + g * Cg) * St;
          for (int64_t c = 0; c < Cg; ++c) {
            const float *xc = xn + c * St;
            for (int64_t k0 = 0; k0 < Kk[0]; ++k0) {
              const int64_t i0 = o0 * st[0] - pd[0] + k0 * dl[0];
              const bool in0 = i0 >= 0 && i0 < S[0];
              for (int64_t k1 = 0; k1 < Kk[1]; ++k1) {
                const int64_t i1 = o1 * st[1] - pd[1] + k1 * dl[1];
                const bool in1 = in0 && i1 >= 0 && i1 < S[1];
                const float *xrow = xc + (i0 * S[1] + i1) * S[2];
                for (int64_t k2 = 0; k2 < Kk[2]; ++k2) {
                  const int64_t i2 = o2 * st[2] - pd[2] + k2 * dl[2];
                  *out++ = (in1 && i2 >= 0 && i2 < S[2]) ? xrow[i2] : 0.0f;
                }
              }
            }
          }
        }
      });
      int na = 0;
      const float *al = alpha((int)g, &na);
      rpu::io_mvm(weights((int)g), (int)Mg_, (int)Kg_, false, cols.data(), (int)rows, yt.data(), io_, map_, true, al,
                  na, mvm_call((int)g));
      // Scatter [N*L, Mg] into Y[N, M, L] (+ bias).
      rpu::parallel_for(N * Mg_, 4, [&](int64_t q0, int64_t q1) {
        for (int64_t q = q0; q < q1; ++q) {
          const int64_t n = q / Mg_, m = q % Mg_;
          const int64_t oc = g * Mg_ + m;
          const float bias = b ? b[oc] : 0.0f;
          float *yo = Y + (n * M_ + oc) * Lt;
          const float *yi = yt.data() + n * Lt * Mg_ + m;
          for (int64_t l = 0; l < Lt; ++l) yo[l] = yi[l * Mg_] + bias;
        }
      });
    }
  }

#ifdef RPU_WITH_CUDA
  // ---- CUDA execution provider ----------------------------------------------------------------
  // The same run as compute_cpu with rpucuda's CUDA twins, on the context's compute stream.  The
  // chip is programmed on the device (rpu::cuda::pcm_program / chip_reference / chip_at: the same
  // Philox streams and per-device math as the CPU functions) at the first run and for each new
  // t_inference, then cached like the CPU chip.  The host waits for the stream only to read the
  // NaN/Inf check of X (every run), to program (first run), for a new t_inference, and to copy a
  // non-constant W back for comparison (pcm only).

  void compute_cuda(OrtKernelContext *ctx) {
    const RunInputs in = read_inputs(ctx);
    const TensorView &x = in.x, &w = in.w;
    ConvDims cd;
    std::vector<int64_t> yshape;
    int64_t rows;
    if (kind_ == OpKind::MatMul) {
      yshape = x.shape;
      yshape.back() = M_;
      rows = x.numel / Kg_;
    } else {
      cd = conv_dims(x);
      yshape = cd.yshape;
      rows = cd.N * cd.Lt;
    }
    const int dev = rpu::cuda::pointer_device(w.data);
    if (dev < 0) fail(op_ + " (CUDA): input W is not in CUDA device memory" + where());
    auto same_device = [&](const void *p, const char *what) {
      const int d = rpu::cuda::pointer_device(p);
      if (d != dev)
        fail(op_ + " (CUDA): input " + what + " is " +
             (d < 0 ? std::string("not in CUDA device memory") : "on CUDA device " + std::to_string(d)) +
             ", W is on device " + std::to_string(dev) + where());
    };
    if (x.numel > 0) same_device(x.data, "X");
    if (in.b) same_device(in.b, "B");
    void *stream = nullptr;  // cudaStream_t; nullptr (the legacy default stream) if onnxruntime gives none
    check(g_api->KernelContext_GetGPUComputeStream(ctx, &stream));

    std::shared_ptr<DeviceProgrammed> prog;
    std::shared_ptr<const DeviceChipAt> chip;
    std::unique_ptr<DeviceGuard> guard;
    if (rows > 0) {
      guard.reset(new DeviceGuard(dev));
      fail_nonfinite("X", rpu::cuda::nonfinite_kind(fdata(x), x.numel, stream));
      if (!w_checked_.load(std::memory_order_acquire)) {  // once, as the CPU kernel checks W once
        fail_nonfinite("W", rpu::cuda::nonfinite_kind(fdata(w), w.numel, stream));
        w_checked_.store(true, std::memory_order_release);
      }
      if (pcm_) {
        prog = device_programmed(w, dev, stream);
        chip = device_chip_at(*prog, in.t, stream);
      }
    }
    const uint64_t run = next_run(in);  // empty runs count too, as on the CPU
    OrtValue *yv = nullptr;
    check(g_api->KernelContext_GetOutput(ctx, 0, yshape.data(), yshape.size(), &yv));
    void *yp = nullptr;
    check(g_api->GetTensorMutableData(yv, &yp));
    float *Y = static_cast<float *>(yp);
    if (rows == 0) return;

    const int na = (int)ref_size();
    auto weights = [&](int g) -> const float * {
      return chip ? chip->W[g].p : fdata(w) + (int64_t)g * Mg_ * Kg_;
    };
    auto alpha = [&](int g) -> const float * { return chip && na ? chip->alpha[g].p : nullptr; };
    const int n_alpha = chip ? na : 0;

    if (kind_ == OpKind::MatMul) {
      rpu::cuda::io_mvm(weights(0), (int)M_, (int)Kg_, false, fdata(x), (int)rows, Y, io_, map_, true, alpha(0),
                        n_alpha, mvm_call(in, run, 0), stream);
      rpu::cuda::add_bias(Y, rows, M_, in.b, stream);
      return;
    }
    rpu::cuda::Im2colShape sh;
    for (int j = 0; j < 3; ++j) {
      sh.S[j] = cd.S[j];
      sh.K[j] = cd.K[j];
      sh.stride[j] = cd.stride[j];
      sh.pad[j] = cd.pad[j];
      sh.dil[j] = cd.dil[j];
      sh.L[j] = cd.L[j];
    }
    DeviceScratch cols(ctx, alloc_, (size_t)(rows * Kg_)), yt(ctx, alloc_, (size_t)(rows * Mg_));
    for (int g = 0; g < n_tiles_; ++g) {
      rpu::cuda::im2col(fdata(x), cd.N, cd.C, g * cd.Cg, cd.Cg, sh, cols.get(), stream);
      rpu::cuda::io_mvm(weights(g), (int)Mg_, (int)Kg_, false, cols.get(), (int)rows, yt.get(), io_, map_, true,
                        alpha(g), n_alpha, mvm_call(in, run, g), stream);
      rpu::cuda::rows_to_channels(yt.get(), cd.N, cd.Lt, Mg_, M_, g * Mg_, in.b, Y, stream);
    }
  }

  size_t ref_size() const {
    return comp_ == rpu::DriftCompensationType::None        ? 0
           : comp_ == rpu::DriftCompensationType::PerColumn ? (size_t)Mg_
                                                            : 1;
  }

  // The programmed chip of this run's W on device `dev` (programmed at the first run, and again
  // when a non-constant W changes: it is copied to the host and compared, as on the CPU).
  std::shared_ptr<DeviceProgrammed> device_programmed(const TensorView &w, int dev, void *stream) {
    std::vector<float> src;
    if (!w_constant_) {
      src.resize((size_t)w.numel);
      rpu::cuda::copy_to_host(src.data(), w.data, sizeof(float) * src.size(), stream);
    }
    std::lock_guard<std::mutex> lk(prog_mu_);
    if (dev_prog_ && dev_prog_->device == dev &&
        (w_constant_ || std::memcmp(dev_prog_->w_src.data(), src.data(), sizeof(float) * src.size()) == 0))
      return dev_prog_;
    auto p = std::make_shared<DeviceProgrammed>();
    p->device = dev;
    p->w_src = std::move(src);
    p->tiles.resize(n_tiles_);
    const size_t per = (size_t)(Mg_ * Kg_), nref = ref_size();
    for (int g = 0; g < n_tiles_; ++g) {
      DeviceProgrammed::Tile &t = p->tiles[g];
      t.g_plus = DeviceArray(per, dev);
      t.g_minus = DeviceArray(per, dev);
      t.nu_plus = DeviceArray(per, dev);
      t.nu_minus = DeviceArray(per, dev);
      t.view.M = (int)Mg_;
      t.view.K = (int)Kg_;
      t.view.g_plus = t.g_plus.p;
      t.view.g_minus = t.g_minus.p;
      t.view.nu_plus = t.nu_plus.p;
      t.view.nu_minus = t.nu_minus.p;
      rpu::cuda::pcm_program(fdata(w) + g * per, (int)Mg_, (int)Kg_, noise_, tiles_[g].program_seed, t.view, stream);
      if (nref) {  // the CPU's chip_reference writes nothing without compensation
        t.ref = DeviceArray(nref, dev);
        rpu::cuda::chip_reference(t.view, noise_, tiles_[g].program_seed, io_, map_, comp_, tiles_[g].seed, t.ref.p,
                                  stream);
      }
    }
    rpu::cuda::stream_synchronize(stream);  // runs on other streams read the chip
    dev_prog_ = p;  // a replaced chip is freed when its last run lets go of it
    return p;
  }

  // Chip weights and compensation at time t on the device, cached per value of t (fewer values
  // than on the CPU: each costs a copy of W in device memory).
  std::shared_ptr<const DeviceChipAt> device_chip_at(DeviceProgrammed &p, float t, void *stream) const {
    uint32_t key;
    const float tk = t == 0.0f ? 0.0f : t;  // -0 -> 0
    std::memcpy(&key, &tk, sizeof key);
    {
      std::lock_guard<std::mutex> lk(p.mu);
      auto it = p.chips.find(key);
      if (it != p.chips.end()) return it->second;
    }
    auto c = std::make_shared<DeviceChipAt>();
    const size_t per = (size_t)(Mg_ * Kg_), nref = ref_size();
    for (int g = 0; g < n_tiles_; ++g) {
      c->W.emplace_back(per, p.device);
      c->alpha.emplace_back(nref, p.device);
      rpu::cuda::chip_at(p.tiles[g].view, noise_, (double)t, tiles_[g].program_seed, io_, map_, comp_,
                         tiles_[g].seed, p.tiles[g].ref.p, c->W[g].p, c->alpha[g].p, stream);
    }
    rpu::cuda::stream_synchronize(stream);  // complete before runs on other streams use it
    std::shared_ptr<const DeviceChipAt> evicted;  // freed after the lock is released
    std::lock_guard<std::mutex> lk(p.mu);
    auto it = p.chips.find(key);
    if (it != p.chips.end()) return it->second;  // a concurrent run computed the same chip
    if (p.order.size() >= kMaxCachedTimesDevice) {
      evicted = std::move(p.chips[p.order.front()]);
      p.chips.erase(p.order.front());
      p.order.pop_front();
    }
    p.chips.emplace(key, c);
    p.order.push_back(key);
    return c;
  }
#endif  // RPU_WITH_CUDA

  OpKind kind_;
  bool cuda_ = false;  // the CUDA execution provider's kernel
  std::string op_, node_;
  rpu::IOParameters io_;
  rpu::MappingParameter map_;
  rpu::PCMNoiseParameters noise_;
  bool pcm_ = false;
  rpu::DriftCompensationType comp_ = rpu::DriftCompensationType::None;
  float t_default_ = 0.0f;
  ConvGeometry conv_;
  int n_tiles_ = 1;
  std::vector<TileSeeds> tiles_;

  std::mutex shape_mu_;
  bool have_shape_ = false;
  std::vector<int64_t> w_shape_;
  int64_t M_ = 0, Mg_ = 0, Kg_ = 0;
  bool w_constant_ = false;

  std::mutex prog_mu_;  // guards prog_ (non-constant W) and dev_prog_
  std::shared_ptr<Programmed> prog_;
  std::atomic<uint64_t> runs_{0};
#ifdef RPU_WITH_CUDA
  OrtAllocator *alloc_ = nullptr;  // the CUDA EP's device allocator (scratch memory)
  std::shared_ptr<DeviceProgrammed> dev_prog_;
  std::atomic<bool> w_checked_{false};  // W's values checked on the device
#endif
};

// ---------------------------------------------------------------------------------------------
// Output shape inference at session creation (so that onnxruntime knows the output's rank and
// static dimensions).  Never fails: whatever is unknown stays unknown, and the kernel checks the
// inputs at run time.

struct InferShape {
  std::vector<int64_t> dims;
  std::vector<std::string> sym;  // symbolic names ("" where none)
  bool known = false;
};

InferShape infer_input(const OrtShapeInferContext *ctx, size_t i) {
  InferShape r;
  OrtTensorTypeAndShapeInfo *info = nullptr;
  if (!ok(g_api->ShapeInferContext_GetInputTypeShape(ctx, i, &info)) || info == nullptr) return r;
  size_t nd = 0;
  if (ok(g_api->GetDimensionsCount(info, &nd)) && nd > 0) {
    r.dims.resize(nd);
    std::vector<const char *> names(nd, nullptr);
    if (ok(g_api->GetDimensions(info, r.dims.data(), nd))) {
      r.known = true;
      r.sym.assign(nd, "");
      if (ok(g_api->GetSymbolicDimensions(info, names.data(), nd)))
        for (size_t k = 0; k < nd; ++k) r.sym[k] = names[k] ? names[k] : "";
    }
  }
  // `info` belongs to the context (onnxruntime keeps it in a unique_ptr): not released here.
  return r;
}

std::vector<int64_t> infer_ints_attr(const OrtShapeInferContext *ctx, const char *name) {
  const OrtOpAttr *attr = nullptr;
  if (!ok(g_api->ShapeInferContext_GetAttribute(ctx, name, &attr)) || attr == nullptr) return {};
  size_t bytes = 0;
  ok(g_api->ReadOpAttr(attr, ORT_OP_ATTR_INTS, nullptr, 0, &bytes));
  std::vector<int64_t> v(bytes / sizeof(int64_t));
  if (v.empty() || !ok(g_api->ReadOpAttr(attr, ORT_OP_ATTR_INTS, v.data(), bytes, &bytes))) return {};
  return v;
}

void infer_output_shape(OpKind kind, OrtShapeInferContext *ctx) {
  size_t n_in = 0;
  if (!ok(g_api->ShapeInferContext_GetInputCount(ctx, &n_in)) || n_in < 2) return;
  InferShape x = infer_input(ctx, 0), w = infer_input(ctx, 1);
  if (!x.known || !w.known) return;
  InferShape y;
  if (kind == OpKind::MatMul) {
    if (w.dims.size() != 2) return;
    y = x;
    y.dims.back() = w.dims[0];
    y.sym.back() = "";
  } else {
    const size_t d = w.dims.size() - 2;
    if (w.dims.size() < 3 || w.dims.size() > 5 || x.dims.size() != d + 2) return;
    std::vector<int64_t> st = infer_ints_attr(ctx, "strides"), pd = infer_ints_attr(ctx, "pads"),
                         dl = infer_ints_attr(ctx, "dilations");
    if ((!st.empty() && st.size() != d) || (!pd.empty() && pd.size() != 2 * d) || (!dl.empty() && dl.size() != d)) return;
    y.dims = {x.dims[0], w.dims[0]};
    y.sym = {x.sym[0], ""};
    for (size_t i = 0; i < d; ++i) {
      const int64_t S = x.dims[2 + i], K = w.dims[2 + i];
      const int64_t s = st.empty() ? 1 : st[i], p = pd.empty() ? 0 : pd[i], dd = dl.empty() ? 1 : dl[i];
      int64_t L = -1;
      if (S >= 0 && K >= 1 && s >= 1 && dd >= 1 && S + 2 * p >= (K - 1) * dd + 1) L = (S + 2 * p - (K - 1) * dd - 1) / s + 1;
      y.dims.push_back(L);
      y.sym.push_back("");
    }
  }
  OrtTensorTypeAndShapeInfo *out = nullptr;
  if (!ok(g_api->CreateTensorTypeAndShapeInfo(&out))) return;
  std::vector<const char *> names;
  for (const auto &n : y.sym) names.push_back(n.c_str());
  if (ok(g_api->SetTensorElementType(out, ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT)) &&
      ok(g_api->SetDimensions(out, y.dims.data(), y.dims.size())) &&
      ok(g_api->SetSymbolicDimensions(out, names.data(), names.size())))
    ok(g_api->ShapeInferContext_SetOutputTypeShape(ctx, 0, out));
  g_api->ReleaseTensorTypeAndShapeInfo(out);
}

// ---------------------------------------------------------------------------------------------
// The OrtCustomOp descriptions.

// Whether this onnxruntime can run a custom op's InferOutputShapeFn on a node with an absent
// optional input (an empty input name, e.g. `seed` = "" before a given `t_inference`).  Before
// 1.24 it cannot: onnxruntime builds the OrtShapeInferContext it hands to InferOutputShapeFn by
// reading the type of every node input, and the type of an absent input is a null pointer that
// it dereferences -- a segfault at session creation, inside onnxruntime, before our function is
// even called.  Verified: 1.21.0 and 1.23.2 crash, 1.24.1, 1.25.1, 1.30.0 and 1.32.0 pass absent
// inputs as UNDEFINED (the first release on PyPI after the fix is 1.24.1).  An unparsable
// version string counts as old (losing the shape hint is harmless; a crash is not).
bool runtime_shape_inference_handles_absent_inputs(const char *version) {
  // "MAJOR.MINOR.PATCH" (anything after PATCH, e.g. "-dev", is ignored; a missing PATCH reads 0).
  long v[3] = {0, 0, 0};
  const char *p = version ? version : "";
  for (int i = 0; i < 3; ++i) {
    if (!std::isdigit((unsigned char)*p)) {
      if (i < 2) return false;  // no MAJOR.MINOR: unknown runtime
      break;
    }
    char *end = nullptr;
    v[i] = std::strtol(p, &end, 10);
    p = end;
    if (i == 2 || *p != '.') {
      if (i == 0) return false;
      break;
    }
    ++p;
  }
  if (v[0] != 1) return v[0] > 1;
  return v[1] > 24 || (v[1] == 24 && v[2] >= 1);
}

struct AnalogOp : OrtCustomOp {
  OpKind kind;
  const char *name;
  bool cuda;  // the CUDA execution provider's op (same domain, name and version as the CPU op)

  // shape_inference: give onnxruntime an InferOutputShapeFn (only where the runtime can call it
  // safely, see runtime_shape_inference_handles_absent_inputs); without one, onnxruntime's own
  // fallback types the output (float) and leaves its shape unknown until the first run.
  AnalogOp(OpKind k, const char *n, bool shape_inference, bool on_cuda)
      : OrtCustomOp{}, kind(k), name(n), cuda(on_cuda) {
    version = AIHW_ORT_API_VERSION;
    CreateKernel = nullptr;
    KernelCompute = nullptr;
    GetName = [](const OrtCustomOp *op) { return static_cast<const AnalogOp *>(op)->name; };
    GetExecutionProviderType = [](const OrtCustomOp *op) -> const char * {
#ifdef RPU_WITH_CUDA
      if (static_cast<const AnalogOp *>(op)->cuda) return kCudaEP;
#endif
      return nullptr;  // CPU
    };
    GetInputTypeCount = [](const OrtCustomOp *) -> size_t { return 5; };
    GetInputType = [](const OrtCustomOp *, size_t i) {
      return i == 3 ? ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64 : ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
    };
    GetOutputTypeCount = [](const OrtCustomOp *) -> size_t { return 1; };
    GetOutputType = [](const OrtCustomOp *, size_t) { return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT; };
    GetInputCharacteristic = [](const OrtCustomOp *, size_t i) {
      return i < 2 ? INPUT_OUTPUT_REQUIRED : INPUT_OUTPUT_OPTIONAL;
    };
    GetOutputCharacteristic = [](const OrtCustomOp *, size_t) { return INPUT_OUTPUT_REQUIRED; };
    // On the CUDA EP, X, W and B are device memory; the scalars seed (3) and t_inference (4) are
    // read by the host, so onnxruntime hands them over in host memory.
    GetInputMemoryType = [](const OrtCustomOp *op, size_t i) {
      return static_cast<const AnalogOp *>(op)->cuda && i >= 3 ? OrtMemTypeCPUInput : OrtMemTypeDefault;
    };
    GetVariadicInputMinArity = [](const OrtCustomOp *) { return 1; };
    GetVariadicInputHomogeneity = [](const OrtCustomOp *) { return 1; };
    GetVariadicOutputMinArity = [](const OrtCustomOp *) { return 1; };
    GetVariadicOutputHomogeneity = [](const OrtCustomOp *) { return 1; };
    CreateKernelV2 = [](const OrtCustomOp *op, const OrtApi *, const OrtKernelInfo *info, void **kernel) -> OrtStatusPtr {
      *kernel = nullptr;
      const AnalogOp *o = static_cast<const AnalogOp *>(op);
      return guarded([&] { *kernel = new AnalogKernel(o->kind, o->cuda, info); });
    };
    KernelComputeV2 = [](void *kernel, OrtKernelContext *ctx) -> OrtStatusPtr {
      return guarded([&] { static_cast<AnalogKernel *>(kernel)->compute(ctx); });
    };
    KernelDestroy = [](void *kernel) { delete static_cast<AnalogKernel *>(kernel); };
    InferOutputShapeFn = nullptr;
    if (shape_inference)
      InferOutputShapeFn = [](const OrtCustomOp *op, OrtShapeInferContext *ctx) -> OrtStatusPtr {
        try {
          infer_output_shape(static_cast<const AnalogOp *>(op)->kind, ctx);
        } catch (...) {  // shape inference is a hint: never an error
        }
        return nullptr;
      };
    GetStartVersion = [](const OrtCustomOp *) { return 1; };
    GetEndVersion = [](const OrtCustomOp *) { return 1; };
    GetMayInplace = nullptr;
    ReleaseMayInplace = nullptr;
    GetAliasMap = nullptr;
    ReleaseAliasMap = nullptr;
  }
};

// Static: onnxruntime keeps pointers to the ops for as long as the sessions live.
const AnalogOp &analog_op(OpKind kind, bool shape_inference, bool cuda) {
  static const AnalogOp matmul[4] = {
      AnalogOp(OpKind::MatMul, "AnalogMatMul", false, false), AnalogOp(OpKind::MatMul, "AnalogMatMul", true, false),
      AnalogOp(OpKind::MatMul, "AnalogMatMul", false, true), AnalogOp(OpKind::MatMul, "AnalogMatMul", true, true)};
  static const AnalogOp conv[4] = {
      AnalogOp(OpKind::Conv, "AnalogConv", false, false), AnalogOp(OpKind::Conv, "AnalogConv", true, false),
      AnalogOp(OpKind::Conv, "AnalogConv", false, true), AnalogOp(OpKind::Conv, "AnalogConv", true, true)};
  const int i = (shape_inference ? 1 : 0) + (cuda ? 2 : 0);
  return kind == OpKind::MatMul ? matmul[i] : conv[i];
}

// Domains handed to sessions live as long as the library (onnxruntime keeps pointers to them).
struct DomainStore {
  std::mutex mu;
  std::vector<OrtCustomOpDomain *> domains;
  ~DomainStore() {
    if (g_api)
      for (OrtCustomOpDomain *d : domains) g_api->ReleaseCustomOpDomain(d);
  }
};
DomainStore &domain_store() {
  static DomainStore s;
  return s;
}

void apply_session_config(const OrtSessionOptions *options) {
  // "aihw.num_threads": size of rpucuda's thread pool (process-wide; default: all cores).
  const char *key = "aihw.num_threads";
  int has = 0;
  check(g_api->HasSessionConfigEntry(options, key, &has));
  if (!has) return;
  size_t n = 0;
  check(g_api->GetSessionConfigEntry(options, key, nullptr, &n));
  std::string v(n, '\0');
  check(g_api->GetSessionConfigEntry(options, key, &v[0], &n));
  v.resize(std::strlen(v.c_str()));
  char *end = nullptr;
  const long t = std::strtol(v.c_str(), &end, 10);
  if (v.empty() || *end != '\0' || t < 0 || t > 4096)
    fail("aihw_ort_ops: session config aihw.num_threads must be an int in [0, 4096] (0 = all cores), got '" + v + "'");
  const unsigned hc = std::thread::hardware_concurrency();
  rpu::set_num_threads(t > 0 ? (int)t : (hc ? (int)hc : 1));
}

}  // namespace
}  // namespace aihw_ort

extern "C" AIHW_EXPORT OrtStatus *ORT_API_CALL RegisterCustomOps(OrtSessionOptions *options, const OrtApiBase *api_base) {
  using namespace aihw_ort;
  if (api_base == nullptr) return nullptr;  // cannot report anything without an API table
  const OrtApi *api = api_base->GetApi(AIHW_ORT_API_VERSION);
  if (api == nullptr) {
    const OrtApi *api1 = api_base->GetApi(1);
    std::string msg = std::string("aihw_ort_ops: this onnxruntime (") + api_base->GetVersionString() +
                      ") is too old; the library needs onnxruntime >= 1.21 (C API 21)";
    return api1 ? api1->CreateStatus(ORT_FAIL, msg.c_str()) : nullptr;
  }
  g_api = api;
  return guarded([&] {
    apply_session_config(options);
    OrtCustomOpDomain *domain = nullptr;
    check(g_api->CreateCustomOpDomain(kDomain, &domain));
    DomainStore &store = domain_store();
    {
      std::lock_guard<std::mutex> lk(store.mu);
      store.domains.push_back(domain);
    }
    const bool shape_inference = runtime_shape_inference_handles_absent_inputs(api_base->GetVersionString());
    check(g_api->CustomOpDomain_Add(domain, &analog_op(OpKind::MatMul, shape_inference, false)));
    check(g_api->CustomOpDomain_Add(domain, &analog_op(OpKind::Conv, shape_inference, false)));
#ifdef RPU_WITH_CUDA
    // The CUDA EP's kernels of the same ops: used by sessions with CUDAExecutionProvider (a CPU-only
    // onnxruntime never asks for them).  Registering touches no CUDA API.
    check(g_api->CustomOpDomain_Add(domain, &analog_op(OpKind::MatMul, shape_inference, true)));
    check(g_api->CustomOpDomain_Add(domain, &analog_op(OpKind::Conv, shape_inference, true)));
#endif
    check(g_api->AddCustomOpDomain(options, domain));
  });
}
