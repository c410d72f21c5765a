#include "engine/async_engine.h"

#include <algorithm>
#include <chrono>
#include <cmath>

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
  std::vector<Submission> one;
  one.push_back({id, std::move(prompt)});
  return submit_group(std::move(one), params).front();
}

int AsyncEngine::retry_after_locked(int64_t excess) const {
  if (finish_history_.size() < 2) return 1;
  const auto& [t0, n0] = finish_history_.front();
  const auto& [t1, n1] = finish_history_.back();
  const double rate = t1 > t0 ? double(n1 - n0) / (t1 - t0) : 0.0;  // requests per second
  if (rate <= 0) return 1;
  return int(std::clamp(std::ceil(double(excess) / rate), 1.0, 60.0));
}

std::vector<std::shared_ptr<RequestStream>> AsyncEngine::submit_group(std::vector<Submission> prompts,
                                                                      const GenerationParams& params) {
  KITE_CHECK(!prompts.empty(), "submit_group without prompts");
  for (const Submission& s : prompts) engine_->validate(s.prompt, params);
  const int64_t seqs = int64_t(prompts.size()) * params.n;
  const int64_t seats = engine_->config().scheduler.max_num_seqs;
  std::vector<std::shared_ptr<RequestStream>> streams;
  {
    std::lock_guard lock(mu_);
    if (stop_) fail("request", "id", "the engine is shutting down");
    for (size_t i = 0; i < prompts.size(); ++i) {
      if (streams_.count(prompts[i].id))
        fail("request", "id", "a request with id '{}' is already running", prompts[i].id);
      for (size_t j = 0; j < i; ++j)
        KITE_CHECK(prompts[j].id != prompts[i].id, "duplicate id '{}' in one submission", prompts[i].id);
    }
    if (max_waiting_ > 0) {
      if (seqs > seats + max_waiting_)
        fail("request", "n",
             "this request needs {} sequences (prompts x n), more than can ever be queued: {} running "
             "(--max-num-seqs) + {} waiting (--max-queue); send fewer prompts or a smaller n",
             seqs, seats, max_waiting_);
      const int64_t free_seats = std::max<int64_t>(0, seats - stats_.num_running);
      const int64_t waiting = stats_.num_waiting + pending_seqs_ + in_transit_seqs_;
      const int64_t would_wait = std::max<int64_t>(0, waiting + seqs - free_seats);
      if (would_wait > max_waiting_) {
        const int64_t excess = would_wait - max_waiting_;
        throw QueueFullError(fmt::format("the waiting queue is full ({} sequences wait for a seat, the limit is {}); "
                                         "retry later",
                                         std::max<int64_t>(0, waiting - free_seats), max_waiting_),
                             retry_after_locked(excess));
      }
    }
    const uint64_t group = next_group_++;
    for (Submission& s : prompts) {
      auto stream = std::make_shared<RequestStream>(s.id);
      streams_.emplace(s.id, stream);
      streams.push_back(stream);
      adds_.push_back({s.id, std::move(s.prompt), params, group});
    }
    pending_seqs_ += seqs;
  }
  cv_.notify_all();
  return streams;
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
      in_transit_seqs_ = pending_seqs_;  // counted as waiting until stats_ covers them
      pending_seqs_ = 0;
      stopping = stop_;
    }
    std::vector<std::pair<std::shared_ptr<RequestStream>, RequestOutput>> failed;
    for (Pending& p : adds) {
      try {
        engine_->add_request(p.id, std::move(p.prompt), p.params, p.group);
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
      in_transit_seqs_ = 0;
      const double now = std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
      if (finish_history_.empty() || finish_history_.back().second != stats_.requests_finished)
        finish_history_.push_back({now, stats_.requests_finished});
      while (finish_history_.size() > 2 && now - finish_history_.front().first > 10.0) finish_history_.pop_front();
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
