#pragma once
// The tiny HF fixtures of tests/fixtures/models (one directory each), sorted.
#include <algorithm>
#include <filesystem>
#include <string>
#include <vector>

namespace kite::test {

inline const std::string kModelFixtures = std::string(KITE_FIXTURES_DIR) + "/models";

inline std::vector<std::string> model_fixture_names() {
  std::vector<std::string> names;
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator(kModelFixtures, ec))
    if (e.is_directory()) names.push_back(e.path().filename().string());
  std::sort(names.begin(), names.end());
  return names;
}

}  // namespace kite::test
