// kite tokenize: UTF-8 text on stdin -> token ids on stdout.
#include <cstdio>
#include <iostream>
#include <iterator>

#include "tools/kite/commands.h"
#include "tools/kite/model_files.h"

namespace kite::cli {

Run add_tokenize(CLI::App& app) {
  struct Args {
    std::string model;
    bool no_bos = false;
  };
  auto a = std::make_shared<Args>();
  CLI::App* c =
      app.add_subcommand("tokenize", "Read UTF-8 text on stdin and print its token ids, space-separated, on one line");
  c->add_option("--model,-m", a->model,
                "A model directory, tokenizer.json, tokenizer.model (SentencePiece) or .gguf file")
      ->required();
  c->add_flag("--no-bos", a->no_bos, "Do not add the BOS (or other special) tokens the tokenizer adds by default");
  return [a] {
    auto tok = load_tokenizer_for(a->model);
    std::string text((std::istreambuf_iterator<char>(std::cin)), std::istreambuf_iterator<char>());
    auto ids = tok->encode(text, !a->no_bos);
    std::string line;
    for (size_t i = 0; i < ids.size(); ++i) line += (i ? " " : "") + std::to_string(ids[i]);
    std::printf("%s\n", line.c_str());
    return 0;
  };
}

}  // namespace kite::cli
