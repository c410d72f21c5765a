#pragma once
// The tree-walking interpreter (jinja_interp.cpp) and the built-in filters,
// tests, methods and globals it calls (jinja_builtins.cpp). Internal to src/chat.
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "chat/jinja.h"

namespace kite::jinja {

struct Scope {
  explicit Scope(std::shared_ptr<Scope> p) : parent(std::move(p)) {}
  std::shared_ptr<Scope> parent;
  std::vector<std::pair<std::string, Value>> vars;

  const Value* lookup(const std::string& name) const {
    for (const Scope* s = this; s; s = s->parent.get()) {
      for (const auto& [k, v] : s->vars) {
        if (k == name) return &v;
      }
    }
    return nullptr;
  }
  void set(const std::string& name, Value v) {
    for (auto& [k, old] : vars) {
      if (k == name) {
        old = std::move(v);
        return;
      }
    }
    vars.emplace_back(name, std::move(v));
  }
};
using ScopePtr = std::shared_ptr<Scope>;

class Interp {
 public:
  Interp(const Template& tmpl, const Limits& limits);
  ~Interp();

  std::string run(const std::vector<std::pair<std::string, Value>>& variables);

  // Runtime error at the current template line: kite::Error(source, "chat_template", "line L: msg").
  [[noreturn]] void fail(const std::string& msg) const;
  const std::string& source() const { return tmpl_.source; }
  const Limits& limits() const { return limits_; }

  // Budget accounting; throw kite::Error when a limit is exceeded.
  void charge(uint64_t ops);
  void charge_bytes(uint64_t bytes);
  // Charges a scan of n bytes for each of m positions (substring search, comparison, UTF-8 decoding).
  void charge_scan(uint64_t n, uint64_t m = 1);
  Value make_string(std::string s);           // checks the string size limit and charges its bytes
  Value make_list(std::vector<Value> items);  // checks item count and nesting, charges the copies
  Value make_dict(std::vector<std::pair<Value, Value>> entries, bool is_namespace = false);
  void check_string_size(uint64_t n) const;
  // str(v) / repr(v) bounded by the string size limit.
  std::string str(const Value& v);

  // jinja2's environment.getattr / getitem: attribute then item (or the reverse), else Undefined.
  Value getattr(const Value& obj, const std::string& name);
  Value getitem(const Value& obj, const Value& key);
  Value call(const Value& callee, CallArgs& args);
  // Python `item in container`.
  bool contains(const Value& container, const Value& item);
  // Items of a for loop / list(): lists, dict keys, string characters; Undefined is empty.
  std::vector<Value> iterate(const Value& v);
  Value slice(const Value& v, const Value& start, const Value& stop, const Value& step);

 private:
  friend struct EvalGuard;
  enum class Flow { Normal, Break, Continue };

  Flow exec_body(const Body& body, const ScopePtr& scope);
  Flow exec(const Stmt& s, const ScopePtr& scope);
  void exec_for(const Stmt& s, const ScopePtr& scope);
  // The `loop` object (index, first, last, previtem, cycle ...) of a for statement, and its update for item i.
  Value make_loop(const std::shared_ptr<int64_t>& index0);
  void update_loop(const Value& loop, int64_t& index0_slot, const std::vector<Value>& items, size_t i);
  // Does the body of a for loop / macro name `name` anywhere (cached per statement)?
  bool uses_name(const Stmt& s, const char* name);
  void exec_set(const Stmt& s, const ScopePtr& scope);
  std::string capture(const Body& body, const ScopePtr& scope);
  void emit(const std::string& text);
  Value call_macro(const Stmt& m, const ScopePtr& closure, CallArgs& args, const Value& caller);
  Value define_macro(const Stmt& m, const ScopePtr& scope, const Stmt* call_block);

  Value eval(const Expr& e, const ScopePtr& scope);
  Value eval_binary(const Expr& e, const ScopePtr& scope);
  Value eval_compare(const Expr& e, const ScopePtr& scope);
  Value eval_filter(const Expr& e, const ScopePtr& scope, const Value* block_input);
  Value eval_test(const Expr& e, const ScopePtr& scope);
  Value eval_call(const Expr& e, const ScopePtr& scope);
  Value eval_slice(const Expr& e, const ScopePtr& scope);
  void eval_args(const Expr& e, const ScopePtr& scope, CallArgs& args);
  Value arith(const std::string& op, const Value& a, const Value& b);

  const Template& tmpl_;
  const Limits limits_;
  std::string* out_ = nullptr;
  int line_ = 0;
  int eval_depth_ = 0;
  int call_depth_ = 0;
  uint64_t ops_ = 0;
  uint64_t alloc_bytes_ = 0;
  std::vector<ScopePtr> closure_scopes_;
  std::map<std::pair<const Stmt*, std::string>, bool>
      uses_cache_;  // cleared at the end to break macro <-> scope reference cycles
};

// Throws kite::Error naming the line and column of the first unknown filter or test.
void validate(const Template& t);

// ---- built-ins (jinja_builtins.cpp) ---------------------------------------------
bool has_filter(const std::string& name);
bool has_test(const std::string& name);
Value call_filter(Interp& in, const std::string& name, const Value& input, CallArgs& args);
bool call_test(Interp& in, const std::string& name, const Value& input, CallArgs& args);
// A bound method of a str/dict/list value (`"a".strip`, `d.items`), or Undefined when there is none.
Value get_method(Interp& in, const Value& obj, const std::string& name);
// range, namespace, dict, raise_exception, strftime_now.
void add_globals(Scope& scope);
// Stable merge sort that stays in bounds even for inconsistent comparators (NaN, mixed types).
void stable_sort_values(std::vector<Value>& v, const std::function<bool(const Value&, const Value&)>& less);

}  // namespace kite::jinja
