// The native tests' way to the recorded CRIU test vectors in test/fixtures/criu-<version>/<session>/ (the working
// directory is the repo root under ctest): reading a session's files, and the facts of its session.json through
// a small JSON reader (objects, arrays, strings, integers, true/false/null: what session.json holds). A missing
// or malformed file stops the test with one line naming it.
#pragma once

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace fixtures {

[[noreturn]] inline void fail(const std::string& what) {
  std::fprintf(stderr, "test fixtures: %s\n", what.c_str());
  std::exit(1);
}

inline std::string path(const std::string& version, const std::string& session, const std::string& file) {
  return "test/fixtures/criu-" + version + "/" + session + "/" + file;
}

inline std::string read(const std::string& version, const std::string& session, const std::string& file) {
  const std::string p = path(version, session, file);
  std::ifstream in(p, std::ios::binary);
  if (!in.good()) fail("cannot open " + p + " (test/fixtures is part of the repository; run the tests from the repo root)");
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

class Json {
 public:
  enum class Type { kNull, kBool, kNumber, kString, kArray, kObject };

  static Json parse(const std::string& text, const std::string& where) {
    size_t pos = 0;
    Json value = parse_value(text, pos, where);
    skip_space(text, pos);
    if (pos != text.size()) fail(where + ": trailing bytes at " + std::to_string(pos));
    return value;
  }

  Type type() const { return type_; }
  bool has(const std::string& key) const { return type_ == Type::kObject && object_.count(key) != 0; }
  const Json& operator[](const std::string& key) const {
    if (type_ != Type::kObject || !object_.count(key)) fail(where_ + ": no field \"" + key + "\"");
    return object_.at(key);
  }
  const Json& operator[](size_t i) const {
    if (type_ != Type::kArray || i >= array_.size()) fail(where_ + ": no element " + std::to_string(i));
    return array_[i];
  }
  size_t size() const { return type_ == Type::kArray ? array_.size() : object_.size(); }
  int64_t num() const {
    if (type_ != Type::kNumber) fail(where_ + ": not a number");
    return number_;
  }
  const std::string& str() const {
    if (type_ != Type::kString) fail(where_ + ": not a string");
    return string_;
  }
  bool is_null() const { return type_ == Type::kNull; }
  /** A "0x…" string (addresses, checksums) as a number. */
  uint64_t hex() const {
    const std::string& s = str();
    if (s.size() < 3 || s.compare(0, 2, "0x") != 0) fail(where_ + ": \"" + s + "\" is not 0x-hex");
    return std::strtoull(s.c_str() + 2, nullptr, 16);
  }

 private:
  static void skip_space(const std::string& t, size_t& pos) {
    while (pos < t.size() && (t[pos] == ' ' || t[pos] == '\n' || t[pos] == '\t' || t[pos] == '\r')) pos++;
  }
  static Json parse_value(const std::string& t, size_t& pos, const std::string& where) {
    skip_space(t, pos);
    Json v;
    v.where_ = where;
    if (pos >= t.size()) fail(where + ": unexpected end");
    const char c = t[pos];
    if (c == '{') {
      v.type_ = Type::kObject;
      pos++;
      skip_space(t, pos);
      if (t[pos] == '}') return pos++, v;
      for (;;) {
        skip_space(t, pos);
        const std::string key = parse_string(t, pos, where);
        skip_space(t, pos);
        if (t[pos++] != ':') fail(where + ": ':' expected at " + std::to_string(pos - 1));
        v.object_.emplace(key, parse_value(t, pos, where + "." + key));
        skip_space(t, pos);
        if (t[pos] == ',') { pos++; continue; }
        if (t[pos++] != '}') fail(where + ": '}' expected at " + std::to_string(pos - 1));
        return v;
      }
    }
    if (c == '[') {
      v.type_ = Type::kArray;
      pos++;
      skip_space(t, pos);
      if (t[pos] == ']') return pos++, v;
      for (;;) {
        v.array_.push_back(parse_value(t, pos, where + "[" + std::to_string(v.array_.size()) + "]"));
        skip_space(t, pos);
        if (t[pos] == ',') { pos++; continue; }
        if (t[pos++] != ']') fail(where + ": ']' expected at " + std::to_string(pos - 1));
        return v;
      }
    }
    if (c == '"') {
      v.type_ = Type::kString;
      v.string_ = parse_string(t, pos, where);
      return v;
    }
    for (const char* word : {"true", "false", "null"}) {
      if (t.compare(pos, std::char_traits<char>::length(word), word) == 0) {
        pos += std::char_traits<char>::length(word);
        v.type_ = word[0] == 'n' ? Type::kNull : Type::kBool;
        v.number_ = word[0] == 't';
        return v;
      }
    }
    char* end = nullptr;
    v.number_ = std::strtoll(t.c_str() + pos, &end, 10);
    if (end == t.c_str() + pos || *end == '.' || *end == 'e' || *end == 'E') fail(where + ": not an integer at " + std::to_string(pos));
    pos = static_cast<size_t>(end - t.c_str());
    v.type_ = Type::kNumber;
    return v;
  }
  static std::string parse_string(const std::string& t, size_t& pos, const std::string& where) {
    if (t[pos] != '"') fail(where + ": '\"' expected at " + std::to_string(pos));
    std::string out;
    for (pos++; pos < t.size() && t[pos] != '"'; pos++) {
      if (t[pos] != '\\') { out += t[pos]; continue; }
      const char e = t[++pos];
      if (e == 'u') {  // JSON.stringify writes \u only for control characters, which session.json has none of
        out += '?';
        pos += 4;
      } else {
        out += e == 'n' ? '\n' : e == 't' ? '\t' : e;
      }
    }
    if (pos >= t.size()) fail(where + ": unterminated string");
    pos++;
    return out;
  }

  Type type_ = Type::kNull;
  int64_t number_ = 0;
  std::string string_;
  std::vector<Json> array_;
  std::map<std::string, Json> object_;
  std::string where_;
};

/** session.json of a session, parsed once. */
inline const Json& session(const std::string& version, const std::string& session) {
  static std::map<std::string, std::unique_ptr<Json>> cache;
  const std::string key = version + "/" + session;
  auto it = cache.find(key);
  if (it == cache.end()) {
    it = cache.emplace(key, std::make_unique<Json>(Json::parse(read(version, session, "session.json"), key))).first;
  }
  return *it->second;
}

}  // namespace fixtures
