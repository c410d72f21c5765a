// IncrementalDetokenizer: the decode() state machine run one id at a time.
// Byte-level text is held back only while it ends in an incomplete UTF-8
// sequence; SentencePiece byte-fallback runs are held until the run ends,
// because HF turns a whole invalid run into one U+FFFD per byte.
#include <algorithm>

#include "core/error.h"
#include "tokenizer/tokenizer_impl.h"

namespace kite {

IncrementalDetokenizer::IncrementalDetokenizer(const Tokenizer& tok, bool skip_special)
    : tok_(tok), rules_(tok.decode_rules()), skip_special_(skip_special) {
  if (rules_) strip_left_ = rules_->strip_leading;
}

std::string IncrementalDetokenizer::emit(std::string text) {
  size_t cut = 0;
  while (strip_left_ > 0 && cut < text.size() && text[cut] == ' ') {
    ++cut;
    --strip_left_;
  }
  if (cut < text.size()) strip_left_ = 0;
  text.erase(0, cut);
  return text;
}

std::string IncrementalDetokenizer::flush_run() {
  if (pending_.empty()) return {};
  std::string text;
  if (tok::utf8_valid(pending_)) {
    text = std::move(pending_);
  } else {
    for (size_t i = 0; i < pending_.size(); ++i) text += tok::kReplacementChar;
  }
  pending_.clear();
  return emit(std::move(text));
}

std::string IncrementalDetokenizer::push(int32_t id) {
  if (!rules_) {
    // Tokenizer without decode rules: re-decode and emit the stable growth.
    all_ids_.push_back(id);
    const std::string full = tok_.decode(all_ids_, skip_special_);
    if (full.size() <= emitted_ || std::string_view(full).ends_with(tok::kReplacementChar)) return {};
    // decode() output is whole UTF-8; a trailing U+FFFD may still be an
    // incomplete character, so it waits for the next id.
    std::string out = full.substr(emitted_);
    emitted_ = full.size();
    return out;
  }
  const int32_t n = static_cast<int32_t>(rules_->text.size());
  if (id < 0 || id >= n) fail("detokenizer", "id", "token id {} is outside the vocabulary [0, {})", id, n);
  if (skip_special_ && rules_->special[id]) return {};
  if (rules_->byte_level) {
    pending_ += rules_->text[id];
    // Emit everything before a trailing sequence that may still complete.
    size_t pos = 0, cut = pending_.size();
    while (pos < pending_.size()) {
      const tok::Utf8Step st = tok::utf8_step(pending_, pos);
      if (st.kind == tok::Utf8Step::Truncated) {
        cut = pos;
        break;
      }
      pos += st.len;
    }
    std::string ready = tok::utf8_lossy(std::string_view(pending_).substr(0, cut));
    pending_.erase(0, cut);
    return emit(std::move(ready));
  }
  if (rules_->byte[id] >= 0) {
    pending_ += static_cast<char>(rules_->byte[id]);
    return {};
  }
  std::string out = flush_run();
  if (rules_->join_with_space && !first_piece_) out += emit(" ");
  first_piece_ = false;
  out += emit(rules_->text[id]);
  if (rules_->special[id] && rules_->strip_after_special)
    strip_left_ = std::max(strip_left_, std::max(rules_->strip_leading, 1));
  return out;
}

std::string IncrementalDetokenizer::flush() {
  if (!rules_) {
    const std::string full = tok_.decode(all_ids_, skip_special_);
    std::string out = full.size() > emitted_ ? full.substr(emitted_) : std::string();
    emitted_ = full.size();
    return out;
  }
  if (rules_->byte_level) {
    std::string out = emit(tok::utf8_lossy(pending_));
    pending_.clear();
    return out;
  }
  return flush_run();
}

}  // namespace kite
