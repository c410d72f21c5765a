// SentencePiece tokenizer.model: a protobuf ModelProto parsed by hand.
//   ModelProto { repeated SentencePiece pieces = 1; TrainerSpec trainer_spec = 2;
//                NormalizerSpec normalizer_spec = 3; ... }
//   SentencePiece { string piece = 1; float score = 2; Type type = 3; }
#include <cmath>
#include <cstring>

#include "core/error.h"
#include "tokenizer/tokenizer_impl.h"

namespace kite::tok {

namespace {

class ProtoReader {
 public:
  ProtoReader(std::string_view data, const std::string& source, std::string where)
      : d_(data), source_(source), where_(std::move(where)) {}
  bool done() const { return pos_ >= d_.size(); }

  uint64_t varint() {
    uint64_t v = 0;
    for (int shift = 0; shift < 70; shift += 7) {
      if (pos_ >= d_.size()) bad("varint runs past the end of the data");
      const uint8_t b = static_cast<uint8_t>(d_[pos_++]);
      if (shift == 63 && b > 1) bad("varint is longer than 64 bits");
      v |= static_cast<uint64_t>(b & 0x7F) << shift;
      if (!(b & 0x80)) return v;
    }
    bad("varint is longer than 10 bytes");
  }
  // Next field: returns false at the end.
  bool next(uint32_t& field, uint32_t& wire) {
    if (done()) return false;
    const uint64_t key = varint();
    field = static_cast<uint32_t>(key >> 3);
    wire = static_cast<uint32_t>(key & 7);
    if (field == 0) bad("field number 0");
    return true;
  }
  std::string_view bytes() {
    const uint64_t n = varint();
    if (n > d_.size() - pos_)
      bad(fmt::format("length-delimited field of {} bytes runs past the end ({} bytes left)", n, d_.size() - pos_));
    const std::string_view s = d_.substr(pos_, n);
    pos_ += n;
    return s;
  }
  float fixed32_float() {
    if (d_.size() - pos_ < 4) bad("32-bit field runs past the end of the data");
    uint32_t u;
    std::memcpy(&u, d_.data() + pos_, 4);  // little-endian host assumed (x86-64, aarch64)
    pos_ += 4;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
  }
  void skip(uint32_t wire) {
    switch (wire) {
      case 0: varint(); break;
      case 1:
        if (d_.size() - pos_ < 8) bad("64-bit field runs past the end of the data");
        pos_ += 8;
        break;
      case 2: bytes(); break;
      case 5:
        if (d_.size() - pos_ < 4) bad("32-bit field runs past the end of the data");
        pos_ += 4;
        break;
      default: bad(fmt::format("unsupported protobuf wire type {}", wire));
    }
  }
  void expect(uint32_t wire, uint32_t want, uint32_t field) {
    if (wire != want) bad(fmt::format("field {} has wire type {}, expected {}", field, wire, want));
  }
  [[noreturn]] void bad(const std::string& msg) const {
    fail(source_, where_, "{} (at byte {} of {}); not a SentencePiece model?", msg, pos_, d_.size());
  }

 private:
  std::string_view d_;
  size_t pos_ = 0;
  const std::string& source_;
  std::string where_;
};

int32_t as_int32(uint64_t v) { return static_cast<int32_t>(static_cast<int64_t>(v)); }

}  // namespace

std::unique_ptr<TokenizerSpec> load_sentencepiece(std::string_view bytes, const std::string& source) {
  auto spec = std::make_unique<TokenizerSpec>();
  spec->source = source;
  Vocab& v = spec->vocab;
  int model_type = 1;  // UNIGRAM is the protobuf default
  bool byte_fallback = false, suffix_ws = false;
  int32_t unk_id = 0, bos_id = 1, eos_id = 2;
  bool add_dummy_prefix = true, remove_extra_ws = true, escape_ws = true;
  std::string norm_name;
  bool saw_trainer = false;

  ProtoReader top(bytes, source, "ModelProto");
  uint32_t field, wire;
  while (top.next(field, wire)) {
    if (field == 1) {
      top.expect(wire, 2, field);
      ProtoReader p(top.bytes(), source, fmt::format("pieces[{}]", v.pieces.size()));
      std::string piece;
      float score = 0;
      uint64_t type = 1;
      uint32_t f2, w2;
      while (p.next(f2, w2)) {
        if (f2 == 1) {
          p.expect(w2, 2, f2);
          piece = std::string(p.bytes());
        } else if (f2 == 2) {
          p.expect(w2, 5, f2);
          score = p.fixed32_float();
        } else if (f2 == 3) {
          p.expect(w2, 0, f2);
          type = p.varint();
        } else {
          p.skip(w2);
        }
      }
      if (!std::isfinite(score)) p.bad(fmt::format("score {} is not finite", score));
      TokenAttr attr;
      switch (type) {
        case 1: attr = TokenAttr::Normal; break;
        case 2: attr = TokenAttr::Unknown; break;
        case 3: attr = TokenAttr::Control; break;
        case 4: attr = TokenAttr::UserDefined; break;
        case 5: attr = TokenAttr::Unused; break;
        case 6: attr = TokenAttr::Byte; break;
        default: p.bad(fmt::format("type {} is not a SentencePiece type (1..6)", type));
      }
      if (piece.empty() && attr != TokenAttr::Control) p.bad("piece is empty");
      v.pieces.push_back(std::move(piece));
      v.scores.push_back(score);
      v.attrs.push_back(attr);
    } else if (field == 2) {
      top.expect(wire, 2, field);
      saw_trainer = true;
      ProtoReader t(top.bytes(), source, "trainer_spec");
      uint32_t f2, w2;
      while (t.next(f2, w2)) {
        if (w2 != 0) {
          t.skip(w2);
          continue;
        }
        const uint64_t val = t.varint();
        switch (f2) {
          case 3: model_type = static_cast<int>(val); break;
          case 24: suffix_ws = val != 0; break;
          case 35: byte_fallback = val != 0; break;
          case 40: unk_id = as_int32(val); break;
          case 41: bos_id = as_int32(val); break;
          case 42: eos_id = as_int32(val); break;
          default: break;
        }
      }
    } else if (field == 3) {
      top.expect(wire, 2, field);
      ProtoReader n(top.bytes(), source, "normalizer_spec");
      uint32_t f2, w2;
      while (n.next(f2, w2)) {
        if (f2 == 1 && w2 == 2) {
          norm_name = std::string(n.bytes());
        } else if (f2 == 2 && w2 == 2) {
          if (!n.bytes().empty() && norm_name != "identity")
            fail(source, "normalizer_spec.precompiled_charsmap",
                 "normalization rules (e.g. nmt_nfkc) are not supported; only the identity normalizer is");
        } else if (w2 == 0 && (f2 == 3 || f2 == 4 || f2 == 5)) {
          const bool val = n.varint() != 0;
          (f2 == 3 ? add_dummy_prefix : f2 == 4 ? remove_extra_ws : escape_ws) = val;
        } else {
          n.skip(w2);
        }
      }
    } else {
      top.skip(wire);
    }
  }
  if (v.pieces.empty()) fail(source, "pieces", "no pieces; not a SentencePiece model");
  if (!saw_trainer) fail(source, "trainer_spec", "missing; not a SentencePiece model");
  if (model_type != 2)
    fail(source, "trainer_spec.model_type", "model type {} ({}) is not supported; only BPE (2) is", model_type,
         model_type == 1   ? "UNIGRAM"
         : model_type == 3 ? "WORD"
         : model_type == 4 ? "CHAR"
                           : "unknown");
  if (suffix_ws) fail(source, "trainer_spec.treat_whitespace_as_suffix", "is not supported");
  const int32_t n = v.size();
  auto check_id = [&](const char* field_name, int32_t id) -> std::optional<int32_t> {
    if (id < 0) return std::nullopt;
    if (id >= n) fail(source, field_name, "id {} is outside the {} pieces", id, n);
    return id;
  };
  const auto unk = check_id("trainer_spec.unk_id", unk_id);
  spec->bos = check_id("trainer_spec.bos_id", bos_id);
  spec->eos = check_id("trainer_spec.eos_id", eos_id);
  if (spec->bos) spec->prefix_ids = {*spec->bos};
  v.finish(false);
  setup_spm_pipeline(*spec, add_dummy_prefix, remove_extra_ws, escape_ws, byte_fallback, unk);
  return spec;
}

}  // namespace kite::tok
