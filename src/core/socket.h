#pragma once
// Blocking TCP connections for the few places that talk between processes
// without HTTP: the multi-node tensor-parallel step channel and the CPU
// ranks' collectives (model/tensor_parallel.h, backend/communicator.h).
// Messages are length-prefixed byte strings. Errors throw kite::Error naming
// the peer.
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace kite {

class Socket {
 public:
  Socket() = default;
  explicit Socket(int fd, std::string peer) : fd_(fd), peer_(std::move(peer)) {}
  Socket(Socket&& o) noexcept;
  Socket& operator=(Socket&& o) noexcept;
  Socket(const Socket&) = delete;
  Socket& operator=(const Socket&) = delete;
  ~Socket();

  // Connects to host:port, retrying until timeout_s passes (the listener may
  // not be up yet).
  static Socket connect(const std::string& host, int port, double timeout_s);
  bool valid() const { return fd_ >= 0; }
  const std::string& peer() const { return peer_; }
  void close();

  void send_all(const void* data, size_t bytes);
  void recv_all(void* data, size_t bytes);
  // A message: 8-byte little-endian length, then the bytes.
  void send_message(std::string_view bytes);
  std::string recv_message();

 private:
  int fd_ = -1;
  std::string peer_;
};

class Listener {
 public:
  // Listens on port (all interfaces; 0 picks a free port: see port()).
  explicit Listener(int port);
  Listener(const Listener&) = delete;
  Listener& operator=(const Listener&) = delete;
  ~Listener();
  int port() const { return port_; }
  // Waits up to timeout_s for the next connection.
  Socket accept(double timeout_s);

 private:
  int fd_ = -1;
  int port_ = 0;
};

// A byte buffer for messages: appends and reads back plain values and
// vectors of them (host byte order: every node is x86-64 little-endian).
class Wire {
 public:
  Wire() = default;
  explicit Wire(std::string bytes) : buf_(std::move(bytes)) {}
  template <typename T>
  Wire& put(const T& v) {
    buf_.append(reinterpret_cast<const char*>(&v), sizeof(T));
    return *this;
  }
  template <typename T>
  Wire& put_vector(const std::vector<T>& v) {
    put<uint64_t>(v.size());
    if (!v.empty()) buf_.append(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(T));
    return *this;
  }
  Wire& put_string(std::string_view s) {
    put<uint64_t>(s.size());
    buf_.append(s);
    return *this;
  }
  template <typename T>
  T get() {
    T v;
    take(&v, sizeof(T));
    return v;
  }
  template <typename T>
  std::vector<T> get_vector() {
    const uint64_t n = get<uint64_t>();
    check_count(n, sizeof(T));
    std::vector<T> v(n);
    take(v.data(), n * sizeof(T));
    return v;
  }
  std::string get_string() {
    const uint64_t n = get<uint64_t>();
    check(n);
    std::string s = buf_.substr(pos_, n);
    pos_ += n;
    return s;
  }
  const std::string& bytes() const { return buf_; }

 private:
  void check(uint64_t n) const;
  void check_count(uint64_t n, size_t elem) const;  // n elements of elem bytes remain (no overflow)
  void take(void* dst, size_t n);
  std::string buf_;
  size_t pos_ = 0;
};

}  // namespace kite
