#include "core/quant_weight.h"

#include "core/error.h"

namespace kite {

// bitsandbytes' NF4 code book (values of its published table).
const std::array<float, 16> kNf4Table = {
    -1.0f,
    -0.6961928009986877f,
    -0.5250730514526367f,
    -0.39491748809814453f,
    -0.28444138169288635f,
    -0.18477343022823334f,
    -0.09105003625154495f,
    0.0f,
    0.07958029955625534f,
    0.16093020141124725f,
    0.24611230194568634f,
    0.33791524171829224f,
    0.44070982933044434f,
    0.5626170039176941f,
    0.7229568362236023f,
    1.0f,
};

std::string_view quant_scheme_name(QuantScheme s) {
  switch (s) {
    case QuantScheme::Dense: return "dense";
    case QuantScheme::Int8: return "int8";
    case QuantScheme::Int4: return "int4";
    case QuantScheme::Nf4: return "nf4";
    case QuantScheme::Fp8: return "fp8";
  }
  return "?";
}

uint8_t get_nibble(const uint8_t* row, int64_t i) {
  return (i & 1) ? uint8_t(row[i >> 1] >> 4) : uint8_t(row[i >> 1] & 0xF);
}

void set_nibble(uint8_t* row, int64_t i, uint8_t code) {
  uint8_t& b = row[i >> 1];
  b = (i & 1) ? uint8_t((b & 0x0F) | (code << 4)) : uint8_t((b & 0xF0) | (code & 0xF));
}

QuantWeight QuantWeight::from_dense(Tensor w) {
  QuantWeight q;
  q.out = w.dim(0);
  q.in = w.dim(1);
  q.dense = std::move(w);
  return q;
}

size_t QuantWeight::storage_bytes() const {
  size_t n = 0;
  for (const Tensor* t : {&dense, &qdata, &scales, &zeros, &perm, &smooth})
    if (t->defined()) n += t->nbytes();
  return n;
}

void QuantWeight::validate(const std::string& source) const {
  auto need = [&](const Tensor& t, const char* name, const Shape& shape, DType dtype) {
    if (!t.defined()) fail(source, name, "missing; the {} layout needs it", quant_scheme_name(scheme));
    if (t.shape() != shape || t.dtype() != dtype)
      fail(source, name, "expected {} {}, got {} {}", shape_to_string(shape), dtype_name(dtype), t.shape_str(),
           dtype_name(t.dtype()));
  };
  if (out < 1 || in < 1) fail(source, "shape", "[{}, {}] is not a weight shape", out, in);
  switch (scheme) {
    case QuantScheme::Dense:
      if (!dense.defined() || dense.ndim() != 2 || dense.dim(0) != out || dense.dim(1) != in ||
          !dtype_is_float(dense.dtype()))
        fail(source, "weight", "expected a float [{}, {}] tensor", out, in);
      return;
    case QuantScheme::Int8:
      if (group < 1 || in % group) fail(source, "group_size", "{} does not divide the input dimension {}", group, in);
      need(qdata, "qdata", {out, in}, DType::I8);
      need(scales, "scales", {out, in / group}, DType::F32);
      if (perm.defined()) need(perm, "perm", {in}, DType::I32);
      return;
    case QuantScheme::Int4:
    case QuantScheme::Nf4: {
      if (in % 2) fail(source, "shape", "in = {} is odd; 4-bit layouts pack two columns per byte", in);
      if (group < 1 || in % group) fail(source, "group_size", "{} does not divide the input dimension {}", group, in);
      need(qdata, "qdata", {out, in / 2}, DType::U8);
      if (scheme == QuantScheme::Nf4) {
        need(scales, "absmax", {out * in / group}, DType::F32);
      } else {
        need(scales, "scales", {out, in / group}, DType::F32);
        need(zeros, "zeros", {out, in / group}, DType::F32);
        if (perm.defined()) need(perm, "perm", {in}, DType::I32);
      }
      return;
    }
    case QuantScheme::Fp8:
      need(qdata, "qdata", {out, in}, DType::F8_E4M3);
      if (!scales.defined() || scales.dtype() != DType::F32 || scales.ndim() != 1 ||
          (scales.dim(0) != 1 && scales.dim(0) != out))
        fail(source, "scales", "expected F32 [1] or [{}]", out);
      return;
  }
}

Tensor dequantize(const QuantWeight& w) {
  w.validate("dequantize");
  Tensor out = Tensor::empty({w.out, w.in}, DType::F32);  // [out, in]
  float* o = out.data_as<float>();
  if (w.scheme == QuantScheme::Dense) {
    std::vector<float> f = w.dense.to_floats();
    std::copy(f.begin(), f.end(), o);
    return out;
  }
  Tensor q = w.qdata.to(kCpu), s = w.scales.to(kCpu);
  const float* sc = s.data_as<const float>();
  switch (w.scheme) {
    case QuantScheme::Int8: {
      const int8_t* p = q.data_as<const int8_t>();
      const int64_t groups = w.in / w.group;
      Tensor pt = w.perm.defined() ? w.perm.to(kCpu) : Tensor();
      const int32_t* perm = pt.defined() ? pt.data_as<const int32_t>() : nullptr;
      for (int64_t r = 0; r < w.out; ++r)
        for (int64_t j = 0; j < w.in; ++j)
          o[r * w.in + (perm ? perm[j] : j)] = float(p[r * w.in + j]) * sc[r * groups + j / w.group];
      break;
    }
    case QuantScheme::Int4: {
      Tensor z = w.zeros.to(kCpu);
      const float* zp = z.data_as<const float>();
      const int32_t* perm = nullptr;
      Tensor pt;
      if (w.perm.defined()) {
        pt = w.perm.to(kCpu);
        perm = pt.data_as<const int32_t>();
      }
      const int64_t groups = w.in / w.group;
      for (int64_t r = 0; r < w.out; ++r) {
        const uint8_t* row = q.data_as<const uint8_t>() + r * (w.in / 2);
        for (int64_t j = 0; j < w.in; ++j) {
          const int64_t g = j / w.group;
          const float v = (float(get_nibble(row, j)) - zp[r * groups + g]) * sc[r * groups + g];
          o[r * w.in + (perm ? perm[j] : j)] = v;
        }
      }
      break;
    }
    case QuantScheme::Nf4: {
      for (int64_t r = 0; r < w.out; ++r) {
        const uint8_t* row = q.data_as<const uint8_t>() + r * (w.in / 2);
        for (int64_t i = 0; i < w.in; ++i)
          o[r * w.in + i] = kNf4Table[get_nibble(row, i)] * sc[(r * w.in + i) / w.group];
      }
      break;
    }
    case QuantScheme::Fp8: {
      const uint8_t* p = q.data_as<const uint8_t>();
      const bool per_channel = s.dim(0) == w.out;
      for (int64_t r = 0; r < w.out; ++r)
        for (int64_t i = 0; i < w.in; ++i) o[r * w.in + i] = fp8_e4m3_to_f32(p[r * w.in + i]) * sc[per_channel ? r : 0];
      break;
    }
    case QuantScheme::Dense: break;
  }
  return out;
}

}  // namespace kite
