// ops::sample_rows on CUDA: one thread-block cluster per logit row (1 CTA for
// large batches; up to 8 on sm_90 when the batch leaves SMs idle), no sort of
// the vocabulary.
//
// Every element has a 64-bit order key C = order(value) << 32 | ~index, so
// "larger C" is "larger value, then lower index" (the CPU's sort order) and
// keys are distinct. Top-k, top-p and the sampling point are radix selects
// over C (11-bit digits, high to low): a histogram of counts (top-k) or of
// fixed-point probability mass (exp(s - max) * 2^40 as uint64, summed with
// shared-memory integer atomics, so results do not depend on thread timing)
// finds the digit where the cumulative weight crosses the target, then the
// next digit inside it, until one element is left (its key is kept as the
// bins fill, so no search pass follows). The kept set is always
// {C >= threshold} (min-p adds a value bound), so no candidate list is built.
//
// The histograms: most logits share the few top key bits (sign, exponent), so
// per-element shared atomics serialize on a handful of bins. Each warp first
// groups its 32 elements by bin (__match_any_sync), sums each group's masses
// with a shuffle tree (integers: any order gives the same sum), and one lane
// per group adds the group's count and mass: one atomic per distinct bin per
// warp. Count-weighted selects (top-k, the logprob top) keep only the counts.
// Any radix and any summation order give the same selected element, since the
// target and the cumulative weights are exact integers over a fixed order.
//
// Clusters: the CTAs of a row's cluster split the vocabulary (cluster-strided
// loops); each keeps its own histogram, and after a cluster barrier every CTA
// sums all of them (distributed shared memory, fixed rank order) and takes
// the same decision. Reductions (max, argmax, counts, the log-sum-exp) combine
// the CTAs' partials in rank order, so a row's results are the same run to
// run (the log-sum-exp's rounding depends on the cluster size, i.e. on m, by
// ~1 ulp). Writes to the row (bans, penalties, their undo) and to the result
// come from CTA rank 0, fenced by cluster barriers.
#include <cooperative_groups.h>

#include <cfloat>
#include <cmath>

#include "backend/cuda/sampling_kernels.h"

namespace kite::cuda {

namespace {

constexpr int kThreads = 1024;
constexpr int kDigitBits = 11;
constexpr int kBins = 1 << kDigitBits;
constexpr double kMassScale = 1099511627776.0;  // 2^40
constexpr int kMaxCluster = 8;

// This CTA's place in its row's cluster (rank, size); size 1 = a plain launch.
struct Part {
  int rank, size;
  __device__ int first() const { return rank * int(blockDim.x) + int(threadIdx.x); }
  __device__ int stride() const { return size * int(blockDim.x); }
};

// A barrier over the row's CTAs (release/acquire at cluster scope: shared
// writes before it are seen after it; `row`: also writes to the row in global
// memory, with GPU-scope fences on both sides against stale L1 lines); a block
// barrier alone.
__device__ __forceinline__ void part_sync(const Part& p, bool row = false) {
#if __CUDA_ARCH__ >= 900
  if (p.size > 1) {
    if (row) __threadfence();
    cooperative_groups::this_cluster().sync();
    if (row) __threadfence();
    return;
  }
#endif
  __syncthreads();
}
// The same shared object in CTA `rank` of the cluster.
template <typename T>
__device__ __forceinline__ T* part_map(const Part& p, T* ptr, int rank) {
#if __CUDA_ARCH__ >= 900
  if (p.size > 1) return cooperative_groups::this_cluster().map_shared_rank(ptr, unsigned(rank));
#endif
  return ptr;
}

__device__ __forceinline__ uint32_t order_key(float f) {
  if (f == 0.0f) f = 0.0f;  // -0 == +0 on the CPU: one key, ties by index
  const uint32_t u = __float_as_uint(f);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}
__device__ __forceinline__ uint64_t comp_key(float s, int32_t i) {
  return (uint64_t(order_key(s)) << 32) | uint64_t(~uint32_t(i));
}
__device__ __forceinline__ int32_t key_index(uint64_t c) { return int32_t(~uint32_t(c & 0xffffffffull)); }

// The elements one select sees and their weights.
struct Filter {
  const float* x;
  int n;
  float temp;   // s = x / temp
  uint64_t lo;  // keep C >= lo
  float mx;     // max s (masses)
  float min_e;  // keep exp(s - mx) >= min_e (min-p; 0 = off)
  bool mass;    // weight: mass (else 1)
};

// Element i's key c, and whether it is in the filter with its weight w; the
// mass (an exp) only for elements whose key passed `keep`.
template <typename Keep>
__device__ __forceinline__ bool element(const Filter& f, int i, Keep keep, uint64_t& c, uint64_t& w) {
  const float s = __fdiv_rn(f.x[i], f.temp);
  c = comp_key(s, i);
  if (c < f.lo || !keep(c)) return false;
  w = 1;
  if (f.mass || f.min_e > 0) {
    // F32 exp (the CPU's is F64): masses differ by ~1e-7 relative, which
    // moves only draws and cuts that sit that close to a boundary.
    const float d = s - f.mx;
    const float e = d > -40.0f ? expf(d) : 0.0f;
    if (e < f.min_e) return false;
    if (f.mass) w = uint64_t(double(e) * kMassScale);
  }
  return true;
}

// ---- block reductions (every thread gets the result; fixed order) ----------
template <typename T, typename Op>
__device__ T block_reduce(T v, Op op) {
  __shared__ T buf[kThreads / 32];
  for (int o = 16; o > 0; o >>= 1) v = op(v, __shfl_xor_sync(0xffffffffu, v, o));
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
  __syncthreads();
  if (lane == 0) buf[warp] = v;
  __syncthreads();
  v = buf[0];
  for (int k = 1; k < nw; ++k) v = op(v, buf[k]);
  return v;
}
// block_reduce over the row's CTAs, combined in rank order.
template <typename T, typename Op>
__device__ T part_reduce(const Part& p, T v, Op op) {
  v = block_reduce(v, op);
  if (p.size == 1) return v;
  __shared__ T slot;
  if (threadIdx.x == 0) slot = v;
  part_sync(p);
  v = *part_map(p, &slot, 0);
  for (int r = 1; r < p.size; ++r) v = op(v, *part_map(p, &slot, r));
  part_sync(p);  // the slots are read
  return v;
}
struct MaxF {
  __device__ float operator()(float a, float b) const { return fmaxf(a, b); }
};
template <typename T>
struct Sum {
  __device__ T operator()(T a, T b) const { return a + b; }
};

// Inclusive scan of v over the block.
__device__ uint64_t block_scan(uint64_t v) {
  __shared__ uint64_t warp_sums[kThreads / 32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
  for (int o = 1; o < 32; o <<= 1) {
    const uint64_t t = __shfl_up_sync(0xffffffffu, v, o);
    if (lane >= o) v += t;
  }
  __syncthreads();
  if (lane == 31) warp_sums[warp] = v;
  __syncthreads();
  if (warp == 0) {
    uint64_t s = lane < nw ? warp_sums[lane] : 0;
    for (int o = 1; o < 32; o <<= 1) {
      const uint64_t t = __shfl_up_sync(0xffffffffu, s, o);
      if (lane >= o) s += t;
    }
    if (lane < nw) warp_sums[lane] = s;
  }
  __syncthreads();
  if (warp > 0) v += warp_sums[warp - 1];
  return v;
}

struct SelectShared {
  unsigned long long weight[kBins];
  unsigned long long last[kBins];  // a key seen in the bin (the key when the bin holds one)
  unsigned int count[kBins];
  int digit;
  unsigned count_d;  // the chosen bin's element count (all CTAs)
  unsigned long long target, total, key;
};

// Sum of x over the lanes in `peers` (this lane's group, from
// __match_any_sync), complete at the group's lowest lane: a tree over the
// group's ranks, log2(group size) steps of full-warp shuffles. Integer sums:
// the order does not change the result.
__device__ __forceinline__ uint64_t reduce_peers(unsigned peers, uint64_t x) {
  const unsigned lane = threadIdx.x & 31;
  unsigned rank = __popc(peers & ((1u << lane) - 1u));  // position in the group
  unsigned rest = peers & (0xfffffffeu << lane);        // higher lanes of the group still adding
  while (__any_sync(0xffffffffu, rest != 0)) {
    const int next = __ffs(rest);  // next-higher remaining peer, 1-based (0: none)
    const uint64_t t = __shfl_sync(0xffffffffu, x, (next - 1) & 31);
    if (next) x += t;
    rest &= __ballot_sync(0xffffffffu, !(rank & 1));  // odd ranks have handed on their sum
    rank >>= 1;
  }
  return x;
}

// Adds each valid lane's element (count 1, weight w, key c) to bin d with one
// atomic per distinct bin per warp (most keys share a few top bins, so plain
// per-element shared atomics serialize). Called by all 32 lanes together.
__device__ __forceinline__ void hist_add(SelectShared& sh, bool valid, int d, uint64_t c, uint64_t w, bool mass) {
  if (__ballot_sync(0xffffffffu, valid) == 0) return;
  const unsigned peers = __match_any_sync(0xffffffffu, valid ? d : -1);
  if (mass) w = reduce_peers(peers, w);
  if (valid && int(threadIdx.x & 31) == __ffs(peers) - 1) {
    atomicAdd(&sh.count[d], unsigned(__popc(peers)));
    sh.last[d] = c;  // the bin's key when it holds one element
    if (mass && w) atomicAdd(&sh.weight[d], (unsigned long long)w);
  }
}

// How block_select turns the total weight into its target.
enum class Target { kGiven, kCeilFraction, kFloorFraction };

// Bin b's element count and weight summed over the row's CTAs (rank order).
__device__ __forceinline__ void bin_total(const Part& p, SelectShared& sh, int b, bool mass, unsigned& cnt,
                                          uint64_t& w) {
  cnt = 0;
  w = 0;
#pragma unroll
  for (int r = 0; r < kMaxCluster; ++r)  // the remote loads in flight together
    if (r < p.size) {
      const SelectShared* o = part_map(p, &sh, r);
      cnt += o->count[b];
      if (mass) w += o->weight[b];
    }
  if (!mass) w = cnt;  // count-weighted: every weight is 1
}

// The element j (in descending C among f's elements) where the cumulative
// weight first exceeds target, i.e. cum(j - 1) <= target < cum(j); returns
// j's key C. The target is given (below the total weight), or a fraction of
// the total W read off the first histogram: ceil(frac W) - 1 (the smallest
// prefix with cum >= frac W) or floor(frac W) (a draw), within [0, W). Every
// CTA of the row returns the same key.
__device__ __forceinline__ uint64_t part_select(const Part& p, const Filter& f, uint64_t target, SelectShared& sh,
                                                Target how = Target::kGiven, double frac = 0) {
  uint64_t prefix = 0;
  int used = 0;  // high bits of C fixed so far
  for (;;) {
    const int width = min(kDigitBits, 64 - used), shift = 64 - used - width, nb = 1 << width;
    part_sync(p);  // the previous level's reads (of every CTA's bins) are done
    for (int b = threadIdx.x; b < kBins; b += blockDim.x) {
      sh.weight[b] = 0;
      sh.count[b] = 0;
    }
    if (threadIdx.x == 0) sh.digit = -1;
    __syncthreads();
    // Warp-uniform trip count: lanes past n take part as invalid.
    for (int base = p.first() & ~31; base < f.n; base += p.stride()) {
      const int i = base + int(threadIdx.x & 31);
      uint64_t c = 0, w = 0;
      const bool valid =
          i < f.n && element(
                         f, i, [&](uint64_t k) { return used == 0 || (k >> (64 - used)) == prefix; }, c, w);
      hist_add(sh, valid, int((c >> shift) & uint64_t(nb - 1)), c, w, f.mass);
    }
    part_sync(p);  // every CTA's bins are complete
    // Positions 2t, 2t + 1 in descending digit order.
    const int p0 = 2 * int(threadIdx.x), b0 = nb - 1 - p0, b1 = nb - 2 - p0;
    unsigned cnt;
    uint64_t w0 = 0, w1 = 0;
    if (p0 < nb) bin_total(p, sh, b0, f.mass, cnt, w0);
    if (p0 + 1 < nb) bin_total(p, sh, b1, f.mass, cnt, w1);
    const uint64_t incl = block_scan(w0 + w1), excl = incl - (w0 + w1);
    if (how != Target::kGiven && used == 0) {
      if (threadIdx.x == blockDim.x - 1) sh.total = incl;
      __syncthreads();
      const uint64_t total = sh.total;
      const double want = frac * double(total);
      target = how == Target::kFloorFraction ? uint64_t(want) : (want >= 1.0 ? uint64_t(ceil(want)) - 1 : 0);
      if (target >= total) target = total > 0 ? total - 1 : 0;
    }
    if (w0 > 0 && excl <= target && target < excl + w0) {
      sh.digit = b0;
      sh.target = target - excl;
    } else if (w1 > 0 && excl + w0 <= target && target < excl + w0 + w1) {
      sh.digit = b1;
      sh.target = target - excl - w0;
    }
    __syncthreads();
    if (threadIdx.x == 0 && sh.digit < 0) {  // target past the total (rounding): the last element
      for (int d = 0; d < nb; ++d) {
        uint64_t w;
        bin_total(p, sh, d, f.mass, cnt, w);
        if (cnt > 0) {
          sh.digit = d;
          sh.target = w > 0 ? w - 1 : 0;
          break;
        }
      }
    }
    if (threadIdx.x == 0 && sh.digit >= 0) {  // the bin's count; its one key, from the CTA that saw it
      uint64_t w;
      bin_total(p, sh, sh.digit, false, sh.count_d, w);
      if (sh.count_d == 1)
        for (int r = 0; r < p.size; ++r) {
          const SelectShared* o = part_map(p, &sh, r);
          if (o->count[sh.digit] == 1) sh.key = o->last[sh.digit];
        }
    }
    __syncthreads();
    const int d = sh.digit;
    if (d < 0) return used ? prefix << (64 - used) : 0;  // no element at all (callers never ask)
    target = sh.target;
    prefix = (prefix << width) | uint64_t(d);
    used += width;
    if (sh.count_d == 1) return sh.key;
    if (used == 64) return prefix;
  }
}

__device__ float part_max(const Part& p, const float* x, int n) {
  float m = -INFINITY;
  for (int i = p.first(); i < n; i += p.stride()) m = fmaxf(m, x[i]);
  return part_reduce(p, m, MaxF());
}

// argmax: larger value, then lower index; NaN skipped.
__device__ int32_t part_argmax(const Part& p, const float* x, int n) {
  uint64_t best = 0;  // comp_key; 0 = none
  for (int i = p.first(); i < n; i += p.stride())
    if (!isnan(x[i])) {
      const uint64_t c = comp_key(x[i], i);
      if (c > best) best = c;
    }
  struct MaxU {
    __device__ uint64_t operator()(uint64_t a, uint64_t b) const { return a > b ? a : b; }
  };
  best = part_reduce(p, best, MaxU());
  return best == 0 ? 0 : key_index(best);
}

// Row blockIdx.x / cluster; the CTAs of a cluster share a row. `logits` is
// written (bans, penalties) and read back by other CTAs: no __restrict__.
template <bool kClustered>
__global__ __launch_bounds__(kThreads, kClustered ? 1 : 2) void sample_rows_kernel(
    float* logits, int64_t vocab, int cluster, const SampleRowArgs* __restrict__ rows,
    const int32_t* __restrict__ pen_tok, const int32_t* __restrict__ pen_cnt, int32_t n_pen,
    const int32_t* __restrict__ banned, float* __restrict__ saved, SampleResult* out) {
  __shared__ SelectShared sh;
  __shared__ uint64_t top_keys[kSampleMaxTop];
  __shared__ int n_top;
  const Part p{kClustered ? int(blockIdx.x) % cluster : 0, kClustered ? cluster : 1};
  const int row = int(blockIdx.x) / p.size;
  const bool lead = p.rank == 0 && threadIdx.x == 0;  // writes the result
  const bool owner = p.rank == 0;                     // writes the row
  const SampleRowArgs a = rows[row];
  float* x = logits + int64_t(row) * vocab;  // [vocab]
  const int n = int(vocab);
  SampleResult* res = out + row;
  const bool want_lp = a.num_logprobs >= 0;
  double lse = 0;
  if (want_lp) {  // from the raw row
    const float mx = part_max(p, x, n);
    double s = 0;
    for (int i = p.first(); i < n; i += p.stride()) s += double(expf(x[i] - mx));
    s = part_reduce(p, s, Sum<double>());
    lse = double(mx) + log(s);
    const int k = min(a.num_logprobs, min(n, kSampleMaxTop));
    if (k > 0) {
      const Filter f{x, n, 1.0f, 0, 0, 0, false};
      const uint64_t thr = part_select(p, f, uint64_t(k - 1), sh);
      if (lead) n_top = 0;
      part_sync(p);
      int* n_top0 = part_map(p, &n_top, 0);  // rank 0 gathers the keys
      uint64_t* top0 = part_map(p, &top_keys[0], 0);
      for (int i = p.first(); i < n; i += p.stride()) {
        const uint64_t c = comp_key(x[i], i);
        if (c >= thr) {
          const int slot = atomicAdd(n_top0, 1);
          if (slot < kSampleMaxTop) top0[slot] = c;
        }
      }
      part_sync(p);
      if (lead) {
        const int cnt = min(n_top, k);
        for (int i = 1; i < cnt; ++i)  // insertion sort, descending
          for (int j = i; j > 0 && top_keys[j] > top_keys[j - 1]; --j) {
            const uint64_t t = top_keys[j];
            top_keys[j] = top_keys[j - 1];
            top_keys[j - 1] = t;
          }
        for (int i = 0; i < cnt; ++i) {
          const int32_t id = key_index(top_keys[i]);
          res->top_ids[i] = id;
          res->top_logprobs[i] = float(double(x[id]) - lse);
        }
        res->n_top = cnt;
      }
    } else if (lead) {
      res->n_top = 0;
    }
  } else if (lead) {
    res->n_top = 0;
  }

  int32_t token = a.forced_token;
  if (token < 0) {
    const bool penalize =
        a.params.repetition_penalty != 1.0f || a.params.presence_penalty != 0.0f || a.params.frequency_penalty != 0.0f;
    const int pb = penalize ? a.penalty_begin : 0, pe = penalize ? a.penalty_end : 0;
    const bool modify = pe > pb || a.banned_end > a.banned_begin;
    if (modify) {
      part_sync(p, true);  // every CTA's reads of the raw row are done
      if (owner) {
        for (int i = pb + int(threadIdx.x); i < pe; i += blockDim.x) saved[i] = x[pen_tok[i]];
        for (int i = a.banned_begin + int(threadIdx.x); i < a.banned_end; i += blockDim.x)
          saved[n_pen + i] = x[banned[i]];
      }
      __syncthreads();
      if (owner)
        for (int i = a.banned_begin + int(threadIdx.x); i < a.banned_end; i += blockDim.x) x[banned[i]] = -INFINITY;
      __syncthreads();
      if (owner)
        for (int i = pb + int(threadIdx.x); i < pe; i += blockDim.x) {  // distinct ids: one thread each
          float l = x[pen_tok[i]];
          if (a.params.repetition_penalty != 1.0f)
            l = l > 0 ? __fdiv_rn(l, a.params.repetition_penalty) : __fmul_rn(l, a.params.repetition_penalty);
          if ((a.params.presence_penalty != 0.0f || a.params.frequency_penalty != 0.0f) && pen_cnt[i] > 0)
            l = __fsub_rn(
                l, __fadd_rn(a.params.presence_penalty, __fmul_rn(a.params.frequency_penalty, float(pen_cnt[i]))));
          x[pen_tok[i]] = l;
        }
      part_sync(p, true);  // the modified row is seen by every CTA
    }
    if (a.params.temperature == 0.0f) {
      token = part_argmax(p, x, n);
    } else {
      const float temp = a.params.temperature;
      const float mx = __fdiv_rn(part_max(p, x, n), temp);
      uint64_t lo = 0;
      if (a.params.top_k > 0 && a.params.top_k < n)
        lo = part_select(p, Filter{x, n, temp, 0, mx, 0, false}, uint64_t(a.params.top_k - 1), sh);
      if (a.params.top_p < 1.0f)  // the smallest prefix with mass >= top_p of the top-k mass
        lo = part_select(p, Filter{x, n, temp, lo, mx, 0, true}, 0, sh, Target::kCeilFraction, double(a.params.top_p));
      const Filter f{x, n, temp, lo, mx, a.params.min_p, true};
      token = key_index(part_select(p, f, 0, sh, Target::kFloorFraction, a.uniform));
    }
    if (modify && want_lp) {  // logprobs and rank from the raw row
      part_sync(p, true);
      if (owner) {
        for (int i = pb + int(threadIdx.x); i < pe; i += blockDim.x) x[pen_tok[i]] = saved[i];
        for (int i = a.banned_begin + int(threadIdx.x); i < a.banned_end; i += blockDim.x)
          x[banned[i]] = saved[n_pen + i];
      }
      part_sync(p, true);
    }
  }
  if (want_lp) {
    const float v = x[token];
    int cnt = 0;
    for (int i = p.first(); i < n; i += p.stride())
      if (x[i] > v || (x[i] == v && i < token)) ++cnt;
    cnt = part_reduce(p, cnt, Sum<int>());
    if (lead) {
      res->rank = 1 + cnt;
      res->logprob = float(double(v) - lse);
    }
  } else if (lead) {
    res->rank = 0;
    res->logprob = 0;
  }
  if (lead) res->token = token;
  part_sync(p);  // no CTA leaves while another may read its shared memory
}

}  // namespace

cudaError_t launch_sample_rows(float* logits, int64_t m, int64_t vocab, const SampleRowArgs* rows,
                               const int32_t* penalty_tokens, const int32_t* output_counts, int32_t n_pen,
                               const int32_t* banned, float* saved, SampleResult* out, cudaStream_t stream) {
  if (m == 0) return cudaSuccess;
  // Small batches: a cluster of 2-8 CTAs per row (sm_90 code and device), at
  // most one CTA per SM in all (a clustered CTA takes a whole SM's registers);
  // larger ones: one CTA per row, two per SM.
  int dev = 0, major = 0, sms = 0;
  cudaError_t e = cudaGetDevice(&dev);
  if (e == cudaSuccess) e = cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev);
  if (e == cudaSuccess) e = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev);
  if (e != cudaSuccess) return e;
  static const int binary = [] {  // the kernel as built: cluster barriers need sm_90 code
    cudaFuncAttributes fa{};
    const bool ok = cudaFuncGetAttributes(&fa, sample_rows_kernel<true>) == cudaSuccess;
    (void)cudaGetLastError();
    return ok ? fa.binaryVersion : 0;
  }();
  int cluster = 1;
  while (major >= 9 && binary >= 90 && cluster < kMaxCluster && m * 2 * cluster <= int64_t(sms)) cluster *= 2;
  if (cluster > 1) {
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = dim3(unsigned(m * cluster));
    cfg.blockDim = dim3(kThreads);
    cfg.dynamicSmemBytes = 0;
    cfg.stream = stream;
    cudaLaunchAttribute attr[1];
    attr[0].id = cudaLaunchAttributeClusterDimension;
    attr[0].val.clusterDim.x = unsigned(cluster);
    attr[0].val.clusterDim.y = 1;
    attr[0].val.clusterDim.z = 1;
    cfg.attrs = attr;
    cfg.numAttrs = 1;
    if (cudaLaunchKernelEx(&cfg, sample_rows_kernel<true>, logits, vocab, cluster, rows, penalty_tokens, output_counts,
                           n_pen, banned, saved, out) == cudaSuccess)
      return cudaGetLastError();
    (void)cudaGetLastError();  // a cluster that does not fit: one CTA per row
  }
  sample_rows_kernel<false><<<unsigned(m), kThreads, 0, stream>>>(logits, vocab, 1, rows, penalty_tokens, output_counts,
                                                                  n_pen, banned, saved, out);
  return cudaGetLastError();
}

}  // namespace kite::cuda
