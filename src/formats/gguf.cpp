#include "formats/gguf.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "core/error.h"
#include "core/mapped_file.h"
#include "core/parallel.h"

namespace kite {

namespace {

constexpr int kMaxDims = 4;        // GGML_MAX_DIMS
constexpr int kMaxArrayDepth = 4;  // arrays of arrays (legal, but unused by real files)
constexpr uint64_t kMaxKeyBytes = 1 << 16;

// Smallest encodings, used to bound counts by the bytes left in the file
// before anything is allocated.
constexpr uint64_t kMinKvBytes = 8 + 4 + 1;              // key length, type, 1-byte value
constexpr uint64_t kMinTensorInfoBytes = 8 + 4 + 4 + 8;  // name length, n_dims, type, offset

size_t scalar_size(GgufValueType t) {
  switch (t) {
    case GgufValueType::U8:
    case GgufValueType::I8:
    case GgufValueType::Bool: return 1;
    case GgufValueType::U16:
    case GgufValueType::I16: return 2;
    case GgufValueType::U32:
    case GgufValueType::I32:
    case GgufValueType::F32: return 4;
    case GgufValueType::U64:
    case GgufValueType::I64:
    case GgufValueType::F64: return 8;
    default: return 0;  // string, array: variable
  }
}

bool is_integer(GgufValueType t) {
  switch (t) {
    case GgufValueType::U8:
    case GgufValueType::I8:
    case GgufValueType::U16:
    case GgufValueType::I16:
    case GgufValueType::U32:
    case GgufValueType::I32:
    case GgufValueType::U64:
    case GgufValueType::I64: return true;
    default: return false;
  }
}

bool is_float(GgufValueType t) { return t == GgufValueType::F32 || t == GgufValueType::F64; }

template <typename T>
T load(const uint8_t* p) {
  T v;
  std::memcpy(&v, p, sizeof(T));
  return v;
}

// Reads one scalar of type t at p (bounds already checked) into v.
void decode_scalar(GgufValueType t, const uint8_t* p, GgufValue& v) {
  v.type = t;
  switch (t) {
    case GgufValueType::U8: v.u = load<uint8_t>(p); break;
    case GgufValueType::I8: v.i = load<int8_t>(p); break;
    case GgufValueType::U16: v.u = load<uint16_t>(p); break;
    case GgufValueType::I16: v.i = load<int16_t>(p); break;
    case GgufValueType::U32: v.u = load<uint32_t>(p); break;
    case GgufValueType::I32: v.i = load<int32_t>(p); break;
    case GgufValueType::U64: v.u = load<uint64_t>(p); break;
    case GgufValueType::I64: v.i = load<int64_t>(p); break;
    case GgufValueType::F32: v.f = load<float>(p); break;
    case GgufValueType::F64: v.f = load<double>(p); break;
    case GgufValueType::Bool: v.b = load<uint8_t>(p) != 0; break;
    default: break;
  }
  if (t == GgufValueType::U8 || t == GgufValueType::U16 || t == GgufValueType::U32 || t == GgufValueType::U64) {
    v.i = v.u > uint64_t(std::numeric_limits<int64_t>::max()) ? std::numeric_limits<int64_t>::max() : int64_t(v.u);
  } else if (t == GgufValueType::I8 || t == GgufValueType::I16 || t == GgufValueType::I32 || t == GgufValueType::I64) {
    v.u = uint64_t(v.i);
  }
}

// Bounds-checked little-endian reader over the file bytes.
class Cursor {
 public:
  Cursor(const uint8_t* data, size_t size, const std::string& path) : data_(data), size_(size), path_(path) {}

  size_t pos() const { return pos_; }
  size_t left() const { return size_ - pos_; }

  void need(uint64_t n, const std::string& field, const char* what) const {
    if (n > left()) fail(path_, field, "{} needs {} bytes at offset {} but the file ends at {}", what, n, pos_, size_);
  }
  template <typename T>
  T read(const std::string& field, const char* what) {
    need(sizeof(T), field, what);
    T v = load<T>(data_ + pos_);
    pos_ += sizeof(T);
    return v;
  }
  void skip(uint64_t n, const std::string& field, const char* what) {
    need(n, field, what);
    pos_ += size_t(n);
  }
  std::string read_string(const std::string& field, const char* what, uint64_t max_len = UINT64_MAX) {
    uint64_t len = read<uint64_t>(field, what);
    if (len > max_len) fail(path_, field, "{} length {} exceeds the limit of {}", what, len, max_len);
    if (len > left())
      fail(path_, field, "{} length {} at offset {} runs past end of file ({} bytes)", what, len, pos_ - 8, size_);
    std::string s(reinterpret_cast<const char*>(data_ + pos_), size_t(len));
    pos_ += size_t(len);
    return s;
  }

 private:
  const uint8_t* data_;
  size_t size_;
  size_t pos_ = 0;
  const std::string& path_;
};

GgufValueType read_value_type(Cursor& c, const std::string& path, const std::string& field) {
  uint32_t t = c.read<uint32_t>(field, "value type");
  if (t > uint32_t(GgufValueType::F64)) fail(path, field, "unknown value type {}", t);
  return GgufValueType(t);
}

// Skips (and validates) the elements of an array whose header was read.
void skip_array(Cursor& c, GgufValueType elem, uint64_t count, int depth, const std::string& path,
                const std::string& field) {
  if (depth > kMaxArrayDepth) fail(path, field, "arrays nested deeper than {}", kMaxArrayDepth);
  if (size_t sz = scalar_size(elem)) {
    if (count > c.left() / sz)
      fail(path, field, "array of {} {} elements runs past end of file", count, gguf_value_type_name(elem));
    c.skip(count * sz, field, "array");
    return;
  }
  uint64_t min_elem = elem == GgufValueType::String ? 8 : 12;
  if (count > c.left() / min_elem)
    fail(path, field, "array of {} {} elements runs past end of file", count, gguf_value_type_name(elem));
  for (uint64_t i = 0; i < count; ++i) {
    if (elem == GgufValueType::String) {
      uint64_t len = c.read<uint64_t>(field, "array string");
      if (len > c.left())
        fail(path, field, "string element {} length {} runs past end of file ({} bytes)", i, len, c.pos() + c.left());
      c.skip(len, field, "array string");
    } else {
      GgufValueType inner = read_value_type(c, path, field);
      uint64_t n = c.read<uint64_t>(field, "array count");
      skip_array(c, inner, n, depth + 1, path, field);
    }
  }
}

size_t align_up(size_t v, size_t a) { return (v + a - 1) / a * a; }

}  // namespace

std::string gguf_value_type_name(GgufValueType t) {
  switch (t) {
    case GgufValueType::U8: return "uint8";
    case GgufValueType::I8: return "int8";
    case GgufValueType::U16: return "uint16";
    case GgufValueType::I16: return "int16";
    case GgufValueType::U32: return "uint32";
    case GgufValueType::I32: return "int32";
    case GgufValueType::F32: return "float32";
    case GgufValueType::Bool: return "bool";
    case GgufValueType::String: return "string";
    case GgufValueType::Array: return "array";
    case GgufValueType::U64: return "uint64";
    case GgufValueType::I64: return "int64";
    case GgufValueType::F64: return "float64";
  }
  return fmt::format("type {}", uint32_t(t));
}

// ---- GgufFile -------------------------------------------------------------------

std::shared_ptr<GgufFile> GgufFile::open(const std::string& path) {
  std::shared_ptr<MappedFile> mf = MappedFile::open(path);
  return from_memory(mf->data(), mf->size(), path, mf);
}

std::shared_ptr<GgufFile> GgufFile::from_memory(const uint8_t* data, size_t size, const std::string& name,
                                                std::shared_ptr<const void> owner) {
  std::shared_ptr<GgufFile> f(new GgufFile());
  f->path_ = name;
  f->data_ = data;
  f->size_ = size;
  f->owner_ = std::move(owner);
  f->parse();
  return f;
}

void GgufFile::parse() {
  Cursor c(data_, size_, path_);
  if (size_ < 4 || std::memcmp(data_, "GGUF", 4) != 0) {
    std::string found;
    for (size_t i = 0; i < std::min<size_t>(size_, 4); ++i)
      found +=
          (data_[i] >= 32 && data_[i] < 127) ? fmt::format("{:c}", char(data_[i])) : fmt::format("\\x{:02x}", data_[i]);
    fail(path_, "magic", "expected \"GGUF\", found \"{}\" (not a GGUF file)", found);
  }
  c.skip(4, "magic", "magic");
  version_ = c.read<uint32_t>("version", "version");
  if (version_ != 2 && version_ != 3)
    fail(path_, "version", "GGUF version {} is not supported (expected 2 or 3)", version_);
  uint64_t n_tensors = c.read<uint64_t>("tensor_count", "tensor count");
  uint64_t n_kv = c.read<uint64_t>("kv_count", "metadata count");
  if (n_kv > c.left() / kMinKvBytes)
    fail(path_, "kv_count", "{} metadata entries cannot fit in the {} bytes left in the file", n_kv, c.left());
  if (n_tensors > c.left() / kMinTensorInfoBytes)
    fail(path_, "tensor_count", "{} tensors cannot fit in the {} bytes left in the file", n_tensors, c.left());

  for (uint64_t k = 0; k < n_kv; ++k) {
    std::string where = fmt::format("metadata[{}]", k);
    std::string key = c.read_string(where, "key", kMaxKeyBytes);
    if (key.empty()) fail(path_, where, "empty key");
    if (kv_.count(key)) fail(path_, key, "duplicate metadata key");
    GgufValue v;
    GgufValueType t = read_value_type(c, path_, key);
    v.type = t;
    if (t == GgufValueType::String) {
      v.s = c.read_string(key, "string value");
    } else if (t == GgufValueType::Array) {
      v.elem_type = read_value_type(c, path_, key);
      v.count = c.read<uint64_t>(key, "array count");
      v.offset = c.pos();
      skip_array(c, v.elem_type, v.count, 1, path_, key);
    } else {
      size_t sz = scalar_size(t);
      c.need(sz, key, "value");
      decode_scalar(t, data_ + c.pos(), v);
      c.skip(sz, key, "value");
    }
    kv_.emplace(std::move(key), std::move(v));
  }

  if (const GgufValue* a = find_value("general.alignment")) {
    if (!is_integer(a->type))
      fail(path_, "general.alignment", "expected an integer, found {}", gguf_value_type_name(a->type));
    if (a->i <= 0 || a->i > (1 << 30) || (a->i & (a->i - 1)) != 0)
      fail(path_, "general.alignment", "{} is not a positive power of two", a->i);
    alignment_ = size_t(a->i);
  }

  tensors_.reserve(size_t(n_tensors));
  for (uint64_t t = 0; t < n_tensors; ++t) {
    std::string where = fmt::format("tensor[{}]", t);
    GgufTensorInfo info;
    info.name = c.read_string(where, "tensor name", kMaxKeyBytes);
    const std::string& field = info.name.empty() ? where : info.name;
    uint32_t n_dims = c.read<uint32_t>(field, "n_dims");
    if (n_dims > uint32_t(kMaxDims)) fail(path_, field, "n_dims {} exceeds the maximum of {}", n_dims, kMaxDims);
    int64_t ne[kMaxDims] = {1, 1, 1, 1};
    uint64_t numel = 1;
    uint64_t nonzero = 1;  // product of the non-zero dims: no order of multiplication may overflow
    for (uint32_t d = 0; d < n_dims; ++d) {
      uint64_t v = c.read<uint64_t>(field, "dimension");
      if (v > uint64_t(std::numeric_limits<int64_t>::max()) ||
          (v != 0 &&
           (__builtin_mul_overflow(nonzero, v, &nonzero) || nonzero > uint64_t(std::numeric_limits<int64_t>::max()))))
        fail(path_, field, "dimensions overflow the element count");
      numel *= v;
      ne[d] = int64_t(v);
    }
    for (int d = int(n_dims) - 1; d >= 0; --d) info.shape.push_back(ne[d]);
    uint32_t type = c.read<uint32_t>(field, "type");
    info.type = GgmlType(type);
    uint64_t offset = c.read<uint64_t>(field, "offset");
    std::optional<GgmlBlockLayout> layout = ggml_block_layout(info.type);
    if (!layout) fail(path_, field, "ggml type {} is not supported", ggml_type_name(info.type));
    if (n_dims > 0 && ne[0] % layout->block_elems != 0)
      fail(path_, field, "row length {} is not a multiple of the {} block size {}", ne[0], ggml_type_name(info.type),
           layout->block_elems);
    uint64_t blocks = numel / uint64_t(layout->block_elems);
    if (n_dims == 0 && layout->block_elems != 1)
      fail(path_, field, "a scalar cannot be stored as {}", ggml_type_name(info.type));
    uint64_t nbytes = 0;
    if (__builtin_mul_overflow(blocks, uint64_t(layout->block_bytes), &nbytes))
      fail(path_, field, "byte size overflows");
    if (offset % alignment_ != 0)
      fail(path_, field, "offset {} is not a multiple of the alignment {}", offset, alignment_);
    info.offset = size_t(offset);  // relative for now
    info.nbytes = size_t(nbytes);
    if (tensor_index_.count(info.name)) fail(path_, field, "duplicate tensor name");
    tensor_index_[info.name] = tensors_.size();
    tensors_.push_back(std::move(info));
  }

  data_offset_ = align_up(c.pos(), alignment_);
  for (GgufTensorInfo& info : tensors_) {
    uint64_t start = 0, end = 0;
    if (__builtin_add_overflow(uint64_t(data_offset_), uint64_t(info.offset), &start) ||
        __builtin_add_overflow(start, uint64_t(info.nbytes), &end) || end > size_)
      fail(path_, info.name, "data [{}, +{}) at file offset {} runs past end of file ({} bytes)", info.offset,
           info.nbytes, data_offset_ + info.offset, size_);
    info.offset = size_t(start);
  }
}

const GgufValue* GgufFile::find_value(const std::string& key) const {
  auto it = kv_.find(key);
  return it == kv_.end() ? nullptr : &it->second;
}

std::vector<std::string> GgufFile::keys() const {
  std::vector<std::string> out;
  out.reserve(kv_.size());
  for (const auto& [k, _] : kv_) out.push_back(k);
  return out;
}

const GgufValue& GgufFile::require(const std::string& key, const char* want) const {
  const GgufValue* v = find_value(key);
  if (!v) fail(path_, key, "missing (expected {})", want);
  return *v;
}

void GgufFile::wrong_type(const std::string& key, const GgufValue& v, const char* want) const {
  std::string found = gguf_value_type_name(v.type);
  if (v.type == GgufValueType::Array) found = "array of " + gguf_value_type_name(v.elem_type);
  fail(path_, key, "expected {}, found {}", want, found);
}

std::optional<std::string> GgufFile::find_string(const std::string& key) const {
  const GgufValue* v = find_value(key);
  if (!v) return std::nullopt;
  if (v->type != GgufValueType::String) wrong_type(key, *v, "string");
  return v->s;
}
std::string GgufFile::get_string(const std::string& key) const {
  require(key, "string");
  return *find_string(key);
}

std::optional<int64_t> GgufFile::find_int(const std::string& key) const {
  const GgufValue* v = find_value(key);
  if (!v) return std::nullopt;
  if (!is_integer(v->type)) wrong_type(key, *v, "integer");
  if (v->type == GgufValueType::U64 && v->u > uint64_t(std::numeric_limits<int64_t>::max()))
    fail(path_, key, "{} is out of range", v->u);
  return v->i;
}
int64_t GgufFile::get_int(const std::string& key) const {
  require(key, "integer");
  return *find_int(key);
}

std::optional<double> GgufFile::find_float(const std::string& key) const {
  const GgufValue* v = find_value(key);
  if (!v) return std::nullopt;
  if (is_float(v->type)) return v->f;
  if (is_integer(v->type)) {
    if (v->type == GgufValueType::U64) return double(v->u);
    return double(v->i);
  }
  wrong_type(key, *v, "number");
}
double GgufFile::get_float(const std::string& key) const {
  require(key, "number");
  return *find_float(key);
}

std::optional<bool> GgufFile::find_bool(const std::string& key) const {
  const GgufValue* v = find_value(key);
  if (!v) return std::nullopt;
  if (v->type != GgufValueType::Bool) wrong_type(key, *v, "bool");
  return v->b;
}
bool GgufFile::get_bool(const std::string& key) const {
  require(key, "bool");
  return *find_bool(key);
}

uint64_t GgufFile::array_size(const std::string& key) const {
  const GgufValue& v = require(key, "array");
  if (v.type != GgufValueType::Array) wrong_type(key, v, "array");
  return v.count;
}

std::optional<GgufValueType> GgufFile::array_type(const std::string& key) const {
  const GgufValue* v = find_value(key);
  if (!v || v->type != GgufValueType::Array) return std::nullopt;
  return v->elem_type;
}

std::vector<std::string> GgufFile::get_string_array(const std::string& key) const {
  const GgufValue& v = require(key, "array of string");
  if (v.type != GgufValueType::Array || v.elem_type != GgufValueType::String) wrong_type(key, v, "array of string");
  std::vector<std::string> out;
  out.reserve(size_t(v.count));
  const uint8_t* p = data_ + v.offset;  // validated by parse()
  for (uint64_t i = 0; i < v.count; ++i) {
    uint64_t len = load<uint64_t>(p);
    out.emplace_back(reinterpret_cast<const char*>(p + 8), size_t(len));
    p += 8 + len;
  }
  return out;
}

std::vector<float> GgufFile::get_float_array(const std::string& key) const {
  const GgufValue& v = require(key, "array of float32");
  if (v.type != GgufValueType::Array || !(is_float(v.elem_type) || is_integer(v.elem_type)))
    wrong_type(key, v, "array of numbers");
  std::vector<float> out(size_t(v.count));
  size_t sz = scalar_size(v.elem_type);
  const uint8_t* p = data_ + v.offset;
  for (uint64_t i = 0; i < v.count; ++i) {
    GgufValue e;
    decode_scalar(v.elem_type, p + i * sz, e);
    out[i] = is_float(e.type) ? float(e.f) : (e.type == GgufValueType::U64 ? float(e.u) : float(e.i));
  }
  return out;
}

std::vector<int64_t> GgufFile::get_int64_array(const std::string& key) const {
  const GgufValue& v = require(key, "array of integers");
  if (v.type != GgufValueType::Array || !is_integer(v.elem_type)) wrong_type(key, v, "array of integers");
  std::vector<int64_t> out(size_t(v.count));
  size_t sz = scalar_size(v.elem_type);
  const uint8_t* p = data_ + v.offset;
  for (uint64_t i = 0; i < v.count; ++i) {
    GgufValue e;
    decode_scalar(v.elem_type, p + i * sz, e);
    if (e.type == GgufValueType::U64 && e.u > uint64_t(std::numeric_limits<int64_t>::max()))
      fail(path_, key, "element {} = {} is out of range", i, e.u);
    out[i] = e.i;
  }
  return out;
}

std::vector<int32_t> GgufFile::get_int_array(const std::string& key) const {
  std::vector<int64_t> wide = get_int64_array(key);
  std::vector<int32_t> out(wide.size());
  for (size_t i = 0; i < wide.size(); ++i) {
    if (wide[i] < std::numeric_limits<int32_t>::min() || wide[i] > std::numeric_limits<int32_t>::max())
      fail(path_, key, "element {} = {} does not fit in int32", i, wide[i]);
    out[i] = int32_t(wide[i]);
  }
  return out;
}

const GgufTensorInfo* GgufFile::find_tensor(const std::string& name) const {
  auto it = tensor_index_.find(name);
  return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

Tensor GgufFile::tensor(const std::string& name) const {
  const GgufTensorInfo* info = find_tensor(name);
  if (!info) throw Error(path_, name, "not in file");
  DType dt;
  switch (info->type) {
    case GgmlType::F32: dt = DType::F32; break;
    case GgmlType::F16: dt = DType::F16; break;
    case GgmlType::BF16: dt = DType::BF16; break;
    case GgmlType::I8: dt = DType::I8; break;
    case GgmlType::I32: dt = DType::I32; break;
    case GgmlType::I64: dt = DType::I64; break;
    default: fail(path_, name, "tensor is {}, which has no plain dtype (use dequantize)", ggml_type_name(info->type));
  }
  const uint8_t* p = data_ + info->offset;
  if (reinterpret_cast<uintptr_t>(p) % dtype_size(dt) != 0) {
    Tensor t = Tensor::empty(info->shape, dt);
    if (info->nbytes) std::memcpy(t.data(), p, info->nbytes);
    return t;
  }
  return Tensor::wrap(const_cast<uint8_t*>(p), info->shape, dt, kCpu, std::const_pointer_cast<void>(owner_));
}

Tensor GgufFile::dequantize(const std::string& name) const {
  const GgufTensorInfo* info = find_tensor(name);
  if (!info) throw Error(path_, name, "not in file");
  if (!ggml_can_dequantize(info->type))
    fail(path_, name,
         "cannot dequantize ggml type {} (supported: F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, "
         "Q8_1, Q2_K, Q4_K, Q5_K, Q6_K, Q8_K)",
         ggml_type_name(info->type));
  GgmlBlockLayout layout = *ggml_block_layout(info->type);
  Tensor out = Tensor::empty(info->shape, DType::F32);
  int64_t numel = shape_numel(info->shape);
  int64_t n_blocks = numel / layout.block_elems;
  const uint8_t* src = data_ + info->offset;
  float* dst = out.data_as<float>();
  GgmlType type = info->type;
  int64_t grain = std::max<int64_t>(1, 16384 / layout.block_elems);
  parallel_for(n_blocks, grain, [&](int64_t b0, int64_t b1) {
    dequantize_ggml(type, src + size_t(b0) * layout.block_bytes, dst + b0 * layout.block_elems,
                    (b1 - b0) * layout.block_elems);
  });
  return out;
}

// ---- model config from metadata --------------------------------------------------

ModelConfig gguf_model_config(const GgufFile& f) {
  const std::string& path = f.path();
  std::string arch = f.get_string("general.architecture");
  ModelConfig c;
  if (arch == "llama") {
    c.arch = Arch::Llama;
    c.architecture = "LlamaForCausalLM";
  } else if (arch == "mistral") {
    c.arch = Arch::Mistral;
    c.architecture = "MistralForCausalLM";
  } else if (arch == "qwen2") {
    c.arch = Arch::Qwen2;
    c.architecture = "Qwen2ForCausalLM";
  } else if (arch == "qwen3") {
    c.arch = Arch::Qwen3;
    c.architecture = "Qwen3ForCausalLM";
  } else {
    fail(path, "general.architecture", "{} is not supported; supported: llama, mistral, qwen2, qwen3", arch);
  }
  c.model_type = arch;
  const std::string p = arch + ".";

  // A per-layer array (head_count_kv in some files) must hold one value.
  auto int_or_uniform_array = [&](const std::string& key) -> std::optional<int64_t> {
    if (f.array_type(key)) {
      std::vector<int64_t> v = f.get_int64_array(key);
      if (v.empty()) fail(path, key, "empty array");
      for (int64_t x : v)
        if (x != v[0]) fail(path, key, "per-layer values differ ({} vs {}); Kite needs one value", v[0], x);
      return v[0];
    }
    return f.find_int(key);
  };
  auto positive = [&](const std::string& key, int64_t v) {
    if (v <= 0) fail(path, key, "{} must be positive", v);
    return v;
  };

  c.num_layers = positive(p + "block_count", f.get_int(p + "block_count"));
  c.hidden_size = positive(p + "embedding_length", f.get_int(p + "embedding_length"));
  auto ffn = int_or_uniform_array(p + "feed_forward_length");
  if (!ffn) fail(path, p + "feed_forward_length", "missing (expected integer)");
  c.intermediate_size = positive(p + "feed_forward_length", *ffn);
  auto heads = int_or_uniform_array(p + "attention.head_count");
  if (!heads) fail(path, p + "attention.head_count", "missing (expected integer)");
  c.num_heads = positive(p + "attention.head_count", *heads);
  c.num_kv_heads = positive(p + "attention.head_count_kv",
                            int_or_uniform_array(p + "attention.head_count_kv").value_or(c.num_heads));
  if (auto kl = f.find_int(p + "attention.key_length")) {
    c.head_dim = positive(p + "attention.key_length", *kl);
    if (auto vl = f.find_int(p + "attention.value_length"); vl && *vl != *kl)
      fail(path, p + "attention.value_length", "{} differs from key_length {}", *vl, *kl);
  } else {
    if (c.hidden_size % c.num_heads != 0)
      fail(path, p + "embedding_length", "{} is not divisible by attention.head_count {}", c.hidden_size, c.num_heads);
    c.head_dim = c.hidden_size / c.num_heads;
  }
  if (c.num_heads % c.num_kv_heads != 0)
    fail(path, p + "attention.head_count_kv", "{} does not divide attention.head_count {}", c.num_kv_heads,
         c.num_heads);
  c.rms_norm_eps = f.get_float(p + "attention.layer_norm_rms_epsilon");
  c.rope_theta = f.find_float(p + "rope.freq_base").value_or(10000.0);
  c.max_position_embeddings = f.find_int(p + "context_length").value_or(2048);
  if (auto rd = f.find_int(p + "rope.dimension_count")) {
    if (*rd <= 0 || *rd > c.head_dim || *rd % 2 != 0)
      fail(path, p + "rope.dimension_count", "{} must be even and in (0, head_dim {}]", *rd, c.head_dim);
    c.partial_rotary_factor = double(*rd) / double(c.head_dim);
  }

  if (auto vs = f.find_int(p + "vocab_size")) {
    c.vocab_size = positive(p + "vocab_size", *vs);
  } else if (f.array_type("tokenizer.ggml.tokens")) {
    c.vocab_size = int64_t(f.array_size("tokenizer.ggml.tokens"));
  } else if (const GgufTensorInfo* emb = f.find_tensor("token_embd.weight"); emb && emb->shape.size() == 2) {
    c.vocab_size = emb->shape[0];
  } else {
    fail(path, p + "vocab_size", "missing, and no tokenizer.ggml.tokens or token_embd.weight to infer it from");
  }

  // RoPE scaling. Llama 3.x files carry their frequency factors as the
  // tensor rope_freqs.weight instead of metadata.
  std::string stype = f.find_string(p + "rope.scaling.type").value_or("none");
  if (stype == "none") {
    if (auto lin = f.find_float(p + "rope.scale_linear"); lin && *lin != 1.0) {
      c.rope_scaling.type = "linear";
      c.rope_scaling.factor = *lin;
    }
  } else if (stype == "linear" || stype == "yarn") {
    c.rope_scaling.type = stype;
    c.rope_scaling.factor = f.get_float(p + "rope.scaling.factor");
    c.rope_scaling.original_max_position_embeddings =
        f.find_int(p + "rope.scaling.original_context_length").value_or(0);
    if (stype == "yarn") {
      c.rope_scaling.beta_fast = f.find_float(p + "rope.scaling.yarn_beta_fast").value_or(32.0);
      c.rope_scaling.beta_slow = f.find_float(p + "rope.scaling.yarn_beta_slow").value_or(1.0);
      c.rope_scaling.attention_factor = f.find_float(p + "rope.scaling.attn_factor").value_or(0.0);
    }
    if (!(c.rope_scaling.factor > 0))
      fail(path, p + "rope.scaling.factor", "{} must be positive", c.rope_scaling.factor);
  } else {
    fail(path, p + "rope.scaling.type", "\"{}\" is not supported (supported: none, linear, yarn)", stype);
  }

  if (auto sw = f.find_int(p + "attention.sliding_window")) c.sliding_window = *sw;
  c.tie_word_embeddings = !f.tensors().empty() && !f.find_tensor("output.weight");
  switch (c.arch) {
    case Arch::Qwen2: c.attention_bias = true; break;
    case Arch::Qwen3:
      c.qk_norm = true;
      c.attention_bias = f.find_tensor("blk.0.attn_q.bias") != nullptr;
      break;
    default: c.attention_bias = f.find_tensor("blk.0.attn_q.bias") != nullptr; break;
  }
  if (auto bos = f.find_int("tokenizer.ggml.bos_token_id")) {
    if (*bos < 0 || *bos > std::numeric_limits<int32_t>::max())
      fail(path, "tokenizer.ggml.bos_token_id", "{} is out of range", *bos);
    c.bos_token_id = int32_t(*bos);
  }
  if (auto eos = f.find_int("tokenizer.ggml.eos_token_id")) {
    if (*eos < 0 || *eos > std::numeric_limits<int32_t>::max())
      fail(path, "tokenizer.ggml.eos_token_id", "{} is out of range", *eos);
    c.eos_token_ids.push_back(int32_t(*eos));
  }
  c.dtype = DType::F32;  // dequantize() yields float32
  if (const GgufTensorInfo* emb = f.find_tensor("token_embd.weight")) {
    if (emb->type == GgmlType::F16) c.dtype = DType::F16;
    if (emb->type == GgmlType::BF16) c.dtype = DType::BF16;
  }
  validate_model_config(c, path);
  return c;
}

}  // namespace kite
