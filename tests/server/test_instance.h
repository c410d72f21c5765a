#pragma once
// One engine + OpenAI server on the real reference model
// (../shared/models/kite-ref, CPU), on an ephemeral loopback port; for the
// server tests.
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>

#include "chat/chat_template.h"
#include "engine/async_engine.h"
#include "engine/engine.h"
#include "model/model.h"
#include "server/api_server.h"
#include "tokenizer/tokenizer.h"

namespace kite::server::test {

using nlohmann::json;

inline const std::string kModelDir = std::string(KITE_SHARED_DIR) + "/models/kite-ref";

struct Shared {
  std::unique_ptr<Model> model;
  std::unique_ptr<Tokenizer> tok;
  std::optional<ChatTemplate> tmpl;
  json reference;
};

inline Shared& shared() {
  static Shared s = [] {
    Shared r;
    r.model = load_model(kModelDir);
    r.tok = Tokenizer::load(kModelDir);
    r.tmpl = load_chat_template(kModelDir);
    std::ifstream f(kModelDir + "/reference.json");
    r.reference = json::parse(f);
    return r;
  }();
  return s;
}

// One engine + server per test, on an ephemeral port.
class Instance {
 public:
  explicit Instance(ServerOptions so = {}, EngineConfig ec = {}, int64_t max_waiting = 0,
                    const ChatTemplate* chat_template = nullptr) {
    Shared& s = shared();
    if (ec.num_blocks == 0) ec.num_blocks = 512;
    ec.max_model_len = ec.max_model_len ? ec.max_model_len : 1024;
    ec.eos_ids = {2};
    engine_ = std::make_unique<AsyncEngine>(std::make_unique<Engine>(*s.model, s.tok.get(), ec));
    engine_->set_max_waiting(max_waiting);
    ModelInfo info;
    info.served_name = "kite-ref";
    info.root = kModelDir;
    info.max_model_len = engine_->engine().max_model_len();
    info.tokenizer = s.tok.get();
    info.chat_template = chat_template ? chat_template : s.tmpl ? &*s.tmpl : nullptr;
    so.http.host = "127.0.0.1";
    so.http.port = 0;
    server_ = std::make_unique<Server>(*engine_, info, so);
    server_->start();
  }
  ~Instance() {
    server_->shutdown(std::chrono::milliseconds(0));
    engine_->shutdown();
  }
  uint16_t port() const { return server_->port(); }
  Server& server() { return *server_; }
  AsyncEngine& engine() { return *engine_; }

 private:
  std::unique_ptr<AsyncEngine> engine_;
  std::unique_ptr<Server> server_;
};

}  // namespace kite::server::test
