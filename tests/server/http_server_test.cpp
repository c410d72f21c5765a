// The HTTP layer over loopback: keep-alive, body limit, malformed requests,
// event streams, disconnect detection, handlers that throw.
#include "server/http_server.h"

#include <gtest/gtest.h>

#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <future>
#include <thread>

#include "core/error.h"
#include "http_client.h"

namespace kite::server {
namespace {

using test::Client;
namespace http = boost::beast::http;

class Loop {
 public:
  Loop(HttpOptions opts, HttpHandler h) : server_(io_, opts, std::move(h)) {
    server_.start();
    thread_ = std::thread([this] { io_.run(); });
  }
  ~Loop() {
    io_.stop();
    thread_.join();
  }
  uint16_t port() const { return server_.port(); }
  HttpServer& server() { return server_; }

 private:
  net::io_context io_;
  HttpServer server_;
  std::thread thread_;
};

HttpOptions local() {
  HttpOptions o;
  o.host = "127.0.0.1";
  o.port = 0;
  return o;
}

TEST(HttpServer, KeepAliveServesSeveralRequestsOnOneConnection) {
  std::atomic<int> calls{0};
  Loop loop(local(), [&](const HttpRequest& req, HttpResponder& res) -> net::awaitable<void> {
    calls++;
    std::string body = req.method + " " + req.target + " " + req.body + " " + std::string(req.header("X-TEST"));
    co_await res.send(200, "text/plain", body);
  });
  Client c(loop.port());
  auto r1 = c.request("POST", "/a?q=1", "hello", {{"x-test", "v1"}});
  EXPECT_EQ(r1.status, 200);
  EXPECT_EQ(r1.body, "POST /a?q=1 hello v1");
  auto r2 = c.request("GET", "/b");
  EXPECT_EQ(r2.status, 200);
  EXPECT_EQ(r2.body, "GET /b  ");
  EXPECT_EQ(calls.load(), 2);
}

TEST(HttpServer, BodyOverTheLimitGets413) {
  HttpOptions o = local();
  o.max_body_bytes = 1000;
  o.error_body = [](int status, std::string_view msg) {
    return std::pair<std::string, std::string>(
        "application/json",
        "{\"status\":" + std::to_string(status) + ",\"m\":\"" + std::string(msg.substr(0, 20)) + "\"}");
  };
  bool called = false;
  Loop loop(o, [&](const HttpRequest&, HttpResponder& res) -> net::awaitable<void> {
    called = true;
    co_await res.send(200, "text/plain", "no");
  });
  Client c(loop.port());
  auto r = c.request("POST", "/x", std::string(5000, 'a'));
  EXPECT_EQ(r.status, 413);
  EXPECT_NE(r.body.find("\"status\":413"), std::string::npos);
  EXPECT_FALSE(called);
  // Exactly at the limit is fine.
  Client c2(loop.port());
  EXPECT_EQ(c2.request("POST", "/x", std::string(1000, 'a')).status, 200);
}

TEST(HttpServer, MalformedRequestGets400AndClose) {
  Loop loop(local(), [](const HttpRequest&, HttpResponder& res) -> net::awaitable<void> {
    co_await res.send(200, "text/plain", "ok");
  });
  net::io_context io;
  net::ip::tcp::socket s(io);
  s.connect({net::ip::make_address("127.0.0.1"), loop.port()});
  std::string junk = "THIS IS NOT HTTP\r\n\r\n";
  net::write(s, net::buffer(junk));
  std::string got;
  boost::system::error_code ec;
  char buf[4096];
  for (;;) {
    size_t n = s.read_some(net::buffer(buf), ec);
    if (ec) break;
    got.append(buf, n);
  }
  EXPECT_EQ(got.rfind("HTTP/1.1 400", 0), 0u) << got;
}

TEST(HttpServer, HandlerThatThrowsOrForgetsToRespondGives500) {
  Loop loop(local(), [](const HttpRequest& req, HttpResponder& res) -> net::awaitable<void> {
    if (req.path == "/throw") throw std::runtime_error("secret internals");
    if (req.path == "/ok") co_await res.send(200, "text/plain", "fine");
    co_return;  // "/silent": no response
  });
  {
    Client c(loop.port());
    auto r = c.request("GET", "/throw");
    EXPECT_EQ(r.status, 500);
    EXPECT_EQ(r.body.find("secret"), std::string::npos);
  }
  {
    Client c(loop.port());
    EXPECT_EQ(c.request("GET", "/silent").status, 500);
  }
  Client c(loop.port());
  EXPECT_EQ(c.request("GET", "/ok").body, "fine");
}

TEST(HttpServer, EventStreamIsChunkedAndFramed) {
  Loop loop(local(), [](const HttpRequest&, HttpResponder& res) -> net::awaitable<void> {
    EXPECT_TRUE(co_await res.begin_events());
    for (int i = 0; i < 5; ++i) EXPECT_TRUE(co_await res.send_event("{\"i\":" + std::to_string(i) + "}"));
    const std::string done = "[DONE]";
    co_await res.send_event(done);
    co_await res.end_events();
  });
  Client c(loop.port());
  int status = 0;
  auto events = c.stream_events("/s", nlohmann::json::object(), &status);
  EXPECT_EQ(status, 200);
  ASSERT_EQ(events.size(), 6u);
  EXPECT_EQ(events[0], "{\"i\":0}");
  EXPECT_EQ(events[4], "{\"i\":4}");
  EXPECT_EQ(events[5], "[DONE]");
  // The connection stays usable after the stream.
  EXPECT_EQ(c.stream_events("/s", nlohmann::json::object()).size(), 6u);
}

TEST(HttpServer, ClientThatLeavesIsNoticedWhileTheHandlerWaits) {
  std::promise<void> gone;
  auto gone_future = gone.get_future();
  Loop loop(local(), [&](const HttpRequest&, HttpResponder& res) -> net::awaitable<void> {
    auto waker = std::make_shared<Waker>(co_await net::this_coro::executor);
    res.on_client_gone([waker] { waker->wake(); });
    co_await res.begin_events();
    while (!res.client_gone()) co_await waker->wait();  // no output ever comes
    gone.set_value();
    co_await res.end_events();
  });
  {
    Client c(loop.port());
    http::request<http::string_body> req{http::verb::post, "/wait", 11};
    req.set(http::field::host, "x");
    req.body() = "{}";
    req.prepare_payload();
    http::write(c.stream(), req);
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    EXPECT_EQ(loop.server().in_flight(), 1);
  }  // the client closes here
  ASSERT_EQ(gone_future.wait_for(std::chrono::seconds(10)), std::future_status::ready);
  for (int i = 0; i < 500 && loop.server().in_flight() != 0; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  EXPECT_EQ(loop.server().in_flight(), 0);
}

TEST(HttpServer, WakerWakesFromAnotherThread) {
  Loop loop(local(), [](const HttpRequest&, HttpResponder& res) -> net::awaitable<void> {
    auto waker = std::make_shared<Waker>(co_await net::this_coro::executor);
    std::atomic<int> n{0};
    std::thread t([&] {
      for (int i = 0; i < 1000; ++i) {
        n++;
        waker->wake();
      }
    });
    while (n.load() < 1000) co_await waker->wait();
    t.join();
    co_await res.send(200, "text/plain", std::to_string(n.load()));
  });
  Client c(loop.port());
  EXPECT_EQ(c.request("GET", "/").body, "1000");
}

TEST(HttpServer, PortInUseIsAClearError) {
  Loop loop(local(), [](const HttpRequest&, HttpResponder& res) -> net::awaitable<void> {
    co_await res.send(200, "text/plain", "");
  });
  net::io_context io;
  HttpOptions o = local();
  o.port = loop.port();
  try {
    HttpServer second(io, o, nullptr);
    ADD_FAILURE() << "bound a port in use";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("--port"), std::string::npos) << e.what();
  }
  o.host = "not-an-ip";
  o.port = 0;
  EXPECT_THROW(HttpServer(io, o, nullptr), Error);
}

}  // namespace
}  // namespace kite::server
