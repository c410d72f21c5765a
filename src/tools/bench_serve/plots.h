#pragma once
// PNG plots of a `kite bench serve` run, drawn by gnuplot (Debian's
// gnuplot-nox) when it is on PATH: the TTFT and TPOT distributions and the
// output-token throughput over time.
#include <string>
#include <vector>

#include "tools/bench_serve/client.h"

namespace kite::bench {

// Writes <prefix>_ttft.png, <prefix>_tpot.png and <prefix>_throughput.png
// (with their .dat and .gp inputs). Returns the PNG paths written; empty,
// with `why` set, when gnuplot is missing or fails.
std::vector<std::string> write_plots(const std::vector<RequestResult>& results, const std::string& prefix,
                                     std::string& why);

// The output tokens finished in each `bucket_s`-second bucket of the run,
// as tokens per second (chunk times from each request's TTFT and ITLs; a
// request's tokens are spread over its chunks).
std::vector<double> throughput_over_time(const std::vector<RequestResult>& results, double bucket_s);

}  // namespace kite::bench
