// Host side of the CUDA sampling kernels: argument unpacking and registration.
#include <cstring>

#include "backend/cuda/cuda_check.h"
#include "backend/cuda/cuda_kernels.h"
#include "backend/cuda/sampling_kernels.h"
#include "backend/kernels.h"

namespace kite::cuda {

namespace {

// The one place an ops::SampleRow becomes the kernel's SampleRowArgs.
SampleRowArgs sample_row_args(const ops::SampleRow& r) {
  return {.params = r.params,
          .uniform = r.uniform,
          .forced_token = r.forced_token,
          .num_logprobs = r.num_logprobs,
          .penalty_begin = r.penalty_begin,
          .penalty_end = r.penalty_end,
          .banned_begin = r.banned_begin,
          .banned_end = r.banned_end};
}

void argmax(const Tensor& x, Tensor& out) {
  const int dev = x.device().index;
  set_device(dev);
  check_cuda(
      launch_argmax_rows(x.data_as<const float>(), out.data_as<int32_t>(), x.dim(0), x.dim(1), current_stream(dev)),
      "argmax");
}

std::vector<ops::SampledToken> sample_rows(Tensor& logits, const ops::SampleBatch& b) {
  const int dev = logits.device().index;
  set_device(dev);
  const int64_t m = logits.dim(0), vocab = logits.dim(1);
  cudaStream_t stream = current_stream(dev);
  std::vector<ops::SampledToken> out(static_cast<size_t>(m));
  if (b.plain_greedy()) {                                          // the argmax kernel; only the ids travel
    Tensor ids = Tensor::empty({m}, DType::I32, logits.device());  // [m]
    check_cuda(launch_argmax_rows(logits.data_as<const float>(), ids.data_as<int32_t>(), m, vocab, stream), "argmax");
    const Tensor h = ids.to(kCpu);
    for (int64_t r = 0; r < m; ++r) out[size_t(r)].token = h.data_as<const int32_t>()[r];
    return out;
  }
  // One upload: rows, then penalty tokens, output counts, banned ids.
  static_assert(sizeof(SampleResult) % 4 == 0);
  const int64_t n_pen = int64_t(b.penalty_tokens.size()), n_ban = int64_t(b.banned.size());
  const int64_t row_words = m * int64_t(sizeof(SampleRowArgs) / 4);
  Tensor host = Tensor::empty({row_words + 2 * n_pen + n_ban}, DType::I32);
  auto* rows = reinterpret_cast<SampleRowArgs*>(host.data());
  for (int64_t r = 0; r < m; ++r) rows[r] = sample_row_args(b.rows[size_t(r)]);
  int32_t* ints = host.data_as<int32_t>() + row_words;
  if (n_pen) {
    std::memcpy(ints, b.penalty_tokens.data(), size_t(n_pen) * 4);
    std::memcpy(ints + n_pen, b.output_counts.data(), size_t(n_pen) * 4);
  }
  if (n_ban) std::memcpy(ints + 2 * n_pen, b.banned.data(), size_t(n_ban) * 4);
  const Tensor in = host.to(logits.device());
  const int32_t* d_ints = in.data_as<const int32_t>() + row_words;
  Tensor saved = Tensor::empty({std::max<int64_t>(1, n_pen + n_ban)}, DType::F32, logits.device());
  Tensor res = Tensor::empty({m * int64_t(sizeof(SampleResult) / 4)}, DType::I32, logits.device());
  check_cuda(launch_sample_rows(logits.data_as<float>(), m, vocab, reinterpret_cast<const SampleRowArgs*>(in.data()),
                                d_ints, d_ints + n_pen, int32_t(n_pen), d_ints + 2 * n_pen, saved.data_as<float>(),
                                reinterpret_cast<SampleResult*>(res.data()), stream),
             "sample_rows");
  const Tensor h = res.to(kCpu);
  const auto* results = reinterpret_cast<const SampleResult*>(h.data());
  for (int64_t r = 0; r < m; ++r) {
    const SampleResult& s = results[r];
    ops::SampledToken& t = out[size_t(r)];
    t.token = s.token;
    t.logprob = s.logprob;
    t.rank = s.rank;
    for (int32_t i = 0; i < s.n_top; ++i) t.top.push_back({s.top_ids[i], s.top_logprobs[i]});
  }
  return out;
}

}  // namespace

void register_sampling_kernels(Kernels& table) {
  table.argmax = argmax;
  table.sample_rows = sample_rows;
}

}  // namespace kite::cuda
