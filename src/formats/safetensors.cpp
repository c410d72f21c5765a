#include "formats/safetensors.h"

#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>

#include "core/error.h"
#include "core/mapped_file.h"

namespace kite {

namespace {

using json = nlohmann::json;

// The reference implementation refuses headers above 100 MB; real ones are
// a few hundred KB even for 400B-parameter shards.
constexpr uint64_t kMaxHeaderBytes = 100ull << 20;

const char* json_type_name(const json& j) {
  switch (j.type()) {
    case json::value_t::null: return "null";
    case json::value_t::object: return "object";
    case json::value_t::array: return "array";
    case json::value_t::string: return "string";
    case json::value_t::boolean: return "boolean";
    case json::value_t::number_integer: return "integer";
    case json::value_t::number_unsigned: return "integer";
    case json::value_t::number_float: return "number";
    default: return "value";
  }
}

std::string supported_dtypes() {
  std::string s;
  for (DType t : {DType::F32, DType::F16, DType::BF16, DType::F8_E4M3, DType::I8, DType::U8, DType::I32, DType::I64}) {
    if (!s.empty()) s += ", ";
    s += dtype_name(t);
  }
  return s;
}

bool is_directory(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

std::string join_path(const std::string& dir, const std::string& name) {
  if (dir.empty() || dir.back() == '/') return dir + name;
  return dir + "/" + name;
}

std::string dir_of(const std::string& path) {
  size_t slash = path.rfind('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

bool ends_with(const std::string& s, std::string_view suffix) {
  return s.size() >= suffix.size() && std::string_view(s).substr(s.size() - suffix.size()) == suffix;
}

}  // namespace

// ---- SafetensorsFile --------------------------------------------------------

std::shared_ptr<SafetensorsFile> SafetensorsFile::open(const std::string& path) {
  std::shared_ptr<MappedFile> mf = MappedFile::open(path);
  return from_memory(mf->data(), mf->size(), path, mf);
}

std::shared_ptr<SafetensorsFile> SafetensorsFile::from_memory(const uint8_t* data, size_t size, const std::string& name,
                                                              std::shared_ptr<const void> owner) {
  std::shared_ptr<SafetensorsFile> f(new SafetensorsFile());
  f->path_ = name;
  f->data_ = data;
  f->size_ = size;
  f->owner_ = std::move(owner);
  f->parse();
  return f;
}

void SafetensorsFile::parse() {
  if (size_ < 8) fail(path_, "header", "file is {} bytes, too short for the 8-byte header length", size_);
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | data_[i];  // little-endian
  if (n > size_ - 8) fail(path_, "header", "length {} runs past end of file (file is {} bytes)", n, size_);
  if (n > kMaxHeaderBytes) fail(path_, "header", "length {} exceeds the {} byte limit", n, kMaxHeaderBytes);
  if (n < 2) fail(path_, "header", "length {} is too short for a JSON object", n);
  data_offset_ = 8 + size_t(n);
  const size_t data_size = size_ - data_offset_;

  const char* begin = reinterpret_cast<const char*>(data_ + 8);
  json header;
  // JSON objects silently keep the last of duplicate keys; a header naming a
  // tensor twice is ambiguous, so note top-level duplicates while parsing.
  std::set<std::string> seen_keys;
  std::string duplicate;
  auto on_event = [&](int depth, json::parse_event_t event, json& parsed) {
    if (event == json::parse_event_t::key && depth == 1 && parsed.is_string() && duplicate.empty() &&
        !seen_keys.insert(parsed.get<std::string>()).second)
      duplicate = parsed.get<std::string>();
    return true;
  };
  try {
    header = json::parse(begin, begin + n, on_event);
  } catch (const json::exception& e) {
    fail(path_, "header", "not valid JSON: {}", e.what());
  }
  if (!header.is_object()) fail(path_, "header", "expected a JSON object, found {}", json_type_name(header));
  if (!duplicate.empty()) fail(path_, duplicate, "appears twice in the header");

  for (auto it = header.begin(); it != header.end(); ++it) {
    const std::string& name = it.key();
    const json& entry = it.value();
    if (name == "__metadata__") {
      if (!entry.is_object())
        fail(path_, "__metadata__", "expected an object of strings, found {}", json_type_name(entry));
      for (auto m = entry.begin(); m != entry.end(); ++m) {
        if (!m.value().is_string())
          fail(path_, "__metadata__." + m.key(), "expected a string, found {}", json_type_name(m.value()));
        metadata_[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    if (!entry.is_object()) fail(path_, name, "expected a tensor entry object, found {}", json_type_name(entry));

    TensorInfo info;
    info.name = name;
    auto dt = entry.find("dtype");
    if (dt == entry.end()) fail(path_, name + ".dtype", "missing");
    if (!dt->is_string()) fail(path_, name + ".dtype", "expected a string, found {}", json_type_name(*dt));
    std::string dts = dt->get<std::string>();
    std::optional<DType> dtype = dtype_from_name(dts);
    if (!dtype) fail(path_, name + ".dtype", "unknown dtype \"{}\" (supported: {})", dts, supported_dtypes());
    info.dtype = *dtype;

    auto sh = entry.find("shape");
    if (sh == entry.end()) fail(path_, name + ".shape", "missing");
    if (!sh->is_array()) fail(path_, name + ".shape", "expected an array, found {}", json_type_name(*sh));
    if (sh->size() > 16) fail(path_, name + ".shape", "{} dimensions (at most 16 supported)", sh->size());
    uint64_t numel = 1;
    uint64_t nonzero = 1;  // product of the non-zero dims: no order of multiplication may overflow
    bool overflow = false;
    for (const json& d : *sh) {
      if (!d.is_number_unsigned())
        fail(path_, name + ".shape", "expected non-negative integers, found {} {}", json_type_name(d), d.dump());
      uint64_t v = d.get<uint64_t>();
      if (v > uint64_t(std::numeric_limits<int64_t>::max())) overflow = true;
      if (v != 0 &&
          (__builtin_mul_overflow(nonzero, v, &nonzero) || nonzero > uint64_t(std::numeric_limits<int64_t>::max())))
        overflow = true;
      numel *= v;
      info.shape.push_back(int64_t(std::min<uint64_t>(v, uint64_t(std::numeric_limits<int64_t>::max()))));
    }
    uint64_t nbytes = 0;
    if (overflow || __builtin_mul_overflow(numel, uint64_t(dtype_size(info.dtype)), &nbytes) ||
        nbytes > uint64_t(std::numeric_limits<int64_t>::max()))
      fail(path_, name + ".shape", "{} overflows the element count", sh->dump());

    auto off = entry.find("data_offsets");
    if (off == entry.end()) fail(path_, name + ".data_offsets", "missing");
    if (!off->is_array() || off->size() != 2 || !(*off)[0].is_number_unsigned() || !(*off)[1].is_number_unsigned())
      fail(path_, name + ".data_offsets", "expected [begin, end] of non-negative integers, found {}", off->dump());
    uint64_t b = (*off)[0].get<uint64_t>(), e = (*off)[1].get<uint64_t>();
    if (b > e) fail(path_, name + ".data_offsets", "begin {} is after end {}", b, e);
    if (e > data_size)
      fail(path_, name + ".data_offsets", "[{}, {}] runs past the end of the data region ({} bytes)", b, e, data_size);
    if (e - b != nbytes)
      fail(path_, name + ".data_offsets", "[{}, {}] holds {} bytes but shape {} of {} needs {}", b, e, e - b,
           shape_to_string(info.shape), dts, nbytes);
    info.offset = size_t(b);
    info.nbytes = size_t(nbytes);
    tensors_.push_back(std::move(info));
  }

  std::sort(tensors_.begin(), tensors_.end(), [](const TensorInfo& a, const TensorInfo& b) {
    return a.offset != b.offset ? a.offset < b.offset : a.nbytes < b.nbytes;
  });
  for (size_t i = 1; i < tensors_.size(); ++i) {
    const TensorInfo& prev = tensors_[i - 1];
    const TensorInfo& cur = tensors_[i];
    if (cur.offset < prev.offset + prev.nbytes)
      fail(path_, cur.name + ".data_offsets", "[{}, {}] overlaps tensor {} at [{}, {}]", cur.offset,
           cur.offset + cur.nbytes, prev.name, prev.offset, prev.offset + prev.nbytes);
  }
  for (size_t i = 0; i < tensors_.size(); ++i) index_[tensors_[i].name] = i;
}

const TensorInfo* SafetensorsFile::find(const std::string& name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

Tensor SafetensorsFile::tensor(const std::string& name) const {
  const TensorInfo* info = find(name);
  if (!info) throw Error(path_, name, "not in file");
  const uint8_t* p = data_ + data_offset_ + info->offset;
  size_t align = dtype_size(info->dtype);
  if (reinterpret_cast<uintptr_t>(p) % align != 0) {
    // A header whose length is not a multiple of the element size leaves the
    // data misaligned: copy rather than hand out a misaligned view.
    Tensor t = Tensor::empty(info->shape, info->dtype);
    if (info->nbytes) std::memcpy(t.data(), p, info->nbytes);
    return t;
  }
  std::shared_ptr<void> owner = std::const_pointer_cast<void>(owner_);
  return Tensor::wrap(const_cast<uint8_t*>(p), info->shape, info->dtype, kCpu, std::move(owner));
}

// ---- Checkpoint ---------------------------------------------------------------

Checkpoint Checkpoint::open(const std::string& path) {
  Checkpoint c;
  std::string index_path;
  std::string single_path;
  std::string dir;
  if (is_directory(path)) {
    dir = path;
    std::string idx = join_path(path, "model.safetensors.index.json");
    std::string one = join_path(path, "model.safetensors");
    if (file_exists(idx)) {
      index_path = idx;
    } else if (file_exists(one)) {
      single_path = one;
    } else {
      fail(path, "model.safetensors", "directory has neither model.safetensors nor model.safetensors.index.json");
    }
  } else if (!file_exists(path)) {
    fail(path, "file", "no such file or directory");
  } else if (ends_with(path, ".index.json")) {
    dir = dir_of(path);
    index_path = path;
  } else {
    single_path = path;
  }

  if (!single_path.empty()) {
    c.path_ = is_directory(path) ? path : single_path;
    auto f = SafetensorsFile::open(single_path);
    c.metadata_ = f->metadata();
    for (size_t i = 0; i < f->tensors().size(); ++i) c.where_[f->tensors()[i].name] = 0;
    c.files_.push_back(std::move(f));
    return c;
  }

  c.path_ = is_directory(path) ? path : index_path;
  json index;
  try {
    index = json::parse(read_text_file(index_path));
  } catch (const json::exception& e) {
    fail(index_path, "", "not valid JSON: {}", e.what());
  }
  if (!index.is_object()) fail(index_path, "", "expected a JSON object, found {}", json_type_name(index));
  auto wm = index.find("weight_map");
  if (wm == index.end()) fail(index_path, "weight_map", "missing");
  if (!wm->is_object()) fail(index_path, "weight_map", "expected an object, found {}", json_type_name(*wm));
  auto md = index.find("metadata");
  if (md != index.end() && md->is_object()) {
    for (auto it = md->begin(); it != md->end(); ++it)
      c.metadata_[it.key()] = it.value().is_string() ? it.value().get<std::string>() : it.value().dump();
  }

  std::map<std::string, size_t> shard_index;
  for (auto it = wm->begin(); it != wm->end(); ++it) {
    if (!it.value().is_string())
      fail(index_path, "weight_map." + it.key(), "expected a shard file name, found {}", json_type_name(it.value()));
    std::string shard = it.value().get<std::string>();
    if (shard.empty() || shard.front() == '/' || shard == ".." || shard.rfind("../", 0) == 0 ||
        shard.find("/../") != std::string::npos)
      fail(index_path, "weight_map." + it.key(), "shard \"{}\" must be a file name relative to the model directory",
           shard);
    auto [pos, inserted] = shard_index.emplace(shard, c.files_.size());
    if (inserted) c.files_.push_back(SafetensorsFile::open(join_path(dir, shard)));
    const SafetensorsFile& f = *c.files_[pos->second];
    if (!f.find(it.key()))
      fail(index_path, "weight_map." + it.key(), "tensor is listed in shard {} but {} does not contain it", shard,
           f.path());
    c.where_[it.key()] = pos->second;
  }
  return c;
}

bool Checkpoint::has(const std::string& name) const { return where_.count(name) != 0; }

void Checkpoint::missing(const std::string& name) const { throw Error(path_, name, "tensor missing from checkpoint"); }

Tensor Checkpoint::get(const std::string& name) const {
  auto it = where_.find(name);
  if (it == where_.end()) missing(name);
  return files_[it->second]->tensor(name);
}

const TensorInfo& Checkpoint::info(const std::string& name) const {
  auto it = where_.find(name);
  if (it == where_.end()) missing(name);
  return *files_[it->second]->find(name);
}

std::vector<std::string> Checkpoint::names() const {
  std::vector<std::string> out;
  out.reserve(where_.size());
  for (const auto& [name, _] : where_) out.push_back(name);
  return out;
}

std::string Checkpoint::file_of(const std::string& name) const {
  auto it = where_.find(name);
  if (it == where_.end()) missing(name);
  return files_[it->second]->path();
}

// ---- writer ---------------------------------------------------------------------

void write_safetensors(const std::string& path, const std::vector<std::pair<std::string, Tensor>>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  std::set<std::string> seen;
  std::vector<Tensor> data;
  data.reserve(tensors.size());
  std::string header = "{";
  bool first = true;
  if (!metadata.empty()) {
    header += "\"__metadata__\":{";
    bool mfirst = true;
    for (const auto& [k, v] : metadata) {
      if (!mfirst) header += ",";
      mfirst = false;
      header += json(k).dump() + ":" + json(v).dump();
    }
    header += "}";
    first = false;
  }
  size_t offset = 0;
  for (const auto& [name, t] : tensors) {
    if (name.empty()) fail(path, "tensor", "empty tensor name");
    if (name == "__metadata__") fail(path, name, "reserved name cannot be a tensor");
    if (!seen.insert(name).second) fail(path, name, "duplicate tensor name");
    if (!t.defined()) fail(path, name, "tensor is undefined");
    if (!t.device().is_cpu()) fail(path, name, "tensor is on {}, expected cpu", t.device().str());
    Tensor c = t.contiguous();
    size_t nb = c.nbytes();
    if (!first) header += ",";
    first = false;
    json shape = json::array();
    for (int64_t d : c.shape()) shape.push_back(d);
    header += json(name).dump() + ":{\"dtype\":\"" + std::string(dtype_name(c.dtype())) +
              "\",\"shape\":" + shape.dump() + ",\"data_offsets\":[" + std::to_string(offset) + "," +
              std::to_string(offset + nb) + "]}";
    offset += nb;
    data.push_back(std::move(c));
  }
  header += "}";
  while (header.size() % 8 != 0) header += ' ';

  std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) fail(path, "file", "cannot create {}: {}", tmp, std::strerror(errno));
    uint8_t len[8];
    uint64_t n = header.size();
    for (int i = 0; i < 8; ++i) len[i] = uint8_t(n >> (8 * i));
    out.write(reinterpret_cast<const char*>(len), 8);
    out.write(header.data(), std::streamsize(header.size()));
    for (const Tensor& t : data)
      if (t.nbytes()) out.write(static_cast<const char*>(t.data()), std::streamsize(t.nbytes()));
    out.flush();
    if (!out) {
      std::remove(tmp.c_str());
      fail(path, "file", "write failed: {}", std::strerror(errno));
    }
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    int err = errno;
    std::remove(tmp.c_str());
    fail(path, "file", "cannot rename {} into place: {}", tmp, std::strerror(err));
  }
}

}  // namespace kite
