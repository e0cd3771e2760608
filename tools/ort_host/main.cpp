// ort_host: a minimal C++ onnxruntime host for models with aihw-deploy's analog custom ops.
//
// Loads an .onnx model with libaihw_ort_ops.so registered (OrtApi::RegisterCustomOpsLibrary_V2,
// the same call Triton's onnxruntime backend makes for `op_library_filename`), feeds one input
// and prints every output.  Written against the C++ API of onnxruntime 1.21 (API 21); links the
// pip wheel's libonnxruntime.so (see tools/ort_host/build.sh).
//
// Usage:
//   ort_host MODEL.onnx [--library LIB.so] [--shape D0,D1,...] (--input X.bin | --random SEED)
//            [--seed N] [--t-inference T] [--runs R] [--threads T] [--print-input]
//
//   --library      the custom-op library (default: none, i.e. the model's fallback functions)
//   --shape        shape of the model's float input (default: its static shape, symbolic dims = 1)
//   --input        raw little-endian float32 file with the input values
//   --random SEED  uniform(-1, 1) input from std::mt19937(SEED) instead
//   --seed N       value for an int64 model input named "seed"
//   --t-inference  value for a float scalar model input named "t_inference"
//   --runs R       run R times on the same session (each run's outputs are printed)
//   --threads T    intra-op threads of onnxruntime
//
// Output (stdout), per run and output:  "output <name> <run> shape d0 d1 ..." followed by one
// value per line (%.9g: float32 round-trips exactly).  Exit status 0 on success, 2 on a usage
// error, 1 on an onnxruntime error (its message on stderr).
#include <onnxruntime_cxx_api.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iostream>
#include <random>
#include <sstream>
#include <string>
#include <vector>

namespace {

[[noreturn]] void usage(const std::string &msg) {
  std::cerr << "ort_host: " << msg << "\n"
            << "usage: ort_host MODEL.onnx [--library LIB.so] [--shape D0,D1,...] (--input X.bin | --random SEED)\n"
            << "                [--seed N] [--t-inference T] [--runs R] [--threads T] [--print-input]\n";
  std::exit(2);
}

std::vector<int64_t> parse_shape(const std::string &s) {
  std::vector<int64_t> out;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ',')) {
    char *end = nullptr;
    long long v = std::strtoll(item.c_str(), &end, 10);
    if (item.empty() || *end != '\0' || v < 0) usage("bad --shape '" + s + "'");
    out.push_back(v);
  }
  if (out.empty()) usage("empty --shape");
  return out;
}

std::string shape_text(const std::vector<int64_t> &s) {
  std::string r;
  for (size_t i = 0; i < s.size(); ++i) r += (i ? " " : "") + std::to_string(s[i]);
  return r;
}

}  // namespace

int main(int argc, char **argv) {
  if (argc < 2) usage("missing MODEL");
  std::string model_path, library, input_file, shape_arg;
  bool have_random = false, have_seed = false, have_t = false, print_input = false;
  unsigned long random_seed = 0;
  int64_t seed = 0;
  float t_inference = 0.0f;
  int runs = 1, threads = 1;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) usage("missing value after " + a);
      return argv[++i];
    };
    if (a == "--library") library = value();
    else if (a == "--shape") shape_arg = value();
    else if (a == "--input") input_file = value();
    else if (a == "--random") { have_random = true; random_seed = std::strtoul(value().c_str(), nullptr, 10); }
    else if (a == "--seed") { have_seed = true; seed = std::strtoll(value().c_str(), nullptr, 10); }
    else if (a == "--t-inference") { have_t = true; t_inference = std::strtof(value().c_str(), nullptr); }
    else if (a == "--runs") runs = std::atoi(value().c_str());
    else if (a == "--threads") threads = std::atoi(value().c_str());
    else if (a == "--print-input") print_input = true;
    else if (!a.empty() && a[0] == '-') usage("unknown option " + a);
    else if (model_path.empty()) model_path = a;
    else usage("unexpected argument " + a);
  }
  if (model_path.empty()) usage("missing MODEL");
  if (input_file.empty() == !have_random) usage("give exactly one of --input and --random");
  if (runs < 1 || threads < 1) usage("--runs and --threads must be >= 1");

  try {
    Ort::Env env(ORT_LOGGING_LEVEL_WARNING, "ort_host");
    Ort::SessionOptions so;
    so.SetIntraOpNumThreads(threads);
    if (!library.empty()) so.RegisterCustomOpsLibrary(library.c_str());
    Ort::Session session(env, model_path.c_str(), so);
    Ort::AllocatorWithDefaultOptions alloc;
    Ort::MemoryInfo mem = Ort::MemoryInfo::CreateCpu(OrtArenaAllocator, OrtMemTypeDefault);

    // Inputs: the float data input, and the optional runtime inputs "seed" and "t_inference".
    std::vector<std::string> in_names;
    std::vector<Ort::Value> in_values;
    std::vector<float> x;
    std::vector<int64_t> x_shape;
    bool have_x = false;
    for (size_t i = 0; i < session.GetInputCount(); ++i) {
      std::string name = session.GetInputNameAllocated(i, alloc).get();
      Ort::TypeInfo type_info = session.GetInputTypeInfo(i);  // owns what `info` views
      auto info = type_info.GetTensorTypeAndShapeInfo();
      if (name == "seed") {
        if (!have_seed) usage("the model has an input 'seed': give --seed");
        in_values.push_back(Ort::Value::CreateTensor<int64_t>(mem, &seed, 1, nullptr, 0));
      } else if (name == "t_inference") {
        if (!have_t) usage("the model has an input 't_inference': give --t-inference");
        in_values.push_back(Ort::Value::CreateTensor<float>(mem, &t_inference, 1, nullptr, 0));
      } else {
        if (have_x) usage("the model has more than one data input ('" + name + "')");
        if (info.GetElementType() != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT) usage("input '" + name + "' is not float");
        have_x = true;
        x_shape = shape_arg.empty() ? info.GetShape() : parse_shape(shape_arg);
        for (auto &d : x_shape)
          if (d < 0) d = 1;  // symbolic dimension
        int64_t n = 1;
        for (int64_t d : x_shape) n *= d;
        x.resize((size_t)n);
        if (have_random) {
          std::mt19937 gen((std::mt19937::result_type)random_seed);
          std::uniform_real_distribution<float> u(-1.0f, 1.0f);
          for (auto &v : x) v = u(gen);
        } else {
          std::ifstream f(input_file, std::ios::binary);
          if (!f) usage("cannot open --input " + input_file);
          f.read(reinterpret_cast<char *>(x.data()), (std::streamsize)(x.size() * sizeof(float)));
          if ((size_t)f.gcount() != x.size() * sizeof(float))
            usage("--input " + input_file + " holds fewer than " + std::to_string(n) + " float32 values");
        }
        in_values.push_back(Ort::Value::CreateTensor<float>(mem, x.data(), x.size(), x_shape.data(), x_shape.size()));
      }
      in_names.push_back(name);
    }
    if (print_input) {
      std::printf("input %s shape %s\n", "X", shape_text(x_shape).c_str());
      for (float v : x) std::printf("%.9g\n", v);
    }
    std::vector<std::string> out_names;
    for (size_t i = 0; i < session.GetOutputCount(); ++i)
      out_names.push_back(session.GetOutputNameAllocated(i, alloc).get());
    std::vector<const char *> in_c, out_c;
    for (auto &s : in_names) in_c.push_back(s.c_str());
    for (auto &s : out_names) out_c.push_back(s.c_str());

    for (int r = 0; r < runs; ++r) {
      auto outs = session.Run(Ort::RunOptions{nullptr}, in_c.data(), in_values.data(), in_values.size(),
                              out_c.data(), out_c.size());
      for (size_t o = 0; o < outs.size(); ++o) {
        auto info = outs[o].GetTensorTypeAndShapeInfo();
        if (info.GetElementType() != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT) {
          std::printf("output %s %d (not float, skipped)\n", out_names[o].c_str(), r);
          continue;
        }
        const float *y = outs[o].GetTensorData<float>();
        std::printf("output %s %d shape %s\n", out_names[o].c_str(), r, shape_text(info.GetShape()).c_str());
        const size_t n = info.GetElementCount();
        for (size_t i = 0; i < n; ++i) std::printf("%.9g\n", y[i]);
      }
    }
  } catch (const Ort::Exception &e) {
    std::fflush(stdout);
    std::cerr << "ort_host: onnxruntime error: " << e.what() << "\n";
    return 1;
  } catch (const std::exception &e) {
    std::fflush(stdout);
    std::cerr << "ort_host: error: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
