// Jinja2 lexer and parser: template text -> AST (jinja.h). Whitespace control
// follows jinja2 with trim_blocks=True and lstrip_blocks=True, as Hugging Face
// renders chat templates; newlines are normalized and one trailing newline of
// the template is dropped (keep_trailing_newline=False).
#include <algorithm>
#include <set>

#include "chat/jinja.h"
#include "chat/jinja_interp.h"
#include "core/error.h"

namespace kite::jinja {

namespace {

enum class Tok : uint8_t { Text, VarBegin, VarEnd, BlockBegin, BlockEnd, Name, String, Int, Float, Op, Eof };

struct Token {
  Tok type;
  std::string text;  // Text content, name, operator, decoded string
  int64_t ival = 0;
  double fval = 0;
  size_t pos = 0;
};

bool is_ident_start(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_'; }
bool is_ident_char(char c) { return is_ident_start(c) || (c >= '0' && c <= '9'); }
bool is_digit(char c) { return c >= '0' && c <= '9'; }
bool is_ws(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; }

std::string normalize_newlines(const std::string& text) {
  std::string out;
  out.reserve(text.size());
  for (size_t i = 0; i < text.size(); ++i) {
    if (text[i] == '\r') {
      out += '\n';
      if (i + 1 < text.size() && text[i + 1] == '\n') ++i;
    } else {
      out += text[i];
    }
  }
  if (!out.empty() && out.back() == '\n') out.pop_back();
  return out;
}

// Positions -> "line L col C".
class Locator {
 public:
  explicit Locator(const std::string& src) {
    starts_.push_back(0);
    for (size_t i = 0; i < src.size(); ++i) {
      if (src[i] == '\n') starts_.push_back(i + 1);
    }
  }
  int line(size_t pos) const {
    return static_cast<int>(std::upper_bound(starts_.begin(), starts_.end(), pos) - starts_.begin());
  }
  int col(size_t pos) const { return static_cast<int>(pos - starts_[line(pos) - 1]) + 1; }
  std::string where(size_t pos) const {
    return "line " + std::to_string(line(pos)) + " col " + std::to_string(col(pos));
  }

 private:
  std::vector<size_t> starts_;
};

class Lexer {
 public:
  Lexer(const std::string& src, const Locator& loc, const std::string& source)
      : src_(src), loc_(loc), source_(source) {}

  std::vector<Token> run() {
    size_t pos = 0, n = src_.size();
    bool line_starting = true;
    while (pos < n) {
      size_t start = find_tag(pos);
      std::string text = src_.substr(pos, (start == std::string::npos ? n : start) - pos);
      if (start == std::string::npos) {
        emit_text(std::move(text), pos);
        break;
      }
      char kind = src_[start + 1];
      size_t p = start + 2;
      char sign = 0;
      if (p < n && (src_[p] == '-' || (src_[p] == '+' && kind != '{'))) sign = src_[p++];
      if (sign == '-') {
        size_t e = text.size();
        while (e > 0 && is_ws(text[e - 1])) --e;
        text.resize(e);
      } else if (sign != '+' && kind != '{') {
        // lstrip_blocks: drop spaces/tabs between the start of the line and a block or comment tag.
        size_t l_pos = text.rfind('\n');
        l_pos = l_pos == std::string::npos ? 0 : l_pos + 1;
        if ((l_pos > 0 || line_starting) && l_pos < text.size() &&
            std::all_of(text.begin() + static_cast<std::ptrdiff_t>(l_pos), text.end(), is_ws)) {
          text.resize(l_pos);
        }
      }
      emit_text(std::move(text), pos);
      if (kind == '#') {
        size_t e = src_.find("#}", p);
        if (e == std::string::npos) fail(start, "unclosed comment: expected '#}'");
        char end_sign = e > p && (src_[e - 1] == '-' || src_[e - 1] == '+') ? src_[e - 1] : 0;
        pos = after_tag(e + 2, end_sign, true);
      } else if (kind == '%' && try_raw(start, p, pos)) {
        // raw block emitted as text
      } else {
        pos = lex_tag(start, p, kind == '{');
      }
      line_starting = pos > 0 && src_[pos - 1] == '\n';
    }
    tokens_.push_back(Token{Tok::Eof, {}, 0, 0, n});
    return std::move(tokens_);
  }

 private:
  [[noreturn]] void fail(size_t pos, const std::string& msg) {
    throw Error(source_, "chat_template", loc_.where(pos) + ": " + msg);
  }

  size_t find_tag(size_t pos) const {
    for (size_t i = pos; i + 1 < src_.size(); ++i) {
      if (src_[i] == '{' && (src_[i + 1] == '{' || src_[i + 1] == '%' || src_[i + 1] == '#')) return i;
    }
    return std::string::npos;
  }

  void emit_text(std::string text, size_t pos) {
    if (!text.empty()) tokens_.push_back(Token{Tok::Text, std::move(text), 0, 0, pos});
  }

  // After a tag's closing marker: '-' strips all following whitespace; a block/comment end drops one newline.
  size_t after_tag(size_t pos, char sign, bool block) const {
    if (sign == '-') {
      while (pos < src_.size() && is_ws(src_[pos])) ++pos;
    } else if (block && sign != '+' && pos < src_.size() && src_[pos] == '\n') {
      ++pos;
    }
    return pos;
  }

  // `{% raw %}...{% endraw %}`: returns true and sets pos past it when the tag at `start` is raw.
  bool try_raw(size_t start, size_t p, size_t& pos) {
    size_t q = p;
    while (q < src_.size() && is_ws(src_[q])) ++q;
    if (src_.compare(q, 3, "raw") != 0 || (q + 3 < src_.size() && is_ident_char(src_[q + 3]))) return false;
    q += 3;
    while (q < src_.size() && is_ws(src_[q])) ++q;
    char open_sign = 0;
    if (q < src_.size() && (src_[q] == '-' || src_[q] == '+')) open_sign = src_[q++];
    if (src_.compare(q, 2, "%}") != 0) fail(q, "expected '%}' after 'raw'");
    size_t body = after_tag(q + 2, open_sign, true);
    for (size_t i = find_tag(body); i != std::string::npos; i = find_tag(i + 1)) {
      if (src_[i + 1] != '%') continue;
      size_t r = i + 2;
      char sign = 0;
      if (r < src_.size() && (src_[r] == '-' || src_[r] == '+')) sign = src_[r++];
      while (r < src_.size() && is_ws(src_[r])) ++r;
      if (src_.compare(r, 6, "endraw") != 0) continue;
      r += 6;
      while (r < src_.size() && is_ws(src_[r])) ++r;
      char end_sign = 0;
      if (r < src_.size() && (src_[r] == '-' || src_[r] == '+')) end_sign = src_[r++];
      if (src_.compare(r, 2, "%}") != 0) continue;
      std::string text = src_.substr(body, i - body);
      if (sign == '-') {
        size_t e = text.size();
        while (e > 0 && is_ws(text[e - 1])) --e;
        text.resize(e);
      }
      emit_text(std::move(text), body);
      pos = after_tag(r + 2, end_sign, true);
      return true;
    }
    fail(start, "unclosed raw block: expected '{% endraw %}'");
  }

  size_t lex_tag(size_t start, size_t p, bool var) {
    tokens_.push_back(Token{var ? Tok::VarBegin : Tok::BlockBegin, {}, 0, 0, start});
    const size_t n = src_.size();
    std::string brackets;  // closers expected, innermost last
    while (true) {
      while (p < n && is_ws(src_[p])) ++p;
      if (p >= n) fail(start, var ? "unclosed tag: expected '}}'" : "unclosed tag: expected '%}'");
      if (brackets.empty()) {
        const char* end = var ? "}}" : "%}";
        char sign = 0;
        size_t q = p;
        if (src_[q] == '-' || (src_[q] == '+' && !var)) sign = src_[q++];
        if (src_.compare(q, 2, end) == 0) {
          tokens_.push_back(Token{var ? Tok::VarEnd : Tok::BlockEnd, {}, 0, 0, p});
          return after_tag(q + 2, sign, !var);
        }
      }
      char c = src_[p];
      if (is_ident_start(c)) {
        size_t e = p;
        while (e < n && is_ident_char(src_[e])) ++e;
        tokens_.push_back(Token{Tok::Name, src_.substr(p, e - p), 0, 0, p});
        p = e;
      } else if (c == '\'' || c == '"') {
        p = lex_string(p);
      } else if (is_digit(c)) {
        p = lex_number(p);
      } else {
        static const char* two[] = {"//", "**", "==", "!=", "<=", ">="};
        std::string op;
        for (const char* t : two) {
          if (src_.compare(p, 2, t) == 0) op = t;
        }
        if (op.empty()) {
          if (std::string("+-*/%~<>=()[]{},.:|").find(c) == std::string::npos) {
            fail(p, std::string("unexpected character '") + c + "' in tag");
          }
          op = std::string(1, c);
        }
        if (op == "(" || op == "[" || op == "{") {
          if (brackets.size() >= static_cast<size_t>(4 * kMaxParseDepth)) fail(p, "brackets nested too deeply");
          brackets.push_back(op == "(" ? ')' : op == "[" ? ']' : '}');
        } else if (op == ")" || op == "]" || op == "}") {
          if (brackets.empty()) fail(p, "unexpected '" + op + "'");
          if (brackets.back() != op[0]) fail(p, "unexpected '" + op + "', expected '" + brackets.back() + "'");
          brackets.pop_back();
        }
        tokens_.push_back(Token{Tok::Op, op, 0, 0, p});
        p += op.size();
      }
    }
  }

  size_t lex_string(size_t p) {
    const size_t start = p, n = src_.size();
    char quote = src_[p++];
    std::string out;
    while (true) {
      if (p >= n) fail(start, "unterminated string literal");
      char c = src_[p];
      if (c == quote) break;
      if (c != '\\') {
        out += c;
        ++p;
        continue;
      }
      if (p + 1 >= n) fail(start, "unterminated string literal");
      char e = src_[p + 1];
      p += 2;
      switch (e) {
        case '\n': break;
        case '\\': out += '\\'; break;
        case '\'': out += '\''; break;
        case '"': out += '"'; break;
        case 'n': out += '\n'; break;
        case 't': out += '\t'; break;
        case 'r': out += '\r'; break;
        case 'a': out += '\a'; break;
        case 'b': out += '\b'; break;
        case 'f': out += '\f'; break;
        case 'v': out += '\v'; break;
        case 'x':
        case 'u':
        case 'U': {
          int digits = e == 'x' ? 2 : e == 'u' ? 4 : 8;
          uint32_t cp = 0;
          for (int k = 0; k < digits; ++k, ++p) {
            char h = p < n ? src_[p] : 0;
            int d = is_digit(h)              ? h - '0'
                    : (h >= 'a' && h <= 'f') ? h - 'a' + 10
                    : (h >= 'A' && h <= 'F') ? h - 'A' + 10
                                             : -1;
            if (d < 0) fail(p, std::string("truncated \\") + e + " escape in string literal");
            cp = cp * 16 + static_cast<uint32_t>(d);
          }
          if (cp > 0x10ffff) fail(p, "escape \\U beyond U+10FFFF in string literal");
          append_utf8(out, cp);
          break;
        }
        default:
          if (e >= '0' && e <= '7') {
            uint32_t cp = static_cast<uint32_t>(e - '0');
            for (int k = 0; k < 2 && p < n && src_[p] >= '0' && src_[p] <= '7'; ++k, ++p) {
              cp = cp * 8 + static_cast<uint32_t>(src_[p] - '0');
            }
            append_utf8(out, cp);
          } else {
            out += '\\';
            out += e;
          }
      }
    }
    tokens_.push_back(Token{Tok::String, std::move(out), 0, 0, start});
    return p + 1;
  }

  size_t lex_number(size_t p) {
    const size_t start = p, n = src_.size();
    auto digits = [&](size_t q) {
      while (q < n && (is_digit(src_[q]) || (src_[q] == '_' && q + 1 < n && is_digit(src_[q + 1])))) ++q;
      return q;
    };
    size_t e = digits(p);
    bool after_dot = !tokens_.empty() && tokens_.back().type == Tok::Op && tokens_.back().text == ".";
    bool is_float = false;
    if (!after_dot) {
      if (e + 1 < n && src_[e] == '.' && is_digit(src_[e + 1])) {
        e = digits(e + 1);
        is_float = true;
      }
      if (e < n && (src_[e] == 'e' || src_[e] == 'E')) {
        size_t q = e + 1;
        if (q < n && (src_[q] == '+' || src_[q] == '-')) ++q;
        if (q < n && is_digit(src_[q])) {
          e = digits(q);
          is_float = true;
        }
      }
    }
    std::string text;
    for (size_t i = p; i < e; ++i) {
      if (src_[i] != '_') text += src_[i];
    }
    Token t{is_float ? Tok::Float : Tok::Int, text, 0, 0, start};
    if (is_float) {
      t.fval = std::strtod(text.c_str(), nullptr);
    } else {
      int64_t v = 0;
      for (char c : text) {
        if (__builtin_mul_overflow(v, 10, &v) || __builtin_add_overflow(v, c - '0', &v)) {
          fail(start, "integer literal " + text + " does not fit in 64 bits");
        }
      }
      t.ival = v;
    }
    tokens_.push_back(std::move(t));
    return e;
  }

  const std::string& src_;
  const Locator& loc_;
  const std::string& source_;
  std::vector<Token> tokens_;
};

// ---- Parser ----------------------------------------------------------------------

class Parser {
 public:
  Parser(std::vector<Token> tokens, const Locator& loc, const std::string& source)
      : toks_(std::move(tokens)), loc_(loc), source_(source) {}

  Body parse_template() {
    Body body;
    std::string end = parse_body(body, {}, "", 0);
    (void)end;
    return body;
  }

 private:
  struct DepthGuard {
    DepthGuard(Parser& p, size_t pos) : p_(p) {
      if (++p_.nesting_ > 2 * kMaxParseDepth) p_.fail_at(pos, "expression or block nested too deeply");
    }
    ~DepthGuard() { --p_.nesting_; }
    Parser& p_;
  };

  const Token& cur() const { return toks_[idx_]; }
  const Token& peek(size_t k = 1) const { return toks_[std::min(idx_ + k, toks_.size() - 1)]; }
  const Token& advance() {
    const Token& t = toks_[idx_];
    if (idx_ + 1 < toks_.size()) ++idx_;
    return t;
  }
  bool is_op(const char* op) const { return cur().type == Tok::Op && cur().text == op; }
  bool is_name(const char* name) const { return cur().type == Tok::Name && cur().text == name; }

  [[noreturn]] void fail_at(size_t pos, const std::string& msg) const {
    throw Error(source_, "chat_template", loc_.where(pos) + ": " + msg);
  }

  static std::string describe(const Token& t) {
    switch (t.type) {
      case Tok::Text: return "template text";
      case Tok::VarBegin: return "'{{'";
      case Tok::VarEnd: return "'}}'";
      case Tok::BlockBegin: return "'{%'";
      case Tok::BlockEnd: return "'%}'";
      case Tok::Name: return "'" + t.text + "'";
      case Tok::String: return "string literal";
      case Tok::Int:
      case Tok::Float: return "number " + t.text;
      case Tok::Op: return "'" + t.text + "'";
      case Tok::Eof: return "end of template";
    }
    return "token";
  }

  [[noreturn]] void expected(const std::string& what) const {
    fail_at(cur().pos, "expected " + what + ", got " + describe(cur()));
  }

  void expect_op(const char* op) {
    if (!is_op(op)) expected(std::string("'") + op + "'");
    advance();
  }

  void expect_block_end(const char* tag) {
    if (cur().type != Tok::BlockEnd) expected(std::string("'%}' to end '") + tag + "' tag");
    advance();
  }

  std::string expect_identifier(const char* what) {
    if (cur().type != Tok::Name) expected(what);
    return advance().text;
  }

  ExprPtr node(ExprType type, size_t pos) {
    auto e = std::make_unique<Expr>();
    e->type = type;
    e->line = loc_.line(pos);
    e->col = loc_.col(pos);
    return e;
  }

  // Computes the node's depth and rejects trees too deep to evaluate safely.
  ExprPtr finish(ExprPtr e) {
    int d = 0;
    for (const Expr* c : {e->a.get(), e->b.get(), e->c.get()}) {
      if (c) d = std::max(d, c->depth);
    }
    for (const auto& c : e->args) {
      if (c) d = std::max(d, c->depth);
    }
    for (const auto& [k, c] : e->kwargs) d = std::max(d, c->depth);
    e->depth = d + 1;
    if (e->depth > kMaxParseDepth) {
      throw Error(source_, "chat_template",
                  "line " + std::to_string(e->line) + " col " + std::to_string(e->col) +
                      ": expression nested too deeply (more than " + std::to_string(kMaxParseDepth) + " levels)");
    }
    return e;
  }

  // Parses statements into `body` until a block tag named in `ends` (returned, with the tag's name consumed) or the
  // end of the template (returns "", an error when `ends` is not empty).
  std::string parse_body(Body& body, const std::vector<std::string>& ends, const char* opener, size_t open_pos) {
    while (true) {
      const Token& t = cur();
      if (t.type == Tok::Eof) {
        if (ends.empty()) return "";
        std::string want;
        for (size_t i = 0; i < ends.size(); ++i) want += (i ? " or '" : "'") + ends[i] + "'";
        fail_at(t.pos, "unexpected end of template; expected " + want + " to close '" + opener + "' opened at " +
                           loc_.where(open_pos));
      }
      if (t.type == Tok::Text) {
        auto s = std::make_unique<Stmt>();
        s->type = StmtType::Text;
        s->line = loc_.line(t.pos);
        s->text = t.text;
        body.push_back(std::move(s));
        advance();
      } else if (t.type == Tok::VarBegin) {
        advance();
        auto s = std::make_unique<Stmt>();
        s->type = StmtType::Output;
        s->line = loc_.line(t.pos);
        s->expr = parse_tuple(true);
        if (cur().type != Tok::VarEnd) expected("'}}'");
        advance();
        body.push_back(std::move(s));
      } else if (t.type == Tok::BlockBegin) {
        const Token& kw = peek();
        if (kw.type != Tok::Name) fail_at(kw.pos, "expected a tag name after '{%', got " + describe(kw));
        if (std::find(ends.begin(), ends.end(), kw.text) != ends.end()) {
          advance();
          return advance().text;
        }
        static const std::set<std::string> closers = {"endif",    "elif",    "else",      "endfor",        "endset",
                                                      "endmacro", "endcall", "endfilter", "endgeneration", "endraw"};
        if (closers.count(kw.text)) {
          std::string msg = "unexpected '" + kw.text + "'";
          if (!ends.empty())
            msg += "; the innermost open block is '" + std::string(opener) + "' at " + loc_.where(open_pos);
          fail_at(kw.pos, msg);
        }
        size_t pos = t.pos;
        advance();
        body.push_back(parse_statement(pos));
      } else {
        fail_at(t.pos, "unexpected " + describe(t));
      }
    }
  }

  StmtPtr parse_statement(size_t pos) {
    DepthGuard guard(*this, pos);
    if (++block_depth_ > kMaxParseDepth) fail_at(pos, "blocks nested too deeply");
    const Token& kw = advance();
    const std::string name = kw.text;
    auto s = std::make_unique<Stmt>();
    s->line = loc_.line(pos);
    if (name == "if") {
      s->type = StmtType::If;
      s->exprs.push_back(parse_tuple(false));
      expect_block_end("if");
      while (true) {
        s->bodies.emplace_back();
        std::string end = parse_body(s->bodies.back(), {"elif", "else", "endif"}, "if", pos);
        if (end == "elif") {
          s->exprs.push_back(parse_tuple(false));
          expect_block_end("elif");
        } else if (end == "else") {
          expect_block_end("else");
          s->bodies.emplace_back();
          parse_body(s->bodies.back(), {"endif"}, "if", pos);
          expect_block_end("endif");
          break;
        } else {
          expect_block_end("endif");
          break;
        }
      }
    } else if (name == "for") {
      s->type = StmtType::For;
      bool paren = is_op("(");
      if (paren) advance();
      s->names.push_back(expect_identifier("a loop variable name"));
      while (is_op(",")) {
        advance();
        if (cur().type != Tok::Name || cur().text == "in") break;
        s->names.push_back(advance().text);
      }
      if (paren) expect_op(")");
      if (!is_name("in")) expected("'in'");
      advance();
      s->expr = parse_tuple(false);
      if (is_name("if")) {
        advance();
        s->cond = parse_expression(true);
      }
      if (is_name("recursive")) fail_at(cur().pos, "recursive for loops are not supported");
      expect_block_end("for");
      s->bodies.emplace_back();
      ++loop_depth_;
      std::string end = parse_body(s->bodies.back(), {"else", "endfor"}, "for", pos);
      --loop_depth_;
      if (end == "else") {
        expect_block_end("else");
        s->bodies.emplace_back();
        parse_body(s->bodies.back(), {"endfor"}, "for", pos);
      }
      expect_block_end("endfor");
    } else if (name == "set") {
      s->text = expect_identifier("a variable name after 'set'");
      if (is_op(".")) {
        advance();
        s->attr = expect_identifier("an attribute name after '.'");
      } else if (is_op(",")) {
        s->names.push_back(s->text);
        while (is_op(",")) {
          advance();
          s->names.push_back(expect_identifier("a variable name"));
        }
      }
      if (is_op("=")) {
        advance();
        s->type = StmtType::Set;
        s->expr = parse_tuple(true);
        expect_block_end("set");
      } else {
        if (!s->attr.empty() || !s->names.empty()) expected("'=' (block assignments take a single name)");
        s->type = StmtType::SetBlock;
        if (is_op("|")) s->expr = parse_filter_chain(true);
        expect_block_end("set");
        s->bodies.emplace_back();
        int saved = loop_depth_;
        loop_depth_ = 0;
        parse_body(s->bodies.back(), {"endset"}, "set", pos);
        loop_depth_ = saved;
        expect_block_end("endset");
      }
    } else if (name == "macro") {
      s->type = StmtType::Macro;
      s->text = expect_identifier("a macro name");
      parse_params(*s);
      expect_block_end("macro");
      s->bodies.emplace_back();
      int saved = loop_depth_;
      loop_depth_ = 0;
      parse_body(s->bodies.back(), {"endmacro"}, "macro", pos);
      loop_depth_ = saved;
      if (cur().type == Tok::Name) advance();  // `{% endmacro name %}`
      expect_block_end("endmacro");
    } else if (name == "call") {
      s->type = StmtType::CallBlock;
      if (is_op("(")) parse_params(*s);
      s->expr = parse_expression(true);
      if (s->expr->type != ExprType::Call) fail_at(kw.pos, "expected a macro call after 'call'");
      expect_block_end("call");
      s->bodies.emplace_back();
      int saved = loop_depth_;
      loop_depth_ = 0;
      parse_body(s->bodies.back(), {"endcall"}, "call", pos);
      loop_depth_ = saved;
      expect_block_end("endcall");
    } else if (name == "filter") {
      s->type = StmtType::FilterBlock;
      s->expr = parse_filter_chain(false);
      expect_block_end("filter");
      s->bodies.emplace_back();
      int saved = loop_depth_;
      loop_depth_ = 0;
      parse_body(s->bodies.back(), {"endfilter"}, "filter", pos);
      loop_depth_ = saved;
      expect_block_end("endfilter");
    } else if (name == "break" || name == "continue") {
      if (loop_depth_ == 0) fail_at(kw.pos, "'" + name + "' outside of a for loop");
      s->type = name == "break" ? StmtType::Break : StmtType::Continue;
      expect_block_end(name.c_str());
    } else if (name == "generation") {
      s->type = StmtType::Block;
      expect_block_end("generation");
      s->bodies.emplace_back();
      parse_body(s->bodies.back(), {"endgeneration"}, "generation", pos);
      expect_block_end("endgeneration");
    } else {
      fail_at(kw.pos, "unknown tag '" + name + "'");
    }
    --block_depth_;
    return s;
  }

  // `(a, b=default, ...)` for macro and call blocks.
  void parse_params(Stmt& s) {
    expect_op("(");
    while (!is_op(")")) {
      s.names.push_back(expect_identifier("a parameter name"));
      if (is_op("=")) {
        advance();
        s.exprs.push_back(parse_expression(true));
      } else {
        s.exprs.push_back(nullptr);
      }
      if (!is_op(",")) break;
      advance();
    }
    expect_op(")");
  }

  // `[|] f(args) | g ...` for filter and set blocks; the innermost filter's input (nullptr) is the block body.
  ExprPtr parse_filter_chain(bool leading_pipe) {
    ExprPtr e = parse_filter(nullptr, leading_pipe);
    while (is_op("|")) e = parse_filter(std::move(e), true);
    return e;
  }

  ExprPtr parse_tuple(bool with_condexpr) {
    size_t pos = cur().pos;
    ExprPtr first = parse_expression(with_condexpr);
    if (!is_op(",")) return first;
    auto t = node(ExprType::List, pos);
    t->args.push_back(std::move(first));
    while (is_op(",")) {
      advance();
      if (cur().type == Tok::VarEnd || cur().type == Tok::BlockEnd || is_op(")") || is_name("in")) break;
      t->args.push_back(parse_expression(with_condexpr));
    }
    return finish(std::move(t));
  }

  ExprPtr parse_expression(bool with_condexpr) {
    DepthGuard guard(*this, cur().pos);
    if (!with_condexpr) return parse_or();
    size_t pos = cur().pos;
    ExprPtr e = parse_or();
    while (is_name("if")) {
      advance();
      auto c = node(ExprType::Cond, pos);
      c->a = parse_or();
      c->b = std::move(e);
      if (is_name("else")) {
        advance();
        c->c = parse_expression(true);
      }
      e = finish(std::move(c));
    }
    return e;
  }

  ExprPtr parse_or() {
    ExprPtr e = parse_and();
    while (is_name("or")) {
      auto n = node(ExprType::Or, advance().pos);
      n->a = std::move(e);
      n->b = parse_and();
      e = finish(std::move(n));
    }
    return e;
  }

  ExprPtr parse_and() {
    ExprPtr e = parse_not();
    while (is_name("and")) {
      auto n = node(ExprType::And, advance().pos);
      n->a = std::move(e);
      n->b = parse_not();
      e = finish(std::move(n));
    }
    return e;
  }

  ExprPtr parse_not() {
    if (is_name("not")) {
      DepthGuard guard(*this, cur().pos);
      auto n = node(ExprType::Unary, advance().pos);
      n->name = "not";
      n->a = parse_not();
      return finish(std::move(n));
    }
    return parse_compare();
  }

  ExprPtr parse_compare() {
    size_t pos = cur().pos;
    ExprPtr e = parse_math1();
    ExprPtr cmp;
    while (true) {
      std::string op;
      if (cur().type == Tok::Op && (cur().text == "==" || cur().text == "!=" || cur().text == "<" ||
                                    cur().text == ">" || cur().text == "<=" || cur().text == ">=")) {
        op = advance().text;
      } else if (is_name("in")) {
        advance();
        op = "in";
      } else if (is_name("not") && peek().type == Tok::Name && peek().text == "in") {
        advance();
        advance();
        op = "not in";
      } else {
        break;
      }
      if (!cmp) {
        cmp = node(ExprType::Compare, pos);
        cmp->a = std::move(e);
      }
      cmp->ops.push_back(op);
      cmp->args.push_back(parse_math1());
    }
    return cmp ? finish(std::move(cmp)) : std::move(e);
  }

  ExprPtr binary(std::string op, ExprPtr a, ExprPtr b, size_t pos) {
    auto n = node(ExprType::Binary, pos);
    n->name = std::move(op);
    n->a = std::move(a);
    n->b = std::move(b);
    return finish(std::move(n));
  }

  ExprPtr parse_math1() {
    ExprPtr e = parse_concat();
    while (is_op("+") || is_op("-")) {
      const Token& t = advance();
      std::string op = t.text;
      e = binary(op, std::move(e), parse_concat(), t.pos);
    }
    return e;
  }

  ExprPtr parse_concat() {
    ExprPtr e = parse_math2();
    while (is_op("~")) {
      size_t pos = advance().pos;
      e = binary("~", std::move(e), parse_math2(), pos);
    }
    return e;
  }

  ExprPtr parse_math2() {
    ExprPtr e = parse_pow();
    while (is_op("*") || is_op("/") || is_op("//") || is_op("%")) {
      const Token& t = advance();
      std::string op = t.text;
      e = binary(op, std::move(e), parse_pow(), t.pos);
    }
    return e;
  }

  ExprPtr parse_pow() {
    ExprPtr e = parse_unary(true);
    while (is_op("**")) {
      size_t pos = advance().pos;
      e = binary("**", std::move(e), parse_unary(true), pos);
    }
    return e;
  }

  ExprPtr parse_unary(bool with_filter) {
    DepthGuard guard(*this, cur().pos);
    ExprPtr e;
    if (is_op("-") || is_op("+")) {
      const Token& t = advance();
      auto n = node(ExprType::Unary, t.pos);
      n->name = t.text;
      n->a = parse_unary(false);
      e = finish(std::move(n));
    } else {
      e = parse_primary();
    }
    e = parse_postfix(std::move(e));
    if (with_filter) e = parse_filter_expr(std::move(e));
    return e;
  }

  ExprPtr literal(Value v, size_t pos) {
    auto n = node(ExprType::Literal, pos);
    n->value = std::move(v);
    return finish(std::move(n));
  }

  ExprPtr parse_primary() {
    const Token& t = cur();
    size_t pos = t.pos;
    switch (t.type) {
      case Tok::Name: {
        std::string name = advance().text;
        if (name == "true" || name == "True") return literal(Value::boolean(true), pos);
        if (name == "false" || name == "False") return literal(Value::boolean(false), pos);
        if (name == "none" || name == "None") return literal(Value::none(), pos);
        auto n = node(ExprType::Name, pos);
        n->name = std::move(name);
        return finish(std::move(n));
      }
      case Tok::String: {
        std::string s;
        while (cur().type == Tok::String) s += advance().text;
        return literal(Value::string(std::move(s)), pos);
      }
      case Tok::Int: return literal(Value::integer(advance().ival), pos);
      case Tok::Float: return literal(Value::number(advance().fval), pos);
      case Tok::Op: {
        if (t.text == "(") {
          advance();
          if (is_op(")")) {
            advance();
            return finish(node(ExprType::List, pos));
          }
          ExprPtr e = parse_expression(true);
          if (is_op(",")) {
            auto tup = node(ExprType::List, pos);
            tup->args.push_back(std::move(e));
            while (is_op(",")) {
              advance();
              if (is_op(")")) break;
              tup->args.push_back(parse_expression(true));
            }
            e = finish(std::move(tup));
          }
          expect_op(")");
          return e;
        }
        if (t.text == "[") {
          advance();
          auto l = node(ExprType::List, pos);
          while (!is_op("]")) {
            l->args.push_back(parse_expression(true));
            if (!is_op(",")) break;
            advance();
          }
          expect_op("]");
          return finish(std::move(l));
        }
        if (t.text == "{") {
          advance();
          auto d = node(ExprType::Dict, pos);
          while (!is_op("}")) {
            d->args.push_back(parse_expression(true));
            expect_op(":");
            d->args.push_back(parse_expression(true));
            if (!is_op(",")) break;
            advance();
          }
          expect_op("}");
          return finish(std::move(d));
        }
        break;
      }
      default: break;
    }
    expected("an expression");
  }

  ExprPtr parse_postfix(ExprPtr e) {
    while (true) {
      if (is_op(".")) {
        size_t pos = advance().pos;
        if (cur().type == Tok::Name) {
          auto n = node(ExprType::GetAttr, pos);
          n->a = std::move(e);
          n->name = advance().text;
          e = finish(std::move(n));
        } else if (cur().type == Tok::Int) {
          auto n = node(ExprType::GetItem, pos);
          n->a = std::move(e);
          n->b = literal(Value::integer(advance().ival), pos);
          e = finish(std::move(n));
        } else {
          expected("an attribute name after '.'");
        }
      } else if (is_op("[")) {
        e = parse_subscript(std::move(e));
      } else if (is_op("(")) {
        e = parse_call(std::move(e));
      } else {
        return e;
      }
    }
  }

  ExprPtr parse_subscript(ExprPtr e) {
    size_t pos = advance().pos;  // '['
    ExprPtr start;
    if (!is_op(":")) {
      start = parse_expression(true);
      if (is_op("]")) {
        advance();
        auto n = node(ExprType::GetItem, pos);
        n->a = std::move(e);
        n->b = std::move(start);
        return finish(std::move(n));
      }
    }
    auto n = node(ExprType::Slice, pos);
    n->a = std::move(e);
    n->b = std::move(start);
    expect_op(":");
    if (!is_op(":") && !is_op("]")) n->c = parse_expression(true);
    ExprPtr step;
    if (is_op(":")) {
      advance();
      if (!is_op("]")) step = parse_expression(true);
    }
    n->args.push_back(std::move(step));
    expect_op("]");
    return finish(std::move(n));
  }

  void parse_call_args(Expr& n) {
    expect_op("(");
    while (!is_op(")")) {
      if (cur().type == Tok::Name && peek().type == Tok::Op && peek().text == "=") {
        std::string key = advance().text;
        advance();
        n.kwargs.emplace_back(std::move(key), parse_expression(true));
      } else {
        if (is_op("*") || is_op("**")) fail_at(cur().pos, "*args and **kwargs in calls are not supported");
        n.args.push_back(parse_expression(true));
      }
      if (!is_op(",")) break;
      advance();
    }
    expect_op(")");
  }

  ExprPtr parse_call(ExprPtr e) {
    auto n = node(ExprType::Call, cur().pos);
    n->a = std::move(e);
    parse_call_args(*n);
    return finish(std::move(n));
  }

  // After '|' (consumed here when `pipe`): name[.name](args).
  ExprPtr parse_filter(ExprPtr input, bool pipe) {
    if (pipe) expect_op("|");
    size_t pos = cur().pos;
    std::string name = expect_identifier("a filter name");
    while (is_op(".")) {
      advance();
      name += "." + expect_identifier("a filter name");
    }
    auto n = node(ExprType::Filter, pos);
    n->a = std::move(input);
    n->name = std::move(name);
    if (is_op("(")) parse_call_args(*n);
    return finish(std::move(n));
  }

  ExprPtr parse_test(ExprPtr e) {
    advance();  // 'is'
    auto n = node(ExprType::Test, cur().pos);
    if (is_name("not")) {
      advance();
      n->negated = true;
    }
    n->name = expect_identifier("a test name after 'is'");
    while (is_op(".")) {
      advance();
      n->name += "." + expect_identifier("a test name");
    }
    n->a = std::move(e);
    const Token& t = cur();
    if (is_op("(")) {
      parse_call_args(*n);
    } else if ((t.type == Tok::Name || t.type == Tok::String || t.type == Tok::Int || t.type == Tok::Float ||
                is_op("[") || is_op("{")) &&
               !(t.type == Tok::Name && (t.text == "else" || t.text == "or" || t.text == "and"))) {
      if (is_name("is")) fail_at(t.pos, "tests cannot be chained with 'is'");
      n->args.push_back(parse_postfix(parse_primary()));
    }
    return finish(std::move(n));
  }

  ExprPtr parse_filter_expr(ExprPtr e) {
    while (true) {
      if (is_op("|")) {
        e = parse_filter(std::move(e), true);
      } else if (is_name("is")) {
        e = parse_test(std::move(e));
      } else if (is_op("(")) {
        e = parse_call(std::move(e));
      } else {
        return e;
      }
    }
  }

  std::vector<Token> toks_;
  size_t idx_ = 0;
  const Locator& loc_;
  const std::string& source_;
  int nesting_ = 0;
  int block_depth_ = 0;
  int loop_depth_ = 0;
};

}  // namespace

std::shared_ptr<Template> parse(const std::string& text, const std::string& source) {
  std::string src = normalize_newlines(text);
  Locator loc(src);
  Lexer lexer(src, loc, source);
  Parser parser(lexer.run(), loc, source);
  auto t = std::make_shared<Template>();
  t->body = parser.parse_template();
  t->source = source;
  validate(*t);
  return t;
}

}  // namespace kite::jinja
