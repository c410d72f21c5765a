// The OpenAI-compatible server end to end over loopback, on the real
// reference model (../shared/models/kite-ref, CPU).
#include "server/api_server.h"

#include <fmt/format.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <future>
#include <regex>
#include <thread>

#include "core/error.h"
#include "engine/engine.h"
#include "http_client.h"
#include "model/model.h"
#include "test_instance.h"

namespace kite::server {
namespace {

using nlohmann::json;
using test::Client;
using test::Instance;
using test::kModelDir;
using test::Shared;
using test::shared;

// Sums the SSE chunks of one choice into its text.
std::string assemble(const std::vector<std::string>& events, bool chat, int index = 0) {
  std::string text;
  for (const std::string& e : events) {
    if (e == "[DONE]") continue;
    json j = json::parse(e);
    for (const json& c : j["choices"]) {
      if (c["index"] != index) continue;
      if (chat) {
        if (c["delta"].contains("content") && c["delta"]["content"].is_string()) text += c["delta"]["content"];
      } else {
        text += c["text"].get<std::string>();
      }
    }
  }
  return text;
}

double metric(const std::string& text, const std::string& name) {
  std::regex re("(^|\\n)" + std::regex_replace(name, std::regex(R"([\[\]\{\}\(\)\.\*\+\?\^\$\|\\])"), R"(\$&)") +
                R"(\{[^}]*\} ([0-9.eE+-]+))");
  std::smatch m;
  if (!std::regex_search(text, m, re)) return -1;
  return std::stod(m[2]);
}

void expect_error(const test::Reply& r, int status, const std::string& param = "") {
  EXPECT_EQ(r.status, status) << r.body;
  json j = json::parse(r.body, nullptr, false);
  ASSERT_TRUE(j.is_object() && j.contains("error")) << r.body;
  EXPECT_TRUE(j["error"]["message"].is_string());
  EXPECT_FALSE(j["error"]["message"].get<std::string>().empty());
  EXPECT_TRUE(j["error"]["type"].is_string());
  if (!param.empty()) {
    EXPECT_EQ(j["error"]["param"], param) << r.body;
  }
}

TEST(ApiServer, HealthModelsVersion) {
  Instance inst;
  Client c(inst.port());
  EXPECT_EQ(c.request("GET", "/health").status, 200);
  auto models = c.request("GET", "/v1/models");
  ASSERT_EQ(models.status, 200);
  json m = models.json();
  EXPECT_EQ(m["object"], "list");
  ASSERT_EQ(m["data"].size(), 1u);
  EXPECT_EQ(m["data"][0]["id"], "kite-ref");
  EXPECT_EQ(m["data"][0]["object"], "model");
  EXPECT_EQ(m["data"][0]["max_model_len"], 1024);
  EXPECT_EQ(c.request("GET", "/v1/models/kite-ref").json()["id"], "kite-ref");
  expect_error(c.request("GET", "/v1/models/other"), 404);
  expect_error(c.request("GET", "/nope"), 404);
  expect_error(c.request("GET", "/v1/completions"), 405);
  EXPECT_EQ(c.request("GET", "/version").status, 200);
}

TEST(ApiServer, GreedyCompletionsMatchTheReferenceModel) {
  Instance inst;
  Client c(inst.port());
  const json& ref = shared().reference["greedy"];
  for (size_t i = 0; i < 3 && i < ref.size(); ++i) {
    const int64_t n = int64_t(ref[i]["new_ids"].size());
    auto r = c.post("/v1/completions",
                    {{"model", "kite-ref"}, {"prompt", ref[i]["prompt"]}, {"max_tokens", n}, {"temperature", 0}});
    ASSERT_EQ(r.status, 200) << r.body;
    json j = r.json();
    EXPECT_EQ(j["object"], "text_completion");
    EXPECT_EQ(j["model"], "kite-ref");
    EXPECT_EQ(j["id"].get<std::string>().rfind("cmpl-", 0), 0u);
    ASSERT_EQ(j["choices"].size(), 1u);
    EXPECT_EQ(j["choices"][0]["text"], ref[i]["text"]) << "prompt " << i;
    EXPECT_EQ(j["choices"][0]["finish_reason"], "length");
    EXPECT_EQ(j["usage"]["prompt_tokens"], ref[i]["prompt_ids"].size());
    EXPECT_EQ(j["usage"]["completion_tokens"], n);
    EXPECT_EQ(j["usage"]["total_tokens"], int64_t(ref[i]["prompt_ids"].size()) + n);
    // The same prompt as token ids gives the same text.
    auto r2 = c.post("/v1/completions", {{"prompt", ref[i]["prompt_ids"]}, {"max_tokens", n}, {"temperature", 0}});
    ASSERT_EQ(r2.status, 200) << r2.body;
    EXPECT_EQ(r2.json()["choices"][0]["text"], ref[i]["text"]);
  }
}

TEST(ApiServer, StreamedTextEqualsTheNonStreamedText) {
  Instance inst;
  Client c(inst.port());
  for (bool chat : {false, true}) {
    json body = {{"max_tokens", 40}, {"temperature", 0}};
    if (chat)
      body["messages"] = json::array({{{"role", "user"}, {"content", "Tell me about the kernel."}}});
    else
      body["prompt"] = "The kernel scheduler";
    const std::string path = chat ? "/v1/chat/completions" : "/v1/completions";
    auto whole = c.post(path, body);
    ASSERT_EQ(whole.status, 200) << whole.body;
    json w = whole.json();
    std::string expected =
        chat ? w["choices"][0]["message"]["content"].get<std::string>() : w["choices"][0]["text"].get<std::string>();
    EXPECT_FALSE(expected.empty());
    body["stream"] = true;
    body["stream_options"] = {{"include_usage", true}};
    int status = 0;
    auto events = c.stream_events(path, body, &status);
    EXPECT_EQ(status, 200);
    ASSERT_GE(events.size(), 3u);
    EXPECT_EQ(events.back(), "[DONE]");
    EXPECT_EQ(assemble(events, chat), expected) << (chat ? "chat" : "completions");
    json usage = json::parse(events[events.size() - 2]);
    EXPECT_TRUE(usage["choices"].empty());
    EXPECT_EQ(usage["usage"]["completion_tokens"], w["usage"]["completion_tokens"]);
    EXPECT_EQ(usage["usage"]["prompt_tokens"], w["usage"]["prompt_tokens"]);
    // Exactly one chunk carries the finish reason.
    int finishes = 0;
    for (size_t i = 0; i + 1 < events.size(); ++i) {
      json j = json::parse(events[i]);
      EXPECT_EQ(j["object"], chat ? "chat.completion.chunk" : "text_completion");
      for (const json& ch : j["choices"])
        if (!ch["finish_reason"].is_null()) ++finishes;
    }
    EXPECT_EQ(finishes, 1);
    if (chat) {
      EXPECT_EQ(json::parse(events[0])["choices"][0]["delta"]["role"], "assistant");
    }
  }
}

TEST(ApiServer, SeveralChoicesStopStringsAndSeeds) {
  Instance inst;
  Client c(inst.port());
  json body = {{"prompt", "It is a truth universally acknowledged, that"},
               {"max_tokens", 24},
               {"temperature", 0.9},
               {"n", 2},
               {"seed", 1234}};
  auto a = c.post("/v1/completions", body).json();
  auto b = c.post("/v1/completions", body).json();
  ASSERT_EQ(a["choices"].size(), 2u);
  EXPECT_EQ(a["choices"][0]["index"], 0);
  EXPECT_EQ(a["choices"][1]["index"], 1);
  EXPECT_EQ(a["choices"][0]["text"], b["choices"][0]["text"]);  // seeded: reproducible
  EXPECT_EQ(a["choices"][1]["text"], b["choices"][1]["text"]);
  EXPECT_NE(a["choices"][0]["text"], a["choices"][1]["text"]);  // the samples differ
  EXPECT_EQ(a["usage"]["completion_tokens"], 48);

  // Several prompts: choices indexed prompt-major.
  auto multi =
      c.post("/v1/completions",
             {{"prompt", {"The kernel scheduler", "It is a truth"}}, {"max_tokens", 5}, {"temperature", 0}, {"n", 2}});
  ASSERT_EQ(multi.status, 200) << multi.body;
  EXPECT_EQ(multi.json()["choices"].size(), 4u);
  EXPECT_EQ(multi.json()["choices"][2]["index"], 2);

  // Stop strings cut the text before the match.
  const std::string full = shared().reference["greedy"][1]["text"];
  const std::string stop = full.substr(10, 4);
  auto s = c.post("/v1/completions",
                  {{"prompt", "The kernel scheduler"}, {"max_tokens", 48}, {"temperature", 0}, {"stop", stop}});
  ASSERT_EQ(s.status, 200) << s.body;
  json sj = s.json();
  EXPECT_EQ(sj["choices"][0]["text"], full.substr(0, full.find(stop)));
  EXPECT_EQ(sj["choices"][0]["finish_reason"], "stop");
  EXPECT_EQ(sj["choices"][0]["stop_reason"], stop);
}

TEST(ApiServer, LogprobsInBothShapes) {
  Instance inst;
  Client c(inst.port());
  auto r = c.post("/v1/completions",
                  {{"prompt", "The kernel scheduler"}, {"max_tokens", 6}, {"temperature", 0}, {"logprobs", 3}});
  ASSERT_EQ(r.status, 200) << r.body;
  json lp = r.json()["choices"][0]["logprobs"];
  ASSERT_EQ(lp["tokens"].size(), 6u);
  ASSERT_EQ(lp["token_logprobs"].size(), 6u);
  ASSERT_EQ(lp["top_logprobs"].size(), 6u);
  ASSERT_EQ(lp["text_offset"].size(), 6u);
  std::string joined;
  for (size_t i = 0; i < 6; ++i) {
    const double chosen = lp["token_logprobs"][i];
    EXPECT_LE(chosen, 0.0);
    EXPECT_GE(lp["top_logprobs"][i].size(), 1u);
    EXPECT_LE(lp["top_logprobs"][i].size(), 4u);
    double best = -1e9;
    for (auto& [k, v] : lp["top_logprobs"][i].items()) best = std::max(best, v.get<double>());
    EXPECT_NEAR(chosen, best, 1e-5);  // greedy picks the most likely token
    EXPECT_EQ(lp["text_offset"][i], int64_t(joined.size()));
    joined += lp["tokens"][i].get<std::string>();
  }
  // echo + logprobs: the prompt's tokens first, the first with no logprob.
  auto e = c.post(
      "/v1/completions",
      {{"prompt", "The kernel scheduler"}, {"max_tokens", 2}, {"temperature", 0}, {"logprobs", 1}, {"echo", true}});
  ASSERT_EQ(e.status, 200) << e.body;
  json ej = e.json()["choices"][0];
  EXPECT_EQ(ej["text"].get<std::string>().rfind("The kernel scheduler", 0), 0u);
  ASSERT_EQ(ej["logprobs"]["tokens"].size(), 4u + 2u);  // BOS + 3 prompt tokens + 2
  EXPECT_TRUE(ej["logprobs"]["token_logprobs"][0].is_null());
  EXPECT_TRUE(ej["logprobs"]["token_logprobs"][1].is_number());

  auto ch = c.post("/v1/chat/completions", {{"messages", {{{"role", "user"}, {"content", "Hello"}}}},
                                            {"max_tokens", 5},
                                            {"temperature", 0},
                                            {"logprobs", true},
                                            {"top_logprobs", 2}});
  ASSERT_EQ(ch.status, 200) << ch.body;
  json content = ch.json()["choices"][0]["logprobs"]["content"];
  ASSERT_EQ(content.size(), size_t(ch.json()["usage"]["completion_tokens"].get<int64_t>()));
  for (const json& t : content) {
    EXPECT_TRUE(t["token"].is_string());
    EXPECT_LE(t["logprob"].get<double>(), 0.0);
    EXPECT_EQ(t["top_logprobs"].size(), 2u);
    EXPECT_EQ(t["bytes"].size(), t["token"].get<std::string>().size());
    EXPECT_NEAR(t["logprob"].get<double>(), t["top_logprobs"][0]["logprob"].get<double>(), 1e-5);
  }
  expect_error(
      c.post("/v1/chat/completions", {{"messages", {{{"role", "user"}, {"content", "Hi"}}}}, {"top_logprobs", 2}}), 400,
      "top_logprobs");
}

// text[offset_i : offset_i+1] (code points) is tokens[i] for every token.
void expect_offsets_index_text(const json& choice) {
  SCOPED_TRACE(choice.dump());
  const std::string text = choice["text"];
  std::vector<size_t> starts;  // byte position of each code point, then the end
  for (size_t b = 0; b < text.size(); ++b)
    if ((static_cast<unsigned char>(text[b]) & 0xC0) != 0x80) starts.push_back(b);
  starts.push_back(text.size());
  const json& lp = choice["logprobs"];
  const size_t n = lp["tokens"].size();
  ASSERT_EQ(lp["text_offset"].size(), n);
  for (size_t i = 0; i < n; ++i) {
    const size_t from = lp["text_offset"][i],
                 to = i + 1 < n ? lp["text_offset"][i + 1].get<size_t>() : starts.size() - 1;
    ASSERT_LE(from, to);
    ASSERT_LT(to, starts.size());
    EXPECT_EQ(text.substr(starts[from], starts[to] - starts[from]), lp["tokens"][i].get<std::string>())
        << "token " << i;
  }
}

// The engine's prompt logprobs for one prompt, computed directly.
std::vector<TokenLogprobs> engine_prompt_logprobs(const std::vector<int32_t>& ids, int32_t k) {
  Shared& s = shared();
  EngineConfig ec;
  ec.num_blocks = 64;
  ec.max_model_len = 1024;
  ec.eos_ids = {2};
  Engine e(*s.model, s.tok.get(), ec);
  GenerationParams p;
  p.sampling.temperature = 0;
  p.max_tokens = 1;
  p.prompt_logprobs = k;
  e.add_request("r", ids, p);
  std::vector<TokenLogprobs> out;
  while (e.has_work())
    for (RequestOutput& o : e.step()) out.insert(out.end(), o.prompt_logprobs.begin(), o.prompt_logprobs.end());
  return out;
}

TEST(ApiServer, EchoWithZeroMaxTokensReturnsThePromptsLogprobs) {
  // lm-evaluation-harness's loglikelihood request, for each prompt form.
  Instance inst;
  Client c(inst.port());
  Shared& s = shared();
  const std::vector<std::string> texts = {"The kernel scheduler", "Hello world, said the café"};
  std::vector<std::vector<int32_t>> ids;
  for (const std::string& t : texts) ids.push_back(s.tok->encode(t, true));
  std::vector<std::vector<TokenLogprobs>> want;
  for (const auto& p : ids) want.push_back(engine_prompt_logprobs(p, 1));
  struct Form {
    json prompt;
    size_t count;
    bool from_ids;
  };
  const std::vector<Form> forms = {{texts[0], 1, false}, {texts, 2, false}, {ids[0], 1, true}, {ids, 2, true}};
  for (const Form& f : forms) {
    SCOPED_TRACE(f.prompt.dump());
    json body = {{"prompt", f.prompt}, {"echo", true}, {"logprobs", 1}, {"max_tokens", 0}, {"temperature", 0}};
    auto r = c.post("/v1/completions", body);
    ASSERT_EQ(r.status, 200) << r.body;
    json j = r.json();
    ASSERT_EQ(j["choices"].size(), f.count);
    EXPECT_EQ(j["usage"]["completion_tokens"], 0);
    for (size_t i = 0; i < f.count; ++i) {
      const json& ch = j["choices"][i];
      EXPECT_EQ(ch["finish_reason"], "length");
      EXPECT_EQ(ch["text"], f.from_ids ? s.tok->decode(ids[i], false) : texts[i]);
      const json& lp = ch["logprobs"];
      ASSERT_EQ(lp["tokens"].size(), ids[i].size());
      ASSERT_EQ(lp["token_logprobs"].size(), ids[i].size());
      ASSERT_EQ(lp["top_logprobs"].size(), ids[i].size());
      EXPECT_TRUE(lp["token_logprobs"][0].is_null());
      EXPECT_TRUE(lp["top_logprobs"][0].is_null());
      ASSERT_EQ(want[i].size(), ids[i].size() - 1);
      for (size_t t = 1; t < ids[i].size(); ++t) {
        EXPECT_FLOAT_EQ(lp["token_logprobs"][t].get<float>(), want[i][t - 1].logprob) << "token " << t;
        EXPECT_GE(lp["top_logprobs"][t].size(), 1u);
      }
      expect_offsets_index_text(ch);
    }
    // Streamed: one chunk per prompt with the echo, its logprobs and the finish.
    body["stream"] = true;
    int status = 0;
    auto events = c.stream_events("/v1/completions", body, &status);
    EXPECT_EQ(status, 200);
    ASSERT_EQ(events.size(), f.count + 1);
    EXPECT_EQ(events.back(), "[DONE]");
    for (size_t e = 0; e < f.count; ++e) {
      json ch = json::parse(events[e])["choices"][0];
      const size_t i = ch["index"];
      EXPECT_EQ(ch["finish_reason"], "length");
      EXPECT_EQ(ch["text"], j["choices"][i]["text"]);
      EXPECT_EQ(ch["logprobs"], j["choices"][i]["logprobs"]);
    }
  }
  // Without echo there is nothing to return: still refused.
  expect_error(c.post("/v1/completions", {{"prompt", "x"}, {"max_tokens", 0}, {"logprobs", 1}}), 400, "max_tokens");
  // Echo alone (no logprobs) returns the prompt.
  auto plain = c.post("/v1/completions", {{"prompt", texts[0]}, {"echo", true}, {"max_tokens", 0}});
  ASSERT_EQ(plain.status, 200) << plain.body;
  EXPECT_EQ(plain.json()["choices"][0]["text"], texts[0]);
  EXPECT_EQ(plain.json()["usage"]["completion_tokens"], 0);
}

TEST(ApiServer, TextOffsetsIndexTheReturnedText) {
  Instance inst;
  Client c(inst.port());
  for (bool echo : {false, true})
    for (bool stream : {false, true}) {
      SCOPED_TRACE(fmt::format("echo {} stream {}", echo, stream));
      json body = {
          {"prompt", "The café scheduler"}, {"max_tokens", 12}, {"temperature", 0}, {"logprobs", 2}, {"echo", echo}};
      if (!stream) {
        auto r = c.post("/v1/completions", body);
        ASSERT_EQ(r.status, 200) << r.body;
        expect_offsets_index_text(r.json()["choices"][0]);
        continue;
      }
      body["stream"] = true;
      // Streamed chunks joined: the same text and the same logprobs as one response.
      json joined = {
          {"text", ""},
          {"logprobs", {{"tokens", json::array()}, {"text_offset", json::array()}, {"token_logprobs", json::array()}}}};
      for (const std::string& e : c.stream_events("/v1/completions", body)) {
        if (e == "[DONE]") continue;
        json ch = json::parse(e)["choices"][0];
        joined["text"] = joined["text"].get<std::string>() + ch["text"].get<std::string>();
        for (const char* k : {"tokens", "text_offset", "token_logprobs"})
          for (const json& v : ch["logprobs"][k]) joined["logprobs"][k].push_back(v);
      }
      expect_offsets_index_text(joined);
    }
}

TEST(ApiServer, InvalidRequestsAreRejectedWithTheirParameter) {
  Instance inst;
  Client c(inst.port());
  auto bad = [&](json body, const std::string& param, int status = 400, const std::string& path = "/v1/completions") {
    SCOPED_TRACE(body.dump());
    expect_error(c.post(path, body), status, param);
  };
  bad({{"prompt", "x"}, {"temperature", "hot"}}, "temperature");
  bad({{"prompt", "x"}, {"temperature", -1}}, "temperature");
  bad({{"prompt", "x"}, {"top_p", 0}}, "top_p");
  bad({{"prompt", "x"}, {"n", 0}}, "n");
  bad({{"prompt", "x"}, {"n", 1.5}}, "n");
  bad({{"prompt", "x"}, {"max_tokens", 0}}, "max_tokens");
  bad({{"prompt", "x"}, {"max_tokens", 0}, {"echo", false}, {"logprobs", 1}}, "max_tokens");
  bad({{"messages", {{{"role", "user"}, {"content", "x"}}}}, {"max_tokens", 0}, {"echo", true}}, "max_tokens", 400,
      "/v1/chat/completions");
  bad({{"prompt", "x"}, {"max_tokens", 5000}}, "max_tokens");  // over the 1024-token context
  bad({{"prompt", "x"}, {"logprobs", 21}}, "logprobs");
  bad({{"prompt", "x"}, {"stop", 3}}, "stop");
  bad({{"prompt", "x"}, {"stop", {""}}}, "stop");
  bad({{"prompt", "x"}, {"presence_penalty", 3}}, "presence_penalty");
  bad({{"prompt", "x"}, {"logit_bias", {{"5", 10}}}}, "logit_bias");
  bad({{"prompt", {1, 2, 99999}}}, "prompt");
  bad({{"prompt", 5}}, "prompt");
  bad({{"max_tokens", 5}}, "prompt");
  bad({{"prompt", "x"}, {"model", "gpt-4"}}, "model", 404);
  bad({{"prompt", std::string(6000, 'a')}}, "prompt");  // longer than the context
  bad({{"messages", json::array()}}, "messages", 400, "/v1/chat/completions");
  bad({{"messages", {{{"role", "wizard"}, {"content", "x"}}}}}, "messages[0].role", 400, "/v1/chat/completions");
  bad({{"messages", {{{"role", "user"}, {"content", {{{"type", "image_url"}}}}}}}}, "messages[0].content", 400,
      "/v1/chat/completions");
  expect_error(c.request("POST", "/v1/completions", "{not json"), 400);
  // Unknown fields are ignored.
  auto ok = c.post("/v1/completions", {{"prompt", "x"}, {"max_tokens", 2}, {"frobnicate", true}, {"user", "u1"}});
  EXPECT_EQ(ok.status, 200) << ok.body;
  // Content given as text parts works.
  auto parts = c.post(
      "/v1/chat/completions",
      {{"messages", {{{"role", "user"}, {"content", {{{"type", "text"}, {"text", "Hi"}}}}}}}, {"max_tokens", 2}});
  EXPECT_EQ(parts.status, 200) << parts.body;
}

TEST(ApiServer, ApiKeyIsRequiredOnV1Routes) {
  ServerOptions so;
  so.api_key = "sk-kite-secret";
  Instance inst(so);
  Client c(inst.port());
  json body = {{"prompt", "x"}, {"max_tokens", 1}};
  auto none = c.post("/v1/completions", body);
  expect_error(none, 401);
  EXPECT_EQ(none.header("WWW-Authenticate"), "Bearer");
  expect_error(c.post("/v1/completions", body, {{"Authorization", "Bearer sk-kite-wrong"}}), 401);
  expect_error(c.post("/v1/completions", body, {{"Authorization", "Bearer sk-kite-secre"}}), 401);
  expect_error(c.request("GET", "/v1/models"), 401);
  EXPECT_EQ(c.post("/v1/completions", body, {{"Authorization", "Bearer sk-kite-secret"}}).status, 200);
  EXPECT_EQ(c.request("GET", "/health").status, 200);  // health and metrics stay open
  EXPECT_EQ(c.request("GET", "/metrics").status, 200);
  EXPECT_TRUE(constant_time_equal("abc", "abc"));
  EXPECT_FALSE(constant_time_equal("abd", "abc"));
  EXPECT_FALSE(constant_time_equal("abcd", "abc"));
  EXPECT_FALSE(constant_time_equal("", "abc"));
}

TEST(ApiServer, ApiKeyIsRequiredOnEveryRouteButHealthAndMetrics) {
  ServerOptions so;
  so.api_key = "sk-kite-secret";
  Instance inst(so);
  Client c(inst.port());
  const std::vector<std::pair<std::string, std::string>> key = {{"Authorization", "Bearer sk-kite-secret"}};
  const std::vector<std::pair<std::string, std::string>> wrong = {{"Authorization", "Bearer sk-kite-wrong"}};
  struct Route {
    std::string method, path;
    json body;
  };
  const std::vector<Route> routes = {
      {"POST", "/tokenize", {{"prompt", "The kernel scheduler"}}},
      {"POST", "/tokenize", {{"messages", {{{"role", "user"}, {"content", "Hi"}}}}}},
      {"POST", "/detokenize", {{"tokens", {1, 2, 3}}}},
      {"GET", "/version", nullptr},
      {"GET", "/v1/models", nullptr},
      {"GET", "/v1/models/kite-ref", nullptr},
      {"POST", "/v1/completions", {{"prompt", "x"}, {"max_tokens", 1}}},
      {"POST", "/v1/chat/completions", {{"messages", {{{"role", "user"}, {"content", "Hi"}}}}, {"max_tokens", 1}}},
  };
  for (const Route& r : routes) {
    SCOPED_TRACE(r.method + " " + r.path);
    const std::string body = r.body.is_null() ? "" : r.body.dump();
    auto none = c.request(r.method, r.path, body);
    expect_error(none, 401);
    EXPECT_EQ(none.header("WWW-Authenticate"), "Bearer");
    EXPECT_EQ(json::parse(none.body)["error"]["type"], "authentication_error");
    expect_error(c.request(r.method, r.path, body, wrong), 401);
    EXPECT_EQ(c.request(r.method, r.path, body, key).status, 200);
  }
  // Unknown routes do not tell a caller without the key what exists.
  expect_error(c.request("GET", "/nope"), 401);
  expect_error(c.request("GET", "/nope", "", key), 404);
  EXPECT_EQ(c.request("GET", "/health").status, 200);
  EXPECT_EQ(c.request("GET", "/metrics").status, 200);
}

TEST(ApiServer, IntegerParametersOutOfRangeOrNotIntegralAreQuotedAsSent) {
  Instance inst;
  Client c(inst.port());
  // The body is sent as raw text so that the numbers reach the server as written.
  auto check = [&](const std::string& path, const std::string& body, const std::string& param,
                   const std::string& quoted) {
    SCOPED_TRACE(path + " " + body);
    auto r = c.request("POST", path, body);
    expect_error(r, 400, param);
    json j = json::parse(r.body, nullptr, false);
    if (j.is_object() && j.contains("error") && j["error"]["message"].is_string()) {
      const std::string msg = j["error"]["message"];
      EXPECT_NE(msg.find(quoted), std::string::npos) << msg;
    }
  };
  const std::string cmpl = "/v1/completions", chat = "/v1/chat/completions";
  const std::string msgs = R"("messages": [{"role": "user", "content": "Hi"}])";
  for (const std::string v : {"1e400", "-1e400", "9223372036854775808", "-1e30", "1e30", "3.5", "99999999999999999999",
                              "18446744073709551616"}) {
    for (const char* p :
         {"max_tokens", "n", "best_of", "top_k", "seed", "logprobs", "min_tokens", "prompt_logprobs", "priority"})
      check(cmpl, fmt::format(R"({{"prompt": "x", "{}": {}}})", p, v), p, v);
    for (const char* p : {"max_tokens", "max_completion_tokens", "n", "top_k", "seed", "top_logprobs", "min_tokens"})
      check(chat, fmt::format(R"({{{}, "logprobs": true, "{}": {}}})", msgs, p, v), p, v);
    check(cmpl, fmt::format(R"({{"prompt": [1, 2, {}]}})", v), "prompt", v);
    check(cmpl, fmt::format(R"({{"prompt": [[1, 2], [3, {}]]}})", v), "prompt", v);
    check(cmpl, fmt::format(R"({{"prompt": "x", "stop_token_ids": [{}]}})", v), "stop_token_ids", v);
    check("/detokenize", fmt::format(R"({{"tokens": [1, {}]}})", v), "tokens", v);
  }
  // A float parameter out of a double's range is a 400 too, not a 500.
  check(cmpl, R"({"prompt": "x", "temperature": 1e400})", "temperature", "1e400");
  // Integral numbers written as floats still work.
  EXPECT_EQ(c.request("POST", cmpl, R"({"prompt": "x", "max_tokens": 2.0, "n": 1e0})").status, 200);
  // Token ids outside the vocabulary name their parameter, and stop_token_ids are not truncated.
  check(cmpl, R"({"prompt": [1, 2, 4294967297]})", "prompt", "4294967297");
  check(cmpl, R"({"prompt": "x", "stop_token_ids": [4294967297]})", "stop_token_ids", "4294967297");
}

TEST(ApiServer, UserAndSystemMessagesNeedContent) {
  Instance inst;
  Client c(inst.port());
  const std::string chat = "/v1/chat/completions";
  for (const char* role : {"user", "system", "developer", "assistant"}) {
    SCOPED_TRACE(role);
    json missing = {{"messages", {{{"role", "user"}, {"content", "Hi"}}, {{"role", role}}}}, {"max_tokens", 1}};
    expect_error(c.post(chat, missing), 400, "messages[1].content");
    json null_content = {{"messages", {{{"role", role}, {"content", nullptr}}, {{"role", "user"}, {"content", "Hi"}}}},
                         {"max_tokens", 1}};
    expect_error(c.post(chat, null_content), 400, "messages[0].content");
    expect_error(c.post("/tokenize", null_content), 400, "messages[0].content");
  }
  // An assistant message with tool calls is refused as before.
  json tool = {{"messages",
                {{{"role", "user"}, {"content", "Hi"}},
                 {{"role", "assistant"}, {"content", nullptr}, {"tool_calls", json::array({{{"id", "c1"}}})}}}}};
  expect_error(c.post(chat, tool), 400, "messages[1].content");
  // An empty string is content.
  EXPECT_EQ(c.post(chat, {{"messages", {{{"role", "user"}, {"content", ""}}}}, {"max_tokens", 1}}).status, 200);
}

TEST(ApiServer, ChatTemplateErrorsDoNotShowFilesystemPaths) {
  // A template loaded from the model's directory that fails while rendering.
  const std::string source = kModelDir + "/tokenizer_config.json";
  ChatTemplate failing("{{ raise_exception('no system messages here') }}", "<s>", "</s>", source);
  ChatTemplate broken("{% for m in messages %}{{ m.content }}{{ 1 / (messages | length - 1) }}{% endfor %}", "<s>",
                      "</s>", source);
  for (const ChatTemplate* t : {&failing, &broken}) {
    Instance inst({}, {}, 0, t);
    Client c(inst.port());
    json body = {{"messages", {{{"role", "user"}, {"content", "Hi"}}}}, {"max_tokens", 1}};
    for (const char* path : {"/v1/chat/completions", "/tokenize"}) {
      SCOPED_TRACE(path);
      auto r = c.post(path, body);
      expect_error(r, 400, "messages");
      EXPECT_EQ(r.body.find(kModelDir), std::string::npos) << r.body;
      EXPECT_EQ(r.body.find("tokenizer_config.json"), std::string::npos) << r.body;
      EXPECT_EQ(r.body.find(std::string(KITE_SHARED_DIR)), std::string::npos) << r.body;
    }
    // What the template raised still reaches the client.
    if (t == &failing) {
      EXPECT_NE(c.post("/v1/chat/completions", body).body.find("no system messages here"), std::string::npos);
    }
  }
}

TEST(ApiServer, BodyOverTheLimitGets413InOpenAIShape) {
  ServerOptions so;
  so.http.max_body_bytes = 4096;
  Instance inst(so);
  Client c(inst.port());
  expect_error(c.post("/v1/completions", {{"prompt", std::string(10000, 'a')}}), 413);
}

TEST(ApiServer, FullQueueGets429) {
  EngineConfig ec;
  ec.scheduler.max_num_seqs = 1;
  Instance inst({}, ec, /*max_waiting=*/1);
  json longreq = {{"prompt", "The kernel scheduler"}, {"max_tokens", 400}, {"ignore_eos", true}, {"stream", true}};
  // One runs, one waits; the third finds the queue full.
  Client a(inst.port()), b(inst.port()), c(inst.port());
  auto first = std::async(std::launch::async, [&] { return a.stream_events("/v1/completions", longreq, nullptr, 2); });
  first.wait();
  auto second = std::async(std::launch::async, [&] { return b.stream_events("/v1/completions", longreq, nullptr, 1); });
  for (int i = 0; i < 200 && inst.engine().stats().num_waiting < 1; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  ASSERT_EQ(inst.engine().stats().num_waiting, 1);
  auto full = c.post("/v1/completions", {{"prompt", "x"}, {"max_tokens", 1}});
  expect_error(full, 429);
  const std::string retry = full.header("Retry-After");
  ASSERT_FALSE(retry.empty()) << "a 429 must say when to retry";
  EXPECT_GE(std::stoi(retry), 1);
  EXPECT_LE(std::stoi(retry), 60);
  // Two prompts could never be queued beside 1 seat + 1 waiting: 400 naming n, not 429.
  expect_error(c.post("/v1/completions", {{"prompt", {"x", "y", "z"}}, {"max_tokens", 1}}), 400, "n");
  a.close();
  second.wait();
  b.close();
}

// --max-queue counts sequences waiting for a seat: a request listing more
// prompts than the queue limit is served on an idle server.
TEST(ApiServer, QueueLimitCountsWaitingSequencesNotRequestsInFlight) {
  EngineConfig ec;
  ec.scheduler.max_num_seqs = 32;
  Instance inst({}, ec, /*max_waiting=*/10);
  Client c(inst.port());
  json prompts = json::array();
  for (int i = 0; i < 11; ++i) prompts.push_back("Prompt number " + std::to_string(i));
  auto r = c.post("/v1/completions", {{"prompt", prompts}, {"max_tokens", 2}});
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(r.json()["choices"].size(), 11u);
  // A burst of 30 single requests at the idle server (32 seats): none refused.
  std::vector<std::future<int>> burst;
  for (int i = 0; i < 30; ++i)
    burst.push_back(std::async(std::launch::async, [&, i] {
      Client b(inst.port());
      return b.post("/v1/completions", {{"prompt", "Burst " + std::to_string(i)}, {"max_tokens", 2}}).status;
    }));
  for (auto& f : burst) EXPECT_EQ(f.get(), 200);
}

TEST(ApiServer, SequencesPerRequestAreCapped) {
  ServerOptions so;
  so.max_seqs_per_request = 8;
  Instance inst(so);
  Client c(inst.port());
  expect_error(c.post("/v1/completions", {{"prompt", {"a", "b", "c"}}, {"n", 3}, {"max_tokens", 1}}), 400, "n");
  json nine = json::array();
  for (int i = 0; i < 9; ++i) nine.push_back("p");
  expect_error(c.post("/v1/completions", {{"prompt", nine}, {"max_tokens", 1}}), 400, "prompt");
  expect_error(c.post("/v1/chat/completions",
                      {{"messages", {{{"role", "user"}, {"content", "hi"}}}}, {"n", 9}, {"max_tokens", 1}}),
               400, "n");
  EXPECT_EQ(c.post("/v1/completions", {{"prompt", {"a", "b"}}, {"n", 4}, {"max_tokens", 1}}).status, 200);
}

// One client's fan-out (prompts x n filling every seat for many steps) does
// not hold back another client's small request: it gets a seat at once.
TEST(ApiServer, FanOutRequestDoesNotStarveASmallOne) {
  EngineConfig ec;
  ec.num_blocks = 2048;
  ec.scheduler.max_num_seqs = 64;
  Instance inst({}, ec);
  json prompts = json::array();
  for (int i = 0; i < 32; ++i) prompts.push_back("Fan-out prompt " + std::to_string(i) + " about kernels");
  auto fan = std::async(std::launch::async, [&] {
    Client f(inst.port());
    return f.post("/v1/completions",
                  {{"prompt", prompts}, {"n", 4}, {"max_tokens", 96}, {"ignore_eos", true}, {"temperature", 0.8}});
  });
  for (int i = 0; i < 1000 && inst.engine().stats().num_running < 64; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  ASSERT_EQ(inst.engine().stats().num_running, 64) << "the fan-out should hold every seat";
  ASSERT_GT(inst.engine().stats().num_waiting, 0);
  Client c(inst.port());
  const auto t0 = std::chrono::steady_clock::now();
  auto events = c.stream_events("/v1/completions",
                                {{"prompt", "The kernel scheduler"}, {"max_tokens", 4}, {"stream", true}}, nullptr, 1);
  const double ttft = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  ASSERT_EQ(events.size(), 1u);
  EXPECT_LT(ttft, 2.0) << "the small request waited behind the fan-out";
  c.close();
  auto r = fan.get();
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(r.json()["choices"].size(), 128u);
  EXPECT_GT(inst.engine().stats().num_preemptions, 0);  // the fan-out gave a seat up
}

TEST(ApiServer, DisconnectAbortsTheRequestAndFreesItsBlocks) {
  Instance inst;
  {
    Client c(inst.port());
    auto events = c.stream_events(
        "/v1/completions",
        {{"prompt", "The kernel scheduler"}, {"max_tokens", 900}, {"ignore_eos", true}, {"stream", true}}, nullptr, 3);
    ASSERT_EQ(events.size(), 3u);
    EXPECT_GT(inst.engine().stats().kv_blocks_used, 0);
  }  // the client goes away mid-stream
  Client m(inst.port());
  std::string text;
  for (int i = 0; i < 500; ++i) {
    text = m.request("GET", "/metrics").body;
    if (metric(text, "kite:kv_cache_blocks_used") == 0 && metric(text, "vllm:num_requests_running") == 0) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_EQ(metric(text, "kite:kv_cache_blocks_used"), 0) << text;
  EXPECT_EQ(metric(text, "vllm:num_requests_running"), 0);
  EXPECT_LT(metric(text, "vllm:generation_tokens_total"), 900);
  for (int i = 0; i < 200 && text.find("finished_reason=\"abort\"} 1") == std::string::npos; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
    text = m.request("GET", "/metrics").body;
  }
  EXPECT_NE(text.find("finished_reason=\"abort\"} 1"), std::string::npos) << text;
}

TEST(ApiServer, MetricsCountRequestsTokensAndLatencies) {
  Instance inst;
  Client c(inst.port());
  for (int i = 0; i < 3; ++i)
    ASSERT_EQ(c.post("/v1/completions", {{"prompt", "The kernel scheduler"}, {"max_tokens", 5}}).status, 200);
  auto r = c.request("GET", "/metrics");
  ASSERT_EQ(r.status, 200);
  EXPECT_NE(r.content_type.find("text/plain"), std::string::npos);
  const std::string& t = r.body;
  EXPECT_EQ(metric(t, "vllm:generation_tokens_total"), 15);
  EXPECT_EQ(metric(t, "vllm:prompt_tokens_total"), 12);
  EXPECT_EQ(metric(t, "vllm:time_to_first_token_seconds_count"), 3);
  EXPECT_EQ(metric(t, "vllm:e2e_request_latency_seconds_count"), 3);
  EXPECT_EQ(metric(t, "vllm:inter_token_latency_seconds_count"), 12);
  EXPECT_EQ(metric(t, "vllm:num_requests_waiting"), 0);
  EXPECT_GE(metric(t, "vllm:prefix_cache_hits_total"), 0);
  EXPECT_NE(t.find("vllm:request_success_total{model_name=\"kite-ref\",finished_reason=\"length\"} 3"),
            std::string::npos);
  EXPECT_NE(t.find("# TYPE vllm:time_to_first_token_seconds histogram"), std::string::npos);
}

TEST(ApiServer, GpuEnergyIsExportedOnlyWhenTheServerHasACounter) {
  {
    Instance inst;  // the CPU: no counter, no series (never a made-up 0)
    Client c(inst.port());
    EXPECT_EQ(c.request("GET", "/metrics").body.find("kite:gpu_energy_joules_total"), std::string::npos);
  }
  ServerOptions so;
  double joules = 1000;
  so.gpu_energy_joules = [&joules]() -> std::optional<double> { return joules += 250; };
  Instance inst(so);
  Client c(inst.port());
  const std::string text = c.request("GET", "/metrics").body;
  EXPECT_NE(text.find("# TYPE kite:gpu_energy_joules_total counter"), std::string::npos) << text;
  EXPECT_EQ(metric(text, "kite:gpu_energy_joules_total"), 1250);
}

TEST(ApiServer, TokenizeAndDetokenize) {
  Instance inst;
  Client c(inst.port());
  auto r = c.post("/tokenize", {{"prompt", "The kernel scheduler"}});
  ASSERT_EQ(r.status, 200) << r.body;
  json j = r.json();
  EXPECT_EQ(j["tokens"], json(shared().reference["greedy"][1]["prompt_ids"]));
  EXPECT_EQ(j["count"], 4);
  EXPECT_EQ(j["max_model_len"], 1024);
  auto d = c.post("/detokenize", {{"tokens", j["tokens"]}});
  ASSERT_EQ(d.status, 200);
  EXPECT_NE(d.json()["prompt"].get<std::string>().find("The kernel scheduler"), std::string::npos);
  auto chat = c.post("/tokenize", {{"messages", {{{"role", "user"}, {"content", "Hi"}}}}});
  ASSERT_EQ(chat.status, 200) << chat.body;
  const std::string rendered = shared().tmpl->render({{"user", "Hi"}}, true);
  EXPECT_EQ(chat.json()["tokens"], json(shared().tok->encode(rendered, false)));
  expect_error(c.post("/tokenize", {{"prompt", 3}}), 400, "prompt");
  expect_error(c.post("/detokenize", {{"tokens", {-1}}}), 400, "tokens");
}

TEST(ApiServer, ShutdownLetsRequestsInFlightFinish) {
  Instance inst;
  Client c(inst.port());
  auto pending = std::async(std::launch::async, [&] {
    return c.post("/v1/completions", {{"prompt", "The kernel scheduler"}, {"max_tokens", 200}, {"ignore_eos", true}});
  });
  for (int i = 0; i < 500 && inst.engine().stats().num_running == 0; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  inst.server().shutdown(std::chrono::seconds(60));
  auto r = pending.get();
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(r.json()["usage"]["completion_tokens"], 200);
  EXPECT_EQ(r.json()["choices"][0]["finish_reason"], "length");
  // No longer accepting.
  EXPECT_THROW(Client(inst.port()).request("GET", "/health"), std::exception);
}

TEST(ApiServer, ShutdownPastTheDeadlineAbortsStreams) {
  Instance inst;
  Client c(inst.port());
  auto pending = std::async(std::launch::async, [&] {
    return c.stream_events(
        "/v1/completions",
        {{"prompt", "The kernel scheduler"}, {"max_tokens", 1000}, {"ignore_eos", true}, {"stream", true}});
  });
  for (int i = 0; i < 500 && inst.engine().stats().num_running == 0; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  inst.server().shutdown(std::chrono::milliseconds(50));
  auto events = pending.get();
  ASSERT_GE(events.size(), 2u);
  EXPECT_EQ(events.back(), "[DONE]");
  json last = json::parse(events[events.size() - 2]);
  EXPECT_EQ(last["choices"][0]["finish_reason"], "abort");
}

}  // namespace
}  // namespace kite::server
