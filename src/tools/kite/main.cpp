// kite: the command-line entry point. User errors print one line on stderr
// and exit with status 2.
#include <cstdio>
#include <map>

#include "core/error.h"
#include "tools/kite/commands.h"

int main(int argc, char** argv) {
  CLI::App app{"kite: LLM inference and serving with quantization built in"};
  app.require_subcommand(1);
  std::map<CLI::App*, kite::cli::Run> runs;
  auto add = [&](kite::cli::Run (*f)(CLI::App&)) {
    kite::cli::Run r = f(app);
    auto after = app.get_subcommands({});
    runs[after.back()] = std::move(r);
  };
  add(kite::cli::add_generate);
  add(kite::cli::add_tokenize);
  add(kite::cli::add_ppl);
  add(kite::cli::add_quantize);
  add(kite::cli::add_bench);
  add(kite::cli::add_serve);
  add(kite::cli::add_make_model);
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    app.exit(e);
    return 2;
  }
  try {
    for (CLI::App* sub : app.get_subcommands())
      for (auto& [cmd, run] : runs)
        if (cmd == sub || sub->get_parent() == cmd) return run();
    return 2;
  } catch (const kite::Error& e) {
    std::fflush(stdout);
    std::fprintf(stderr, "kite: error: %s\n", e.what());
    return 2;
  } catch (const std::bad_alloc&) {
    std::fprintf(stderr, "kite: error: out of memory\n");
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "kite: internal error: %s\n", e.what());
    return 3;
  }
}
