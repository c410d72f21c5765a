#include "tools/bench_serve/client.h"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <chrono>
#include <cmath>
#include <memory>
#include <random>

#include "core/error.h"

namespace kite::bench {

namespace net = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using Json = nlohmann::json;
using Clock = std::chrono::steady_clock;
constexpr auto kTuple = net::as_tuple(net::use_awaitable);

Endpoint parse_endpoint(const std::string& base_url, const std::string& endpoint) {
  const std::string scheme = "http://";
  if (base_url.rfind("https://", 0) == 0)
    fail("--base-url", "base_url", "'{}': https is not supported; use http:// (or a local TLS proxy)", base_url);
  if (base_url.rfind(scheme, 0) != 0)
    fail("--base-url", "base_url", "'{}' is not an http:// URL (e.g. http://127.0.0.1:8000)", base_url);
  std::string rest = base_url.substr(scheme.size());
  std::string prefix;
  if (auto slash = rest.find('/'); slash != std::string::npos) {
    prefix = rest.substr(slash);
    rest = rest.substr(0, slash);
  }
  while (!prefix.empty() && prefix.back() == '/') prefix.pop_back();
  Endpoint e;
  if (auto colon = rest.rfind(':'); colon != std::string::npos && rest.find(']') == std::string::npos) {
    e.host = rest.substr(0, colon);
    e.port = rest.substr(colon + 1);
  } else {
    e.host = rest;
    e.port = "80";
  }
  if (e.host.empty()) fail("--base-url", "base_url", "'{}' has no host", base_url);
  if (e.port.empty() || e.port.find_first_not_of("0123456789") != std::string::npos)
    fail("--base-url", "base_url", "'{}' has no valid port", base_url);
  if (endpoint.empty() || endpoint[0] != '/')
    fail("--endpoint", "endpoint", "'{}' must start with '/' (e.g. /v1/completions)", endpoint);
  // A base URL that already ends in /v1 and an endpoint that starts with it name the same path once.
  std::string ep = endpoint;
  if (!prefix.empty() && ep.rfind(prefix + "/", 0) == 0) ep = ep.substr(prefix.size());
  e.path = prefix + ep;
  const std::string chat = "/chat/completions", plain = "/completions";
  if (e.path.size() >= chat.size() && e.path.compare(e.path.size() - chat.size(), chat.size(), chat) == 0)
    e.chat = true;
  else if (!(e.path.size() >= plain.size() && e.path.compare(e.path.size() - plain.size(), plain.size(), plain) == 0))
    fail("--endpoint", "endpoint", "'{}' is neither a /completions nor a /chat/completions route", endpoint);
  return e;
}

std::vector<double> arrival_times(size_t n, double request_rate, double burstiness, uint64_t seed) {
  if (!(request_rate > 0)) fail("--request-rate", "request_rate", "{} is invalid; expected > 0 or inf", request_rate);
  if (!(burstiness > 0)) fail("--burstiness", "burstiness", "{} is invalid; expected > 0", burstiness);
  std::vector<double> t(n, 0.0);
  if (std::isinf(request_rate)) return t;
  // Gaps ~ Gamma(shape = burstiness, scale = 1 / (rate * burstiness)): mean
  // 1 / rate; burstiness 1 is a Poisson process, lower is burstier.
  std::mt19937_64 rng(seed);
  std::gamma_distribution<double> gap(burstiness, 1.0 / (request_rate * burstiness));
  double now = 0;
  for (size_t i = 0; i < n; ++i) {
    t[i] = now;
    now += gap(rng);
  }
  return t;
}

namespace {

struct Shared {
  const ClientOptions& client;
  const std::vector<BenchPrompt>& prompts;
  std::vector<RequestResult>& results;
  std::vector<double> arrivals;
  Clock::time_point t0;
  size_t next = 0;  // the next prompt a worker takes
  size_t done = 0;
  const RunOptions& run;
  double last_end = 0;
  net::ip::tcp::resolver::results_type hosts;  // resolved once for the run
  std::string resolve_error;                   // set when resolving failed: every request fails with it
};

double since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

Json request_body(const ClientOptions& c, const BenchPrompt& p) {
  Json b = c.sampling.is_object() ? c.sampling : Json::object();
  b["model"] = c.model;
  b["stream"] = true;
  b["stream_options"] = {{"include_usage", true}};
  if (!b.contains("temperature")) b["temperature"] = 0.0;
  if (c.endpoint.chat) {
    b["messages"] = Json::array({{{"role", "user"}, {"content", p.prompt}}});
    b["max_completion_tokens"] = p.output_len;
  } else {
    b["prompt"] = p.prompt;
    b["max_tokens"] = p.output_len;
  }
  if (c.ignore_eos) b["ignore_eos"] = true;
  return b;
}

// Reads one event's JSON into the result; true at [DONE].
bool on_event(const std::string& data, RequestResult& r, double now, double& last_chunk, bool chat) {
  if (data == "[DONE]") return true;
  Json j = Json::parse(data, nullptr, false);
  if (j.is_discarded() || !j.is_object()) return false;
  if (j.contains("error")) {
    r.error = j["error"].dump();
    return false;
  }
  if (j.contains("usage") && j["usage"].is_object()) {
    const Json& u = j["usage"];
    if (u.contains("completion_tokens") && u["completion_tokens"].is_number_integer()) {
      r.output_tokens = u["completion_tokens"].get<int64_t>();
      r.usage_reported = true;
    }
    if (u.contains("prompt_tokens") && u["prompt_tokens"].is_number_integer())
      r.usage_prompt_tokens = u["prompt_tokens"].get<int64_t>();
  }
  if (!j.contains("choices") || !j["choices"].is_array()) return false;
  for (const Json& c : j["choices"]) {
    std::string piece;
    if (chat) {
      if (c.contains("delta") && c["delta"].contains("content") && c["delta"]["content"].is_string())
        piece = c["delta"]["content"].get<std::string>();
    } else if (c.contains("text") && c["text"].is_string()) {
      piece = c["text"].get<std::string>();
    }
    if (piece.empty()) continue;
    if (r.ttft == 0)
      r.ttft = now;
    else
      r.itl.push_back(now - last_chunk);
    last_chunk = now;
    r.text += piece;
    if (!r.usage_reported) ++r.output_tokens;  // replaced by usage when the server reports it
  }
  return false;
}

net::awaitable<void> one_request(Shared& sh, size_t i) {
  RequestResult& r = sh.results[i];
  const ClientOptions& c = sh.client;
  r.prompt_len = sh.prompts[i].prompt_len;
  const std::string body = request_body(c, sh.prompts[i]).dump(-1, ' ', false, Json::error_handler_t::replace);
  auto ex = co_await net::this_coro::executor;
  beast::tcp_stream stream(ex);
  stream.expires_after(
      std::chrono::duration_cast<std::chrono::steady_clock::duration>(std::chrono::duration<double>(c.timeout_s)));
  const double start = since(sh.t0);
  r.start = start;
  if (!sh.resolve_error.empty()) {
    r.error = sh.resolve_error;
    co_return;
  }
  auto [cec, ep] = co_await stream.async_connect(sh.hosts, kTuple);
  if (cec) {
    r.error = fmt::format("connect {}:{}: {}", c.endpoint.host, c.endpoint.port, cec.message());
    co_return;
  }
  http::request<http::string_body> req{http::verb::post, c.endpoint.path, 11};
  req.set(http::field::host, c.endpoint.host);
  req.set(http::field::content_type, "application/json");
  req.set(http::field::accept, "text/event-stream");
  if (!c.api_key.empty()) req.set(http::field::authorization, "Bearer " + c.api_key);
  req.body() = body;
  req.prepare_payload();
  auto [wec, wn] = co_await http::async_write(stream, req, kTuple);
  if (wec) {
    r.error = "send: " + wec.message();
    co_return;
  }
  beast::flat_buffer buf;
  http::response_parser<http::string_body> parser;
  parser.body_limit(size_t(1) << 30);
  auto [hec, hn] = co_await http::async_read_header(stream, buf, parser, kTuple);
  if (hec) {
    r.error = "read: " + hec.message();
    co_return;
  }
  const int status = int(parser.get().result_int());
  size_t consumed = 0;
  double last_chunk = 0;
  bool finished = false;
  while (!parser.is_done()) {
    auto [ec, n] = co_await http::async_read_some(stream, buf, parser, kTuple);
    if (ec) {
      if (!finished) r.error = "read: " + ec.message();
      break;
    }
    if (status != 200) continue;
    const double now = since(sh.t0) - start;
    const std::string& acc = parser.get().body();
    size_t pos;
    while ((pos = acc.find("\n\n", consumed)) != std::string::npos) {
      std::string ev = acc.substr(consumed, pos - consumed);
      consumed = pos + 2;
      if (ev.rfind("data:", 0) != 0) continue;
      ev = ev.substr(ev.size() > 5 && ev[5] == ' ' ? 6 : 5);
      finished = on_event(ev, r, now, last_chunk, c.endpoint.chat) || finished;
    }
  }
  r.latency = since(sh.t0) - start;
  if (status != 200) {
    std::string b = parser.get().body();
    if (b.size() > 300) b = b.substr(0, 300) + "...";
    r.error = fmt::format("HTTP {}: {}", status, b);
  } else if (r.error.empty() && !finished) {
    r.error = "the stream ended without [DONE]";
  } else if (r.error.empty() && r.ttft == 0 && sh.prompts[i].output_len > 0) {
    r.error = "the stream carried no text";
  }
  r.success = r.error.empty();
  beast::error_code ignore;
  stream.socket().shutdown(net::ip::tcp::socket::shutdown_both, ignore);
}

// Takes prompts in order; waits for each one's arrival time, then runs it.
net::awaitable<void> worker(Shared& sh) {
  auto ex = co_await net::this_coro::executor;
  net::steady_timer timer(ex);
  while (sh.next < sh.prompts.size()) {
    const size_t i = sh.next++;
    const auto at = sh.t0 + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(sh.arrivals[i]));
    if (Clock::now() < at) {
      timer.expires_at(at);
      co_await timer.async_wait(kTuple);
    }
    try {
      co_await one_request(sh, i);
    } catch (const std::exception& e) {
      sh.results[i].success = false;
      sh.results[i].error = e.what();
    }
    sh.last_end = std::max(sh.last_end, since(sh.t0));
    ++sh.done;
    if (sh.run.progress) sh.run.progress(sh.done, sh.prompts.size());
  }
}

}  // namespace

std::vector<RequestResult> run_requests(const ClientOptions& client, const RunOptions& run,
                                        const std::vector<BenchPrompt>& prompts, double& duration) {
  if (run.max_concurrency < 0)
    fail("--max-concurrency", "max_concurrency", "{} is invalid; expected 0 (no cap) or more", run.max_concurrency);
  std::vector<RequestResult> results(prompts.size());
  Shared sh{client,
            prompts,
            results,
            arrival_times(prompts.size(), run.request_rate, run.burstiness, run.seed),
            Clock::now(),
            0,
            0,
            run,
            0,
            {},
            {}};
  net::io_context io(1);
  {
    boost::system::error_code ec;
    net::ip::tcp::resolver resolver(io);
    sh.hosts = resolver.resolve(client.endpoint.host, client.endpoint.port, ec);
    if (ec) sh.resolve_error = "resolve " + client.endpoint.host + ": " + ec.message();
  }
  const size_t workers =
      run.max_concurrency > 0 ? std::min(prompts.size(), size_t(run.max_concurrency)) : prompts.size();
  sh.t0 = Clock::now();
  for (size_t w = 0; w < workers; ++w) net::co_spawn(io, worker(sh), net::detached);
  io.run();
  duration = sh.last_end;
  return results;
}

std::string http_get(const Endpoint& at, const std::string& path, const std::string& api_key) {
  try {
    net::io_context io;
    net::ip::tcp::resolver resolver(io);
    beast::tcp_stream stream(io);
    stream.expires_after(std::chrono::seconds(10));
    stream.connect(resolver.resolve(at.host, at.port));
    http::request<http::string_body> req{http::verb::get, path, 11};
    req.set(http::field::host, at.host);
    if (!api_key.empty()) req.set(http::field::authorization, "Bearer " + api_key);
    http::write(stream, req);
    beast::flat_buffer buf;
    http::response<http::string_body> res;
    http::read(stream, buf, res);
    return res.result_int() == 200 ? res.body() : std::string();
  } catch (const std::exception&) {
    return {};
  }
}

double energy_joules(const Endpoint& at, const std::string& api_key) {
  const std::string text = http_get(at, "/metrics", api_key);
  const std::string name = "\nkite:gpu_energy_joules_total";
  const size_t p = text.find(name);
  if (p == std::string::npos) return std::nan("");
  const size_t v = text.find("} ", p + name.size());
  if (v == std::string::npos) return std::nan("");
  try {
    return std::stod(text.substr(v + 2));
  } catch (const std::exception&) {
    return std::nan("");
  }
}

}  // namespace kite::bench
