// Tensor names grouped by pattern (each decimal digit masked to NUL), the mechanical part of
// python/paramkit/counting/patterns.py's NamePatterns done in one pass over the names' bytes: a code per
// name, the patterns in order of first appearance, the refined patterns (leaf digits, or every digit of a
// name with more than max_masked, kept literal) and each name's masked digits as cumulative base-10 columns.
// The Python class is the specification and the fallback; tests/test_name_patterns.py compares the two.
#pragma once

#include <cstdint>
#include <deque>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

namespace paramkit {

struct NamePatternsOut {
  std::vector<int64_t> code;                      // per name
  std::vector<std::string> patterns;              // by code
  std::vector<std::pair<int64_t, int64_t>> cuts;  // refined pattern -> the cut its leaf (0: whole name) starts at
  std::vector<std::vector<int64_t>> nul;          // per pattern: its masked digits' positions (live ones only)
  int64_t width = 0;                              // the most masked digits of a live pattern
  std::vector<int64_t> cum;                       // n x (width + 1), row-major
};

// names[i] = (pointer, length) of ASCII bytes without NUL or newline (the caller checks).
inline void name_patterns(const std::vector<std::string_view>& names, int64_t max_masked, NamePatternsOut& out) {
  const size_t n = names.size();
  // keys are views into `masked` (every name, digits masked, back to back: no allocation per name) and,
  // for refined patterns, into strings of `refined_keys` (a deque: its strings never move)
  size_t total = 0;
  for (const auto& v : names) total += v.size();
  std::string masked(total, '\0');
  std::deque<std::string> refined_keys;
  std::unordered_map<std::string_view, int64_t> codes;
  codes.reserve(256);
  out.code.assign(n, 0);
  auto code_of = [&](std::string_view k) -> int64_t {
    auto it = codes.find(k);
    if (it != codes.end()) return it->second;
    const int64_t c = int64_t(out.patterns.size());
    out.patterns.emplace_back(k);
    codes.emplace(k, c);
    return c;
  };
  size_t at = 0;
  for (size_t i = 0; i < n; ++i) {
    const std::string_view v = names[i];
    char* key = &masked[at];
    for (size_t k = 0; k < v.size(); ++k) key[k] = (v[k] >= '0' && v[k] <= '9') ? '\0' : v[k];
    out.code[i] = code_of(std::string_view(key, v.size()));
    at += v.size();
  }
  // refine: patterns with a masked digit in their leaf, or more than max_masked before it
  const size_t first_pass = out.patterns.size();
  std::vector<int64_t> cut_of(first_pass, -1);
  for (size_t p = 0; p < first_pass; ++p) {
    const std::string& pat = out.patterns[p];
    if (pat.find('\0') == std::string::npos) continue;
    const size_t dot = pat.rfind('.');
    const size_t cut = dot == std::string::npos ? 0 : dot + 1;
    int64_t before = 0;
    for (size_t k = 0; k < cut; ++k) before += pat[k] == '\0';
    if (before > max_masked) {
      cut_of[p] = 0;
    } else if (pat.find('\0', cut) != std::string::npos) {
      cut_of[p] = int64_t(cut);
    }
  }
  bool any_cut = false;
  for (size_t p = 0; p < first_pass; ++p) {
    if (cut_of[p] >= 0) {
      out.cuts.emplace_back(int64_t(p), cut_of[p]);
      any_cut = true;
    }
  }
  if (any_cut) {
    // members of each refined pattern in ascending order, patterns in ascending order (as the Python loop)
    std::vector<std::vector<size_t>> members(first_pass);
    for (size_t i = 0; i < n; ++i)
      if (cut_of[size_t(out.code[i])] >= 0) members[size_t(out.code[i])].push_back(i);
    for (const auto& pc : out.cuts) {
      const size_t cut = size_t(pc.second);
      const std::string head = out.patterns[size_t(pc.first)].substr(0, cut);
      for (size_t i : members[size_t(pc.first)]) {
        std::string& k = refined_keys.emplace_back(head);
        k.append(names[i].data() + cut, names[i].size() - cut);
        out.code[i] = code_of(k);
      }
    }
  }
  // masked digits of the live patterns (a refined pattern has no tensors left)
  std::vector<char> live(out.patterns.size(), 0);
  for (size_t i = 0; i < n; ++i) live[size_t(out.code[i])] = 1;
  out.nul.assign(out.patterns.size(), {});
  out.width = 0;
  for (size_t p = 0; p < out.patterns.size(); ++p) {
    if (!live[p]) continue;
    const std::string& pat = out.patterns[p];
    for (size_t k = 0; k < pat.size(); ++k)
      if (pat[k] == '\0') out.nul[p].push_back(int64_t(k));
    if (int64_t(out.nul[p].size()) > out.width) out.width = int64_t(out.nul[p].size());
  }
  const size_t w = size_t(out.width) + 1;
  out.cum.assign(n * w, 0);
  if (out.width) {
    std::vector<int64_t> pow10(w, 1);
    for (size_t k = 1; k < w; ++k) pow10[k] = pow10[k - 1] * 10;
    for (size_t i = 0; i < n; ++i) {
      const auto& pos = out.nul[size_t(out.code[i])];
      int64_t* row = out.cum.data() + i * w;
      int64_t acc = 0;
      for (size_t k = 0; k < size_t(out.width); ++k) {
        if (k < pos.size()) acc += int64_t(names[i][size_t(pos[k])] - '0') * pow10[size_t(out.width) - 1 - k];
        row[k + 1] = acc;
      }
    }
  }
}

}  // namespace paramkit
