// Paged attention on CUDA, BF16 in and out, F32 softmax and accumulation,
// tensor cores (mma.sync m16n8k16) for Q K^T and P V.
//
// Query rows are packed per KV head: the rows of one tile are (token, head)
// pairs of the `group` query heads sharing that KV head, head fastest, so a
// K/V row brought into shared memory serves the whole group.
//
//  - decode_kernel (every sequence has at most one query, or the one-query
//    sequences of a mixed batch): one CTA per (sequence, KV head, split),
//    the KV heads of a sequence adjacent in the grid; its
//    16 rows are the group's heads. The 4 warps take turns over 16-key tiles
//    of the context (one cache block at block_size 16), each with its own
//    3-stage cp.async pipeline, and the CTA merges the warps' (max, sum, O).
//  - prefill_kernel (sequences with more than one query): FlashAttention-2;
//    one CTA per 128 packed rows (8 warps x 16) and KV head, 64-key tiles
//    double-buffered in shared memory, causal mask with the offset L - n_q;
//    the tiles that see the most keys are handed out first.
//  - Split-KV: when the batch alone would leave SMs idle, each query row's
//    keys are cut into `splits` ranges; CTAs write normalized F32 partials
//    and their log-sum-exp to a workspace and merge_kernel combines them.
//  - Sliding window (Params::window = W > 0): a query at position pos sees
//    keys [max(0, pos - W + 1), pos]. A CTA's key range starts at the tile
//    holding its earliest row's first visible key (rounded down to a tile
//    boundary); tiles that reach below a row's window are masked, and a
//    prefill warp skips the tiles below all of its rows' windows. So a
//    query reads about W keys however long its context is.
//
// Cache rows are found through the block table per key, so every block_size
// works; keys past a row's range are zero-filled, never read.
#include <algorithm>
#include <cstdint>
#include <limits>
#include <mutex>

#include "backend/cuda/attention_common.cuh"
#include "backend/cuda/attention_host.cuh"
#include "backend/cuda/attention_kernels.h"

namespace kite::cuda {

namespace attn {

namespace {

constexpr int kThreads = 128;  // 4 warps
constexpr int kWarps = kThreads / kWarpSize;
constexpr int kDecodeStages = 3;
constexpr int kDecodeTileKeys = 16;
constexpr int kPrefillTileKeys = 64;

struct Params {
  const bf16* q;             // [n_tokens, n_heads, head_dim]
  const bf16* k_cache;       // [num_blocks, block_size, n_kv_heads, head_dim]
  const bf16* v_cache;       // [num_blocks, block_size, n_kv_heads, head_dim]
  const int32_t* seq_start;  // [n_seqs + 1] query_start
  const int32_t* ctx_lens;   // [n_seqs]
  const int32_t* tables;     // [n_seqs, width]
  int n_seqs, n_heads, n_kv_heads, group, head_chunks;
  int block_size, width, num_blocks;
  float scale_log2;        // scale * log2(e)
  int window;              // sliding window: 0 none, W >= 1 keys (pos - W, pos] only
  bool single_query_only;  // decode_kernel: leave sequences with n_q != 1 to prefill_kernel
  OutputArgs out;
};

// Element offset of key position `key`'s row for KV head kvh in the cache,
// or -1 when the key is outside [0, limit) or its block id is not a block
// (so malformed tables never make a kernel read outside the cache).
template <int kHeadDim>
__device__ __forceinline__ int64_t cache_row(const Params& p, const int32_t* table, int key, int limit, int kvh) {
  if (key >= limit) return -1;
  const int b = key / p.block_size;
  if (b >= p.width) return -1;
  const int block = table[b];
  if (block < 0 || block >= p.num_blocks) return -1;
  return ((int64_t(block) * p.block_size + (key - b * p.block_size)) * p.n_kv_heads + kvh) * kHeadDim;
}

// Copies kKeys cache rows starting at key position key0 into swizzled K and
// V tiles; keys at or past `limit` become zeros. `tid` in [0, kLanes).
template <int kHeadDim, int kKeys, int kLanes>
__device__ __forceinline__ void load_kv_tile(const Params& p, const int32_t* table, int kvh, int key0, int limit,
                                             bf16* k_tile, bf16* v_tile, int tid) {
  constexpr int kChunks = kHeadDim / 8;
  static_assert((kKeys * kChunks) % kLanes == 0, "whole chunks per lane");
#pragma unroll
  for (int i = 0; i < kKeys * kChunks / kLanes; ++i) {
    const int idx = tid + i * kLanes, row = idx / kChunks, c = idx % kChunks;
    const int64_t off = cache_row<kHeadDim>(p, table, key0 + row, limit, kvh);
    const bool valid = off >= 0;
    const int64_t src = valid ? off + c * 8 : 0;
    cp_async_16(smem_addr(k_tile + swz<kHeadDim>(row, c)), p.k_cache + src, valid);
    cp_async_16(smem_addr(v_tile + swz<kHeadDim>(row, c)), p.v_cache + src, valid);
  }
}

// load_kv_tile when the kKeys keys from key0 lie in one cache block
// (block_size a multiple of kKeys, key0 a multiple of kKeys): one table
// lookup and no division per row.
template <int kHeadDim, int kKeys, int kLanes>
__device__ __forceinline__ void load_kv_tile_one_block(const Params& p, const int32_t* table, int kvh, int key0,
                                                       int limit, bf16* k_tile, bf16* v_tile, int tid) {
  constexpr int kChunks = kHeadDim / 8;
  static_assert((kKeys * kChunks) % kLanes == 0, "whole chunks per lane");
  const int b = key0 / p.block_size;
  int block = key0 < limit && b < p.width ? table[b] : -1;
  if (block >= p.num_blocks) block = -1;
  const int64_t row_stride = int64_t(p.n_kv_heads) * kHeadDim;
  const int64_t base =
      block >= 0 ? (int64_t(block) * p.block_size + (key0 - b * p.block_size)) * row_stride + int64_t(kvh) * kHeadDim
                 : 0;
#pragma unroll
  for (int i = 0; i < kKeys * kChunks / kLanes; ++i) {
    const int idx = tid + i * kLanes, row = idx / kChunks, c = idx % kChunks;
    const bool valid = block >= 0 && key0 + row < limit;
    const int64_t src = valid ? base + row * row_stride + c * 8 : 0;
    cp_async_16(smem_addr(k_tile + swz<kHeadDim>(row, c)), p.k_cache + src, valid);
    cp_async_16(smem_addr(v_tile + swz<kHeadDim>(row, c)), p.v_cache + src, valid);
  }
}

// Keys per split: a range of len keys cut into `splits` parts, each a
// multiple of `align` keys (the last ones may be empty).
__device__ __forceinline__ int split_len(int len, int splits, int align) {
  const int per = (max(len, 0) + splits - 1) / splits;
  return (per + align - 1) / align * align;
}

// The first key position a query at position pos sees: pos - window + 1 (not
// below 0) with a sliding window, else 0.
__device__ __forceinline__ int first_key(int pos, int window) {
  const int64_t first = int64_t(pos) - window + 1;  // no overflow for any int pos
  return window > 0 && first > 0 ? int(first) : 0;
}

template <int kHeadDim>
constexpr int decode_smem_bytes() {
  return (16 + kWarps * kDecodeStages * 2 * kDecodeTileKeys) * kHeadDim * int(sizeof(bf16));
}

template <int kHeadDim>
__global__ void __launch_bounds__(kThreads, 2) decode_kernel(Params p) {
  constexpr int kChunks = kHeadDim / 8, kTile = kDecodeTileKeys * kHeadDim;
  extern __shared__ __align__(128) unsigned char smem[];
  bf16* q_tile = reinterpret_cast<bf16*>(smem);  // [16][kHeadDim]
  bf16* stages = q_tile + 16 * kHeadDim;         // [kWarps][kDecodeStages][K, V][16][kHeadDim]
  const int warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize, g = lane >> 2, t = lane & 3;
  // blockIdx.x: sequence-major, (KV head, head chunk) fastest: the CTAs of
  // one sequence run side by side and together read whole cache rows (all
  // KV heads of a key position are adjacent in the cache).
  const int per_seq = p.n_kv_heads * p.head_chunks;
  const int s = int(blockIdx.x / per_seq), y = int(blockIdx.x % per_seq);
  const int kvh = y / p.head_chunks, h0 = (y % p.head_chunks) * 16;
  const int split = blockIdx.z, splits = gridDim.z;
  const int q0 = p.seq_start[s], n_q = p.seq_start[s + 1] - q0;
  if (n_q <= 0 || (p.single_query_only && n_q != 1)) return;
  const int ctx = p.ctx_lens[s], rows = min(16, p.group - h0);
  const int32_t* table = p.tables + int64_t(s) * p.width;
  bf16* my_stages = stages + warp * kDecodeStages * 2 * kTile;
  float* red_o = reinterpret_cast<float*>(stages);  // [kWarps][16][kHeadDim], after the key loop
  float* red_ml = red_o + kWarps * 16 * kHeadDim;   // [kWarps][16][m, l]

  // Usually one query; more only when the hints said "decode" wrongly.
  for (int i = 0; i < n_q; ++i) {
    const int64_t token = int64_t(q0) + i;
    if (token < 0 || token >= p.out.n_tokens) break;  // malformed query_start
    const int len = ctx - n_q + i + 1;                // the query sits at position len - 1
    const int first = first_key(len - 1, p.window);   // visible keys [first, len)
    // Tiles from the one holding `first`; the splits cut [kv0, len).
    const int kv0 = first / kDecodeTileKeys * kDecodeTileKeys;
    const int per = split_len(len - kv0, splits, kDecodeTileKeys);
    const int lo = kv0 + split * per, hi = min(len, lo + per);
    const int n_tiles = hi > lo ? (hi - lo + kDecodeTileKeys - 1) / kDecodeTileKeys : 0;
    const int mine = n_tiles > warp ? (n_tiles - warp + kWarps - 1) / kWarps : 0;  // tiles warp, warp + 4, ...

    for (int idx = threadIdx.x; idx < 16 * kChunks; idx += kThreads) {
      const int r = idx / kChunks, c = idx % kChunks;
      const bool valid = r < rows;
      const int64_t row = token * p.n_heads + kvh * p.group + h0 + (valid ? r : 0);
      cp_async_16(smem_addr(q_tile + swz<kHeadDim>(r, c)), p.q + row * kHeadDim + c * 8, valid);
    }
    cp_async_commit();
    // kv0 and per, hence lo, are multiples of the tile: with block_size a
    // multiple of it too, every tile lies in one cache block.
    const bool one_block = p.block_size % kDecodeTileKeys == 0;
    const auto load = [&](int u) {
      bf16* k_tile = my_stages + (u % kDecodeStages) * 2 * kTile;
      const int key0 = lo + (warp + u * kWarps) * kDecodeTileKeys;
      if (one_block)
        load_kv_tile_one_block<kHeadDim, kDecodeTileKeys, kWarpSize>(p, table, kvh, key0, hi, k_tile, k_tile + kTile,
                                                                     lane);
      else
        load_kv_tile<kHeadDim, kDecodeTileKeys, kWarpSize>(p, table, kvh, key0, hi, k_tile, k_tile + kTile, lane);
    };
#pragma unroll
    for (int u = 0; u < kDecodeStages - 1; ++u) {
      if (u < mine) load(u);
      cp_async_commit();
    }
    cp_async_wait<kDecodeStages - 1>();  // the Q group
    __syncthreads();
    WarpState<kHeadDim, 1> st;
    st.reset();
    st.load_q(q_tile, lane);
    const int pos[1][2] = {{len - 1, len - 1}};
    for (int u = 0; u < mine; ++u) {
      cp_async_wait<kDecodeStages - 2>();
      __syncwarp();
      if (u + kDecodeStages - 1 < mine) load(u + kDecodeStages - 1);
      cp_async_commit();
      const bf16* k_tile = my_stages + (u % kDecodeStages) * 2 * kTile;
      const int key0 = lo + (warp + u * kWarps) * kDecodeTileKeys;
      const bool masked = key0 + kDecodeTileKeys > hi || key0 < first;
      st.template step<kDecodeTileKeys>(k_tile, k_tile + kTile, lane, p.scale_log2, masked, key0, pos, hi, p.window);
    }
    cp_async_wait<0>();
    st.finish_sums();
    __syncthreads();  // every warp is done with its stages: reuse them for the merge
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int r = g + 8 * half;
      if (r >= rows) continue;  // padding rows of the MMA tile (group < 16)
      float* dst = red_o + (warp * 16 + r) * kHeadDim + 2 * t;
#pragma unroll
      for (int d = 0; d < kHeadDim / 8; ++d)
        *reinterpret_cast<float2*>(dst + 8 * d) = make_float2(st.o[0][d][2 * half], st.o[0][d][2 * half + 1]);
      if (t == 0) {
        red_ml[(warp * 16 + r) * 2] = st.m[0][half];
        red_ml[(warp * 16 + r) * 2 + 1] = st.l[0][half];
      }
    }
    __syncthreads();
    // Merge the warps: thread -> (row, 8 dims).
    for (int idx = threadIdx.x; idx < 16 * kChunks; idx += kThreads) {
      const int r = idx / kChunks, c = idx % kChunks;
      if (r >= rows) continue;
      float m_max = -INFINITY;
#pragma unroll
      for (int w = 0; w < kWarps; ++w) m_max = fmaxf(m_max, red_ml[(w * 16 + r) * 2]);
      float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0}, l_sum = 0.0f;
#pragma unroll
      for (int w = 0; w < kWarps; ++w) {
        const float m_w = red_ml[(w * 16 + r) * 2];
        const float wt = m_w == -INFINITY ? 0.0f : fast_exp2(m_w - m_max);
        l_sum += wt * red_ml[(w * 16 + r) * 2 + 1];
        const float4* src = reinterpret_cast<const float4*>(red_o + (w * 16 + r) * kHeadDim + c * 8);
        const float4 a = src[0], b = src[1];
        acc[0] += wt * a.x, acc[1] += wt * a.y, acc[2] += wt * a.z, acc[3] += wt * a.w;
        acc[4] += wt * b.x, acc[5] += wt * b.y, acc[6] += wt * b.z, acc[7] += wt * b.w;
      }
      const float inv = l_sum > 0.0f ? 1.0f / l_sum : 0.0f;
      const int64_t orow = token * p.n_heads + kvh * p.group + h0 + r;
      if (splits == 1) {
        uint4 v;
        v.x = pack_bf16(acc[0] * inv, acc[1] * inv);
        v.y = pack_bf16(acc[2] * inv, acc[3] * inv);
        v.z = pack_bf16(acc[4] * inv, acc[5] * inv);
        v.w = pack_bf16(acc[6] * inv, acc[7] * inv);
        *reinterpret_cast<uint4*>(p.out.out + orow * kHeadDim + c * 8) = v;
      } else {
        const int64_t prow = int64_t(split) * p.out.n_tokens * p.n_heads + orow;
        float4* dst = reinterpret_cast<float4*>(p.out.part_o + prow * kHeadDim + c * 8);
        dst[0] = make_float4(acc[0] * inv, acc[1] * inv, acc[2] * inv, acc[3] * inv);
        dst[1] = make_float4(acc[4] * inv, acc[5] * inv, acc[6] * inv, acc[7] * inv);
        if (c == 0) p.out.part_lse[prow] = l_sum > 0.0f ? m_max + __log2f(l_sum) : -INFINITY;
      }
    }
    __syncthreads();  // before the next query reuses shared memory
  }
}

template <int kHeadDim, int kPWarps, int kMT>
constexpr int prefill_smem_bytes() {
  return (16 * kMT * kPWarps + 2 * 2 * kPrefillTileKeys) * kHeadDim * int(sizeof(bf16));
}

// The first packed-row tile of sequence s in the prefill grid: sequence s
// owns tiles [tile_base(s), tile_base(s + 1)), at least ceil(n_q * group / rows).
__device__ __forceinline__ int64_t tile_base(const Params& p, int s, int rows) {
  return int64_t(p.seq_start[s]) * p.group / rows + s;
}

// kPWarps warps of 16 * kMT rows each: tiles of 16 * kMT * kPWarps packed rows.
template <int kHeadDim, int kPWarps, int kMT>
__global__ void __launch_bounds__(kPWarps* kWarpSize, kPWarps == 4 ? 2 : 1) prefill_kernel(Params p) {
  constexpr int kChunks = kHeadDim / 8, kTile = kPrefillTileKeys * kHeadDim, kWarpRows = 16 * kMT;
  constexpr int kPrefillRows = kWarpRows * kPWarps, kPThreads = kPWarps * kWarpSize;
  extern __shared__ __align__(128) unsigned char smem[];
  bf16* q_tile = reinterpret_cast<bf16*>(smem);     // [kPrefillRows][kHeadDim]
  bf16* stages = q_tile + kPrefillRows * kHeadDim;  // [2][K, V][64][kHeadDim]
  const int warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize, g = lane >> 2, t = lane & 3;
  // Later tiles of a sequence see more keys: hand them out first.
  const int64_t x = int64_t(gridDim.x) - 1 - blockIdx.x;
  int s = 0;
  for (int hi = p.n_seqs - 1; s < hi;) {  // the last s with tile_base(s) <= x
    const int mid = (s + hi + 1) / 2;
    if (tile_base(p, mid, kPrefillRows) <= x)
      s = mid;
    else
      hi = mid - 1;
  }
  const int q0 = p.seq_start[s], n_q = p.seq_start[s + 1] - q0;
  if (n_q <= 1) return;  // decode_kernel's
  const int64_t tile = x - tile_base(p, s, kPrefillRows), n_rows = int64_t(n_q) * p.group;
  if (tile * kPrefillRows >= n_rows) return;
  const int kvh = blockIdx.y, split = blockIdx.z, splits = gridDim.z;
  const int ctx = p.ctx_lens[s];
  const int32_t* table = p.tables + int64_t(s) * p.width;
  const int64_t row0 = tile * kPrefillRows;  // first packed row of this CTA
  // Packed row -> position of its token (rows past the sequence's last take the last one's).
  const auto pos_of = [&](int64_t row) { return ctx - n_q + int(min(row, n_rows - 1) / p.group); };
  // Keys any row of the tile sees: [kv_begin, kv_end) with kv_begin the first
  // row's first visible key rounded down to a key tile.
  const int kv_end = pos_of(row0 + kPrefillRows - 1) + 1;
  const int kv_begin = first_key(pos_of(row0), p.window) / kPrefillTileKeys * kPrefillTileKeys;
  const int per = split_len(kv_end - kv_begin, splits, kPrefillTileKeys);
  const int lo = kv_begin + split * per, hi = min(kv_end, lo + per);
  const int n_tiles = hi > lo ? (hi - lo + kPrefillTileKeys - 1) / kPrefillTileKeys : 0;

  for (int idx = threadIdx.x; idx < kPrefillRows * kChunks; idx += kPThreads) {
    const int r = idx / kChunks, c = idx % kChunks;
    const int64_t row = row0 + r;
    const int64_t token = q0 + row / p.group;
    const bool valid = row < n_rows && token < p.out.n_tokens;
    const int64_t qrow = valid ? token * p.n_heads + kvh * p.group + row % p.group : 0;
    cp_async_16(smem_addr(q_tile + swz<kHeadDim>(r, c)), p.q + qrow * kHeadDim + c * 8, valid);
  }
  cp_async_commit();
  const auto load = [&](int it) {
    bf16* k_tile = stages + (it & 1) * 2 * kTile;
    load_kv_tile<kHeadDim, kPrefillTileKeys, kPThreads>(p, table, kvh, lo + it * kPrefillTileKeys, hi, k_tile,
                                                        k_tile + kTile, threadIdx.x);
  };
  if (n_tiles > 0) load(0);
  cp_async_commit();

  const int64_t wrow = row0 + warp * kWarpRows;  // this warp's first row
  const bool warp_live = wrow < n_rows;
  const int warp_min_pos = pos_of(wrow), warp_max_pos = pos_of(wrow + kWarpRows - 1);
  // Sliding window: every row of the warp sees no key below warp_first_lo;
  // some row misses keys below warp_first_hi (both 0 without a window).
  const int warp_first_lo = first_key(warp_min_pos, p.window), warp_first_hi = first_key(warp_max_pos, p.window);
  int pos[kMT][2];
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt) {
    pos[mt][0] = pos_of(wrow + mt * 16 + g);
    pos[mt][1] = pos_of(wrow + mt * 16 + g + 8);
  }
  WarpState<kHeadDim, kMT> st;
  st.reset();
  for (int it = 0; it < n_tiles; ++it) {
    if (it + 1 < n_tiles) {
      load(it + 1);
      cp_async_commit();
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    if (it == 0) st.load_q(q_tile + warp * kWarpRows * kHeadDim, lane);
    const int key0 = lo + it * kPrefillTileKeys;
    if (warp_live && key0 <= warp_max_pos && key0 + kPrefillTileKeys > warp_first_lo) {
      const bf16* k_tile = stages + (it & 1) * 2 * kTile;
      const bool masked = key0 + kPrefillTileKeys > min(hi, warp_min_pos + 1) || key0 < warp_first_hi;
      st.template step<kPrefillTileKeys>(k_tile, k_tile + kTile, lane, p.scale_log2, masked, key0, pos, hi, p.window);
    }
    __syncthreads();  // the stage is reloaded next iteration
  }
  cp_async_wait<0>();
  st.finish_sums();
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int64_t row = wrow + mt * 16 + g + 8 * half;
      const int64_t token = q0 + row / p.group;
      if (row >= n_rows || token >= p.out.n_tokens) continue;
      store_row<kHeadDim>(p.out, split, token, kvh * p.group + int(row % p.group), st.m[mt][half], st.l[mt][half],
                          st.o[mt], half, t);
    }
}

// out[row] = sum_s w_s part_o[s, row] / sum_s w_s with w_s = 2^(lse_s - max lse).
// One warp per (token, head) row.
template <int kHeadDim>
__global__ void __launch_bounds__(kThreads)
    merge_kernel(const float* part_o, const float* part_lse, bf16* out, int64_t rows, int splits) {
  constexpr int kPer = kHeadDim / kWarpSize;  // 2 or 4 dims per lane
  const int64_t row = int64_t(blockIdx.x) * kWarps + threadIdx.x / kWarpSize;
  const int lane = threadIdx.x % kWarpSize;
  if (row >= rows) return;
  float m_max = -INFINITY;
  for (int s = 0; s < splits; ++s) m_max = fmaxf(m_max, part_lse[int64_t(s) * rows + row]);
  float acc[kPer] = {}, w_sum = 0.0f;
  for (int s = 0; s < splits; ++s) {
    const float lse = part_lse[int64_t(s) * rows + row];
    if (lse == -INFINITY) continue;  // an empty split
    const float w = fast_exp2(lse - m_max);
    w_sum += w;
    const float* src = part_o + (int64_t(s) * rows + row) * kHeadDim + lane * kPer;
#pragma unroll
    for (int e = 0; e < kPer; ++e) acc[e] += w * src[e];
  }
  const float inv = w_sum > 0.0f ? 1.0f / w_sum : 0.0f;
  bf16* dst = out + row * kHeadDim + lane * kPer;
#pragma unroll
  for (int e = 0; e < kPer; e += 2) *reinterpret_cast<uint32_t*>(dst + e) = pack_bf16(acc[e] * inv, acc[e + 1] * inv);
}

struct DeviceInfo {
  int sms = 0;
  bool configured[2] = {false, false};  // dynamic shared memory limits set (head_dim 64, 128)
};

// The prefill CTA: 8 warps of 16 rows (128-row tiles, one CTA per SM).
// Measured on an H200 at 4096 tokens, 32/8 heads, head_dim 128: 182 TFLOP/s,
// against 151 for 4 warps of 16 rows (two CTAs per SM) and 155 for 4 warps
// of 32 rows (K/V fragments shared by two m-tiles, but 255 registers with
// spills).
constexpr int kPrefillWarps = 8, kPrefillMTiles = 1;

template <int kHeadDim, int kPWarps, int kMT>
void set_prefill_smem() {
  check(cudaFuncSetAttribute(prefill_kernel<kHeadDim, kPWarps, kMT>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                             prefill_smem_bytes<kHeadDim, kPWarps, kMT>()),
        "cudaFuncSetAttribute (paged attention prefill)");
}

template <int kHeadDim, int kPWarps, int kMT>
void launch_prefill(const Params& p, dim3 grid, cudaStream_t stream) {
  prefill_kernel<kHeadDim, kPWarps, kMT>
      <<<grid, kPWarps * kWarpSize, prefill_smem_bytes<kHeadDim, kPWarps, kMT>(), stream>>>(p);
}

constexpr int kMaxDevices = 64;
std::mutex g_info_mutex;
DeviceInfo g_info[kMaxDevices];

DeviceInfo& device_info(int device) {
  if (device < 0 || device >= kMaxDevices)
    fail("device", "cuda", "expected a CUDA device index below {}, got {}", kMaxDevices, device);
  std::lock_guard<std::mutex> lock(g_info_mutex);
  DeviceInfo& info = g_info[device];
  if (info.sms == 0) check(cudaDeviceGetAttribute(&info.sms, cudaDevAttrMultiProcessorCount, device), "SM count");
  return info;
}

template <int kHeadDim>
void configure(DeviceInfo& info) {
  std::lock_guard<std::mutex> lock(g_info_mutex);
  bool& done = info.configured[kHeadDim == 128];
  if (done) return;
  check(cudaFuncSetAttribute(decode_kernel<kHeadDim>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                             decode_smem_bytes<kHeadDim>()),
        "cudaFuncSetAttribute (paged attention decode)");
  set_prefill_smem<kHeadDim, kPrefillWarps, kPrefillMTiles>();
  done = true;
}

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

template <int kHeadDim>
void run(const Params& base, int64_t n_tokens, const ops::PagedAttentionHints& hints, Device device,
         cudaStream_t stream) {
  DeviceInfo& info = device_info(device.index);
  configure<kHeadDim>(info);
  Params p = base;
  const bool decode_only = hints.max_query_len <= 1;
  // CTAs the batch gives without splitting; decode CTAs fit 2 per SM.
  const int64_t decode_ctas = int64_t(p.n_seqs) * p.n_kv_heads * p.head_chunks;
  constexpr int prows = kPrefillWarps * 16 * kPrefillMTiles;
  // Counted in 64-row units, as if 2 per SM like the decode CTAs.
  const int64_t prefill_ctas = ceil_div(n_tokens * p.group, prows) * p.n_kv_heads * prows / 64;
  int64_t splits = hints.kv_splits;
  if (splits <= 0) {
    const int64_t target = decode_only ? 2 * int64_t(info.sms) : int64_t(info.sms);
    const int64_t ctas = decode_only ? decode_ctas : prefill_ctas + decode_ctas;
    // At least 256 keys per split: fewer would cost more in the merge than
    // they win in parallelism. A query sees at most `window` keys.
    const int64_t keys = p.window > 0 ? std::min<int64_t>(hints.max_context_len, p.window) : hints.max_context_len;
    splits = ctas >= target ? 1 : std::min<int64_t>({ceil_div(target, std::max<int64_t>(ctas, 1)), keys / 256, 64});
    splits = std::max<int64_t>(splits, 1);
  }
  splits = std::min<int64_t>(splits, 1024);
  Tensor part_o, part_lse;
  if (splits > 1) {
    part_o = Tensor::empty({splits, n_tokens, p.n_heads, kHeadDim}, DType::F32, device);
    part_lse = Tensor::empty({splits, n_tokens, p.n_heads}, DType::F32, device);
    p.out.part_o = part_o.data_as<float>();
    p.out.part_lse = part_lse.data_as<float>();
  }
  p.out.splits = int(splits);
  p.single_query_only = !decode_only;
  if (p.n_seqs > 0) {
    const dim3 grid(unsigned(int64_t(p.n_seqs) * p.n_kv_heads * p.head_chunks), 1, unsigned(splits));
    decode_kernel<kHeadDim><<<grid, kThreads, decode_smem_bytes<kHeadDim>(), stream>>>(p);
    check(cudaGetLastError(), "paged attention decode kernel launch");
  }
  if (!decode_only && p.n_seqs > 0) {
    const int64_t tiles = n_tokens * p.group / prows + p.n_seqs;  // covers every sequence's tiles
    const dim3 grid(unsigned(tiles), unsigned(p.n_kv_heads), unsigned(splits));
    launch_prefill<kHeadDim, kPrefillWarps, kPrefillMTiles>(p, grid, stream);
    check(cudaGetLastError(), "paged attention prefill kernel launch");
  }
  if (splits > 1) {
    const int64_t rows = n_tokens * p.n_heads;
    merge_kernel<kHeadDim><<<unsigned(ceil_div(rows, kWarps)), kThreads, 0, stream>>>(p.out.part_o, p.out.part_lse,
                                                                                      p.out.out, rows, int(splits));
    check(cudaGetLastError(), "paged attention merge kernel launch");
  }
}

}  // namespace

void paged_attention(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache, const Tensor& query_start,
                     const Tensor& context_lens, const Tensor& block_tables, float scale,
                     const ops::PagedAttentionHints& hints, int64_t sliding_window, Tensor& out) {
  const int64_t n_tokens = q.dim(0), head_dim = q.dim(2);
  if (n_tokens == 0) return;
  const Device device = q.device();
  for (const auto& [arg, ptr] : {std::pair<const char*, const void*>{"q", q.data()},
                                 {"k_cache", k_cache.data()},
                                 {"v_cache", v_cache.data()},
                                 {"out", out.data()}})
    if (reinterpret_cast<uintptr_t>(ptr) % 16 != 0)
      fail("op paged_attention", arg,
           "expected a 16-byte aligned tensor on cuda (the kernels use 16-byte loads), "
           "got address {}; pass a tensor of its own or a view starting on a whole row",
           ptr);
  check(cudaSetDevice(device.index), "cudaSetDevice");
  Params p{};
  p.q = q.data_as<const bf16>();
  p.k_cache = k_cache.data_as<const bf16>();
  p.v_cache = v_cache.data_as<const bf16>();
  p.seq_start = query_start.data_as<const int32_t>();
  p.ctx_lens = context_lens.data_as<const int32_t>();
  p.tables = block_tables.data_as<const int32_t>();
  p.n_seqs = int(context_lens.dim(0));
  p.n_heads = int(q.dim(1));
  p.n_kv_heads = int(k_cache.dim(2));
  p.group = p.n_heads / p.n_kv_heads;
  p.head_chunks = (p.group + 15) / 16;
  p.block_size = int(k_cache.dim(1));
  p.width = int(block_tables.dim(1));
  p.num_blocks = int(k_cache.dim(0));
  p.scale_log2 = scale * 1.4426950408889634f;
  // Positions are below 2^31 - 1 (I32 context lengths): a window that large
  // hides nothing.
  p.window = sliding_window >= std::numeric_limits<int32_t>::max() ? 0 : int(sliding_window);
  p.out.out = out.data_as<bf16>();
  p.out.n_tokens = n_tokens;
  p.out.n_heads = p.n_heads;
  cudaStream_t stream = current_stream(device.index);
  if (head_dim == 128)
    run<128>(p, n_tokens, hints, device, stream);
  else if (head_dim == 64)
    run<64>(p, n_tokens, hints, device, stream);
  else
    fail("op paged_attention", "q", "expected head_dim 64 or 128 on cuda, got {}", head_dim);
}

}  // namespace attn

void register_attention_kernels(Kernels& table) {
  table.paged_attention = attn::paged_attention;
  table.write_kv_cache = attn::write_kv_cache;
  table.rope_write_kv_cache = attn::rope_write_kv_cache;
  table.rope_write_kv_cache_fused = attn::rope_write_kv_cache_fused;
}

}  // namespace kite::cuda
