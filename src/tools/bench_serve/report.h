#pragma once
// `kite bench serve`'s results with vLLM's definitions and JSON keys
// (vllm bench serve --save-result), so scripts written for vLLM read them.
#include <cstdint>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "tokenizer/tokenizer.h"
#include "tools/bench_serve/client.h"

namespace kite::bench {

struct ReportOptions {
  std::vector<std::string> percentile_metrics = {"ttft", "tpot", "itl"};  // of ttft, tpot, itl, e2el
  std::vector<double> metric_percentiles = {99};
  std::map<std::string, double> goodput_ms;  // "ttft" / "tpot" / "e2el" -> SLO in ms
};

// "ttft,tpot" -> {"ttft", "tpot"}; "25,50,99" -> {25, 50, 99};
// "ttft:200 tpot:50" -> SLOs. kite::Error naming the flag on bad input.
std::vector<std::string> parse_percentile_metrics(const std::string& s);
std::vector<double> parse_metric_percentiles(const std::string& s);
std::map<std::string, double> parse_goodput(const std::vector<std::string>& items);

// numpy.percentile's default (linear interpolation); 0 for an empty list.
double percentile(std::vector<double> v, double p);

// The metrics object: duration, completed, failed, total_input_tokens,
// total_output_tokens, request_throughput, request_goodput (with SLOs),
// output_throughput, total_token_throughput, mean_/median_/std_/pNN_ of
// ttft/tpot/itl/e2el in ms, plus the per-request lists vLLM saves
// (input_lens, output_lens, ttfts, itls, errors, generated_texts).
// Output tokens: the server's usage when reported, else `tok` re-encodes
// the generated text (else the chunk count).
nlohmann::json compute_metrics(const std::vector<RequestResult>& results, double duration, const ReportOptions& opt,
                               const Tokenizer* tok);

// vLLM-style text summary.
std::string format_report(const nlohmann::json& m, const ReportOptions& opt);

}  // namespace kite::bench
