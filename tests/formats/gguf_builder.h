#pragma once
// A tiny GGUF writer for tests (formats and model tests build files with it).
#include <cstdint>
#include <string>
#include <vector>

#include "formats/gguf.h"

namespace kite::test {

class GgufBuilder {
 public:
  explicit GgufBuilder(uint32_t version = 3) : version_(version) {}

  template <typename T>
  static void put(std::string& s, T v) {
    s.append(reinterpret_cast<const char*>(&v), sizeof(T));
  }
  static void put_str(std::string& s, const std::string& v) {
    put<uint64_t>(s, v.size());
    s += v;
  }

  // Raw value bytes (type tag included) for a key.
  void kv_raw(const std::string& key, uint32_t type, const std::string& value_bytes) {
    put_str(kv_, key);
    put<uint32_t>(kv_, type);
    kv_ += value_bytes;
    ++n_kv_;
  }
  template <typename T>
  void kv(const std::string& key, GgufValueType type, T v) {
    std::string b;
    put<T>(b, v);
    kv_raw(key, uint32_t(type), b);
  }
  void kv_string(const std::string& key, const std::string& v) {
    std::string b;
    put_str(b, v);
    kv_raw(key, uint32_t(GgufValueType::String), b);
  }
  void kv_strings(const std::string& key, const std::vector<std::string>& v) {
    std::string b;
    put<uint32_t>(b, uint32_t(GgufValueType::String));
    put<uint64_t>(b, v.size());
    for (const auto& s : v) put_str(b, s);
    kv_raw(key, uint32_t(GgufValueType::Array), b);
  }
  template <typename T>
  void kv_array(const std::string& key, GgufValueType elem, const std::vector<T>& v) {
    std::string b;
    put<uint32_t>(b, uint32_t(elem));
    put<uint64_t>(b, v.size());
    for (T x : v) put<T>(b, x);
    kv_raw(key, uint32_t(GgufValueType::Array), b);
  }

  // ne in ggml order (ne[0] contiguous); data is placed aligned in the data section.
  void tensor(const std::string& name, GgmlType type, const std::vector<uint64_t>& ne, const std::string& data) {
    size_t off = (data_.size() + alignment_ - 1) / alignment_ * alignment_;
    data_.resize(off, '\0');
    data_ += data;
    put_str(ti_, name);
    put<uint32_t>(ti_, uint32_t(ne.size()));
    for (uint64_t d : ne) put<uint64_t>(ti_, d);
    put<uint32_t>(ti_, uint32_t(type));
    put<uint64_t>(ti_, off);
    ++n_tensors_;
  }
  void set_alignment(size_t a) {
    alignment_ = a;
    kv<uint32_t>("general.alignment", GgufValueType::U32, uint32_t(a));
  }

  std::string build() const {
    std::string s = "GGUF";
    put<uint32_t>(s, version_);
    put<uint64_t>(s, n_tensors_);
    put<uint64_t>(s, n_kv_);
    s += kv_ + ti_;
    if (n_tensors_) {
      s.resize((s.size() + alignment_ - 1) / alignment_ * alignment_, '\0');
      s += data_;
    }
    return s;
  }

 private:
  uint32_t version_;
  uint64_t n_kv_ = 0, n_tensors_ = 0;
  size_t alignment_ = 32;
  std::string kv_, ti_, data_;
};

}  // namespace kite::test
