#include "engine/async_engine.h"

#include "core/error.h"

namespace kite {

bool RequestStream::next(RequestOutput& out) {
  std::unique_lock lock(mu_);
  cv_.wait(lock, [&] { return !queue_.empty() || ended_; });
  if (queue_.empty()) return false;
  out = std::move(queue_.front());
  queue_.pop_front();
  return true;
}

bool RequestStream::try_next(RequestOutput& out) {
  std::lock_guard lock(mu_);
  if (queue_.empty()) return false;
  out = std::move(queue_.front());
  queue_.pop_front();
  return true;
}

void RequestStream::set_notify(std::function<void()> fn) {
  std::lock_guard lock(mu_);
  notify_ = std::move(fn);
}

void RequestStream::push(RequestOutput out) {
  std::function<void()> notify;
  {
    std::lock_guard lock(mu_);
    if (ended_) return;
    ended_ = out.finished;
    queue_.push_back(std::move(out));
    notify = notify_;
  }
  cv_.notify_all();
  if (notify) notify();
}

AsyncEngine::AsyncEngine(std::unique_ptr<Engine> engine) : engine_(std::move(engine)) {
  stats_ = engine_->stats();
  thread_ = std::thread([this] { loop(); });
}

AsyncEngine::~AsyncEngine() { shutdown(); }

std::shared_ptr<RequestStream> AsyncEngine::submit(const std::string& id, std::vector<int32_t> prompt,
                                                   const GenerationParams& params) {
  engine_->validate(prompt, params);
  auto stream = std::make_shared<RequestStream>(id);
  {
    std::lock_guard lock(mu_);
    if (stop_) fail("request", "id", "the engine is shutting down");
    if (streams_.count(id)) fail("request", "id", "a request with id '{}' is already running", id);
    if (max_waiting_ > 0 && stats_.num_waiting + int64_t(adds_.size()) + in_transit_ >= max_waiting_)
      fail("request", "queue", "the waiting queue is full ({} requests); retry later", max_waiting_);
    streams_.emplace(id, stream);
    adds_.push_back({id, std::move(prompt), params});
  }
  cv_.notify_all();
  return stream;
}

void AsyncEngine::abort(const std::string& id) {
  {
    std::lock_guard lock(mu_);
    aborts_.push_back(id);
  }
  cv_.notify_all();
}

void AsyncEngine::shutdown() {
  {
    std::lock_guard lock(mu_);
    if (stop_ && !thread_.joinable()) return;
    stop_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

void AsyncEngine::wait_idle() {
  std::unique_lock lock(mu_);
  idle_cv_.wait(lock, [&] { return streams_.empty(); });
}

EngineStats AsyncEngine::stats() const {
  std::lock_guard lock(mu_);
  return stats_;
}

void AsyncEngine::loop() {
  for (;;) {
    std::vector<Pending> adds;
    std::vector<std::string> aborts;
    bool stopping;
    {
      std::unique_lock lock(mu_);
      cv_.wait(lock, [&] { return stop_ || !adds_.empty() || !aborts_.empty() || engine_->has_work(); });
      adds.swap(adds_);
      aborts.swap(aborts_);
      in_transit_ = int64_t(adds.size());  // counted as waiting until stats_ covers them
      stopping = stop_;
    }
    std::vector<std::pair<std::shared_ptr<RequestStream>, RequestOutput>> failed;
    for (Pending& p : adds) {
      try {
        engine_->add_request(p.id, std::move(p.prompt), p.params);
      } catch (const std::exception& e) {
        RequestOutput o;
        o.id = p.id;
        o.finished = true;
        o.error = e.what();
        std::lock_guard lock(mu_);
        if (auto it = streams_.find(p.id); it != streams_.end()) {
          failed.push_back({it->second, std::move(o)});
          streams_.erase(it);
        }
      }
    }
    for (auto& [stream, o] : failed) stream->push(std::move(o));
    for (const std::string& id : aborts) engine_->abort(id);
    if (stopping) {
      std::vector<std::string> live;
      {
        std::lock_guard lock(mu_);
        for (auto& [id, s] : streams_) live.push_back(id);
      }
      for (const std::string& id : live) engine_->abort(id);
    }

    std::vector<RequestOutput> outputs;
    std::string error;
    try {
      outputs = engine_->step();
    } catch (const std::exception& e) {
      error = e.what();  // a failed step fails every request in flight
    }
    std::vector<std::pair<std::shared_ptr<RequestStream>, RequestOutput>> ready;
    {
      std::lock_guard lock(mu_);
      for (RequestOutput& o : outputs) {
        auto it = streams_.find(o.id);
        if (it == streams_.end()) continue;
        const bool final = o.finished;
        ready.push_back({it->second, std::move(o)});
        if (final) streams_.erase(it);
      }
      if (!error.empty()) {
        for (auto& [id, s] : streams_) {
          engine_->abort(id);
          RequestOutput o;
          o.id = id;
          o.finished = true;
          o.error = error;
          ready.push_back({s, std::move(o)});
        }
        streams_.clear();
      }
      stats_ = engine_->stats();
      in_transit_ = 0;
    }
    for (auto& [stream, o] : ready) stream->push(std::move(o));
    if (!error.empty()) {
      try {
        engine_->step();  // reports (and drops) the aborted requests
      } catch (const std::exception&) {
      }
    }
    {
      std::lock_guard lock(mu_);
      if (streams_.empty()) idle_cv_.notify_all();
      if (stopping && streams_.empty() && !engine_->has_work()) return;
    }
  }
}

}  // namespace kite
