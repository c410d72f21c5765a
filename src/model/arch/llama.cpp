// Llama 2/3/3.1/3.2 and Mistral: pre-norm blocks of grouped-query
// self-attention with RoPE (every rope type of model/rope.h) and a SwiGLU
// MLP. attention_bias adds q/k/v/o biases and mlp_bias gate/up/down ones
// (as transformers' LlamaAttention / LlamaMLP); Mistral's sliding_window
// limits every layer's attention to the last W keys.
#include "model/arch/llama.h"

#include <memory>

#include "backend/ops/ops.h"

namespace kite {

namespace {
enum LinearIx { kQkv, kO, kGateUp, kDown };
enum BufferIx { kQkvOut, kAttnOut, kGateUpOut, kAct };
}  // namespace

bool Llama::runs(const ModelConfig& c) const { return c.arch == Arch::Llama || c.arch == Arch::Mistral; }

LayerSpec Llama::layer_spec(const ModelConfig& g, const ModelConfig& l) const {
  const int64_t d = g.hidden_size, hd = g.head_dim, q = g.num_heads * hd, kv = g.num_kv_heads * hd;
  const int64_t ffn = g.intermediate_size;
  const bool qkv_b = qkv_bias(g), o_b = o_bias(g), mlp_bias = g.mlp_bias;
  LayerSpec s;
  s.tensors = {{"input_layernorm.weight", {d}}, {"post_attention_layernorm.weight", {d}}};
  s.linears = {
      {"qkv",
       {{"self_attn.q_proj", q, d, qkv_b, Split::Heads},
        {"self_attn.k_proj", kv, d, qkv_b, Split::KvHeads},
        {"self_attn.v_proj", kv, d, qkv_b, Split::KvHeads}}},
      {"o", {{"self_attn.o_proj", d, q, o_b, Split::Cols}}},
      {"gate_up", {{"mlp.gate_proj", ffn, d, mlp_bias, Split::Rows}, {"mlp.up_proj", ffn, d, mlp_bias, Split::Rows}}},
      {"down", {{"mlp.down_proj", d, ffn, mlp_bias, Split::Cols}}},
  };
  const int64_t lhd = l.head_dim;
  s.buffers = {(l.num_heads + 2 * l.num_kv_heads) * lhd, l.num_heads * lhd, 2 * l.intermediate_size,
               l.intermediate_size};
  return s;
}

AttentionSpec Llama::attention_spec(const ModelConfig& c, const Layer&, int64_t l) const {
  AttentionSpec a;
  a.sliding_window = layer_window(c, l);
  return a;
}

int64_t Llama::layer_window(const ModelConfig& c, int64_t) const { return c.sliding_window; }

void Llama::forward_layer(const Layer& w, Step& s) const {
  const int64_t n = s.tokens();
  const ModelConfig& c = s.config();
  Tensor& qkv = s.buffer(kQkvOut);         // [n, (n_heads + 2 n_kv) * hd]
  Tensor& attn = s.buffer(kAttnOut);       // [n, n_heads * hd]
  Tensor& gate_up = s.buffer(kGateUpOut);  // [n, 2 ffn]
  Tensor& act = s.buffer(kAct);            // [n, ffn]
  s.add_norm(w.tensors[kAttnNorm]);
  s.linear(w.linears[kQkv], s.h(), qkv);
  s.attention(qkv.reshape({n, c.num_heads + 2 * c.num_kv_heads, c.head_dim}), attention_spec(c, w, s.layer()), attn);
  s.linear_reduce(w.linears[kO], attn, s.y());
  s.add_norm(w.tensors[kMlpNorm]);
  s.linear(w.linears[kGateUp], s.h(), gate_up);
  ops::silu_mul_fused(gate_up, act);  // silu(gate) * up
  s.linear_reduce(w.linears[kDown], act, s.y());
}

std::unique_ptr<Architecture> make_llama() { return std::make_unique<Llama>(); }

}  // namespace kite
