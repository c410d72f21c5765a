#pragma once
// A small HTTP/1.1 server on Boost.Beast with C++20 coroutines: keep-alive,
// a body-size limit, Server-Sent Events, and detection of clients that go
// away while their response is pending. One coroutine per connection on its
// own strand; no thread per connection. Knows nothing of OpenAI or engines.
#include <atomic>
#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace kite::server {

namespace net = boost::asio;

struct HttpOptions {
  std::string host = "0.0.0.0";
  uint16_t port = 8000;                      // 0 = any free port (see HttpServer::port())
  size_t max_body_bytes = size_t(32) << 20;  // larger bodies get 413
  std::chrono::seconds idle_timeout{120};    // keep-alive connections idle this long are closed
  std::chrono::seconds header_timeout{30};   // a request must arrive within this
  // The body of the server's own error responses (413, 400 on an unparsable
  // request, 500 when a handler throws or does not respond): returns
  // {content type, body}. Default: plain text.
  std::function<std::pair<std::string, std::string>(int status, std::string_view message)> error_body;
};

struct HttpRequest {
  std::string method;  // "GET", "POST", ...
  std::string target;  // as sent, query included
  std::string path;    // target without the query
  std::vector<std::pair<std::string, std::string>> headers;
  std::string body;
  // The first header of that name (case-insensitive), or "".
  std::string_view header(std::string_view name) const;
};

// Wakes a coroutine that waits on it from any thread (an engine's output
// callback, say). Spurious wakes are possible; waits re-check their condition.
// Create it with std::make_shared on the waiting coroutine's executor.
class Waker : public std::enable_shared_from_this<Waker> {
 public:
  explicit Waker(net::any_io_executor ex);
  // Thread-safe.
  void wake();
  // Returns after the next wake() (or immediately if one came since the last wait).
  net::awaitable<void> wait();

 private:
  net::steady_timer timer_;
  std::atomic<bool> woken_{false};
};

// One request's response. A handler either calls send() once, or
// begin_events() then send_event() any number of times and end_events().
class HttpResponder {
 public:
  struct State;
  explicit HttpResponder(std::shared_ptr<State> state) : s_(std::move(state)) {}

  net::awaitable<void> send(int status, std::string_view content_type, std::string body,
                            const std::vector<std::pair<std::string, std::string>>& headers = {});
  // Starts a text/event-stream response (chunked). False when the client is gone.
  net::awaitable<bool> begin_events();
  // Writes "data: <data>\n\n". False when the client is gone.
  net::awaitable<bool> send_event(std::string_view data);
  net::awaitable<void> end_events();

  // True once the client closed its side (a read returned end of stream) or
  // a write failed. Only meaningful while the response is pending.
  bool client_gone() const;
  // Called (on this connection's strand) when the client goes away while the
  // response is pending; starts watching the socket. Call at most once.
  void on_client_gone(std::function<void()> fn);
  net::any_io_executor executor() const;
  bool responded() const;

 private:
  std::shared_ptr<State> s_;
};

using HttpHandler = std::function<net::awaitable<void>(const HttpRequest&, HttpResponder&)>;

class HttpServer {
 public:
  // Binds and listens at once (throws kite::Error naming host:port when it cannot).
  HttpServer(net::io_context& io, const HttpOptions& options, HttpHandler handler);
  ~HttpServer();
  uint16_t port() const { return port_; }
  // Starts accepting connections (on the io_context's threads).
  void start();
  // Stops accepting new connections; open ones keep being served.
  void stop_accepting();
  // Requests whose handler is running.
  int64_t in_flight() const { return in_flight_->load(); }

 private:
  net::awaitable<void> accept_loop();

  net::io_context& io_;
  HttpOptions options_;
  HttpHandler handler_;
  net::ip::tcp::acceptor acceptor_;
  uint16_t port_ = 0;
  std::shared_ptr<std::atomic<int64_t>> in_flight_;
};

// "Bad Request" for 400, and so on (the reason phrase of a status code).
std::string_view status_reason(int status);

}  // namespace kite::server
