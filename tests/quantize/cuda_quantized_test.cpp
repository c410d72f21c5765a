// Quantized kite-ref on CUDA through the same model definition: the weights
// `kite quantize` makes (RTN int4 / int8, GPTQ int4 with act-order) run on
// the GPU through Linear's CUDA weight-only kernel, with a perplexity within
// 1% of the same quantized weights on the CPU (F32 activations there, BF16
// here), and a scheme no CUDA kernel runs yet refused at load naming it.
// Skipped without a CUDA device.
#include <gtest/gtest.h>

#include <cstdio>

#include "backend/backend.h"
#include "core/error.h"
#include "core/mapped_file.h"
#include "model/decoder.h"
#include "model/generation.h"
#include "quantize/quantize.h"
#include "tokenizer/tokenizer.h"

namespace kite {
namespace {

const std::string kModel = std::string(KITE_SHARED_DIR) + "/models/kite-ref";
const Device kGpu{DeviceKind::CUDA, 0};

struct Case {
  const char* name;
  QuantMethod method;
  int bits;
  bool act_order;
};

TEST(CudaQuantized, PerplexityOnTheGpuIsTheCpusForWeightOnlySchemes) {
  if (!cuda_available()) GTEST_SKIP() << "no CUDA device";
  auto tok = Tokenizer::load(kModel);
  const std::string shared = KITE_SHARED_DIR;
  std::vector<int32_t> eval = tok->encode(read_text_file(shared + "/text/persuasion.txt").substr(0, 30000), true);
  const std::vector<int32_t> calib = tok->encode(read_text_file(shared + "/text/calib.txt").substr(0, 60000), false);
  for (const Case& c : {Case{"int4 g128", QuantMethod::Int4, 4, false}, Case{"int8", QuantMethod::Int8, 8, false},
                        Case{"gptq int4 act-order", QuantMethod::Gptq, 4, true}}) {
    SCOPED_TRACE(c.name);
    QuantizeOptions o;
    o.method = c.method;
    o.act_order = c.act_order;
    o.calib_tokens = calib;
    o.calib_samples = 4;
    o.calib_seqlen = 256;
    auto cpu = load_decoder_model(kModel, "quantization");
    quantize_model(*cpu, o);
    DecoderModel gpu(cpu->config(), cpu->path(), cpu->shared_weights(), kGpu);
    for (const std::string& k : gpu.kernel_summary()) std::printf("  %s: %s\n", c.name, k.c_str());
    const PerplexityResult a = perplexity(*cpu, eval, 512), b = perplexity(gpu, eval, 512);
    std::printf("kite-ref %s: ppl CPU %.4f, CUDA %.4f (%+.3f%%)\n", c.name, a.ppl(), b.ppl(),
                100 * (b.ppl() / a.ppl() - 1));
    EXPECT_NEAR(b.ppl() / a.ppl(), 1.0, 0.01);
  }
}

TEST(CudaQuantized, ASchemeNoCudaKernelRunsIsRefusedAtLoad) {
  if (!cuda_available()) GTEST_SKIP() << "no CUDA device";
  QuantizeOptions o;
  o.method = QuantMethod::Nf4;
  auto cpu = load_decoder_model(kModel, "quantization");
  quantize_model(*cpu, o);
  try {
    DecoderModel gpu(cpu->config(), cpu->path(), cpu->shared_weights(), kGpu);
    FAIL() << "nf4 ran on CUDA before a kernel for it exists";
  } catch (const Error& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("model.layers.0."), std::string::npos) << m;
    EXPECT_NE(m.find("nf4"), std::string::npos) << m;
    EXPECT_NE(m.find("cuda:0"), std::string::npos) << m;
  }
}

}  // namespace
}  // namespace kite
