#include "server/http_server.h"

#include <strings.h>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http.hpp>

#include "core/error.h"

namespace kite::server {

namespace beast = boost::beast;
namespace http = beast::http;
using net::ip::tcp;
constexpr auto kTuple = net::as_tuple(net::use_awaitable);

std::string_view HttpRequest::header(std::string_view name) const {
  for (const auto& [k, v] : headers)
    if (k.size() == name.size() && strncasecmp(k.data(), name.data(), k.size()) == 0) return v;
  return {};
}

std::string_view status_reason(int status) {
  std::string_view r = http::obsolete_reason(http::int_to_status(unsigned(status)));
  return r.empty() ? std::string_view("Unknown") : r;
}

// ---- Waker ----------------------------------------------------------------

Waker::Waker(net::any_io_executor ex) : timer_(std::move(ex)) {}

void Waker::wake() {
  woken_.store(true);
  // The cancel runs on the waiter's executor (a strand), so it cannot slip
  // in between the waiter's check of woken_ and the start of its wait.
  net::post(timer_.get_executor(), [self = shared_from_this()] { self->timer_.cancel(); });
}

net::awaitable<void> Waker::wait() {
  if (woken_.exchange(false)) co_return;
  timer_.expires_at(net::steady_timer::time_point::max());
  co_await timer_.async_wait(kTuple);
  woken_.store(false);
}

// ---- HttpResponder --------------------------------------------------------

struct HttpResponder::State {
  std::shared_ptr<beast::tcp_stream> stream;
  unsigned version = 11;
  bool keep_alive = true;
  bool responded = false;  // a response was started
  bool done = false;       // the response finished (the watcher stands down)
  bool events = false;     // an event stream is open
  bool gone = false;
  std::function<void()> gone_fn;
};

namespace {

template <class Res>
void common_headers(Res& res, const HttpResponder::State& s) {
  res.set(http::field::server, "kite");
  res.keep_alive(s.keep_alive);
}

// Re-arms a wait for the socket to become readable; when it does and a peek
// reads end of stream (or fails), the client is gone.
void watch(std::shared_ptr<HttpResponder::State> s) {
  auto& sock = s->stream->socket();
  sock.async_wait(tcp::socket::wait_read, [s](const boost::system::error_code& ec) {
    if (s->done || s->gone) return;
    if (ec) {
      if (ec == net::error::operation_aborted) return;
      s->gone = true;
    } else {
      char c;
      boost::system::error_code pec;
      auto& so = s->stream->socket();
      so.non_blocking(true, pec);
      size_t n = so.receive(net::buffer(&c, 1), tcp::socket::message_peek, pec);
      if (pec == net::error::would_block || pec == net::error::try_again) {
        watch(s);
        return;
      }
      if (!pec && n > 0) return;  // the client sent more (a pipelined request): not a disconnect
      s->gone = true;
    }
    if (s->gone && s->gone_fn) s->gone_fn();
  });
}

}  // namespace

net::awaitable<void> HttpResponder::send(int status, std::string_view content_type, std::string body,
                                         const std::vector<std::pair<std::string, std::string>>& headers) {
  State& s = *s_;
  if (s.responded) throw Error("http", "response", "a response was already sent for this request");
  s.responded = true;
  http::response<http::string_body> res{http::int_to_status(unsigned(status)), s.version};
  common_headers(res, s);
  res.set(http::field::content_type, content_type);
  for (const auto& [k, v] : headers) res.set(k, v);
  res.body() = std::move(body);
  res.prepare_payload();
  auto [ec, n] = co_await http::async_write(*s.stream, res, kTuple);
  if (ec) s.gone = true;
  s.done = true;
}

net::awaitable<bool> HttpResponder::begin_events() {
  State& s = *s_;
  if (s.responded) throw Error("http", "response", "a response was already sent for this request");
  s.responded = true;
  s.events = true;
  if (s.gone) co_return false;
  http::response<http::empty_body> res{http::status::ok, s.version};
  common_headers(res, s);
  res.set(http::field::content_type, "text/event-stream; charset=utf-8");
  res.set(http::field::cache_control, "no-cache");
  res.chunked(true);
  http::response_serializer<http::empty_body> sr{res};
  auto [ec, n] = co_await http::async_write_header(*s.stream, sr, kTuple);
  if (ec) s.gone = true;
  co_return !s.gone;
}

net::awaitable<bool> HttpResponder::send_event(std::string_view data) {
  State& s = *s_;
  if (s.gone) co_return false;
  std::string frame;
  frame.reserve(data.size() + 8);
  frame.append("data: ").append(data).append("\n\n");
  auto [ec, n] = co_await net::async_write(*s.stream, http::make_chunk(net::buffer(frame)), kTuple);
  if (ec) s.gone = true;
  co_return !s.gone;
}

net::awaitable<void> HttpResponder::end_events() {
  State& s = *s_;
  if (!s.gone) {
    auto [ec, n] = co_await net::async_write(*s.stream, http::make_chunk_last(), kTuple);
    if (ec) s.gone = true;
  }
  s.done = true;
}

bool HttpResponder::client_gone() const { return s_->gone; }
bool HttpResponder::responded() const { return s_->responded; }
net::any_io_executor HttpResponder::executor() const { return s_->stream->get_executor(); }

void HttpResponder::on_client_gone(std::function<void()> fn) {
  s_->gone_fn = std::move(fn);
  watch(s_);
}

// ---- HttpServer -------------------------------------------------------------

namespace {

struct Shared {
  HttpOptions options;
  HttpHandler handler;
  std::shared_ptr<std::atomic<int64_t>> in_flight;
};

std::pair<std::string, std::string> error_body(const Shared& sh, int status, std::string_view msg) {
  if (sh.options.error_body) return sh.options.error_body(status, msg);
  return {"text/plain; charset=utf-8", std::string(msg) + "\n"};
}

net::awaitable<void> session(std::shared_ptr<beast::tcp_stream> stream, std::shared_ptr<const Shared> sh) {
  beast::flat_buffer buffer;
  bool first = true;
  for (;;) {
    http::request_parser<http::string_body> parser;
    parser.header_limit(64 * 1024);
    parser.body_limit(sh->options.max_body_bytes);
    stream->expires_after(first ? sh->options.header_timeout : sh->options.idle_timeout);
    first = false;
    auto [ec, n] = co_await http::async_read(*stream, buffer, parser, kTuple);
    if (ec) {
      int status = 0;
      std::string msg;
      if (ec == http::error::body_limit) {
        status = 413;
        msg = "request body larger than the server's limit of " + std::to_string(sh->options.max_body_bytes) + " bytes";
      } else if (ec.category() == make_error_code(http::error::end_of_stream).category() &&
                 ec != http::error::end_of_stream && ec != http::error::partial_message) {
        status = 400;
        msg = "malformed HTTP request: " + ec.message();
      }
      if (status) {
        stream->expires_after(std::chrono::seconds(5));
        auto [ct, body] = error_body(*sh, status, msg);
        http::response<http::string_body> res{http::int_to_status(unsigned(status)), 11};
        res.set(http::field::server, "kite");
        res.set(http::field::content_type, ct);
        res.keep_alive(false);
        res.body() = std::move(body);
        res.prepare_payload();
        co_await http::async_write(*stream, res, kTuple);
      }
      break;
    }
    stream->expires_never();
    auto& msg = parser.get();
    HttpRequest req;
    req.method = std::string(msg.method_string());
    req.target = std::string(msg.target());
    req.path = req.target.substr(0, req.target.find('?'));
    for (const auto& f : msg) req.headers.emplace_back(std::string(f.name_string()), std::string(f.value()));
    req.body = std::move(msg.body());

    auto state = std::make_shared<HttpResponder::State>();
    state->stream = stream;
    state->version = msg.version();
    state->keep_alive = msg.keep_alive();
    HttpResponder responder(state);
    sh->in_flight->fetch_add(1);
    std::string failure;
    try {
      co_await sh->handler(req, responder);
    } catch (const std::exception& e) {
      failure = e.what();
    }
    if (!state->responded || (state->events && !state->done)) {
      if (!state->responded) {
        state->keep_alive = false;
        auto [ct, body] = error_body(*sh, 500, "internal server error");
        try {
          co_await responder.send(500, ct, std::move(body));
        } catch (const std::exception&) {
        }
      } else {
        co_await responder.end_events();
      }
    }
    state->done = true;
    sh->in_flight->fetch_sub(1);
    if (state->gone || !state->keep_alive) break;
  }
  boost::system::error_code ec;
  stream->socket().shutdown(tcp::socket::shutdown_send, ec);
  stream->close();
}

}  // namespace

HttpServer::HttpServer(net::io_context& io, const HttpOptions& options, HttpHandler handler)
    : io_(io),
      options_(options),
      handler_(std::move(handler)),
      acceptor_(net::make_strand(io)),
      in_flight_(std::make_shared<std::atomic<int64_t>>(0)) {
  boost::system::error_code ec;
  const std::string where = options.host + ":" + std::to_string(options.port);
  auto addr = net::ip::make_address(options.host, ec);
  if (ec) throw Error("--host", "host", "'" + options.host + "' is not an IP address (e.g. 0.0.0.0 or 127.0.0.1)");
  tcp::endpoint ep(addr, options.port);
  acceptor_.open(ep.protocol(), ec);
  if (!ec) acceptor_.set_option(net::socket_base::reuse_address(true), ec);
  if (!ec) acceptor_.bind(ep, ec);
  if (!ec) acceptor_.listen(net::socket_base::max_listen_connections, ec);
  if (ec)
    throw Error("--port", "port",
                "cannot listen on " + where + ": " + ec.message() +
                    " (is another server using the port? pick another with --port)");
  port_ = acceptor_.local_endpoint().port();
}

HttpServer::~HttpServer() {
  boost::system::error_code ec;
  acceptor_.close(ec);
}

void HttpServer::start() { net::co_spawn(acceptor_.get_executor(), accept_loop(), net::detached); }

void HttpServer::stop_accepting() {
  net::post(acceptor_.get_executor(), [this] {
    boost::system::error_code ec;
    acceptor_.close(ec);
  });
}

net::awaitable<void> HttpServer::accept_loop() {
  auto sh = std::make_shared<const Shared>(Shared{options_, handler_, in_flight_});
  for (;;) {
    auto [ec, sock] = co_await acceptor_.async_accept(net::make_strand(io_), kTuple);
    if (ec) {
      if (ec == net::error::operation_aborted || !acceptor_.is_open()) co_return;
      // E.g. too many open files: keep serving the connections we have and
      // try again shortly rather than spinning.
      net::steady_timer pause(acceptor_.get_executor(), std::chrono::milliseconds(50));
      co_await pause.async_wait(kTuple);
      continue;
    }
    boost::system::error_code nec;
    sock.set_option(tcp::no_delay(true), nec);
    auto stream = std::make_shared<beast::tcp_stream>(std::move(sock));
    net::co_spawn(stream->get_executor(), session(stream, sh), net::detached);
  }
}

}  // namespace kite::server
