// Built-in filters, tests, str/dict/list methods and globals, following
// jinja2's and Python's behaviour (with Hugging Face's tojson and globals).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <map>
#include <stdexcept>

#include "chat/jinja_interp.h"
#include "core/error.h"

namespace kite::jinja {

namespace {

// Binds a call's positional and keyword arguments to named parameters.
class Params {
 public:
  Params(Interp& in, const std::string& fname, CallArgs& args, std::initializer_list<const char*> names)
      : vals_(names.size(), nullptr) {
    if (args.pos.size() > names.size()) {
      in.fail(fname + "() takes at most " + std::to_string(names.size()) + " argument(s), got " +
              std::to_string(args.pos.size()));
    }
    for (size_t i = 0; i < args.pos.size(); ++i) vals_[i] = &args.pos[i];
    for (const auto& [k, v] : args.kw) {
      size_t i = 0;
      for (const char* n : names) {
        if (k == n) break;
        ++i;
      }
      if (i == names.size()) in.fail(fname + "() got an unexpected keyword argument '" + k + "'");
      vals_[i] = &v;
    }
  }
  const Value* get(size_t i) const { return vals_[i]; }
  bool has(size_t i) const { return vals_[i] && !vals_[i]->is_none(); }
  Value get_or(size_t i, Value dflt) const { return vals_[i] ? *vals_[i] : dflt; }

 private:
  std::vector<const Value*> vals_;
};

int64_t int_arg(Interp& in, const Value& v, const std::string& what) {
  if (!v.is_int() && !v.is_bool()) in.fail(what + " must be an integer, not " + type_name(v));
  return v.as_int();
}

const std::string& str_arg(Interp& in, const Value& v, const std::string& what) {
  if (!v.is_string()) in.fail(what + " must be a string, not " + type_name(v));
  return v.str();
}

void need_defined(Interp& in, const Value& v) {
  if (v.is_undefined()) in.fail(v.str().empty() ? "value is undefined" : v.str());
}

uint32_t ascii_lower(uint32_t c) { return c >= 'A' && c <= 'Z' ? c + 32 : c; }
uint32_t ascii_upper(uint32_t c) { return c >= 'a' && c <= 'z' ? c - 32 : c; }

// Case mapping for ASCII and the Latin-1/Latin Extended-A, Greek and Cyrillic basic ranges.
uint32_t to_lower(uint32_t c) {
  if (c < 0x80) return ascii_lower(c);
  if ((c >= 0xc0 && c <= 0xde && c != 0xd7)) return c + 32;
  if (c >= 0x100 && c <= 0x17f && c != 0x130 && c != 0x131 && c != 0x138 && c != 0x149 && c != 0x17f) {
    bool even_upper = (c < 0x138) || (c >= 0x14a && c < 0x178);
    if (even_upper && c % 2 == 0) return c + 1;
    if (!even_upper && c >= 0x139 && c <= 0x148 && c % 2 == 1) return c + 1;
    if (c >= 0x179 && c <= 0x17e && c % 2 == 1) return c + 1;
  }
  if (c >= 0x391 && c <= 0x3ab && c != 0x3a2) return c + 32;
  if (c >= 0x410 && c <= 0x42f) return c + 32;
  if (c >= 0x400 && c <= 0x40f) return c + 80;
  return c;
}

uint32_t to_upper(uint32_t c) {
  if (c < 0x80) return ascii_upper(c);
  if ((c >= 0xe0 && c <= 0xfe && c != 0xf7)) return c - 32;
  if (c >= 0x100 && c <= 0x17f) {
    uint32_t l = c - 1;
    if (to_lower(l) == c && l != c) return l;
  }
  if (c >= 0x3b1 && c <= 0x3cb && c != 0x3c2) return c - 32;
  if (c >= 0x430 && c <= 0x44f) return c - 32;
  if (c >= 0x450 && c <= 0x45f) return c - 80;
  return c;
}

bool is_cased_letter(uint32_t c) { return to_lower(c) != c || to_upper(c) != c; }
bool is_alpha(uint32_t c) {
  return (c < 0x80 && std::isalpha(static_cast<int>(c))) || (c >= 0x80 && is_cased_letter(c));
}
bool is_digit(uint32_t c) { return c >= '0' && c <= '9'; }

std::string map_chars(const std::string& s, uint32_t (*f)(uint32_t)) {
  if (std::all_of(s.begin(), s.end(), [](char c) { return static_cast<unsigned char>(c) < 0x80; })) {
    std::string out = s;
    for (char& c : out) c = static_cast<char>(f(static_cast<unsigned char>(c)));
    return out;
  }
  std::string out;
  out.reserve(s.size());
  for (uint32_t c : decode_utf8(s)) append_utf8(out, f(c));
  return out;
}

std::string lower(const std::string& s) { return map_chars(s, to_lower); }
std::string upper(const std::string& s) { return map_chars(s, to_upper); }

// str.capitalize(): first character upper, the rest lower.
std::string capitalize(const std::string& s) {
  std::string out;
  bool first = true;
  for (uint32_t c : decode_utf8(s)) {
    append_utf8(out, first ? to_upper(c) : to_lower(c));
    first = false;
  }
  return out;
}

// str.title(): a cased letter after a non-cased character starts a word.
std::string py_title(const std::string& s) {
  std::string out;
  bool prev_cased = false;
  for (uint32_t c : decode_utf8(s)) {
    bool cased = is_cased_letter(c);
    append_utf8(out, cased ? (prev_cased ? to_lower(c) : to_upper(c)) : c);
    prev_cased = cased;
  }
  return out;
}

// jinja2's title filter: words are split at runs of whitespace, '-', '(', '{', '[', '<'.
std::string jinja_title(const std::string& s) {
  std::string out;
  bool word_start = true;
  for (uint32_t c : decode_utf8(s)) {
    bool sep = is_py_space(c) || c == '-' || c == '(' || c == '{' || c == '[' || c == '<';
    if (sep) {
      append_utf8(out, c);
      word_start = true;
    } else {
      append_utf8(out, word_start ? to_upper(c) : to_lower(c));
      word_start = false;
    }
  }
  return out;
}

// str.strip/lstrip/rstrip with Python whitespace or a set of characters.
std::string py_strip(const std::string& s, const Value* chars, bool left, bool right) {
  std::vector<uint32_t> cps = decode_utf8(s);
  std::vector<uint32_t> set;
  const bool ws = !chars || chars->is_none();
  if (!ws) set = decode_utf8(chars->str());
  auto strip_it = [&](uint32_t c) {
    if (ws) return is_py_space(c);
    for (uint32_t x : set) {
      if (x == c) return true;
    }
    return false;
  };
  size_t b = 0, e = cps.size();
  if (left) {
    while (b < e && strip_it(cps[b])) ++b;
  }
  if (right) {
    while (e > b && strip_it(cps[e - 1])) --e;
  }
  std::string out;
  for (size_t i = b; i < e; ++i) append_utf8(out, cps[i]);
  return out;
}

std::vector<std::string> py_split(Interp& in, const std::string& s, const Value* sep, int64_t maxsplit) {
  std::vector<std::string> parts;
  if (!sep || sep->is_none()) {
    std::vector<uint32_t> cps = decode_utf8(s);
    size_t i = 0;
    while (i < cps.size()) {
      while (i < cps.size() && is_py_space(cps[i])) ++i;
      if (i >= cps.size()) break;
      if (maxsplit >= 0 && static_cast<int64_t>(parts.size()) == maxsplit) {
        size_t e = cps.size();
        while (e > i && is_py_space(cps[e - 1])) --e;
        std::string rest;
        for (size_t k = i; k < e; ++k) append_utf8(rest, cps[k]);
        parts.push_back(std::move(rest));
        break;
      }
      std::string word;
      while (i < cps.size() && !is_py_space(cps[i])) append_utf8(word, cps[i++]);
      parts.push_back(std::move(word));
      if (parts.size() > in.limits().max_list_items) in.fail("split() result has too many parts");
    }
    return parts;
  }
  const std::string& d = str_arg(in, *sep, "split separator");
  if (d.empty()) in.fail("split(): empty separator");
  in.charge_scan(s.size(), d.size());
  size_t pos = 0;
  while (true) {
    if (maxsplit >= 0 && static_cast<int64_t>(parts.size()) == maxsplit) break;
    size_t f = s.find(d, pos);
    if (f == std::string::npos) break;
    parts.push_back(s.substr(pos, f - pos));
    if (parts.size() > in.limits().max_list_items) in.fail("split() result has too many parts");
    pos = f + d.size();
  }
  parts.push_back(s.substr(pos));
  return parts;
}

std::string html_escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&#34;"; break;
      case '\'': out += "&#39;"; break;
      default: out += c;
    }
  }
  return out;
}

Value py_replace(Interp& in, const std::string& s, const std::string& old, const std::string& rep, int64_t count) {
  std::string out;
  if (old.empty()) {
    std::vector<uint32_t> cps = decode_utf8(s);
    uint64_t n = cps.size() + 1;
    if (count >= 0) n = std::min<uint64_t>(n, static_cast<uint64_t>(count));
    in.check_string_size(s.size() + n * rep.size());
    int64_t done = 0;
    for (size_t i = 0; i <= cps.size(); ++i) {
      if (count < 0 || done < count) {
        out += rep;
        ++done;
      }
      if (i < cps.size()) append_utf8(out, cps[i]);
    }
    return in.make_string(std::move(out));
  }
  in.charge_scan(s.size(), old.size());
  size_t pos = 0;
  int64_t done = 0;
  while (count < 0 || done < count) {
    size_t f = s.find(old, pos);
    if (f == std::string::npos) break;
    out.append(s, pos, f - pos);
    out += rep;
    in.check_string_size(out.size());
    pos = f + old.size();
    ++done;
  }
  out.append(s, pos, std::string::npos);
  return in.make_string(std::move(out));
}

int64_t py_find(const std::string& s, const std::string& sub, bool reverse) {
  size_t f = reverse ? s.rfind(sub) : s.find(sub);
  if (f == std::string::npos) return -1;
  return static_cast<int64_t>(utf8_length(s.substr(0, f)));
}

// Python int(str, base) and float(str).
bool parse_int(const std::string& text, int base, int64_t& out) {
  std::string s = py_strip(text, nullptr, true, true);
  size_t i = 0;
  bool neg = false;
  if (i < s.size() && (s[i] == '+' || s[i] == '-')) neg = s[i++] == '-';
  if (i >= s.size()) return false;
  int64_t v = 0;
  bool prev_digit = false;
  for (; i < s.size(); ++i) {
    char c = s[i];
    if (c == '_' && prev_digit && i + 1 < s.size()) {
      prev_digit = false;
      continue;
    }
    int d = c >= '0' && c <= '9'     ? c - '0'
            : (c >= 'a' && c <= 'z') ? c - 'a' + 10
            : (c >= 'A' && c <= 'Z') ? c - 'A' + 10
                                     : 99;
    if (d >= base) return false;
    if (__builtin_mul_overflow(v, base, &v) || __builtin_add_overflow(v, d, &v)) return false;
    prev_digit = true;
  }
  if (!prev_digit) return false;
  out = neg ? -v : v;
  return true;
}

bool parse_float(const std::string& text, double& out) {
  std::string s = py_strip(text, nullptr, true, true);
  if (s.empty()) return false;
  std::string t;
  for (char c : s) {
    if (c != '_') t += c;
  }
  std::string l = lower(t);
  if (l == "inf" || l == "+inf" || l == "infinity" || l == "+infinity") {
    out = INFINITY;
    return true;
  }
  if (l == "-inf" || l == "-infinity") {
    out = -INFINITY;
    return true;
  }
  if (l == "nan" || l == "+nan" || l == "-nan") {
    out = NAN;
    return true;
  }
  for (char c : t) {
    if (!(std::isdigit(static_cast<unsigned char>(c)) || c == '.' || c == 'e' || c == 'E' || c == '+' || c == '-')) {
      return false;
    }
  }
  char* end = nullptr;
  out = std::strtod(t.c_str(), &end);
  return end && *end == 0;
}

// jinja2's make_attrgetter: "a.b.0" -> getitem chain.
Value get_path(Interp& in, const Value& item, const Value& attribute) {
  if (attribute.is_int()) return in.getitem(item, attribute);
  const std::string& path = str_arg(in, attribute, "attribute");
  Value v = item;
  size_t pos = 0;
  while (true) {
    size_t dot = path.find('.', pos);
    std::string part = path.substr(pos, dot == std::string::npos ? std::string::npos : dot - pos);
    int64_t idx;
    bool numeric = !part.empty() && std::all_of(part.begin(), part.end(), [](char c) { return c >= '0' && c <= '9'; });
    if (numeric && parse_int(part, 10, idx)) {
      v = in.getitem(v, Value::integer(idx));
    } else {
      v = in.getitem(v, Value::string(part));
    }
    if (dot == std::string::npos) break;
    pos = dot + 1;
  }
  return v;
}

std::vector<Value> seq_items(Interp& in, const Value& v) { return in.iterate(v); }

Value sort_key(const Value& v, bool case_sensitive) {
  if (!case_sensitive && v.is_string()) return Value::string(lower(v.str()));
  return v;
}

bool less_values(Interp& in, const Value& a, const Value& b) {
  if (a.is_undefined()) need_defined(in, a);
  if (b.is_undefined()) need_defined(in, b);
  try {
    return compare(a, b) < 0;
  } catch (const std::invalid_argument& e) {
    in.fail(std::string("'<' not supported between ") + e.what());
  }
}

Value length_of(Interp& in, const Value& v) {
  switch (v.kind()) {
    case Kind::Undefined: return Value::integer(0);
    case Kind::String: return Value::integer(static_cast<int64_t>(utf8_length(v.str())));
    case Kind::List: return Value::integer(static_cast<int64_t>(v.items().size()));
    case Kind::Dict: return Value::integer(static_cast<int64_t>(v.entries().size()));
    default: in.fail(std::string("object of type '") + type_name(v) + "' has no len()");
  }
}

Value items_of(Interp& in, const Value& v) {
  if (v.is_undefined()) return in.make_list({});
  if (!v.is_dict()) in.fail(std::string("can only get item pairs from a mapping, not ") + type_name(v));
  std::vector<Value> out;
  for (const auto& [k, val] : v.entries()) out.push_back(in.make_list({k, val}));
  return in.make_list(std::move(out));
}

std::string ensure_ascii(const std::string& s) {
  std::string out;
  for (uint32_t cp : decode_utf8(s)) {
    if (cp < 0x80) {
      out += static_cast<char>(cp);
      continue;
    }
    auto hex4 = [&](uint32_t u) {
      char buf[16];
      std::snprintf(buf, sizeof(buf), "\\u%04x", u & 0xffffu);
      out += buf;
    };
    if (cp >= 0x10000) {
      uint32_t v = cp - 0x10000;
      hex4(0xd800 + (v >> 10));
      hex4(0xdc00 + (v & 0x3ff));
    } else {
      hex4(cp);
    }
  }
  return out;
}

Value tojson(Interp& in, const Value& input, CallArgs& args) {
  Params p(in, "tojson", args, {"ensure_ascii", "indent", "separators", "sort_keys"});
  JsonOptions opt;
  if (p.has(1)) {
    const Value& ind = *p.get(1);
    opt.has_indent = true;
    if (ind.is_string()) {
      opt.indent = ind.str();
    } else {
      int64_t n = int_arg(in, ind, "tojson indent");
      opt.indent = std::string(static_cast<size_t>(std::clamp<int64_t>(n, 0, 64)), ' ');
    }
    opt.item_sep = ",";
  }
  if (p.has(2)) {
    const Value& sep = *p.get(2);
    if (!sep.is_list() || sep.items().size() != 2 || !sep.items()[0].is_string() || !sep.items()[1].is_string()) {
      in.fail("tojson separators must be a pair of strings");
    }
    opt.item_sep = sep.items()[0].str();
    opt.key_sep = sep.items()[1].str();
  }
  opt.sort_keys = p.get(3) && p.get(3)->truthy();
  std::string out;
  try {
    out = to_json(input, opt, in.limits().max_string_bytes);
  } catch (const std::invalid_argument& e) {
    in.fail(std::string("tojson: ") + e.what());
  } catch (const std::length_error&) {
    in.fail("tojson: JSON text exceeds " + std::to_string(in.limits().max_string_bytes) + " bytes");
  }
  if (p.get(0) && p.get(0)->truthy()) out = ensure_ascii(out);
  in.charge(out.size() / 8);
  return in.make_string(std::move(out));
}

Value indent_filter(Interp& in, const Value& input, CallArgs& args) {
  Params p(in, "indent", args, {"width", "first", "blank"});
  std::string ind = "    ";
  if (p.has(0)) {
    if (p.get(0)->is_string()) {
      ind = p.get(0)->str();
    } else {
      ind = std::string(static_cast<size_t>(std::clamp<int64_t>(int_arg(in, *p.get(0), "indent width"), 0, 1024)), ' ');
    }
  }
  bool first = p.get(1) && p.get(1)->truthy();
  bool blank = p.get(2) && p.get(2)->truthy();
  // jinja2: s += "\n"; lines = s.splitlines(); the first line is never indented (unless `first`), empty lines
  // only with `blank`.
  const std::string s = in.str(input) + "\n";
  const uint64_t n_lines = static_cast<uint64_t>(std::count(s.begin(), s.end(), '\n'));
  in.check_string_size(s.size() + (n_lines + 1) * ind.size());
  std::string rv = first ? ind : "";
  size_t pos = 0;
  for (uint64_t i = 0; pos < s.size(); ++i) {
    size_t nl = s.find('\n', pos);
    if (i > 0) {
      rv += '\n';
      if (blank || nl > pos) rv += ind;
    }
    rv.append(s, pos, nl - pos);
    pos = nl + 1;
  }
  return in.make_string(std::move(rv));
}

Value round_filter(Interp& in, const Value& input, CallArgs& args) {
  Params p(in, "round", args, {"precision", "method"});
  need_defined(in, input);
  if (!input.is_number()) in.fail(std::string("round: expected a number, got ") + type_name(input));
  int64_t prec = p.has(0) ? int_arg(in, *p.get(0), "round precision") : 0;
  std::string method = p.has(1) ? str_arg(in, *p.get(1), "round method") : "common";
  if (method != "common" && method != "ceil" && method != "floor") {
    in.fail("round method must be 'common', 'ceil' or 'floor'");
  }
  prec = std::clamp<int64_t>(prec, -308, 308);
  double x = input.as_double();
  if (method == "common") {
    if (!input.is_bool() && input.is_int() && prec >= 0) return Value::integer(input.as_int());
    if (!std::isfinite(x)) return Value::number(x);
    if (prec >= 0) {
      if (prec > 30) return Value::number(x);
      char buf[400];
      std::snprintf(buf, sizeof(buf), "%.*f", static_cast<int>(prec), x);
      return Value::number(std::strtod(buf, nullptr));
    }
    double f = std::pow(10.0, static_cast<double>(-prec));
    return Value::number(std::nearbyint(x / f) * f);
  }
  double f = std::pow(10.0, static_cast<double>(prec));
  return Value::number((method == "ceil" ? std::ceil(x * f) : std::floor(x * f)) / f);
}

Value format_filter(Interp& in, const std::string& fmt, const std::vector<Value>& args) {
  std::string out;
  size_t ai = 0;
  for (size_t i = 0; i < fmt.size(); ++i) {
    if (fmt[i] != '%') {
      out += fmt[i];
      continue;
    }
    if (++i >= fmt.size()) in.fail("format: incomplete format");
    int prec = -1;
    if (fmt[i] == '.') {
      prec = 0;
      while (++i < fmt.size() && fmt[i] >= '0' && fmt[i] <= '9') prec = std::min(prec * 10 + (fmt[i] - '0'), 100);
      if (i >= fmt.size()) in.fail("format: incomplete format");
    }
    char c = fmt[i];
    if (c == '%') {
      out += '%';
      continue;
    }
    if (ai >= args.size()) in.fail("format: not enough arguments for format string");
    const Value& a = args[ai++];
    if (c == 's') {
      out += in.str(a);
    } else if (c == 'r') {
      out += repr(a, in.limits().max_string_bytes);
    } else if (c == 'd' || c == 'i') {
      if (!a.is_number()) in.fail(std::string("format: %d needs a number, not ") + type_name(a));
      out += a.kind() == Kind::Float ? std::to_string(static_cast<int64_t>(a.as_double())) : std::to_string(a.as_int());
    } else if (c == 'f') {
      if (!a.is_number()) in.fail(std::string("format: %f needs a number, not ") + type_name(a));
      char buf[512];
      std::snprintf(buf, sizeof(buf), "%.*f", prec < 0 ? 6 : prec, a.as_double());
      out += buf;
    } else {
      in.fail(std::string("format: unsupported format character '") + c + "'");
    }
    in.check_string_size(out.size());
  }
  if (ai != args.size()) in.fail("format: not all arguments converted during string formatting");
  return in.make_string(std::move(out));
}

// select/reject/selectattr/rejectattr.
Value select_filter(Interp& in, const Value& input, CallArgs& args, bool by_attr, bool keep) {
  const char* name = by_attr ? (keep ? "selectattr" : "rejectattr") : (keep ? "select" : "reject");
  size_t k = 0;
  Value attr;
  if (by_attr) {
    if (args.pos.empty()) in.fail(std::string(name) + "() needs an attribute name");
    attr = args.pos[k++];
  }
  std::string test;
  if (k < args.pos.size()) test = str_arg(in, args.pos[k++], std::string(name) + " test name");
  if (!test.empty() && !has_test(test)) in.fail("unknown test '" + test + "'");
  CallArgs targs;
  targs.pos.assign(args.pos.begin() + static_cast<std::ptrdiff_t>(k), args.pos.end());
  targs.kw = args.kw;
  std::vector<Value> out;
  for (const Value& item : seq_items(in, input)) {
    in.charge(1);
    Value v = by_attr ? get_path(in, item, attr) : item;
    bool ok;
    if (test.empty()) {
      ok = v.truthy();
    } else {
      CallArgs a = targs;
      ok = call_test(in, test, v, a);
    }
    if (ok == keep) out.push_back(item);
  }
  return in.make_list(std::move(out));
}

Value map_filter(Interp& in, const Value& input, CallArgs& args) {
  bool by_attr = false;
  Value attr, dflt;
  for (const auto& [k, v] : args.kw) {
    if (k == "attribute") {
      by_attr = true;
      attr = v;
    } else if (k == "default") {
      dflt = v;
    }
  }
  std::vector<Value> out;
  if (by_attr) {
    for (const Value& item : seq_items(in, input)) {
      in.charge(1);
      Value v = get_path(in, item, attr);
      out.push_back(v.is_undefined() && !dflt.is_undefined() ? dflt : v);
    }
    return in.make_list(std::move(out));
  }
  if (args.pos.empty()) in.fail("map() needs a filter name or attribute=");
  const std::string fname = str_arg(in, args.pos[0], "map filter name");
  if (!has_filter(fname)) in.fail("unknown filter '" + fname + "'");
  CallArgs fargs;
  fargs.pos.assign(args.pos.begin() + 1, args.pos.end());
  fargs.kw = args.kw;
  for (const Value& item : seq_items(in, input)) {
    in.charge(1);
    CallArgs a = fargs;
    out.push_back(call_filter(in, fname, item, a));
  }
  return in.make_list(std::move(out));
}

Value sort_filter(Interp& in, const Value& input, CallArgs& args) {
  Params p(in, "sort", args, {"reverse", "case_sensitive", "attribute"});
  bool reverse = p.get(0) && p.get(0)->truthy();
  bool cs = p.get(1) && p.get(1)->truthy();
  std::vector<Value> items = seq_items(in, input);
  std::vector<Value> keys;
  for (const Value& it : items) keys.push_back(sort_key(p.has(2) ? get_path(in, it, *p.get(2)) : it, cs));
  std::vector<Value> idx;
  for (size_t i = 0; i < items.size(); ++i) idx.push_back(Value::integer(static_cast<int64_t>(i)));
  in.charge(items.size() * 8 + 1);
  stable_sort_values(idx, [&](const Value& a, const Value& b) {
    const Value& ka = keys[static_cast<size_t>(a.as_int())];
    const Value& kb = keys[static_cast<size_t>(b.as_int())];
    return reverse ? less_values(in, kb, ka) : less_values(in, ka, kb);
  });
  std::vector<Value> out;
  for (const Value& i : idx) out.push_back(items[static_cast<size_t>(i.as_int())]);
  return in.make_list(std::move(out));
}

Value unique_filter(Interp& in, const Value& input, CallArgs& args) {
  Params p(in, "unique", args, {"case_sensitive", "attribute"});
  bool cs = p.get(0) && p.get(0)->truthy();
  std::vector<Value> out, seen;
  for (const Value& it : seq_items(in, input)) {
    Value key = sort_key(p.has(1) ? get_path(in, it, *p.get(1)) : it, cs);
    in.charge(seen.size() / 16 + 1);
    bool dup = false;
    for (const Value& s : seen) dup = dup || equals(s, key);
    if (!dup) {
      seen.push_back(key);
      out.push_back(it);
    }
  }
  return in.make_list(std::move(out));
}

Value minmax_filter(Interp& in, const Value& input, CallArgs& args, bool want_max) {
  Params p(in, want_max ? "max" : "min", args, {"case_sensitive", "attribute"});
  bool cs = p.get(0) && p.get(0)->truthy();
  std::vector<Value> items = seq_items(in, input);
  if (items.empty()) return Value::undefined("no aggregated item, sequence was empty");
  size_t best = 0;
  Value best_key = sort_key(p.has(1) ? get_path(in, items[0], *p.get(1)) : items[0], cs);
  for (size_t i = 1; i < items.size(); ++i) {
    Value k = sort_key(p.has(1) ? get_path(in, items[i], *p.get(1)) : items[i], cs);
    if (want_max ? less_values(in, best_key, k) : less_values(in, k, best_key)) {
      best = i;
      best_key = k;
    }
  }
  return items[best];
}

Value dictsort_filter(Interp& in, const Value& input, CallArgs& args) {
  Params p(in, "dictsort", args, {"case_sensitive", "by", "reverse"});
  if (!input.is_dict()) in.fail(std::string("dictsort: expected a mapping, got ") + type_name(input));
  bool cs = p.get(0) && p.get(0)->truthy();
  std::string by = p.has(1) ? str_arg(in, *p.get(1), "dictsort by") : "key";
  if (by != "key" && by != "value") in.fail("dictsort: 'by' must be 'key' or 'value'");
  bool reverse = p.get(2) && p.get(2)->truthy();
  std::vector<Value> pairs;
  for (const auto& [k, v] : input.entries()) pairs.push_back(in.make_list({k, v}));
  in.charge(pairs.size() * 8 + 1);
  size_t pos = by == "key" ? 0 : 1;
  stable_sort_values(pairs, [&](const Value& a, const Value& b) {
    Value ka = sort_key(a.items()[pos], cs), kb = sort_key(b.items()[pos], cs);
    return reverse ? less_values(in, kb, ka) : less_values(in, ka, kb);
  });
  return in.make_list(std::move(pairs));
}

using FilterFn = Value (*)(Interp&, const Value&, CallArgs&);

const std::map<std::string, FilterFn>& filters() {
  static const std::map<std::string, FilterFn> table = {
      {"abs",
       [](Interp& in, const Value& v, CallArgs& a) -> Value {
         Params(in, "abs", a, {});
         need_defined(in, v);
         if (!v.is_number()) in.fail(std::string("bad operand type for abs(): '") + type_name(v) + "'");
         if (v.kind() == Kind::Float) return Value::number(std::fabs(v.as_double()));
         if (v.as_int() == INT64_MIN) in.fail("integer overflow in abs");
         return Value::integer(v.as_int() < 0 ? -v.as_int() : v.as_int());
       }},
      {"attr",
       [](Interp& in, const Value& v, CallArgs& a) -> Value {
         Params p(in, "attr", a, {"name"});
         if (!p.get(0)) in.fail("attr() needs a name");
         return in.getattr(v, str_arg(in, *p.get(0), "attr name"));
       }},
      {"batch",
       [](Interp& in, const Value& v, CallArgs& a) -> Value {
         Params p(in, "batch", a, {"linecount", "fill_with"});
         if (!p.get(0)) in.fail("batch() needs a line count");
         int64_t n = int_arg(in, *p.get(0), "batch linecount");
         if (n <= 0) in.fail("batch linecount must be positive");
         std::vector<Value> out, cur;
         for (const Value& it : seq_items(in, v)) {
           cur.push_back(it);
           if (static_cast<int64_t>(cur.size()) == n) {
             out.push_back(in.make_list(std::move(cur)));
             cur.clear();
           }
         }
         if (!cur.empty()) {
           if (p.get(1)) {
             while (static_cast<int64_t>(cur.size()) < n) cur.push_back(*p.get(1));
           }
           out.push_back(in.make_list(std::move(cur)));
         }
         return in.make_list(std::move(out));
       }},
      {"capitalize",
       [](Interp& in, const Value& v, CallArgs& a) -> Value {
         Params(in, "capitalize", a, {});
         return in.make_string(capitalize(in.str(v)));
       }},
      {"count",
       [](Interp& in, const Value& v, CallArgs& a) -> Value {
         Params(in, "count", a, {});
         return length_of(in, v);
       }},
      {"default", nullptr},
      {"d", nullptr},
      {"dictsort", dictsort_filter},
      {"escape",
       [](Interp& in, const Value& v, CallArgs& a) -> Value {
         Params(in, "escape", a, {});
         return in.make_string(html_escape(in.str(v)));
       }},
      {"e", nullptr},
      {"forceescape", nullptr},
      {"first",
       [](Interp& in, const Value& v, CallArgs& a) -> Value {
         Params(in, "first", a, {});
         if (v.is_list())
           return v.items().empty() ? Value::undefined("no first item, sequence was empty") : v.items()[0];
         std::vector<Value> items = seq_items(in, v);
         return items.empty() ? Value::undefined("no first item, sequence was empty") : items[0];
       }},
      {"float",
       [](Interp& in, const Value& v, CallArgs& a) -> Value {
         Params p(in, "float", a, {"default"});
         need_defined(in, v);
         Value dflt = p.get_or(0, Value::number(0.0));
         if (v.is_number()) return Value::number(v.as_double());
         double d;
         if (v.is_string() && parse_float(v.str(), d)) return Value::number(d);
         return dflt;
       }},
      {"format",
       [](Interp& in, const Value& v, CallArgs& a) -> Value {
         if (!a.kw.empty()) in.fail("format: keyword arguments are not supported");
         return format_filter(in, in.str(v), a.pos);
       }},
      {"indent", indent_filter},
      {"int",
       [](Interp& in, const Value& v, CallArgs& a) -> Value {
         Params p(in, "int", a, {"default", "base"});
         need_defined(in, v);
         Value dflt = p.get_or(0, Value::integer(0));
         int64_t base = p.has(1) ? int_arg(in, *p.get(1), "int base") : 10;
         if (base < 2 || base > 36) in.fail("int() base must be between 2 and 36");
         if (v.is_int() || v.is_bool()) return Value::integer(v.as_int());
         if (v.kind() == Kind::Float) {
           double d = v.as_double();
           if (!std::isfinite(d) || std::fabs(d) >= 9.2e18) return dflt;
           return Value::integer(static_cast<int64_t>(d));
         }
         if (v.is_string()) {
           int64_t i;
           if (parse_int(v.str(), static_cast<int>(base), i)) return Value::integer(i);
           double d;
           if (parse_float(v.str(), d) && std::isfinite(d) && std::fabs(d) < 9.2e18) {
             return Value::integer(static_cast<int64_t>(d));
           }
         }
         return dflt;
       }},
      {"items",
       [](Interp& in, const Value& v, CallArgs& a) -> Value {
         Params(in, "items", a, {});
         return items_of(in, v);
       }},
      {"join",
       [](Interp& in, const Value& v, CallArgs& a) -> Value {
         Params p(in, "join", a, {"d", "attribute"});
         std::string sep = p.has(0) ? in.str(*p.get(0)) : "";
         std::string out;
         bool first = true;
         for (const Value& it : seq_items(in, v)) {
           if (!first) out += sep;
           first = false;
           out += in.str(p.has(1) ? get_path(in, it, *p.get(1)) : it);
           in.check_string_size(out.size());
         }
         return in.make_string(std::move(out));
       }},
      {"last",
       [](Interp& in, const Value& v, CallArgs& a) -> Value {
         Params(in, "last", a, {});
         std::vector<Value> items = v.is_list() ? v.items() : seq_items(in, v);
         return items.empty() ? Value::undefined("no last item, sequence was empty") : items.back();
       }},
      {"length",
       [](Interp& in, const Value& v, CallArgs& a) -> Value {
         Params(in, "length", a, {});
         return length_of(in, v);
       }},
      {"list",
       [](Interp& in, const Value& v, CallArgs& a) -> Value {
         Params(in, "list", a, {});
         return in.make_list(seq_items(in, v));
       }},
      {"lower",
       [](Interp& in, const Value& v, CallArgs& a) -> Value {
         Params(in, "lower", a, {});
         return in.make_string(lower(in.str(v)));
       }},
      {"map", map_filter},
      {"max", [](Interp& in, const Value& v, CallArgs& a) { return minmax_filter(in, v, a, true); }},
      {"min", [](Interp& in, const Value& v, CallArgs& a) { return minmax_filter(in, v, a, false); }},
      {"reject", [](Interp& in, const Value& v, CallArgs& a) { return select_filter(in, v, a, false, false); }},
      {"rejectattr", [](Interp& in, const Value& v, CallArgs& a) { return select_filter(in, v, a, true, false); }},
      {"replace",
       [](Interp& in, const Value& v, CallArgs& a) -> Value {
         Params p(in, "replace", a, {"old", "new", "count"});
         if (!p.get(0) || !p.get(1)) in.fail("replace() needs old and new strings");
         int64_t count = p.has(2) ? int_arg(in, *p.get(2), "replace count") : -1;
         return py_replace(in, in.str(v), in.str(*p.get(0)), in.str(*p.get(1)), count);
       }},
      {"reverse",
       [](Interp& in, const Value& v, CallArgs& a) -> Value {
         Params(in, "reverse", a, {});
         if (v.is_string()) {
           std::vector<uint32_t> cps = decode_utf8(v.str());
           std::string out;
           for (size_t i = cps.size(); i > 0; --i) append_utf8(out, cps[i - 1]);
           return in.make_string(std::move(out));
         }
         std::vector<Value> items = seq_items(in, v);
         std::reverse(items.begin(), items.end());
         return in.make_list(std::move(items));
       }},
      {"round", round_filter},
      {"safe",
       [](Interp& in, const Value& v, CallArgs& a) -> Value {
         Params(in, "safe", a, {});
         return v.is_string() ? v : in.make_string(in.str(v));
       }},
      {"select", [](Interp& in, const Value& v, CallArgs& a) { return select_filter(in, v, a, false, true); }},
      {"selectattr", [](Interp& in, const Value& v, CallArgs& a) { return select_filter(in, v, a, true, true); }},
      {"sort", sort_filter},
      {"string",
       [](Interp& in, const Value& v, CallArgs& a) -> Value {
         Params(in, "string", a, {});
         return v.is_string() ? v : in.make_string(in.str(v));
       }},
      {"sum",
       [](Interp& in, const Value& v, CallArgs& a) -> Value {
         Params p(in, "sum", a, {"attribute", "start"});
         Value total = p.get_or(1, Value::integer(0));
         for (const Value& it : seq_items(in, v)) {
           in.charge(1);
           Value x = p.has(0) ? get_path(in, it, *p.get(0)) : it;
           if (!total.is_number() || !x.is_number()) {
             in.fail(std::string("unsupported operand type(s) for +: '") + type_name(total) + "' and '" + type_name(x) +
                     "'");
           }
           if (total.kind() != Kind::Float && x.kind() != Kind::Float) {
             int64_t r;
             if (__builtin_add_overflow(total.as_int(), x.as_int(), &r)) in.fail("integer overflow in sum");
             total = Value::integer(r);
           } else {
             total = Value::number(total.as_double() + x.as_double());
           }
         }
         return total;
       }},
      {"title",
       [](Interp& in, const Value& v, CallArgs& a) -> Value {
         Params(in, "title", a, {});
         return in.make_string(jinja_title(in.str(v)));
       }},
      {"tojson", tojson},
      {"trim",
       [](Interp& in, const Value& v, CallArgs& a) -> Value {
         Params p(in, "trim", a, {"chars"});
         if (p.has(0)) str_arg(in, *p.get(0), "trim chars");
         return in.make_string(py_strip(in.str(v), p.get(0), true, true));
       }},
      {"unique", unique_filter},
      {"upper",
       [](Interp& in, const Value& v, CallArgs& a) -> Value {
         Params(in, "upper", a, {});
         return in.make_string(upper(in.str(v)));
       }},
      {"wordcount",
       [](Interp& in, const Value& v, CallArgs& a) -> Value {
         Params(in, "wordcount", a, {});
         int64_t n = 0;
         bool in_word = false;
         for (uint32_t c : decode_utf8(in.str(v))) {
           bool w = c == '_' || is_digit(c) || is_alpha(c) || (c >= 0x80 && !is_py_space(c));
           if (w && !in_word) ++n;
           in_word = w;
         }
         return Value::integer(n);
       }},
  };
  return table;
}

Value default_filter(Interp& in, const Value& v, CallArgs& a) {
  Params p(in, "default", a, {"default_value", "boolean"});
  bool boolean = p.get(1) && p.get(1)->truthy();
  if (v.is_undefined() || (boolean && !v.truthy())) return p.get_or(0, Value::string(""));
  return v;
}

bool is_lower_str(const std::string& s) {
  bool cased = false;
  for (uint32_t c : decode_utf8(s)) {
    if (to_upper(c) != c) cased = true;
    if (to_lower(c) != c) return false;
  }
  return cased;
}

bool is_upper_str(const std::string& s) {
  bool cased = false;
  for (uint32_t c : decode_utf8(s)) {
    if (to_lower(c) != c) cased = true;
    if (to_upper(c) != c) return false;
  }
  return cased;
}

const Value& test_arg(Interp& in, const std::string& name, CallArgs& a) {
  if (a.pos.size() != 1 || !a.kw.empty()) in.fail("test '" + name + "' takes exactly one argument");
  return a.pos[0];
}

int test_compare(Interp& in, const Value& x, const Value& y) {
  if (x.is_undefined()) need_defined(in, x);
  if (y.is_undefined()) need_defined(in, y);
  try {
    return compare(x, y);
  } catch (const std::invalid_argument& e) {
    in.fail(std::string("comparison not supported between ") + e.what());
  }
}

const std::vector<std::string>& test_names() {
  static const std::vector<std::string> names = {
      "defined",     "undefined", "none",    "boolean",  "false",       "true",     "integer", "float",
      "number",      "string",    "mapping", "iterable", "sequence",    "callable", "even",    "odd",
      "divisibleby", "eq",        "equalto", "==",       "ne",          "!=",       "lt",      "lessthan",
      "<",           "le",        "<=",      "gt",       "greaterthan", ">",        "ge",      ">=",
      "in",          "sameas",    "lower",   "upper",    "escaped",     "filter",   "test"};
  return names;
}

// ---- methods -------------------------------------------------------------------------

Value bound(const std::string& name, std::function<Value(Interp&, CallArgs&)> fn) {
  return Value::callable(name, std::move(fn));
}

Value string_method(Interp& in, const Value& obj, const std::string& name) {
  (void)in;
  if (name == "strip" || name == "lstrip" || name == "rstrip") {
    return bound(name, [obj, name](Interp& in, CallArgs& a) {
      const std::string& s = obj.str();
      Params p(in, name, a, {"chars"});
      if (p.has(0)) str_arg(in, *p.get(0), name + " chars");
      return in.make_string(py_strip(s, p.get(0), name != "rstrip", name != "lstrip"));
    });
  }
  if (name == "startswith" || name == "endswith") {
    return bound(name, [obj, name](Interp& in, CallArgs& a) {
      const std::string& s = obj.str();
      Params p(in, name, a, {"prefix"});
      if (!p.get(0)) in.fail(name + "() takes one argument");
      std::vector<Value> opts = p.get(0)->is_list() ? p.get(0)->items() : std::vector<Value>{*p.get(0)};
      for (const Value& o : opts) {
        const std::string& x = str_arg(in, o, name + " argument");
        bool ok = name == "startswith" ? s.compare(0, x.size(), x) == 0
                                       : (s.size() >= x.size() && s.compare(s.size() - x.size(), x.size(), x) == 0);
        if (ok) return Value::boolean(true);
      }
      return Value::boolean(false);
    });
  }
  if (name == "split" || name == "rsplit") {
    return bound(name, [obj, name](Interp& in, CallArgs& a) {
      const std::string& s = obj.str();
      Params p(in, name, a, {"sep", "maxsplit"});
      int64_t maxsplit = p.has(1) ? int_arg(in, *p.get(1), "maxsplit") : -1;
      std::vector<std::string> parts;
      if (name == "rsplit" && maxsplit >= 0) {
        // rsplit with a limit: split fully, then re-join the leading pieces.
        std::vector<std::string> all = py_split(in, s, p.get(0), -1);
        if (static_cast<int64_t>(all.size()) > maxsplit + 1) {
          if (!p.has(0)) in.fail("rsplit() with maxsplit needs an explicit separator");
          size_t keep = all.size() - static_cast<size_t>(maxsplit);
          std::string head;
          for (size_t i = 0; i < keep; ++i) head += (i ? p.get(0)->str() : "") + all[i];
          parts.push_back(head);
          parts.insert(parts.end(), all.begin() + static_cast<std::ptrdiff_t>(keep), all.end());
        } else {
          parts = std::move(all);
        }
      } else {
        parts = py_split(in, s, p.get(0), maxsplit);
      }
      std::vector<Value> out;
      for (auto& x : parts) out.push_back(Value::string(std::move(x)));
      return in.make_list(std::move(out));
    });
  }
  if (name == "splitlines") {
    return bound(name, [obj](Interp& in, CallArgs& a) {
      const std::string& s = obj.str();
      Params p(in, "splitlines", a, {"keepends"});
      bool keep = p.get(0) && p.get(0)->truthy();
      std::vector<Value> out;
      size_t pos = 0;
      while (pos < s.size()) {
        size_t nl = s.find_first_of("\r\n", pos);
        if (nl == std::string::npos) {
          out.push_back(Value::string(s.substr(pos)));
          break;
        }
        size_t end = nl + ((s[nl] == '\r' && nl + 1 < s.size() && s[nl + 1] == '\n') ? 2 : 1);
        out.push_back(Value::string(s.substr(pos, (keep ? end : nl) - pos)));
        if (out.size() > in.limits().max_list_items) in.fail("splitlines() result has too many lines");
        pos = end;
      }
      return in.make_list(std::move(out));
    });
  }
  using StrFn = std::string (*)(const std::string&);
  static const std::map<std::string, StrFn> simple = {
      {"upper", upper}, {"lower", lower}, {"title", py_title}, {"capitalize", capitalize}};
  auto it = simple.find(name);
  if (it != simple.end()) {
    StrFn f = it->second;
    return bound(name, [obj, f, name](Interp& in, CallArgs& a) {
      const std::string& s = obj.str();
      Params(in, name, a, {});
      return in.make_string(f(s));
    });
  }
  if (name == "replace") {
    return bound(name, [obj](Interp& in, CallArgs& a) {
      const std::string& s = obj.str();
      Params p(in, "replace", a, {"old", "new", "count"});
      if (!p.get(0) || !p.get(1)) in.fail("replace() needs old and new strings");
      int64_t count = p.has(2) ? int_arg(in, *p.get(2), "replace count") : -1;
      return py_replace(in, s, str_arg(in, *p.get(0), "replace old"), str_arg(in, *p.get(1), "replace new"), count);
    });
  }
  if (name == "find" || name == "rfind" || name == "index" || name == "rindex" || name == "count") {
    return bound(name, [obj, name](Interp& in, CallArgs& a) {
      const std::string& s = obj.str();
      Params p(in, name, a, {"sub"});
      if (!p.get(0)) in.fail(name + "() takes one argument");
      const std::string& sub = str_arg(in, *p.get(0), name + " argument");
      in.charge_scan(s.size(), sub.size() + 1);
      if (name == "count") {
        if (sub.empty()) return Value::integer(static_cast<int64_t>(utf8_length(s)) + 1);
        int64_t n = 0;
        for (size_t pos = s.find(sub); pos != std::string::npos; pos = s.find(sub, pos + sub.size())) ++n;
        return Value::integer(n);
      }
      int64_t r = py_find(s, sub, name[0] == 'r');
      if (r < 0 && (name == "index" || name == "rindex")) in.fail("substring not found");
      return Value::integer(r);
    });
  }
  if (name == "join") {
    return bound(name, [obj](Interp& in, CallArgs& a) {
      const std::string& s = obj.str();
      Params p(in, "join", a, {"iterable"});
      if (!p.get(0)) in.fail("join() takes one argument");
      std::string out;
      bool first = true;
      for (const Value& v : in.iterate(*p.get(0))) {
        if (!first) out += s;
        first = false;
        out += str_arg(in, v, "join item");
        in.check_string_size(out.size());
      }
      return in.make_string(std::move(out));
    });
  }
  if (name == "isdigit" || name == "isalpha" || name == "isalnum" || name == "isspace" || name == "islower" ||
      name == "isupper") {
    return bound(name, [obj, name](Interp& in, CallArgs& a) {
      const std::string& s = obj.str();
      Params(in, name, a, {});
      if (name == "islower") return Value::boolean(is_lower_str(s));
      if (name == "isupper") return Value::boolean(is_upper_str(s));
      std::vector<uint32_t> cps = decode_utf8(s);
      if (cps.empty()) return Value::boolean(false);
      for (uint32_t c : cps) {
        bool ok = name == "isdigit"   ? is_digit(c)
                  : name == "isalpha" ? is_alpha(c)
                  : name == "isalnum" ? (is_alpha(c) || is_digit(c))
                                      : is_py_space(c);
        if (!ok) return Value::boolean(false);
      }
      return Value::boolean(true);
    });
  }
  if (name == "format") {
    return bound(name, [obj](Interp& in, CallArgs& a) {
      const std::string& s = obj.str();
      std::string out;
      size_t auto_idx = 0;
      for (size_t i = 0; i < s.size(); ++i) {
        char c = s[i];
        if (c == '}' && i + 1 < s.size() && s[i + 1] == '}') {
          out += '}';
          ++i;
        } else if (c == '{' && i + 1 < s.size() && s[i + 1] == '{') {
          out += '{';
          ++i;
        } else if (c == '{') {
          size_t e = s.find('}', i);
          if (e == std::string::npos) in.fail("format: single '{' encountered in format string");
          std::string field = s.substr(i + 1, e - i - 1);
          if (field.find_first_of(":!") != std::string::npos) in.fail("format: format specs are not supported");
          const Value* v = nullptr;
          int64_t idx;
          if (field.empty()) {
            if (auto_idx < a.pos.size()) v = &a.pos[auto_idx];
            ++auto_idx;
          } else if (parse_int(field, 10, idx)) {
            if (idx >= 0 && static_cast<size_t>(idx) < a.pos.size()) v = &a.pos[static_cast<size_t>(idx)];
          } else {
            for (const auto& [k, kv] : a.kw) {
              if (k == field) v = &kv;
            }
          }
          if (!v) in.fail("format: no argument for field '{" + field + "}'");
          out += in.str(*v);
          in.check_string_size(out.size());
          i = e;
        } else {
          out += c;
        }
      }
      return in.make_string(std::move(out));
    });
  }
  return Value::undefined();
}

Value dict_method(Interp& in, const Value& obj, const std::string& name) {
  (void)in;
  if (name == "items") {
    return bound(name, [obj](Interp& in, CallArgs& a) {
      Params(in, "items", a, {});
      return items_of(in, obj);
    });
  }
  if (name == "keys" || name == "values") {
    return bound(name, [obj, name](Interp& in, CallArgs& a) {
      Params(in, name, a, {});
      std::vector<Value> out;
      for (const auto& [k, v] : obj.entries()) out.push_back(name == "keys" ? k : v);
      return in.make_list(std::move(out));
    });
  }
  if (name == "get") {
    return bound(name, [obj](Interp& in, CallArgs& a) {
      Params p(in, "get", a, {"key", "default"});
      if (!p.get(0)) in.fail("get() needs a key");
      const Value* v = obj.find(*p.get(0));
      return v ? *v : p.get_or(1, Value::none());
    });
  }
  return Value::undefined();
}

Value list_method(Interp& in, const Value& obj, const std::string& name) {
  (void)in;
  if (name == "index" || name == "count") {
    return bound(name, [obj, name](Interp& in, CallArgs& a) {
      Params p(in, name, a, {"value"});
      if (!p.get(0)) in.fail(name + "() takes one argument");
      in.charge(obj.items().size() / 16 + 1);
      int64_t n = 0;
      for (size_t i = 0; i < obj.items().size(); ++i) {
        if (equals(obj.items()[i], *p.get(0))) {
          if (name == "index") return Value::integer(static_cast<int64_t>(i));
          ++n;
        }
      }
      if (name == "index") in.fail(repr(*p.get(0), 256) + " is not in list");
      return Value::integer(n);
    });
  }
  return Value::undefined();
}

}  // namespace

// ---- public entry points ---------------------------------------------------------------

bool has_filter(const std::string& name) { return filters().count(name) > 0; }

bool has_test(const std::string& name) {
  const auto& n = test_names();
  return std::find(n.begin(), n.end(), name) != n.end();
}

Value call_filter(Interp& in, const std::string& name, const Value& input, CallArgs& args) {
  if (input.is_string()) in.charge(input.str().size() / 16);  // most string filters visit every character
  if (name == "default" || name == "d") return default_filter(in, input, args);
  if (name == "e" || name == "forceescape") return filters().at("escape")(in, input, args);
  auto it = filters().find(name);
  if (it == filters().end()) in.fail("unknown filter '" + name + "'");
  return it->second(in, input, args);
}

bool call_test(Interp& in, const std::string& n, const Value& v, CallArgs& a) {
  if (n == "defined" || n == "undefined") {
    Params(in, n, a, {});
    return v.is_undefined() == (n == "undefined");
  }
  if (n == "none") return v.is_none();
  if (n == "boolean") return v.is_bool();
  if (n == "false") return v.is_bool() && !v.as_bool();
  if (n == "true") return v.is_bool() && v.as_bool();
  if (n == "integer") return v.is_int();
  if (n == "float") return v.kind() == Kind::Float;
  if (n == "number") return v.is_number();
  if (n == "string") return v.is_string();
  if (n == "mapping") return v.is_dict();
  if (n == "iterable") return v.is_list() || v.is_dict() || v.is_string() || v.is_undefined();
  if (n == "sequence") return v.is_list() || v.is_dict() || v.is_string() || v.is_undefined();
  if (n == "callable") return v.is_callable();
  if (n == "escaped") return false;
  if (n == "even" || n == "odd") {
    need_defined(in, v);
    if (!v.is_number()) in.fail("test '" + n + "' needs a number, not " + type_name(v));
    if (v.kind() == Kind::Float) {
      double r = std::fmod(v.as_double(), 2.0);
      return n == "even" ? r == 0 : std::fabs(r) == 1;
    }
    return (v.as_int() % 2 == 0) == (n == "even");
  }
  if (n == "lower" || n == "upper") {
    std::string s = in.str(v);
    in.charge(s.size() / 16);
    return n == "lower" ? is_lower_str(s) : is_upper_str(s);
  }
  if (n == "filter" || n == "test") {
    std::string s = in.str(v);
    return n == "filter" ? has_filter(s) : has_test(s);
  }
  const Value& x = test_arg(in, n, a);
  if (n == "divisibleby") {
    need_defined(in, v);
    if (!v.is_number() || !x.is_number()) in.fail("divisibleby needs numbers");
    if (v.kind() == Kind::Float || x.kind() == Kind::Float) {
      if (x.as_double() == 0) in.fail("float modulo by zero");
      return std::fmod(v.as_double(), x.as_double()) == 0;
    }
    if (x.as_int() == 0) in.fail("integer division or modulo by zero");
    if (x.as_int() == -1) return true;
    return v.as_int() % x.as_int() == 0;
  }
  if (n == "eq" || n == "equalto" || n == "==") return equals(v, x);
  if (n == "ne" || n == "!=") return !equals(v, x);
  if (n == "lt" || n == "lessthan" || n == "<") return test_compare(in, v, x) < 0;
  if (n == "le" || n == "<=") return test_compare(in, v, x) <= 0;
  if (n == "gt" || n == "greaterthan" || n == ">") return test_compare(in, v, x) > 0;
  if (n == "ge" || n == ">=") return test_compare(in, v, x) >= 0;
  if (n == "in") return in.contains(x, v);
  if (n == "sameas")
    return v.same_object(x) || (v.is_none() && x.is_none()) ||
           (v.is_bool() && x.is_bool() && v.as_bool() == x.as_bool());
  in.fail("unknown test '" + n + "'");
}

Value get_method(Interp& in, const Value& obj, const std::string& name) {
  switch (obj.kind()) {
    case Kind::String: in.charge(obj.str().size() / 16); return string_method(in, obj, name);
    case Kind::Dict: return dict_method(in, obj, name);
    case Kind::List: return list_method(in, obj, name);
    default: return Value::undefined();
  }
}

void add_globals(Scope& scope) {
  scope.set("range", Value::callable("range", [](Interp& in, CallArgs& a) -> Value {
              if (!a.kw.empty() || a.pos.empty() || a.pos.size() > 3) in.fail("range() takes 1 to 3 integer arguments");
              int64_t start = 0, stop, step = 1;
              if (a.pos.size() == 1) {
                stop = int_arg(in, a.pos[0], "range argument");
              } else {
                start = int_arg(in, a.pos[0], "range argument");
                stop = int_arg(in, a.pos[1], "range argument");
                if (a.pos.size() == 3) step = int_arg(in, a.pos[2], "range step");
              }
              if (step == 0) in.fail("range() arg 3 must not be zero");
              constexpr int64_t kMaxRange = 100000;  // jinja2's sandbox limit
              std::vector<Value> out;
              for (int64_t i = start; step > 0 ? i < stop : i > stop;) {
                if (static_cast<int64_t>(out.size()) >= kMaxRange) {
                  in.fail("range too big: the sandbox blocks ranges larger than " + std::to_string(kMaxRange));
                }
                out.push_back(Value::integer(i));
                if (__builtin_add_overflow(i, step, &i)) break;
              }
              return in.make_list(std::move(out));
            }));
  auto make_mapping = [](bool ns) {
    return [ns](Interp& in, CallArgs& a) -> Value {
      std::vector<std::pair<Value, Value>> entries;
      if (a.pos.size() > 1)
        in.fail(std::string(ns ? "namespace" : "dict") + "() takes at most one positional argument");
      if (!a.pos.empty()) {
        const Value& init = a.pos[0];
        if (init.is_dict() || init.is_namespace()) {
          entries = init.entries();
        } else if (init.is_list()) {
          for (const Value& kv : init.items()) {
            if (!kv.is_list() || kv.items().size() != 2) in.fail("dict() sequence elements must be pairs");
            entries.emplace_back(kv.items()[0], kv.items()[1]);
          }
        } else if (!init.is_undefined()) {
          in.fail(std::string("cannot convert ") + type_name(init) + " to a mapping");
        }
      }
      for (const auto& [k, v] : a.kw) entries.emplace_back(Value::string(k), v);
      return in.make_dict(std::move(entries), ns);
    };
  };
  scope.set("namespace", Value::callable("namespace", make_mapping(true)));
  scope.set("dict", Value::callable("dict", make_mapping(false)));
  scope.set("raise_exception", Value::callable("raise_exception", [](Interp& in, CallArgs& a) -> Value {
              std::string msg = a.pos.empty() ? "" : in.str(a.pos[0]);
              throw Error(in.source(), "raise_exception", msg);
            }));
  scope.set("strftime_now", Value::callable("strftime_now", [](Interp& in, CallArgs& a) -> Value {
              if (a.pos.size() != 1 || !a.pos[0].is_string()) in.fail("strftime_now() takes one format string");
              const std::string& fmt = a.pos[0].str();
              if (fmt.size() > 256) in.fail("strftime_now() format is too long");
              std::time_t now = std::time(nullptr);
              std::tm tm{};
              localtime_r(&now, &tm);
              std::string buf(4096, '\0');
              size_t n = fmt.empty() ? 0 : std::strftime(buf.data(), buf.size(), fmt.c_str(), &tm);
              if (n == 0 && !fmt.empty()) {
                // strftime also returns 0 for formats that expand to nothing; only a very long expansion overflows 4096
                // bytes.
                bool empty_ok = fmt.find('%') != std::string::npos;
                if (!empty_ok) in.fail("strftime_now() result is too long");
              }
              buf.resize(n);
              return in.make_string(std::move(buf));
            }));
}

void stable_sort_values(std::vector<Value>& v, const std::function<bool(const Value&, const Value&)>& less) {
  const size_t n = v.size();
  std::vector<Value> tmp(n);
  for (size_t width = 1; width < n; width *= 2) {
    for (size_t lo = 0; lo < n; lo += 2 * width) {
      size_t mid = std::min(lo + width, n), hi = std::min(lo + 2 * width, n);
      size_t i = lo, j = mid, k = lo;
      while (i < mid && j < hi) tmp[k++] = less(v[j], v[i]) ? v[j++] : v[i++];
      while (i < mid) tmp[k++] = v[i++];
      while (j < hi) tmp[k++] = v[j++];
    }
    v.swap(tmp);
  }
}

}  // namespace kite::jinja
