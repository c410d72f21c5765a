#include "core/socket.h"

#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <thread>
#include <vector>

#include "core/error.h"

namespace kite {

namespace {

double now_s() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

void no_delay(int fd) {
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

}  // namespace

Socket::Socket(Socket&& o) noexcept : fd_(o.fd_), peer_(std::move(o.peer_)) { o.fd_ = -1; }

Socket& Socket::operator=(Socket&& o) noexcept {
  if (this != &o) {
    close();
    fd_ = o.fd_;
    peer_ = std::move(o.peer_);
    o.fd_ = -1;
  }
  return *this;
}

Socket::~Socket() { close(); }

void Socket::close() {
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
}

Socket Socket::connect(const std::string& host, int port, double timeout_s) {
  const std::string peer = host + ":" + std::to_string(port);
  const double deadline = now_s() + timeout_s;
  std::string last = "no attempt";
  for (;;) {
    addrinfo hints{};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    addrinfo* res = nullptr;
    const int rc = getaddrinfo(host.c_str(), std::to_string(port).c_str(), &hints, &res);
    if (rc != 0) fail(peer, "master_addr", "cannot resolve '{}': {}", host, gai_strerror(rc));
    for (addrinfo* a = res; a; a = a->ai_next) {
      const int fd = ::socket(a->ai_family, a->ai_socktype, a->ai_protocol);
      if (fd < 0) continue;
      if (::connect(fd, a->ai_addr, a->ai_addrlen) == 0) {
        freeaddrinfo(res);
        no_delay(fd);
        return Socket(fd, peer);
      }
      last = std::strerror(errno);
      ::close(fd);
    }
    freeaddrinfo(res);
    if (now_s() > deadline)
      fail(peer, "master_addr", "could not connect within {:.0f} s ({}); is node 0 running and the port open?",
           timeout_s, last);
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
}

void Socket::send_all(const void* data, size_t bytes) {
  const char* p = static_cast<const char*>(data);
  while (bytes > 0) {
    const ssize_t n = ::send(fd_, p, bytes, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) fail(peer_, "connection", "send failed: {}", std::strerror(errno));
    p += n;
    bytes -= size_t(n);
  }
}

void Socket::recv_all(void* data, size_t bytes) {
  char* p = static_cast<char*>(data);
  while (bytes > 0) {
    const ssize_t n = ::recv(fd_, p, bytes, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n == 0) fail(peer_, "connection", "the peer closed the connection");
    if (n < 0) fail(peer_, "connection", "receive failed: {}", std::strerror(errno));
    p += n;
    bytes -= size_t(n);
  }
}

void Socket::send_message(std::string_view bytes) {
  const uint64_t n = bytes.size();
  send_all(&n, sizeof(n));
  send_all(bytes.data(), bytes.size());
}

std::string Socket::recv_message() {
  uint64_t n = 0;
  recv_all(&n, sizeof(n));
  if (n > (uint64_t(1) << 40)) fail(peer_, "connection", "a message of {} bytes is not Kite's", n);
  std::string s(n, '\0');
  recv_all(s.data(), n);
  return s;
}

Listener::Listener(int port) {
  fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd_ < 0) fail("listen", "socket", "{}", std::strerror(errno));
  int one = 1;
  setsockopt(fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_ANY);
  addr.sin_port = htons(uint16_t(port));
  if (::bind(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 || ::listen(fd_, 64) != 0) {
    const std::string why = std::strerror(errno);
    ::close(fd_);
    fail("listen", "master_port", "cannot listen on port {}: {}; pick a free --master-port", port, why);
  }
  socklen_t len = sizeof(addr);
  getsockname(fd_, reinterpret_cast<sockaddr*>(&addr), &len);
  port_ = ntohs(addr.sin_port);
}

Listener::~Listener() {
  if (fd_ >= 0) ::close(fd_);
}

Socket Listener::accept(double timeout_s) {
  pollfd p{fd_, POLLIN, 0};
  const int rc = ::poll(&p, 1, int(timeout_s * 1000));
  if (rc == 0)
    fail("port " + std::to_string(port_), "nnodes", "no node connected within {:.0f} s; start every --node-rank",
         timeout_s);
  if (rc < 0) fail("port " + std::to_string(port_), "accept", "{}", std::strerror(errno));
  sockaddr_in addr{};
  socklen_t len = sizeof(addr);
  const int fd = ::accept(fd_, reinterpret_cast<sockaddr*>(&addr), &len);
  if (fd < 0) fail("port " + std::to_string(port_), "accept", "{}", std::strerror(errno));
  no_delay(fd);
  char host[NI_MAXHOST] = "?";
  getnameinfo(reinterpret_cast<sockaddr*>(&addr), len, host, sizeof(host), nullptr, 0, NI_NUMERICHOST);
  return Socket(fd, std::string(host) + ":" + std::to_string(ntohs(addr.sin_port)));
}

void Wire::check(uint64_t n) const {
  if (n > buf_.size() - pos_)
    fail("wire", "message", "truncated: {} bytes wanted at offset {} of {}", n, pos_, buf_.size());
}

void Wire::check_count(uint64_t n, size_t elem) const {
  if (n > (buf_.size() - pos_) / elem)
    fail("wire", "message", "truncated: {} elements of {} bytes wanted at offset {} of {}", n, elem, pos_, buf_.size());
}

void Wire::take(void* dst, size_t n) {
  check(n);
  if (n == 0) return;  // dst may be an empty vector's null data()
  std::memcpy(dst, buf_.data() + pos_, n);
  pos_ += n;
}

}  // namespace kite
