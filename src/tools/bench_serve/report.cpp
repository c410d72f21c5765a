#include "tools/bench_serve/report.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <sstream>

#include "core/error.h"

namespace kite::bench {

using Json = nlohmann::json;

namespace {

std::vector<std::string> split(const std::string& s, char sep) {
  std::vector<std::string> out;
  std::string cur;
  std::istringstream in(s);
  while (std::getline(in, cur, sep))
    if (!cur.empty()) out.push_back(cur);
  return out;
}

double mean(const std::vector<double>& v) {
  return v.empty() ? 0.0 : std::accumulate(v.begin(), v.end(), 0.0) / double(v.size());
}

double stddev(const std::vector<double>& v) {  // population, as numpy.std
  if (v.empty()) return 0.0;
  const double m = mean(v);
  double s = 0;
  for (double x : v) s += (x - m) * (x - m);
  return std::sqrt(s / double(v.size()));
}

std::string pct_name(double p) {  // 99 -> "99", 99.9 -> "99.9"
  std::string s = fmt::format("{}", p);
  return s;
}

}  // namespace

std::vector<std::string> parse_percentile_metrics(const std::string& s) {
  std::vector<std::string> out = split(s, ',');
  for (const std::string& m : out)
    if (m != "ttft" && m != "tpot" && m != "itl" && m != "e2el")
      fail("--percentile-metrics", "percentile_metrics", "'{}' is not one of ttft, tpot, itl, e2el", m);
  if (out.empty()) fail("--percentile-metrics", "percentile_metrics", "empty; e.g. ttft,tpot,itl");
  return out;
}

std::vector<double> parse_metric_percentiles(const std::string& s) {
  std::vector<double> out;
  for (const std::string& p : split(s, ',')) {
    size_t used = 0;
    double v = 0;
    try {
      v = std::stod(p, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used != p.size() || !(v > 0 && v < 100))
      fail("--metric-percentiles", "metric_percentiles", "'{}' is not a percentile in (0, 100)", p);
    out.push_back(v);
  }
  if (out.empty()) fail("--metric-percentiles", "metric_percentiles", "empty; e.g. 50,90,99");
  return out;
}

std::map<std::string, double> parse_goodput(const std::vector<std::string>& items) {
  std::map<std::string, double> out;
  for (const std::string& item : items) {
    const size_t colon = item.find(':');
    const std::string name = item.substr(0, colon);
    if (colon == std::string::npos || (name != "ttft" && name != "tpot" && name != "e2el"))
      fail("--goodput", "goodput", "'{}' is not NAME:MS with NAME one of ttft, tpot, e2el", item);
    size_t used = 0;
    double v = 0;
    const std::string num = item.substr(colon + 1);
    try {
      v = std::stod(num, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used != num.size() || !(v > 0))
      fail("--goodput", "goodput", "'{}': the SLO must be a positive number of ms", item);
    out[name] = v;
  }
  return out;
}

double percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0.0;
  std::sort(v.begin(), v.end());
  const double rank = p / 100.0 * double(v.size() - 1);
  const size_t lo = size_t(std::floor(rank)), hi = std::min(v.size() - 1, lo + 1);
  return v[lo] + (v[hi] - v[lo]) * (rank - double(lo));
}

Json compute_metrics(const std::vector<RequestResult>& results, double duration, const ReportOptions& opt,
                     const Tokenizer* tok) {
  int64_t completed = 0, total_input = 0, total_output = 0, good = 0;
  std::vector<double> ttfts, tpots, itls, e2els;
  Json input_lens = Json::array(), output_lens = Json::array(), ttft_list = Json::array(), itl_list = Json::array(),
       errors = Json::array(), texts = Json::array();
  for (const RequestResult& r : results) {
    int64_t out = r.output_tokens;
    if (!r.usage_reported && tok && !r.text.empty()) out = int64_t(tok->encode(r.text, false).size());
    if (r.success) {
      ++completed;
      total_input += r.prompt_len;
      total_output += out;
      ttfts.push_back(r.ttft);
      e2els.push_back(r.latency);
      itls.insert(itls.end(), r.itl.begin(), r.itl.end());
      double tpot = 0;
      if (out > 1) {
        tpot = (r.latency - r.ttft) / double(out - 1);
        tpots.push_back(tpot);
      }
      bool ok = true;
      for (const auto& [name, slo] : opt.goodput_ms) {
        const double v = name == "ttft" ? r.ttft : name == "tpot" ? tpot : r.latency;
        ok = ok && v * 1e3 <= slo;
      }
      if (ok) ++good;
    }
    input_lens.push_back(r.prompt_len);
    output_lens.push_back(r.success ? out : 0);
    ttft_list.push_back(r.success ? r.ttft : 0.0);
    itl_list.push_back(r.itl);
    errors.push_back(r.error);
    texts.push_back(r.text);
  }
  const double d = duration > 0 ? duration : 1e-9;
  Json m = {{"duration", duration},
            {"completed", completed},
            {"failed", int64_t(results.size()) - completed},
            {"total_input_tokens", total_input},
            {"total_output_tokens", total_output},
            {"request_throughput", double(completed) / d},
            {"request_goodput", opt.goodput_ms.empty() ? Json(nullptr) : Json(double(good) / d)},
            {"output_throughput", double(total_output) / d},
            {"total_token_throughput", double(total_input + total_output) / d}};
  auto add = [&](const std::string& name, const std::vector<double>& v) {
    std::vector<double> ms(v.size());
    std::transform(v.begin(), v.end(), ms.begin(), [](double x) { return x * 1e3; });
    m["mean_" + name + "_ms"] = mean(ms);
    m["median_" + name + "_ms"] = percentile(ms, 50);
    m["std_" + name + "_ms"] = stddev(ms);
    for (double p : opt.metric_percentiles) m["p" + pct_name(p) + "_" + name + "_ms"] = percentile(ms, p);
  };
  add("ttft", ttfts);
  add("tpot", tpots);
  add("itl", itls);
  add("e2el", e2els);
  m["input_lens"] = input_lens;
  m["output_lens"] = output_lens;
  m["ttfts"] = ttft_list;
  m["itls"] = itl_list;
  m["errors"] = errors;
  m["generated_texts"] = texts;
  return m;
}

std::string format_report(const Json& m, const ReportOptions& opt) {
  std::string s;
  auto line = [&](const std::string& k, const std::string& v) { s += fmt::format("{:<40} {:>10}\n", k, v); };
  auto num = [](double v, int digits = 2) { return fmt::format("{:.{}f}", v, digits); };
  auto title = [&](const std::string& t) {
    const int pad = std::max<int>(0, 50 - int(t.size()) - 2);
    s += std::string(size_t(pad / 2), '-') + " " + t + " " + std::string(size_t(pad - pad / 2), '-') + "\n";
  };
  s += "============ Serving Benchmark Result ============\n";
  line("Successful requests:", std::to_string(m["completed"].get<int64_t>()));
  line("Failed requests:", std::to_string(m["failed"].get<int64_t>()));
  line("Benchmark duration (s):", num(m["duration"].get<double>()));
  line("Total input tokens:", std::to_string(m["total_input_tokens"].get<int64_t>()));
  line("Total generated tokens:", std::to_string(m["total_output_tokens"].get<int64_t>()));
  line("Request throughput (req/s):", num(m["request_throughput"].get<double>()));
  if (!m["request_goodput"].is_null()) line("Request goodput (req/s):", num(m["request_goodput"].get<double>()));
  line("Output token throughput (tok/s):", num(m["output_throughput"].get<double>()));
  line("Total token throughput (tok/s):", num(m["total_token_throughput"].get<double>()));
  if (m.contains("avg_power_w")) {
    line("Average GPU power (W):", num(m["avg_power_w"].get<double>(), 1));
    line("Output tokens per joule:", num(m["output_tokens_per_joule"].get<double>(), 3));
  }
  const std::map<std::string, std::pair<std::string, std::string>> names = {
      {"ttft", {"Time to First Token", "TTFT"}},
      {"tpot", {"Time per Output Token (excl. 1st token)", "TPOT"}},
      {"itl", {"Inter-token Latency", "ITL"}},
      {"e2el", {"End-to-end Latency", "E2EL"}}};
  for (const std::string& metric : opt.percentile_metrics) {
    const auto& [long_name, short_name] = names.at(metric);
    title(long_name);
    line("Mean " + short_name + " (ms):", num(m["mean_" + metric + "_ms"].get<double>()));
    line("Median " + short_name + " (ms):", num(m["median_" + metric + "_ms"].get<double>()));
    for (double p : opt.metric_percentiles)
      line("P" + pct_name(p) + " " + short_name + " (ms):",
           num(m["p" + pct_name(p) + "_" + metric + "_ms"].get<double>()));
  }
  s += "==================================================\n";
  return s;
}

}  // namespace kite::bench
