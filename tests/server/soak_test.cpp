// Soak: a few hundred concurrent clients on loopback for about half a
// minute, with random parameters, random disconnects (mid-stream and right
// after sending) and invalid requests mixed in. Afterwards nothing runs or
// waits, no KV block is used, the process RSS stays within a stated bound of
// its start, and every request got its expected kind of answer: valid ones
// 200 (or 429 with Retry-After from the queue limit), invalid ones their
// 4xx, never a 5xx.
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <boost/asio/connect.hpp>
#include <boost/asio/write.hpp>
#include <chrono>
#include <cstdlib>
#include <fstream>
#include <mutex>
#include <random>
#include <thread>

#include "http_client.h"
#include "test_instance.h"

namespace kite::server {
namespace {

using nlohmann::json;
using test::Client;
using test::Instance;

// Resident set size of this process, bytes.
size_t rss_bytes() {
  std::ifstream f("/proc/self/statm");
  size_t pages = 0, resident = 0;
  f >> pages >> resident;
  return resident * size_t(sysconf(_SC_PAGESIZE));
}

double metric(const std::string& text, const std::string& name) {
  const size_t at = text.find("\n" + name + "{");
  if (at == std::string::npos) return -1;
  const size_t sp = text.find("} ", at);
  return std::stod(text.substr(sp + 2));
}

struct Tally {
  std::mutex mu;
  std::map<std::string, int> counts;  // "kind status" -> number
  std::vector<std::string> failures;
  void add(const std::string& kind, int status) {
    std::lock_guard l(mu);
    ++counts[fmt::format("{} {}", kind, status)];
  }
  void fail(std::string what) {
    std::lock_guard l(mu);
    if (failures.size() < 20) failures.push_back(std::move(what));
  }
};

// A random valid request body (completions or chat) and how many choices it asks for.
json random_valid(std::mt19937& rng, bool& chat, size_t& choices) {
  chat = rng() % 3 == 0;
  json b = {{"max_tokens", int(1 + rng() % 24)}};
  const int n = 1 + int(rng() % 2);
  if (n > 1) b["n"] = n;
  if (rng() % 2) b["temperature"] = 0.7;
  if (rng() % 4 == 0) b["top_p"] = 0.9;
  if (rng() % 5 == 0) b["stop"] = json::array({"\n", " the"});
  if (rng() % 3 == 0) b["seed"] = int(rng() % 1000);
  if (rng() % 2) b["stream"] = true;
  if (chat) {
    b["messages"] = {{{"role", "user"}, {"content", fmt::format("Tell me about item {}", rng() % 100)}}};
    if (rng() % 4 == 0) {
      b["logprobs"] = true;
      b["top_logprobs"] = 2;
    }
    choices = size_t(n);
  } else {
    const int prompts = 1 + int(rng() % 3);
    json p = json::array();
    for (int i = 0; i < prompts; ++i) p.push_back(fmt::format("Story {} begins with", rng() % 1000));
    b["prompt"] = prompts == 1 ? p[0] : p;
    if (rng() % 4 == 0) b["logprobs"] = 1;
    if (!b.contains("stream") && rng() % 6 == 0) {  // lm-eval loglikelihood
      b["echo"] = true;
      b["max_tokens"] = 0;
      b["logprobs"] = 1;
    }
    choices = size_t(prompts * n);
  }
  return b;
}

// Invalid bodies and the status each must get.
std::pair<std::string, int> random_invalid(std::mt19937& rng) {
  switch (rng() % 6) {
    case 0: return {"{\"prompt\": \"x\", ", 400};                         // truncated JSON
    case 1: return {R"({"prompt": "x", "max_tokens": -1})", 400};         // out of range
    case 2: return {R"({"prompt": "x", "max_tokens": 1e400})", 400};      // outside int64
    case 3: return {R"({"prompt": "x", "model": "not-this-one"})", 404};  // unknown model
    case 4: return {R"({"prompt": ["a", "b", "c"], "n": 30})", 400};      // over --max-seqs-per-request
    default: return {R"({"prompt": "x", "max_tokens": 0})", 400};         // max_tokens 0 without echo
  }
}

// Connects, sends a request and closes at once (a client that gives up).
void send_and_vanish(uint16_t port, const json& body) {
  namespace net = boost::asio;
  net::io_context io;
  net::ip::tcp::socket sock(io);
  sock.connect({net::ip::make_address("127.0.0.1"), port});
  const std::string b = body.dump();
  const std::string req = fmt::format(
      "POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: "
      "{}\r\n\r\n{}",
      b.size(), b);
  net::write(sock, net::buffer(req));
  sock.close();
}

// A client told to retry later waits a little (Retry-After itself is in
// whole seconds, too coarse for a half-minute test).
void backoff(std::mt19937& rng) { std::this_thread::sleep_for(std::chrono::milliseconds(100 + rng() % 400)); }

TEST(ServerSoak, ConcurrentRandomTrafficLeavesNothingBehind) {
  EngineConfig ec;
  ec.num_blocks = 1024;
  ec.scheduler.max_num_seqs = 96;
  ServerOptions so;
  so.max_seqs_per_request = 16;
  so.io_threads = 2;
  Instance inst(so, ec, /*max_waiting=*/128);
  const uint16_t port = inst.port();
  {  // warm up (first-use allocations) before measuring the RSS baseline
    Client c(port);
    ASSERT_EQ(c.post("/v1/completions", {{"prompt", "warm up"}, {"max_tokens", 4}}).status, 200);
  }
  const size_t rss0 = rss_bytes();

  // KITE_SOAK_CLIENTS / KITE_SOAK_SECONDS override the defaults (256, 25).
  const int kClients = std::getenv("KITE_SOAK_CLIENTS") ? std::atoi(std::getenv("KITE_SOAK_CLIENTS")) : 256;
  const int seconds = std::getenv("KITE_SOAK_SECONDS") ? std::atoi(std::getenv("KITE_SOAK_SECONDS")) : 25;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(seconds);
  Tally tally;
  std::atomic<int> sent{0};
  std::vector<std::thread> clients;
  for (int t = 0; t < kClients; ++t) {
    clients.emplace_back([&, t] {
      std::mt19937 rng(1234u + uint32_t(t));
      while (std::chrono::steady_clock::now() < deadline) {
        ++sent;
        try {
          const unsigned roll = rng() % 10;
          if (roll == 0) {  // invalid
            auto [body, want] = random_invalid(rng);
            Client c(port);
            auto r = c.request("POST", "/v1/completions", body);
            tally.add("invalid", r.status);
            if (r.status != want)
              tally.fail(fmt::format("invalid {} -> {} (want {}): {}", body, r.status, want, r.body));
            continue;
          }
          bool chat = false;
          size_t choices = 0;
          json body = random_valid(rng, chat, choices);
          const std::string route = chat ? "/v1/chat/completions" : "/v1/completions";
          if (roll == 1 && !chat) {  // send and vanish
            send_and_vanish(port, body);
            tally.add("vanish", 0);
            continue;
          }
          Client c(port);
          if (body.value("stream", false)) {
            const bool cut = roll == 2;  // disconnect after the first events
            int status = 0;
            auto events = c.stream_events(route, body, &status, cut ? 2 : size_t(-1));
            tally.add(cut ? "stream-cut" : "stream", status);
            if (status == 200 && !cut && (events.empty() || events.back() != "[DONE]"))
              tally.fail(fmt::format("stream without [DONE]: {}", body.dump()));
            if (status != 200 && status != 429) tally.fail(fmt::format("stream {} -> {}", body.dump(), status));
            if (status == 429) backoff(rng);
          } else {
            auto r = c.post(route, body);
            tally.add("plain", r.status);
            if (r.status == 200) {
              json j = json::parse(r.body, nullptr, false);
              if (!j.is_object() || j["choices"].size() != choices)
                tally.fail(fmt::format("{} -> {} choices, want {}", body.dump(),
                                       j.is_object() ? j["choices"].size() : 0, choices));
            } else if (r.status == 429) {
              if (r.header("Retry-After").empty()) tally.fail("429 without Retry-After");
              backoff(rng);
            } else {
              tally.fail(fmt::format("{} -> {}: {}", body.dump(), r.status, r.body));
            }
          }
        } catch (const std::exception& e) {
          tally.fail(fmt::format("client {}: {}", t, e.what()));
        }
      }
    });
  }
  for (auto& c : clients) c.join();

  // Everything drains: nothing running or waiting, every KV block back.
  Client m(port);
  std::string text;
  for (int i = 0; i < 1000; ++i) {
    text = m.request("GET", "/metrics").body;
    if (metric(text, "vllm:num_requests_running") == 0 && metric(text, "vllm:num_requests_waiting") == 0 &&
        metric(text, "kite:kv_cache_blocks_used") == 0)
      break;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_EQ(metric(text, "vllm:num_requests_running"), 0) << text;
  EXPECT_EQ(metric(text, "vllm:num_requests_waiting"), 0);
  EXPECT_EQ(metric(text, "kite:kv_cache_blocks_used"), 0);
  const size_t rss1 = rss_bytes();
  // Bound: 160 MiB over the warmed-up start (allocator arenas of 256 client
  // threads and the io threads; the KV pool is allocated up front). A leak
  // of one request's state per request would pass this only if tiny, so the
  // request count is printed beside it.
  EXPECT_LT(rss1, rss0 + (size_t(160) << 20))
      << "RSS grew from " << (rss0 >> 20) << " MiB to " << (rss1 >> 20) << " MiB over " << sent.load() << " requests";
  for (const std::string& f : tally.failures) ADD_FAILURE() << f;
  int total = 0, ok = 0;
  for (auto& [k, n] : tally.counts) {
    total += n;
    if (k.ends_with(" 200")) ok += n;
  }
  std::string summary;
  for (auto& [k, n] : tally.counts) summary += fmt::format("{}: {}, ", k, n);
  std::printf("soak: %d requests (%s) RSS %zu -> %zu MiB\n", total, summary.c_str(), rss0 >> 20, rss1 >> 20);
  EXPECT_GT(ok, 200) << "too little valid traffic was served: " << summary;
  EXPECT_GT(tally.counts["invalid 400"] + tally.counts["invalid 404"], 10);
}

}  // namespace
}  // namespace kite::server
