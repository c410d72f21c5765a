#pragma once
// A blocking HTTP/1.1 client for the server tests (Boost.Beast, loopback).
#include <boost/asio/connect.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

namespace kite::server::test {

namespace net = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;

struct Reply {
  int status = 0;
  std::string body;
  std::string content_type;
  std::vector<std::pair<std::string, std::string>> headers;
  nlohmann::json json() const { return nlohmann::json::parse(body); }
  std::string header(const std::string& name) const {
    for (auto& [k, v] : headers)
      if (beast::iequals(k, name)) return v;
    return "";
  }
};

// One connection, kept alive across calls.
class Client {
 public:
  explicit Client(uint16_t port) : stream_(io_) {
    net::ip::tcp::endpoint ep(net::ip::make_address("127.0.0.1"), port);
    stream_.connect(ep);
  }
  ~Client() { close(); }
  void close() {
    beast::error_code ec;
    stream_.socket().shutdown(net::ip::tcp::socket::shutdown_both, ec);
    stream_.close();
  }

  Reply request(const std::string& method, const std::string& target, const std::string& body = "",
                const std::vector<std::pair<std::string, std::string>>& headers = {}) {
    send(method, target, body, headers);
    http::response_parser<http::string_body> parser;
    parser.body_limit(size_t(1) << 30);
    http::read(stream_, buffer_, parser);
    return to_reply(parser.get());
  }
  Reply post(const std::string& target, const nlohmann::json& body,
             const std::vector<std::pair<std::string, std::string>>& headers = {}) {
    return request("POST", target, body.dump(), headers);
  }

  // Sends a request and reads a Server-Sent-Events response: the `data:`
  // payloads in order (the final "[DONE]" included).
  std::vector<std::string> stream_events(const std::string& target, const nlohmann::json& body, int* status = nullptr,
                                         size_t stop_after = size_t(-1)) {
    send("POST", target, body.dump(), {});
    http::response_parser<http::string_body> parser;
    parser.body_limit(size_t(1) << 30);
    std::vector<std::string> events;
    std::string pending;
    http::read_header(stream_, buffer_, parser);
    if (status) *status = int(parser.get().result_int());
    // Read the body chunk by chunk through the parser's buffer.
    std::string acc;
    while (!parser.is_done()) {
      http::read_some(stream_, buffer_, parser);
      acc = parser.get().body();
      size_t pos;
      std::string rest = acc.substr(consumed_);
      while ((pos = rest.find("\n\n")) != std::string::npos) {
        std::string ev = rest.substr(0, pos);
        consumed_ += pos + 2;
        rest = rest.substr(pos + 2);
        if (ev.rfind("data: ", 0) == 0) events.push_back(ev.substr(6));
        if (events.size() >= stop_after) return events;
      }
    }
    consumed_ = 0;
    return events;
  }

  beast::tcp_stream& stream() { return stream_; }

 private:
  void send(const std::string& method, const std::string& target, const std::string& body,
            const std::vector<std::pair<std::string, std::string>>& headers) {
    http::request<http::string_body> req{http::string_to_verb(method), target, 11};
    req.set(http::field::host, "127.0.0.1");
    req.set(http::field::content_type, "application/json");
    for (auto& [k, v] : headers) req.set(k, v);
    req.body() = body;
    req.prepare_payload();
    req.keep_alive(true);
    http::write(stream_, req);
  }
  static Reply to_reply(const http::response<http::string_body>& res) {
    Reply r;
    r.status = int(res.result_int());
    r.body = res.body();
    r.content_type = std::string(res[http::field::content_type]);
    for (const auto& f : res) r.headers.emplace_back(std::string(f.name_string()), std::string(f.value()));
    return r;
  }

  net::io_context io_;
  beast::tcp_stream stream_;
  beast::flat_buffer buffer_;
  size_t consumed_ = 0;
};

}  // namespace kite::server::test
