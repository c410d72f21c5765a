#include "server/api_server.h"

#include <fmt/format.h>
#include <strings.h>

#include <boost/asio/signal_set.hpp>
#include <boost/asio/this_coro.hpp>
#include <cstdio>
#include <optional>
#include <random>

#include "core/error.h"

namespace kite::server {

bool constant_time_equal(std::string_view given, std::string_view expected) {
  unsigned char diff = given.size() == expected.size() ? 0 : 1;
  for (size_t i = 0; i < expected.size(); ++i) {
    const unsigned char g = i < given.size() ? static_cast<unsigned char>(given[i]) : 0;
    diff |= static_cast<unsigned char>(g ^ static_cast<unsigned char>(expected[i]));
  }
  return diff == 0;
}

namespace {

constexpr std::string_view kJson = "application/json";
const std::string kDone = "[DONE]";

int64_t unix_now() {
  return std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
}

std::string random_hex(size_t n) {
  thread_local std::mt19937_64 rng{std::random_device{}()};
  static const char* digits = "0123456789abcdef";
  std::string s(n, '0');
  for (auto& c : s) c = digits[rng() & 15];
  return s;
}

// Maps an engine-side kite::Error to the API's error (the engine's
// validation uses the source "request").
ApiError api_error_from(const Error& e) {
  std::string msg = e.what();
  if (msg.rfind("request: ", 0) == 0) msg = msg.substr(9);
  if (auto* q = dynamic_cast<const QueueFullError*>(&e))
    return ApiError(429, msg, "", "rate_limit_exceeded").with_retry_after(q->retry_after_s());
  if (e.field() == "id") return ApiError(503, msg);  // the engine is shutting down
  return ApiError(400, msg, e.field());
}

}  // namespace

struct Server::Impl {
  AsyncEngine& engine;
  ModelInfo model;
  ServerOptions options;
  ServerMetrics& metrics;
  net::io_context io;
  std::unique_ptr<HttpServer> http;
  std::vector<std::thread> threads;
  std::atomic<bool> draining{false};
  std::once_flag shutdown_once;
  int64_t kv_cache_tokens = 0;

  Impl(AsyncEngine& e, ModelInfo m, ServerOptions o, ServerMetrics& met)
      : engine(e), model(std::move(m)), options(std::move(o)), metrics(met) {
    const EngineConfig& c = engine.engine().config();
    kv_cache_tokens = engine.engine().num_blocks() * c.block_size;
    HttpOptions h = options.http;
    h.error_body = [](int status, std::string_view msg) {
      return std::pair<std::string, std::string>(std::string(kJson),
                                                 error_json(ApiError(status, std::string(msg))).dump());
    };
    http = std::make_unique<HttpServer>(
        io, h, [this](const HttpRequest& req, HttpResponder& res) { return handle(req, res); });
  }

  net::awaitable<void> send_json(HttpResponder& res, int status, const Json& body) {
    co_await res.send(status, kJson, body.dump(-1, ' ', false, Json::error_handler_t::replace));
  }

  net::awaitable<void> send_error(HttpResponder& res, const ApiError& e) {
    if (e.status() != 500) metrics.record_rejected(e.status());
    std::vector<std::pair<std::string, std::string>> headers;
    if (e.status() == 401) headers.emplace_back("WWW-Authenticate", "Bearer");
    if (e.retry_after_s() > 0) headers.emplace_back("Retry-After", std::to_string(e.retry_after_s()));
    co_await res.send(e.status(), kJson, error_json(e).dump(-1, ' ', false, Json::error_handler_t::replace), headers);
  }

  static Json parse_body(const HttpRequest& req, Endpoint endpoint) { return parse_request_body(req.body, endpoint); }

  void check_auth(const HttpRequest& req) const {
    if (options.api_key.empty()) return;
    std::string_view h = req.header("authorization");
    std::string_view prefix = "Bearer ";
    std::string_view given;
    if (h.size() >= prefix.size() && strncasecmp(h.data(), prefix.data(), prefix.size()) == 0)
      given = h.substr(prefix.size());
    if (!constant_time_equal(given, options.api_key))
      throw ApiError(401,
                     h.empty() ? "missing API key: send 'Authorization: Bearer <key>'" : "incorrect API key provided",
                     "", "invalid_api_key");
  }

  net::awaitable<void> handle(const HttpRequest& req, HttpResponder& res) {
    const auto t0 = std::chrono::steady_clock::now();
    int status = 200;
    std::optional<ApiError> failure;  // (co_await is not allowed inside a catch block)
    try {
      status = co_await route(req, res);
    } catch (const ApiError& e) {
      failure = e;
    } catch (const Error& e) {
      failure = api_error_from(e);
    } catch (const std::exception& e) {
      std::fprintf(stderr, "kite serve: internal error on %s %s: %s\n", req.method.c_str(), req.path.c_str(), e.what());
      failure = ApiError(500, "internal server error");
    }
    if (failure) {
      status = failure->status();
      if (!res.responded()) co_await send_error(res, *failure);
    }
    if (options.log_requests) {
      const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
      std::fprintf(stderr, "kite serve: %s %s %d %.1f ms\n", req.method.c_str(), req.path.c_str(), status, ms);
    }
  }

  // Returns the status sent.
  net::awaitable<int> route(const HttpRequest& req, HttpResponder& res) {
    const std::string& p = req.path;
    auto method = [&](const char* m) {
      if (req.method != m) throw ApiError(405, fmt::format("{} {} is not allowed; use {}", req.method, p, m));
    };
    if (p != "/health" && p != "/metrics") check_auth(req);  // (before 404: routes are not probed without the key)
    if (p == "/v1/completions" || p == "/v1/chat/completions") {
      method("POST");
      const bool chat = p == "/v1/chat/completions";
      co_return co_await generate(req, res, chat);
    }
    // The other routes answer at once. (GCC 12 mishandles string literals
    // inside co_await expressions, so the answer is built first.)
    std::string content_type(kJson), body;
    if (p == "/health") {
      method("GET");
      if (draining) throw ApiError(503, "the server is shutting down");
      content_type = "text/plain";
    } else if (p == "/version") {
      method("GET");
      body = Json{{"version", "kite 0.1.0"}}.dump();
    } else if (p == "/metrics") {
      method("GET");
      content_type = "text/plain; version=0.0.4; charset=utf-8";
      body = metrics.render(engine.stats(), kv_cache_tokens,
                            options.gpu_energy_joules ? options.gpu_energy_joules() : std::nullopt);
    } else if (p == "/v1/models") {
      method("GET");
      body = Json{{"object", "list"}, {"data", Json::array({model_card()})}}.dump();
    } else if (p.rfind("/v1/models/", 0) == 0) {
      method("GET");
      const std::string id = p.substr(11);
      if (id != model.served_name)
        throw ApiError(404,
                       fmt::format("The model '{}' does not exist; this server serves '{}'.", id, model.served_name),
                       "model", "model_not_found");
      body = model_card().dump();
    } else if (p == "/tokenize") {
      method("POST");
      body = tokenize(parse_body(req, Endpoint::Tokenize)).dump();
    } else if (p == "/detokenize") {
      method("POST");
      body = detokenize(parse_body(req, Endpoint::Detokenize)).dump(-1, ' ', false, Json::error_handler_t::replace);
    } else {
      throw ApiError(404, fmt::format("no route for {} {}", req.method, p), "", "not_found");
    }
    co_await res.send(200, content_type, std::move(body));
    co_return 200;
  }

  Json model_card() const {
    return Json{{"id", model.served_name},
                {"object", "model"},
                {"created", model.created},
                {"owned_by", "kite"},
                {"root", model.root},
                {"parent", nullptr},
                {"max_model_len", model.max_model_len}};
  }

  Json tokenize(const Json& b) const {
    if (!b.is_object()) throw ApiError(400, "the request body must be a JSON object");
    check_model_name(b, model);
    std::vector<int32_t> ids;
    auto flag = [&](const char* key, bool dflt) {
      auto it = b.find(key);
      if (it == b.end() || it->is_null()) return dflt;
      if (!it->is_boolean()) throw ApiError(400, fmt::format("'{}' must be true or false", key), key);
      return it->get<bool>();
    };
    if (b.contains("messages")) {
      std::string text = render_chat_prompt(b, model);
      ids = model.tokenizer->encode(text, flag("add_special_tokens", false));
    } else {
      auto it = b.find("prompt");
      if (it == b.end() || !it->is_string())
        throw ApiError(400, "'prompt' (a string) or 'messages' is required", "prompt");
      ids = model.tokenizer->encode(it->get<std::string>(), flag("add_special_tokens", true));
    }
    Json out = {{"count", ids.size()}, {"max_model_len", model.max_model_len}, {"tokens", ids}};
    if (flag("return_token_strs", false)) {
      Json strs = Json::array();
      for (int32_t id : ids) strs.push_back(model.tokenizer->id_to_piece(id));
      out["token_strs"] = strs;
    }
    return out;
  }

  Json detokenize(const Json& b) const {
    if (!b.is_object()) throw ApiError(400, "the request body must be a JSON object");
    check_model_name(b, model);
    auto it = b.find("tokens");
    if (it == b.end() || !it->is_array()) throw ApiError(400, "'tokens' (an array of token ids) is required", "tokens");
    std::vector<int32_t> ids;
    const int32_t vocab = model.tokenizer->vocab_size();
    for (const Json& t : *it) {
      const std::optional<int64_t> id = exact_int(t);
      if (!id) throw ApiError(400, "'tokens' must hold integers", "tokens");
      const int64_t v = *id;
      if (v < 0 || v >= vocab)
        throw ApiError(400, fmt::format("token id {} is outside the vocabulary [0, {})", v, vocab), "tokens");
      ids.push_back(int32_t(v));
    }
    return Json{{"prompt", model.tokenizer->decode(ids, false)}};
  }

  net::awaitable<int> generate(const HttpRequest& req, HttpResponder& res, bool chat) {
    if (draining) throw ApiError(503, "the server is shutting down");
    const Json body = parse_body(req, chat ? Endpoint::Chat : Endpoint::Completions);
    ParsedRequest pr = chat ? parse_chat_request(body, model) : parse_completion_request(body, model);
    ResponseBuilder rb(model, pr, (chat ? "chatcmpl-" : "cmpl-") + random_hex(32), unix_now());

    const int64_t seqs = int64_t(pr.prompts.size()) * pr.params.n;
    if (options.max_seqs_per_request > 0 && seqs > options.max_seqs_per_request)
      throw ApiError(400,
                     fmt::format("this request asks for {} sequences ({} prompts x n {}); this server allows at most "
                                 "{} per request (--max-seqs-per-request): split it into several requests",
                                 seqs, pr.prompts.size(), pr.params.n, options.max_seqs_per_request),
                     pr.params.n > 1 ? "n" : (chat ? "messages" : "prompt"));

    auto waker = std::make_shared<Waker>(co_await net::this_coro::executor);
    std::vector<Submission> subs;
    std::vector<std::string> ids;
    for (size_t i = 0; i < pr.prompts.size(); ++i) {
      ids.push_back(pr.prompts.size() == 1 ? rb.id() : fmt::format("{}-{}", rb.id(), i));
      subs.push_back({ids.back(), pr.prompts[i]});
    }
    std::vector<std::shared_ptr<RequestStream>> streams = engine.submit_group(std::move(subs), pr.params);
    for (auto& s : streams) s->set_notify([waker] { waker->wake(); });
    res.on_client_gone([waker] { waker->wake(); });

    bool writing = true;  // false once the client is gone
    if (pr.stream) {
      writing = co_await res.begin_events();
      if (writing && chat)
        for (const Json& c : rb.chat_role_chunks()) writing = writing && co_await res.send_event(c.dump());
    }
    std::vector<bool> done(streams.size(), false);
    size_t remaining = streams.size();
    bool aborted = false;
    std::string error;
    while (remaining > 0) {
      for (size_t i = 0; i < streams.size(); ++i) {
        RequestOutput out;
        while (!done[i] && streams[i]->try_next(out)) {
          if (!out.error.empty() && error.empty()) error = out.error;
          if (pr.stream) {
            if (writing && out.error.empty()) {
              for (const Json& c : rb.stream_chunks(i, out))
                writing = writing && co_await res.send_event(c.dump(-1, ' ', false, Json::error_handler_t::replace));
            } else {
              rb.note_output(i, out);
            }
          } else {
            rb.add(i, out);
          }
          if (out.finished) {
            done[i] = true;
            --remaining;
            metrics.record_finished(out.metrics, out.error.empty() ? rb.finish_of(i) : FinishReason::Abort);
          }
        }
      }
      if (remaining == 0) break;
      if ((!writing || res.client_gone() || !error.empty()) && !aborted) {
        // The client left (or a prompt failed): free the engine's blocks now.
        for (size_t i = 0; i < streams.size(); ++i)
          if (!done[i]) engine.abort(ids[i]);
        aborted = true;
        writing = false;
      }
      co_await waker->wait();
    }
    if (!error.empty()) {
      std::fprintf(stderr, "kite serve: request %s failed in the engine: %s\n", rb.id().c_str(), error.c_str());
      ApiError e(500, "the engine failed while generating; see the server log");
      if (!pr.stream) throw e;
      if (writing) {
        co_await res.send_event(error_json(e).dump());
        co_await res.send_event(kDone);
      }
      co_await res.end_events();
      co_return 500;
    }
    if (pr.stream) {
      if (writing && pr.include_usage) writing = co_await res.send_event(rb.usage_chunk().dump());
      if (writing) co_await res.send_event(kDone);
      co_await res.end_events();
    } else if (!res.client_gone()) {
      co_await send_json(res, 200, rb.response());
    }
    co_return 200;
  }
};

Server::Server(AsyncEngine& engine, ModelInfo model, ServerOptions options)
    : metrics_(std::make_unique<ServerMetrics>(model.served_name)) {
  impl_ = std::make_unique<Impl>(engine, std::move(model), std::move(options), *metrics_);
}

Server::~Server() { shutdown(std::chrono::milliseconds(0)); }

uint16_t Server::port() const { return impl_->http->port(); }

void Server::start() {
  impl_->http->start();
  for (int i = 0; i < std::max(1, impl_->options.io_threads); ++i)
    impl_->threads.emplace_back([this] { impl_->io.run(); });
}

void Server::shutdown(std::chrono::milliseconds drain) {
  Impl& m = *impl_;
  std::call_once(m.shutdown_once, [&] {
    m.draining = true;
    m.http->stop_accepting();
    using clock = std::chrono::steady_clock;
    auto wait_until = [&](clock::time_point deadline) {
      while (m.http->in_flight() > 0 && clock::now() < deadline)
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
    };
    if (!m.threads.empty()) {
      wait_until(clock::now() + drain);
      if (m.http->in_flight() > 0) {
        // Abort what is left: the engine ends every stream with "abort" and
        // the handlers finish their responses.
        m.engine.shutdown();
        wait_until(clock::now() + std::chrono::seconds(5));
      }
    }
    m.io.stop();
    for (auto& t : m.threads) t.join();
    m.threads.clear();
  });
}

void Server::run_until_signal() {
  std::mutex mu;
  std::condition_variable cv;
  int signals = 0;
  net::signal_set sigs(impl_->io, SIGINT, SIGTERM);
  std::function<void(const boost::system::error_code&, int)> on_signal = [&](const boost::system::error_code& ec, int) {
    if (ec) return;
    {
      std::lock_guard lock(mu);
      ++signals;
    }
    cv.notify_all();
    sigs.async_wait(on_signal);
  };
  sigs.async_wait(on_signal);
  start();
  std::unique_lock lock(mu);
  cv.wait(lock, [&] { return signals > 0; });
  lock.unlock();
  std::fprintf(stderr,
               "kite serve: shutting down; requests in flight get %.0f s to finish (signal again to cut short)\n",
               double(impl_->options.shutdown_timeout.count()) / 1000.0);
  // A second signal cuts the drain short.
  std::atomic<bool> finished{false};
  std::thread drainer([&] {
    shutdown(impl_->options.shutdown_timeout);
    {
      std::lock_guard l(mu);
      finished = true;
    }
    cv.notify_all();
  });
  lock.lock();
  cv.wait(lock, [&] { return signals > 1 || finished.load(); });
  const bool cut = signals > 1 && !finished;
  lock.unlock();
  if (cut) impl_->engine.shutdown();
  drainer.join();
}

}  // namespace kite::server
