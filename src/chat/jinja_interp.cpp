// The tree-walking interpreter: statements, expressions, scopes, macros, and
// the bounded-evaluation bookkeeping (steps, bytes, nesting).
#include "chat/jinja_interp.h"

#include <cmath>
#include <limits>
#include <stdexcept>

#include "core/error.h"

namespace kite::jinja {

struct EvalGuard {
  explicit EvalGuard(Interp& in) : in_(in) {
    if (++in_.eval_depth_ > in_.limits_.max_eval_depth) {
      in_.fail("template evaluation nested too deeply (more than " + std::to_string(in_.limits_.max_eval_depth) +
               " levels)");
    }
  }
  ~EvalGuard() { --in_.eval_depth_; }
  Interp& in_;
};

namespace {

struct CallDepthGuard {
  CallDepthGuard(int& depth, int limit, Interp& in) : depth_(depth) {
    if (++depth_ > limit) {
      --depth_;
      in.fail("macro calls nested too deeply (more than " + std::to_string(limit) + " levels)");
    }
  }
  ~CallDepthGuard() { --depth_; }
  int& depth_;
};

std::string undefined_message(const Value& v) { return v.str().empty() ? "value is undefined" : v.str(); }

std::string object_repr(const Value& v) {
  if (v.is_none()) return "None";
  return std::string(type_name(v)) + " object";
}

bool body_uses_name(const Body& body, const std::string& name, int depth);

bool expr_uses_name(const Expr* e, const std::string& name, int depth) {
  if (!e || depth > 4 * kMaxParseDepth) return false;
  if (e->type == ExprType::Name && e->name == name) return true;
  for (const Expr* c : {e->a.get(), e->b.get(), e->c.get()}) {
    if (expr_uses_name(c, name, depth + 1)) return true;
  }
  for (const auto& c : e->args) {
    if (expr_uses_name(c.get(), name, depth + 1)) return true;
  }
  for (const auto& [k, c] : e->kwargs) {
    if (expr_uses_name(c.get(), name, depth + 1)) return true;
  }
  return false;
}

bool body_uses_name(const Body& body, const std::string& name, int depth) {
  if (depth > 4 * kMaxParseDepth) return false;
  for (const auto& s : body) {
    if (expr_uses_name(s->expr.get(), name, depth + 1) || expr_uses_name(s->cond.get(), name, depth + 1)) return true;
    for (const auto& e : s->exprs) {
      if (expr_uses_name(e.get(), name, depth + 1)) return true;
    }
    for (const auto& b : s->bodies) {
      if (body_uses_name(b, name, depth + 1)) return true;
    }
  }
  return false;
}

// Does `v` hold (at any depth) the dict object `target`? Used to refuse namespace reference cycles.
bool holds_object(Interp& in, const Value& v, const DictObj* target, int depth) {
  if (depth > 4 * in.limits().max_value_depth) return false;
  in.charge(1);
  if ((v.is_dict() || v.is_namespace()) && &v.dict_obj() == target) return true;
  if (v.is_list()) {
    for (const Value& e : v.items()) {
      if (holds_object(in, e, target, depth + 1)) return true;
    }
  } else if (v.is_dict() || v.is_namespace()) {
    for (const auto& [k, e] : v.entries()) {
      if (holds_object(in, e, target, depth + 1)) return true;
    }
  }
  return false;
}

int64_t floor_div(int64_t a, int64_t b) {
  int64_t q = a / b;
  if ((a % b != 0) && ((a < 0) != (b < 0))) --q;
  return q;
}

int64_t py_mod(int64_t a, int64_t b) {
  int64_t r = a % b;
  if (r != 0 && ((r < 0) != (b < 0))) r += b;
  return r;
}

}  // namespace

Interp::Interp(const Template& tmpl, const Limits& limits) : tmpl_(tmpl), limits_(limits) {}

Interp::~Interp() {
  for (auto& s : closure_scopes_) {
    // Move the values out first: destroying them may release other scopes.
    auto vars = std::move(s->vars);
    s->vars.clear();
  }
}

void Interp::fail(const std::string& msg) const {
  throw Error(tmpl_.source, "chat_template", "line " + std::to_string(line_) + ": " + msg);
}

void Interp::charge(uint64_t ops) {
  ops_ += ops;
  if (ops_ > limits_.max_ops) {
    fail("template evaluation exceeded " + std::to_string(limits_.max_ops) + " steps (runaway loop or recursion?)");
  }
}

void Interp::charge_bytes(uint64_t bytes) {
  alloc_bytes_ += bytes;
  if (alloc_bytes_ > limits_.max_alloc_bytes) {
    fail("template evaluation built more than " + std::to_string(limits_.max_alloc_bytes) + " bytes of values");
  }
}

void Interp::charge_scan(uint64_t n, uint64_t m) {
  uint64_t work;
  if (__builtin_mul_overflow(n, m, &work)) work = UINT64_MAX;
  charge(std::min<uint64_t>(work / 1024, limits_.max_ops + 1));
}

void Interp::check_string_size(uint64_t n) const {
  if (n > limits_.max_string_bytes) {
    fail("string of " + std::to_string(n) + " bytes exceeds the limit of " + std::to_string(limits_.max_string_bytes));
  }
}

Value Interp::make_string(std::string s) {
  check_string_size(s.size());
  charge_bytes(s.size());
  charge(s.size() / 64);
  return Value::string(std::move(s));
}

Value Interp::make_list(std::vector<Value> items) {
  if (items.size() > limits_.max_list_items) {
    fail("list of " + std::to_string(items.size()) + " items exceeds the limit of " +
         std::to_string(limits_.max_list_items));
  }
  charge_bytes(items.size() * sizeof(Value));  // strings are shared, not copied
  charge(items.size() / 4 + 1);
  Value out = Value::list(std::move(items));
  if (out.depth() > limits_.max_value_depth) fail("list nested too deeply");
  return out;
}

Value Interp::make_dict(std::vector<std::pair<Value, Value>> entries, bool is_namespace) {
  if (entries.size() > limits_.max_list_items)
    fail("dict of " + std::to_string(entries.size()) + " items is too large");
  charge_bytes(entries.size() * 2 * sizeof(Value));
  charge(entries.size() / 16 + 1);
  // Later keys win, as in a Python dict literal.
  std::vector<std::pair<Value, Value>> unique;
  unique.reserve(entries.size());
  for (auto& [k, v] : entries) {
    bool replaced = false;
    for (auto& [uk, uv] : unique) {
      if (equals(uk, k)) {
        uv = std::move(v);
        replaced = true;
        break;
      }
    }
    if (!replaced) unique.emplace_back(std::move(k), std::move(v));
  }
  charge(unique.size() * unique.size() / 64);
  Value out = is_namespace ? Value::namespace_(std::move(unique)) : Value::dict(std::move(unique));
  if (out.depth() > limits_.max_value_depth) fail("dict nested too deeply");
  return out;
}

std::string Interp::str(const Value& v) {
  if (v.is_string()) return v.str();
  try {
    std::string s = to_str(v, limits_.max_string_bytes);
    charge(s.size() / 8);
    return s;
  } catch (const std::length_error&) {
    fail("string form of a " + std::string(type_name(v)) + " exceeds " + std::to_string(limits_.max_string_bytes) +
         " bytes");
  }
}

// ---- rendering ---------------------------------------------------------------------

std::string Interp::run(const std::vector<std::pair<std::string, Value>>& variables) {
  auto globals = std::make_shared<Scope>(nullptr);
  add_globals(*globals);
  auto root = std::make_shared<Scope>(globals);
  for (const auto& [k, v] : variables) root->set(k, v);
  closure_scopes_.push_back(root);
  std::string out;
  out_ = &out;
  exec_body(tmpl_.body, root);
  out_ = nullptr;
  return out;
}

void Interp::emit(const std::string& text) {
  if (out_->size() + text.size() > limits_.max_output_bytes) {
    fail("rendered text exceeds the limit of " + std::to_string(limits_.max_output_bytes) + " bytes");
  }
  charge_bytes(text.size());
  out_->append(text);
}

std::string Interp::capture(const Body& body, const ScopePtr& scope) {
  std::string buf;
  std::string* saved = out_;
  out_ = &buf;
  try {
    exec_body(body, scope);
  } catch (...) {
    out_ = saved;
    throw;
  }
  out_ = saved;
  return buf;
}

Interp::Flow Interp::exec_body(const Body& body, const ScopePtr& scope) {
  for (const auto& s : body) {
    Flow f = exec(*s, scope);
    if (f != Flow::Normal) return f;
  }
  return Flow::Normal;
}

Interp::Flow Interp::exec(const Stmt& s, const ScopePtr& scope) {
  EvalGuard guard(*this);
  charge(1);
  line_ = s.line;
  switch (s.type) {
    case StmtType::Text: emit(s.text); break;
    case StmtType::Output: {
      Value v = eval(*s.expr, scope);
      line_ = s.line;
      emit(str(v));
      break;
    }
    case StmtType::If: {
      for (size_t i = 0; i < s.exprs.size(); ++i) {
        if (eval(*s.exprs[i], scope).truthy()) return exec_body(s.bodies[i], scope);
      }
      if (s.bodies.size() > s.exprs.size()) return exec_body(s.bodies.back(), scope);
      break;
    }
    case StmtType::For: exec_for(s, scope); break;
    case StmtType::Set: exec_set(s, scope); break;
    case StmtType::SetBlock: {
      std::string text = capture(s.bodies[0], scope);
      Value v = make_string(std::move(text));
      if (s.expr) v = eval_filter(*s.expr, scope, &v);
      scope->set(s.text, std::move(v));
      break;
    }
    case StmtType::Macro: scope->set(s.text, define_macro(s, scope, nullptr)); break;
    case StmtType::CallBlock: {
      Value caller = define_macro(s, scope, &s);
      const Expr& call = *s.expr;
      Value callee = eval(*call.a, scope);
      CallArgs args;
      eval_args(call, scope, args);
      args.kw.emplace_back("caller", caller);
      line_ = s.line;
      emit(str(this->call(callee, args)));
      break;
    }
    case StmtType::FilterBlock: {
      Value body = make_string(capture(s.bodies[0], scope));
      emit(str(eval_filter(*s.expr, scope, &body)));
      break;
    }
    case StmtType::Break: return Flow::Break;
    case StmtType::Continue: return Flow::Continue;
    case StmtType::Block: return exec_body(s.bodies[0], scope);
  }
  return Flow::Normal;
}

void Interp::exec_for(const Stmt& s, const ScopePtr& scope) {
  Value iterable = eval(*s.expr, scope);
  line_ = s.line;
  // A list is iterated in place (the Value keeps it alive); other iterables are materialized.
  std::vector<Value> owned;
  const std::vector<Value>* seq = &owned;
  if (iterable.is_list() && !s.cond) {
    seq = &iterable.items();
  } else {
    owned = iterate(iterable);
  }
  auto bind = [&](Scope& target, const Value& item) {
    if (s.names.size() == 1) {
      target.set(s.names[0], item);
      return;
    }
    std::vector<Value> parts = item.is_list() || item.is_string() ? iterate(item) : std::vector<Value>{};
    if (!item.is_list() && !item.is_string()) fail(std::string("cannot unpack non-sequence ") + type_name(item));
    if (parts.size() != s.names.size()) {
      fail(parts.size() > s.names.size() ? "too many values to unpack (expected " + std::to_string(s.names.size()) + ")"
                                         : "not enough values to unpack (expected " + std::to_string(s.names.size()) +
                                               ", got " + std::to_string(parts.size()) + ")");
    }
    for (size_t k = 0; k < parts.size(); ++k) target.set(s.names[k], parts[k]);
  };
  if (s.cond) {
    std::vector<Value> kept;
    for (const Value& item : owned) {
      charge(1);
      auto tmp = std::make_shared<Scope>(scope);
      bind(*tmp, item);
      if (eval(*s.cond, tmp).truthy()) kept.push_back(item);
    }
    owned = std::move(kept);
  }
  const std::vector<Value>& items = *seq;
  const size_t n = items.size();
  const bool uses_loop = uses_name(s, "loop");
  auto loop_index = std::make_shared<int64_t>(0);
  Value loop = uses_loop ? make_loop(loop_index) : Value();
  if (n == 0) {
    if (s.bodies.size() > 1) exec_body(s.bodies[1], std::make_shared<Scope>(scope));
    return;
  }
  ScopePtr iter;
  for (size_t i = 0; i < n; ++i) {
    charge(uses_loop ? 3 : 2);
    // Each iteration starts from a clean scope; reuse the last one unless a macro defined in it still refers to it.
    if (iter && iter.use_count() == 1) {
      iter->vars.clear();
    } else {
      iter = std::make_shared<Scope>(scope);
    }
    bind(*iter, items[i]);
    if (uses_loop) {
      // The loop object is updated in place only while nothing else holds it; one that escaped (stored in a
      // namespace, list or macro scope) stays as it was, so no reference cycle can form through previtem/nextitem.
      if (!loop.sole_owner()) loop = make_loop(loop_index);
      update_loop(loop, *loop_index, items, i);
      iter->set("loop", loop);
    }
    Flow f = exec_body(s.bodies[0], iter);
    if (f == Flow::Break) break;
  }
}

Value Interp::make_loop(const std::shared_ptr<int64_t>& index0) {
  std::vector<std::pair<Value, Value>> loop;
  for (const char* key : {"index", "index0", "revindex", "revindex0", "first", "last", "length", "depth", "depth0",
                          "previtem", "nextitem"}) {
    loop.emplace_back(Value::string(key), Value());
  }
  loop.emplace_back(Value::string("cycle"), Value::callable("cycle", [index0](Interp& in, CallArgs& a) -> Value {
                      if (a.pos.empty()) in.fail("loop.cycle() needs at least one argument");
                      return a.pos[static_cast<size_t>(*index0) % a.pos.size()];
                    }));
  return Value::dict(std::move(loop));
}

// Fills the loop object's fields for item i.
void Interp::update_loop(const Value& loop, int64_t& index0_slot, const std::vector<Value>& items, size_t i) {
  const int64_t idx = static_cast<int64_t>(i), len = static_cast<int64_t>(items.size());
  index0_slot = idx;
  DictObj& d = loop.dict_obj();
  auto& e = d.entries;
  e[0].second = Value::integer(idx + 1);
  e[1].second = Value::integer(idx);
  e[2].second = Value::integer(len - idx);
  e[3].second = Value::integer(len - idx - 1);
  e[4].second = Value::boolean(i == 0);
  e[5].second = Value::boolean(idx + 1 == len);
  e[6].second = Value::integer(len);
  e[7].second = Value::integer(1);
  e[8].second = Value::integer(0);
  e[9].second = i > 0 ? items[i - 1] : Value::undefined("there is no previous item");
  e[10].second = idx + 1 < len ? items[i + 1] : Value::undefined("there is no next item");
  d.depth = std::max({d.depth, 1 + e[9].second.depth(), 1 + e[10].second.depth()});
}

bool Interp::uses_name(const Stmt& s, const char* name) {
  auto key = std::make_pair(&s, std::string(name));
  auto it = uses_cache_.find(key);
  if (it != uses_cache_.end()) return it->second;
  bool r = body_uses_name(s.bodies[0], name, 0);
  uses_cache_.emplace(key, r);
  return r;
}

void Interp::exec_set(const Stmt& s, const ScopePtr& scope) {
  Value v = eval(*s.expr, scope);
  line_ = s.line;
  if (!s.names.empty()) {
    if (!v.is_list() && !v.is_string()) fail(std::string("cannot unpack non-sequence ") + type_name(v));
    std::vector<Value> parts = iterate(v);
    if (parts.size() != s.names.size()) {
      fail("cannot unpack " + std::to_string(parts.size()) + " values into " + std::to_string(s.names.size()) +
           " names");
    }
    for (size_t k = 0; k < parts.size(); ++k) scope->set(s.names[k], parts[k]);
    return;
  }
  if (s.attr.empty()) {
    scope->set(s.text, std::move(v));
    return;
  }
  const Value* target = scope->lookup(s.text);
  if (!target || !target->is_namespace())
    fail("cannot assign attribute '" + s.attr + "' on non-namespace object '" + s.text + "'");
  if (v.depth() + 1 > limits_.max_value_depth)
    fail("value assigned to '" + s.text + "." + s.attr + "' is nested too deeply");
  if (holds_object(*this, v, &target->dict_obj(), 0)) {
    fail("cannot assign namespace '" + s.text + "' into itself (reference cycle)");
  }
  if (target->dict_obj().entries.size() >= limits_.max_list_items) fail("namespace has too many attributes");
  target->dict_obj().set(Value::string(s.attr), std::move(v));
}

Value Interp::define_macro(const Stmt& m, const ScopePtr& scope, const Stmt* call_block) {
  closure_scopes_.push_back(scope);
  std::weak_ptr<Scope> closure = scope;
  const Stmt* def = &m;
  std::string name = call_block ? "caller" : m.text;
  return Value::callable(name, [def, closure](Interp& in, CallArgs& args) -> Value {
    ScopePtr s = closure.lock();
    if (!s) in.fail("macro '" + def->text + "' called after its defining scope ended");
    Value caller;
    for (size_t i = 0; i < args.kw.size(); ++i) {
      if (args.kw[i].first == "caller" && def->type == StmtType::Macro) {
        caller = args.kw[i].second;
        args.kw.erase(args.kw.begin() + static_cast<std::ptrdiff_t>(i));
        break;
      }
    }
    return in.call_macro(*def, s, args, caller);
  });
}

Value Interp::call_macro(const Stmt& m, const ScopePtr& closure, CallArgs& args, const Value& caller) {
  CallDepthGuard guard(call_depth_, limits_.max_call_depth, *this);
  const std::string name = m.type == StmtType::Macro ? m.text : "caller";
  auto scope = std::make_shared<Scope>(closure);
  const size_t np = m.names.size();
  const Body& body = m.bodies[0];
  for (size_t i = 0; i < np; ++i) {
    const Value* kw = nullptr;
    for (const auto& [k, v] : args.kw) {
      if (k == m.names[i]) kw = &v;
    }
    if (i < args.pos.size()) {
      if (kw) fail("macro '" + name + "' got multiple values for argument '" + m.names[i] + "'");
      scope->set(m.names[i], args.pos[i]);
    } else if (kw) {
      scope->set(m.names[i], *kw);
    } else if (m.exprs[i]) {
      scope->set(m.names[i], eval(*m.exprs[i], scope));
    } else {
      scope->set(m.names[i], Value::undefined("parameter '" + m.names[i] + "' was not provided"));
    }
  }
  std::vector<Value> extra;
  for (size_t i = np; i < args.pos.size(); ++i) extra.push_back(args.pos[i]);
  std::vector<std::pair<Value, Value>> extra_kw;
  for (const auto& [k, v] : args.kw) {
    bool known = false;
    for (const auto& p : m.names) known = known || p == k;
    if (!known) extra_kw.emplace_back(Value::string(k), v);
  }
  if (!extra.empty()) {
    if (!uses_name(m, "varargs")) {
      fail("macro '" + name + "' takes not more than " + std::to_string(np) + " argument(s)");
    }
  }
  if (!extra_kw.empty() && !uses_name(m, "kwargs")) {
    fail("macro '" + name + "' takes no keyword argument '" + extra_kw[0].first.str() + "'");
  }
  scope->set("varargs", make_list(std::move(extra)));
  scope->set("kwargs", make_dict(std::move(extra_kw)));
  if (!caller.is_undefined()) scope->set("caller", caller);
  int saved_line = line_;
  std::string text = capture(body, scope);
  line_ = saved_line;
  return make_string(std::move(text));
}

// ---- expressions -----------------------------------------------------------------

Value Interp::eval(const Expr& e, const ScopePtr& scope) {
  EvalGuard guard(*this);
  charge(1);
  line_ = e.line;
  switch (e.type) {
    case ExprType::Literal: return e.value;
    case ExprType::Name: {
      const Value* v = scope->lookup(e.name);
      return v ? *v : Value::undefined("'" + e.name + "' is undefined");
    }
    case ExprType::List: {
      std::vector<Value> items;
      items.reserve(e.args.size());
      for (const auto& a : e.args) items.push_back(eval(*a, scope));
      return make_list(std::move(items));
    }
    case ExprType::Dict: {
      std::vector<std::pair<Value, Value>> entries;
      for (size_t i = 0; i + 1 < e.args.size(); i += 2) {
        Value k = eval(*e.args[i], scope);
        if (k.is_list() || k.is_dict() || k.is_undefined()) {
          line_ = e.line;
          fail(std::string("unhashable dict key of type '") + type_name(k) + "'");
        }
        entries.emplace_back(std::move(k), eval(*e.args[i + 1], scope));
      }
      return make_dict(std::move(entries));
    }
    case ExprType::GetAttr: {
      Value obj = eval(*e.a, scope);
      line_ = e.line;
      return getattr(obj, e.name);
    }
    case ExprType::GetItem: {
      Value obj = eval(*e.a, scope);
      Value key = eval(*e.b, scope);
      line_ = e.line;
      return getitem(obj, key);
    }
    case ExprType::Slice: return eval_slice(e, scope);
    case ExprType::Unary: {
      Value v = eval(*e.a, scope);
      line_ = e.line;
      if (e.name == "not") return Value::boolean(!v.truthy());
      if (v.is_undefined()) fail(undefined_message(v));
      if (!v.is_number()) fail("bad operand type for unary " + e.name + ": '" + type_name(v) + "'");
      if (e.name == "+") return v.is_bool() ? Value::integer(v.as_int()) : v;
      if (v.kind() == Kind::Float) return Value::number(-v.as_double());
      if (v.as_int() == std::numeric_limits<int64_t>::min()) fail("integer overflow in negation");
      return Value::integer(-v.as_int());
    }
    case ExprType::Binary: return eval_binary(e, scope);
    case ExprType::And: {
      Value a = eval(*e.a, scope);
      return a.truthy() ? eval(*e.b, scope) : a;
    }
    case ExprType::Or: {
      Value a = eval(*e.a, scope);
      return a.truthy() ? a : eval(*e.b, scope);
    }
    case ExprType::Compare: return eval_compare(e, scope);
    case ExprType::Cond: {
      if (eval(*e.a, scope).truthy()) return eval(*e.b, scope);
      return e.c ? eval(*e.c, scope) : Value::undefined("the conditional expression has no else branch");
    }
    case ExprType::Filter: return eval_filter(e, scope, nullptr);
    case ExprType::Test: return eval_test(e, scope);
    case ExprType::Call: return eval_call(e, scope);
  }
  return Value();
}

Value Interp::eval_binary(const Expr& e, const ScopePtr& scope) {
  Value a = eval(*e.a, scope);
  Value b = eval(*e.b, scope);
  line_ = e.line;
  return arith(e.name, a, b);
}

Value Interp::arith(const std::string& op, const Value& a, const Value& b) {
  if (op == "~") {
    std::string sa = str(a);
    std::string sb = str(b);
    check_string_size(sa.size() + sb.size());
    return make_string(sa + sb);
  }
  if (a.is_undefined()) fail(undefined_message(a));
  if (b.is_undefined()) fail(undefined_message(b));
  auto unsupported = [&]() {
    fail("unsupported operand type(s) for " + op + ": '" + type_name(a) + "' and '" + type_name(b) + "'");
  };
  const bool ints = (a.is_int() || a.is_bool()) && (b.is_int() || b.is_bool());
  const bool nums = a.is_number() && b.is_number();
  if (op == "+") {
    if (ints) {
      int64_t r;
      if (__builtin_add_overflow(a.as_int(), b.as_int(), &r)) fail("integer overflow in +");
      return Value::integer(r);
    }
    if (nums) return Value::number(a.as_double() + b.as_double());
    if (a.is_string() && b.is_string()) {
      check_string_size(a.str().size() + b.str().size());
      return make_string(a.str() + b.str());
    }
    if (a.is_list() && b.is_list()) {
      if (a.items().size() + b.items().size() > limits_.max_list_items) fail("list concatenation is too long");
      std::vector<Value> items = a.items();
      items.insert(items.end(), b.items().begin(), b.items().end());
      return make_list(std::move(items));
    }
    unsupported();
  }
  if (op == "-") {
    if (ints) {
      int64_t r;
      if (__builtin_sub_overflow(a.as_int(), b.as_int(), &r)) fail("integer overflow in -");
      return Value::integer(r);
    }
    if (nums) return Value::number(a.as_double() - b.as_double());
    unsupported();
  }
  if (op == "*") {
    if (ints) {
      int64_t r;
      if (__builtin_mul_overflow(a.as_int(), b.as_int(), &r)) fail("integer overflow in *");
      return Value::integer(r);
    }
    if (nums) return Value::number(a.as_double() * b.as_double());
    const Value* seq = (a.is_string() || a.is_list()) && (b.is_int() || b.is_bool())   ? &a
                       : (b.is_string() || b.is_list()) && (a.is_int() || a.is_bool()) ? &b
                                                                                       : nullptr;
    if (!seq) unsupported();
    int64_t n = std::max<int64_t>(0, seq == &a ? b.as_int() : a.as_int());
    if (seq->is_string()) {
      uint64_t total = static_cast<uint64_t>(n) * seq->str().size();
      if (!seq->str().empty() && (static_cast<uint64_t>(n) > limits_.max_string_bytes)) check_string_size(UINT64_MAX);
      check_string_size(total);
      std::string out;
      out.reserve(total);
      for (int64_t i = 0; i < n && !seq->str().empty(); ++i) out += seq->str();
      return make_string(std::move(out));
    }
    const auto& items = seq->items();
    if (!items.empty() && static_cast<uint64_t>(n) > limits_.max_list_items / items.size()) {
      fail("list repetition is too long");
    }
    std::vector<Value> out;
    for (int64_t i = 0; i < n; ++i) out.insert(out.end(), items.begin(), items.end());
    return make_list(std::move(out));
  }
  if (!nums) unsupported();
  if (op == "/") {
    if (b.as_double() == 0) fail("division by zero");
    return Value::number(a.as_double() / b.as_double());
  }
  if (op == "//") {
    if (ints) {
      if (b.as_int() == 0) fail("integer division or modulo by zero");
      if (a.as_int() == std::numeric_limits<int64_t>::min() && b.as_int() == -1) fail("integer overflow in //");
      return Value::integer(floor_div(a.as_int(), b.as_int()));
    }
    if (b.as_double() == 0) fail("float floor division by zero");
    return Value::number(std::floor(a.as_double() / b.as_double()));
  }
  if (op == "%") {
    if (ints) {
      if (b.as_int() == 0) fail("integer division or modulo by zero");
      if (b.as_int() == -1) return Value::integer(0);
      return Value::integer(py_mod(a.as_int(), b.as_int()));
    }
    if (b.as_double() == 0) fail("float modulo by zero");
    double r = std::fmod(a.as_double(), b.as_double());
    if (r != 0 && ((r < 0) != (b.as_double() < 0))) r += b.as_double();
    return Value::number(r);
  }
  if (op == "**") {
    if (ints && b.as_int() >= 0) {
      int64_t base = a.as_int(), exp = b.as_int(), r = 1;
      while (exp > 0) {
        if (exp & 1) {
          if (__builtin_mul_overflow(r, base, &r)) fail("integer overflow in **");
        }
        exp >>= 1;
        if (exp > 0 && __builtin_mul_overflow(base, base, &base)) fail("integer overflow in **");
      }
      return Value::integer(r);
    }
    if (a.as_double() == 0 && b.as_double() < 0) fail("0.0 cannot be raised to a negative power");
    return Value::number(std::pow(a.as_double(), b.as_double()));
  }
  fail("unknown operator " + op);
}

Value Interp::eval_compare(const Expr& e, const ScopePtr& scope) {
  Value left = eval(*e.a, scope);
  for (size_t i = 0; i < e.ops.size(); ++i) {
    Value right = eval(*e.args[i], scope);
    line_ = e.line;
    const std::string& op = e.ops[i];
    if (left.is_string() && right.is_string()) charge_scan(std::min(left.str().size(), right.str().size()));
    if (left.is_list() && right.is_list()) charge(std::min(left.items().size(), right.items().size()) / 16);
    bool r;
    if (op == "==") {
      r = equals(left, right);
    } else if (op == "!=") {
      r = !equals(left, right);
    } else if (op == "in") {
      r = contains(right, left);
    } else if (op == "not in") {
      r = !contains(right, left);
    } else {
      if (left.is_undefined()) fail(undefined_message(left));
      if (right.is_undefined()) fail(undefined_message(right));
      int c;
      try {
        c = compare(left, right);
      } catch (const std::invalid_argument& ex) {
        fail("'" + op + "' not supported between " + ex.what());
      }
      r = op == "<" ? c < 0 : op == ">" ? c > 0 : op == "<=" ? c <= 0 : c >= 0;
    }
    if (!r) return Value::boolean(false);
    left = std::move(right);
  }
  return Value::boolean(true);
}

void Interp::eval_args(const Expr& e, const ScopePtr& scope, CallArgs& args) {
  for (const auto& a : e.args) args.pos.push_back(eval(*a, scope));
  for (const auto& [k, a] : e.kwargs) args.kw.emplace_back(k, eval(*a, scope));
}

Value Interp::eval_filter(const Expr& e, const ScopePtr& scope, const Value* block_input) {
  Value input;
  if (!e.a) {
    if (block_input) input = *block_input;
  } else if (block_input && e.a->type == ExprType::Filter) {
    input = eval_filter(*e.a, scope, block_input);
  } else {
    input = eval(*e.a, scope);
  }
  CallArgs args;
  eval_args(e, scope, args);
  line_ = e.line;
  charge(1);
  return call_filter(*this, e.name, input, args);
}

Value Interp::eval_test(const Expr& e, const ScopePtr& scope) {
  Value input = eval(*e.a, scope);
  CallArgs args;
  eval_args(e, scope, args);
  line_ = e.line;
  bool r = call_test(*this, e.name, input, args);
  return Value::boolean(e.negated ? !r : r);
}

Value Interp::eval_call(const Expr& e, const ScopePtr& scope) {
  Value callee = eval(*e.a, scope);
  CallArgs args;
  eval_args(e, scope, args);
  line_ = e.line;
  return call(callee, args);
}

Value Interp::call(const Value& callee, CallArgs& args) {
  if (callee.is_undefined()) fail(undefined_message(callee));
  if (!callee.is_callable()) fail(std::string("'") + type_name(callee) + "' object is not callable");
  charge(1);
  return callee.fn().fn(*this, args);
}

Value Interp::eval_slice(const Expr& e, const ScopePtr& scope) {
  Value obj = eval(*e.a, scope);
  Value start = e.b ? eval(*e.b, scope) : Value::none();
  Value stop = e.c ? eval(*e.c, scope) : Value::none();
  Value step = e.args[0] ? eval(*e.args[0], scope) : Value::none();
  line_ = e.line;
  return slice(obj, start, stop, step);
}

Value Interp::slice(const Value& v, const Value& start_v, const Value& stop_v, const Value& step_v) {
  if (v.is_undefined()) fail(undefined_message(v));
  if (!v.is_list() && !v.is_string())
    return Value::undefined(std::string("'") + type_name(v) + "' object is not subscriptable");
  for (const Value* x : {&start_v, &stop_v, &step_v}) {
    if (!x->is_none() && !x->is_int() && !x->is_bool()) {
      fail("slice indices must be integers or None, not " + std::string(type_name(*x)));
    }
  }
  std::vector<uint32_t> cps;
  if (v.is_string()) {
    charge(v.str().size() / 16);
    charge_bytes(4 * v.str().size());
    cps = decode_utf8(v.str());
  }
  const int64_t n = static_cast<int64_t>(v.is_string() ? cps.size() : v.items().size());
  const int64_t step = step_v.is_none() ? 1 : step_v.as_int();
  if (step == 0) fail("slice step cannot be zero");
  const int64_t lower = step < 0 ? -1 : 0, upper = step < 0 ? n - 1 : n;
  auto adjust = [&](const Value& x, int64_t dflt) {
    if (x.is_none()) return dflt;
    int64_t i = x.as_int();
    if (i < 0) i = i < -n ? lower : std::max(i + n, lower);
    return std::min(std::max(i, lower), upper);
  };
  const int64_t start = adjust(start_v, step < 0 ? upper : lower);
  const int64_t stop = adjust(stop_v, step < 0 ? lower : upper);
  std::vector<int64_t> idx;
  for (int64_t i = start; step > 0 ? i < stop : i > stop;) {
    idx.push_back(i);
    if ((step > 0 && i > stop - step) || (step < 0 && i < stop - step)) break;
    i += step;
  }
  charge(idx.size() / 16 + 1);
  if (v.is_string()) {
    std::string out;
    for (int64_t i : idx) append_utf8(out, cps[static_cast<size_t>(i)]);
    return make_string(std::move(out));
  }
  std::vector<Value> out;
  out.reserve(idx.size());
  for (int64_t i : idx) out.push_back(v.items()[static_cast<size_t>(i)]);
  return make_list(std::move(out));
}

// ---- attribute / item access ------------------------------------------------------

Value Interp::getattr(const Value& obj, const std::string& name) {
  if (obj.is_undefined()) fail(undefined_message(obj));
  if (obj.is_namespace()) {
    const Value* v = obj.find(name);
    return v ? *v : Value::undefined("'Namespace' object has no attribute '" + name + "'");
  }
  Value m = get_method(*this, obj, name);
  if (!m.is_undefined()) return m;
  if (obj.is_dict()) {
    const Value* v = obj.find(name);
    if (v) return *v;
  }
  return Value::undefined("'" + object_repr(obj) + "' has no attribute '" + name + "'");
}

Value Interp::getitem(const Value& obj, const Value& key) {
  if (obj.is_undefined()) fail(undefined_message(obj));
  if (obj.is_dict()) {
    const Value* v = obj.find(key);
    if (v) return *v;
  } else if ((obj.is_list() || obj.is_string()) && (key.is_int() || key.is_bool())) {
    int64_t i = key.as_int();
    if (obj.is_list()) {
      const int64_t n = static_cast<int64_t>(obj.items().size());
      if (i < 0) i += n;
      if (i >= 0 && i < n) return obj.items()[static_cast<size_t>(i)];
      return Value::undefined("'list object' has no element " + std::to_string(key.as_int()));
    }
    charge(obj.str().size() / 16);
    charge_bytes(4 * obj.str().size());
    std::vector<uint32_t> cps = decode_utf8(obj.str());
    const int64_t n = static_cast<int64_t>(cps.size());
    if (i < 0) i += n;
    if (i >= 0 && i < n) {
      std::string out;
      append_utf8(out, cps[static_cast<size_t>(i)]);
      return Value::string(std::move(out));
    }
    return Value::undefined("'str object' has no element " + std::to_string(key.as_int()));
  }
  if (key.is_string()) return getattr(obj, key.str());
  return Value::undefined("'" + object_repr(obj) + "' has no element " + repr(key));
}

bool Interp::contains(const Value& container, const Value& item) {
  switch (container.kind()) {
    case Kind::Undefined: return false;
    case Kind::String:
      if (item.is_undefined()) fail(undefined_message(item));
      if (!item.is_string()) fail(std::string("'in <string>' requires string as left operand, not ") + type_name(item));
      charge_scan(container.str().size(), item.str().size() + 1);
      return container.str().find(item.str()) != std::string::npos;
    case Kind::List:
      charge(container.items().size() / 16 + 1);
      for (const Value& v : container.items()) {
        if (equals(v, item)) return true;
      }
      return false;
    case Kind::Dict:
    case Kind::Namespace: charge(container.entries().size() / 16 + 1); return container.find(item) != nullptr;
    default: fail(std::string("argument of type '") + type_name(container) + "' is not iterable");
  }
}

std::vector<Value> Interp::iterate(const Value& v) {
  std::vector<Value> out;
  switch (v.kind()) {
    case Kind::Undefined: return out;
    case Kind::List: out = v.items(); break;
    case Kind::Dict:
      out.reserve(v.entries().size());
      for (const auto& [k, val] : v.entries()) out.push_back(k);
      break;
    case Kind::String: {
      const size_t n = utf8_length(v.str());
      if (n > limits_.max_list_items) {
        fail("iterating a string of " + std::to_string(n) + " characters exceeds the limit of " +
             std::to_string(limits_.max_list_items) + " items");
      }
      charge_bytes(n * (sizeof(Value) + 64));
      for (uint32_t cp : decode_utf8(v.str())) {
        std::string s;
        append_utf8(s, cp);
        out.push_back(Value::string(std::move(s)));
      }
      break;
    }
    default: fail(std::string("'") + type_name(v) + "' object is not iterable");
  }
  charge_bytes(out.size() * sizeof(Value));
  charge(out.size() / (v.is_string() ? 4 : 16) + 1);
  return out;
}

// ---- entry points -------------------------------------------------------------------

namespace {

void validate_expr(const Expr* e, const std::string& source) {
  if (!e) return;
  if (e->type == ExprType::Filter && !has_filter(e->name)) {
    throw Error(
        source, "chat_template",
        "line " + std::to_string(e->line) + " col " + std::to_string(e->col) + ": unknown filter '" + e->name + "'");
  }
  if (e->type == ExprType::Test && !has_test(e->name)) {
    throw Error(
        source, "chat_template",
        "line " + std::to_string(e->line) + " col " + std::to_string(e->col) + ": unknown test '" + e->name + "'");
  }
  validate_expr(e->a.get(), source);
  validate_expr(e->b.get(), source);
  validate_expr(e->c.get(), source);
  for (const auto& c : e->args) validate_expr(c.get(), source);
  for (const auto& [k, c] : e->kwargs) validate_expr(c.get(), source);
}

void validate_body(const Body& body, const std::string& source) {
  for (const auto& s : body) {
    validate_expr(s->expr.get(), source);
    validate_expr(s->cond.get(), source);
    for (const auto& e : s->exprs) validate_expr(e.get(), source);
    for (const auto& b : s->bodies) validate_body(b, source);
  }
}

}  // namespace

void validate(const Template& t) { validate_body(t.body, t.source); }

std::string render(const Template& tmpl, const std::vector<std::pair<std::string, Value>>& variables,
                   const Limits& limits) {
  Interp in(tmpl, limits);
  return in.run(variables);
}

}  // namespace kite::jinja
