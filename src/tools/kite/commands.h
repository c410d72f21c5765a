#pragma once
// The kite CLI's subcommands. Each registers its flags on the app and
// returns the function that runs it.
#include <CLI/CLI.hpp>
#include <functional>

#include "model/tensor_parallel.h"

namespace kite::cli {

using Run = std::function<int()>;

Run add_generate(CLI::App& app);
Run add_tokenize(CLI::App& app);
Run add_ppl(CLI::App& app);
Run add_quantize(CLI::App& app);
Run add_bench(CLI::App& app);
Run add_serve(CLI::App& app);
Run add_make_model(CLI::App& app);
// `kite bench throughput`, registered under the bench subcommand.
Run add_bench_throughput(CLI::App& bench);
// `kite bench serve`, registered under the bench subcommand; its Run
// returns -1 when another bench subcommand was chosen.
Run add_bench_serve(CLI::App& bench);
// --tensor-parallel-size (vLLM's spelling, also --tp) and the multi-node
// options --nnodes, --node-rank, --master-addr, --master-port.
void add_tensor_parallel_option(CLI::App& c, int& size, ClusterSpec& cluster);

}  // namespace kite::cli
