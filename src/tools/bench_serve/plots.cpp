#include "tools/bench_serve/plots.h"

#include <fmt/format.h>

#include <cmath>
#include <cstdlib>
#include <fstream>

namespace kite::bench {

std::vector<double> throughput_over_time(const std::vector<RequestResult>& results, double bucket_s) {
  std::vector<double> tokens;
  for (const RequestResult& r : results) {
    if (!r.success || r.ttft <= 0) continue;
    const double chunks = double(r.itl.size() + 1);
    const double per_chunk = r.output_tokens > 0 ? double(r.output_tokens) / chunks : 1.0;
    double t = r.start + r.ttft;
    for (size_t k = 0; k <= r.itl.size(); ++k) {
      if (k > 0) t += r.itl[k - 1];
      const size_t b = size_t(std::max(0.0, t) / bucket_s);
      if (tokens.size() <= b) tokens.resize(b + 1, 0.0);
      tokens[b] += per_chunk;
    }
  }
  for (double& x : tokens) x /= bucket_s;
  return tokens;
}

std::vector<std::string> write_plots(const std::vector<RequestResult>& results, const std::string& prefix,
                                     std::string& why) {
  if (std::system("command -v gnuplot >/dev/null 2>&1") != 0) {
    why = "gnuplot is not installed (apt-get install gnuplot-nox); no plots";
    return {};
  }
  std::vector<std::string> written;
  auto histogram = [&](const std::string& name, const std::string& label, auto value) {
    const std::string dat = prefix + "_" + name + ".dat", gp = prefix + "_" + name + ".gp",
                      png = prefix + "_" + name + ".png";
    std::ofstream d(dat);
    int rows = 0;
    for (const RequestResult& r : results) {
      const double v = value(r);
      if (r.success && v > 0) {
        d << v * 1e3 << "\n";
        ++rows;
      }
    }
    d.close();
    if (rows == 0) return;
    std::ofstream g(gp);
    g << "set terminal pngcairo size 900,500 noenhanced\nset output '" << png << "'\n"
      << "set title '" << label << " distribution (" << rows << " requests)'\n"
      << "set xlabel '" << label << " (ms)'\nset ylabel 'requests'\nset grid\n"
      << "stats '" << dat << "' nooutput\n"
      << "bw = (STATS_max - STATS_min) / 40.0\nif (bw <= 0) bw = 1\n"
      << "bin(x) = bw * floor(x / bw) + bw / 2.0\nset boxwidth bw\nset style fill solid 0.6\n"
      << "plot '" << dat << "' using (bin($1)):(1.0) smooth frequency with boxes notitle\n";
    g.close();
    if (std::system(fmt::format("gnuplot '{}' 2>/dev/null", gp).c_str()) == 0) written.push_back(png);
  };
  histogram("ttft", "TTFT", [](const RequestResult& r) { return r.ttft; });
  histogram("tpot", "TPOT", [](const RequestResult& r) {
    return r.output_tokens > 1 ? (r.latency - r.ttft) / double(r.output_tokens - 1) : 0.0;
  });
  const std::vector<double> tps = throughput_over_time(results, 1.0);
  if (!tps.empty()) {
    const std::string dat = prefix + "_throughput.dat", gp = prefix + "_throughput.gp",
                      png = prefix + "_throughput.png";
    std::ofstream d(dat);
    for (size_t i = 0; i < tps.size(); ++i) d << i << " " << tps[i] << "\n";
    d.close();
    std::ofstream g(gp);
    g << "set terminal pngcairo size 900,500 noenhanced\nset output '" << png << "'\n"
      << "set title 'Output tokens per second over the run'\nset xlabel 'time (s)'\nset ylabel 'tokens/s'\n"
      << "set grid\nplot '" << dat << "' using 1:2 with steps lw 2 notitle\n";
    g.close();
    if (std::system(fmt::format("gnuplot '{}' 2>/dev/null", gp).c_str()) == 0) written.push_back(png);
  }
  if (written.empty()) why = "gnuplot failed to draw the plots (see the .gp files next to the result)";
  return written;
}

}  // namespace kite::bench
