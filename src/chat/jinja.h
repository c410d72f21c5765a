#pragma once
// A Jinja2-subset interpreter for chat templates: lexer -> parser (AST) ->
// tree-walking interpreter over Value. It follows jinja2's semantics as
// Hugging Face configures them (trim_blocks, lstrip_blocks, loopcontrols,
// an immutable sandbox: no list.append / dict.update), with Python's
// str()/repr()/json.dumps formatting of values.
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

namespace kite::jinja {

// Bounds on one render; exceeding any throws kite::Error.
struct Limits {
  size_t max_output_bytes = 16u << 20;    // rendered text
  size_t max_string_bytes = 16u << 20;    // any one string value
  size_t max_list_items = 1u << 18;       // any one list or dict
  uint64_t max_ops = 2'000'000;           // evaluation steps (each loop iteration, expression node, filter ...)
  uint64_t max_alloc_bytes = 128u << 20;  // bytes of strings and lists built over the whole render
  int max_call_depth = 64;                // nested macro calls
  int max_eval_depth = 400;               // nested statement/expression evaluation
  int max_value_depth = 128;              // nesting of lists/dicts
};

inline constexpr int kMaxParseDepth = 96;  // nesting of expressions and blocks accepted by the parser

enum class Kind : uint8_t { Undefined, None, Bool, Int, Float, String, List, Dict, Namespace, Callable };

class Value;
class Interp;
struct ListObj;
struct DictObj;

struct CallArgs {
  std::vector<Value> pos;
  std::vector<std::pair<std::string, Value>> kw;
};

using NativeFn = std::function<Value(Interp&, CallArgs&)>;

struct Callable {
  std::string name;
  NativeFn fn;
};

class Value {
 public:
  Value() = default;  // undefined
  static Value undefined(std::string hint = {});
  static Value none();
  static Value boolean(bool b);
  static Value integer(int64_t i);
  static Value number(double f);
  static Value string(std::string s);
  static Value list(std::vector<Value> items);  // checks nothing: callers bound sizes
  static Value dict(std::vector<std::pair<Value, Value>> items);
  static Value namespace_(std::vector<std::pair<Value, Value>> items);
  static Value callable(std::string name, NativeFn fn);
  // Throws std::length_error when j nests deeper than max_depth arrays/objects.
  static Value from_json(const nlohmann::ordered_json& j, int max_depth);

  Kind kind() const { return kind_; }
  bool is_undefined() const { return kind_ == Kind::Undefined; }
  bool is_none() const { return kind_ == Kind::None; }
  bool is_string() const { return kind_ == Kind::String; }
  bool is_int() const { return kind_ == Kind::Int; }
  bool is_bool() const { return kind_ == Kind::Bool; }
  bool is_number() const { return kind_ == Kind::Int || kind_ == Kind::Float || kind_ == Kind::Bool; }
  bool is_list() const { return kind_ == Kind::List; }
  bool is_dict() const { return kind_ == Kind::Dict; }
  bool is_namespace() const { return kind_ == Kind::Namespace; }
  bool is_callable() const { return kind_ == Kind::Callable; }

  bool as_bool() const { return b_; }
  int64_t as_int() const { return i_; }  // Int or Bool
  double as_double() const;              // any number
  // String (shared, immutable: copying a Value never copies its text); for Undefined, the hint ("'x' is undefined").
  const std::string& str() const;
  const std::vector<Value>& items() const;                      // List
  const std::vector<std::pair<Value, Value>>& entries() const;  // Dict / Namespace
  DictObj& dict_obj() const { return *dict_; }
  const Callable& fn() const { return *fn_; }
  int depth() const;  // nesting depth of lists/dicts (scalars: 0)

  // nullptr when absent. Keys compare like Python (1 == 1.0 == True).
  const Value* find(const Value& key) const;
  const Value* find(const std::string& key) const;

  bool truthy() const;
  bool same_object(const Value& o) const;
  // True when this Value is the only holder of its list/dict object (so mutating it in place is unobservable).
  bool sole_owner() const { return (list_ && list_.use_count() == 1) || (dict_ && dict_.use_count() == 1); }

 private:
  Kind kind_ = Kind::Undefined;
  bool b_ = false;
  int64_t i_ = 0;
  double f_ = 0;
  std::shared_ptr<const std::string> s_;
  std::shared_ptr<ListObj> list_;
  std::shared_ptr<DictObj> dict_;
  std::shared_ptr<Callable> fn_;
};

struct ListObj {
  std::vector<Value> items;
  int depth = 1;
};

struct DictObj {
  std::vector<std::pair<Value, Value>> entries;
  int depth = 1;
  void set(const Value& key, Value value);
};

// Python-compatible helpers (jinja_value.cpp).
const char* type_name(const Value& v);  // "str", "int", "list", "dict", "NoneType" ...
// str(v) (Undefined -> "") and repr(v); throw std::length_error once the text passes max_bytes.
std::string to_str(const Value& v, size_t max_bytes = SIZE_MAX);
std::string repr(const Value& v, size_t max_bytes = SIZE_MAX);
std::string float_repr(double d);             // repr(float)
bool equals(const Value& a, const Value& b);  // ==
// <0, 0, >0; throws std::invalid_argument naming the types when Python would raise TypeError.
int compare(const Value& a, const Value& b);
struct JsonOptions {
  std::string indent;  // empty with has_indent=false: compact one-line form
  bool has_indent = false;
  std::string item_sep = ", ";
  std::string key_sep = ": ";
  bool sort_keys = false;
};
// json.dumps(v, ensure_ascii=False, ...); throws std::invalid_argument for values JSON cannot hold and
// std::length_error once the text passes max_bytes.
std::string to_json(const Value& v, const JsonOptions& opt, size_t max_bytes = SIZE_MAX);
// UTF-8 <-> code points (invalid bytes map to U+FFFD one byte at a time).
std::vector<uint32_t> decode_utf8(const std::string& s);
void append_utf8(std::string& out, uint32_t cp);
size_t utf8_length(const std::string& s);
bool is_py_space(uint32_t cp);  // str.isspace()

// ---- AST -----------------------------------------------------------------
enum class ExprType : uint8_t {
  Literal,
  Name,
  List,
  Dict,
  GetAttr,
  GetItem,
  Slice,
  Unary,
  Binary,
  And,
  Or,
  Compare,
  Cond,
  Filter,
  Test,
  Call
};

struct Expr;
using ExprPtr = std::unique_ptr<Expr>;

struct Expr {
  ExprType type;
  int line = 0;
  int col = 0;
  int depth = 1;
  Value value;                   // Literal
  std::string name;              // Name, GetAttr attribute, Filter/Test name, Unary/Binary operator
  bool negated = false;          // Test: `is not`
  ExprPtr a, b, c;               // operands: object/left/condition ...; Slice: a[b:c:args[0]]
  std::vector<ExprPtr> args;     // positional args, list items, dict key/value pairs, compare operands
  std::vector<std::string> ops;  // Compare operators
  std::vector<std::pair<std::string, ExprPtr>> kwargs;
};

enum class StmtType : uint8_t {
  Text,
  Output,
  If,
  For,
  Set,
  SetBlock,
  Macro,
  CallBlock,
  FilterBlock,
  Break,
  Continue,
  Block
};

struct Stmt;
using StmtPtr = std::unique_ptr<Stmt>;
using Body = std::vector<StmtPtr>;

struct Stmt {
  StmtType type;
  int line = 0;
  std::string text;                // Text; Set/SetBlock/Macro: target name
  std::string attr;                // Set: `set ns.attr = ...`
  std::vector<std::string> names;  // For targets, Set tuple targets, Macro/CallBlock parameters
  std::vector<ExprPtr> exprs;      // If conditions; Macro/CallBlock parameter defaults (nullptr: none)
  ExprPtr expr;                    // Output, For iterable, Set value, CallBlock call, Filter chain
  ExprPtr cond;                    // For `if` filter
  std::vector<Body> bodies;        // If: one per condition (+ else); For: body (+ else); others: body
};

struct Template {
  Body body;
  std::string source;  // for error messages
};

// Parses template text (HF settings: trim_blocks, lstrip_blocks) and checks that every filter and test it names
// exists (as jinja2 does when compiling). Throws kite::Error(source, "chat_template", "line L col C: ...").
std::shared_ptr<Template> parse(const std::string& text, const std::string& source);

// Renders with the given variables (on top of the globals range, namespace, dict,
// raise_exception, strftime_now). Throws kite::Error on runtime errors and limits.
std::string render(const Template& tmpl, const std::vector<std::pair<std::string, Value>>& variables,
                   const Limits& limits = {});

}  // namespace kite::jinja
