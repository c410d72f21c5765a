#include "model/quantize_at_load.h"

#include <fmt/format.h>

#include <chrono>

#include "core/error.h"

namespace kite {

quant::QuantSpec quantization_spec(const std::string& name) {
  if (name == "int8") return quant::QuantSpec::int8(-1);
  if (name == "int4") return quant::QuantSpec::int4(128, true);
  if (name == "nf4") return quant::QuantSpec::nf4(64);
  if (name == "fp8") return quant::QuantSpec::fp8(true);
  fail("--quantization", "quantization", "'{}' is not one of fp8, int8, int4, nf4", name);
}

std::string quantize_linears_at_load(ModelWeights& w, const std::string& name, const std::string& source) {
  quant::QuantSpec spec = quantization_spec(name);
  const auto t0 = std::chrono::steady_clock::now();
  size_t dense_bytes = 0, quant_bytes = 0, count = 0;
  for (auto& [module, q] : w.linears) {
    if (q.quantized())
      fail(source, module,
           "is already quantized ({}); --quantization {} quantizes an unquantized checkpoint at load: drop the flag "
           "to run this checkpoint as it is",
           quant_scheme_name(q.scheme), name);
  }
  for (auto& [module, q] : w.linears) {
    if (module == "lm_head") continue;  // kept dense (vLLM and bitsandbytes keep it too)
    quant::QuantSpec s = spec;
    if (s.scheme == QuantScheme::Int8 && s.group < 0) s.group = q.in;  // per output channel
    dense_bytes += q.dense.nbytes();
    try {
      QuantWeight r = quant::quantize_rtn(q.dense, s);
      if (s.scheme == QuantScheme::Fp8) r.act = ActQuant::Fp8Token;  // W8A8, dynamic per-token (kite quantize's fp8)
      quant_bytes += r.storage_bytes();
      q = std::move(r);  // the dense copy goes now: one linear at a time
    } catch (const Error& e) {
      fail(source, module, "--quantization {} cannot quantize it: {}", name, e.what());
    }
    ++count;
  }
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return fmt::format("quantized {} linears to {} at load in {:.1f} s ({:.2f} GiB -> {:.2f} GiB; lm_head kept)", count,
                     name, s, double(dense_bytes) / double(1 << 30), double(quant_bytes) / double(1 << 30));
}

}  // namespace kite
