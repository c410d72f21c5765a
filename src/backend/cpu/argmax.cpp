#include <cmath>

#include "core/parallel.h"
#include "core/tensor.h"

namespace kite::cpu {

void argmax(const Tensor& x, Tensor& out) {
  const int64_t m = x.dim(0), n = x.dim(1);
  const float* p = x.data_as<const float>();
  int32_t* o = out.data_as<int32_t>();
  parallel_for(m, 1, [&](int64_t lo, int64_t hi) {
    for (int64_t r = lo; r < hi; ++r) {
      const float* row = p + r * n;
      int64_t best = -1;
      for (int64_t j = 0; j < n; ++j)
        if (!std::isnan(row[j]) && (best < 0 || row[j] > row[best])) best = j;
      o[r] = int32_t(best < 0 ? 0 : best);
    }
  });
}

}  // namespace kite::cpu
